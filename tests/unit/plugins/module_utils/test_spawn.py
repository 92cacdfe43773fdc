# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Spawn as one step: record, create action, image fit, claim, disk, config drive, domain; cleanup on failure."""

from __future__ import annotations

import json
import re
import os

import pytest
from test_claim import figures
from test_domain import FakeConn, FakeQemuImg

from ansible_collections.virtcloud.compute.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtcloud.compute.plugins.module_utils import _spawn as sp
from ansible_collections.virtcloud.compute.plugins.module_utils._claim import ClaimError, read_claims
from ansible_collections.virtcloud.compute.plugins.module_utils._domain import DomainError
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import ImageDoesNotFit

UUID = "0b6f1b52-5c1e-5a6e-9c3f-2f1d4e5a6b7c"
REQ = "req-6f1c1b1e-0a4b-4c36-8f7e-0c2c9d1b5a77"
IMAGE = {"id": "976891f2-fa89-4792-82b3-a11c18abeff7", "properties": {"min_ram": "128"}, "sha256": "x"}
PORTS = [{"network": "private", "mac": "fa:16:3e:00:00:01", "ip": "10.100.0.2", "bridge": "vcbr-private"}]


class FakeDrive:
    """The config drive writer without mkfs.vfat: remembers the files, writes a marker."""

    def __init__(self, fail=False):
        self.built = []
        self.fail = fail

    def read(self, path):
        return None

    @staticmethod
    def same(current, wanted):
        return current == wanted

    def build(self, path, files, volume_id):
        if self.fail:
            raise DomainError("mkfs.vfat failed: disk full")
        self.built.append((path, files, volume_id))
        with open(path, "w", encoding="ascii") as f:
            f.write("config-2")


@pytest.fixture()
def site(tmp_path):
    path = tmp_path / "instances"
    os.makedirs(path / "_base")
    (path / "_base" / "base").write_text("base")
    return dict(conn=FakeConn(), path=str(path), claims=str(tmp_path / "claims.json"), qemu=FakeQemuImg(), drive=FakeDrive())


def record(**kw):
    args = dict(uuid=UUID, name="web-1", project="demo", flavor={"name": "m1.tiny", "vcpus": 1, "ram_mb": 256, "disk_gb": 1}, image=IMAGE)
    args.update(kw)
    return sp.new_record(ports=PORTS, host="node1", availability_zone="az1", meta={"role": "web"}, **args)


def run(site, inst=None, check_mode=False, virtual_size=64 * 1024**2, ram=4096):
    def read_host(extra):
        return figures(extra, ram=ram), set(site["conn"].domains)

    return sp.spawn(
        site["conn"],
        inst or record(),
        request_id=REQ,
        base={"path": f"{site['path']}/_base/base", "format": "qcow2", "virtual_size": virtual_size},
        ports=PORTS,
        run=None,
        qemu_img=site["qemu"],
        uri="qemu:///system",
        instances_path=site["path"],
        claims_file=site["claims"],
        allocation={},
        domain_type="qemu",
        check_mode=check_mode,
        read_host=read_host,
        config_drive=site["drive"],
    )


def test_a_new_record_is_building_with_the_ports_but_not_their_bridges():
    inst = record()
    assert (inst.vm_state, inst.task_state, inst.actions) == ("building", "scheduling", [])
    assert [p.to_dict() for p in inst.ports] == [{"network": "private", "mac": "fa:16:3e:00:00:01", "ip": "10.100.0.2"}]
    assert inst.image.to_dict() == {"id": IMAGE["id"], "properties": IMAGE["properties"]}  # the store's other keys stay out
    assert sp.bridges_of(PORTS) == {"private": {"bridge": "vcbr-private"}}


def test_the_root_disk_is_the_flavors_or_the_images_size():
    assert sp.root_disk_size(record(), 64 * 1024**2) == 1024**3
    assert sp.root_disk_size(record(flavor={"name": "m1.zero", "vcpus": 1, "ram_mb": 256, "disk_gb": 0}), 5 * 1024**3) == 5 * 1024**3


def test_check_mode_changes_nothing_then_the_spawn_makes_the_instance_then_no_change(site):
    check = run(site, check_mode=True)
    assert check["changed"] and check["actions"][0] == "claim" and check["instance"]["vm_state"] == "building"
    assert site["conn"].domains == {} and not os.path.exists(f"{site['path']}/{UUID}") and read_claims(site["claims"]) == {}
    made = run(site)
    assert made["changed"] and made["actions"][:3] == ["claim", "folder", "disk"] and made["actions"][-1] == "release"
    assert "define" in made["actions"] and "start" in made["actions"]
    rec = made["instance"]
    assert (rec["vm_state"], rec["task_state"], rec["power_state"], rec["host"], rec["availability_zone"]) == ("active", None, 1, "node1", "az1")
    (create,) = rec["actions"]
    assert create["action"] == "create" and create["request_id"] == REQ and create["result"] == "Success"
    assert create["start_time"] <= create["finish_time"] == rec["launched_at"]
    # the domain's metadata and instance.json hold the closed record; the claim is released
    assert dx.read_record(site["conn"].domains[UUID].xml) == rec
    with open(f"{site['path']}/{UUID}/instance.json", encoding="ascii") as f:
        assert json.load(f) == rec
    assert read_claims(site["claims"]) == {}
    overlay = [c for c in site["qemu"].calls if c[0] == "create_overlay"]
    assert overlay == [("create_overlay", f"{site['path']}/{UUID}/disk", f"{site['path']}/_base/base", "qcow2", 1024**3)]
    assert json.loads(site["drive"].built[0][1]["openstack/latest/meta_data.json"])["meta"] == {"role": "web"}
    again = run(site, inst=record())
    assert not again["changed"] and again["actions"] == [] and again["instance"] == rec


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(image=dict(IMAGE, properties={"min_ram": "512"})), "needs 512 MB of RAM (min_ram)"),
        (dict(image=dict(IMAGE, properties={"min_disk": "5"})), "needs a 5 GB root disk (min_disk)"),
    ],
)
def test_an_image_too_big_for_the_flavor_is_refused_before_the_claim(site, kw, words):
    with pytest.raises(ImageDoesNotFit, match=re.escape(words)):
        run(site, inst=record(**kw))
    assert site["conn"].domains == {} and read_claims(site["claims"]) == {} and os.listdir(site["path"]) == ["_base"]


def test_an_image_larger_than_the_root_disk_is_refused(site):
    with pytest.raises(ImageDoesNotFit, match=re.escape("virtual size of 2147483648 bytes is larger than the 1 GB root disk")):
        run(site, virtual_size=2 * 1024**3)
    assert read_claims(site["claims"]) == {}


def test_a_claim_that_does_not_fit_makes_nothing(site):
    with pytest.raises(ClaimError, match="claim for instance .* on node1 failed"):
        run(site, ram=600)
    assert site["conn"].domains == {} and os.listdir(site["path"]) == ["_base"]


def test_a_failed_spawn_removes_the_domain_the_folder_and_the_claim(site):
    site["drive"].fail = True
    with pytest.raises(sp.SpawnError, match=rf"spawn of instance web-1 \({UUID}\) on node1 failed \({REQ}\): mkfs.vfat failed"):
        run(site)
    assert site["conn"].domains == {} and os.listdir(site["path"]) == ["_base"] and read_claims(site["claims"]) == {}
