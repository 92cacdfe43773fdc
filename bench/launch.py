# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Launch figures: wall time to launch 1 and then 10 instances on the lab, from
ansible-playbook's start to every guest's boot line, against a plain script doing the
same qemu-img and virsh steps on the same hosts (no scheduler, claim, port or config
drive) in the same run. Run as root: `.venv/bin/python bench/launch.py`.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))

from harness import GUEST_IMAGE, Console, LabHandle, run_playbook  # noqa: E402  pylint: disable=wrong-import-position

LAB = LabHandle(name="vcbnch", network="10.249.0.0/24", state_dir="/var/lib/virtcloud-lab-vcbnch",
                run_dir="/run/virtcloud-lab-vcbnch", hosts=3, non_shared=[])
HOSTS = ["node1", "node2", "node3"]


def wait_boots(consoles: list, timeout: float = 600) -> None:
    for con in consoles:
        con.wait("BOOT", timeout=timeout)


def ansible_launch(name: str, count: int) -> float:
    start = time.monotonic()
    result = run_playbook("launch.yml", dict(launch_name=name, launch_count=count), inventory=LAB.inventory)
    if result.rc != 0:
        sys.exit("launch failed:\n" + result.stdout[-3000:])
    consoles = []
    for host in HOSTS:
        out = LAB.ssh(host, "virsh list --uuid")
        consoles += [Console(os.path.join(LAB.instances_dir(host), u, "console.log")) for u in out.split()]
    wait_boots(consoles)
    return time.monotonic() - start


def plain_launch(count: int, base: str) -> float:
    """qemu-img overlay + virsh define + virsh start per instance, round robin over the hosts."""
    start = time.monotonic()
    consoles = []
    for i in range(count):
        host = HOSTS[i % len(HOSTS)]
        name = "plain-%s" % uuid.uuid4().hex[:8]
        d = "%s/%s" % (LAB.instances_path, name)
        xml = ("<domain type='qemu'><name>%s</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
               "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><features><acpi/></features>"
               "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
               "<source file='%s/disk'/><target dev='vda' bus='virtio'/></disk>"
               "<interface type='bridge'><source bridge='vcbr-private'/><model type='virtio'/></interface>"
               "<serial type='pty'><log file='%s/console.log' append='on'/><target port='0'/></serial>"
               "</devices></domain>" % (name, d, d))
        LAB.ssh(host, "mkdir -p %s && qemu-img create -q -f qcow2 -F qcow2 -b %s %s/disk 1G && virsh define /dev/stdin && virsh start %s"
                % (d, base, d, name), data=xml)
        consoles.append(Console(os.path.join(LAB.instances_dir(host), name, "console.log")))
    wait_boots(consoles)
    return time.monotonic() - start


def clean_all() -> None:
    for host in HOSTS:
        for name in LAB.ssh(host, "virsh list --all --name").split():
            LAB.ssh(host, "virsh destroy %s; virsh undefine %s" % (name, name), check=False)
    run_playbook("lab_up.yml", LAB.vars)  # nothing to repair; keeps the inventory


def delete_launched(prefix: str, count: int) -> None:
    names = [prefix] if count == 1 else ["%s-%d" % (prefix, i) for i in range(1, count + 1)]
    for name in names:
        run_playbook("instance.yml", dict(instance=name, action="delete"), inventory=LAB.inventory)


def main() -> int:
    if not os.path.exists(GUEST_IMAGE):
        sys.exit("build the test image first: tools/build-test-image")
    up = run_playbook("lab_up.yml", LAB.vars)
    if up.rc != 0:
        sys.exit("lab_up failed:\n" + up.stdout[-3000:])
    try:
        for playbook, extra in (("compute_node.yml", {}),
                                ("image_import.yml", dict(image_name="vctest", image_src=GUEST_IMAGE))):
            r = run_playbook(playbook, extra, inventory=LAB.inventory)
            if r.rc != 0:
                sys.exit("%s failed:\n%s" % (playbook, r.stdout[-3000:]))
        t1 = ansible_launch("bench1", 1)  # also fills node caches on its host
        delete_launched("bench1", 1)
        t10 = ansible_launch("bench10", 10)
        delete_launched("bench10", 10)
        base = LAB.ssh("node1", "ls -d %s/_base/* | grep -v '\\.' | head -1" % LAB.instances_path).strip()
        p1 = plain_launch(1, base)
        clean_all()
        p10 = plain_launch(10, base)
        clean_all()
    finally:
        run_playbook("lab_down.yml", LAB.vars)
    print("launch figures (lab: 3 compute hosts, TCG guests of 256 MiB, %d cores)" % os.cpu_count())
    print("  1 instance:   ansible launch %6.1f s   plain qemu-img+virsh %6.1f s   ratio %.2f" % (t1, p1, t1 / p1))
    print("  10 instances: ansible launch %6.1f s   plain qemu-img+virsh %6.1f s   ratio %.2f" % (t10, p10, t10 / p10))
    return 0


if __name__ == "__main__":
    sys.exit(main())
