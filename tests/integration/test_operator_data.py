# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The data an operator changes, on the lab: flavors and server groups of one's own merged with the
defaults, the capacity playbook's figures moving by exactly a flavor, the image list and the image
delete (in use refused, snapshots, check mode, twice)."""

from __future__ import annotations

import pytest

from harness import GUEST_IMAGE, act, launch, launched, run_playbook

# The operator's own data, as extra vars: one new flavor and one new group, nothing repeated.
OPERATOR = {
    "virtcloud_flavors": {"m1.op": {"vcpus": 1, "ram_mb": 192, "disk_gb": 1}},
    "virtcloud_server_groups": {"op-anti": {"policy": "anti-affinity"}},
}
BASE = "opdata-base"
SNAP = "opdata-snap"


def capacity(lab) -> dict:
    result = run_playbook("capacity.yml", inventory=lab.inventory)
    assert result.rc == 0 and result.changed == 0, result.stdout[-3000:]
    assert len(result.stdout.split("host   state")) == 2, result.stdout[-3000:]  # the readable table, once
    return {h["host"]: h for h in result.stats["capacity"]}


def images(lab, **extra) -> dict:
    result = run_playbook("image_list.yml", extra, inventory=lab.inventory)
    assert result.rc == 0 and result.changed == 0, result.stdout[-3000:]
    return {i["name"]: i for i in result.stats["images"]}


def image_delete(lab, name, check=False, **extra):
    return run_playbook("image_delete.yml", dict(extra, image=name), inventory=lab.inventory, check=check)


@pytest.fixture(scope="module")
def opdata(cloud):
    """An image of its own (so that a broken refusal cannot delete the cloud's vctest) and one instance on it."""
    imported = run_playbook(
        "image_import.yml", dict(image_name=BASE, image_src=GUEST_IMAGE, image_properties={"hw_architecture": "x86_64"}), inventory=cloud.inventory
    )
    assert imported.rc == 0, imported.stdout[-3000:]
    before = capacity(cloud)
    # the operator's flavor m1.op with the default group web-anti: both must be there after the merge
    result = launch(cloud, launch_name="opdata", launch_flavor="m1.op", launch_group="web-anti", launch_image=BASE, **OPERATOR)
    try:
        assert result.rc == 0, result.stdout[-4000:]
        (inst,) = launched(result)
        yield dict(inst=inst, before=before)
    finally:
        act(cloud, "opdata", "delete")
        run_playbook("image_delete.yml", dict(image=SNAP, image_delete_force=True), inventory=cloud.inventory)
        run_playbook("image_delete.yml", dict(image=BASE, image_delete_force=True), inventory=cloud.inventory)


def test_the_operators_flavors_and_groups_are_merged_with_the_defaults(cloud, opdata):
    # made with the operator's flavor (test_capacity_moves_by_exactly_the_flavor checks its figures) and a default group;
    # the operator's own group works too, with a default flavor (the request is checked before the name is found taken)
    result = launch(cloud, launch_name="opdata", launch_flavor="m1.tiny", launch_group="op-anti", launch_image=BASE, **OPERATOR)
    assert result.rc == 0, result.stdout[-4000:]
    assert result.data["existing"] == [opdata["inst"]["name"]] and not result.data["launched"], result.data


def test_capacity_moves_by_exactly_the_flavor(cloud, opdata):
    before, after = opdata["before"], capacity(cloud)
    host = opdata["inst"]["host"]
    for name in after:
        delta = 1 if name == host else 0
        for resource, amount in (("ram_mb", 192), ("vcpus", 1), ("disk_mb", 1024)):
            b, a = before[name][resource], after[name][resource]
            assert a["used"] - b["used"] == delta * amount, (name, resource, b, a)
            assert a["total"] == b["total"] and a["capacity"] == b["capacity"] and a["ratio"] == b["ratio"], (name, resource, b, a)
        assert before[name]["ram_mb"]["free"] - after[name]["ram_mb"]["free"] == delta * 192
        assert before[name]["vcpus"]["free"] - after[name]["vcpus"]["free"] == delta * 1
        assert before[name]["disk_mb"]["allocation_free"] - after[name]["disk_mb"]["allocation_free"] == delta * 1024
        assert after[name]["instances"] - before[name]["instances"] == delta
        # one instance never gets more vCPUs than the host has, whatever the ratio
        assert after[name]["vcpus"]["largest"] == min(after[name]["vcpus"]["free"], after[name]["vcpus"]["total"])


def test_image_list_says_which_instance_uses_which_image(cloud, opdata):
    found = images(cloud)
    assert [u["uuid"] for u in found[BASE]["in_use_by"]] == [opdata["inst"]["uuid"]]
    assert opdata["inst"]["uuid"] not in [u["uuid"] for u in found["vctest"]["in_use_by"]]
    assert list(images(cloud, image=BASE)) == [BASE]


def test_an_image_in_use_is_not_deleted(cloud, opdata):
    for check in (True, False):
        refused = image_delete(cloud, BASE, check=check)
        assert refused.rc != 0 and refused.changed == 0, refused.stdout[-3000:]
        assert f"is the image of 1 instance(s): opdata ({opdata['inst']['uuid']}) on {opdata['inst']['host']}" in refused.stdout, refused.stdout[-3000:]
        assert "image_delete_force=true" in refused.stdout
    assert BASE in images(cloud)


def test_a_snapshot_is_listed_and_deleted_check_mode_first_then_twice(cloud, opdata):
    snap = act(cloud, "opdata", "snapshot", snapshot_name=SNAP)
    assert snap.rc == 0, snap.stdout[-3000:]
    listed = images(cloud, image_type="snapshot", image_instance=opdata["inst"]["uuid"])
    assert list(listed) == [SNAP] and listed[SNAP]["image_type"] == "snapshot"
    check = image_delete(cloud, SNAP, check=True)
    assert check.rc == 0 and check.changed == 1, check.stdout[-3000:]
    assert SNAP in images(cloud)
    first = image_delete(cloud, SNAP)
    assert first.rc == 0 and first.changed == 1, first.stdout[-3000:]
    assert [i["name"] for i in first.stats["image_delete"]["deleted"]] == [SNAP]
    assert SNAP not in images(cloud)
    again = image_delete(cloud, SNAP)
    assert again.rc == 0 and again.changed == 0, again.stdout[-3000:]
    assert again.stats["image_delete"]["deleted"] == [] and "nothing to delete" in again.stdout
    # the instance it was taken from runs on
    assert images(cloud)[BASE]["in_use_by"][0]["vm_state"] == "active"


def host_reached(result, task: str) -> bool:
    """Whether TASK ran on a host (delegated: 'ok: [localhost -> node1]') rather than being skipped."""
    if f"TASK [{task}]" not in result.stdout:
        return False
    section = result.stdout.split(f"TASK [{task}]", 1)[1].split("TASK [", 1)[0]
    return " -> " in section


def test_an_action_with_nothing_to_do_does_not_reach_the_host(cloud, opdata):
    """instance.yml: when instance_info already shows the state the action leads to, no task runs on the host."""
    steps = [("start", False), ("stop", True), ("stop", False), ("start", True), ("start", False)]
    for action, changes in steps:
        result = act(cloud, "opdata", action)
        assert result.rc == 0, result.stdout[-3000:]
        assert result.changed == int(changes), (action, result.stdout[-3000:])
        assert host_reached(result, f"virtcloud.compute.instance : Run {action}") == changes, (action, result.stdout[-3000:])
        assert result.stats["instance_action_result"]["vm_state"] == ("stopped" if action == "stop" else "active"), result.stats
        assert result.stats["instance_action_result"]["changed"] is changes, result.stats
