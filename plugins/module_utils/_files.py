# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Atomic file writes and file locks, in one place (private).

* :func:`atomic_write`: the content goes to a temporary file beside the target (its
  own random name, so two writers never share one), is fsynced, renamed over the
  target, and the folder is fsynced: a crash leaves the old file or the new one, never
  a part, and no temporary file survives a failed write.
* :func:`file_lock`: an exclusive ``flock`` on a lock file that lives beside what it
  protects (``<store>/.lock``, ``<instances_path>/.locks/<uuid>.lock``,
  ``_base/<sha1>.lock``, ``ports.json``'s folder ``.lock``), waited for up to a timeout,
  then :class:`LockTimeout`. A lock file in a folder that several hosts share protects
  across them: the lab's hosts share one kernel, and an NFS client turns ``flock`` into
  a POSIX lock the server holds (Linux >= 2.6.12). ``flock`` and not ``lockf``: two
  holders in one process exclude each other too (a POSIX lock belongs to the process).
  Lock files are never removed (removing one that a waiter has open breaks the lock).
  With ``holder=True`` the holder writes its pid into the lock file, and a run that
  times out names it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError

LOCK_POLL = 0.1


class LockTimeout(VirtcloudError):
    """A lock was held by someone else for longer than the timeout; nothing was done."""


def fsync_dir(path: str) -> None:
    """Make a rename in folder ``path`` durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes | str, mode: int = 0o644) -> bool:
    """Replace ``path`` with ``data`` (bytes, or text written as UTF-8), atomically.

    Returns False, and writes nothing, when the file already has exactly this content
    and mode; True when it was written. OSError goes to the caller, who says what the
    file was for.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        with open(path, "rb") as f:
            if f.read() == data and (os.fstat(f.fileno()).st_mode & 0o7777) == mode:
                return False
    except OSError:
        pass
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return True


def json_text(data: object) -> str:
    """The collection's JSON file format: sorted keys, indented, a final newline."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_json(path: str, data: object, mode: int = 0o644) -> bool:
    """:func:`atomic_write` of :func:`json_text`; True when the file changed."""
    return atomic_write(path, json_text(data), mode)


def _holder_pid(fd: int) -> int | None:
    """The pid a holder wrote into the lock file, when there is one."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def file_lock(path: str, timeout: float, what: str = "", *, error: type = LockTimeout, holder: bool = False, clock=time.monotonic, sleep=time.sleep):
    """Hold an exclusive ``flock`` on ``path`` (made when missing) while the block runs.

    Waits up to ``timeout`` seconds for another holder, then raises ``error`` (default
    :class:`LockTimeout`; a backend passes its own subclass of the collection's error)
    saying that ``what`` is busy. With ``holder``, the pid of the process that holds the
    lock is kept in the file and named in that message. ``clock`` and ``sleep`` are for
    the tests.
    """
    what = what or f"the lock {path}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise error(f"cannot open the lock file {path} for {what}: {exc.strerror or exc} (modules run as root on the host)") from None
    try:
        deadline = clock() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if clock() >= deadline:
                    pid = _holder_pid(fd) if holder else None
                    if pid:
                        raise error(
                            f"{what} is being changed by another run (pid {pid}): wait for it to finish, then try again "
                            f"(waited {timeout} s for the lock {path})"
                        ) from None
                    raise error(f"{what} is busy: another run holds the lock {path} for more than {timeout} s; wait for it to finish, then try again") from None
                sleep(LOCK_POLL)
        if holder:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)
