# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Inspection of untrusted disk images before any use (private to this collection).

An image file is untrusted input: qemu-img and QEMU follow what its header says
(a backing file, an external data file, VMDK extents) and can be made to read
any file of the host (Nova's CVE-2022-47951, CVE-2024-32498, CVE-2024-40767).
``inspect_image`` reads the file with the inspector Nova itself uses,
``oslo_utils.imageutils.format_inspector``, before qemu-img ever sees it, and
does what recent Nova's ``do_image_deep_inspection`` and ``fetch_to_raw`` do
(nova/virt/images.py):

- the declared format must be one we have an inspector for;
- ``detect_file_format`` reads the file with every inspector at once; a file that
  matches several formats is refused (one header hidden in another, e.g. a
  qcow2 header in the system area of an ISO);
- the detected format's ``safety_check()`` must pass: qcow2 without backing
  file, without external data file, without unknown incompatible feature bits,
  version 2 or 3 only; VMDK only monolithicSparse or streamOptimized, with
  known descriptor lines and no ``/`` in extent names; a partition table with
  sane entries; QED always refused;
- the detected format must be the declared one. As in Nova, a raw image whose
  content is a partition table (gpt/mbr: a "whole disk" image) is raw;
- more than Nova: a VMDK must be a binary sparse/stream file (``KDMV``): a text
  descriptor file is refused whatever it says, since its extents name other
  files and our cache ``_base/`` keeps many images side by side; and content
  found to be raw must not start with another format's magic (a header too
  short for the inspector is still what qemu's probing would see);
- optionally (``qemu_img=``) a second opinion, as Nova's ``fetch_to_raw`` does:
  ``qemu-img info`` with the explicit format, under the runner's resource limits,
  must show no backing file, no data file, and for a VMDK an allowed create type
  with extents that are the file itself.

The file must not change between inspection and use: inspect files that only
the image store (root) can write, and inspect again on use (the compute cache
re-verifies ``_base/`` files).

How hosts get the inspector (decision)
--------------------------------------
``format_inspector`` is in oslo.utils since 2024; Debian 12's python3-oslo.utils
(6.1) does not have it. The modules that inspect images (``image`` on the image
store host, the image cache on compute hosts) therefore run with the Python of
a virtualenv that the compute_node role (and the image store's role) creates on
the host, ``/opt/virtcloud/venv`` by default:

- ``python3 -m venv --system-site-packages``, so the distribution's
  python3-libvirt and python3-lxml stay importable;
- ``pip install oslo.utils==10.2.0`` with the collection's ``constraints.txt``
  (the version the unit tests run; oslo.utils 10.2 needs Python >= 3.11, which
  Debian 12 has), from PyPI or from the index / wheel folder the role is given
  for hosts without Internet access;
- those tasks set ``ansible_python_interpreter`` to the venv's python.

A distribution whose own oslo.utils has ``imageutils/format_inspector.py`` may
skip the venv. Without the inspector the modules fail (``has_oslo()`` is false,
``_OSLO["error"]`` holds the traceback for ``missing_required_lib``); there
is no fallback that trusts qemu-img's probing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import struct
import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImgError

_OSLO: dict = {}


def format_inspector_module():
    """oslo.utils' format inspector, or None when it cannot be imported; imported on first use
    (it takes tens of milliseconds, and most modules that import this file never inspect)."""
    if "module" not in _OSLO:
        try:
            from oslo_utils.imageutils import format_inspector  # pylint: disable=import-outside-toplevel
        except ImportError:
            _OSLO.update(module=None, error=traceback.format_exc())
        else:
            # The inspector logs each failed check as a warning; the reasons are in our
            # exceptions, so keep them off the module's stderr.
            logging.getLogger(format_inspector.__name__).addHandler(logging.NullHandler())
            _OSLO.update(module=format_inspector, error=None)
    return _OSLO["module"]


def has_oslo() -> bool:
    """Whether oslo.utils' format inspector can be imported."""
    return format_inspector_module() is not None


def require_oslo(module, python: str) -> None:
    """Fail the module when oslo.utils' format inspector cannot be imported; ``python`` says which
    interpreter has it (the image store's venv, the compute host's venv)."""
    if not has_oslo():
        module.fail_json(
            msg=missing_required_lib(
                "oslo.utils (with imageutils.format_inspector, 7.3 or later)", reason=f"to inspect untrusted images; run the module with {python}"
            ),
            exception=_OSLO["error"],
        )


# Formats an image may be declared as (Glance's disk_format names), and the
# format qemu-img must then be told to use.
QEMU_FORMAT = {
    "raw": "raw",
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vhd": "vpc",
    "vhdx": "vhdx",
    "vdi": "vdi",
    "iso": "raw",
}
DECLARED_FORMATS = tuple(QEMU_FORMAT)
# Content that is still a raw image (Nova: legacy "whole disk" images).
RAW_CONTENT = ("raw", "gpt")
# Nova's [compute] vmdk_allowed_types default.
VMDK_ALLOWED_TYPES = ("monolithicSparse", "streamOptimized")
VMDK_SPARSE_MAGIC = b"KDMV"
# Magic numbers at offset 0 that qemu's probing recognises from the first bytes:
# raw content must not start with one (a truncated header the inspector could
# not complete is still taken for that format by anything that probes).
FOREIGN_MAGIC = {
    b"QFI\xfb": "qcow2",
    b"QED\x00": "qed",
    VMDK_SPARSE_MAGIC: "vmdk",
    b"# Disk DescriptorFile": "vmdk",
    b"conectix": "vhd",
    b"vhdxfile": "vhdx",
    b"LUKS\xba\xbe": "luks",
}

CHUNK_SIZE = 1024 * 1024


class ImageInspectError(VirtcloudError):
    """The image could not be inspected (missing library, unreadable file)."""


class ImageUnsafe(ImageInspectError):
    """The image is refused; the message names the file, the formats and the reason."""

    def __init__(self, path: str, declared: str, detected: str | None, reason: str) -> None:
        super().__init__(f"image {path} rejected (declared {declared}, detected {detected or 'unknown'}): {reason}")
        self.path = path
        self.declared = declared
        self.detected = detected
        self.reason = reason


def _failures(exc) -> str:
    """The failed checks of a SafetyCheckFailed, as 'name: reason; ...'."""
    return "; ".join(f"{name}: {failure}" for name, failure in sorted(exc.failures.items()))


def _stat_regular(path: str, declared: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageInspectError(f"image {path} cannot be inspected: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ImageUnsafe(path, declared, None, "not a regular file")
    if st.st_size == 0:
        raise ImageUnsafe(path, declared, None, "the file is empty")
    return st


def _read_magic(path: str, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise ImageInspectError(f"image {path} cannot be read: {exc.strerror or exc}") from exc


def _virtual_size(inspector, detected: str, st: os.stat_result) -> int:
    """The inspector's virtual size; raises ValueError when it cannot be read."""
    if detected in RAW_CONTENT:
        # The raw inspector only counts what it read; a raw disk is the file.
        return st.st_size
    try:
        return int(inspector.virtual_size)
    except (KeyError, TypeError, IndexError, struct.error) as exc:
        raise ValueError(str(exc)) from exc


def _second_opinion(path: str, declared: str, detected: str, qemu_format: str, qemu_img) -> dict:
    """What qemu-img (explicit format, resource limits) says must agree with the inspector."""
    try:
        info = qemu_img.info(path, qemu_format, force_share=False)
    except QemuImgError as exc:
        raise ImageUnsafe(path, declared, detected, f"qemu-img cannot open it as {qemu_format}: {exc.stderr or exc}") from exc
    if info.get("format") != qemu_format:
        raise ImageUnsafe(path, declared, detected, f"qemu-img opened it as {info.get('format')}, not {qemu_format}")
    if info.get("backing_filename"):
        raise ImageUnsafe(path, declared, detected, f"qemu-img shows a backing file: {info['backing_filename']}")
    if info.get("data_file"):
        raise ImageUnsafe(path, declared, detected, f"qemu-img shows an external data file: {info['data_file']}")
    if qemu_format == "vmdk":
        if info.get("create_type") not in VMDK_ALLOWED_TYPES:
            raise ImageUnsafe(path, declared, detected, f"VMDK create type {info.get('create_type')!r} is not one of {', '.join(VMDK_ALLOWED_TYPES)}")
        others = [e for e in info.get("extents") or [] if e and os.path.basename(e) != os.path.basename(path)]
        if others:
            raise ImageUnsafe(path, declared, detected, f"VMDK extents name other files: {', '.join(others)}")
    return info


def inspect_image(path: str, declared_format: str, qemu_img=None) -> dict:
    """Inspect the untrusted image at ``path`` declared as ``declared_format``.

    Returns ``{format, detected_format, qemu_format, virtual_size, actual_size,
    file_size, safe: True}``: ``format`` is the declared format,
    ``detected_format`` what the inspector found (the same, or gpt for a
    whole-disk raw image), ``qemu_format`` the format to give qemu-img (an ISO
    is raw to qemu, a VHD is "vpc"),
    ``actual_size`` the space the file takes on disk, ``file_size`` its length.
    With ``qemu_img`` (a ``_qemu_img.QemuImg``) qemu-img's view is checked too
    and its virtual size is returned.

    Raises ImageUnsafe when the image is refused, ImageInspectError when it
    cannot be inspected at all.
    """
    format_inspector = format_inspector_module()
    if format_inspector is None:
        raise ImageInspectError(
            f"image {path} cannot be inspected: the Python library oslo.utils with imageutils.format_inspector is missing "
            "on this host (see the compute_node role's venv)"
        )
    if declared_format not in DECLARED_FORMATS:
        raise ImageUnsafe(path, str(declared_format), None, f"the declared format is not one of {', '.join(DECLARED_FORMATS)}")
    st = _stat_regular(path, declared_format)

    try:
        inspector = format_inspector.detect_file_format(path)
    except format_inspector.ImageFormatError as exc:
        message = str(exc)
        if message.lower().startswith("multiple formats detected"):
            found = sorted(f.strip() for f in message.partition(":")[2].split(",") if f.strip())
            raise ImageUnsafe(
                path, declared_format, "ambiguous", f"the content matches several formats ({', '.join(found)}): one header may hide another"
            ) from exc
        raise ImageUnsafe(path, declared_format, None, f"the content cannot be parsed: {exc}") from exc
    except OSError as exc:
        raise ImageInspectError(f"image {path} cannot be read: {exc.strerror or exc}") from exc
    if inspector is None:
        raise ImageUnsafe(path, declared_format, None, "the format inspector reached no decision")
    detected = str(inspector)

    try:
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as exc:
        raise ImageUnsafe(path, declared_format, detected, f"failed the safety checks: {_failures(exc)}") from exc
    except format_inspector.ImageFormatError as exc:
        raise ImageUnsafe(path, declared_format, detected, f"cannot be safety checked: {exc}") from exc

    if declared_format == "raw" and detected in RAW_CONTENT:
        pass
    elif detected != declared_format:
        raise ImageUnsafe(path, declared_format, detected, f"the content is {detected}, not the declared {declared_format}")

    if detected == "raw":
        head = _read_magic(path, max(len(m) for m in FOREIGN_MAGIC))
        for magic, name in FOREIGN_MAGIC.items():
            if head.startswith(magic):
                raise ImageUnsafe(
                    path,
                    declared_format,
                    detected,
                    f"it starts with the {name} magic but is too short or too broken for the {name} inspector; qemu would probe it as {name}",
                )

    if detected == "vmdk" and _read_magic(path, len(VMDK_SPARSE_MAGIC)) != VMDK_SPARSE_MAGIC:
        raise ImageUnsafe(
            path, declared_format, detected, "a VMDK descriptor file (text) is refused: its extents name other files; only binary sparse VMDKs are accepted"
        )

    try:
        virtual_size = _virtual_size(inspector, detected, st)
    except ValueError as exc:
        raise ImageUnsafe(path, declared_format, detected, f"its virtual size cannot be read ({exc})") from exc

    qemu_format = QEMU_FORMAT[declared_format]
    if qemu_img is not None:
        info = _second_opinion(path, declared_format, detected, qemu_format, qemu_img)
        if isinstance(info.get("virtual_size"), int):
            virtual_size = info["virtual_size"]

    return {
        "format": declared_format,
        "detected_format": detected,
        "qemu_format": qemu_format,
        "virtual_size": virtual_size,
        "actual_size": st.st_blocks * 512,
        "file_size": st.st_size,
        "safe": True,
    }


def sha256_file(path: str, chunk_size: int = CHUNK_SIZE) -> str:
    """The SHA-256 of a file, read in chunks (images are large)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(chunk_size), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ImageInspectError(f"cannot compute the sha256 of {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()
