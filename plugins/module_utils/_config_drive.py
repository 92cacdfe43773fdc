# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The config drive writer (private).

A 4 MiB FAT image ``disk.config`` labelled ``config-2``, made with ``mkfs.vfat`` and
filled with mtools (``mmd``, ``mcopy``): no mount, no loop device, through an injected
runner. What goes on it is ``_instance.config_drive_files`` (Nova's meta_data.json and
user_data); :meth:`ConfigDrive.commands` gives the command lines (unit tested).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import CONFIG_DRIVE_LABEL, validate_uuid

CONFIG_DRIVE_SIZE = 4 * 1024 * 1024  # FAT12, like the test image check's drive


class ConfigDriveError(VirtcloudError):
    """The config drive cannot be made or read; the message says why."""


def find_tool(name):
    """The path of a command-line tool, also looking in the sbin folders."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        package = "dosfstools" if name.startswith("mkfs") else "mtools"
        raise ConfigDriveError(f"{name} is not installed on the host: install the {package} package (needed for the config drive)")
    return found


class ConfigDrive:
    """The vfat config drive: ``mkfs.vfat -n config-2``, then mtools; no mount.

    ``run(argv, data=None) -> (rc, stdout, stderr)``: ``data`` (bytes) goes to stdin
    exactly as given (a module passes ``run_command(..., binary_data=True)``).
    """

    def __init__(self, run, tools=None, env="env"):
        self._run = run
        self._tools = dict(tools or {})
        self.env = env

    def tool(self, name):
        if name not in self._tools:
            self._tools[name] = find_tool(name)
        return self._tools[name]

    def _argv(self, name, args):
        return [self.env, "LC_ALL=C", "LANG=C", "MTOOLS_SKIP_CHECK=1", self.tool(name)] + list(args)

    @staticmethod
    def volume_id(uuid):
        """The FAT volume id: the first 8 hex digits of the instance uuid (stable across rebuilds)."""
        return validate_uuid(uuid, "instance uuid").replace("-", "")[:8]

    @staticmethod
    def _check_files(files):
        for rel in files:
            parts = rel.split("/")
            if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or not all(c.isalnum() or c in "._-" for p in parts for c in p):
                raise ConfigDriveError(f"config drive file name {rel!r} is not a plain relative path")

    def commands(self, image, files, volume_id):
        """The command lines (argv, stdin bytes) that fill a formatted empty ``image`` with ``files``."""
        self._check_files(files)
        cmds = [(self._argv("mkfs.vfat", ["-n", CONFIG_DRIVE_LABEL, "-i", volume_id, image]), None)]
        dirs = sorted({"/".join(rel.split("/")[:i]) for rel in files for i in range(1, rel.count("/") + 1)}, key=lambda d: (d.count("/"), d))
        for folder in dirs:
            cmds.append((self._argv("mmd", ["-i", image, f"::/{folder}"]), None))
        for rel in sorted(files):
            cmds.append((self._argv("mcopy", ["-i", image, "-", f"::/{rel}"]), files[rel]))
        return cmds

    def _call(self, argv, data, what):
        rc, out, err = self._run(argv, data=data)
        if rc != 0:
            detail = (err or out or "").strip() or "no message"
            raise ConfigDriveError(f"{what} failed (rc {rc}): {detail}")
        return out

    def build(self, path, files, volume_id):
        """Make the drive at ``path`` (atomically: a temporary image renamed into place)."""
        folder = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, CONFIG_DRIVE_SIZE)
            os.close(fd)
            fd = None
            for argv, data in self.commands(tmp, files, volume_id):
                self._call(argv, data, f"making the config drive {path} ({os.path.basename(argv[4])})")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise ConfigDriveError(f"cannot write the config drive {path}: {exc.strerror or exc}") from None
        finally:
            if fd is not None:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def read(self, path):
        """{relative path: text} of the files on the drive, None when it is missing or unreadable."""
        if not os.path.isfile(path):
            return None
        rc, out, _err = self._run(self._argv("mdir", ["-i", path, "-/", "-b", "::/"]))
        if rc != 0:
            return None
        files = {}
        for line in out.splitlines():
            line = line.strip()
            if not line.startswith("::/") or line.endswith("/"):
                continue
            rel = line[3:]
            rc, content, _err = self._run(self._argv("mcopy", ["-n", "-i", path, f"::/{rel}", "-"]))
            if rc != 0:
                return None
            files[rel] = content
        return files

    @staticmethod
    def same(current, wanted):
        """True when the drive's files (text, from :meth:`read`) are the wanted ones (bytes)."""
        if current is None:
            return False
        try:
            return current == {rel: data.decode("utf-8") for rel, data in wanted.items()}
        except UnicodeDecodeError:
            return False
