# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What every module shares: the option groups, request ids, the host log, the base error.

Each option group is built here once and documented once in a doc fragment:

========================================  ==============================================================
``connection_argument_spec()``            ``virtcloud.compute.connection`` + ``virtcloud.compute.request_id``
``request_id_argument_spec()``            ``virtcloud.compute.request_id``
``instances_path_argument_spec()``        ``virtcloud.compute.instances_path``
``wait_argument_spec()``                  ``virtcloud.compute.connection.wait``
``ssh_argument_spec()``                   ``virtcloud.compute.connection.ssh``
``_capacity.allocation_argument_spec()``  ``virtcloud.compute.capacity``
========================================  ==============================================================
"""

from __future__ import annotations

import datetime
import os
import uuid

from ansible_collections.virtcloud.compute.plugins.module_utils._validate import is_request_id

LOG_FILE = "/var/log/virtcloud/virtcloud.log"
# Nova's instances_path: one folder per instance, and the image cache _base.
DEFAULT_INSTANCES_PATH = "/var/lib/virtcloud/instances"


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


def request_id_argument_spec() -> dict:
    """The workflow's request id (doc fragment virtcloud.compute.request_id); check it with :func:`request_id`."""
    return dict(request_id=dict(type="str"))


def instances_path_argument_spec() -> dict:
    """Nova's instances_path (doc fragment virtcloud.compute.instances_path)."""
    return dict(instances_path=dict(type="path", default=DEFAULT_INSTANCES_PATH))


def connection_argument_spec() -> dict:
    """libvirt URI and request id (doc fragments virtcloud.compute.connection and virtcloud.compute.request_id)."""
    return dict(uri=dict(type="str", default="qemu:///system"), **request_id_argument_spec())


def wait_argument_spec(timeout: int = 120) -> dict:
    """wait and timeout (doc fragment virtcloud.compute.connection.wait)."""
    return dict(
        wait=dict(type="bool", default=True),
        timeout=dict(type="int", default=timeout),
    )


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


def request_id(value: str | None) -> str:
    """The given request id, checked, or a new one."""
    if value is None or value == "":
        return new_request_id()
    if not is_request_id(value):
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
