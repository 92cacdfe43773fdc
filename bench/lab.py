# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Lab figures: lab_up and lab_down for 3 hosts, and domain start to the guest's boot line.

Baselines run in the same script, since these machines are noisy:
- lab_up: a second lab_up of the healthy lab (Ansible's own cost plus the health checks);
- boot: the same image booted by a bare qemu-system-x86_64 (TCG) outside libvirt.
Run as root: `make bench` or `.venv/bin/python bench/lab.py [--boots N]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))

from harness import GUEST_IMAGE, Console, domain_xml, named_lab, run_playbook, start_bare_qemu  # noqa: E402  pylint: disable=wrong-import-position

LAB = named_lab("vcbnch", "10.249.0.0/24", hosts=3, non_shared=[])
NET_XML = (
    "<network><name>benchnet</name><bridge name='vcbench0'/><ip address='192.168.152.1' netmask='255.255.255.0'>"
    "<dhcp><range start='192.168.152.10' end='192.168.152.50'/></dhcp></ip></network>"
)


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return time.monotonic() - start, result


def boot_in_libvirt(boots: int) -> list[float]:
    name = "bench-guest"
    inst = f"{LAB.instances_path}/{name}"
    LAB.ssh("node1", "virsh net-create /dev/stdin", data=NET_XML)
    LAB.ssh("node1", f"mkdir -p {inst} && qemu-img create -q -f qcow2 -F qcow2 -b {GUEST_IMAGE} {inst}/disk")
    LAB.ssh("node1", "virsh define /dev/stdin", data=domain_xml(name, inst + "/disk", inst + "/console.log", "benchnet"))
    console = Console(os.path.join(LAB.instances_dir("node1"), name, "console.log"))
    times = []
    for n in range(1, boots + 1):
        seen = len(console.lines())
        start = time.monotonic()
        LAB.ssh("node1", f"virsh start {name}")
        console.wait("BOOT", timeout=120, after=seen, pattern=f"^count={n} ")
        times.append(time.monotonic() - start)
        LAB.ssh("node1", f"virsh destroy {name}")
    LAB.ssh("node1", f"virsh undefine {name}; rm -rf {inst}; virsh net-destroy benchnet")
    return times


def boot_in_bare_qemu(boots: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        disk = os.path.join(tmp, "disk")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", GUEST_IMAGE, disk], check=True)
        for n in range(1, boots + 1):
            log = os.path.join(tmp, f"console-{n}.log")
            start = time.monotonic()
            proc = start_bare_qemu(disk, log)
            try:
                Console(log).wait("BOOT", timeout=120, pattern=f"^count={n} ")
                times.append(time.monotonic() - start)
            finally:
                proc.kill()
                proc.wait()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3, help="boots per method (default 3)")
    args = parser.parse_args()
    if not os.path.exists(GUEST_IMAGE):
        sys.exit("build the test image first: tools/build-test-image")
    run_playbook("lab_down.yml", LAB.vars)
    t_up, up = timed(run_playbook, "lab_up.yml", LAB.vars)
    if up.rc != 0:
        print(up.stdout[-3000:])
        sys.exit("lab_up failed")
    try:
        t_noop, noop = timed(run_playbook, "lab_up.yml", LAB.vars)
        assert noop.changed == 0, "second lab_up changed something"
        libvirt = boot_in_libvirt(args.boots)
        bare = boot_in_bare_qemu(args.boots)
    finally:
        t_down, down = timed(run_playbook, "lab_down.yml", LAB.vars)
    if down.rc != 0:
        sys.exit("lab_down failed")
    print(f"lab figures ({LAB.hosts} compute hosts + controller, {os.cpu_count()} cores)")
    print(f"  lab_up, new lab            {t_up:6.1f} s")
    print(f"  lab_up, healthy lab (base) {t_noop:6.1f} s   -> making the hosts costs {t_up - t_noop:.1f} s")
    print(f"  lab_down                   {t_down:6.1f} s")
    print(f"  domain start -> BOOT line, libvirt on node1: median {statistics.median(libvirt):.2f} s  ({', '.join(f'{t:.2f}' for t in libvirt)})")
    print(f"  qemu exec -> BOOT line, bare QEMU (base):    median {statistics.median(bare):.2f} s  ({', '.join(f'{t:.2f}' for t in bare)})")
    print("  libvirt / bare QEMU: %.2fx" % (statistics.median(libvirt) / statistics.median(bare)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
