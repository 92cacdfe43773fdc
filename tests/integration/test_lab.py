# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lab itself: reachability, isolation, a booted guest, live migration, idempotence, repair."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import uuid

import pytest

from conftest import LAB
from harness import GUEST_IMAGE, Console, domain_xml, lab_footprint, run_module, run_playbook

COMPUTE = ["node1", "node2", "node3"]
NET_XML = (
    "<network><name>labtest</name><bridge name='vcltest0'/><ip address='192.168.150.1' netmask='255.255.255.0'>"
    "<dhcp><range start='192.168.150.10' end='192.168.150.50'/></dhcp></ip></network>"
)


def test_ansible_reaches_every_host_over_ssh(lab):
    pings = run_module(lab, "all", "ansible.builtin.ping", "")
    assert pings.ok(), pings
    # no group shares a name with a host (the group is "control", its host "controller")
    assert "Found both group and host with same name" not in pings.stdout + pings.stderr, pings.stderr
    pongs = [h for h, r in pings.results.items() if r.get("ping") == "pong"]
    assert sorted(pongs) == sorted(COMPUTE + ["controller"])
    # each answers with its own hostname: its own UTS namespace behind its own sshd
    hostnames = run_module(lab, "all", "ansible.builtin.command", "hostname")
    assert hostnames.ok(), hostnames
    names = {h: r["stdout"].strip() for h, r in hostnames.results.items()}
    assert names == {h: h for h in COMPUTE + ["controller"]}


def test_the_lab_folders_follow_its_name(lab):
    # the tests give lab_up only the name, the network and the size of the lab
    assert "lab_state_dir" not in lab.vars and "lab_run_dir" not in lab.vars
    state_dir, run_dir = f"/var/lib/virtcloud-lab-{lab.name}", f"/run/virtcloud-lab-{lab.name}"
    assert os.path.isfile(f"{state_dir}/inventory.yml") and os.path.isdir(f"{run_dir}/ns")
    with open(f"{state_dir}/lab.json", encoding="utf-8") as f:
        record = json.load(f)
    assert record == dict(name=lab.name, network=lab.network, hosts=COMPUTE, non_shared=["node3"], state_dir=state_dir, run_dir=run_dir, kvm=False), record
    with open(f"{run_dir}/lab-name", encoding="ascii") as f:
        assert f.read() == lab.name + "\n"


def test_where_the_hosts_files_are_on_the_machine(lab):
    """The command of docs/lab.md lists each host's own paths with the machine's folder behind each."""

    def mounts(host):
        out = subprocess.run(
            ["nsenter", f"--mount={lab.run_dir}/ns/{host}.mnt", "findmnt", "-rn", "-o", "TARGET,SOURCE"], capture_output=True, text=True, check=True
        ).stdout
        return {line.split()[0]: line.split()[1].split("[", 1)[1].rstrip("]") for line in out.splitlines() if "[" in line}

    node1, node3, controller = mounts("node1"), mounts("node3"), mounts("controller")
    assert node1[lab.instances_path] == f"{lab.state_dir}/shared/instances"
    assert node3[lab.instances_path] == f"{lab.state_dir}/hosts/node3/instances"
    assert node1["/var/lib/virtcloud"] == f"{lab.state_dir}/hosts/node1/var-lib-virtcloud"
    assert controller[lab.spec.image_store_path] == f"{lab.state_dir}/hosts/controller/images"
    # the lab module returns the same, for each host
    status = run_module(lab, "localhost", "lab", dict(name=lab.name, hosts=lab.hosts, non_shared=lab.non_shared), check=True).one("localhost")
    assert status.ok and not status.changed, status
    paths = {h["name"]: h["paths"] for h in status.result["hosts"]}
    for host, found in (("node1", node1), ("node3", node3), ("controller", controller)):
        assert {inside: machine for inside, machine in paths[host].items() if inside in found} == {k: v for k, v in found.items() if k in paths[host]}
        assert set(paths[host]) <= set(found), (paths[host], found)
    marker = f"seen-{uuid.uuid4().hex[:8]}"
    lab.ssh("node3", f"touch {lab.instances_path}/{marker}")
    try:
        assert os.path.exists(f"{lab.state_dir}/hosts/node3/instances/{marker}")
    finally:
        lab.ssh("node3", f"rm -f {lab.instances_path}/{marker}")


def test_hosts_are_separate(lab):
    uuids = {h: lab.ssh(h, "virsh capabilities | sed -n 's:.*<uuid>\\(.*\\)</uuid>.*:\\1:p' | head -1").strip() for h in COMPUTE}
    assert len(set(uuids.values())) == 3 and all(uuids.values()), uuids
    for h in COMPUTE:
        assert lab.ssh(h, "hostname").strip() == h
        assert lab.ssh(h, "ip -o -4 addr show eth0").split()[3] == f"{lab.address(h)}/24"
    # the collection's own state and log folders are each host's own
    lab.ssh("node1", "echo node1 > /var/lib/virtcloud/whoami && echo node1 > /var/log/virtcloud/whoami")
    for h in ("node2", "controller"):
        assert lab.ssh(h, "cat /var/lib/virtcloud/whoami /var/log/virtcloud/whoami 2>/dev/null || true").strip() == ""
    lab.ssh("node1", "rm /var/lib/virtcloud/whoami /var/log/virtcloud/whoami")
    # node3 does not share storage; node1 and node2 do
    marker = f"share-{uuid.uuid4().hex[:8]}"
    lab.ssh("node1", f"touch {lab.instances_path}/{marker}")
    try:
        assert lab.ssh("node2", f"ls {lab.instances_path}/").split().count(marker) == 1
        assert marker not in lab.ssh("node3", f"ls {lab.instances_path}/").split()
    finally:
        lab.ssh("node1", f"rm -f {lab.instances_path}/{marker}")


def test_each_libvirtd_sees_only_its_own_domains(lab):
    for h in COMPUTE:
        xml = f"<domain type='qemu'><name>only-{h}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
        lab.ssh(h, "virsh define /dev/stdin", data=xml)
    try:
        for h in COMPUTE:
            names = lab.ssh(h, "virsh list --all --name").split()
            assert [n for n in names if n.startswith("only-")] == [f"only-{h}"]
    finally:
        for h in COMPUTE:
            lab.ssh(h, f"virsh undefine only-{h}", check=False)


@pytest.fixture()
def guest(lab):
    """The test guest defined with plain virsh calls on node1, its network on node1 and node2."""
    name = f"lab-guest-{uuid.uuid4().hex[:6]}"
    inst = lab.instances_path + f"/{name}"
    for h in ("node1", "node2"):
        lab.ssh(h, "virsh net-info labtest >/dev/null 2>&1 || virsh net-create /dev/stdin", data=NET_XML)
    lab.ssh("node1", f"mkdir -p {inst} && qemu-img create -q -f qcow2 -F qcow2 -b {GUEST_IMAGE} {inst}/disk")
    lab.ssh("node1", "virsh define /dev/stdin", data=domain_xml(name, inst + "/disk", inst + "/console.log", "labtest"))
    yield name, Console(os.path.join(lab.instances_dir("node1"), name, "console.log"))
    for h in ("node1", "node2"):
        lab.ssh(h, f"virsh destroy {name}; virsh undefine {name}", check=False)
    lab.ssh("node1", f"rm -rf {inst}")


def test_guest_boots_and_live_migrates_without_losing_memory(lab, guest):
    name, console = guest
    lab.ssh("node1", f"virsh start {name}")
    _i, boot = console.wait("BOOT", timeout=90)
    assert boot.startswith("count=1 variant=normal"), boot
    _i, ip = console.wait("IP", timeout=60, pattern=r"^eth0 192\.168\.150\.\d+/24")
    before = console.wait("TICK", timeout=30, pattern=r"^([3-9]|\d\d+)$")[0]
    last_before = console.ticks()[-1]

    # Nova's shared-storage check: a file made on the destination is seen on the source.
    probe = lab.instances_path + f"/.probe-{uuid.uuid4().hex[:8]}"
    lab.ssh("node2", f"touch {probe}")
    shared = lab.ssh("node1", f"test -e {probe} && echo shared || echo local").strip()
    lab.ssh("node2", f"rm -f {probe}")
    assert shared == "shared"
    # The storage is verified shared (one filesystem bind-mounted into both hosts), which
    # libvirt cannot know for a local filesystem: so --unsafe here, for this migration only.
    proc = subprocess.run(
        [
            "virsh",
            "-c",
            lab.uri("node1"),
            "migrate",
            "--live",
            "--unsafe",
            "--persistent",
            "--undefinesource",
            name,
            lab.uri("node2"),
            "--migrateuri",
            f"tcp://{lab.address('node2')}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert name in lab.ssh("node2", "virsh list --name").split()
    assert name not in lab.ssh("node1", "virsh list --all --name").split()
    # ticks go on from where they were: the RAM counter survived the move
    console.wait("TICK", timeout=30, after=before + 1, pattern=f"^{last_before + 3}$")
    ticks = console.ticks()
    assert ticks == list(range(1, len(ticks) + 1)), f"tick counter reset or skipped: {ticks[-20:]}"
    assert not [text for kind, text in console.lines() if kind == "BOOT" and not text.startswith("count=1 ")]


def test_lab_up_again_changes_nothing(lab):
    result = run_playbook("lab_up.yml", lab.vars)
    assert result.rc == 0 and result.changed == 0, result.stdout[-2000:]


def test_lab_up_repairs_a_host_whose_daemons_died(lab):
    pidfile = os.path.join(lab.state_dir, "hosts", "node3", "pids", "libvirtd.pid")
    with open(pidfile, encoding="ascii") as f:
        pid = int(f.read())
    os.kill(pid, 9)
    check = run_playbook("lab_up.yml", lab.vars, check=True)
    assert check.rc == 0 and "start libvirtd on node3" in check.stdout and check.changed == 1
    assert subprocess.run(["ssh", "-F", lab.ssh_config, "node3", "virsh version"], capture_output=True, check=False).returncode != 0
    result = run_playbook("lab_up.yml", lab.vars)
    assert result.rc == 0 and "start libvirtd on node3" in result.stdout, result.stdout[-2000:]
    assert "Using library" in lab.ssh("node3", "virsh version")
    assert run_playbook("lab_up.yml", lab.vars).changed == 0


@pytest.mark.parametrize(
    "playbook, extra, message",
    [
        (
            "lab_down.yml",
            dict(lab_name="vcnone"),
            "lab vcnone is not up: /var/lib/virtcloud-lab-vcnone holds no record of it (lab.json), so nothing was removed",
        ),
        ("lab_down.yml", dict(lab_name="vcnone", lab_state_dir=LAB.state_dir), f"{LAB.state_dir} is the state folder of lab '{LAB.name}', not of lab 'vcnone'"),
        ("lab_up.yml", dict(lab_name="vcnone", lab_state_dir=LAB.state_dir), f"{LAB.state_dir} is the state folder of lab '{LAB.name}', not of lab 'vcnone'"),
        ("lab_up.yml", dict(lab_name="vcnone", lab_run_dir=LAB.run_dir), f"{LAB.run_dir} is the run folder of lab '{LAB.name}', not of lab 'vcnone'"),
    ],
)
def test_a_run_with_another_name_never_touches_the_lab(lab, playbook, extra, message):
    before = lab_footprint(lab)
    result = run_playbook(playbook, extra)
    assert message in result.stdout, result.stdout[-2000:]
    assert (result.rc == 0 and result.changed == 0) if "is not up" in message else result.rc != 0, result.stdout[-2000:]
    assert {k: v for k, v in lab_footprint(lab).items() if k != "pids"} == {k: v for k, v in before.items() if k != "pids"}
    assert not os.path.exists("/var/lib/virtcloud-lab-vcnone") and not os.path.exists("/run/virtcloud-lab-vcnone")
    assert run_playbook("lab_up.yml", lab.vars, check=True).changed == 0


def test_a_run_waits_for_another_run_on_the_same_lab(lab):
    # this test holds the lab's lock, as a lab_up or lab_down in progress does
    fd = os.open(f"/run/lock/virtcloud-lab-{lab.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        for playbook in ("lab_up.yml", "lab_down.yml"):
            result = run_playbook(playbook, dict(lab.vars, lab_lock_timeout=2))
            assert result.rc != 0 and f"lab {lab.name} is being changed by another run (pid {os.getpid()}): wait for it to finish" in result.stdout, (
                result.stdout[-2000:]
            )
            assert "disk space" not in result.stdout
    finally:
        os.close(fd)
    assert os.path.isdir(lab.state_dir)
    assert run_playbook("lab_up.yml", lab.vars).changed == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (dict(lab_hosts=0), "lab_hosts must be a whole number from 1 to 16"),
        (dict(lab_hosts=17), "lab_hosts must be a whole number from 1 to 16"),
        (dict(lab_name="Bad_Name"), "lab name 'Bad_Name' is not valid"),
        (dict(lab_network="8.8.8.0/24"), "is not a private range"),
        (dict(lab_network=LAB.vars["lab_network"], lab_name="other"), "already in use on this machine"),  # the test lab's own network
        (dict(lab_non_shared=["node9"]), "lab_non_shared names hosts that the lab does not have: node9"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(lab, extra, message):
    vars_ = dict(lab.vars, lab_state_dir="/var/lib/virtcloud-lab-bad", lab_run_dir="/run/virtcloud-lab-bad")
    vars_.update(extra)
    result = run_playbook("lab_up.yml", vars_)
    assert result.rc != 0 and message in result.stdout, result.stdout[-1500:]
    assert "Traceback" not in result.stdout + result.stderr
    assert not os.path.exists("/var/lib/virtcloud-lab-bad")
    assert not [
        n
        for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
        if n.startswith(vars_["lab_name"] + "-") and vars_["lab_name"] != lab.name
    ]
