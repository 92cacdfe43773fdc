# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The capacity report (playbooks/capacity.yml) and the image report (image_list.yml, image_delete.yml)."""

from __future__ import annotations

import types

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils import _capacity
from ansible_collections.virtcloud.compute.plugins.plugin_utils._capacity_report import CapacityReportError, capacity_report, host_report
from ansible_collections.virtcloud.compute.plugins.plugin_utils._image_report import ImageReportError, image_report, image_users
from ansible_collections.virtcloud.compute.plugins.plugin_utils._table import text_table


def facts(**kw):
    base = dict(
        host="node1",
        vcpus_total=2,
        vcpus_used=3,
        total_usable_ram_mb=4096,
        free_ram_mb=3072,
        total_usable_disk_gb=20,
        free_disk_mb=18432,
        disk_available_least=None,
        cpu_allocation_ratio=4.0,
        ram_allocation_ratio=1.5,
        disk_allocation_ratio=1.0,
        num_instances=3,
        num_io_ops=0,
        service={"enabled": True, "up": True},
    )
    base.update(kw)
    return base


def test_the_figures_against_the_ratios():
    r = host_report(facts())
    assert r["ram_mb"] == {"total": 4096, "ratio": 1.5, "capacity": 6144, "used": 1024, "free": 5120, "largest": 4096}
    assert r["vcpus"] == {"total": 2, "ratio": 4, "capacity": 8, "used": 3, "free": 5, "largest": 2}
    assert r["disk_mb"] == {
        "total": 20480,
        "ratio": 1,
        "capacity": 20480,
        "used": 2048,
        "free": 18432,
        "largest": 18432,
        "least_mb": None,
        "allocation_free": 18432,
    }
    assert r["state"] == "up" and r["instances"] == 3


def test_free_is_what_the_capacity_rule_lets_a_flavor_claim():
    """A flavor of exactly the free (and largest) figures fits; one more of any resource does not."""
    f = facts(disk_available_least=15)
    r = host_report(f)
    host = _capacity.host_capacity(f, "node1")
    vcpus, ram, disk = r["vcpus"]["largest"], r["ram_mb"]["largest"], r["disk_mb"]["largest"]
    assert not _capacity.fits(host, vcpus, ram, disk)
    assert {s.resource for s in _capacity.fits(host, vcpus + 1, ram, disk)} == {"vCPUs"}
    assert {s.resource for s in _capacity.fits(host, vcpus, ram + 1, disk)} == {"RAM"}
    assert {s.resource for s in _capacity.fits(host, vcpus, ram, disk + 1)} == {"disk"}


def test_disk_available_least_limits_the_free_disk():
    r = host_report(facts(disk_available_least=10))
    assert r["disk_mb"]["least_mb"] == 10240 and r["disk_mb"]["free"] == 10240 and r["disk_mb"]["allocation_free"] == 18432


def test_one_instance_never_gets_more_vcpus_than_the_host_has():
    r = host_report(facts(vcpus_used=0, cpu_allocation_ratio=16.0))
    assert r["vcpus"]["free"] == 32 and r["vcpus"]["largest"] == 2


def test_an_over_full_host_shows_nothing_free():
    r = host_report(facts(vcpus_used=12, free_ram_mb=-1000))
    assert r["vcpus"]["free"] == 0 and r["vcpus"]["largest"] == 0 and r["ram_mb"]["used"] == 5096 and r["ram_mb"]["free"] == 1048


@pytest.mark.parametrize(
    "service, state", [({"enabled": False, "up": True, "disabled_reason": "maint"}, "disabled"), ({"enabled": True, "up": False}, "down"), (None, "up")]
)
def test_state(service, state):
    assert host_report(facts(service=service))["state"] == state


def test_report_sorted_by_host_with_a_table():
    out = capacity_report([facts(host="node2"), facts(host="node1", vcpus_used=0)])
    assert [h["host"] for h in out["hosts"]] == ["node1", "node2"]
    assert out["table"][0].split()[:3] == ["host", "state", "inst"]
    assert out["table"][1].startswith("node1") and "8 (2 x 4)" in out["table"][1] and "2/4096/18432" in out["table"][1]


@pytest.mark.parametrize(
    "hosts, message",
    [
        ("node1", "the input must be a list of host facts, got str"),
        ([facts(free_ram_mb=None)], "the facts of node1 have no number for free_ram_mb: gather them with virtcloud.compute.compute_facts"),
        (["x"], "host facts must be a dictionary"),
    ],
)
def test_bad_facts(hosts, message):
    with pytest.raises(CapacityReportError, match="^" + message):
        capacity_report(hosts)


def test_table_cells():
    assert text_table([{"a": 1.0, "b": None}, {"a": 2.5, "b": ["x", "y"]}], (("a", "A"), ("b", "Bee"))) == ["A     Bee", "1     -", "2.50  x,y"]


IMG = {"id": "0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d", "name": "vctest", "image_type": "image", "size": 16777216, "virtual_size": 67108864, "status": "active"}
SNAP = {"id": "9b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d", "name": "web-1-snap", "image_type": "snapshot", "size": 1048576, "status": "active"}


def inst(name, image_id, vm_state="active", host="node1"):
    return {"record": {"name": name, "uuid": f"uuid-{name}", "host": host, "vm_state": vm_state, "image": {"id": image_id, "properties": {}}}}


def test_users_of_an_image():
    instances = [inst("web-2", IMG["id"]), inst("web-1", IMG["id"], "stopped", "node2"), inst("copy", SNAP["id"]), inst("gone", IMG["id"], "deleted")]
    assert image_users(IMG["id"], instances) == [
        {"name": "web-1", "uuid": "uuid-web-1", "host": "node2", "vm_state": "stopped"},
        {"name": "web-2", "uuid": "uuid-web-2", "host": "node1", "vm_state": "active"},
    ]
    # bare records are read as well
    assert [u["name"] for u in image_users(SNAP["id"], [i["record"] for i in instances])] == ["copy"]


def test_report_and_table():
    out = image_report([IMG, SNAP], [inst("web-1", IMG["id"])])
    assert [i["in_use_by"] for i in out["images"]] == [[{"name": "web-1", "uuid": "uuid-web-1", "host": "node1", "vm_state": "active"}], []]
    assert out["refused"] is None
    assert out["table"][1].split() == ["vctest", IMG["id"], "image", "-", "16", "64", "active", "web-1"]
    assert out["table"][2].split()[-2:] == ["active", "-"]


def test_a_delete_of_an_image_in_use_is_refused_naming_the_instances_unless_forced():
    refused = image_report([IMG], [inst("web-1", IMG["id"])], delete=True)["refused"]
    assert refused.startswith(f"image vctest ({IMG['id']}) is the image of 1 instance(s): web-1 (uuid-web-1) on node1. Delete those instances")
    assert "image_delete_force=true" in refused
    assert image_report([IMG], [inst("web-1", IMG["id"])], delete=True, force=True)["refused"] is None
    assert image_report([SNAP], [inst("web-1", IMG["id"])], delete=True)["refused"] is None
    assert image_report([], [inst("web-1", IMG["id"])], delete=True)["refused"] is None


@pytest.mark.parametrize(
    "images, instances, message",
    [
        ("vctest", [], "images must be a list of image records"),
        ([{"name": "x"}], [], "images must be a list of image records"),
        ([IMG], {"a": 1}, "instances must be a list"),
        ([IMG], [{"record": {"name": "x"}}], "an instance without a record with an image"),
    ],
)
def test_bad_input(images, instances, message):
    with pytest.raises(ImageReportError, match="^" + message):
        image_report(images, instances)


def test_namespace_input_is_not_needed():
    assert isinstance(_capacity.host_capacity(facts(), "node1"), types.SimpleNamespace)
