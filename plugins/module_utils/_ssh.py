# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SSH and scp towards another host: the one place their command lines are built (private).

A host is reached as ``user@host`` with the options of the option group
``_common.ssh_argument_spec()`` (ssh_key, known_hosts, connect_timeout). Host keys are
always checked strictly (``BatchMode=yes``, ``StrictHostKeyChecking=yes``): an unknown or
changed host key fails, never trusted on first use. Everything that reaches the command
line is validated first, so that no value can be read as an option or by a shell on the
other side.

Used by the image cache (a compute host fetches from the image store host) and by imports
of a file on another host (the image host pulls a compute host's snapshot), both in
``_image_store``.
"""

from __future__ import annotations

import ipaddress
import os
import re

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError

# Paths that reach scp's remote side: characters no shell or scp reads specially.
SAFE_PATH_RE = re.compile(r"^/(?:[A-Za-z0-9._+@-]+/?)*\Z")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\Z")


class SshError(VirtcloudError):
    """A value cannot reach an SSH or scp command line, or a file SSH needs is missing."""


def check_host(value, what: str = "source_host") -> str:
    """A host name or IP address that cannot be read as an option or a path by ssh."""
    if not isinstance(value, str) or not value:
        raise SshError(f"{what} {value!r} is not a host name or address")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not HOSTNAME_RE.match(value):
        raise SshError(f"{what} {value!r} is not a host name or IP address")
    return value


def check_path(value, what: str, safe: bool = False) -> str:
    """An absolute, normalised path (a trailing / is kept); ``safe`` also limits its characters (SAFE_PATH_RE)."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or "\n" in value:
        raise SshError(f"{what} {value!r} is not an absolute path")
    if os.path.normpath(value) != value and not (value.endswith("/") and os.path.normpath(value) == value.rstrip("/")):
        raise SshError(f"{what} {value!r} is not a normalised path (no //, . or .. parts)")
    if safe and not SAFE_PATH_RE.match(os.path.normpath(value)):
        raise SshError(f"{what} {value!r} may only hold letters, digits and . _ + @ - between slashes")
    return value


class ScpRemote:
    """One host reached with SSH: the validated connection options and the scp command line.

    ``option`` is the prefix of the module options named in errors (``source``, ``src``).
    """

    def __init__(
        self,
        host: str,
        user: str = "root",
        port: int = 22,
        ssh_key: str | None = None,
        known_hosts: str | None = None,
        connect_timeout: int = 10,
        scp: str = "scp",
        prlimit: str = "prlimit",
        option: str = "source",
    ) -> None:
        self.host = check_host(host, f"{option}_host")
        if not isinstance(user, str) or not USER_RE.match(user):
            raise SshError(f"{option}_user {user!r} is not a valid user name")
        self.user = user
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise SshError(f"{option}_port {port!r} is not a port number")
        self.port = port
        self.ssh_key = os.path.normpath(check_path(ssh_key, "ssh_key")) if ssh_key else None
        self.known_hosts = os.path.normpath(check_path(known_hosts, "known_hosts")) if known_hosts else None
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, int) or connect_timeout <= 0:
            raise SshError(f"connect_timeout {connect_timeout!r} is not a positive number of seconds")
        self.connect_timeout = connect_timeout
        self.scp = scp
        self.prlimit = prlimit

    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}"

    def location(self, path: str) -> str:
        """``user@host:/path``, as scp reads it and as messages name it."""
        return f"{self.target()}:{path}"

    def options(self) -> list[str]:
        """The ``-o`` options of every SSH connection to the host: strict host keys, no prompts, timeouts."""
        options = [
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ]
        if self.ssh_key:
            options += ["-o", "IdentitiesOnly=yes", "-i", self.ssh_key]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return options

    def argv(self, paths: list[str], dest: str, max_bytes: int | None = None) -> list[str]:
        """scp of the remote ``paths`` to the local ``dest`` (a directory ending in /, or a file).

        ``max_bytes`` limits the size of every file scp writes (``prlimit --fsize``):
        a larger file stops the copy there instead of filling the disk.
        """
        for path in paths:
            check_path(path, "remote path", safe=True)
        check_path(dest, "destination")  # validated; a trailing / (a directory) is kept
        # no -q: it would hide ssh's own messages ("Host key verification failed."); no progress
        # meter is printed anyway, since the output is not a terminal
        argv = [self.scp, "-P", str(self.port)] + self.options() + [self.location(p) for p in paths] + [dest]
        if max_bytes is not None:
            argv = [self.prlimit, f"--fsize={max_bytes}", "--"] + argv
        return argv

    @staticmethod
    def copy(run, argv: list[str]) -> tuple[int, str]:
        """Run an scp command line; returns (rc, scp's messages on one line, joined by "; ", without full stops)."""
        rc, _out, err = run(argv)
        lines = [line.strip().rstrip(".") for line in (err or "").splitlines()]
        return rc, "; ".join(line for line in lines if line) or "no message"

    def check_files(self) -> None:
        """ssh_key and known_hosts, when given, must be readable files on this host."""
        for what, path in (("ssh_key", self.ssh_key), ("known_hosts", self.known_hosts)):
            if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise SshError(f"{what} {path} is not a readable file on this host; give the right path, or leave it out to use SSH's default")

    def failure_hint(self, path: str) -> str:
        """What to check when a copy of PATH from the host failed."""
        return (
            f"Check that {self.host}'s host key is in known_hosts ({self.known_hosts or 'the default known_hosts file of SSH'}; strict host key "
            f"checking, never trusted on first use), that this host's key (ssh_key {self.ssh_key or 'not given: the default key of SSH'}) is "
            f"authorized for {self.user} there, and that {path} exists on {self.host} and {self.user} can read it"
        )
