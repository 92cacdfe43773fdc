# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The image host pulls a file from a compute host (module image with src_host), as Nova's snapshot upload.

The lab is prepared with compute_node.yml: the controller (image host) and the
compute hosts trust each other's root keys and pin each other's host keys by
address. A snapshot file is made on node1 in a folder only node1 sees (its own
/var/lib/virtcloud), and the controller imports it with ``src_host`` = node1's
address. The tests run in file order and build on each other; the store may hold
other tests' images, so only this file's are looked at, and they are removed at the end.
"""

from __future__ import annotations

import os
import uuid

import pytest

from harness import GUEST_IMAGE
from test_images import Images

SNAPSHOTS = "/var/lib/virtcloud/snapshots"  # private to each lab host (not on the machine's own file system)
SNAP = SNAPSHOTS + "/web1.qcow2"
EMPTY_KNOWN_HOSTS = "/var/lib/virtcloud/empty_known_hosts"  # on the controller
BAD = SNAPSHOTS + "/backing.qcow2"
INSTANCE = str(uuid.uuid4())
BASE_IMAGE = str(uuid.uuid4())
PROPERTIES = {
    "hw_architecture": "x86_64",
    "min_ram": "128",
    "base_image_ref": BASE_IMAGE,
    "image_location": "snapshot",
    "image_state": "available",
    "owner_id": "demo",
    "user_id": "alice",
}


@pytest.fixture(scope="module")
def remote(cloud):
    """The lab as a cloud (keys and pinned host keys between the hosts), and the files on node1."""
    lab = cloud
    env = Images(lab, own_store=False)
    env.node1 = lab.address("node1")
    lab.ssh(
        "node1",
        f"mkdir -p {SNAPSHOTS} && qemu-img convert -q -f qcow2 -O qcow2 {GUEST_IMAGE} {SNAP} && "
        f"qemu-img create -q -f qcow2 -u -F raw -b /etc/hostname {BAD} 1M",
    )
    env.snap_sha256 = lab.ssh("node1", f"sha256sum {SNAP}").split()[0]
    env.snap_size = int(lab.ssh("node1", f"stat -c %s {SNAP}"))
    # the controller cannot read the file itself: it must come over scp
    assert lab.ssh("controller", f"test -e {SNAP} && echo present || echo absent").strip() == "absent"
    env.others = images_in_store(env)  # images other tests put in the store
    env.snapshot = None
    try:
        yield env
    finally:
        env.ok("controller", "image", env.image_args(name="web1-snap", state="absent"), venv=False)
        lab.ssh("node1", f"rm -rf {SNAPSHOTS}")
        lab.ssh("controller", f"rm -f {EMPTY_KNOWN_HOSTS}")


def snapshot_args(env, **extra):
    args = env.image_args(
        name="web1-snap",
        src=SNAP,
        src_host=env.node1,
        ssh_key="/root/.ssh/id_ed25519",
        known_hosts="/root/.ssh/known_hosts",
        image_type="snapshot",
        instance_uuid=INSTANCE,
        properties=PROPERTIES,
        owner="demo",
        visibility="private",
        request_id=f"req-{uuid.uuid4()}",
    )
    args.update(extra)
    return args


def images_in_store(env):
    return [e for e in env.store_entries() if not e.startswith(".")]


def leftovers(env):
    return [e for e in env.store_entries() if e.startswith((".import-", ".deleted-"))]


def assert_store_unchanged(env):
    """Only the other tests' images and this file's snapshot (once made); no import in progress."""
    mine = [env.snapshot["id"]] if env.snapshot else []
    assert sorted(images_in_store(env)) == sorted(env.others + mine)
    assert leftovers(env) == []


def test_check_mode_plans_the_import_without_contacting_the_host(remote):
    planned = remote.ok("controller", "image", snapshot_args(remote), check=True)
    assert planned["changed"], planned
    assert planned["changes"] == [f"import root@{remote.node1}:{SNAP} as image web1-snap ({planned['image']['id']})"]
    assert (planned["image"]["image_type"], planned["image"]["instance_uuid"], planned["image"]["sha256"]) == ("snapshot", INSTANCE, None)
    assert_store_unchanged(remote)
    assert remote.ok("controller", "image_info", remote.image_args(name="web1-snap"))["images"] == []
    # a host nobody answers for: check mode still plans, since it never connects
    unreachable = remote.lab.address("node3").rsplit(".", 1)[0] + ".250"
    assert remote.ok("controller", "image", snapshot_args(remote, src_host=unreachable), check=True)["changed"]


def test_the_image_host_pulls_the_snapshot_then_changes_nothing(remote):
    args = snapshot_args(remote)
    made, out = remote.module("controller", "image", args, diff=True)
    assert made["changed"] and not made.get("failed"), made
    rec = made["image"]
    assert rec == dict(
        rec,
        name="web1-snap",
        status="active",
        disk_format="qcow2",
        sha256=remote.snap_sha256,
        size=remote.snap_size,
        image_type="snapshot",
        instance_uuid=INSTANCE,
        owner="demo",
        visibility="private",
        properties=PROPERTIES,
    )
    assert "+++ after" in out and '"image_type": "snapshot"' in out
    assert made["changes"] == [f"import root@{remote.node1}:{SNAP} as image web1-snap ({rec['id']})"]
    assert sorted(images_in_store(remote)) == sorted(remote.others + [rec["id"]]) and leftovers(remote) == []
    stored = os.path.join(remote.store_on_machine, rec["id"], "image")
    assert remote.lab.ssh("controller", f"sha256sum {os.path.join(remote.store, rec['id'], 'image')}").split()[0] == remote.snap_sha256
    assert os.path.getsize(stored) == remote.snap_size
    log = remote.lab.ssh("controller", f"grep -F '[{args['request_id']}]' /var/log/virtcloud/virtcloud.log")
    assert f"imported root@{remote.node1}:{SNAP} as image {rec['id']}" in log, log
    remote.snapshot = rec

    again = remote.ok("controller", "image", snapshot_args(remote))
    assert not again["changed"] and again["image"] == rec
    assert not remote.ok("controller", "image", snapshot_args(remote), check=True)["changed"]
    # the given checksum is compared with the stored image, nothing is fetched
    assert not remote.ok("controller", "image", snapshot_args(remote, checksum=remote.snap_sha256))["changed"]
    msg = remote.fails("controller", "image", snapshot_args(remote, checksum="0" * 64))
    assert "not the given checksum" in msg and rec["id"] in msg
    listed = remote.ok("controller", "image_info", remote.image_args(image_type="snapshot", instance_uuid=INSTANCE), venv=False)
    assert listed["images"] == [rec]


@pytest.mark.parametrize("check", [True, False])
def test_a_snapshot_with_a_backing_file_is_rejected_and_leaves_nothing(remote, check):
    args = snapshot_args(remote, name="bad-snap", src=BAD)
    if check:
        # check mode does not read the remote file: the inspection is the real run's
        assert remote.ok("controller", "image", args, check=True)["changed"]
    else:
        msg = remote.fails("controller", "image", args)
        print(msg)
        assert "rejected" in msg and "backing" in msg and f"root@{remote.node1}:{BAD}" in msg, msg
    assert_store_unchanged(remote)


def test_a_missing_remote_file_fails_clearly(remote):
    missing = SNAPSHOTS + "/missing.qcow2"
    msg = remote.fails("controller", "image", snapshot_args(remote, name="missing", src=missing))
    print(msg)
    assert f"fetching root@{remote.node1}:{missing} to this host failed" in msg, msg
    assert "No such file or directory" in msg and "known_hosts" in msg and "nothing was imported" in msg, msg
    assert_store_unchanged(remote)


def test_an_unknown_host_key_fails_clearly(remote):
    remote.lab.ssh("controller", f"install -m 0600 /dev/null {EMPTY_KNOWN_HOSTS}")
    msg = remote.fails("controller", "image", snapshot_args(remote, name="untrusted", known_hosts=EMPTY_KNOWN_HOSTS))
    print(msg)
    assert "Host key verification failed" in msg and f"host key is in known_hosts ({EMPTY_KNOWN_HOSTS};" in msg, msg
    assert f"root@{remote.node1}:{SNAP}" in msg
    assert_store_unchanged(remote)


def test_the_size_cap_stops_the_transfer(remote):
    msg = remote.fails("controller", "image", snapshot_args(remote, name="too-big", size_cap=65536))
    print(msg)
    assert f"root@{remote.node1}:{SNAP} is larger than the size cap of 65536 bytes" in msg, msg
    assert_store_unchanged(remote)


def test_bad_options_fail_before_anything_runs(remote):
    msg = remote.fails("controller", "image", snapshot_args(remote, name="odd", src_host="-oProxyCommand=touch /tmp/x"))
    assert "src_host '-oProxyCommand=touch /tmp/x' is not a host name" in msg, msg
    msg = remote.fails("controller", "image", snapshot_args(remote, name="odd", src=SNAPSHOTS + "/a;b.qcow2"))
    assert "may only hold" in msg, msg
    msg = remote.fails("controller", "image", remote.image_args(name="odd", src_host=remote.node1))
    assert "src_host" in msg and "src" in msg, msg
