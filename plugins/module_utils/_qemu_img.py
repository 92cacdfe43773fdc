# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one runner for qemu-img (private to this collection).

``QemuImg(run)`` wraps the qemu-img operations the collection needs. ``run`` is
injected: ``run(argv, data=None) -> (rc, stdout, stderr)``; a module passes
``module.run_command``, tests pass a subprocess runner or a recorder.

Rules every command follows:

- the format is always given (``-f``, ``-F`` for a backing file, ``-O`` for an
  output): qemu-img never probes, because probing an untrusted image is how a
  "raw" image turns into a qcow2 that reads the host's files;
- paths must be absolute: no argument can start with ``-`` and no file name
  can be taken for a protocol (``nbd:``, ``json:{...}``) by qemu-img;
- ``LC_ALL=C`` (through ``env``), so messages are the same everywhere;
- machine-readable output (``--output=json``) read by the pure functions
  ``parse_info``, ``parse_info_chain`` and ``parse_check``;
- resource limits, as Nova's ``QEMU_IMG_LIMITS`` (CPU time 30 s, address space
  1 GiB), through util-linux ``prlimit``, so a crafted image cannot make qemu-img
  spin or eat the host's memory. They apply to the operations that read image
  metadata (info, check, create, create_overlay, resize). ``convert`` copies
  data, so its time grows with the image: it keeps the address-space limit but
  has no CPU-time limit (Nova limits only ``qemu-img info``). Both are
  configurable (``limits=``, ``convert_limits=``; ``None`` turns them off);
- a file that exists is never overwritten by create, create_overlay or convert:
  the module decides about idempotence before calling;
- failures raise ``QemuImgError`` naming the operation, the file and qemu-img's
  own message.

Images must have been inspected (``_image_inspect.inspect_image``) before they
are handed to qemu-img here.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError

# Formats qemu-img is ever told to use here (qemu-img's own names: VHD is "vpc").
FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi")
# Formats qemu-img can write a compressed image in.
COMPRESS_FORMATS = ("qcow2",)

# rc of "qemu-img check" (see qemu-img(1)).
CHECK_OK = 0
CHECK_NOT_COMPLETED = 1
CHECK_CORRUPT = 2
CHECK_LEAKS = 3
CHECK_NOT_SUPPORTED = 63


@dataclass(frozen=True)
class ProcessLimits:
    """Resource limits for one qemu-img process (None: no limit)."""

    cpu_time: int | None = 30
    address_space: int | None = 1024 * 1024 * 1024

    def prefix(self, prlimit: str) -> list[str]:
        """The ``prlimit ... --`` words to put in front of qemu-img."""
        words = []
        if self.cpu_time is not None:
            words.append(f"--cpu={self.cpu_time}")
        if self.address_space is not None:
            words.append(f"--as={self.address_space}")
        return [prlimit] + words + ["--"] if words else []

    def describe(self) -> str:
        parts = []
        if self.cpu_time is not None:
            parts.append(f"CPU time {self.cpu_time} s")
        if self.address_space is not None:
            parts.append(f"address space {self.address_space} bytes")
        return ", ".join(parts) or "none"


# Nova's QEMU_IMG_LIMITS (nova/virt/images.py): 30 s of CPU, 1 GiB of address space.
QEMU_IMG_LIMITS = ProcessLimits(cpu_time=30, address_space=1024 * 1024 * 1024)
# convert: no CPU-time bound (its time grows with the data) and a wider memory bound:
# its worker threads reserve their stacks in the address space, and under 1 GiB a
# convert on a busy host failed to start its threads (qemu_thread_create: EAGAIN).
# Nova runs convert with no limits at all; the image was inspected before it.
CONVERT_LIMITS = ProcessLimits(cpu_time=None, address_space=8 * 1024 * 1024 * 1024)


class QemuImgError(VirtcloudError):
    """A qemu-img operation failed or was refused."""

    def __init__(self, message: str, operation: str = "", path: str = "", rc: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.operation = operation
        self.path = path
        self.rc = rc
        self.stderr = stderr


# ---------------------------------------------------------------------------
# Pure parsing functions
# ---------------------------------------------------------------------------


def _load_json(text: str, expected: type):
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"qemu-img output is not JSON ({exc}): {text[:200]!r}") from exc
    if not isinstance(data, expected):
        raise ValueError(f"qemu-img output is a JSON {type(data).__name__}, expected a {expected.__name__}")
    return data


def _image_fields(data: dict) -> dict:
    """One image object of ``qemu-img info --output=json`` as a flat dict."""
    specific = data.get("format-specific") or {}
    specific_data = specific.get("data") or {}
    return {
        "filename": data.get("filename"),
        "format": data.get("format"),
        "virtual_size": data.get("virtual-size"),
        "actual_size": data.get("actual-size"),
        "cluster_size": data.get("cluster-size"),
        "dirty": bool(data.get("dirty-flag", False)),
        "encrypted": bool(data.get("encrypted", False)),
        "backing_filename": data.get("backing-filename"),
        "full_backing_filename": data.get("full-backing-filename"),
        "backing_format": data.get("backing-filename-format"),
        # qcow2 only: an external data file holds the guest data.
        "data_file": specific_data.get("data-file"),
        "data_file_raw": specific_data.get("data-file-raw"),
        "corrupt": bool(specific_data.get("corrupt", False)),
        "compat": specific_data.get("compat"),
        # vmdk only.
        "create_type": specific_data.get("create-type"),
        "extents": [e.get("filename") for e in specific_data.get("extents") or []],
        "format_specific": specific,
    }


def parse_info(json_text: str) -> dict:
    """``qemu-img info --output=json`` (one image) to a dict.

    Keys: filename, format, virtual_size, actual_size, cluster_size, dirty,
    encrypted, backing_filename, full_backing_filename, backing_format,
    data_file, data_file_raw, corrupt, compat, create_type, extents,
    format_specific. Raises ValueError for output that is not one JSON object.
    """
    return _image_fields(_load_json(json_text, dict))


def parse_info_chain(json_text: str) -> list[dict]:
    """``qemu-img info --backing-chain --output=json`` (a list, top image first)."""
    items = _load_json(json_text, list)
    if not items or not all(isinstance(i, dict) for i in items):
        raise ValueError("qemu-img output is not a list of image objects")
    return [_image_fields(i) for i in items]


def parse_check(json_text: str) -> dict:
    """``qemu-img check --output=json`` to a dict.

    ``ok`` is true when qemu-img found neither errors nor corruptions (leaked
    clusters waste space but lose no data).
    """
    data = _load_json(json_text, dict)
    result = {
        "filename": data.get("filename"),
        "format": data.get("format"),
        "check_errors": data.get("check-errors", 0),
        "corruptions": data.get("corruptions", 0),
        "leaks": data.get("leaks", 0),
        "corruptions_fixed": data.get("corruptions-fixed", 0),
        "leaks_fixed": data.get("leaks-fixed", 0),
        "image_end_offset": data.get("image-end-offset"),
        "total_clusters": data.get("total-clusters"),
        "allocated_clusters": data.get("allocated-clusters"),
        "fragmented_clusters": data.get("fragmented-clusters"),
        "supported": True,
    }
    result["ok"] = result["check_errors"] == 0 and result["corruptions"] == 0
    return result


# ---------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------


class QemuImg:
    """qemu-img with explicit formats, JSON output and resource limits."""

    def __init__(
        self,
        run,
        qemu_img: str = "qemu-img",
        prlimit: str = "prlimit",
        env: str = "env",
        limits: ProcessLimits | None = QEMU_IMG_LIMITS,
        convert_limits: ProcessLimits | None = CONVERT_LIMITS,
    ) -> None:
        self._run = run
        self.qemu_img = qemu_img
        self.prlimit = prlimit
        self.env = env
        self.limits = limits
        self.convert_limits = convert_limits

    # -- building and running -------------------------------------------------

    def argv(self, args: list[str], limits: ProcessLimits | None) -> list[str]:
        """The whole command line for qemu-img ``args``."""
        prefix = [self.env, "LC_ALL=C", "LANG=C"]
        if limits is not None:
            prefix += limits.prefix(self.prlimit)
        return prefix + [self.qemu_img] + list(args)

    def _call(self, operation: str, path: str, args: list[str], limits: ProcessLimits | None, ok_rcs: tuple[int, ...] = (0,)):
        rc, out, err = self._run(self.argv(args, limits))
        if rc in ok_rcs:
            return rc, out
        err = (err or "").strip()
        if rc < 0 or rc in (128 + signal.SIGKILL, 128 + signal.SIGXCPU):
            signum = -rc if rc < 0 else rc - 128
            detail = f"killed by signal {signum}, probably by the resource limits ({limits.describe() if limits else 'none'})"
            if err:
                detail += ": " + err
        else:
            detail = err or (out or "").strip() or "no message"
        raise QemuImgError(f"qemu-img {operation} of {path} failed (rc {rc}): {detail}", operation=operation, path=path, rc=rc, stderr=err)

    @staticmethod
    def _path(operation: str, path: str, what: str = "path") -> str:
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise QemuImgError(f"qemu-img {operation} refused: {what} {path!r} is not an absolute path", operation=operation, path=str(path))
        return path

    @staticmethod
    def _format(operation: str, path: str, fmt: str, what: str = "format") -> str:
        if fmt not in FORMATS:
            raise QemuImgError(f"qemu-img {operation} of {path} refused: {what} {fmt!r} is not one of {', '.join(FORMATS)}", operation=operation, path=path)
        return fmt

    @staticmethod
    def _size(operation: str, path: str, size) -> str:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise QemuImgError(f"qemu-img {operation} of {path} refused: size {size!r} is not a positive number of bytes", operation=operation, path=path)
        return str(size)

    @staticmethod
    def _new(operation: str, path: str) -> None:
        if os.path.lexists(path):
            raise QemuImgError(f"qemu-img {operation} refused: {path} already exists", operation=operation, path=path)

    # -- operations -------------------------------------------------------------

    def info(self, path: str, fmt: str, backing_chain: bool = False, force_share: bool = True) -> dict:
        """``qemu-img info`` as a dict (see ``parse_info``).

        With ``backing_chain`` the dict also has ``backing_chain``: the images
        below it, nearest first. ``force_share`` (``-U``) reads an image that a
        running domain holds open, as Nova does.
        """
        path = self._path("info", path)
        args = ["info", "-f", self._format("info", path, fmt), "--output=json"]
        if backing_chain:
            args.append("--backing-chain")
        if force_share:
            args.append("--force-share")
        args.append(path)
        _rc, out = self._call("info", path, args, self.limits)
        try:
            if backing_chain:
                chain = parse_info_chain(out)
                result = chain[0]
                result["backing_chain"] = chain[1:]
            else:
                result = parse_info(out)
        except ValueError as exc:
            raise QemuImgError(f"qemu-img info of {path}: {exc}", operation="info", path=path) from exc
        return result

    def create(self, path: str, fmt: str, size: int) -> None:
        """A new empty image of ``size`` bytes."""
        path = self._path("create", path)
        args = ["create", "-f", self._format("create", path, fmt), path, self._size("create", path, size)]
        self._new("create", path)
        self._call("create", path, args, self.limits)

    def create_overlay(self, path: str, backing: str, backing_fmt: str, size: int | None = None) -> None:
        """A new qcow2 at ``path`` whose backing file is ``backing`` (format given, never probed).

        Without ``size`` the overlay has the backing file's virtual size.
        """
        path = self._path("create_overlay", path)
        backing = self._path("create_overlay", backing, "backing file")
        args = ["create", "-f", "qcow2", "-F", self._format("create_overlay", path, backing_fmt, "backing format"), "-b", backing, path]
        if size is not None:
            args.append(self._size("create_overlay", path, size))
        self._new("create_overlay", path)
        self._call("create_overlay", path, args, self.limits)

    def resize(self, path: str, fmt: str, new_size: int) -> bool:
        """Grow the image to ``new_size`` bytes; True when it changed.

        A smaller size is refused (shrinking loses the guest's data), the same
        size changes nothing.
        """
        path = self._path("resize", path)
        size = self._size("resize", path, new_size)
        self._format("resize", path, fmt)
        current = self.info(path, fmt, force_share=False)["virtual_size"]
        if not isinstance(current, int):
            raise QemuImgError(f"qemu-img resize of {path} refused: its virtual size is unknown", operation="resize", path=path)
        if new_size < current:
            raise QemuImgError(
                f"qemu-img resize of {path} refused: new size {new_size} is smaller than the current virtual size {current}; shrinking loses data",
                operation="resize",
                path=path,
            )
        if new_size == current:
            return False
        self._call("resize", path, ["resize", "-f", fmt, path, size], self.limits)
        return True

    def convert(self, src: str, src_fmt: str, dest: str, dest_fmt: str, compress: bool = False, force_share: bool = False) -> None:
        """Copy ``src`` (with its whole backing chain) into a new standalone image ``dest`` in ``dest_fmt``.

        ``force_share`` (``-U``) reads an image that a QEMU process holds open; only
        consistent when that guest is paused (QEMU flushed its disks when it stopped).
        """
        src = self._path("convert", src, "source")
        dest = self._path("convert", dest, "destination")
        args = ["convert", "-f", self._format("convert", src, src_fmt, "source format"), "-O", self._format("convert", src, dest_fmt, "destination format")]
        if force_share:
            args.append("--force-share")
        if compress:
            if dest_fmt not in COMPRESS_FORMATS:
                raise QemuImgError(
                    f"qemu-img convert of {src} refused: compression needs destination format {' or '.join(COMPRESS_FORMATS)}, not {dest_fmt}",
                    operation="convert",
                    path=src,
                )
            args.append("-c")
        args += [src, dest]
        self._new("convert", dest)
        self._call("convert", src, args, self.convert_limits)

    def check(self, path: str, fmt: str) -> dict:
        """``qemu-img check`` (read only) as a dict (see ``parse_check``).

        A format without checks (raw) gives ``supported: False, ok: True``.
        Corruptions and leaks are reported, not raised: the caller decides.
        """
        path = self._path("check", path)
        args = ["check", "-f", self._format("check", path, fmt), "--output=json", path]
        rc, out = self._call("check", path, args, self.limits, ok_rcs=(CHECK_OK, CHECK_CORRUPT, CHECK_LEAKS, CHECK_NOT_SUPPORTED))
        if rc == CHECK_NOT_SUPPORTED:
            return {"filename": path, "format": fmt, "supported": False, "ok": True, "check_errors": 0, "corruptions": 0, "leaks": 0}
        try:
            return parse_check(out)
        except ValueError as exc:
            raise QemuImgError(f"qemu-img check of {path}: {exc}", operation="check", path=path) from exc
