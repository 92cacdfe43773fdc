# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Domain operations: the pure tables, the shutdown schedule, the config drive commands, and
the module backends against a fake libvirt (state machine of a guest, fake clock)."""

from __future__ import annotations

import copy
import json
import os

import pytest
from lxml import etree

from ansible_collections.virtcloud.compute.plugins.module_utils import _actions as ac
from ansible_collections.virtcloud.compute.plugins.module_utils import _config_drive as cd
from ansible_collections.virtcloud.compute.plugins.module_utils import _domain as dm
from ansible_collections.virtcloud.compute.plugins.module_utils import _files as fi
from ansible_collections.virtcloud.compute.plugins.module_utils import _guest as gu
from ansible_collections.virtcloud.compute.plugins.module_utils import _instance as inst_mod
from ansible_collections.virtcloud.compute.plugins.module_utils import _record as rec
from ansible_collections.virtcloud.compute.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtcloud.compute.plugins.module_utils import _libvirt as lv
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import ActionRefused, ImageDoesNotFit, Instance
from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import base_name
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImgError
from ansible_collections.virtcloud.compute.tests.unit.plugins.module_utils.fake_libvirt import UUID, Clock, FakeConn, record

REQ = "req-0b0e4c83-2a3f-4c52-9d3f-2b8e2f0d4c11"
NETS = {"net1": {"bridge": "vcbr0"}}

SHUTOFF, RUNNING, PAUSED = lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_PAUSED


# --------------------------------------------------------------------------- observed states


@pytest.mark.parametrize(
    "state, saved, expected",
    [
        (lv.STATE_ABSENT, False, "absent"),
        (lv.VIR_DOMAIN_NOSTATE, False, "nostate"),
        (lv.VIR_DOMAIN_RUNNING, False, "running"),
        (lv.VIR_DOMAIN_BLOCKED, False, "running"),
        (lv.VIR_DOMAIN_PAUSED, False, "paused"),
        (lv.VIR_DOMAIN_SHUTDOWN, False, "in_shutdown"),
        (lv.VIR_DOMAIN_SHUTOFF, False, "shutoff"),
        (lv.VIR_DOMAIN_SHUTOFF, True, "suspended"),
        (lv.VIR_DOMAIN_CRASHED, False, "crashed"),
        (lv.VIR_DOMAIN_PMSUSPENDED, False, "pmsuspended"),
    ],
)
def test_observed_state(state, saved, expected):
    assert gu.observed_state(state, saved) == expected


@pytest.mark.parametrize("bad", [8, -2, True, None, "running"])
def test_observed_state_rejects_unknown_numbers(bad):
    with pytest.raises(dm.DomainError, match="not one of libvirt"):
        gu.observed_state(bad)


# --------------------------------------------------------------------------- steps


@pytest.mark.parametrize(
    "current, wanted, steps",
    [
        ("absent", "present", ["define"]),
        ("running", "present", []),
        ("suspended", "present", []),
        ("absent", "running", ["define", "start"]),
        ("shutoff", "running", ["start"]),
        ("suspended", "running", ["start"]),
        ("paused", "running", ["resume"]),
        ("running", "running", []),
        ("in_shutdown", "running", ["wait_shutoff", "start"]),
        ("crashed", "running", ["destroy", "start"]),
        ("pmsuspended", "running", ["wakeup"]),
        ("running", "shutoff", ["shutdown"]),
        ("paused", "shutoff", ["resume", "shutdown"]),
        ("suspended", "shutoff", ["start", "shutdown"]),
        ("in_shutdown", "shutoff", ["shutdown"]),
        ("absent", "shutoff", ["define"]),
        ("running", "paused", ["pause"]),
        ("shutoff", "paused", ["start_paused"]),
        ("suspended", "paused", ["start_paused"]),
        ("absent", "paused", ["define", "start_paused"]),
        ("running", "suspended", ["managed_save"]),
        ("paused", "suspended", ["managed_save"]),
        ("suspended", "suspended", []),
        ("running", "absent", ["destroy", "undefine"]),
        ("paused", "absent", ["destroy", "undefine"]),
        ("suspended", "absent", ["undefine"]),
        ("shutoff", "absent", ["undefine"]),
        ("absent", "absent", []),
    ],
)
def test_plan_steps(current, wanted, steps):
    assert gu.plan_steps(current, wanted) == steps


def test_a_shut_off_domain_cannot_be_suspended():
    with pytest.raises(dm.DomainError, match="cannot suspend domain x: it is shut off.*start it first"):
        gu.plan_steps("shutoff", "suspended", "domain x")
    with pytest.raises(dm.DomainError, match="cannot suspend"):
        gu.plan_steps("absent", "suspended", "domain x")


def test_a_domain_in_no_state_is_left_alone():
    with pytest.raises(dm.DomainError, match="no state"):
        gu.next_step("nostate", "running")


def test_unknown_wanted_state():
    with pytest.raises(dm.DomainError, match="wanted state"):
        gu.next_step("running", "hibernated")


# --------------------------------------------------------------------------- shutdown schedule


@pytest.mark.parametrize(
    "timeout, interval, presses",
    [
        (60, 10, [0, 10, 20, 30, 40, 50]),
        (61, 10, [0, 10, 20, 30, 40, 50, 60]),
        (5, 10, [0]),
        (30, 0, [0]),
        (0, 10, []),
        (1, 1, [0]),
    ],
)
def test_shutdown_schedule(timeout, interval, presses):
    assert gu.shutdown_schedule(timeout, interval) == presses


@pytest.mark.parametrize("timeout, interval", [(-1, 10), (60, -1), (1.5, 10), (True, 10), ("60", 10)])
def test_shutdown_schedule_rejects_bad_numbers(timeout, interval):
    with pytest.raises(dm.DomainError, match="whole number of seconds"):
        gu.shutdown_schedule(timeout, interval)


# --------------------------------------------------------------------------- instance action decisions


@pytest.mark.parametrize(
    "action, vm_state, observed, decision",
    [
        # desired states already reached: no change
        ("start", "active", "running", "noop"),
        ("stop", "stopped", "shutoff", "noop"),
        ("pause", "paused", "paused", "noop"),
        ("unpause", "active", "running", "noop"),
        ("suspend", "suspended", "suspended", "noop"),
        ("resume", "active", "running", "noop"),
        # to do
        ("start", "stopped", "shutoff", "run"),
        ("stop", "active", "running", "run"),
        ("stop", "error", "running", "run"),
        ("stop", "active", "shutoff", "run"),  # record and domain disagree: the action syncs them
        ("pause", "active", "running", "run"),
        ("unpause", "paused", "paused", "run"),
        ("suspend", "active", "running", "run"),
        ("resume", "suspended", "suspended", "run"),
        ("reboot", "active", "running", "run"),  # reboots always run
        ("reboot_hard", "active", "running", "run"),
        ("reboot_hard", "stopped", "shutoff", "run"),
        ("delete", "active", "running", "run"),
        ("delete", "error", "crashed", "run"),
        ("lock", "stopped", "shutoff", "run"),
        ("unlock", "active", "running", "noop"),
        # Nova's table refuses
        ("pause", "stopped", "shutoff", "vm_state"),
        ("start", "paused", "paused", "vm_state"),
        ("start", "suspended", "suspended", "vm_state"),
        ("stop", "paused", "paused", "vm_state"),
        ("stop", "suspended", "suspended", "vm_state"),
        ("unpause", "active", "paused", "vm_state"),
        ("resume", "stopped", "shutoff", "vm_state"),
        ("suspend", "paused", "paused", "vm_state"),
        ("reboot", "stopped", "shutoff", "vm_state"),
        ("reboot", "paused", "paused", "vm_state"),
    ],
)
def test_action_decision(action, vm_state, observed, decision):
    rec = record(vm_state=vm_state)
    if decision in ("noop", "run"):
        assert ac.action_decision(rec, action, observed) == decision
    else:
        with pytest.raises(ActionRefused) as err:
            ac.action_decision(rec, action, observed)
        assert err.value.reason == decision
        assert f"Cannot {action} instance web-1 ({UUID}) while it is {vm_state}" in str(err.value)


def test_a_locked_instance_refuses_changes_but_not_what_is_already_done():
    rec = record(vm_state="stopped", locked=True, locked_reason="legal hold")
    with pytest.raises(ActionRefused, match=r"Cannot start instance web-1 .*locked \(reason: legal hold\); unlock it first"):
        ac.action_decision(rec, "start", "shutoff")
    with pytest.raises(ActionRefused, match="locked"):
        ac.action_decision(rec, "delete", "shutoff")
    with pytest.raises(ActionRefused, match="locked"):
        ac.action_decision(rec, "reboot_hard", "shutoff")
    assert ac.action_decision(rec, "stop", "shutoff") == "noop"  # nothing to do, nothing done
    assert ac.action_decision(rec, "lock", "shutoff") == "noop"
    assert ac.action_decision(rec, "unlock", "shutoff") == "run"


def test_a_task_in_progress_refuses_a_second_action():
    rec = record(task_state="powering-off")
    with pytest.raises(ActionRefused, match="task powering-off in progress"):
        ac.action_decision(rec, "pause", "running")
    # not even the desired state is taken as reached while a task runs
    with pytest.raises(ActionRefused):
        ac.action_decision(record(vm_state="stopped", task_state="powering-on"), "stop", "shutoff")


def test_unknown_instance():
    assert ac.action_decision(None, "delete", "absent") == "noop"
    with pytest.raises(dm.DomainError, match="no such instance"):
        ac.action_decision(None, "start", "absent")
    with pytest.raises(dm.DomainError, match="not one of"):
        ac.action_decision(record(), "hibernate", "running")


@pytest.mark.parametrize(
    "before, action, observed, after",
    [
        ("stopped", "start", "shutoff", "stopped"),  # nothing happened: vm_state kept
        ("active", "stop", "running", "active"),
        ("active", "suspend", "suspended", "suspended"),  # it got there anyway
        ("active", "suspend", "paused", "error"),  # somewhere else: error
        ("active", "reboot", "shutoff", "error"),
        ("active", "delete", "shutoff", "error"),
    ],
)
def test_vm_state_after_failure(before, action, observed, after):
    assert ac.vm_state_after_failure(before, ac.REGISTRY[action], observed) == after


# --------------------------------------------------------------------------- config drive


class Recorder:
    """A runner that records argv and stdin and answers from a table."""

    def __init__(self, answers=None):
        self.calls = []
        self.answers = answers or {}

    def __call__(self, argv, data=None):
        self.calls.append((argv, data))
        for key, answer in self.answers.items():
            if key in " ".join(argv):
                return answer
        return 0, "", ""


TOOLS = {"mkfs.vfat": "/usr/sbin/mkfs.vfat", "mmd": "/usr/bin/mmd", "mcopy": "/usr/bin/mcopy", "mdir": "/usr/bin/mdir"}
ENV = ["env", "LC_ALL=C", "LANG=C", "MTOOLS_SKIP_CHECK=1"]


def test_config_drive_commands():
    drive = cd.ConfigDrive(Recorder(), tools=TOOLS)
    files = inst_mod.config_drive_files(record(config_drive=True, user_data="#!/bin/sh\necho hi\n"))
    cmds = drive.commands("/i/disk.config.tmp", files, cd.ConfigDrive.volume_id(UUID))
    assert cmds == [
        (ENV + ["/usr/sbin/mkfs.vfat", "-n", "config-2", "-i", "3f2a6c1e", "/i/disk.config.tmp"], None),
        (ENV + ["/usr/bin/mmd", "-i", "/i/disk.config.tmp", "::/openstack"], None),
        (ENV + ["/usr/bin/mmd", "-i", "/i/disk.config.tmp", "::/openstack/2012-08-10"], None),
        (ENV + ["/usr/bin/mmd", "-i", "/i/disk.config.tmp", "::/openstack/latest"], None),
        (ENV + ["/usr/bin/mcopy", "-i", "/i/disk.config.tmp", "-", "::/openstack/2012-08-10/meta_data.json"], files["openstack/2012-08-10/meta_data.json"]),
        (ENV + ["/usr/bin/mcopy", "-i", "/i/disk.config.tmp", "-", "::/openstack/2012-08-10/user_data"], b"#!/bin/sh\necho hi\n"),
        (ENV + ["/usr/bin/mcopy", "-i", "/i/disk.config.tmp", "-", "::/openstack/latest/meta_data.json"], files["openstack/latest/meta_data.json"]),
        (ENV + ["/usr/bin/mcopy", "-i", "/i/disk.config.tmp", "-", "::/openstack/latest/user_data"], b"#!/bin/sh\necho hi\n"),
    ]
    meta = json.loads(files["openstack/latest/meta_data.json"])
    assert {"uuid", "name", "hostname", "availability_zone", "project_id", "meta", "public_keys"} <= set(meta)


@pytest.mark.parametrize("name", ["../x", "/abs", "a//b", "a/./b", "a b", "a;b", ""])
def test_config_drive_refuses_odd_file_names(name):
    with pytest.raises(cd.ConfigDriveError, match="plain relative path"):
        cd.ConfigDrive(Recorder(), tools=TOOLS).commands("/i/x", {name: b""}, "3f2a6c1e")


def test_config_drive_build_is_atomic_and_cleans_up(tmp_path):
    path = str(tmp_path / "disk.config")
    runner = Recorder()
    cd.ConfigDrive(runner, tools=TOOLS).build(path, {"openstack/latest/meta_data.json": b"{}"}, "3f2a6c1e")
    assert os.path.getsize(path) == 4 * 1024 * 1024
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert os.listdir(tmp_path) == ["disk.config"]
    tmp = runner.calls[0][0][-1]
    assert os.path.dirname(tmp) == str(tmp_path) and tmp != path  # built beside, renamed into place

    failing = Recorder({"mcopy": (1, "", "Disk full")})
    with pytest.raises(cd.ConfigDriveError, match=r"making the config drive .* \(mcopy\) failed \(rc 1\): Disk full"):
        cd.ConfigDrive(failing, tools=TOOLS).build(str(tmp_path / "other"), {"a": b"x"}, "3f2a6c1e")
    assert sorted(os.listdir(tmp_path)) == ["disk.config"]  # no temporary left


def test_config_drive_read_back(tmp_path):
    path = tmp_path / "disk.config"
    path.write_bytes(b"\0")
    listing = "::/openstack/\n::/openstack/latest/\n::/openstack/latest/meta_data.json"
    runner = Recorder({"mdir": (0, listing, ""), "meta_data.json -": (0, '{"uuid": "x"}', "")})
    drive = cd.ConfigDrive(runner, tools=TOOLS)
    files = drive.read(str(path))
    assert files == {"openstack/latest/meta_data.json": '{"uuid": "x"}'}
    assert runner.calls[1][0] == ENV + ["/usr/bin/mcopy", "-n", "-i", str(path), "::/openstack/latest/meta_data.json", "-"]
    assert drive.same(files, {"openstack/latest/meta_data.json": b'{"uuid": "x"}'})
    assert not drive.same(files, {"openstack/latest/meta_data.json": b'{"uuid": "y"}'})
    assert not drive.same(None, {})
    assert drive.read(str(tmp_path / "missing")) is None


def test_the_metadata_element_is_the_one_the_builder_writes():
    inst = Instance.from_dict(record(vm_state="paused", task_state="unpausing"))
    built = dx.build_domain(inst, instance_dir=f"/x/{UUID}", networks=NETS)
    root = etree.fromstring(built.encode())
    metadata = root.find("metadata")
    metadata.remove(metadata[0])
    element = etree.fromstring(dx.record_element_xml(inst).encode())
    moved = etree.SubElement(metadata, f"{{{dx.NS}}}instance", nsmap={"vc": dx.NS})
    for key, value in element.attrib.items():
        moved.set(key, value)
    moved.text = element.text
    assert not dx.differs(etree.tostring(root, encoding="unicode"), built)


@pytest.fixture()
def env(tmp_path):
    conn = FakeConn()
    clock = Clock(1000.0, min_step=0.01)
    ops = gu.DomainOps(conn, clock=clock, sleep=clock.sleep)
    path = str(tmp_path / "instances")
    os.makedirs(f"{path}/{UUID}")
    (tmp_path / "instances" / UUID / "disk").write_bytes(b"")
    return conn, clock, ops, path, str(tmp_path / "locks")


def ensure(env, rec=None, **kwargs):
    conn, _clock, ops, path, _locks = env
    kwargs.setdefault("state", "running")
    return dm.ensure_domain(conn, rec or record(), instances_path=path, networks=NETS, domain_type="qemu", ops=ops, **kwargs)


def act(env, action, instance=UUID, **kwargs):
    conn, _clock, ops, path, locks = env
    return ac.run_instance_action(conn, instance=instance, action=action, request_id=REQ, instances_path=path, ops=ops, lock_dir=locks, **kwargs)


def stored(env):
    return dx.read_record(env[0].domains[UUID].xml)


# --------------------------------------------------------------------------- domain module backend


def test_ensure_running_check_mode_then_real_then_again(env):
    conn, _clock, _ops, path, _locks = env
    check = ensure(env, check_mode=True)
    assert check["changed"] and check["actions"] == ["define", "start"] and check["state"] == "running"
    assert conn.domains == {} and sorted(os.listdir(f"{path}/{UUID}")) == ["disk"]
    assert check["diff"]["before"] == "" and f"<name>instance-{UUID}</name>" in check["diff"]["after"]

    real = ensure(env)
    assert real["changed"] and real["actions"] == ["define", "start"] and real["state"] == "running"
    dom = conn.domains[UUID]
    assert dom.st == RUNNING and dom.calls.count("create") == 1
    assert sorted(os.listdir(f"{path}/{UUID}")) == ["disk", "instance.json", "libvirt.xml"]
    with open(f"{path}/{UUID}/instance.json", encoding="ascii") as f:
        assert json.load(f) == record()
    with open(f"{path}/{UUID}/libvirt.xml", encoding="utf-8") as f:
        assert f.read() == dom.xml

    for check_mode in (True, False):
        again = ensure(env, check_mode=check_mode)
        assert not again["changed"] and again["actions"] == [] and again["state"] == "running"
    assert conn.defines == 1


def test_ensure_redefines_a_changed_record_and_warns_when_running(env):
    conn = env[0]
    ensure(env)
    bigger = record(flavor={"name": "m1.small", "vcpus": 1, "ram_mb": 512, "disk_gb": 1})
    result = ensure(env, bigger)
    assert result["actions"] == ["redefine"] and conn.defines == 2
    assert any("next cold boot" in w for w in result["warnings"])
    assert "524288" in result["diff"]["after"] and "524288" not in result["diff"]["before"]
    assert stored(env)["flavor"]["ram_mb"] == 512
    # only the record changed: no warning
    result = ensure(env, record(flavor={"name": "m1.small", "vcpus": 1, "ram_mb": 512, "disk_gb": 1}, meta={"a": "b"}))
    assert result["actions"] == ["redefine"] and result["warnings"] == []


def test_ensure_refuses_to_start_without_root_disk(env):
    os.unlink(f"{env[3]}/{UUID}/disk")
    with pytest.raises(dm.DomainError, match="root disk .*/disk does not exist"):
        ensure(env, check_mode=True)
    assert ensure(env, state="present")["actions"] == ["define"]


def test_ensure_shutoff_is_a_clean_shutdown_with_retries(env):
    conn, clock, _ops, _path, _locks = env
    ensure(env)
    dom = conn.domains[UUID]
    dom.presses_needed = 3  # a guest that was still booting misses the first presses
    start = clock.now
    result = ensure(env, state="shutoff")
    assert result["actions"] == ["shutdown"] and dom.st == SHUTOFF
    assert result["power_off"]["clean"] and result["power_off"]["acpi_presses"] == 3 and not result["power_off"]["destroyed"]
    assert 20 <= clock.now - start < 21
    assert "destroy" not in dom.calls


def test_ensure_shutoff_destroys_a_guest_that_ignores_acpi(env):
    conn, clock, _ops, _path, _locks = env
    ensure(env)
    dom = conn.domains[UUID]
    dom.acpi = "ignore"
    start = clock.now
    result = ensure(env, state="shutoff", shutdown_timeout=60, retry_interval=10)
    assert result["power_off"] == {"clean": False, "acpi_presses": 6, "seconds": 60.0, "destroyed": True}
    assert dom.presses == 6 and dom.calls.count("destroy") == 1 and dom.st == SHUTOFF
    assert 60 <= clock.now - start < 61


def test_ensure_shutoff_without_wait_presses_once(env):
    conn = env[0]
    ensure(env)
    dom = conn.domains[UUID]
    dom.acpi = "ignore"
    result = ensure(env, state="shutoff", wait=False)
    assert result["actions"] == ["shutdown"] and dom.presses == 1 and dom.st == RUNNING
    assert result["power_off"]["clean"] is None


def test_ensure_pause_suspend_and_back(env):
    conn = env[0]
    ensure(env)
    dom = conn.domains[UUID]
    assert ensure(env, state="paused")["actions"] == ["pause"] and dom.st == PAUSED
    assert ensure(env, state="suspended")["actions"] == ["managed_save"] and dom.saved and dom.st == SHUTOFF
    assert ensure(env, state="suspended")["changed"] is False
    result = ensure(env, state="running")
    # a domain saved while paused comes back paused: the plan is re-made from the real state
    assert result["actions"] == ["start", "resume"] and dom.st == RUNNING and not dom.saved


def test_a_restored_domain_gets_the_persistent_record_back_in_its_live_metadata(env):
    conn = env[0]
    ensure(env)
    act(env, "suspend")  # the save image holds task_state suspending
    dom = conn.domains[UUID]
    assert dx.read_record(dom.saved_xml)["task_state"] == "suspending"
    rec = stored(env)
    assert rec["vm_state"] == "suspended"
    ensure(env, rec, state="running")  # the domain module restores it
    assert dx.read_record(dom.XMLDesc(0)) == rec == stored(env)


def test_ensure_reboot(env):
    conn = env[0]
    first = ensure(env, reboot="soft")
    assert first["actions"] == ["define", "start"] and "reboot" not in first  # booted by this run: no second boot
    dom = conn.domains[UUID]
    boot_id = dom.dom_id
    soft = ensure(env, reboot="soft")
    assert soft["actions"] == ["reboot_soft"] and soft["reboot"]["kind"] == "soft" and dom.dom_id != boot_id
    hard = ensure(env, reboot="hard")
    assert hard["reboot"] == {"kind": "hard"} and dom.calls.count("destroy") == 1
    with pytest.raises(dm.DomainError, match="only used with state=running"):
        ensure(env, state="shutoff", reboot="soft")


def test_ensure_absent(env):
    conn = env[0]
    ensure(env)
    check = ensure(env, rec={"uuid": UUID}, state="absent", check_mode=True)
    assert check["changed"] and check["actions"] == ["destroy", "undefine"] and UUID in conn.domains
    real = ensure(env, rec={"uuid": UUID}, state="absent")
    assert real["actions"] == ["destroy", "undefine"] and conn.domains == {}
    assert not ensure(env, rec={"uuid": UUID}, state="absent")["changed"]
    assert os.path.isdir(f"{env[3]}/{UUID}")  # the files are the instance's, not the domain's


def test_a_foreign_domain_with_the_uuid_is_not_taken(env):
    conn = env[0]
    ensure(env, state="present")
    conn.domains[UUID]._name = "somebody-else"  # pylint: disable=protected-access
    with pytest.raises(dm.DomainError, match="somebody-else has the uuid .* not this collection's domain"):
        ensure(env)


# --------------------------------------------------------------------------- instance actions backend


def test_action_check_mode_changes_nothing(env):
    conn = env[0]
    ensure(env)
    before = conn.domains[UUID].xml
    result = act(env, "pause", check_mode=True)
    assert result["changed"] and result["vm_state"] == "paused" and result["state"] == "paused"
    assert conn.domains[UUID].xml == before and conn.domains[UUID].st == RUNNING


def test_action_pause_unpause_record_and_log(env):
    conn, _clock, _ops, path, _locks = env
    ensure(env)
    result = act(env, "pause")
    assert result["changed"] and result["vm_state"] == "paused" and result["task_state"] is None and result["state"] == "paused"
    rec = stored(env)
    assert rec["vm_state"] == "paused" and rec["task_state"] is None and rec["power_state"] == 3
    entry = rec["actions"][-1]
    assert (entry["action"], entry["request_id"], entry["result"]) == ("pause", REQ, "Success")
    assert entry["start_time"] <= entry["finish_time"]
    with open(f"{path}/{UUID}/instance.json", encoding="ascii") as f:
        assert json.load(f) == rec
    assert not act(env, "pause")["changed"]
    assert len(stored(env)["actions"]) == 1
    assert act(env, "unpause")["vm_state"] == "active" and conn.domains[UUID].st == RUNNING


def test_action_by_name_and_unknown(env):
    ensure(env)
    assert act(env, "pause", instance="web-1")["uuid"] == UUID
    with pytest.raises(dm.DomainError, match="cannot start instance nope: there is no such instance on this host"):
        act(env, "start", instance="nope")
    result = act(env, "delete", instance="9c0d7c3c-3b5e-4d39-9d7e-6f0a3f6f8e11")
    assert not result["changed"] and result["ports"] == []


def test_refused_action_changes_nothing(env):
    conn = env[0]
    ensure(env, record(vm_state="stopped", power_state=4), state="shutoff")
    before = conn.domains[UUID].xml
    with pytest.raises(ActionRefused, match=f"Cannot pause instance web-1 \\({UUID}\\) while it is stopped: pause needs vm_state active"):
        act(env, "pause")
    with pytest.raises(ActionRefused):
        act(env, "pause", check_mode=True)
    assert conn.domains[UUID].xml == before and conn.domains[UUID].st == SHUTOFF


def test_lock_unlock(env):
    ensure(env, record(vm_state="stopped", power_state=4), state="shutoff")
    assert act(env, "lock", reason="legal hold")["changed"]
    assert stored(env)["locked"] and stored(env)["locked_reason"] == "legal hold"
    assert not act(env, "lock")["changed"]
    with pytest.raises(ActionRefused, match="locked"):
        act(env, "start")
    with pytest.raises(dm.DomainError, match="reason is only used with action=lock"):
        act(env, "unlock", reason="x")
    assert act(env, "unlock")["changed"]
    assert act(env, "start")["vm_state"] == "active"
    assert [a["action"] for a in stored(env)["actions"]] == ["lock", "unlock", "start"]


def test_stop_start_suspend_resume(env):
    conn = env[0]
    ensure(env)
    dom = conn.domains[UUID]
    assert act(env, "stop")["power_off"]["clean"] and dom.st == SHUTOFF
    assert not act(env, "stop")["changed"]
    assert act(env, "start")["state"] == "running"
    assert act(env, "suspend")["vm_state"] == "suspended" and dom.saved
    assert act(env, "resume")["vm_state"] == "active" and dom.st == RUNNING and not dom.saved
    assert stored(env)["power_state"] == 1


def test_reboots(env):
    conn = env[0]
    ensure(env)
    dom = conn.domains[UUID]
    result = act(env, "reboot")
    assert result["changed"] and result["reboot"]["kind"] == "soft" and dom.st == RUNNING
    dom.acpi = "ignore"
    result = act(env, "reboot", shutdown_timeout=5, retry_interval=2)
    assert result["reboot"]["kind"] == "hard" and result["reboot"]["fallback"] and dom.st == RUNNING
    assert act(env, "reboot_hard")["reboot"] == {"kind": "hard"}
    assert [a["action"] for a in stored(env)["actions"]] == ["reboot", "reboot", "reboot"]


def test_failed_action_is_logged_and_keeps_vm_state(env):
    conn = env[0]
    ensure(env, record(vm_state="stopped", power_state=4), state="shutoff")
    conn.domains[UUID].fail["create"] = (None, "unable to open disk")
    with pytest.raises(ac.ActionFailed, match="start of instance web-1 .* failed: .*unable to open disk.*vm_state is now stopped") as err:
        act(env, "start")
    rec = stored(env)
    assert err.value.record == rec
    assert rec["vm_state"] == "stopped" and rec["task_state"] is None
    entry = rec["actions"][-1]
    assert entry["result"] == "Error" and "unable to open disk" in entry["message"] and entry["finish_time"]


def test_failed_action_in_an_unexpected_state_sets_error(env):
    conn = env[0]
    ensure(env)
    conn.domains[UUID].fail["managedSave"] = (PAUSED, "no space left on device")
    with pytest.raises(ac.ActionFailed, match="vm_state is now error, the domain is paused"):
        act(env, "suspend")
    rec = stored(env)
    assert rec["vm_state"] == "error" and rec["task_state"] is None and rec["actions"][-1]["result"] == "Error"
    # Nova's table lets stop and hard reboot out of error
    assert ac.action_decision(rec, "reboot_hard", "paused") == "run"


def test_delete(env):
    conn, _clock, _ops, path, _locks = env
    ensure(env)
    check = act(env, "delete", check_mode=True)
    assert check["changed"] and check["ports"] == record()["ports"] and UUID in conn.domains
    result = act(env, "delete")
    assert result["changed"] and result["vm_state"] == "deleted" and result["state"] == "absent"
    assert result["ports"] == [{"network": "net1", "mac": "fa:16:3e:00:00:01", "ip": "10.0.0.5"}]
    assert result["instance"]["actions"][-1]["action"] == "delete"
    assert conn.domains == {} and not os.path.exists(f"{path}/{UUID}")
    again = act(env, "delete")
    assert not again["changed"]


def test_list_instances(env):
    conn, _clock, _ops, path, _locks = env
    ensure(env)
    conn.defineXML("<domain type='qemu'><name>other</name><uuid>11111111-2222-3333-4444-555555555555</uuid></domain>")
    instances, errors = dm.list_instances(conn, instances_path=path)
    assert errors == [] and [i["name"] for i in instances] == ["web-1"]
    info = instances[0]
    assert (info["state"], info["libvirt_state"], info["power_state"], info["power_state_name"]) == ("running", "running", 1, "running")
    assert info["console_log"] == f"{path}/{UUID}/console.log"
    assert dm.list_instances(conn, name="nope", instances_path=path) == ([], [])
    assert dm.list_instances(conn, uuid=UUID, instances_path=path)[0][0]["uuid"] == UUID
    # instance: a uuid when it has a uuid's form (any case), a name otherwise
    assert dm.list_instances(conn, instance=UUID.upper(), instances_path=path)[0][0]["uuid"] == UUID
    assert dm.list_instances(conn, instance="web-1", instances_path=path)[0][0]["uuid"] == UUID
    assert dm.list_instances(conn, instance="11111111-2222-3333-4444-555555555556", instances_path=path) == ([], [])
    with pytest.raises(dm.DomainError, match="give instance, or uuid or name, not both"):
        dm.list_instances(conn, instance="web-1", name="web-1", instances_path=path)


def test_instance_lock_times_out(tmp_path):
    clock = Clock()
    with rec.instance_lock("/unused", UUID, 5, lock_dir=str(tmp_path)):
        with pytest.raises(rec.RecordError, match="busy: another run holds"):
            with rec.instance_lock("/unused", UUID, 1, lock_dir=str(tmp_path), clock=clock, sleep=clock.sleep):
                pass
    with rec.instance_lock("/unused", UUID, 1, lock_dir=str(tmp_path)):
        pass


def test_record_files_are_written_atomically(tmp_path):
    path = str(tmp_path / "instance.json")
    assert fi.atomic_write(path, b"one", 0o600)
    assert not fi.atomic_write(path, b"one", 0o600)
    assert fi.atomic_write(path, b"two", 0o600)
    assert os.listdir(tmp_path) == ["instance.json"] and oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_deep_copy_of_record_is_not_changed_by_actions(env):
    rec = record()
    keep = copy.deepcopy(rec)
    ensure(env, rec)
    act(env, "pause")
    assert rec == keep


# --------------------------------------------------------------------------- snapshot, rebuild, rescue

IMAGE1 = "9e0f7a2c-4d1b-4c3a-8f5e-1a2b3c4d5e6f"
IMAGE2 = "0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d"


class FakeQemuImg:
    """Records qemu-img calls and makes the files they would make (no qemu-img here: pure logic)."""

    def __init__(self, virtual_size=64 * 1024**2, fail=None):
        self.calls = []
        self.virtual_size = virtual_size
        self.fail = fail

    def info(self, path, fmt, force_share=True):
        self.calls.append(("info", path, fmt, force_share))
        if not os.path.exists(path):
            raise dm.DomainError(f"{path}: no such file")
        return {"virtual_size": self.virtual_size, "format": fmt}

    def create_overlay(self, path, backing, backing_fmt, size=None):
        self.calls.append(("create_overlay", path, backing, backing_fmt, size))
        with open(path, "w", encoding="ascii") as f:
            f.write(f"overlay on {backing}")

    def convert(self, src, src_fmt, dest, dest_fmt, compress=False, force_share=False):
        self.calls.append(("convert", src, src_fmt, dest, dest_fmt, force_share))
        if self.fail == "convert":
            with open(dest, "w", encoding="ascii") as f:
                f.write("half")
            raise QemuImgError("qemu-img convert failed (rc 1): disk full", operation="convert", path=src)
        with open(dest, "w", encoding="ascii") as f:
            f.write("copy")


@pytest.fixture()
def disk_env(env):
    path = env[3]
    os.makedirs(f"{path}/_base")
    for image in (IMAGE1, IMAGE2):
        with open(f"{path}/_base/{base_name(image)}", "w", encoding="ascii") as f:
            f.write("base")
    ensure(env, record(image={"id": IMAGE1}))
    return env


def test_build_params_give_back_what_the_domain_was_built_with():
    inst = Instance.from_dict(
        record(ports=[{"network": "net1", "mac": "fa:16:3e:00:00:01", "ip": "10.0.0.5"}, {"network": "net2", "mac": "fa:16:3e:00:00:02", "ip": "10.1.0.5"}])
    )
    cases = [
        dict(domain_type="qemu", machine="pc", arch="x86_64", networks={"net1": {"bridge": "vcbr0"}, "net2": {"libvirt_network": "default", "mtu": 1400}}),
        dict(
            domain_type="kvm",
            machine="q35",
            arch="x86_64",
            networks={"net1": {"bridge": "br1", "mtu": 9000}, "net2": {"bridge": "br2"}},
            cpu_mode="host-passthrough",
        ),
        dict(
            domain_type="qemu",
            machine="pc-i440fx-7.2",
            arch="x86_64",
            networks={"net1": {"bridge": "a"}, "net2": {"bridge": "b"}},
            cpu_mode="custom",
            cpu_model="Haswell-noTSX",
        ),
    ]
    for params in cases:
        xml = dx.build_domain(inst, instance_dir=f"/x/{UUID}", **params)
        found = dx.build_params(xml)
        assert dx.build_domain(inst, instance_dir=f"/x/{UUID}", **found) == xml
        assert found["networks"] == params["networks"] and found["machine"] == params["machine"]


def test_build_params_refuse_an_interface_that_is_no_port():
    xml = dx.build_domain(record(), instance_dir=f"/x/{UUID}", networks=NETS)
    other = Instance.from_dict(record(ports=[{"network": "net1", "mac": "fa:16:3e:00:00:09", "ip": "10.0.0.9"}]))
    with pytest.raises(dx.DomainXmlError, match="fa:16:3e:00:00:01 that is not a port"):
        dx.build_params(xml, other)


@pytest.mark.parametrize(
    "flavor_disk, props, vsize, message",
    [
        (1, {"min_ram": 512}, 1, "needs 512 MB of RAM"),
        (1, {"min_ram": "257"}, 1, "needs 257 MB of RAM"),
        (1, {"min_disk": 2}, 1, "needs a 2 GB root disk"),
        (1, {}, 2 * 1024**3, "larger than the 1 GB root disk"),
        (1, {"min_ram": 256, "min_disk": 1}, 1024**3, None),
        (0, {"min_disk": 20}, 50 * 1024**3, None),  # disk_gb 0: the image's size
    ],
)
def test_check_image_fits(flavor_disk, props, vsize, message):
    inst = Instance.from_dict(record(flavor={"name": "m1.tiny", "vcpus": 1, "ram_mb": 256, "disk_gb": flavor_disk}))
    image = ac.Image.from_dict({"id": IMAGE2, "properties": props})
    if message is None:
        ac.check_image_fits(inst, image, vsize)
    else:
        with pytest.raises(ImageDoesNotFit, match=message):
            ac.check_image_fits(inst, image, vsize)


@pytest.mark.parametrize(
    "action, kwargs, message",
    [
        ("rebuild", {}, "needs image"),
        ("pause", {"image": {"id": IMAGE2}}, "image is only used with action rebuild or rescue"),
        ("snapshot", {}, "needs snapshot_path"),
        ("stop", {"snapshot_path": "/tmp/x.qcow2"}, "snapshot_path is only used with action=snapshot"),
        ("rescue", {"image_format": "vmdk"}, "image_format"),
        ("rebuild", {"image": {"id": "bad id!"}}, "image is not valid"),
        ("snapshot", {"snapshot_path": "relative.qcow2"}, "snapshot_path"),
    ],
)
def test_disk_action_arguments_are_checked_first(disk_env, action, kwargs, message):
    before = copy.deepcopy(stored(disk_env))
    with pytest.raises((dm.DomainError, ac.InstanceError), match=message):
        act(disk_env, action, qemu_img=FakeQemuImg(), **kwargs)
    assert stored(disk_env) == before


def test_snapshot_pauses_copies_with_force_share_and_resumes(disk_env, tmp_path):
    conn = disk_env[0]
    qemu = FakeQemuImg()
    target = str(tmp_path / "snap.qcow2")
    check = act(disk_env, "snapshot", snapshot_path=target, qemu_img=qemu, check_mode=True)
    assert check["changed"] and check["snapshot"]["path"] == target and not os.path.exists(target) and qemu.calls == []
    result = act(disk_env, "snapshot", snapshot_path=target, qemu_img=qemu)
    dom = conn.domains[UUID]
    assert [c for c in dom.calls if c in ("suspend", "resume")] == ["suspend", "resume"] and dom.st == RUNNING
    convert = [c for c in qemu.calls if c[0] == "convert"][0]
    assert convert[1].endswith(f"{UUID}/disk") and convert[3] == target + ".part" and convert[5] is True
    assert open(target, encoding="ascii").read() == "copy" and not os.path.exists(target + ".part")
    assert result["snapshot"]["paused"] is True and result["snapshot"]["image"] == {"id": IMAGE1, "properties": {}}
    rec = stored(disk_env)
    assert rec["vm_state"] == "active" and rec["task_state"] is None
    assert (rec["actions"][-1]["action"], rec["actions"][-1]["result"]) == ("createImage", "Success")
    # the file exists now: a second snapshot to it is refused before anything happens
    with pytest.raises(dm.DomainError, match="the file exists"):
        act(disk_env, "snapshot", snapshot_path=target, qemu_img=qemu)


def test_snapshot_of_a_stopped_instance_does_not_pause_or_share(disk_env, tmp_path):
    act(disk_env, "stop", shutdown_timeout=0)
    qemu = FakeQemuImg()
    result = act(disk_env, "snapshot", snapshot_path=str(tmp_path / "s.qcow2"), qemu_img=qemu)
    assert result["snapshot"]["paused"] is False and [c for c in qemu.calls if c[0] == "convert"][0][5] is False
    assert "suspend" not in disk_env[0].domains[UUID].calls


def test_a_failed_snapshot_resumes_the_guest_and_leaves_no_file(disk_env, tmp_path):
    target = str(tmp_path / "snap.qcow2")
    with pytest.raises(ac.ActionFailed, match="disk full"):
        act(disk_env, "snapshot", snapshot_path=target, qemu_img=FakeQemuImg(fail="convert"))
    assert disk_env[0].domains[UUID].st == RUNNING
    assert not os.path.exists(target) and not os.path.exists(target + ".part")
    rec = stored(disk_env)
    assert rec["vm_state"] == "active" and rec["actions"][-1]["result"] == "Error"


def test_rebuild_replaces_the_root_disk_and_keeps_the_rest(disk_env):
    conn, _clock, _ops, path, _locks = disk_env
    before = stored(disk_env)
    xml_before = conn.domains[UUID].xml
    qemu = FakeQemuImg()
    image = {"id": IMAGE2, "properties": {"min_ram": 128}}
    check = act(disk_env, "rebuild", image=image, qemu_img=qemu, check_mode=True)
    assert check["changed"] and check["vm_state"] == "active" and stored(disk_env) == before
    result = act(disk_env, "rebuild", image=image, qemu_img=qemu)
    overlay = [c for c in qemu.calls if c[0] == "create_overlay"][0]
    assert overlay[1:] == (f"{path}/{UUID}/disk.part", f"{path}/_base/{base_name(IMAGE2)}", "qcow2", 1024**3)
    assert open(f"{path}/{UUID}/disk", encoding="ascii").read().endswith(base_name(IMAGE2))
    rec = stored(disk_env)
    assert rec["image"] == image and rec["vm_state"] == "active" and rec["task_state"] is None
    assert rec["ports"] == before["ports"] and rec["flavor"] == before["flavor"] and rec["uuid"] == before["uuid"]
    assert rec["launched_at"] != before["launched_at"]  # a rebuild launches again
    assert result["image"] == image and conn.domains[UUID].st == RUNNING
    assert not dx.differs(conn.domains[UUID].xml, xml_before, include_record=False)


def test_rebuild_of_a_stopped_instance_leaves_it_stopped(disk_env):
    act(disk_env, "stop", shutdown_timeout=0)
    act(disk_env, "rebuild", image={"id": IMAGE2}, qemu_img=FakeQemuImg())
    assert stored(disk_env)["vm_state"] == "stopped" and disk_env[0].domains[UUID].st == SHUTOFF


def test_rebuild_refuses_an_image_not_in_the_cache_or_too_big(disk_env):
    before = stored(disk_env)
    with pytest.raises(dm.DomainError, match="not in this host's image cache"):
        act(disk_env, "rebuild", image={"id": "6d1f1b4e-8a1b-4f0e-9c1a-0e5e3f1b2c3e"}, qemu_img=FakeQemuImg())
    with pytest.raises(dm.DomainError, match="not an image store id"):
        act(disk_env, "rebuild", image={"id": "vctest"}, qemu_img=FakeQemuImg())
    with pytest.raises(ImageDoesNotFit, match="larger than the 1 GB root disk"):
        act(disk_env, "rebuild", image={"id": IMAGE2}, qemu_img=FakeQemuImg(virtual_size=2 * 1024**3))
    assert stored(disk_env) == before and disk_env[0].domains[UUID].st == RUNNING


def test_rescue_and_unrescue(disk_env):
    conn, _clock, _ops, path, _locks = disk_env
    qemu = FakeQemuImg()
    result = act(disk_env, "rescue", qemu_img=qemu)  # default: the instance's own image
    assert result["image"]["id"] == IMAGE1
    xml = conn.domains[UUID].xml
    assert [(d["target"], os.path.basename(d["source"])) for d in dx.domain_disks(xml)] == [("vda", "disk.rescue"), ("vdb", "disk")]
    assert dx.is_rescue(xml) and stored(disk_env)["vm_state"] == "rescued" and conn.domains[UUID].st == RUNNING
    assert os.path.exists(f"{path}/{UUID}/disk.rescue")
    assert act(disk_env, "rescue", qemu_img=qemu)["changed"] is False
    with pytest.raises(ActionRefused, match="while it is rescued"):
        act(disk_env, "pause")
    act(disk_env, "unrescue")
    xml = conn.domains[UUID].xml
    assert [d["target"] for d in dx.domain_disks(xml)] == ["vda"] and not dx.is_rescue(xml)
    assert not os.path.exists(f"{path}/{UUID}/disk.rescue")
    rec = stored(disk_env)
    assert rec["vm_state"] == "active" and [a["action"] for a in rec["actions"]][-2:] == ["rescue", "unrescue"]
    assert act(disk_env, "unrescue")["changed"] is False


def test_check_mode_plans_a_rescue_whose_image_is_not_cached_yet(disk_env):
    missing = "6d1f1b4e-8a1b-4f0e-9c1a-0e5e3f1b2c3e"
    result = act(disk_env, "rescue", image={"id": missing}, qemu_img=FakeQemuImg(), check_mode=True)
    assert result["changed"] and result["vm_state"] == "rescued" and result["virtual_size"] is None
    with pytest.raises(ImageDoesNotFit, match="needs 4096 MB of RAM"):  # what can be checked still is
        act(disk_env, "rebuild", image={"id": missing, "properties": {"min_ram": 4096}}, qemu_img=FakeQemuImg(), check_mode=True)
    assert stored(disk_env)["vm_state"] == "active"


def test_snapshot_folder_must_exist_except_in_check_mode(disk_env, tmp_path):
    target = str(tmp_path / "not-yet" / "snap.qcow2")
    assert act(disk_env, "snapshot", snapshot_path=target, qemu_img=FakeQemuImg(), check_mode=True)["changed"]
    with pytest.raises(dm.DomainError, match="does not exist"):
        act(disk_env, "snapshot", snapshot_path=target, qemu_img=FakeQemuImg())
    assert stored(disk_env)["actions"] == [] and stored(disk_env)["task_state"] is None


# --------------------------------------------------------------------------- instance.json, the readable mirror of the record


def mirrored(env):
    return rec.read_record_file(f"{env[3]}/{UUID}")


def test_instance_json_equals_the_domain_record_after_every_change(env):
    ensure(env)
    assert mirrored(env).to_dict() == stored(env)
    for action in ("pause", "lock", "unlock", "unpause", "stop", "start", "suspend", "resume", "reboot"):
        act(env, action)
        assert mirrored(env).to_dict() == stored(env), action
    assert [a["action"] for a in mirrored(env).to_dict()["actions"]][-3:] == ["suspend", "resume", "reboot"]


def test_instance_json_follows_a_failed_action_too(env):
    ensure(env)
    env[0].domains[UUID].fail["suspend"] = (None, "cannot pause")
    with pytest.raises(ac.ActionFailed):
        act(env, "pause")
    assert mirrored(env).to_dict() == stored(env)
    assert mirrored(env).actions[-1].result == "Error"


def test_the_record_file_reader(tmp_path):
    assert rec.read_record_file(str(tmp_path)) is None
    inst = Instance.from_dict(record())
    assert rec.write_record_file(str(tmp_path), inst)
    assert not rec.write_record_file(str(tmp_path), inst)
    assert rec.read_record_file(str(tmp_path)).to_dict() == inst.to_dict()
    assert oct(os.stat(tmp_path / "instance.json").st_mode & 0o777) == "0o600"
    (tmp_path / "instance.json").write_text('{"uuid": "x"}', encoding="ascii")
    with pytest.raises(rec.RecordError, match="does not hold a valid instance record"):
        rec.read_record_file(str(tmp_path))


def test_job_info_names_the_job_type_and_migrate_passes_what_it_is_given():
    class Dom:
        calls = []

        def jobStats(self, flags):  # noqa: N802 (libvirt's name)
            self.calls.append(("jobStats", flags))
            return {"type": 2, "time_elapsed": 1500, "data_remaining": 10}

        def abortJob(self):  # noqa: N802
            self.calls.append(("abortJob",))

        def migrateToURI3(self, uri, params, flags):  # noqa: N802
            self.calls.append(("migrate", uri, params, flags))

    dom = Dom()
    assert gu.DomainOps.job_info(dom) == {"type": "unbounded", "time_elapsed": 1500, "data_remaining": 10}
    gu.DomainOps.job_info(dom, completed=True)
    gu.DomainOps.abort_job(dom)
    gu.DomainOps.migrate(dom, "qemu+ssh://node2/system", {"migrate_uri": "tcp://10.0.0.2"}, 1)
    assert dom.calls == [("jobStats", 0), ("jobStats", 1), ("abortJob",), ("migrate", "qemu+ssh://node2/system", {"migrate_uri": "tcp://10.0.0.2"}, 1)]
