# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Snapshot, rebuild, rescue and unrescue through playbooks/instance.yml on the lab,
checked by what the guests report on their consoles: the boot counter on the guest's own
disk, the ticks in its memory, the disks it sees."""

from __future__ import annotations

import json
import os

import pytest

from harness import GUEST_IMAGE, act, console, delete, launch, launched, run_playbook
from test_images import Images

RESCUE_IMAGE = os.path.join(os.path.dirname(GUEST_IMAGE), "vctest-rescue.qcow2")


def images_named(lab, name) -> list:
    """The images of that name in the lab's store (image_info on the controller)."""
    store = Images(lab, own_store=False)
    return store.ok("controller", "image_info", store.image_args(name=name))["images"]


def delete_image(lab, name) -> None:
    store = Images(lab, own_store=False)
    store.ok("controller", "image", store.image_args(name=name, state="absent"))


def info_of(lab, inst) -> dict:
    out = lab.ssh(inst["host"], f"cat {lab.instances_dir(inst['host'])}/{inst['uuid']}/instance.json")
    return json.loads(out)


@pytest.fixture(scope="module")
def rescue_image(cloud):
    result = run_playbook(
        "image_import.yml", dict(image_name="vctest-rescue", image_src=RESCUE_IMAGE, image_properties={"hw_architecture": "x86_64"}), inventory=cloud.inventory
    )
    assert result.rc == 0, result.stdout[-3000:]
    return "vctest-rescue"


def test_snapshot_keeps_the_guest_running_and_a_launch_from_it_continues_the_boot_count(cloud):
    made = []
    try:
        result = launch(cloud, launch_name="snapsrc")
        assert result.rc == 0, result.stdout[-3000:]
        src = launched(result)[0]
        made.append(src)
        con = console(cloud, src)
        con.wait("BOOT", timeout=240, pattern=r"^count=1 variant=normal")
        con.wait("TICK", timeout=60, pattern=r"^3$")

        # check mode: reported, nothing taken
        check = act(cloud, "snapsrc", "snapshot", snapshot_name="snapsrc-snap", check=True)
        assert check.rc == 0 and check.changed > 0, check.stdout[-3000:]
        assert images_named(cloud, "snapsrc-snap") == []

        ticks_before = con.ticks()[-1]
        snap = act(cloud, "snapsrc", "snapshot", snapshot_name="snapsrc-snap")
        assert snap.rc == 0, snap.stdout[-4000:]
        [image] = images_named(cloud, "snapsrc-snap")
        assert image["image_type"] == "snapshot" and image["instance_uuid"] == src["uuid"], image
        assert image["properties"]["base_image_ref"] == info_of(cloud, src)["image"]["id"]
        assert image["properties"]["hw_architecture"] == "x86_64"  # the instance image's properties came along
        # the guest was paused and resumed, never rebooted: one BOOT, ticks go on from where they were
        con.wait("TICK", timeout=60, pattern=f"^{ticks_before + 5}$")
        assert [k for k, _t in con.lines()].count("BOOT") == 1
        ticks = con.ticks()
        assert ticks == list(range(1, len(ticks) + 1)), ticks[-20:]
        # no file left on the host; the action log has the snapshot
        assert cloud.ssh(src["host"], f"ls -A {cloud.instances_dir(src['host'])}/snapshots").split() == []
        log = [(a["action"], a["result"]) for a in info_of(cloud, src)["actions"]]
        assert ("createImage", "Success") in log, log
        assert info_of(cloud, src)["vm_state"] == "active" and info_of(cloud, src)["task_state"] is None

        # the same snapshot again: no change
        again = act(cloud, "snapsrc", "snapshot", snapshot_name="snapsrc-snap")
        assert again.rc == 0 and again.changed == 0, again.stdout[-3000:]
        # a name that another image has is refused
        taken = act(cloud, "snapsrc", "snapshot", snapshot_name="vctest")
        assert taken.rc != 0 and "belongs to image" in taken.stdout, taken.stdout[-3000:]

        # a new instance from the snapshot boots the copied disk: its counter goes on from 1 to 2
        result = launch(cloud, launch_name="fromsnap", launch_image="snapsrc-snap")
        assert result.rc == 0, result.stdout[-3000:]
        new = launched(result)[0]
        made.append(new)
        console(cloud, new).wait("BOOT", timeout=240, pattern=r"^count=2 variant=normal")
    finally:
        for inst in made:
            delete(cloud, inst["name"])
        delete_image(cloud, "snapsrc-snap")


def test_rebuild_gives_a_new_disk_with_the_same_address_and_resets_the_boot_count(cloud):
    result = launch(cloud, launch_name="rebld")
    assert result.rc == 0, result.stdout[-3000:]
    inst = launched(result)[0]
    try:
        con = console(cloud, inst)
        con.wait("BOOT", timeout=240, pattern=r"^count=1 ")
        hard = act(cloud, "rebld", "reboot_hard")
        assert hard.rc == 0, hard.stdout[-3000:]
        second, _t = con.wait("BOOT", timeout=240, pattern=r"^count=2 ")
        before = info_of(cloud, inst)

        # an image the flavor is too small for is refused before anything happens
        big = run_playbook(
            "image_import.yml", dict(image_name="vctest-big", image_src=GUEST_IMAGE, image_properties={"min_ram": "65536"}), inventory=cloud.inventory
        )
        assert big.rc == 0, big.stdout[-3000:]
        refused = act(cloud, "rebld", "rebuild", image="vctest-big")
        assert refused.rc != 0 and "needs 65536 MB of RAM" in refused.stdout, refused.stdout[-3000:]
        assert info_of(cloud, inst)["vm_state"] == "active" and info_of(cloud, inst)["image"] == before["image"]
        missing = act(cloud, "rebld", "rebuild", image="no-such-image")
        assert missing.rc != 0 and "No image no-such-image" in missing.stdout, missing.stdout[-3000:]

        check = act(cloud, "rebld", "rebuild", image="vctest", check=True)
        assert check.rc == 0 and check.changed > 0, check.stdout[-3000:]
        rebuilt = act(cloud, "rebld", "rebuild", image="vctest")
        assert rebuilt.rc == 0, rebuilt.stdout[-4000:]
        # the guest shut down through ACPI and booted a fresh disk: the counter starts again
        con.wait("SHUTDOWN", timeout=60, after=second)
        third, _t = con.wait("BOOT", timeout=240, after=second, pattern=r"^count=1 ")
        _i, ip = con.wait("IP", timeout=120, after=third, pattern=r"^eth0 ")
        assert ip.split()[1] == f"{inst['ip']}/24" and f"mac={inst['mac']}" in ip, ip
        _i, meta = con.wait("METADATA", timeout=30, after=third)
        assert json.loads(meta)["uuid"] == inst["uuid"]
        after = info_of(cloud, inst)
        assert after["uuid"] == before["uuid"] and after["flavor"] == before["flavor"] and after["ports"] == before["ports"]
        assert after["vm_state"] == "active" and after["task_state"] is None
        assert [a["action"] for a in after["actions"]][-1] == "rebuild"
    finally:
        delete(cloud, "rebld")
        delete_image(cloud, "vctest-big")


def test_rescue_boots_the_rescue_image_with_the_disk_second_and_unrescue_boots_it_again(cloud, rescue_image):
    result = launch(cloud, launch_name="rscu")
    assert result.rc == 0, result.stdout[-3000:]
    inst = launched(result)[0]
    idir = os.path.join(cloud.instances_dir(inst["host"]), inst["uuid"])
    try:
        con = console(cloud, inst)
        first, _t = con.wait("BOOT", timeout=240, pattern=r"^count=1 variant=normal")

        check = act(cloud, "rscu", "rescue", image=rescue_image, check=True)
        assert check.rc == 0 and check.changed > 0, check.stdout[-3000:]
        assert not os.path.exists(os.path.join(idir, "disk.rescue"))
        rescued = act(cloud, "rscu", "rescue", image=rescue_image)
        assert rescued.rc == 0, rescued.stdout[-4000:]
        boot, _t = con.wait("BOOT", timeout=240, after=first, pattern=r"^count=1 variant=rescue")
        _i, rescue = con.wait("RESCUE", timeout=60, after=boot)
        assert rescue == "disk=vdb bootcount=1", rescue
        _i, disks = con.wait("DISKS", timeout=60, after=boot)
        assert sorted(d.split("=")[0] for d in disks.split()) == ["vda", "vdb", "vdc"], disks
        blk = cloud.ssh(inst["host"], f"virsh domblklist instance-{inst['uuid']}").split()
        on_host = f"{cloud.instances_path}/{inst['uuid']}"
        assert blk[blk.index("vda") + 1] == on_host + "/disk.rescue" and blk[blk.index("vdb") + 1] == on_host + "/disk", blk
        assert info_of(cloud, inst)["vm_state"] == "rescued"

        again = act(cloud, "rscu", "rescue", image=rescue_image)
        assert again.rc == 0 and again.changed == 0, again.stdout[-3000:]
        paused = act(cloud, "rscu", "pause")
        assert paused.rc != 0 and "while it is rescued" in paused.stdout, paused.stdout[-3000:]

        back = act(cloud, "rscu", "unrescue")
        assert back.rc == 0, back.stdout[-4000:]
        con.wait("BOOT", timeout=240, after=boot, pattern=r"^count=2 variant=normal")
        assert not os.path.exists(os.path.join(idir, "disk.rescue"))
        assert info_of(cloud, inst)["vm_state"] == "active"
        log = [a["action"] for a in info_of(cloud, inst)["actions"]]
        assert log[-2:] == ["rescue", "unrescue"], log
        again = act(cloud, "rscu", "unrescue")
        assert again.rc == 0 and again.changed == 0, again.stdout[-3000:]
    finally:
        delete(cloud, "rscu")


@pytest.mark.parametrize(
    "action, extra, message",
    [
        ("snapshot", dict(snapshot_name="bad name!"), "Bad request"),
        ("rebuild", dict(), "Bad request"),
        ("rescue", dict(), "No instance nobody on any compute host"),
        ("unrescue", dict(request_id="req-1"), "Bad request"),
    ],
)
def test_bad_requests_fail_clearly(cloud, action, extra, message):
    result = act(cloud, "nobody", action, **extra)
    assert result.rc != 0 and message in result.stdout, result.stdout[-3000:]
