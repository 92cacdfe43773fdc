# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Untrusted image inspection, on real files made with qemu-img and by hand.

No ISO tool (genisoimage, xorriso) is needed: the ISO 9660 primary volume
descriptor the inspector looks for is written by hand (``iso_pvd``).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils import _image_inspect
from ansible_collections.virtcloud.compute.plugins.module_utils._image_inspect import (
    ImageInspectError,
    ImageUnsafe,
    inspect_image,
    sha256_file,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import ProcessLimits, QemuImg

pytestmark = [
    pytest.mark.skipif(not _image_inspect.has_oslo(), reason="oslo.utils with imageutils.format_inspector is not installed"),
    pytest.mark.skipif(
        shutil.which("qemu-img") is None or shutil.which("prlimit") is None, reason="qemu-img (qemu-utils) and prlimit (util-linux) are not installed"
    ),
]

MIB = 1024 * 1024


def qemu_img_create(*args):
    subprocess.run(["qemu-img", "create", "-q"] + list(args), check=True, capture_output=True)


def real_run(argv, data=None):
    proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def iso_pvd(blocks=20):
    """An ISO 9660 primary volume descriptor (2 KiB) for a volume of ``blocks`` 2 KiB blocks."""
    pvd = bytearray(2048)
    pvd[0] = 1  # type: primary volume descriptor
    pvd[1:6] = b"CD001"
    pvd[6] = 1  # version
    pvd[80:88] = struct.pack("<I", blocks) + struct.pack(">I", blocks)  # volume space size, both-endian
    pvd[128:132] = struct.pack("<H", 2048) + struct.pack(">H", 2048)  # logical block size, both-endian
    return bytes(pvd)


def mbr(boot_flag=0x80):
    """1 MiB raw disk with an MBR holding one Linux partition."""
    disk = bytearray(MIB)
    disk[446:462] = struct.pack("<B3BB3BII", boot_flag, 0, 2, 0, 0x83, 0, 0, 0, 2048, 100)
    disk[510:512] = b"\x55\xaa"
    return bytes(disk)


# Each builder makes one file in ``d`` (a pathlib.Path) and returns its path.


def raw_image(d):
    qemu_img_create("-f", "raw", str(d / "image"), "1M")
    return d / "image"


def qcow2_image(d):
    qemu_img_create("-f", "qcow2", str(d / "image"), "1M")
    return d / "image"


def vmdk_sparse_image(d):
    qemu_img_create("-f", "vmdk", str(d / "image"), "1M")
    return d / "image"


def made_by_qemu_img(fmt):
    def build(d):
        qemu_img_create("-f", fmt, str(d / "image"), "1M")
        return d / "image"

    build.__name__ = f"{fmt}_image"
    return build


def mbr_disk(d):
    (d / "image").write_bytes(mbr())
    return d / "image"


def iso_image(d):
    (d / "image").write_bytes(bytes(32768) + iso_pvd() + bytes(3 * 2048))
    return d / "image"


def qcow2_with_backing_file(d):
    qemu_img_create("-f", "raw", str(d / "secret"), "1M")
    qemu_img_create("-f", "qcow2", "-F", "raw", "-b", str(d / "secret"), str(d / "image"))
    return d / "image"


def qcow2_with_data_file(d):
    qemu_img_create("-f", "qcow2", "-o", "data_file=%s" % (d / "secret"), str(d / "image"), "1M")
    return d / "image"


def qcow2_unknown_feature(d):
    qemu_img_create("-f", "qcow2", str(d / "image"), "1M")
    with open(d / "image", "r+b") as f:
        f.seek(4)
        assert struct.unpack(">I", f.read(4))[0] == 3  # a v3 header, which has the feature bitfields
        f.seek(72)  # incompatible_features, 8 bytes big-endian
        features = struct.unpack(">Q", f.read(8))[0]
        f.seek(72)
        f.write(struct.pack(">Q", features | 1 << 10))  # bit 10: not defined by the qcow2 spec
    return d / "image"


def vmdk_descriptor_flat(d):
    (d / "image").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        '# Extent description\nRW 2048 FLAT "/etc/passwd" 0\n'
    )
    return d / "image"


def vmdk_descriptor_sparse_neighbour(d):
    qemu_img_create("-f", "vmdk", str(d / "neighbour.vmdk"), "1M")
    (d / "image").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicSparse"\n\n'
        '# Extent description\nRW 2048 SPARSE "neighbour.vmdk"\n'
    )
    return d / "image"


def iso_hiding_qcow2(d):
    qemu_img_create("-f", "qcow2", str(d / "image"), "1M")
    with open(d / "image", "r+b") as f:
        f.seek(32768)  # the ISO's descriptor area lies in the unused rest of the qcow2 header cluster
        f.write(iso_pvd())
    return d / "image"


def truncated_qcow2(d):
    qemu_img_create("-f", "qcow2", str(d / "full"), "1M")
    (d / "image").write_bytes((d / "full").read_bytes()[:100])
    return d / "image"


def garbage(d):
    (d / "image").write_bytes(bytes(range(256)) * 16)
    return d / "image"


def empty(d):
    (d / "image").write_bytes(b"")
    return d / "image"


def mbr_bad_boot_flag(d):
    (d / "image").write_bytes(mbr(boot_flag=0x42))
    return d / "image"


@pytest.mark.parametrize(
    "build, declared, detected, qemu_format, virtual_size",
    [
        (raw_image, "raw", "raw", "raw", MIB),
        (qcow2_image, "qcow2", "qcow2", "qcow2", MIB),
        (vmdk_sparse_image, "vmdk", "vmdk", "vmdk", MIB),
        (mbr_disk, "raw", "gpt", "raw", MIB),  # a whole-disk raw image, as Nova allows
        (iso_image, "iso", "iso", "raw", 20 * 2048),
        (made_by_qemu_img("vpc"), "vhd", "vhd", "vpc", 1079296),  # qemu rounds a VHD up to whole CHS cylinders
        (made_by_qemu_img("vhdx"), "vhdx", "vhdx", "vhdx", MIB),
        (made_by_qemu_img("vdi"), "vdi", "vdi", "vdi", MIB),
    ],
)
def test_clean_images_are_accepted(tmp_path, build, declared, detected, qemu_format, virtual_size):
    path = str(build(tmp_path))
    result = inspect_image(path, declared)
    assert result["safe"] is True
    assert (result["format"], result["detected_format"], result["qemu_format"], result["virtual_size"]) == (declared, detected, qemu_format, virtual_size)
    assert result["file_size"] > 0 and result["actual_size"] >= 0
    # qemu-img, with the explicit format and under the limits, agrees.
    assert inspect_image(path, declared, qemu_img=QemuImg(real_run))["virtual_size"] == virtual_size


@pytest.mark.parametrize(
    "build, declared, detected, reason",
    [
        (qcow2_with_backing_file, "qcow2", "qcow2", "failed the safety checks: backing_file: Image has a backing file"),
        (qcow2_with_data_file, "qcow2", "qcow2", "failed the safety checks: data_file: Image has data_file set"),
        (qcow2_unknown_feature, "qcow2", "qcow2", "failed the safety checks: unknown_features: Unknown QCOW2 features found"),
        (qcow2_image, "raw", "qcow2", "the content is qcow2, not the declared raw"),
        (qcow2_with_data_file, "raw", "qcow2", "data_file: Image has data_file set"),
        (raw_image, "qcow2", "raw", "the content is raw, not the declared qcow2"),
        (vmdk_sparse_image, "raw", "vmdk", "the content is vmdk, not the declared raw"),
        (vmdk_descriptor_flat, "vmdk", "vmdk", "failed the safety checks: descriptor: Unsupported subformat"),
        (vmdk_descriptor_flat, "raw", "vmdk", "descriptor: Unsupported subformat"),
        (vmdk_descriptor_sparse_neighbour, "vmdk", "vmdk", "a VMDK descriptor file (text) is refused: its extents name other files"),
        (iso_hiding_qcow2, "iso", "ambiguous", "the content matches several formats (iso, qcow2): one header may hide another"),
        (iso_hiding_qcow2, "qcow2", "ambiguous", "the content matches several formats (iso, qcow2)"),
        (truncated_qcow2, "qcow2", "raw", "the content is raw, not the declared qcow2"),
        (truncated_qcow2, "raw", "raw", "it starts with the qcow2 magic but is too short or too broken for the qcow2 inspector"),
        (garbage, "vmdk", "raw", "the content is raw, not the declared vmdk"),
        (mbr_bad_boot_flag, "raw", "gpt", "failed the safety checks: mbr: MBR PTE 0 has invalid boot flag"),
        (empty, "raw", "unknown", "the file is empty"),
        (raw_image, "qed", "unknown", "the declared format is not one of raw, qcow2, vmdk, vhd, vhdx, vdi, iso"),
        (raw_image, "ami", "unknown", "the declared format is not one of"),
    ],
)
def test_unsafe_images_are_rejected(tmp_path, build, declared, detected, reason):
    path = str(build(tmp_path))
    with pytest.raises(ImageUnsafe) as err:
        inspect_image(path, declared)
    assert str(err.value).startswith(f"image {path} rejected (declared {declared}, detected {detected}): ")
    assert reason in err.value.reason
    assert (err.value.path, err.value.declared, err.value.detected or "unknown") == (path, declared, detected)


def test_garbage_declared_raw_is_just_raw(tmp_path):
    """Bytes that match no format are raw: qemu-img is always told so (-f raw) and never probes."""
    assert inspect_image(str(garbage(tmp_path)), "raw")["detected_format"] == "raw"


def test_not_a_regular_file(tmp_path):
    with pytest.raises(ImageUnsafe, match="not a regular file"):
        inspect_image(str(tmp_path), "raw")


def test_missing_file_cannot_be_inspected(tmp_path):
    with pytest.raises(ImageInspectError, match="image %s cannot be inspected: No such file or directory" % (tmp_path / "nope")) as err:
        inspect_image(str(tmp_path / "nope"), "raw")
    assert not isinstance(err.value, ImageUnsafe)


def test_missing_library_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(_image_inspect, "_OSLO", {"module": None, "error": "ImportError: no oslo_utils"})
    with pytest.raises(ImageInspectError, match="oslo.utils with imageutils.format_inspector is missing"):
        inspect_image(str(raw_image(tmp_path)), "raw")


def test_qemu_img_that_cannot_open_the_file_rejects_it(tmp_path):
    path = str(qcow2_image(tmp_path))
    tight = QemuImg(real_run, limits=ProcessLimits(cpu_time=30, address_space=16 * MIB))
    with pytest.raises(ImageUnsafe, match="qemu-img cannot open it as qcow2: "):
        inspect_image(path, "qcow2", qemu_img=tight)


class FakeQemuImg:
    """Stands for QemuImg: qemu-img's view of a file that the inspector passed."""

    def __init__(self, **info):
        self.result = {"format": "qcow2", "virtual_size": MIB, "backing_filename": None, "data_file": None, "create_type": None, "extents": []}
        self.result.update(info)
        self.calls = []

    def info(self, path, fmt, force_share=True):
        self.calls.append((path, fmt, force_share))
        return dict(self.result)


@pytest.mark.parametrize(
    "info, reason",
    [
        ({"backing_filename": "/etc/shadow"}, "qemu-img shows a backing file: /etc/shadow"),
        ({"data_file": "/dev/sda"}, "qemu-img shows an external data file: /dev/sda"),
        ({"format": "raw"}, "qemu-img opened it as raw, not qcow2"),
    ],
)
def test_qemu_img_second_opinion_must_agree(tmp_path, info, reason):
    path = str(qcow2_image(tmp_path))
    fake = FakeQemuImg(**info)
    with pytest.raises(ImageUnsafe, match=reason):
        inspect_image(path, "qcow2", qemu_img=fake)
    assert fake.calls == [(path, "qcow2", False)]


@pytest.mark.parametrize(
    "info, reason",
    [
        ({"create_type": "monolithicFlat"}, "VMDK create type 'monolithicFlat' is not one of monolithicSparse, streamOptimized"),
        ({"create_type": "monolithicSparse", "extents": ["image", "/etc/passwd"]}, "VMDK extents name other files: /etc/passwd"),
    ],
)
def test_qemu_img_second_opinion_vmdk(tmp_path, info, reason):
    fake = FakeQemuImg(format="vmdk", **info)
    with pytest.raises(ImageUnsafe, match=reason):
        inspect_image(str(vmdk_sparse_image(tmp_path)), "vmdk", qemu_img=fake)


def test_sha256_file(tmp_path):
    data = bytes(range(256)) * 1000 + b"tail"
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(str(tmp_path / "f"), chunk_size=4096) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(tmp_path / "f")) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageInspectError, match="cannot compute the sha256 of"):
        sha256_file(str(tmp_path / "missing"))
