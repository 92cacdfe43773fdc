# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""An instance's lifecycle on the lab, through the modules domain, instance_action and
instance_info, checked by what the test guest prints on its console.

The tests run in file order on one instance (a lifecycle is a sequence): each step
starts from the state the previous one left.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid

import pytest

from harness import GUEST_IMAGE, Console, HostResult, run_module

HOST = "node1"
NET = "vclifecycle"
NET_XML = (
    f"<network><name>{NET}</name><bridge name='vclc0'/><ip address='192.168.152.1' netmask='255.255.255.0'>"
    "<dhcp><range start='192.168.152.10' end='192.168.152.50'/></dhcp></ip></network>"
)


def module(lab, name, args, check=False, diff=False) -> HostResult:
    return run_module(lab, HOST, name, args, check=check, diff=diff).one(HOST)


class Instance:
    """The instance under test: its record, where its files are, and how to drive it."""

    def __init__(self, lab):
        self.lab = lab
        self.uuid = str(uuid.uuid4())
        self.name = f"lc-{self.uuid[:6]}"
        self.domain = f"instance-{self.uuid}"
        self.dir = f"{lab.instances_path}/{self.uuid}"
        self.local_dir = os.path.join(lab.instances_dir(HOST), self.uuid)
        self.console = Console(os.path.join(self.local_dir, "console.log"))
        self.record = {
            "uuid": self.uuid,
            "name": self.name,
            "project": "demo",
            "flavor": {"name": "m1.nano", "vcpus": 1, "ram_mb": 256, "disk_gb": 1},
            "image": {"id": "vctest"},
            "ports": [{"network": "private", "mac": "fa:16:3e:{:02x}:{:02x}:{:02x}".format(*tuple(uuid.UUID(self.uuid).bytes[:3])), "ip": None}],
            "vm_state": "active",
            "task_state": None,
            "power_state": 1,
            "host": HOST,
            "availability_zone": "az1",
            "meta": {"purpose": "lifecycle"},
            "user_data": "#!/bin/sh\necho lifecycle\n",
            "created_at": "2024-05-01T12:00:00Z",
            "updated_at": "2024-05-01T12:00:00Z",
            "launched_at": "2024-05-01T12:00:00Z",
        }

    def domain_args(self, state, **extra):
        args = dict(
            instance=self.record, instances_path=self.lab.instances_path, domain_type="qemu", state=state, networks={"private": {"libvirt_network": NET}}
        )
        args.update(extra)
        return args

    def action(self, action, check=False, **extra):
        args = dict(instance=self.uuid, action=action, instances_path=self.lab.instances_path)
        args.update(extra)
        return module(self.lab, "instance_action", args, check=check)

    def info(self) -> dict:
        run = module(self.lab, "instance_info", dict(uuid=self.uuid, instances_path=self.lab.instances_path))
        assert run.ok, run
        assert len(run.result["instances"]) == 1, run
        return run.result["instances"][0]

    def virsh(self, command: str) -> str:
        return self.lab.ssh(HOST, f"virsh {command}", check=False).strip()

    def boots(self) -> list:
        return [text for kind, text in self.console.lines() if kind == "BOOT"]

    def kinds(self) -> list:
        return [kind for kind, _text in self.console.lines()]


@pytest.fixture(scope="module")
def inst(lab):
    """The instance directory with a qcow2 overlay on the test image, and a libvirt network with DHCP."""
    instance = Instance(lab)
    lab.ssh(HOST, f"virsh net-info {NET} >/dev/null 2>&1 || virsh net-create /dev/stdin", data=NET_XML)
    lab.ssh(HOST, f"mkdir -p {instance.dir} && qemu-img create -q -f qcow2 -F qcow2 -b {GUEST_IMAGE} {instance.dir}/disk")
    yield instance
    lab.ssh(
        HOST,
        f"virsh destroy {instance.domain}; virsh undefine --managed-save {instance.domain}; rm -rf {instance.dir}; virsh net-destroy {NET}",
        check=False,
    )


def assert_idempotent(inst, action, **extra):
    """The second check-mode run and the second real run report no change."""
    again_check = inst.action(action, check=True, **extra)
    again = inst.action(action, **extra)
    assert again_check.ok and not again_check.changed, again_check
    assert again.ok and not again.changed, again


def test_domain_running_defines_starts_and_the_guest_reads_its_config_drive(lab, inst):
    check = module(lab, "domain", inst.domain_args("running"), check=True, diff=True)
    assert check.ok and check.changed and check.result["actions"] == ["config_drive", "define", "start"], check
    assert f"+  <name>{inst.domain}</name>" in check.stdout  # the diff shows the domain to be
    assert inst.domain not in inst.virsh("list --all --name").split()
    assert sorted(os.listdir(inst.local_dir)) == ["disk"]

    real = module(lab, "domain", inst.domain_args("running"))
    assert real.ok and real.changed and real.result["state"] == "running", real
    assert inst.virsh(f"domstate {inst.domain}") == "running"
    assert sorted(os.listdir(inst.local_dir)) == ["console.log", "disk", "disk.config", "instance.json", "libvirt.xml"]
    with open(os.path.join(inst.local_dir, "instance.json"), encoding="ascii") as f:
        assert json.load(f)["uuid"] == inst.uuid

    _i, boot = inst.console.wait("BOOT", timeout=90)
    assert boot.startswith("count=1 variant=normal"), boot
    _i, metadata = inst.console.wait("METADATA", timeout=30)
    meta = json.loads(metadata)
    assert (meta["uuid"], meta["name"], meta["hostname"], meta["availability_zone"], meta["project_id"], meta["meta"]) == (
        inst.uuid,
        inst.name,
        inst.name,
        "az1",
        "demo",
        {"purpose": "lifecycle"},
    )
    assert inst.console.wait("USERDATA", timeout=10)[1] == "#!/bin/sh"
    assert inst.console.wait("HOSTNAME", timeout=10)[1] == f"{inst.name} source=metadata"
    assert inst.console.wait("IP", timeout=30, pattern=r"^eth0 192\.168\.152\.\d+/24 mac={}$".format(inst.record["ports"][0]["mac"]))
    inst.console.wait("TICK", timeout=30, pattern=r"^2$")

    for check_mode in (True, False):
        again = module(lab, "domain", inst.domain_args("running"), check=check_mode)
        assert again.ok and not again.changed and again.result["actions"] == [], again
    assert len(inst.boots()) == 1


def _ticks_frozen(inst, seconds=3.0) -> int:
    time.sleep(0.5)
    frozen = inst.console.ticks()
    time.sleep(seconds)
    assert inst.console.ticks() == frozen, f"ticks went on: {inst.console.ticks()[-5:]}"
    return frozen[-1]


def _ticks_continue(inst, last: int):
    start = len(inst.console.lines())
    inst.console.wait("TICK", timeout=20, after=start - 1, pattern=f"^{last + 2}$")
    ticks = inst.console.ticks()
    assert ticks == list(range(1, len(ticks) + 1)), f"tick counter reset or skipped: {ticks[-10:]}"


def test_pause_stops_the_ticks(inst):
    check = inst.action("pause", check=True)
    assert check.ok and check.changed and check.result["vm_state"] == "paused", check
    assert inst.virsh(f"domstate {inst.domain}") == "running" and inst.info()["vm_state"] == "active"

    real = inst.action("pause")
    assert real.ok and real.changed and real.result["state"] == "paused", real
    info = inst.info()
    assert (info["vm_state"], info["task_state"], info["state"], info["power_state"]) == ("paused", None, "paused", 3)
    inst.last_tick = _ticks_frozen(inst)
    assert_idempotent(inst, "pause")


def test_unpause_goes_on_from_the_same_tick(inst):
    check = inst.action("unpause", check=True)
    assert check.ok and check.changed, check
    assert inst.virsh(f"domstate {inst.domain}") == "paused"
    real = inst.action("unpause")
    assert real.ok and real.changed and real.result["vm_state"] == "active", real
    _ticks_continue(inst, inst.last_tick)
    assert_idempotent(inst, "unpause")
    assert len(inst.boots()) == 1


def test_suspend_saves_the_memory(inst):
    check = inst.action("suspend", check=True)
    assert check.ok and check.changed, check
    assert inst.virsh(f"domstate {inst.domain}") == "running"
    real = inst.action("suspend")
    assert real.ok and real.changed and real.result["state"] == "suspended", real
    assert inst.virsh(f"domstate {inst.domain}") == "shut off"
    assert re.search(r"Managed save:\s+yes", inst.virsh(f"dominfo {inst.domain}"))
    info = inst.info()
    assert (info["vm_state"], info["state"], info["power_state"]) == ("suspended", "suspended", 4)
    inst.last_tick = _ticks_frozen(inst, 2.0)
    assert_idempotent(inst, "suspend")


def test_resume_restores_the_memory(inst):
    check = inst.action("resume", check=True)
    assert check.ok and check.changed, check
    assert inst.virsh(f"domstate {inst.domain}") == "shut off"
    real = inst.action("resume")
    assert real.ok and real.changed and real.result["vm_state"] == "active", real
    assert re.search(r"Managed save:\s+no", inst.virsh(f"dominfo {inst.domain}"))
    # the restored domain's live metadata is the current record, not the one in the save image
    for where in ("--live", "--config"):
        element = inst.virsh(f"metadata {inst.domain} {'https://virtcloud.invalid/xmlns/compute/1'} {where}")
        assert 'vm_state="active"' in element and 'task_state=""' in element, (where, element[:300])
    _ticks_continue(inst, inst.last_tick)
    assert_idempotent(inst, "resume")
    assert len(inst.boots()) == 1


def test_soft_reboot_goes_through_acpi(inst):
    for _round in range(2):  # an action that always runs: check mode says so every time
        check = inst.action("reboot", check=True)
        assert check.ok and check.changed, check
    assert "SHUTDOWN" not in inst.kinds()
    before = len(inst.console.lines())
    real = inst.action("reboot")
    assert real.ok and real.changed and real.result["reboot"]["kind"] == "soft" and not real.result["reboot"]["fallback"], real
    shutdown, _text = inst.console.wait("SHUTDOWN", timeout=10, after=before)
    _i, boot = inst.console.wait("BOOT", timeout=90, after=shutdown)
    assert boot.startswith("count=2 "), boot
    inst.console.wait("READY", timeout=60, after=shutdown)
    assert inst.info()["vm_state"] == "active"


def test_stop_is_a_clean_shutdown(inst):
    check = inst.action("stop", check=True)
    assert check.ok and check.changed, check
    assert inst.virsh(f"domstate {inst.domain}") == "running"
    before = len(inst.console.lines())
    started = time.monotonic()
    real = inst.action("stop")
    assert real.ok and real.changed, real
    assert time.monotonic() - started < 60
    power_off = real.result["power_off"]
    assert power_off["clean"] and not power_off["destroyed"] and power_off["acpi_presses"] >= 1, power_off
    assert inst.console.wait("SHUTDOWN", timeout=5, after=before)
    assert inst.virsh(f"domstate {inst.domain}") == "shut off"
    info = inst.info()
    assert (info["vm_state"], info["task_state"], info["power_state"]) == ("stopped", None, 4)
    assert_idempotent(inst, "stop")


def test_pause_of_a_stopped_instance_is_refused_and_changes_nothing(inst):
    before = inst.info()
    for check_mode in (True, False):
        run = inst.action("pause", check=check_mode)
        assert not run.ok, run
        assert run.msg == f"Cannot pause instance {inst.name} ({inst.uuid}) while it is stopped: pause needs vm_state active"
        assert run.result["refused"] == "vm_state"
    after = inst.info()
    assert after["record"] == before["record"] and after["state"] == "shutoff"


def test_lock_refuses_start_until_unlocked(inst):
    check = inst.action("lock", check=True, reason="lifecycle test")
    assert check.ok and check.changed, check
    assert not inst.info()["locked"]
    real = inst.action("lock", reason="lifecycle test")
    assert real.ok and real.changed, real
    info = inst.info()
    assert info["locked"] and info["locked_reason"] == "lifecycle test"
    assert_idempotent(inst, "lock")

    refused = inst.action("start")
    assert not refused.ok and refused.msg == (f"Cannot start instance {inst.name} ({inst.uuid}): it is locked (reason: lifecycle test); unlock it first"), (
        refused
    )
    assert inst.virsh(f"domstate {inst.domain}") == "shut off"

    check = inst.action("unlock", check=True)
    assert check.ok and check.changed and inst.info()["locked"], check
    real = inst.action("unlock")
    assert real.ok and real.changed and not inst.info()["locked"], real
    assert_idempotent(inst, "unlock")

    before = len(inst.console.lines())
    check = inst.action("start", check=True)
    assert check.ok and check.changed and inst.virsh(f"domstate {inst.domain}") == "shut off", check
    start = inst.action("start")
    assert start.ok and start.changed and start.result["vm_state"] == "active", start
    index, boot = inst.console.wait("BOOT", timeout=90, after=before)
    assert boot.startswith("count=3 "), boot
    assert_idempotent(inst, "start")
    inst.console.wait("READY", timeout=60, after=index)


def test_hard_reboot_boots_again_without_acpi(inst):
    check = inst.action("reboot_hard", check=True)
    assert check.ok and check.changed, check
    before = len(inst.console.lines())
    real = inst.action("reboot_hard")
    assert real.ok and real.changed and real.result["reboot"]["kind"] == "hard", real
    index, boot = inst.console.wait("BOOT", timeout=90, after=before)
    assert boot.startswith("count=4 "), boot
    assert "SHUTDOWN" not in [kind for kind, _text in inst.console.lines()[before:index]]
    actions = [(a["action"], a["result"]) for a in inst.info()["actions"]]
    assert actions == [
        ("pause", "Success"),
        ("unpause", "Success"),
        ("suspend", "Success"),
        ("resume", "Success"),
        ("reboot", "Success"),
        ("stop", "Success"),
        ("lock", "Success"),
        ("unlock", "Success"),
        ("start", "Success"),
        ("reboot", "Success"),
    ]


def test_delete_removes_the_domain_and_directory_but_not_the_base_image(inst):
    check = inst.action("delete", check=True)
    assert check.ok and check.changed and check.result["ports"] == inst.record["ports"], check
    assert inst.domain in inst.virsh("list --all --name").split() and os.path.isdir(inst.local_dir)

    real = inst.action("delete")
    assert real.ok and real.changed and real.result["vm_state"] == "deleted", real
    assert real.result["ports"] == inst.record["ports"]
    assert real.result["instance"]["actions"][-1]["action"] == "delete"
    assert inst.domain not in inst.virsh("list --all --name").split()
    assert not os.path.exists(inst.local_dir)
    assert os.path.isfile(GUEST_IMAGE)
    assert subprocess.run(["qemu-img", "check", "-q", "-U", GUEST_IMAGE], check=False).returncode == 0
    assert_idempotent(inst, "delete")


def test_unknown_instance_fails_clearly(lab, inst):
    for ref in (str(uuid.uuid4()), "no-such-instance"):
        run = module(lab, "instance_action", dict(instance=ref, action="start", instances_path=lab.instances_path))
        assert not run.ok and run.msg == (
            f"cannot start instance {ref}: there is no such instance on this host (instance_info lists the instances of a host)"
        ), run
    run = module(lab, "instance_info", dict(name=inst.name, instances_path=lab.instances_path))
    assert run.ok and run.result["instances"] == []


def test_bad_record_fails_before_anything_is_made(lab, inst):
    bad = dict(inst.record, name="bad name!")
    run = module(lab, "domain", dict(inst.domain_args("running"), instance=bad))
    assert not run.ok and run.msg.startswith("instance name 'bad name!' is not valid"), run
    run = module(lab, "instance_action", dict(instance="x; rm -rf /", action="stop", instances_path=lab.instances_path))
    assert not run.ok and "is not valid" in run.msg, run
    assert inst.domain not in inst.virsh("list --all --name").split()
    assert not os.path.exists(inst.local_dir)
