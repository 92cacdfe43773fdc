# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where an instance's record and files live on a host, and its lock (private).

* The instance folder ``<instances_path>/<uuid>/`` (:func:`instance_dir_of`), beside
  ``_base/`` and ``snapshots/``.
* ``instance.json`` in it, the readable mirror of the record in the domain's
  ``<metadata>`` (which stays authoritative): written with every change of the record
  (:func:`write_record_file`, called by ``_guest.DomainOps.save_record`` and the domain
  module), read with :func:`read_record_file` by whatever cannot or need not ask
  libvirt (info of an instance whose host is down, evacuate, an inventory).
* ``libvirt.xml`` in it, the XML as this collection last defined it (Nova's file).
* The per-instance lock (:func:`instance_lock`), as nova-compute's
  ``@synchronized(instance.uuid)``: ``<instances_path>/.locks/<uuid>.lock``, in the
  instances folder and not in /run, so that it holds across the hosts that share that
  folder (shared storage), and outside the instance folder, which a delete removes.
"""

from __future__ import annotations

import os
import time

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._domain_xml import validate_path
from ansible_collections.virtcloud.compute.plugins.module_utils._files import atomic_write, file_lock
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import Instance, InstanceError, validate_uuid

RECORD_FILE = "instance.json"
XML_FILE = "libvirt.xml"
LOCKS_FOLDER = ".locks"
RECORD_MODE = 0o600


class RecordError(VirtcloudError):
    """An instance's record file, XML file or lock cannot be written or read; the message says which."""


def instance_dir_of(instances_path: str, uuid: str) -> str:
    """``<instances_path>/<uuid>``, both validated."""
    validate_path(instances_path, "instances_path")
    return f"{instances_path}/{validate_uuid(uuid, 'instance uuid')}"


def record_file_content(inst: Instance) -> bytes:
    """The bytes of ``instance.json`` for this record."""
    return (inst.to_json(indent=2) + "\n").encode("ascii")


def write_record_file(instance_dir: str, inst: Instance) -> bool:
    """Mirror the record as ``instance.json``; True when the file changed."""
    path = f"{instance_dir}/{RECORD_FILE}"
    try:
        return atomic_write(path, record_file_content(inst), RECORD_MODE)
    except OSError as exc:
        raise RecordError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_record_file(instance_dir: str) -> Instance | None:
    """The record mirrored in ``<instance_dir>/instance.json`` (validated), None when there is no file."""
    path = f"{instance_dir}/{RECORD_FILE}"
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RecordError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return Instance.from_json(text)
    except InstanceError as exc:
        raise RecordError(f"{path} does not hold a valid instance record: {exc}") from None


def write_xml_file(instance_dir: str, xml: str) -> bool:
    """Keep the XML this collection defined as ``libvirt.xml``; True when the file changed."""
    path = f"{instance_dir}/{XML_FILE}"
    try:
        return atomic_write(path, xml.encode("utf-8"), RECORD_MODE)
    except OSError as exc:
        raise RecordError(f"cannot write {path}: {exc.strerror or exc}") from None


def instance_lock_path(instances_path: str, uuid: str, lock_dir: str | None = None) -> str:
    """``<instances_path>/.locks/<uuid>.lock`` (or ``<lock_dir>/<uuid>.lock``)."""
    uuid = validate_uuid(uuid, "instance uuid")
    if lock_dir is None:
        validate_path(instances_path, "instances_path")
        lock_dir = f"{instances_path}/{LOCKS_FOLDER}"
    return f"{lock_dir}/{uuid}.lock"


def instance_lock(instances_path: str, uuid: str, timeout: float, lock_dir: str | None = None, clock=time.monotonic, sleep=time.sleep):
    """Hold the per-instance lock while the block runs (one action at a time per instance).

    Raises :class:`RecordError` when another run holds it for more than ``timeout`` seconds.
    """
    path = instance_lock_path(instances_path, uuid, lock_dir)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    except OSError as exc:
        raise RecordError(f"cannot make the lock folder {os.path.dirname(path)}: {exc.strerror or exc} (modules run as root on the host)") from None
    return file_lock(path, timeout, f"instance {validate_uuid(uuid, 'instance uuid')}", error=RecordError, clock=clock, sleep=sleep)
