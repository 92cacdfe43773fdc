# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The launch conductor's decisions: the request check, the plan, the attempt rounds, the report."""

from __future__ import annotations

import re

import pytest

from ansible_collections.virtcloud.compute.plugins.plugin_utils._launch import (
    LaunchError,
    check_request,
    instance_uuid,
    launch_report,
    launch_round,
    plan_launch,
)

FLAVORS = {"m1.tiny": {"vcpus": 1, "ram_mb": 256, "disk_gb": 1}, "m1.none": {"vcpus": 1, "ram_mb": 128, "disk_gb": 0}}
GROUPS = {"web-anti": {"policy": "anti-affinity"}, "web-max": {"policy": "anti-affinity", "rules": {"max_server_per_host": 2}}}
REQ = "req-6f1c1b1e-0a4b-4c36-8f7e-0c2c9d1b5a77"
IMAGE = {
    "id": "976891f2-fa89-4792-82b3-a11c18abeff7",
    "name": "vctest",
    "properties": {"hw_architecture": "x86_64", "min_ram": "128"},
    "virtual_size": 64 * 1024**2,
}


def request(**kw):
    args = dict(name="web", count=1, flavor="m1.tiny", flavors=FLAVORS, group="", server_groups=GROUPS, request_id=REQ, max_attempts=3, image="vctest")
    args.update(kw)
    return check_request(**args)


def test_a_request_names_its_instances_and_keeps_its_request_id():
    one = request()
    assert one["names"] == ["web"] and one["request_id"] == REQ and one["flavor"] == dict(FLAVORS["m1.tiny"], name="m1.tiny")
    assert request(count="3")["names"] == ["web-1", "web-2", "web-3"]
    assert request(group="web-max")["group"] == {"name": "web-max", "policy": "anti-affinity", "rules": {"max_server_per_host": 2}}
    assert request()["group"] is None


def test_a_request_without_a_request_id_gets_a_new_one():
    assert re.fullmatch(r"req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", request(request_id="")["request_id"])
    assert request(request_id="")["request_id"] != request(request_id="")["request_id"]


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(name="bad name!"), "name 'bad name!'"),
        (dict(name="x" * 62, count=2), "name"),  # x...x-1 is 64 characters
        (dict(name="3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b"), "UUID"),
        (dict(name="a..b"), "name"),
        (dict(count=0), "count 0"),
        (dict(count="many"), "count 'many'"),
        (dict(count=True), "count True"),
        (dict(flavor="m9.none"), "flavor 'm9.none' (one of m1.none, m1.tiny)"),
        (dict(group="nosuch"), "group 'nosuch' (one of web-anti, web-max)"),
        (dict(request_id="req-1"), "request id 'req-1'"),
        (dict(max_attempts=4), "max attempts 4 (1 to 3"),
        (dict(image=""), "image '' (an image's name or id)"),
        (dict(image=["vctest"]), "image ['vctest']"),
    ],
)
def test_a_bad_request_is_refused_with_every_reason(kw, words):
    with pytest.raises(LaunchError) as err:
        request(**kw)
    assert str(err.value).startswith("Bad launch request: ") and words in str(err.value)


def test_several_problems_are_named_together():
    with pytest.raises(LaunchError, match=r"count .*; name .*; flavor .*"):
        request(name="bad name!", count=-1, flavor="nope")


def test_the_uuid_is_ansibles_to_uuid_of_request_and_name():
    # what `(req ~ '/' ~ name) | to_uuid` gave before: the same launch keeps the same uuids
    assert instance_uuid("req-a9242d3f-4b18-4881-8aeb-bb76831f27c8", "t1") == "a80799bb-93f5-5615-9e7e-9ff92fdb5149"


def hosts(*named):
    return [{"host": f"node{i + 1}", "instances": [{"name": n, "uuid": "x", "server_group": g} for n, g in insts]} for i, insts in enumerate(named)]


def test_the_plan_leaves_existing_names_alone_and_builds_the_spec_once():
    plan = plan_launch(
        request(count=3, group="web-anti"), hosts([("web-2", "web-anti")], []), [IMAGE], project="demo", availability_zone="az1", hints={"same_host": []}
    )
    assert [n["name"] for n in plan["new"]] == ["web-1", "web-3"] and plan["existing"] == ["web-2"]
    assert [n["index"] for n in plan["new"]] == [0, 2] and plan["image"] == IMAGE
    first = plan["new"][0]
    assert first["uuid"] == instance_uuid(REQ, "web-1") and first["hostname"] == "web-1"
    assert first["port_request"] == {"instance_uuid": first["uuid"], "hostname": "web-1"}
    spec = plan["spec"]
    assert spec["flavor"]["name"] == "m1.tiny" and spec["image"] == {"id": IMAGE["id"], "properties": IMAGE["properties"]}
    assert spec["availability_zone"] == "az1" and spec["num_instances"] == 2 and spec["hints"] == {"same_host": []}
    # the members are counted by the scheduler alone (count_group_members), from the hosts' instances
    assert spec["group"] == {"name": "web-anti", "policy": "anti-affinity", "rules": {}, "hosts": []}


def test_a_dotted_name_gets_a_hostname_that_is_one_dns_label():
    # the port's hostname goes to dnsmasq's hosts file, which takes one label: checked here, before any port exists
    new = plan_launch(request(name="web.1", count=2), hosts([]), [IMAGE])["new"]
    assert [(n["name"], n["hostname"], n["port_request"]["hostname"]) for n in new] == [("web.1-1", "web-1-1", "web-1-1"), ("web.1-2", "web-1-2", "web-1-2")]


def test_the_plan_of_a_launch_whose_names_all_exist_makes_nothing():
    plan = plan_launch(request(), hosts([("web", None)]), [IMAGE])
    assert plan["new"] == [] and plan["existing"] == ["web"] and plan["spec"]["availability_zone"] is None


@pytest.mark.parametrize(
    "props, vsize, words",
    [
        ({"min_ram": "512"}, 1, "needs 512 MB of RAM (min_ram) and flavor m1.tiny has 256 MB"),
        ({"min_disk": "2"}, 1, "needs a 2 GB root disk (min_disk) and flavor m1.tiny has 1 GB"),
        ({}, 2 * 1024**3, "virtual size of 2147483648 bytes is larger than the 1 GB root disk"),
    ],
)
def test_an_image_the_flavor_is_too_small_for_is_refused_before_anything_is_made(props, vsize, words):
    image = dict(IMAGE, properties=props, virtual_size=vsize)
    with pytest.raises(LaunchError) as err:
        plan_launch(request(), hosts([]), [image])
    assert f"Launch refused before anything was made ({REQ})" in str(err.value) and words in str(err.value)
    assert "cannot launch instance web" in str(err.value)


OTHER = {"id": "0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d", "name": "cirros", "properties": {}, "virtual_size": 1}


def test_the_image_is_picked_by_name_or_by_id_in_any_case():
    assert plan_launch(request(), hosts([]), [OTHER, IMAGE])["image"] == IMAGE
    assert plan_launch(request(image=IMAGE["id"].upper()), hosts([]), [OTHER, IMAGE])["image"] == IMAGE
    assert plan_launch(request(image=OTHER["id"]), hosts([]), [OTHER, IMAGE])["image"] == OTHER


def test_an_unknown_image_is_named_with_the_images_there():
    with pytest.raises(LaunchError) as err:
        plan_launch(request(image="nosuch"), hosts([]), [OTHER, IMAGE], image_host="controller")
    assert str(err.value) == (
        "Bad launch request: image 'nosuch' is not in the image store on controller; the images there: "
        f"cirros ({OTHER['id']}), vctest ({IMAGE['id']}) (import one with playbooks/image_import.yml)"
    )
    with pytest.raises(LaunchError, match="the images there: none"):
        plan_launch(request(), hosts([]), [])


def test_a_name_that_several_images_have_asks_for_the_id():
    twin = dict(OTHER, name="vctest")
    with pytest.raises(LaunchError, match=f"2 images on the image host are named 'vctest' \\({IMAGE['id']}, {OTHER['id']}\\): give the image's id"):
        plan_launch(request(), hosts([]), [IMAGE, twin])


def test_a_flavor_without_a_root_disk_takes_the_image_size():
    assert plan_launch(request(flavor="m1.none"), hosts([]), [dict(IMAGE, virtual_size=50 * 1024**3)])["new"]


PLACEMENT = {"selected": ["node1", "node1", "node2"], "alternates": [["node2", "node3"], ["node3"], []]}


def planned():
    return plan_launch(request(count=3), hosts([]), [IMAGE])


def ports_of(plan):
    return [
        {"instance_uuid": n["uuid"], "network": "private", "mac": f"fa:16:3e:00:00:0{i}", "ip": f"10.0.0.{i + 2}", "bridge": "vcbr-private", "id": "p"}
        for i, n in enumerate(plan["new"])
    ]


def test_round_zero_sends_each_instance_to_its_chosen_host_with_its_port():
    plan = planned()
    first = launch_round(plan, PLACEMENT, ports_of(plan), [], 0)
    assert sorted(first) == ["node1", "node2"]
    assert [i["name"] for i in first["node1"]] == ["web-1", "web-2"]
    assert first["node2"][0]["port"] == {"network": "private", "mac": "fa:16:3e:00:00:02", "ip": "10.0.0.4", "bridge": "vcbr-private"}


def test_later_rounds_try_the_alternates_of_the_failed_ones_only():
    plan = planned()
    uuids = [n["uuid"] for n in plan["new"]]
    results = [
        {"uuid": uuids[0], "host": "node1", "ok": False, "error": "boom"},
        {"uuid": uuids[1], "host": "node1", "ok": True, "error": ""},
        {"uuid": uuids[2], "host": "node2", "ok": False, "error": "boom"},
    ]
    second = launch_round(plan, PLACEMENT, ports_of(plan), results, 1)
    assert {h: [i["name"] for i in v] for h, v in second.items()} == {"node2": ["web-1"]}  # web-3 has no alternate
    results.append({"uuid": uuids[0], "host": "node2", "ok": False, "error": "again"})
    assert [i["name"] for i in launch_round(plan, PLACEMENT, ports_of(plan), results, 2)["node3"]] == ["web-1"]
    assert launch_round(plan, PLACEMENT, ports_of(plan), results, 2, max_attempts=2) == {}
    assert launch_round(plan, PLACEMENT, ports_of(plan), results, 3) == {}


def test_an_instance_without_a_port_is_an_error():
    plan = planned()
    with pytest.raises(LaunchError, match="has no reserved port"):
        launch_round(plan, PLACEMENT, ports_of(plan)[:1], [], 0)


def test_the_report_names_the_launched_the_existing_and_the_failed():
    plan = plan_launch(request(count=3), hosts([("web-3", None)]), [IMAGE])
    uuids = [n["uuid"] for n in plan["new"]]
    placement = {"selected": ["node1", "node2"], "alternates": [["node2"], []]}
    results = [
        {"uuid": uuids[0], "host": "node1", "ok": False, "error": "Host key verification failed"},
        {"uuid": uuids[0], "host": "node2", "ok": True, "error": ""},
        {"uuid": uuids[1], "host": "node2", "ok": False, "error": ""},
    ]
    report = launch_report(plan, placement, ports_of(plan), results)
    assert report["request_id"] == REQ and report["existing"] == ["web-3"]
    assert report["launched"] == [{"name": "web-1", "uuid": uuids[0], "host": "node2", "ip": "10.0.0.2", "mac": "fa:16:3e:00:00:00"}]
    assert report["failed"] == [
        {"name": "web-2", "uuid": uuids[1], "hosts": ["node2"], "errors": ["node2: failed"], "port_request": plan["new"][1]["port_request"]}
    ]
    assert launch_report(plan_launch(request(), hosts([("web", None)]), [IMAGE]), None, [], []) == {
        "request_id": REQ,
        "launched": [],
        "existing": ["web"],
        "failed": [],
    }
