# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The image store, the compute image cache and instance disks, on real files in tmp dirs.

Images are made with qemu-img (small ones, so the tests stay fast); the image
cache's transport is replaced by a local copy (``LocalSource``); the scp command
line itself is checked word for word.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils import _image_inspect
from ansible_collections.virtcloud.compute.plugins.module_utils import _image_store as st
from ansible_collections.virtcloud.compute.plugins.module_utils._image_inspect import ImageUnsafe
from ansible_collections.virtcloud.compute.plugins.module_utils._disks import Disks
from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import (
    ImageCache,
    ImageConflict,
    ImageStore,
    ImageStoreError,
    ScpRemote,
    ScpSource,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImg

needs_tools = [
    pytest.mark.skipif(not _image_inspect.has_oslo(), reason="oslo.utils with imageutils.format_inspector is not installed"),
    pytest.mark.skipif(
        shutil.which("qemu-img") is None or shutil.which("prlimit") is None, reason="qemu-img (qemu-utils) and prlimit (util-linux) are not installed"
    ),
]

MIB = 1024 * 1024
ID1 = "0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d"
ID2 = "6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10"
NOW = "2025-01-01T12:00:00Z"


def real_run(argv, data=None):
    proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def qemu_img(*args):
    subprocess.run(["qemu-img"] + list(args), check=True, capture_output=True)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_pattern(path, size=MIB):
    """A raw disk with recognisable data (not a header of any format)."""
    with open(path, "wb") as f:
        f.write((b"virtcloud-test-data-" * (size // 20 + 1))[:size])


@pytest.fixture()
def qcow2(tmp_path):
    """A small qcow2 with data in it (a converted raw file), 2 MiB virtual."""
    raw = tmp_path / "src.raw"
    write_pattern(raw, 2 * MIB)
    out = tmp_path / "good.qcow2"
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out))
    return str(out)


@pytest.fixture()
def store(tmp_path):
    return ImageStore(str(tmp_path / "store"), qemu_img=QemuImg(real_run), now=lambda: NOW)


def store_entries(store):
    return sorted(os.listdir(store.path)) if os.path.isdir(store.path) else []


# ---------------------------------------------------------------------------
# Validation (pure)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (ID1, ID1),
        (ID1.upper(), ID1),
        (ID1.replace("-", ""), ID1),
    ],
)
def test_image_ids_are_canonical_uuids(value, expected):
    assert st.check_image_id(value) == expected


@pytest.mark.parametrize("value", ["", "vctest", "../etc", ID1 + "0", None, 12])
def test_bad_image_ids_are_refused(value):
    with pytest.raises(ImageStoreError, match="is not a uuid"):
        st.check_image_id(value)


@pytest.mark.parametrize("name", ["vctest", "debian-12", "Debian 12 (bookworm)", "a", "snap_web1.2024-01-01", "x" * 255])
def test_good_names(name):
    assert st.check_name(name) == name


@pytest.mark.parametrize("name", ["", " lead", "trail ", "-dash", "a/b", "a\nb", "semi;colon", "x" * 256, "quote'", None])
def test_bad_names(name):
    with pytest.raises(ImageStoreError, match="image name"):
        st.check_name(name)


@pytest.mark.parametrize(
    "props, expected",
    [
        (None, {}),
        ({}, {}),
        ({"os_type": "linux", "min_ram": 128, "min_disk": "1"}, {"min_disk": "1", "min_ram": "128", "os_type": "linux"}),
        ({"hw_architecture": "amd64"}, {"hw_architecture": "x86_64"}),
        ({"hw_architecture": "I386"}, {"hw_architecture": "i686"}),
        ({"img_hv_type": "QEMU"}, {"img_hv_type": "qemu"}),
        ({"img_hv_type": "xapi"}, {"img_hv_type": "xen"}),
        ({"hw_vm_mode": "hv"}, {"hw_vm_mode": "hvm"}),
        ({"hw_qemu_guest_agent": True, "hw_rng:allowed": False}, {"hw_qemu_guest_agent": "true", "hw_rng:allowed": "false"}),
        ({"ratio": 1.5}, {"ratio": "1.5"}),
        ({"k": "v" * 255}, {"k": "v" * 255}),
    ],
)
def test_properties_are_normalised(props, expected):
    assert st.normalize_properties(props) == expected


# What Nova's snapshot adds to the properties it copies from the instance's image
# (compute/utils.py create_image and initialize_instance_snapshot_metadata, libvirt's
# _create_snapshot_metadata); instance_uuid, owner and image_type are record fields here.
SNAPSHOT_PROPERTIES = {"base_image_ref": ID1, "image_location": "snapshot", "image_state": "available", "owner_id": "demo", "user_id": "alice"}


@pytest.mark.parametrize(
    "props, expected",
    [
        (SNAPSHOT_PROPERTIES, SNAPSHOT_PROPERTIES),
        (
            dict(SNAPSHOT_PROPERTIES, hw_architecture="amd64", min_ram=128, os_type="linux"),
            dict(SNAPSHOT_PROPERTIES, hw_architecture="x86_64", min_ram="128", os_type="linux"),
        ),
    ],
)
def test_a_snapshot_s_properties_are_accepted(props, expected):
    assert st.normalize_properties(props) == expected


@pytest.mark.parametrize(
    "props, message",
    [
        ({"Bad": "x"}, "property key 'Bad' is not valid"),
        ({"with space": "x"}, "is not valid"),
        ({"a-b": "x"}, "is not valid"),
        ({"": "x"}, "is not valid"),
        ({"k" * 256: "x"}, "is not valid"),
        ({"name": "x"}, "is a field of the image record"),
        ({"sha256": "x"}, "is a field of the image record"),
        ({"instance_uuid": ID2}, "is a field of the image record"),
        ({"image_type": "snapshot"}, "is a field of the image record"),
        ({"owner": "demo"}, "is a field of the image record"),
        ({"k": "v" * 256}, "at most 255"),
        ({"k": ["a"]}, "must be a string"),
        ({"k": None}, "must be a string"),
        ({"k": "a\nb"}, "control characters"),
        ({"min_ram": "-1"}, "whole number"),
        ({"min_disk": "1.5"}, "whole number"),
        ({"hw_architecture": "pdp11"}, "not one of Nova's values"),
        ({"img_hv_type": "hyperkit"}, "not one of Nova's values"),
        ({f"k{i}": "v" for i in range(129)}, "at most 128 properties"),
        (["a"], "must be a dict"),
    ],
)
def test_bad_properties_are_refused(props, message):
    with pytest.raises(ImageStoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
        st.normalize_properties(props)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("A" * 64, "a" * 64),
        ("sha256:" + "b" * 64, "b" * 64),
        ("  " + "c" * 64 + "\n", "c" * 64),
    ],
)
def test_checksums(value, expected):
    assert st.check_sha256(value) == expected


@pytest.mark.parametrize("value", ["a" * 63, "g" * 64, "md5:" + "a" * 32, None])
def test_bad_checksums(value):
    with pytest.raises(ImageStoreError, match="sha256"):
        st.check_sha256(value)


@pytest.mark.parametrize(
    "value, safe, ok",
    [
        ("/var/lib/virtcloud/images", True, True),
        ("/var/lib/virtcloud/images/", True, True),
        ("relative/path", False, False),
        ("/a/../b", False, False),
        ("/a//b", False, False),
        ("/a/./b", False, False),
        ("/with space", False, True),
        ("/with space", True, False),
        ("/semi;colon", True, False),
        ("/star*", True, False),
        ("/nul\0", False, False),
    ],
)
def test_paths(value, safe, ok):
    if ok:
        assert st.check_path(value, safe=safe) == os.path.normpath(value)
    else:
        with pytest.raises(ImageStoreError):
            st.check_path(value, safe=safe)


def record(**changes):
    rec = dict(
        id=ID1,
        name="vctest",
        status="active",
        disk_format="qcow2",
        container_format="bare",
        size=10,
        virtual_size=MIB,
        sha256="a" * 64,
        properties={"os_type": "linux"},
        owner=None,
        visibility="public",
        image_type="image",
        instance_uuid=None,
        created_at=NOW,
        updated_at=NOW,
    )
    rec.update(changes)
    return rec


def test_a_valid_record_passes_and_unknown_fields_are_dropped():
    assert st.validate_record(dict(record(), extra="x")) == record()
    snap = record(image_type="snapshot", instance_uuid=ID2, owner="demo", visibility="private")
    assert st.validate_record(snap) == snap


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(id="x"), "is not a uuid"),
        (dict(id=ID1.upper()), "canonical"),
        (dict(name="a/b"), "image name"),
        (dict(status="saving"), "status"),
        (dict(disk_format="vmdk"), "disk_format"),
        (dict(container_format="ovf"), "container_format"),
        (dict(size=0), "size"),
        (dict(size="10"), "size"),
        (dict(virtual_size=True), "virtual_size"),
        (dict(sha256="A" * 64), "sha256"),
        (dict(properties={"min_ram": 1}), "normal form"),
        (dict(properties={"Bad": "x"}), "property key"),
        (dict(visibility="everyone"), "visibility"),
        (dict(image_type="backup"), "image_type"),
        (dict(image_type="snapshot"), "instance_uuid"),
        (dict(instance_uuid=ID2), "not a snapshot"),
        (dict(created_at=None), "created_at"),
        (dict(owner="a b"), "owner"),
    ],
)
def test_broken_records_are_refused(changes, message):
    with pytest.raises(ImageStoreError, match=message):
        st.validate_record(record(**changes))


def test_a_record_must_hold_the_expected_id():
    with pytest.raises(ImageStoreError, match=f"expected {ID2}"):
        st.validate_record(record(), ID2)


def test_base_name_is_nova_s_sha1_of_the_image_id():
    assert st.base_name(ID1) == hashlib.sha1(ID1.encode()).hexdigest()
    assert st.base_name(ID1.upper()) == st.base_name(ID1)


# ---------------------------------------------------------------------------
# Import, update, delete
# ---------------------------------------------------------------------------


class TestImport:
    pytestmark = needs_tools

    def test_import_makes_the_image_and_its_record(self, store, qcow2):
        result = store.ensure(name="good", src=qcow2, properties={"hw_architecture": "amd64", "min_ram": 64})
        assert result["changed"] and result["before"] is None
        rec = result["after"]
        assert rec == dict(
            id=rec["id"],
            name="good",
            status="active",
            disk_format="qcow2",
            container_format="bare",
            size=os.path.getsize(qcow2),
            virtual_size=2 * MIB,
            sha256=sha256(qcow2),
            properties={"hw_architecture": "x86_64", "min_ram": "64"},
            owner=None,
            visibility="public",
            image_type="image",
            instance_uuid=None,
            created_at=NOW,
            updated_at=NOW,
        )
        image_dir = os.path.join(store.path, rec["id"])
        assert sorted(os.listdir(image_dir)) == ["image", "image.json"]
        assert sha256(os.path.join(image_dir, "image")) == sha256(qcow2)
        with open(os.path.join(image_dir, "image.json"), encoding="utf-8") as f:
            assert json.load(f) == rec
        assert store_entries(store) == [".lock", rec["id"]]
        assert oct(os.stat(image_dir).st_mode & 0o777) == "0o755"
        assert store.list() == [rec] and store.find("good") == rec and store.get(rec["id"]) == rec

    def test_same_import_again_changes_nothing(self, store, qcow2):
        first = store.ensure(name="good", src=qcow2, properties={"os_type": "linux"})["after"]
        again = store.ensure(name="good", src=qcow2, properties={"os_type": "linux"})
        assert not again["changed"] and again["after"] == first and again["actions"] == []
        by_id = store.ensure(name="good", image_id=first["id"], src=qcow2)
        assert not by_id["changed"]
        assert len(store.list()) == 1

    def test_given_id_is_used(self, store, qcow2):
        rec = store.ensure(name="good", image_id=ID1.upper(), src=qcow2)["after"]
        assert rec["id"] == ID1 and os.path.isdir(os.path.join(store.path, ID1))

    def test_check_mode_import_changes_nothing(self, store, qcow2):
        checker = ImageStore(store.path, qemu_img=store.qemu_img, check_mode=True, now=lambda: NOW)
        result = checker.ensure(name="good", src=qcow2, image_id=ID1)
        assert result["changed"] and result["after"]["sha256"] == sha256(qcow2) and result["after"]["virtual_size"] == 2 * MIB
        assert not os.path.exists(store.path)
        store.ensure(name="good", src=qcow2, image_id=ID1)
        assert not checker.ensure(name="good", src=qcow2, image_id=ID1)["changed"]

    def test_check_mode_inspects_the_source_too(self, store, tmp_path):
        bad = tmp_path / "bad.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", "/etc/hostname", str(bad), "1M")
        checker = ImageStore(store.path, qemu_img=store.qemu_img, check_mode=True)
        with pytest.raises(ImageUnsafe, match="backing"):
            checker.ensure(name="bad", src=str(bad))
        assert not os.path.exists(store.path)

    def test_properties_owner_visibility_and_name_are_updated(self, store, qcow2):
        first = store.ensure(name="good", src=qcow2, image_id=ID1, properties={"os_type": "linux", "min_ram": 64})["after"]
        later = ImageStore(store.path, qemu_img=store.qemu_img, now=lambda: "2025-02-02T00:00:00Z")
        checker = ImageStore(store.path, check_mode=True)
        wanted = dict(name="renamed", image_id=ID1, properties={"min_ram": "128"}, owner="demo", visibility="private")
        planned = checker.ensure(**wanted)
        assert planned["changed"] and store.get(ID1) == first
        result = later.ensure(**wanted)
        assert result["changed"] and result["before"] == first
        assert result["actions"] == [f"update name, properties, owner, visibility of image {ID1} (good)"]
        assert store.get(ID1) == dict(
            first, name="renamed", properties={"min_ram": "128"}, owner="demo", visibility="private", updated_at="2025-02-02T00:00:00Z"
        )
        assert not later.ensure(**wanted)["changed"]
        # properties left out: kept
        assert not later.ensure(name="renamed")["changed"]
        assert store.get(ID1)["properties"] == {"min_ram": "128"}

    def test_other_content_under_the_same_name_or_id_is_refused(self, store, qcow2, tmp_path):
        store.ensure(name="good", src=qcow2, image_id=ID1)
        other = tmp_path / "other.raw"
        write_pattern(other, MIB)
        with pytest.raises(ImageConflict, match="holds other content"):
            store.ensure(name="good", src=str(other), disk_format="qcow2")
        with pytest.raises(ImageConflict, match="holds other content"):
            store.ensure(name="new-name", image_id=ID1, src=str(other))
        with pytest.raises(ImageConflict, match="disk_format qcow2, not raw"):
            store.ensure(name="good", src=str(other), disk_format="raw")
        with pytest.raises(ImageConflict, match="not the given checksum"):
            store.ensure(name="good", url="http://127.0.0.1:9/x", checksum="0" * 64)
        with pytest.raises(ImageConflict, match=f"belongs to image {ID1}"):
            store.ensure(name="good", image_id=ID2, src=str(other), disk_format="raw")
        with pytest.raises(ImageConflict, match="image_type"):
            store.ensure(name="good", src=qcow2, image_type="snapshot", instance_uuid=ID2)
        assert [r["id"] for r in store.list()] == [ID1] and store_entries(store) == [".lock", ID1]

    def test_url_without_checksum_takes_an_existing_image_as_it_is(self, store, qcow2):
        store.ensure(name="good", src=qcow2)
        assert not store.ensure(name="good", url="http://127.0.0.1:9/never-fetched")["changed"]

    def test_a_missing_image_without_source_fails_clearly(self, store):
        with pytest.raises(ImageStoreError, match="give src .* or url to import it"):
            store.ensure(name="nothing")

    def test_snapshot_records(self, store, qcow2):
        rec = store.ensure(name="snap", src=qcow2, image_type="snapshot", instance_uuid=ID2, visibility="private", owner="demo")["after"]
        assert (rec["image_type"], rec["instance_uuid"], rec["visibility"], rec["owner"]) == ("snapshot", ID2, "private", "demo")
        assert store.list(image_type="snapshot", instance_uuid=ID2) == [rec]
        assert store.list(image_type="image") == []
        # ref: an id when it has an id's form, a name otherwise
        assert store.list(ref="snap") == [rec] and store.list(ref=rec["id"]) == [rec] and store.list(ref=ID1) == []
        with pytest.raises(ImageStoreError, match="give image, or id or name, not both"):
            store.list(ref="snap", name="snap")
        with pytest.raises(ImageStoreError, match="needs instance_uuid"):
            store.ensure(name="snap2", src=qcow2, image_type="snapshot")
        with pytest.raises(ImageStoreError, match="only for image_type snapshot"):
            store.ensure(name="img", src=qcow2, instance_uuid=ID2)

    def test_raw_import(self, store, tmp_path):
        raw = tmp_path / "disk.raw"
        write_pattern(raw, MIB)
        rec = store.ensure(name="raw", src=str(raw), disk_format="raw")["after"]
        assert rec["disk_format"] == "raw" and rec["virtual_size"] == MIB and rec["size"] == MIB

    def test_checksum_is_checked(self, store, qcow2):
        with pytest.raises(ImageStoreError, match="not the given checksum"):
            store.ensure(name="good", src=qcow2, checksum="0" * 64)
        assert store_entries(store) == [".lock"]
        rec = store.ensure(name="good", src=qcow2, checksum="sha256:" + sha256(qcow2).upper())["after"]
        assert rec["sha256"] == sha256(qcow2)

    def test_size_cap(self, store, qcow2):
        with pytest.raises(ImageStoreError, match="size cap"):
            store.ensure(name="good", src=qcow2, size_cap=1000)
        assert store_entries(store) == [".lock"]

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(), "give the image a name"),
            (dict(name="x", src="/a", url="http://h/x"), "not both"),
            (dict(name="x", src="rel"), "absolute path"),
            (dict(name="x", url="file:///etc/passwd"), "http:// or https://"),
            (dict(name="x", url="ftp://h/x"), "http:// or https://"),
            (dict(name="x", disk_format="vmdk", src="/a"), "disk_format"),
            (dict(name="x", image_type="backup", src="/a"), "image_type"),
            (dict(name="x", visibility="all", src="/a"), "visibility"),
            (dict(name="x", owner="bad owner", src="/a"), "owner"),
            (dict(name="x", size_cap=0, src="/a"), "size_cap"),
            (dict(name="x", checksum="nope", src="/a"), "sha256"),
        ],
    )
    def test_bad_requests_fail_before_anything_is_made(self, store, kwargs, message):
        with pytest.raises(ImageStoreError, match=message):
            store.ensure(**kwargs)
        assert not os.path.exists(store.path)

    def test_delete(self, store, qcow2):
        rec = store.ensure(name="good", src=qcow2, image_id=ID1)["after"]
        checker = ImageStore(store.path, check_mode=True)
        planned = checker.delete(name="good")
        assert planned["changed"] and planned["before"] == rec and store.get(ID1) == rec
        with pytest.raises(ImageConflict, match="not 'other'"):
            store.delete(image_id=ID1, name="other")
        result = store.delete(image_id=ID1)
        assert result["changed"] and result["after"] is None and result["actions"] == [f"delete image {ID1} (good)"]
        assert store_entries(store) == [".lock"] and store.list() == []
        assert not store.delete(image_id=ID1)["changed"]
        assert not checker.delete(name="good")["changed"]

    def test_leftovers_of_interrupted_runs_are_removed(self, store, qcow2):
        os.makedirs(os.path.join(store.path, ".import-dead1"))
        os.makedirs(os.path.join(store.path, f".deleted-{ID2}-0000"))
        store.ensure(name="good", src=qcow2, image_id=ID1)
        assert store_entries(store) == [".lock", ID1]

    def test_a_broken_record_is_reported_with_its_path(self, store, qcow2):
        store.ensure(name="good", src=qcow2, image_id=ID1)
        path = os.path.join(store.path, ID1, "image.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write("{not json")
        with pytest.raises(ImageStoreError, match=f"image record {path} cannot be read"):
            store.list()

    def test_info_of_a_missing_store_fails_clearly(self, tmp_path):
        with pytest.raises(ImageStoreError, match="does not exist on this host"):
            ImageStore(str(tmp_path / "nowhere")).list()

    def test_the_store_waits_for_its_lock(self, store, qcow2):
        os.makedirs(store.path)
        with open(os.path.join(store.path, ".lock"), "w", encoding="ascii"):
            pass
        # the store's lock (flock) held by another process
        holder = subprocess.Popen(
            [
                "python3",
                "-c",
                "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
                os.path.join(store.path, ".lock"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            waiting = ImageStore(store.path, qemu_img=store.qemu_img, lock_timeout=0.5)
            started = time.monotonic()
            with pytest.raises(ImageStoreError, match="busy: another run holds the lock"):
                waiting.ensure(name="good", src=qcow2)
            assert 0.4 < time.monotonic() - started < 5
        finally:
            holder.kill()
            holder.wait()
        assert store_entries(store) == [".lock"]


# ---------------------------------------------------------------------------
# Unsafe images are refused and leave nothing behind
# ---------------------------------------------------------------------------


def backing_file_qcow2(d):
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", "/etc/hostname", str(d / "bad"), "1M")
    return str(d / "bad"), "qcow2", "backing"


def data_file_qcow2(d):
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=%s" % (d / "data.raw"), str(d / "bad"), "1M")
    return str(d / "bad"), "qcow2", "data"


def qcow2_declared_raw(d):
    qemu_img("create", "-q", "-f", "qcow2", str(d / "bad"), "1M")
    return str(d / "bad"), "raw", "not the declared raw"


def raw_declared_qcow2(d):
    write_pattern(d / "bad", MIB)
    return str(d / "bad"), "qcow2", "not the declared qcow2"


def vmdk_descriptor(d):
    text = (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        '# Extent description\nRW 2048 FLAT "/etc/shadow" 0\n\n# The Disk Data Base\n#DDB\n\n'
        'ddb.adapterType = "ide"\n'
    )
    (d / "bad").write_text(text + "\n" * (MIB - len(text)), encoding="ascii")
    return str(d / "bad"), "raw", "vmdk"


def truncated_qcow2_header(d):
    (d / "bad").write_bytes(b"QFI\xfb\x00\x00\x00\x03")
    return str(d / "bad"), "raw", "qcow2 magic"


def unknown_incompatible_feature(d):
    qemu_img("create", "-q", "-f", "qcow2", str(d / "bad"), "1M")
    with open(d / "bad", "r+b") as f:
        f.seek(72)  # incompatible_features (qcow2 v3)
        f.write((1 << 40).to_bytes(8, "big"))
    return str(d / "bad"), "qcow2", "Unknown QCOW2 features"


def empty_file(d):
    (d / "bad").write_bytes(b"")
    return str(d / "bad"), "raw", "empty"


@pytest.mark.parametrize(
    "make",
    [
        backing_file_qcow2,
        data_file_qcow2,
        qcow2_declared_raw,
        raw_declared_qcow2,
        vmdk_descriptor,
        truncated_qcow2_header,
        unknown_incompatible_feature,
        empty_file,
    ],
)
@pytest.mark.parametrize("check_mode", [False, True])
@needs_tools[0]
@needs_tools[1]
def test_unsafe_images_are_rejected_and_leave_nothing(tmp_path, make, check_mode):
    src, declared, reason = make(tmp_path)
    store = ImageStore(str(tmp_path / "store"), qemu_img=QemuImg(real_run), check_mode=check_mode)
    with pytest.raises(ImageUnsafe) as caught:
        store.ensure(name="bad", src=src, disk_format=declared)
    assert reason in str(caught.value)
    assert src in str(caught.value), "the message names the source, not a temporary copy"
    assert store_entries(store) == ([] if check_mode else [".lock"])


# ---------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------


@pytest.fixture()
def http_dir(tmp_path, monkeypatch):
    """A web server on loopback serving tmp_path/www; yields (dir, base url)."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class TestDownload:
    pytestmark = needs_tools

    def test_import_from_a_url_with_checksum(self, store, qcow2, http_dir):
        www, base = http_dir
        shutil.copy(qcow2, www / "img.qcow2")
        rec = store.ensure(name="web", url=base + "/img.qcow2", checksum=sha256(qcow2))["after"]
        assert rec["sha256"] == sha256(qcow2) and rec["size"] == os.path.getsize(qcow2)
        assert sha256(store.image_file(rec["id"])) == sha256(qcow2)
        assert not store.ensure(name="web", url=base + "/img.qcow2", checksum=sha256(qcow2))["changed"]

    @pytest.mark.parametrize(
        "path, kwargs, message",
        [
            ("/missing", {}, "HTTP 404"),
            ("/img.qcow2", dict(checksum="0" * 64), "not the given checksum"),
            ("/img.qcow2", dict(size_cap=4096), "size cap"),
            ("/bad.qcow2", {}, "backing"),
        ],
    )
    def test_failed_downloads_leave_nothing(self, store, qcow2, http_dir, path, kwargs, message):
        www, base = http_dir
        shutil.copy(qcow2, www / "img.qcow2")
        backing_file_qcow2(www)
        os.rename(www / "bad", www / "bad.qcow2")
        with pytest.raises((ImageStoreError, ImageUnsafe), match=message):
            store.ensure(name="web", url=base + path, **kwargs)
        assert store_entries(store) == [".lock"]

    def test_unreachable_server(self, store):
        with pytest.raises(ImageStoreError, match="download of http://127.0.0.1:9/x failed"):
            store.ensure(name="web", url="http://127.0.0.1:9/x")
        assert store_entries(store) == [".lock"]


# ---------------------------------------------------------------------------
# The image cache
# ---------------------------------------------------------------------------


class LocalSource:
    """Stands in for ScpSource: copies from a local store directory, counting fetches."""

    transport = "local"

    def __init__(self, store_path):
        self.store_path = store_path
        self.fetches = 0

    def describe(self, image_id):
        return f"local:{self.store_path}/{image_id}"

    def fetch(self, run, image_id, names, dest_dir):
        self.fetches += 1
        for name in names:
            shutil.copy(os.path.join(self.store_path, image_id, name), dest_dir)


@pytest.fixture()
def cached(tmp_path, store, qcow2):
    """(cache, source, record): an image in a store and a cache for it."""
    rec = store.ensure(name="good", src=qcow2, image_id=ID1)["after"]
    instances = tmp_path / "instances"
    instances.mkdir()
    source = LocalSource(store.path)
    cache = ImageCache(str(instances), QemuImg(real_run), real_run, source=source, hostname="node1")
    return cache, source, rec


def base_entries(cache):
    return sorted(os.listdir(cache.base_dir))


class TestCache:
    pytestmark = needs_tools

    def test_fetch_then_reuse_without_hashing(self, cached, monkeypatch):
        cache, source, rec = cached
        first = cache.ensure(ID1, expected_sha256=rec["sha256"], expected_size=rec["size"], expected_format="qcow2")
        name = st.base_name(ID1)
        assert first["path"] == os.path.join(cache.base_dir, name)
        assert (first["fetched"], first["format"], first["sha256"]) == (True, "qcow2", rec["sha256"])
        assert (first["size"], first["virtual_size"]) == (rec["size"], 2 * MIB)
        assert (first["transport"], first["fetched_on"], first["bytes"], first["repaired"]) == ("local", "node1", rec["size"], None)
        assert sha256(first["path"]) == rec["sha256"]
        assert base_entries(cache) == [name, name + ".info", name + ".lock"]
        assert oct(os.stat(first["path"]).st_mode & 0o777) == "0o644"

        monkeypatch.setattr(st, "sha256_file", lambda path: pytest.fail("hashed again although the file did not change"))
        again = cache.ensure(ID1, expected_sha256=rec["sha256"])
        assert (again["fetched"], again["hashed"], again["transport"], again["source"]) == (False, False, None, None)
        assert source.fetches == 1

    def test_check_mode(self, cached):
        cache, source, _rec = cached
        checker = ImageCache(cache.instances_path, cache.qemu_img, real_run, source=source, check_mode=True, hostname="node1")
        assert checker.ensure(ID1)["fetched"]
        assert source.fetches == 0 and not os.path.exists(cache.base_dir)
        cache.ensure(ID1)
        assert not checker.ensure(ID1)["fetched"]

    def test_a_corrupted_base_is_caught_and_fetched_again(self, cached):
        cache, source, rec = cached
        path = cache.ensure(ID1)["path"]
        st_before = os.stat(path)
        with open(path, "r+b") as f:
            f.seek(st_before.st_size - 100)
            f.write(b"X" * 10)
        # put mtime back as `touch -r` would: ctime still tells
        os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
        result = cache.ensure(ID1)
        assert result["fetched"] and f"sha256 of {path} is" in result["repaired"]
        assert sha256(path) == rec["sha256"] and source.fetches == 2

    @pytest.mark.parametrize("first, repair", [(True, False), (False, True)])
    def test_a_repaired_base_keeps_its_format(self, cached, first, repair):
        """Overlays on the old base name its format: a repair never changes it, whatever force_raw says now."""
        cache, _source, rec = cached
        made = cache.ensure(ID1, force_raw=first)
        with open(made["path"], "r+b") as f:
            f.seek(MIB)
            f.write(b"Z" * 512)
        repaired = cache.ensure(ID1, force_raw=repair)
        assert repaired["repaired"] and repaired["format"] == made["format"] == ("raw" if first else "qcow2")
        assert sha256(repaired["path"]) == made["base_sha256"] and repaired["sha256"] == rec["sha256"]

    def test_a_base_without_side_file_is_fetched_again(self, cached):
        cache, source, _rec = cached
        path = cache.ensure(ID1)["path"]
        os.unlink(path + ".info")
        result = cache.ensure(ID1)
        assert result["fetched"] and "side file" in result["repaired"] and source.fetches == 2

    def test_a_changed_stat_with_the_same_content_is_rehashed_once(self, cached):
        cache, source, _rec = cached
        path = cache.ensure(ID1)["path"]
        os.chmod(path, 0o644)  # ctime changes, content does not
        assert cache.ensure(ID1)["hashed"]
        assert not cache.ensure(ID1)["hashed"]
        assert cache.ensure(ID1, verify="full")["hashed"]
        assert source.fetches == 1

    def test_force_raw_gives_a_raw_base(self, cached):
        cache, _source, rec = cached
        result = cache.ensure(ID1, force_raw=True)
        assert (result["format"], result["disk_format"], result["size"], result["virtual_size"]) == ("raw", "qcow2", 2 * MIB, 2 * MIB)
        assert result["sha256"] == rec["sha256"] and result["base_sha256"] == sha256(result["path"]) != rec["sha256"]
        with open(result["path"], "rb") as f:
            assert f.read(20) == b"virtcloud-test-data-"
        # an existing base keeps its format
        assert cache.ensure(ID1)["format"] == "raw"

    def test_expected_values_must_match_the_store(self, cached):
        cache, _source, rec = cached
        with pytest.raises(ImageStoreError, match=f"has sha256 {rec['sha256']} in the store, the caller expected {'0' * 64}"):
            cache.ensure(ID1, expected_sha256="0" * 64)
        with pytest.raises(ImageStoreError, match="disk_format qcow2 in the store"):
            cache.ensure(ID1, expected_format="raw")
        assert base_entries(cache) == [st.base_name(ID1) + ".lock"]

    def test_a_copy_that_differs_from_its_record_is_not_cached(self, cached):
        cache, source, _rec = cached
        with open(os.path.join(source.store_path, ID1, "image"), "r+b") as f:
            f.seek(-10, os.SEEK_END)
            f.write(b"Y" * 10)
        with pytest.raises(ImageStoreError, match="the record says"):
            cache.ensure(ID1)
        assert base_entries(cache) == [st.base_name(ID1) + ".lock"]

    def test_an_unsafe_image_in_the_store_is_not_cached(self, cached, tmp_path):
        cache, source, _rec = cached
        bad, _fmt, _reason = backing_file_qcow2(tmp_path)
        image = os.path.join(source.store_path, ID1, "image")
        shutil.copy(bad, image)
        rec_path = os.path.join(source.store_path, ID1, "image.json")
        with open(rec_path, encoding="utf-8") as f:
            rec = json.load(f)
        rec.update(size=os.path.getsize(image), sha256=sha256(image))
        with open(rec_path, "w", encoding="utf-8") as f:
            json.dump(rec, f)
        with pytest.raises(ImageUnsafe, match="backing"):
            cache.ensure(ID1)
        assert base_entries(cache) == [st.base_name(ID1) + ".lock"]

    def test_stale_fetch_directories_are_removed(self, cached):
        cache, _source, _rec = cached
        os.makedirs(os.path.join(cache.base_dir, f".fetch-{st.base_name(ID1)}-dead"))
        cache.ensure(ID1)
        assert not [e for e in base_entries(cache) if e.startswith(".fetch-")]

    def test_missing_instances_path(self, tmp_path):
        cache = ImageCache(str(tmp_path / "nope"), None, real_run, source=LocalSource(str(tmp_path)))
        with pytest.raises(ImageStoreError, match="instances_path .* does not exist"):
            cache.ensure(ID1)

    def test_two_processes_fetch_once(self, cached, tmp_path):
        """The lock of the base file makes a second process wait and reuse the first one's file."""
        cache, source, _rec = cached
        slow = tmp_path / "slow.py"
        slow.write_text(
            "import os, shutil, subprocess, sys, time\n"
            "from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import ImageCache\n"
            "from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImg\n"
            "class Slow:\n"
            "    transport = 'local'\n"
            "    def describe(self, i): return i\n"
            "    def fetch(self, run, image_id, names, dest):\n"
            "        time.sleep(1)\n"
            "        for n in names: shutil.copy(os.path.join(sys.argv[2], image_id, n), dest)\n"
            "def run(argv, data=None):\n"
            "    p = subprocess.run(argv, capture_output=True, text=True)\n"
            "    return p.returncode, p.stdout, p.stderr\n"
            "r = ImageCache(sys.argv[1], QemuImg(run), run, source=Slow()).ensure(sys.argv[3])\n"
            "print(r['fetched'])\n",
            encoding="ascii",
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        procs = [
            subprocess.Popen(
                [sys.executable, str(slow), cache.instances_path, source.store_path, ID1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            for _run in range(2)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        assert sorted(o[0].strip() for o in outs) == ["False", "True"], outs


def test_scp_command_line():
    source = ScpSource(
        "controller",
        store_path="/var/lib/virtcloud/images",
        ssh_key="/etc/virtcloud/id_ed25519",
        known_hosts="/etc/virtcloud/known_hosts",
        port=2222,
        connect_timeout=5,
    )
    assert source.argv(ID1, ["image.json", "image"], "/inst/_base/.fetch-x/") == [
        "scp",
        "-P",
        "2222",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        "/etc/virtcloud/id_ed25519",
        "-o",
        "UserKnownHostsFile=/etc/virtcloud/known_hosts",
        f"root@controller:/var/lib/virtcloud/images/{ID1}/image.json",
        f"root@controller:/var/lib/virtcloud/images/{ID1}/image",
        "/inst/_base/.fetch-x/",
    ]
    assert ScpSource("fd00::10").describe(ID1) == f"root@[fd00::10]:/var/lib/virtcloud/images/{ID1}"


def test_scp_failure_names_the_source():
    source = ScpSource("10.0.0.10")
    with pytest.raises(
        ImageStoreError,
        match=rf"from root@10\.0\.0\.10:/var/lib/virtcloud/images/{ID1} to this host failed "
        r"\(scp rc 1\): Host key verification failed",
    ):
        source.fetch(lambda argv, data=None: (1, "", "Host key verification failed.\n"), ID1, ["image"], "/tmp/x")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(host="-oProxyCommand=x"), "source_host"),
        (dict(host="a b"), "source_host"),
        (dict(host=""), "source_host"),
        (dict(host="ok", store_path="/images;rm -rf /"), "source_path"),
        (dict(host="ok", store_path="/images/*"), "source_path"),
        (dict(host="ok", user="-x"), "source_user"),
        (dict(host="ok", port=0), "source_port"),
        (dict(host="ok", ssh_key="relative"), "ssh_key"),
        (dict(host="ok", connect_timeout="10"), "connect_timeout"),
    ],
)
def test_scp_source_validates_what_reaches_the_command_line(kwargs, message):
    with pytest.raises(ImageStoreError, match=message):
        ScpSource(**kwargs)


# ---------------------------------------------------------------------------
# Imports of a file on another host (src_host: the image host pulls a snapshot)
# ---------------------------------------------------------------------------

SNAP = "/var/lib/virtcloud/snapshots/web1.qcow2"


def test_one_scp_command_line_for_the_cache_and_the_remote_import():
    remote = ScpRemote("node1", user="nova", port=2222, ssh_key="/root/.ssh/id_ed25519", known_hosts="/root/.ssh/known_hosts", connect_timeout=5, option="src")
    options = [
        "-P",
        "2222",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        "/root/.ssh/id_ed25519",
        "-o",
        "UserKnownHostsFile=/root/.ssh/known_hosts",
    ]
    assert remote.argv([SNAP], "/images/.import-x/image", max_bytes=1001) == (
        ["prlimit", "--fsize=1001", "--", "scp"] + options + ["nova@node1:" + SNAP, "/images/.import-x/image"]
    )
    # the cache's fetch is the same builder with the store's paths
    source = ScpSource("node1", user="nova", port=2222, ssh_key="/root/.ssh/id_ed25519", known_hosts="/root/.ssh/known_hosts", connect_timeout=5)
    assert source.argv(ID1, ["image"], "/inst/_base/.fetch-x") == (
        ["scp"] + options + [f"nova@node1:/var/lib/virtcloud/images/{ID1}/image", "/inst/_base/.fetch-x/"]
    )
    assert ScpRemote("fd00::11").location(SNAP) == "root@[fd00::11]:" + SNAP


def never_run(argv, data=None):
    pytest.fail(f"a command was run: {argv}")


class FakeScp:
    """Stands in for scp to ``user@host``: runs the same command line with ``cp`` from a local "remote" root.

    The prlimit prefix stays, so the size cap really stops the copy.
    """

    def __init__(self, remote_root):
        self.remote_root = str(remote_root)
        self.calls = []
        self.written = []  # bytes in the destination after each copy

    def __call__(self, argv, data=None):
        self.calls.append(argv)
        scp = argv.index("scp")
        remote = [a for a in argv[scp:] if a.startswith("root@node1:")]
        assert len(remote) == 1 and argv[-1].endswith("/image"), argv
        path = self.remote_root + remote[0].split(":", 1)[1]
        if not os.path.exists(path):
            return 1, "", f"scp: {remote[0].split(':', 1)[1]}: No such file or directory\n"
        result = real_run(argv[:scp] + ["cp", path, argv[-1]])
        self.written.append(os.path.getsize(argv[-1]) if os.path.exists(argv[-1]) else None)
        return result

    def put(self, local, path=SNAP):
        dest = self.remote_root + path
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(local, dest)
        return path


@pytest.fixture()
def remote_store(tmp_path):
    """(store, fake scp): a store whose scp reads files of "node1" from tmp_path/node1."""
    scp = FakeScp(tmp_path / "node1")
    return ImageStore(str(tmp_path / "store"), qemu_img=QemuImg(real_run), now=lambda: NOW, run=scp), scp


def snapshot_args(**extra):
    args = dict(
        name="web1-snap",
        src=SNAP,
        src_host="node1",
        image_type="snapshot",
        instance_uuid=ID2,
        properties=SNAPSHOT_PROPERTIES,
        visibility="private",
        owner="demo",
    )
    args.update(extra)
    return args


class TestRemoteImport:
    pytestmark = needs_tools

    def test_check_mode_plans_the_import_without_reading_the_remote_file(self, tmp_path):
        checker = ImageStore(str(tmp_path / "store"), qemu_img=QemuImg(never_run), check_mode=True, run=never_run)
        planned = checker.ensure(**snapshot_args())
        assert planned["changed"] and planned["before"] is None
        after = planned["after"]
        assert (after["name"], after["image_type"], after["instance_uuid"], after["properties"]) == ("web1-snap", "snapshot", ID2, SNAPSHOT_PROPERTIES)
        assert (after["sha256"], after["size"], after["virtual_size"]) == (None, None, None)
        assert planned["actions"] == [f"import root@node1:{SNAP} as image web1-snap ({after['id']})"]
        assert not os.path.exists(checker.path)
        # a given checksum is what the record would carry
        assert checker.ensure(**snapshot_args(checksum="a" * 64))["after"]["sha256"] == "a" * 64

    def test_import_then_no_change_without_fetching_again(self, remote_store, qcow2):
        store, scp = remote_store
        scp.put(qcow2)
        made = store.ensure(**snapshot_args())
        rec = made["after"]
        assert made["changed"] and made["actions"] == [f"import root@node1:{SNAP} as image web1-snap ({rec['id']})"]
        assert (rec["sha256"], rec["size"], rec["virtual_size"]) == (sha256(qcow2), os.path.getsize(qcow2), 2 * MIB)
        assert (rec["image_type"], rec["instance_uuid"], rec["owner"], rec["visibility"]) == ("snapshot", ID2, "demo", "private")
        assert rec["properties"] == SNAPSHOT_PROPERTIES
        assert sha256(store.image_file(rec["id"])) == sha256(qcow2)
        assert store_entries(store) == [".lock", rec["id"]]
        assert len(scp.calls) == 1 and scp.calls[0][:3] == ["prlimit", f"--fsize={st.DEFAULT_SIZE_CAP + 1}", "--"]

        again = store.ensure(**snapshot_args())
        assert not again["changed"] and again["after"] == rec
        assert not store.ensure(**snapshot_args(checksum=rec["sha256"]))["changed"]
        checker = ImageStore(store.path, qemu_img=store.qemu_img, check_mode=True, run=never_run)
        assert not checker.ensure(**snapshot_args())["changed"]
        with pytest.raises(ImageConflict, match="not the given checksum"):
            store.ensure(**snapshot_args(checksum="0" * 64))
        assert len(scp.calls) == 1, "an existing image is never fetched again"

    def test_checksum_of_the_pulled_file_is_checked(self, remote_store, qcow2):
        store, scp = remote_store
        scp.put(qcow2)
        with pytest.raises(ImageStoreError, match=f"root@node1:{SNAP} has sha256 .* not the given checksum"):
            store.ensure(**snapshot_args(checksum="0" * 64))
        assert store_entries(store) == [".lock"]

    @pytest.mark.parametrize("make", [backing_file_qcow2, data_file_qcow2, qcow2_declared_raw, vmdk_descriptor])
    def test_an_unsafe_remote_file_is_rejected_and_leaves_nothing(self, remote_store, tmp_path, make):
        store, scp = remote_store
        bad, declared, reason = make(tmp_path)
        scp.put(bad)
        with pytest.raises(ImageUnsafe) as caught:
            store.ensure(**snapshot_args(disk_format=declared))
        assert reason in str(caught.value) and f"root@node1:{SNAP}" in str(caught.value)
        assert store_entries(store) == [".lock"]

    def test_a_missing_remote_file_fails_clearly(self, remote_store):
        store, _scp = remote_store
        with pytest.raises(ImageStoreError) as caught:
            store.ensure(**snapshot_args(src="/var/lib/virtcloud/snapshots/missing.qcow2"))
        msg = str(caught.value)
        assert "fetching root@node1:/var/lib/virtcloud/snapshots/missing.qcow2 to this host failed (scp rc 1)" in msg
        assert "No such file or directory" in msg and "known_hosts" in msg and "ssh_key" in msg
        assert store_entries(store) == [".lock"]

    def test_scp_s_own_message_is_passed_on(self, tmp_path):
        stderr = "No ED25519 host key is known for node1 and you have requested strict checking.\r\nHost key verification failed.\r\n"
        store = ImageStore(str(tmp_path / "store"), qemu_img=QemuImg(real_run), run=lambda argv, data=None: (255, "", stderr))
        with pytest.raises(
            ImageStoreError,
            match=r"failed \(scp rc 255\): No ED25519 host key is known for node1 and you have "
            r"requested strict checking; Host key verification failed\. Check that node1's "
            r"host key is in known_hosts",
        ):
            store.ensure(**snapshot_args())
        assert store_entries(store) == [".lock"]

    def test_the_size_cap_stops_the_copy(self, remote_store, qcow2):
        store, scp = remote_store
        scp.put(qcow2)
        with pytest.raises(ImageStoreError, match=f"root@node1:{SNAP} is larger than the size cap of 4096 bytes"):
            store.ensure(**snapshot_args(size_cap=4096))
        assert scp.written == [4097], "the copy stops one byte past the cap, it does not fill the disk"
        assert store_entries(store) == [".lock"]

    def test_key_files_must_exist_before_anything_is_run(self, tmp_path):
        for check_mode in (True, False):
            store = ImageStore(str(tmp_path / "store"), qemu_img=QemuImg(never_run), check_mode=check_mode, run=never_run)
            with pytest.raises(ImageStoreError, match="ssh_key /nowhere/id_ed25519 is not a readable file on this host"):
                store.ensure(**snapshot_args(ssh_key="/nowhere/id_ed25519"))
            with pytest.raises(ImageStoreError, match="known_hosts /nowhere/known_hosts is not a readable file"):
                store.ensure(**snapshot_args(known_hosts="/nowhere/known_hosts"))

    def test_a_store_without_a_runner_refuses(self, tmp_path):
        store = ImageStore(str(tmp_path / "store"), qemu_img=QemuImg(real_run))
        with pytest.raises(ImageStoreError, match="no command runner"):
            store.ensure(**snapshot_args())
        assert store_entries(store) == [".lock"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(src_host="-oProxyCommand=x"), "src_host '-oProxyCommand=x' is not a host name"),
        (dict(src_host="node1 node2"), "src_host"),
        (dict(src_host=""), "src_host"),
        (dict(src_user="-oProxyCommand=x"), "src_user"),
        (dict(src_user="root@node2"), "src_user"),
        (dict(src_port=0), "src_port"),
        (dict(src_port=65536), "src_port"),
        (dict(src_port="22"), "src_port"),
        (dict(connect_timeout=0), "connect_timeout"),
        (dict(ssh_key="id_ed25519"), "ssh_key"),
        (dict(known_hosts="../known_hosts"), "known_hosts"),
        (dict(src="snapshots/web1.qcow2"), "src .* is not an absolute path"),
        (dict(src="/snapshots/web 1.qcow2"), "src .* may only hold"),
        (dict(src="/snapshots/web1;reboot"), "src .* may only hold"),
        (dict(src="/snapshots/*.qcow2"), "src .* may only hold"),
        (dict(src="/snapshots/../etc/shadow"), "src .* not a normalised path"),
        (dict(src=None), "src_host needs src"),
        (dict(src=None, url="http://h/x"), "src_host needs src"),
    ],
)
def test_bad_remote_imports_fail_before_anything_is_run(tmp_path, kwargs, message):
    store = ImageStore(str(tmp_path / "store"), qemu_img=QemuImg(never_run), run=never_run)
    with pytest.raises(ImageStoreError, match=message):
        store.ensure(**snapshot_args(**kwargs))
    assert not os.path.exists(store.path)


# ---------------------------------------------------------------------------
# Instance disks
# ---------------------------------------------------------------------------


@pytest.fixture()
def disks():
    return Disks(QemuImg(real_run))


class TestDisks:
    pytestmark = needs_tools

    def test_overlay_grow_shrink_refused(self, disks, qcow2, tmp_path):
        path = str(tmp_path / "inst" / "disk")
        os.makedirs(os.path.dirname(path))
        checker = Disks(disks.qemu_img, check_mode=True)
        planned = checker.present(path, backing=qcow2, backing_format="qcow2")
        assert planned["changed"] and planned["after"]["virtual_size"] == 2 * MIB and not os.path.exists(path)
        made = disks.present(path, backing=qcow2, backing_format="qcow2")
        assert made["changed"] and made["before"] == {}
        assert made["after"] == dict(path=path, format="qcow2", virtual_size=2 * MIB, backing_file=qcow2, backing_format="qcow2")
        assert not disks.present(path, backing=qcow2, backing_format="qcow2")["changed"]
        assert not checker.present(path, backing=qcow2, backing_format="qcow2")["changed"]

        assert checker.present(path, backing=qcow2, backing_format="qcow2", size=4 * MIB)["changed"]
        assert disks.info(path, "qcow2")["virtual_size"] == 2 * MIB
        grown = disks.present(path, backing=qcow2, backing_format="qcow2", size=4 * MIB)
        assert grown["changed"] and grown["actions"] == [f"grow {path} from {2 * MIB} to {4 * MIB} bytes"]
        assert disks.info(path, "qcow2")["virtual_size"] == 4 * MIB
        assert not disks.resized(path, "qcow2", 4 * MIB)["changed"]
        with pytest.raises(ImageStoreError, match=f"cannot shrink to {3 * MIB}"):
            disks.resized(path, "qcow2", 3 * MIB)
        with pytest.raises(ImageStoreError, match="cannot shrink"):
            disks.present(path, backing=qcow2, backing_format="qcow2", size=MIB)
        assert disks.info(path, "qcow2")["virtual_size"] == 4 * MIB

        info = disks.info(path, "qcow2", backing_chain=True)
        assert info["backing_filename"] == qcow2 and [b["filename"] for b in info["backing_chain"]] == [qcow2]

    def test_overlay_refusals(self, disks, qcow2, tmp_path):
        path = str(tmp_path / "disk")
        with pytest.raises(ImageStoreError, match="smaller than the virtual size"):
            disks.present(path, backing=qcow2, backing_format="qcow2", size=MIB)
        with pytest.raises(ImageStoreError, match="backing_format is needed"):
            disks.present(path, backing=qcow2)
        with pytest.raises(ImageStoreError, match="only a qcow2 disk can have a backing file"):
            disks.present(path, fmt="raw", backing=qcow2, backing_format="qcow2")
        with pytest.raises(ImageStoreError, match="does not exist"):
            disks.present(str(tmp_path / "no" / "disk"), backing=qcow2, backing_format="qcow2")
        with pytest.raises(ImageStoreError, match="backing file /nope does not exist"):
            disks.present(path, backing="/nope", backing_format="qcow2")
        assert not os.path.exists(path)
        disks.present(path, backing=qcow2, backing_format="qcow2")
        other = str(tmp_path / "other.qcow2")
        qemu_img("create", "-q", "-f", "qcow2", other, "2M")
        with pytest.raises(ImageStoreError, match=f"not {other}: refusing to change it"):
            disks.present(path, backing=other, backing_format="qcow2")
        with pytest.raises(ImageStoreError, match="has the backing file"):
            disks.present(path, size=4 * MIB)
        with pytest.raises(ImageStoreError, match="cannot read it as qcow2"):
            disks.present(str(tmp_path / "src.raw"), size=4 * MIB)

    def test_empty_disks(self, disks, tmp_path):
        path = str(tmp_path / "disk.eph0")
        with pytest.raises(ImageStoreError, match="size is needed"):
            disks.present(path)
        assert disks.present(path, size=MIB)["changed"]
        assert disks.info(path, "qcow2")["virtual_size"] == MIB
        raw = str(tmp_path / "disk.swap")
        assert disks.present(raw, fmt="raw", size=MIB)["after"]["format"] == "raw"
        assert os.path.getsize(raw) == MIB

    def test_convert(self, disks, qcow2, tmp_path):
        overlay = str(tmp_path / "disk")
        disks.present(overlay, backing=qcow2, backing_format="qcow2")
        dest = str(tmp_path / "snap.qcow2")
        checker = Disks(disks.qemu_img, check_mode=True)
        assert checker.converted(overlay, "qcow2", dest, "qcow2")["changed"] and not os.path.exists(dest)
        result = disks.converted(overlay, "qcow2", dest, "qcow2", compress=True)
        assert result["changed"] and result["after"] == dict(path=dest, format="qcow2", virtual_size=2 * MIB, backing_file=None, backing_format=None)
        info = disks.info(dest, "qcow2")
        assert info["backing_filename"] is None and info["virtual_size"] == 2 * MIB
        assert not disks.converted(overlay, "qcow2", dest, "qcow2")["changed"]
        raw = str(tmp_path / "flat.raw")
        disks.converted(overlay, "qcow2", raw, "raw")
        with open(raw, "rb") as f:
            assert f.read(20) == b"virtcloud-test-data-"
        assert [e for e in os.listdir(tmp_path) if ".part-" in e] == []
        with pytest.raises(ImageStoreError, match="source disk .* does not exist"):
            disks.converted(str(tmp_path / "none"), "qcow2", str(tmp_path / "x"), "qcow2")

    def test_absent(self, disks, tmp_path):
        path = str(tmp_path / "disk")
        disks.present(path, size=MIB)
        checker = Disks(disks.qemu_img, check_mode=True)
        assert checker.absent(path)["changed"] and os.path.exists(path)
        assert disks.absent(path)["changed"] and not os.path.exists(path)
        assert not disks.absent(path)["changed"]
        with pytest.raises(ImageStoreError, match="not a file"):
            disks.absent(str(tmp_path))

    def test_info_of_a_missing_disk_is_none(self, disks, tmp_path):
        assert disks.info(str(tmp_path / "none"), "qcow2") is None
