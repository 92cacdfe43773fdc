# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The instance record, Nova's state table, the action log and the config drive content."""

from __future__ import annotations

import json

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils import _instance as inst_mod
from ansible_collections.virtcloud.compute.plugins.module_utils._actions import REGISTRY, allowed_actions, begin_action, check_action, finish_action
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import (
    ActionRefused,
    Instance,
    InstanceError,
    PowerState,
    TaskState,
    VmState,
    config_drive_files,
    new_request_id,
    power_state_from_libvirt,
    sanitize_hostname,
    set_lock,
    update_task_state,
    validate_flavor,
    validate_instance_name,
    validate_mac,
    validate_project,
    validate_timestamp,
    validate_uuid,
)

UUID = "3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b"
T0 = "2024-05-01T12:00:00.000000Z"
T1 = "2024-05-01T12:00:05.000000Z"
REQ = "req-0b0e4c83-2a3f-4c52-9d3f-2b8e2f0d4c11"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk0c2V4YW1wbGVrZXlkYXRh demo@example"


def record_dict(**overrides):
    data = {
        "uuid": UUID,
        "name": "web-1",
        "project": "demo",
        "flavor": {"name": "m1.small", "vcpus": 2, "ram_mb": 2048, "disk_gb": 20, "ephemeral_gb": 0, "swap_mb": 0, "extra_specs": {"hw:cpu_policy": "shared"}},
        "image": {"id": "c3d6a3a0-7f1e-4c55-8a43-1c2d3e4f5a00", "properties": {"hw_architecture": "x86_64", "min_ram": 256}},
        "availability_zone": "az1",
        "server_group": "web",
        "ports": [{"network": "net1", "mac": "fa:16:3e:00:00:01", "ip": "10.0.0.5"}],
        "vm_state": "active",
        "task_state": None,
        "power_state": 1,
        "host": "node1",
        "created_at": T0,
        "updated_at": T0,
        "launched_at": T0,
        "locked": False,
        "locked_reason": None,
        "actions": [],
        "meta": {"role": "web"},
        "public_keys": {"demo": KEY},
        "user_data": "#!/bin/sh\necho hello\n",
        "launch_index": 0,
        "config_drive": True,
    }
    data.update(overrides)
    return data


def make(**overrides):
    return Instance.from_dict(record_dict(**overrides))


# --------------------------------------------------------------------------- the allowed-action table

ALL_VM = ("active", "building", "paused", "suspended", "stopped", "rescued", "resized", "soft-delete", "deleted", "error", "shelved", "shelved_offloaded")
ANYWHERE = frozenset(ALL_VM)

# Written out from nova/compute/api.py's @check_instance_state decorators, independently of the module's table.
NOVA_TABLE = {
    "start": {"stopped"},
    "stop": {"active", "error"},
    "reboot": {"active"},
    "reboot_hard": {"active", "stopped", "paused", "suspended", "error"},
    "pause": {"active"},
    "unpause": {"paused"},
    "suspend": {"active"},
    "resume": {"suspended"},
    "snapshot": {"active", "stopped", "paused", "suspended"},
    "backup": {"active", "stopped", "paused", "suspended"},
    "rebuild": {"active", "stopped", "error"},
    "evacuate": {"active", "stopped", "error"},
    "rescue": {"active", "stopped", "error"},
    "unrescue": {"rescued"},
    "shelve": {"active", "stopped", "paused", "suspended"},
    "shelve_offload": {"shelved"},
    "unshelve": {"shelved", "shelved_offloaded"},
    "resize": {"active", "stopped"},
    "migrate": {"active", "stopped"},
    "confirm_resize": {"resized"},
    "revert_resize": {"resized"},
    "live_migrate": {"active", "paused"},
    "delete": ANYWHERE,
    "force_delete": ANYWHERE,
    "soft_delete": ANYWHERE,
    "restore": {"soft-delete"},
    "attach_volume": {"active", "paused", "stopped", "resized", "soft-delete", "shelved", "shelved_offloaded"},
    "detach_volume": {"active", "paused", "stopped", "resized", "soft-delete", "shelved", "shelved_offloaded"},
    "attach_interface": {"active", "paused", "stopped"},
    "detach_interface": {"active", "paused", "stopped"},
    "lock": ANYWHERE,
    "unlock": ANYWHERE,
    "create": {"building"},
}


def test_every_state_and_action_is_known():
    assert set(VmState.ALL) == set(ALL_VM)
    assert set(REGISTRY) == set(NOVA_TABLE)


@pytest.mark.parametrize("action", sorted(NOVA_TABLE))
@pytest.mark.parametrize("vm_state", ALL_VM)
def test_action_against_vm_state(action, vm_state):
    record = make(vm_state=vm_state)
    if vm_state in NOVA_TABLE[action]:
        check_action(record, action)
        return
    with pytest.raises(ActionRefused) as err:
        check_action(record, action)
    message = str(err.value)
    assert f"Cannot {action} instance web-1 ({UUID}) while it is {vm_state}: {action} needs vm_state " in message
    for allowed in NOVA_TABLE[action]:
        assert allowed in message.split("needs vm_state ")[1]
    assert err.value.reason == "vm_state" and err.value.vm_state == vm_state and err.value.action == action


def test_refusal_message_reads_like_the_example():
    with pytest.raises(ActionRefused) as err:
        check_action(make(vm_state="stopped"), "pause")
    assert str(err.value) == f"Cannot pause instance web-1 ({UUID}) while it is stopped: pause needs vm_state active"
    with pytest.raises(ActionRefused, match=r"start needs vm_state stopped$"):
        check_action(make(), "start")
    with pytest.raises(ActionRefused, match=r"stop needs vm_state active or error$"):
        check_action(make(vm_state="rescued"), "stop")


@pytest.mark.parametrize(
    "action, task_state, allowed",
    [
        ("pause", "powering-off", False),
        ("stop", "pausing", False),
        ("start", "powering-on", False),
        ("reboot", "rebooting", False),  # soft reboot needs no task in progress
        ("reboot", "pausing", False),
        ("reboot_hard", "rebooting", True),  # a hard reboot may interrupt these (task_states.ALLOW_REBOOT)
        ("reboot_hard", "reboot_pending", True),
        ("reboot_hard", "reboot_started", True),
        ("reboot_hard", "rebooting_hard", True),
        ("reboot_hard", "pausing", True),
        ("reboot_hard", "unpausing", True),
        ("reboot_hard", "suspending", True),
        ("reboot_hard", "resuming", True),
        ("reboot_hard", "powering-off", False),
        ("reboot_hard", "migrating", False),
        ("reboot_hard", "reboot_pending_hard", False),
        ("delete", "migrating", True),  # delete ignores the task state
        ("delete", "deleting", True),
        ("force_delete", "spawning", True),
        ("soft_delete", "rebuilding", True),
        ("live_migrate", "migrating", False),
        ("snapshot", "image_uploading", False),
        ("lock", "migrating", True),
        ("unlock", "deleting", True),
    ],
)
def test_task_state_precondition(action, task_state, allowed):
    vm_state = "stopped" if action == "start" else "active"
    record = make(vm_state=vm_state, task_state=task_state)
    if allowed:
        check_action(record, action)
        return
    with pytest.raises(ActionRefused) as err:
        check_action(record, action)
    assert err.value.reason == "task_state"
    assert f"while it is {vm_state} with task {task_state} in progress" in str(err.value)
    expected = "needs task_state None, " if action == "reboot_hard" else "needs no task in progress (task_state None)"
    assert expected in str(err.value)


def test_hard_reboot_message_lists_the_task_states():
    with pytest.raises(ActionRefused) as err:
        check_action(make(task_state="migrating"), "reboot_hard")
    for task in ("rebooting", "reboot_pending", "reboot_started", "resuming", "rebooting_hard", "unpausing", "pausing", "suspending"):
        assert task in str(err.value)


def test_never_launched_instance():
    record = make(vm_state="error", launched_at=None)
    with pytest.raises(ActionRefused, match="it has never been launched") as err:
        check_action(record, "stop")
    assert err.value.reason == "not_launched"
    check_action(record, "delete")
    check_action(record, "force_delete")
    with pytest.raises(ActionRefused, match="never been launched"):
        check_action(record, "soft_delete")


LOCK_FREE = {"lock", "unlock", "create"}


@pytest.mark.parametrize("action", sorted(set(NOVA_TABLE) - LOCK_FREE))
def test_locked_instance_refuses_everything_but_lock_and_unlock(action):
    vm_state = next(iter(sorted(NOVA_TABLE[action])))
    record = make(vm_state=vm_state, locked=True, locked_reason="disk repair by ops")
    with pytest.raises(ActionRefused) as err:
        check_action(record, action)
    assert str(err.value) == f"Cannot {action} instance web-1 ({UUID}): it is locked (reason: disk repair by ops); unlock it first"
    assert err.value.reason == "locked"
    check_action(record, action, is_admin=True)  # Nova's check_instance_lock lets an admin through


def test_lock_without_reason_and_lock_unlock_always_allowed():
    record = make(locked=True)
    with pytest.raises(ActionRefused, match=r"it is locked \(no reason given\); unlock it first"):
        check_action(record, "stop")
    check_action(record, "unlock")
    check_action(record, "lock")
    assert allowed_actions(record) == ["lock", "unlock"]


def test_lock_checked_before_state():
    with pytest.raises(ActionRefused) as err:
        check_action(make(vm_state="stopped", locked=True), "pause")
    assert err.value.reason == "locked"


def test_allowed_actions_of_an_active_instance():
    assert allowed_actions(make()) == sorted(
        [
            "attach_interface",
            "attach_volume",
            "backup",
            "delete",
            "detach_interface",
            "detach_volume",
            "evacuate",
            "force_delete",
            "live_migrate",
            "lock",
            "migrate",
            "pause",
            "reboot",
            "reboot_hard",
            "rebuild",
            "rescue",
            "resize",
            "shelve",
            "snapshot",
            "soft_delete",
            "stop",
            "suspend",
            "unlock",
        ]
    )


def test_unknown_action():
    with pytest.raises(InstanceError, match="unknown action 'fly'; known actions: attach_interface"):
        check_action(make(), "fly")


# --------------------------------------------------------------------------- begin / finish and the action log


def test_begin_and_finish_pause():
    record = make()
    begin_action(record, "pause", REQ, now=T1)
    assert (record.vm_state, record.task_state, record.updated_at) == ("active", "pausing", T1)
    assert [a.to_dict() for a in record.actions] == [
        {"action": "pause", "request_id": REQ, "start_time": T1, "finish_time": None, "result": None, "message": None}
    ]
    # while the task runs, the same action is refused
    with pytest.raises(ActionRefused, match="pausing in progress"):
        check_action(record, "pause")
    finish_action(record, "pause", REQ, vm_state="paused", power_state=PowerState.PAUSED, now="2024-05-01T12:00:06Z")
    assert (record.vm_state, record.task_state, record.power_state) == ("paused", None, 3)
    assert record.actions[0].to_dict() == {
        "action": "pause",
        "request_id": REQ,
        "start_time": T1,
        "finish_time": "2024-05-01T12:00:06.000000Z",
        "result": "Success",
        "message": None,
    }
    check_action(record, "unpause")


def test_refused_begin_changes_nothing():
    record = make(vm_state="stopped")
    before = record.to_dict()
    with pytest.raises(ActionRefused):
        begin_action(record, "pause", REQ)
    assert record.to_dict() == before
    locked = make(locked=True, locked_reason="x")
    before = locked.to_dict()
    with pytest.raises(ActionRefused):
        begin_action(locked, "stop", REQ)
    assert locked.to_dict() == before


@pytest.mark.parametrize(
    "action, log_name, task_state",
    [
        ("start", "start", "powering-on"),
        ("stop", "stop", "powering-off"),
        ("reboot", "reboot", "rebooting"),
        ("reboot_hard", "reboot", "rebooting_hard"),
        ("snapshot", "createImage", "image_snapshot_pending"),
        ("backup", "createBackup", "image_backup"),
        ("live_migrate", "live-migration", "migrating"),
        ("rescue", "rescue", "rescuing"),
        ("rebuild", "rebuild", "rebuilding"),
        ("evacuate", "evacuate", "rebuilding"),
        ("resize", "resize", "resize_prep"),
        ("migrate", "migrate", "resize_prep"),
        ("shelve", "shelve", "shelving"),
        ("delete", "delete", "deleting"),
        ("soft_delete", "delete", "soft-deleting"),
        ("attach_volume", "attach_volume", None),
    ],
)
def test_action_log_names_and_task_states(action, log_name, task_state):
    vm_state = "stopped" if action == "start" else "active"
    record = begin_action(make(vm_state=vm_state), action, REQ, now=T1)
    assert record.task_state == task_state
    assert record.actions[-1].action == log_name


def test_begin_with_explicit_task_state_and_update():
    record = begin_action(make(vm_state="building", task_state="scheduling", launched_at=None), "create", REQ, TaskState.SPAWNING, now=T1)
    assert record.task_state == "spawning"
    with pytest.raises(InstanceError, match="has task_state spawning, expected None"):
        update_task_state(record, "networking")
    update_task_state(record, "block_device_mapping", expected_task_state={"spawning"}, now=T1)
    assert record.task_state == "block_device_mapping"
    finish_action(record, "create", REQ, vm_state="active", power_state=1, now="2024-05-01T12:01:00Z")
    assert record.launched_at == "2024-05-01T12:01:00.000000Z"
    assert (record.vm_state, record.task_state) == ("active", None)


def test_failed_create_keeps_launched_at_empty():
    record = begin_action(make(vm_state="building", task_state="scheduling", launched_at=None), "create", REQ)
    finish_action(record, "create", REQ, vm_state="error", result="Error", message="No valid host: RamFilter removed node1")
    assert record.launched_at is None and record.vm_state == "error"
    assert record.actions[-1].result == "Error" and "RamFilter" in record.actions[-1].message


def test_finish_needs_a_matching_open_action():
    record = make()
    with pytest.raises(InstanceError, match="has no open pause action for request"):
        finish_action(record, "pause", REQ, vm_state="paused")
    begin_action(record, "pause", REQ)
    with pytest.raises(InstanceError, match="no open pause action for request req-11111111"):
        finish_action(record, "pause", "req-11111111-1111-4111-8111-111111111111", vm_state="paused")
    with pytest.raises(InstanceError, match="result 'Maybe' must be 'Success' or 'Error'"):
        finish_action(record, "pause", REQ, vm_state="paused", result="Maybe")
    with pytest.raises(InstanceError, match="vm_state"):
        finish_action(record, "pause", REQ, vm_state="frozen")
    finish_action(record, "pause", REQ, vm_state="paused")
    with pytest.raises(InstanceError, match="no open pause action"):
        finish_action(record, "pause", REQ, vm_state="paused")


def test_action_log_keeps_every_action_in_order():
    record = make()
    reqs = [new_request_id() for dummy in range(3)]
    begin_action(record, "pause", reqs[0])
    finish_action(record, "pause", reqs[0], vm_state="paused")
    begin_action(record, "unpause", reqs[1])
    finish_action(record, "unpause", reqs[1], vm_state="active")
    begin_action(record, "reboot_hard", reqs[2])
    finish_action(record, "reboot_hard", reqs[2], vm_state="active")
    assert [(a.action, a.request_id, a.result) for a in record.actions] == [
        ("pause", reqs[0], "Success"),
        ("unpause", reqs[1], "Success"),
        ("reboot", reqs[2], "Success"),
    ]
    assert Instance.from_json(record.to_json()).to_dict() == record.to_dict()


def test_lock_and_unlock_are_idempotent_and_logged():
    record = make()
    assert set_lock(record, True, REQ, reason="maintenance", now=T1) is True
    assert record.locked and record.locked_reason == "maintenance"
    assert set_lock(record, True, REQ, reason="other") is False
    assert record.locked_reason == "maintenance"
    with pytest.raises(ActionRefused, match="reason: maintenance"):
        begin_action(record, "stop", REQ)
    assert set_lock(record, False, REQ, now=T1) is True
    assert not record.locked and record.locked_reason is None
    assert set_lock(record, False, REQ) is False
    assert [(a.action, a.result, a.finish_time) for a in record.actions] == [("lock", "Success", T1), ("unlock", "Success", T1)]


def test_request_ids():
    first, second = new_request_id(), new_request_id()
    assert first != second
    for req in (first, second):
        assert req.startswith("req-") and validate_uuid(req[4:]) == req[4:]
    with pytest.raises(InstanceError, match="request id 'req-x' is not valid"):
        begin_action(make(), "pause", "req-x")
    with pytest.raises(InstanceError, match="request id"):
        begin_action(make(), "pause", REQ + "\n")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["web-1", "a", "A.b_c-9", "x" * 63, "1node"])
def test_good_instance_names(name):
    assert validate_instance_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 64,
        "a'><x/>",
        "a;rm -rf /",
        "../x",
        "a/b",
        "a..b",
        "-a",
        ".a",
        "_a",
        "a b",
        "a\nb",
        "a$(id)",
        "a`id`",
        "a&amp;",
        "ä",
        None,
        5,
        ["a"],
        UUID,
        "web-1\n",
        "web-1\r",
        "\u0661web",
    ],
)
def test_bad_instance_names(name):
    with pytest.raises(InstanceError, match="instance name"):
        validate_instance_name(name)


@pytest.mark.parametrize("value", ["p'><x/>", "p;rm -rf", "../x", "", "p" * 65, "a..b", None])
def test_bad_project_names(value):
    with pytest.raises(InstanceError, match="project name"):
        validate_project(value)


@pytest.mark.parametrize(
    "value, expected",
    [
        (UUID, UUID),
        (UUID.upper(), UUID),
    ],
)
def test_uuids(value, expected):
    assert validate_uuid(value) == expected


@pytest.mark.parametrize("value", ["", "x", UUID[:-1], UUID + "\n", "{" + UUID + "}", "urn:uuid:" + UUID, UUID.replace("-", ""), None, 1])
def test_bad_uuids(value):
    with pytest.raises(InstanceError, match="is not a UUID"):
        validate_uuid(value)


def test_flavor_defaults():
    assert validate_flavor({"name": "m1.tiny", "vcpus": 1, "ram_mb": 64}) == {
        "name": "m1.tiny",
        "vcpus": 1,
        "ram_mb": 64,
        "disk_gb": 0,
        "ephemeral_gb": 0,
        "swap_mb": 0,
        "extra_specs": {},
    }


@pytest.mark.parametrize(
    "change, message",
    [
        ({"vcpus": 0}, "flavor vcpus must be between 1 and"),
        ({"vcpus": -1}, "flavor vcpus must be between"),
        ({"vcpus": True}, "flavor vcpus must be a whole number"),
        ({"vcpus": "2"}, "flavor vcpus must be a whole number"),
        ({"vcpus": 2.0}, "flavor vcpus must be a whole number"),
        ({"ram_mb": 63}, "flavor ram_mb must be between 64 and"),
        ({"disk_gb": -1}, "flavor disk_gb must be between 0 and"),
        ({"ephemeral_gb": -1}, "flavor ephemeral_gb must be between 0"),
        ({"swap_mb": -1}, "flavor swap_mb must be between 0"),
        ({"name": "m1'><x/>"}, "flavor name"),
        ({"name": "m1;rm -rf /"}, "flavor name"),
        ({"name": "../x"}, "flavor name"),
        ({"extra_specs": {"hw:cpu_policy": 1}}, "flavor extra_specs value of hw:cpu_policy must be a string"),
        ({"extra_specs": {"a<b": "x"}}, "flavor extra_specs key"),
        ({"extra_specs": {"k": "a\nb"}}, "contains control characters"),
        ({"extra_specs": ["k"]}, "flavor extra_specs must be a mapping"),
        ({"gpus": 1}, "flavor has unknown keys gpus"),
    ],
)
def test_bad_flavors(change, message):
    flavor = {"name": "m1.small", "vcpus": 2, "ram_mb": 2048, "disk_gb": 20}
    flavor.update(change)
    with pytest.raises(InstanceError, match=None) as err:
        validate_flavor(flavor)
    assert message in str(err.value)


def test_flavor_missing_keys():
    with pytest.raises(InstanceError, match="flavor lacks vcpus, ram_mb"):
        validate_flavor({"name": "x"})


def test_extra_specs_with_operators_are_kept():
    specs = {"capabilities:hypervisor_type": "s== QEMU", "aggregate_instance_extra_specs:ssd": "<in> true", "hw:mem_page_size": ">= 2048"}
    assert validate_flavor({"name": "m1", "vcpus": 1, "ram_mb": 64, "extra_specs": specs})["extra_specs"] == specs


@pytest.mark.parametrize(
    "value, expected",
    [
        ("FA:16:3E:00:00:01", "fa:16:3e:00:00:01"),
        ("52:54:00:7c:7e:01", "52:54:00:7c:7e:01"),
        ("02:00:00:00:00:00", "02:00:00:00:00:00"),
    ],
)
def test_macs(value, expected):
    assert validate_mac(value) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
        ("00:00:00:00:00:00", "not usable"),
        ("fa-16-3e-00-00-01", "not valid"),
        ("fa:16:3e:00:00:01\n", "not valid"),
        ("fa:16:3e:00:00", "not valid"),
        ("fa:16:3e:00:00:01'/>", "not valid"),
        (None, "not valid"),
    ],
)
def test_bad_macs(value, message):
    with pytest.raises(InstanceError, match=message):
        validate_mac(value)


def test_generated_macs_are_valid_and_nova_like():
    macs = {inst_mod.generate_mac() for dummy in range(50)}
    assert len(macs) > 40
    for mac in macs:
        assert validate_mac(mac) == mac and mac.startswith("fa:16:3e:")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ports": [{"network": "net1", "mac": "fa:16:3e:00:00:01", "ip": "10.0.0.300"}]}, "IP address"),
        ({"ports": [{"network": "net1", "mac": "fa:16:3e:00:00:01", "ip": "10.0.0.0/24"}]}, "without a prefix length"),
        ({"ports": [{"network": "n'><x/>", "mac": "fa:16:3e:00:00:01"}]}, "network name"),
        ({"ports": [{"network": "n", "mac": "fa:16:3e:00:00:01"}, {"network": "m", "mac": "FA:16:3E:00:00:01"}]}, "repeat a MAC address: fa:16:3e:00:00:01"),
        ({"ports": {"network": "n"}}, "ports must be a list"),
        ({"vm_state": "frozen"}, "vm_state 'frozen' is not one of Nova's vm states"),
        ({"vm_state": "soft_deleted"}, "vm_state"),
        ({"task_state": "dancing"}, "task_state 'dancing'"),
        ({"power_state": 2}, "power_state 2"),
        ({"power_state": True}, "power_state True"),
        ({"created_at": "2024-05-01 12:00:00"}, "created_at"),
        ({"created_at": "2024-05-01T12:00:00+02:00"}, "created_at"),
        ({"created_at": "2024-02-30T12:00:00Z"}, "not a real date"),
        ({"created_at": "2024-05-01T12:00:00Z\n"}, "created_at"),
        ({"created_at": "\u0662024-05-01T12:00:00Z"}, "created_at"),
        ({"launched_at": "yesterday"}, "launched_at"),
        ({"locked": "yes"}, "locked must be true or false"),
        ({"locked_reason": "a\x00b"}, "control characters"),
        ({"host": "node;reboot"}, "host name"),
        ({"availability_zone": "az 1"}, "availability zone"),
        ({"server_group": "../g"}, "server group name"),
        ({"image": {"id": "i'><x/>"}}, "image id"),
        ({"image": {"id": "img", "properties": {"a b": "x"}}}, "image property name"),
        ({"image": {"id": "img", "properties": {"k": ["x"]}}}, "must be a string, number, boolean or null"),
        ({"meta": {"k": "v" * 256}}, "longer than 255"),
        ({"meta": {"": "v"}}, "must not be empty"),
        ({"public_keys": {"k": "not a key"}}, "public key k is not an OpenSSH public key"),
        ({"public_keys": {"k": KEY + "\nssh-rsa AAAA"}}, "public key k"),
        ({"user_data": "x" * 65536}, "larger than 65535 bytes"),
        ({"launch_index": -1}, "launch_index"),
        ({"config_drive": "yes"}, "config_drive must be true or false"),
        ({"record_version": 2}, "instance record version 2 is not supported"),
        ({"name": "web'><x/>"}, "instance name"),
        ({"uuid": "../etc"}, "instance uuid"),
        ({"colour": "red"}, "instance record has unknown keys colour"),
        ({"actions": [{"action": "fly", "request_id": REQ, "start_time": T0}]}, "unknown action 'fly'"),
        ({"actions": [{"action": "pause", "request_id": "x", "start_time": T0}]}, "request id"),
        ({"actions": [{"action": "pause", "request_id": REQ, "start_time": T0, "result": "ok"}]}, "result 'ok'"),
    ],
)
def test_bad_records(change, message):
    with pytest.raises(InstanceError) as err:
        Instance.from_dict(record_dict(**change))
    assert message in str(err.value)


def test_missing_record_keys():
    data = record_dict()
    del data["project"]
    del data["flavor"]
    with pytest.raises(InstanceError, match="instance record lacks project, flavor"):
        Instance.from_dict(data)


def test_timestamps_normalised():
    assert validate_timestamp("2024-05-01T12:00:00Z") == "2024-05-01T12:00:00.000000Z"
    assert validate_timestamp("2024-05-01T12:00:00.5+00:00") == "2024-05-01T12:00:00.500000Z"
    assert Instance.new(name="a", project="p", flavor={"name": "f", "vcpus": 1, "ram_mb": 64}, image={"id": "i"}).created_at.endswith("Z")


# --------------------------------------------------------------------------- the record


def test_record_round_trip():
    record = make()
    data = record.to_dict()
    assert data["record_version"] == 1
    assert Instance.from_dict(data).to_dict() == data
    text = record.to_json()
    assert Instance.from_json(text).to_dict() == data
    assert json.loads(text) == data
    assert text == Instance.from_json(text).to_json()  # deterministic
    assert list(json.loads(text)) == sorted(data)


def test_record_json_is_ascii_and_from_json_errors():
    record = make(meta={"note": "caf\u00e9 <b>&"})
    assert record.to_json().isascii()
    assert Instance.from_json(record.to_json()).meta == {"note": "caf\u00e9 <b>&"}
    with pytest.raises(InstanceError, match="not valid JSON"):
        Instance.from_json('{"uuid":')


def test_new_record_defaults():
    record = Instance.new(name="web-2", project="demo", flavor={"name": "m1.tiny", "vcpus": 1, "ram_mb": 512}, image={"id": "cirros"}, now=T0)
    assert validate_uuid(record.uuid) == record.uuid
    assert (record.vm_state, record.task_state, record.power_state, record.launched_at, record.locked) == ("building", "scheduling", 0, None, False)
    assert (record.created_at, record.updated_at, record.actions, record.availability_zone) == (T0, T0, [], "nova")
    assert Instance.new(name="x", project="p", flavor={"name": "f", "vcpus": 1, "ram_mb": 64}, image={"id": "i"}, uuid=UUID.upper()).uuid == UUID


def test_changed_record_is_validated_again():
    record = make()
    record.vm_state = "bogus"
    with pytest.raises(InstanceError, match="vm_state"):
        check_action(record, "stop")
    record = make()
    record.name = "a;b"
    with pytest.raises(InstanceError, match="instance name"):
        record.validate()


# --------------------------------------------------------------------------- power states


@pytest.mark.parametrize(
    "libvirt_state, power, name",
    [
        (0, PowerState.NOSTATE, "pending"),
        (1, PowerState.RUNNING, "running"),
        (2, PowerState.RUNNING, "running"),
        (3, PowerState.PAUSED, "paused"),
        (4, PowerState.SHUTDOWN, "shutdown"),
        (5, PowerState.SHUTDOWN, "shutdown"),
        (6, PowerState.CRASHED, "crashed"),
        (7, PowerState.SUSPENDED, "suspended"),
    ],
)
def test_libvirt_to_power_state(libvirt_state, power, name):
    assert power_state_from_libvirt(libvirt_state) == power
    assert inst_mod.power_state_name(power) == name


def test_power_state_numbers_are_novas():
    assert (PowerState.NOSTATE, PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN, PowerState.CRASHED, PowerState.SUSPENDED) == (0, 1, 3, 4, 6, 7)
    for bad in (8, -1, "1", None, True):
        with pytest.raises(InstanceError, match="virDomainState"):
            power_state_from_libvirt(bad)


# --------------------------------------------------------------------------- config drive


@pytest.mark.parametrize(
    "name, expected",
    [
        ("web-1", "web-1"),
        ("Web_Server.1", "web-server-1"),  # one DNS label: periods become '-', as in Nova
        ("web.example.org", "web-example-org"),
        ("-x.", "x"),
        ("A" * 70, "a" * 63),
        ("caf\u00e9 au lait", "caf-au-lait"),
    ],
)
def test_sanitize_hostname(name, expected):
    assert sanitize_hostname(name) == expected


@pytest.mark.parametrize("name", ["web.1", "a..b", "Web_Server.1", "x" * 80, "caf\u00e9.au lait", "-a-.-b-", "1.2.3.4"])
def test_a_sanitized_hostname_is_one_dns_label_as_the_network_needs(name):
    from ansible_collections.virtcloud.compute.plugins.module_utils._network import validate_hostname

    assert validate_hostname(sanitize_hostname(name)) == sanitize_hostname(name)


def test_sanitize_hostname_default():
    assert sanitize_hostname("...", "server-x") == "server-x"


def test_config_drive_content():
    files = config_drive_files(make(name="Web_1"))
    assert sorted(files) == [
        "openstack/2012-08-10/meta_data.json",
        "openstack/2012-08-10/user_data",
        "openstack/latest/meta_data.json",
        "openstack/latest/user_data",
    ]
    latest = json.loads(files["openstack/latest/meta_data.json"])
    assert latest == {
        "uuid": UUID,
        "name": "Web_1",
        "hostname": "web-1",
        "availability_zone": "az1",
        "project_id": "demo",
        "launch_index": 0,
        "meta": {"role": "web"},
        "public_keys": {"demo": KEY},
        "keys": [{"name": "demo", "type": "ssh", "data": KEY}],
    }
    old = json.loads(files["openstack/2012-08-10/meta_data.json"])
    assert old == {k: v for k, v in latest.items() if k not in ("project_id", "keys")}
    assert files["openstack/latest/user_data"] == b"#!/bin/sh\necho hello\n"
    text = files["openstack/latest/meta_data.json"].decode("ascii")
    assert list(json.loads(text)) == sorted(latest)
    assert '"hostname": "web-1"' in text  # the test guest reads it with a sed expression


def test_config_drive_is_deterministic_and_optional_user_data():
    record = make(user_data=None)
    files = config_drive_files(record)
    assert sorted(files) == ["openstack/2012-08-10/meta_data.json", "openstack/latest/meta_data.json"]
    assert config_drive_files(Instance.from_json(record.to_json())) == files
    assert inst_mod.CONFIG_DRIVE_LABEL == "config-2"
