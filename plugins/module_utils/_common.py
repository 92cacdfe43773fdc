# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What every module shares: the option groups, request ids, the host log, the base error.

The option groups are documented once in plugins/doc_fragments/connection.py
(fragments ``virtcloud.compute.connection`` and ``virtcloud.compute.connection.wait``).
"""

from __future__ import annotations

import datetime
import os
import re
import uuid

REQUEST_ID_RE = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
LOG_FILE = "/var/log/virtcloud/virtcloud.log"


C_LOCALE = {"LC_ALL": "C", "LANG": "C"}


def command_runner(module, binary_data: bool = False):
    """``run(argv, data=None) -> (rc, stdout, stderr)`` over ``module.run_command`` in the C
    locale, so that the tools' output and messages read the same on every host.

    The module_utils runners (qemu-img, mkfs/mtools, ip, dnsmasq, ...) take this ``run``.
    """

    def run(argv, data=None):
        return module.run_command(argv, data=data, binary_data=binary_data, environ_update=dict(C_LOCALE))

    return run


class VirtcloudError(Exception):
    """Base of the collection's own errors; the message says what was wrong and what to do."""


def ssh_argument_spec() -> dict:
    """SSH key, known hosts and timeout towards another host (doc fragment virtcloud.compute.connection.ssh)."""
    return dict(
        ssh_key=dict(type="path", no_log=False),
        known_hosts=dict(type="path"),
        connect_timeout=dict(type="int", default=10),
    )


def connection_argument_spec() -> dict:
    """libvirt URI and request id (doc fragment virtcloud.compute.connection)."""
    return dict(
        uri=dict(type="str", default="qemu:///system"),
        request_id=dict(type="str"),
    )


def wait_argument_spec(timeout: int = 120) -> dict:
    """wait and timeout (doc fragment virtcloud.compute.connection.wait)."""
    return dict(
        wait=dict(type="bool", default=True),
        timeout=dict(type="int", default=timeout),
    )


def allocation_argument_spec() -> dict:
    """Allocation ratios and host reservations (doc fragment virtcloud.compute.connection.allocation)."""
    return dict(
        cpu_allocation_ratio=dict(type="float", default=4.0),
        ram_allocation_ratio=dict(type="float", default=1.0),
        disk_allocation_ratio=dict(type="float", default=1.0),
        reserved_host_memory_mb=dict(type="int", default=512),
        reserved_host_disk_mb=dict(type="int", default=0),
    )


def allocation_params(params: dict) -> tuple:
    """The allocation options of a module's params, in the order of ``_libvirt.allocation_options``."""
    return tuple(
        params[k] for k in ("cpu_allocation_ratio", "ram_allocation_ratio", "disk_allocation_ratio", "reserved_host_memory_mb", "reserved_host_disk_mb")
    )


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


def request_id(value: str | None) -> str:
    """The given request id, checked, or a new one."""
    if value is None or value == "":
        return new_request_id()
    if not REQUEST_ID_RE.match(value):
        raise VirtcloudError(f"request_id {value!r} is not of the form req-<uuid> (lowercase hex): pass the workflow's id unchanged")
    return value


def format_log_line(level: str, module: str, req_id: str, message: str, instance: str | None = None, now: datetime.datetime | None = None) -> str:
    """``time level module [req-id] [instance: uuid] message``, one line."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d}"
    where = f" [instance: {instance}]" if instance else ""
    text = " ".join(message.split())
    return f"{stamp} {level.upper()} {module} [{req_id}]{where} {text}"


class HostLog:
    """The collection's log on the host (like nova-compute.log), one line per event."""

    def __init__(self, module: str, req_id: str, path: str = LOG_FILE):
        self.module = module
        self.req_id = req_id
        self.path = path

    def write(self, level: str, message: str, instance: str | None = None) -> None:
        line = format_log_line(level, self.module, self.req_id, message, instance)
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            # the log must never make an action fail
            pass

    def info(self, message: str, instance: str | None = None) -> None:
        self.write("INFO", message, instance)

    def warning(self, message: str, instance: str | None = None) -> None:
        self.write("WARNING", message, instance)

    def error(self, message: str, instance: str | None = None) -> None:
        self.write("ERROR", message, instance)
