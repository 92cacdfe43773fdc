# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The qemu-img runner: recorded qemu-img output in, exact commands out; then the real binary."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import (
    ProcessLimits,
    QemuImg,
    QemuImgError,
    parse_check,
    parse_info,
    parse_info_chain,
)

# Recorded with qemu-img 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18) in /tmp/qcap:
#   qemu-img create -f raw base.raw 1M
#   qemu-img create -f qcow2 -F raw -b /tmp/qcap/base.raw ov.qcow2 2M
#   qemu-img create -f qcow2 -o data_file=/tmp/qcap/data.raw df.qcow2 1M
#   qemu-img create -f vmdk v.vmdk 1M
# and `qemu-img info -f FMT --output=json [--backing-chain] FILE`, `qemu-img check -f qcow2 --output=json ov.qcow2`.
INFO_RAW = """{
    "virtual-size": 1048576,
    "filename": "base.raw",
    "format": "raw",
    "actual-size": 4096,
    "dirty-flag": false
}
"""
INFO_OVERLAY = """{
    "backing-filename-format": "raw",
    "virtual-size": 2097152,
    "filename": "ov.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "full-backing-filename": "/tmp/qcap/base.raw",
    "backing-filename": "/tmp/qcap/base.raw",
    "dirty-flag": false
}
"""
INFO_OVERLAY_CHAIN = """[
    {
        "backing-filename-format": "raw",
        "virtual-size": 2097152,
        "filename": "ov.qcow2",
        "cluster-size": 65536,
        "format": "qcow2",
        "actual-size": 200704,
        "format-specific": {
            "type": "qcow2",
            "data": {
                "compat": "1.1",
                "compression-type": "zlib",
                "lazy-refcounts": false,
                "refcount-bits": 16,
                "corrupt": false,
                "extended-l2": false
            }
        },
        "full-backing-filename": "/tmp/qcap/base.raw",
        "backing-filename": "/tmp/qcap/base.raw",
        "dirty-flag": false
    },
    {
        "virtual-size": 1048576,
        "filename": "/tmp/qcap/base.raw",
        "format": "raw",
        "actual-size": 4096,
        "dirty-flag": false
    }
]
"""
INFO_DATA_FILE = """{
    "virtual-size": 1048576,
    "filename": "df.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "data-file": "/tmp/qcap/data.raw",
            "data-file-raw": false,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "dirty-flag": false
}
"""
INFO_VMDK = """{
    "virtual-size": 1048576,
    "filename": "v.vmdk",
    "cluster-size": 65536,
    "format": "vmdk",
    "actual-size": 12288,
    "format-specific": {
        "type": "vmdk",
        "data": {
            "cid": 42342246,
            "parent-cid": 4294967295,
            "create-type": "monolithicSparse",
            "extents": [
                {
                    "virtual-size": 1048576,
                    "filename": "v.vmdk",
                    "cluster-size": 65536,
                    "format": ""
                }
            ]
        }
    },
    "dirty-flag": false
}
"""
CHECK_OK = """{
    "image-end-offset": 262144,
    "total-clusters": 32,
    "check-errors": 0,
    "filename": "ov.qcow2",
    "format": "qcow2"
}
"""
CHECK_RAW_STDERR = "qemu-img: This image format does not support checks\n"
OPEN_ERROR = "qemu-img: Could not open '/srv/disk': Image is not in qcow2 format\n"

PREFIX = ["env", "LC_ALL=C", "LANG=C", "prlimit", "--cpu=30", "--as=1073741824", "--", "qemu-img"]
CONVERT_PREFIX = ["env", "LC_ALL=C", "LANG=C", "prlimit", "--as=8589934592", "--", "qemu-img"]


class Recorder:
    """A fake ``run``: records each argv and answers with the next recorded (rc, out, err)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append(list(argv))
        return self.answers.pop(0) if self.answers else (0, "", "")


# ---------------------------------------------------------------------------
# Pure parsing
# ---------------------------------------------------------------------------


def test_parse_info_raw():
    info = parse_info(INFO_RAW)
    assert (info["format"], info["virtual_size"], info["actual_size"], info["dirty"]) == ("raw", 1048576, 4096, False)
    assert info["backing_filename"] is None and info["data_file"] is None and info["cluster_size"] is None


def test_parse_info_overlay():
    info = parse_info(INFO_OVERLAY)
    assert info["format"] == "qcow2" and info["virtual_size"] == 2097152 and info["cluster_size"] == 65536
    assert info["backing_filename"] == "/tmp/qcap/base.raw" and info["full_backing_filename"] == "/tmp/qcap/base.raw"
    assert info["backing_format"] == "raw" and info["compat"] == "1.1"
    assert info["encrypted"] is False and info["corrupt"] is False and info["data_file"] is None


def test_parse_info_data_file_and_vmdk():
    assert parse_info(INFO_DATA_FILE)["data_file"] == "/tmp/qcap/data.raw"
    assert parse_info(INFO_DATA_FILE)["data_file_raw"] is False
    vmdk = parse_info(INFO_VMDK)
    assert vmdk["create_type"] == "monolithicSparse" and vmdk["extents"] == ["v.vmdk"]


def test_parse_info_chain():
    chain = parse_info_chain(INFO_OVERLAY_CHAIN)
    assert [(i["filename"], i["format"]) for i in chain] == [("ov.qcow2", "qcow2"), ("/tmp/qcap/base.raw", "raw")]


@pytest.mark.parametrize(
    "func, text, message",
    [
        (parse_info, "qemu-img: oops", "not JSON"),
        (parse_info, INFO_OVERLAY_CHAIN, "is a JSON list, expected a dict"),
        (parse_info_chain, INFO_RAW, "is a JSON dict, expected a list"),
        (parse_info_chain, "[]", "not a list of image objects"),
        (parse_check, "", "not JSON"),
    ],
)
def test_parsers_refuse_bad_output(func, text, message):
    with pytest.raises(ValueError, match=message):
        func(text)


def test_parse_check():
    result = parse_check(CHECK_OK)
    assert result["ok"] is True and result["supported"] is True
    assert (result["check_errors"], result["corruptions"], result["leaks"], result["image_end_offset"]) == (0, 0, 0, 262144)
    assert parse_check('{"check-errors": 0, "corruptions": 3, "leaks": 1}')["ok"] is False
    assert parse_check('{"check-errors": 0, "leaks": 5}')["ok"] is True


# ---------------------------------------------------------------------------
# Exact commands out
# ---------------------------------------------------------------------------


def test_info_command_and_result():
    run = Recorder((0, INFO_OVERLAY, ""))
    info = QemuImg(run).info("/srv/disk", "qcow2")
    assert run.calls == [PREFIX + ["info", "-f", "qcow2", "--output=json", "--force-share", "/srv/disk"]]
    assert info["backing_filename"] == "/tmp/qcap/base.raw" and "backing_chain" not in info


def test_info_backing_chain():
    run = Recorder((0, INFO_OVERLAY_CHAIN, ""))
    info = QemuImg(run).info("/srv/disk", "qcow2", backing_chain=True, force_share=False)
    assert run.calls == [PREFIX + ["info", "-f", "qcow2", "--output=json", "--backing-chain", "/srv/disk"]]
    assert info["filename"] == "ov.qcow2" and [b["filename"] for b in info["backing_chain"]] == ["/tmp/qcap/base.raw"]


def test_info_failure_names_file_operation_and_stderr():
    run = Recorder((1, "", OPEN_ERROR))
    with pytest.raises(QemuImgError) as err:
        QemuImg(run).info("/srv/disk", "qcow2")
    assert str(err.value) == "qemu-img info of /srv/disk failed (rc 1): qemu-img: Could not open '/srv/disk': Image is not in qcow2 format"
    assert (err.value.operation, err.value.path, err.value.rc) == ("info", "/srv/disk", 1)


def test_info_killed_by_limits():
    run = Recorder((-9, "", ""))
    with pytest.raises(
        QemuImgError,
        match=r"info of /srv/disk failed \(rc -9\): killed by signal 9, probably by the resource limits "
        r"\(CPU time 30 s, address space 1073741824 bytes\)",
    ):
        QemuImg(run).info("/srv/disk", "qcow2")


def test_info_output_not_json():
    with pytest.raises(QemuImgError, match="qemu-img info of /srv/disk: qemu-img output is not JSON"):
        QemuImg(Recorder((0, "image: x", ""))).info("/srv/disk", "raw")


def test_limits_configurable():
    run = Recorder((0, INFO_RAW, ""), (0, INFO_RAW, ""))
    QemuImg(run, limits=None, qemu_img="/usr/bin/qemu-img").info("/srv/disk", "raw", force_share=False)
    QemuImg(run, limits=ProcessLimits(cpu_time=5, address_space=None), prlimit="/usr/bin/prlimit").info("/srv/disk", "raw", force_share=False)
    assert run.calls == [
        ["env", "LC_ALL=C", "LANG=C", "/usr/bin/qemu-img", "info", "-f", "raw", "--output=json", "/srv/disk"],
        ["env", "LC_ALL=C", "LANG=C", "/usr/bin/prlimit", "--cpu=5", "--", "qemu-img", "info", "-f", "raw", "--output=json", "/srv/disk"],
    ]


def test_create():
    run = Recorder()
    QemuImg(run).create("/srv/new.qcow2", "qcow2", 1073741824)
    assert run.calls == [PREFIX + ["create", "-f", "qcow2", "/srv/new.qcow2", "1073741824"]]


def test_create_overlay():
    run = Recorder()
    QemuImg(run).create_overlay("/srv/i/disk", "/srv/_base/abc", "raw")
    QemuImg(run).create_overlay("/srv/i/disk2", "/srv/_base/abc", "qcow2", size=2147483648)
    assert run.calls == [
        PREFIX + ["create", "-f", "qcow2", "-F", "raw", "-b", "/srv/_base/abc", "/srv/i/disk"],
        PREFIX + ["create", "-f", "qcow2", "-F", "qcow2", "-b", "/srv/_base/abc", "/srv/i/disk2", "2147483648"],
    ]


def test_resize_grows():
    run = Recorder((0, INFO_OVERLAY, ""), (0, "Image resized.\n", ""))
    assert QemuImg(run).resize("/srv/disk", "qcow2", 4194304) is True
    assert run.calls == [
        PREFIX + ["info", "-f", "qcow2", "--output=json", "/srv/disk"],
        PREFIX + ["resize", "-f", "qcow2", "/srv/disk", "4194304"],
    ]


def test_resize_same_size_changes_nothing():
    run = Recorder((0, INFO_OVERLAY, ""))
    assert QemuImg(run).resize("/srv/disk", "qcow2", 2097152) is False
    assert len(run.calls) == 1


def test_resize_refuses_shrink():
    run = Recorder((0, INFO_OVERLAY, ""))
    with pytest.raises(QemuImgError, match="qemu-img resize of /srv/disk refused: new size 1048576 is smaller than the current virtual size 2097152"):
        QemuImg(run).resize("/srv/disk", "qcow2", 1048576)
    assert [c[8] for c in run.calls] == ["info"]


def test_convert():
    run = Recorder()
    QemuImg(run).convert("/srv/disk", "qcow2", "/srv/snap.qcow2", "qcow2", compress=True)
    QemuImg(run).convert("/srv/_base/x.part", "qcow2", "/srv/_base/x", "raw")
    assert run.calls == [
        CONVERT_PREFIX + ["convert", "-f", "qcow2", "-O", "qcow2", "-c", "/srv/disk", "/srv/snap.qcow2"],
        CONVERT_PREFIX + ["convert", "-f", "qcow2", "-O", "raw", "/srv/_base/x.part", "/srv/_base/x"],
    ]


def test_convert_refuses_compressed_raw():
    with pytest.raises(QemuImgError, match="compression needs destination format qcow2, not raw"):
        QemuImg(Recorder()).convert("/srv/disk", "qcow2", "/srv/out", "raw", compress=True)


def test_check():
    run = Recorder((0, CHECK_OK, ""), (63, "", CHECK_RAW_STDERR), (2, '{"check-errors": 0, "corruptions": 2}', ""))
    img = QemuImg(run)
    assert img.check("/srv/disk", "qcow2")["ok"] is True
    raw = img.check("/srv/base", "raw")
    assert raw["supported"] is False and raw["ok"] is True
    assert img.check("/srv/bad", "qcow2")["corruptions"] == 2
    assert run.calls[0] == PREFIX + ["check", "-f", "qcow2", "--output=json", "/srv/disk"]


def test_check_not_completed_raises():
    with pytest.raises(QemuImgError, match=r"qemu-img check of /srv/disk failed \(rc 1\): qemu-img: Check failed"):
        QemuImg(Recorder((1, "", "qemu-img: Check failed: Input/output error\n"))).check("/srv/disk", "qcow2")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda q: q.info("disk", "qcow2"), "qemu-img info refused: path 'disk' is not an absolute path"),
        (lambda q: q.info("-U", "qcow2"), "is not an absolute path"),
        (lambda q: q.info("json:{}", "qcow2"), "is not an absolute path"),
        (lambda q: q.info("/srv/disk", None), "format None is not one of raw, qcow2"),
        (lambda q: q.info("/srv/disk", "qed"), "format 'qed' is not one of"),
        (lambda q: q.create("/srv/disk", "qcow2", 0), "size 0 is not a positive number of bytes"),
        (lambda q: q.create("/srv/disk", "qcow2", "10G"), "size '10G' is not a positive number of bytes"),
        (lambda q: q.create("/srv/disk", "qcow2", True), "size True is not"),
        (lambda q: q.create_overlay("/srv/disk", "base", "raw"), "backing file 'base' is not an absolute path"),
        (lambda q: q.create_overlay("/srv/disk", "/srv/base", "auto"), "backing format 'auto' is not one of"),
        (lambda q: q.convert("/srv/a", "qcow2", "b", "raw"), "destination 'b' is not an absolute path"),
        (lambda q: q.resize("/srv/disk", "qcow2", -1), "size -1 is not"),
    ],
)
def test_bad_arguments_are_refused_before_running(call, message):
    run = Recorder()
    with pytest.raises(QemuImgError, match=re.escape(message)):
        call(QemuImg(run))
    assert run.calls == []


def test_existing_destination_is_never_overwritten(tmp_path):
    existing = tmp_path / "disk"
    existing.write_bytes(b"data")
    run = Recorder()
    img = QemuImg(run)
    for call in (
        lambda: img.create(str(existing), "raw", 512),
        lambda: img.create_overlay(str(existing), "/srv/base", "raw"),
        lambda: img.convert("/srv/base", "raw", str(existing), "qcow2"),
    ):
        with pytest.raises(QemuImgError, match=f"refused: {existing} already exists"):
            call()
    assert run.calls == [] and existing.read_bytes() == b"data"


# ---------------------------------------------------------------------------
# The real qemu-img
# ---------------------------------------------------------------------------

needs_qemu_img = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("prlimit") is None, reason="qemu-img (qemu-utils) and prlimit (util-linux) are not installed"
)


def real_run(argv, data=None):
    proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def qemu_img():
    return QemuImg(real_run)


@needs_qemu_img
def test_real_create_and_info(tmp_path, qemu_img):
    path = str(tmp_path / "disk.qcow2")
    qemu_img.create(path, "qcow2", 1048576)
    info = qemu_img.info(path, "qcow2")
    assert (info["format"], info["virtual_size"], info["backing_filename"], info["dirty"]) == ("qcow2", 1048576, None, False)


@needs_qemu_img
def test_real_overlay_backing_chain(tmp_path, qemu_img):
    base, overlay = str(tmp_path / "base"), str(tmp_path / "disk")
    qemu_img.create(base, "raw", 1048576)
    qemu_img.create_overlay(overlay, base, "raw", size=2097152)
    info = qemu_img.info(overlay, "qcow2", backing_chain=True)
    assert info["backing_filename"] == base and info["backing_format"] == "raw" and info["virtual_size"] == 2097152
    assert [(b["filename"], b["format"], b["virtual_size"]) for b in info["backing_chain"]] == [(base, "raw", 1048576)]


@needs_qemu_img
def test_real_grow_and_shrink_refused(tmp_path, qemu_img):
    path = str(tmp_path / "disk")
    qemu_img.create(path, "qcow2", 1048576)
    assert qemu_img.resize(path, "qcow2", 2097152) is True
    assert qemu_img.resize(path, "qcow2", 2097152) is False
    with pytest.raises(QemuImgError, match="smaller than the current virtual size 2097152"):
        qemu_img.resize(path, "qcow2", 1048576)
    assert qemu_img.info(path, "qcow2")["virtual_size"] == 2097152


@needs_qemu_img
def test_real_convert_qcow2_to_raw(tmp_path, qemu_img):
    base, overlay, out = str(tmp_path / "base"), str(tmp_path / "disk"), str(tmp_path / "out")
    pattern = bytes(range(256)) * 4096
    with open(base, "wb") as f:
        f.write(pattern)
    qemu_img.create_overlay(overlay, base, "raw")
    qemu_img.convert(overlay, "qcow2", out, "raw")
    with open(out, "rb") as f:
        assert f.read() == pattern
    assert qemu_img.info(out, "raw")["format"] == "raw"
    assert qemu_img.check(overlay, "qcow2")["ok"] is True
    assert qemu_img.check(out, "raw")["supported"] is False


@needs_qemu_img
def test_real_wrong_format_fails_with_qemu_img_message(tmp_path, qemu_img):
    path = str(tmp_path / "base")
    qemu_img.create(path, "raw", 1048576)
    with pytest.raises(QemuImgError, match=rf"qemu-img info of {path} failed \(rc 1\): .*Image is not in qcow2 format"):
        qemu_img.info(path, "qcow2")


@needs_qemu_img
def test_real_address_space_limit_applies(tmp_path):
    path = str(tmp_path / "base")
    with open(path, "wb") as f:
        f.truncate(1048576)
    tight = QemuImg(real_run, limits=ProcessLimits(cpu_time=30, address_space=16 * 1024 * 1024))
    with pytest.raises(QemuImgError, match=f"qemu-img info of {path} failed"):
        tight.info(path, "raw")
    assert os.path.getsize(path) == 1048576
