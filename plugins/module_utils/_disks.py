# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Instance disks (private to this collection): the logic of the modules ``disk`` and ``disk_info``.

``Disks`` creates qcow2 overlays on a backing file (or empty disks), grows them
(never shrinks), converts, deletes; always with explicit formats through the
qemu-img runner (``_qemu_img``), so its resource limits apply. Conversions write a
temporary file beside the destination and rename it, so an interrupted convert leaves
no half image under the wanted name. Errors are ``ImageStoreError`` (a
``VirtcloudError``) with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import os
import uuid

from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import ImageStoreError, check_path
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImgError


DISK_FILE_FORMATS = ("qcow2", "raw")


def _describe_disk(info: dict | None, path: str) -> dict:
    if info is None:
        return {}
    return dict(
        path=path,
        format=info.get("format"),
        virtual_size=info.get("virtual_size"),
        backing_file=info.get("backing_filename"),
        backing_format=info.get("backing_format"),
    )


class Disks:
    """Instance disks through the qemu-img runner (explicit formats, resource limits)."""

    def __init__(self, qemu_img, check_mode: bool = False, log=None) -> None:
        self.qemu_img = qemu_img
        self.check_mode = check_mode
        self.log = log

    def _log(self, message: str) -> None:
        if self.log is not None:
            self.log.info(message)

    @staticmethod
    def _format(fmt, what: str = "format") -> str:
        if fmt not in DISK_FILE_FORMATS:
            raise ImageStoreError(f"{what} {fmt!r} is not one of {', '.join(DISK_FILE_FORMATS)}")
        return fmt

    @staticmethod
    def _size(size, what: str = "size") -> int | None:
        if size is None:
            return None
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ImageStoreError(f"{what} {size!r} is not a positive number of bytes")
        return size

    def info(self, path: str, fmt: str, backing_chain: bool = False) -> dict | None:
        """qemu-img info of an existing disk (None when there is no file)."""
        path = check_path(path)
        if not os.path.lexists(path):
            return None
        if not os.path.isfile(path):
            raise ImageStoreError(f"{path} is not a regular file")
        try:
            return self.qemu_img.info(path, self._format(fmt), backing_chain=backing_chain)
        except QemuImgError as exc:
            raise ImageStoreError(f"{path} exists but qemu-img cannot read it as {fmt}: {exc.stderr or exc}. Give its real format, or remove it") from exc

    def present(self, path: str, fmt: str = "qcow2", size: int | None = None, backing: str | None = None, backing_format: str | None = None) -> dict:
        path = check_path(path)
        self._format(fmt)
        size = self._size(size)
        if backing is not None:
            backing = check_path(backing, "backing")
            if fmt != "qcow2":
                raise ImageStoreError(f"only a qcow2 disk can have a backing file, not {fmt}")
            if backing_format is None:
                raise ImageStoreError("backing_format is needed with backing: qemu-img never guesses an image's format")
            self._format(backing_format, "backing_format")
        elif backing_format is not None:
            raise ImageStoreError("backing_format is only for a disk with a backing file")
        current = self.info(path, fmt)
        before = _describe_disk(current, path)
        if current is None:
            return self._create(path, fmt, size, backing, backing_format, before)
        if backing is not None or current.get("backing_filename"):
            have = current.get("full_backing_filename") or current.get("backing_filename")
            if backing is None:
                raise ImageStoreError(f"{path} has the backing file {have}; give it as backing (this module never flattens a disk)")
            if have is None or os.path.normpath(have) != backing:
                raise ImageStoreError(f"{path} exists with backing file {have or 'none'}, not {backing}: refusing to change it; remove the disk first")
            if current.get("backing_format") != backing_format:
                raise ImageStoreError(f"{path} has backing format {current.get('backing_format')}, not {backing_format}: refusing to change it")
        return self._grow(path, fmt, size, current, before)

    def _create(self, path, fmt, size, backing, backing_format, before) -> dict:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise ImageStoreError(f"the directory {parent} of disk {path} does not exist; make the instance directory first")
        if backing is not None:
            if not os.path.isfile(backing):
                raise ImageStoreError(f"backing file {backing} does not exist (is the image cached? see image_cache)")
            try:
                binfo = self.qemu_img.info(backing, backing_format)
            except QemuImgError as exc:
                raise ImageStoreError(f"backing file {backing} cannot be read as {backing_format}: {exc.stderr or exc}") from exc
            bsize = binfo.get("virtual_size")
            if size is not None and isinstance(bsize, int) and size < bsize:
                raise ImageStoreError(
                    f"size {size} is smaller than the virtual size {bsize} of the backing file {backing}: "
                    "a disk is never smaller than its image (Nova's FlavorDiskSmallerThanImage)"
                )
            virtual = size if size is not None else bsize
            action = f"create qcow2 overlay {path} on {backing} ({backing_format})"
            if not self.check_mode:
                self.qemu_img.create_overlay(path, backing, backing_format, size)
        else:
            if size is None:
                raise ImageStoreError(f"size is needed to create {path} without a backing file")
            virtual = size
            action = f"create {fmt} disk {path} of {size} bytes"
            if not self.check_mode:
                self.qemu_img.create(path, fmt, size)
        if not self.check_mode:
            self._log(action)
        after = dict(path=path, format=fmt, virtual_size=virtual, backing_file=backing, backing_format=backing_format)
        return dict(changed=True, before=before, after=after, actions=[action])

    def _grow(self, path, fmt, size, current, before) -> dict:
        virtual = current.get("virtual_size")
        if size is None or size == virtual:
            return dict(changed=False, before=before, after=before, actions=[])
        if not isinstance(virtual, int):
            raise ImageStoreError(f"the virtual size of {path} is unknown; cannot resize it")
        if size < virtual:
            raise ImageStoreError(
                f"{path} is {virtual} bytes and cannot shrink to {size}: "
                f"shrinking a disk loses the guest's data (Nova refuses it too); give a size >= {virtual}"
            )
        action = f"grow {path} from {virtual} to {size} bytes"
        if not self.check_mode:
            self.qemu_img.resize(path, fmt, size)
            self._log(action)
        return dict(changed=True, before=before, after=dict(before, virtual_size=size), actions=[action])

    def resized(self, path: str, fmt: str, size: int) -> dict:
        path = check_path(path)
        self._format(fmt)
        if size is None:
            raise ImageStoreError("size is needed for state resized")
        size = self._size(size)
        current = self.info(path, fmt)
        if current is None:
            raise ImageStoreError(f"disk {path} does not exist; nothing to resize")
        return self._grow(path, fmt, size, current, _describe_disk(current, path))

    def converted(self, src: str, src_format: str, path: str, fmt: str, compress: bool = False) -> dict:
        src = check_path(src, "src")
        path = check_path(path)
        self._format(src_format, "src_format")
        self._format(fmt)
        if src == path:
            raise ImageStoreError(f"src and path are the same file {path}")
        current = self.info(path, fmt)
        if current is not None:
            before = _describe_disk(current, path)
            return dict(changed=False, before=before, after=before, actions=[])
        sinfo = self.info(src, src_format)
        if sinfo is None:
            raise ImageStoreError(f"source disk {src} does not exist")
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise ImageStoreError(f"the directory {parent} of {path} does not exist")
        action = f"convert {src} ({src_format}) to {path} ({fmt}{(', compressed' if compress else '')})"
        if not self.check_mode:
            tmp = os.path.join(parent, f".{os.path.basename(path)}.part-{uuid.uuid4().hex[:8]}")
            try:
                self.qemu_img.convert(src, src_format, tmp, fmt, compress=compress)
                os.rename(tmp, path)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self._log(action)
        after = dict(path=path, format=fmt, virtual_size=sinfo.get("virtual_size"), backing_file=None, backing_format=None)
        return dict(changed=True, before={}, after=after, actions=[action])

    def absent(self, path: str) -> dict:
        path = check_path(path)
        if not os.path.lexists(path):
            return dict(changed=False, before={}, after={}, actions=[])
        if not os.path.islink(path) and not os.path.isfile(path):
            raise ImageStoreError(f"{path} is not a file; refusing to remove it")
        before = dict(path=path)
        action = f"remove {path}"
        if not self.check_mode:
            os.unlink(path)
            self._log(action)
        return dict(changed=True, before=before, after={}, actions=[action])
