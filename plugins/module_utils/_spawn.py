# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Spawn: make one instance on this compute host (nova-compute's ``_build_and_run_instance``).

One step, run on the compute host: the record (:meth:`Instance.new`), the ``create``
action opened and closed with real times, the image checked against the flavor (the
check rebuild uses), the claim under the host lock, the instance folder, the root disk
(a qcow2 overlay on the cached base), the config drive, the domain defined and started,
the claim released. A spawn that fails removes what it made (domain, folder, claim) and
raises :class:`SpawnError`, so that the conductor can move to the next alternate host.

Launch uses it; unshelve, cold migration, resize and evacuate are the next callers.
"""

from __future__ import annotations

import os
import shutil

from ansible_collections.virtcloud.compute.plugins.module_utils._claim import ClaimError, claim, libvirt_host_reader, release
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._disks import Disks
from ansible_collections.virtcloud.compute.plugins.module_utils._actions import begin_action, finish_action
from ansible_collections.virtcloud.compute.plugins.module_utils._domain import ensure_domain, find_instance
from ansible_collections.virtcloud.compute.plugins.module_utils._domain_xml import ROOT_DISK, domain_name
from ansible_collections.virtcloud.compute.plugins.module_utils._guest import DomainOps
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import (
    Image,
    Instance,
    TaskState,
    check_image_fits,
    update_task_state,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._record import instance_dir_of

ACTION = "create"


class SpawnError(VirtcloudError):
    """The instance could not be made on this host; what the attempt made is removed."""


def new_record(
    *,
    uuid: str,
    name: str,
    project: str,
    flavor: dict,
    image: dict,
    ports: list,
    host: str,
    availability_zone: str = "nova",
    server_group: str | None = None,
    meta: dict | None = None,
    public_keys: dict | None = None,
    user_data: str | None = None,
    launch_index: int = 0,
) -> Instance:
    """The record of a new instance (vm_state building), validated; ports keep network, mac and ip."""
    return Instance.new(
        uuid=uuid,
        name=name,
        project=project,
        flavor=flavor,
        image={"id": image["id"], "properties": image.get("properties") or {}},
        availability_zone=availability_zone or "nova",
        server_group=server_group or None,
        ports=[{"network": p["network"], "mac": p["mac"], "ip": p.get("ip")} for p in ports],
        host=host,
        meta=meta or {},
        public_keys=public_keys or {},
        user_data=user_data or None,
        launch_index=launch_index,
    )


def bridges_of(ports: list) -> dict:
    """{network: {bridge}} for the domain XML, from the ports' ``bridge`` keys."""
    out = {}
    for port in ports:
        if port.get("bridge"):
            out[port["network"]] = {"bridge": port["bridge"]}
    return out


def root_disk_size(inst: Instance, virtual_size: int) -> int:
    """The root disk's size in bytes: the flavor's disk, or the image's size for a disk_gb 0 flavor."""
    return max(inst.flavor.disk_gb * 1024**3, int(virtual_size))


def spawn(
    conn,
    inst: Instance,
    *,
    request_id: str,
    base: dict,
    ports: list,
    run,
    qemu_img,
    uri: str,
    instances_path: str,
    claims_file: str,
    allocation: dict,
    domain_type: str = "kvm",
    machine: str = "pc",
    timeout: int = 120,
    check_mode: bool = False,
    log=None,
    ops=None,
    read_host=None,
    config_drive=None,
) -> dict:
    """Make instance INST on this host; returns {changed, instance, domain, instance_dir, actions}.

    ``base`` is the cached image (path, format, virtual_size: image_cache's result);
    ``run`` the runner of the config drive's tools (bytes in and out), ``qemu_img`` a QemuImg.
    ``ops``, ``read_host`` (the claim's reader of the host's figures) and ``config_drive``
    default to the real ones (tests give their own).
    An instance whose domain exists here already is left as it is (no change).
    """
    ops = ops or DomainOps(conn)
    read_host = read_host or libvirt_host_reader(conn, uri, instances_path, allocation)
    dom, existing = find_instance(conn, inst.uuid, ops)
    idir = instance_dir_of(instances_path, inst.uuid)
    result = {"changed": False, "domain": domain_name(inst.uuid), "instance_dir": idir, "actions": []}
    if dom is not None:
        result["instance"] = existing.to_dict()
        return result
    begin_action(inst, ACTION, request_id)
    check_image_fits(inst, Image.from_dict(inst.image.to_dict()), int(base["virtual_size"]), action="launch")
    made = {"claim": False, "folder": False}
    try:
        claim(claims_file, inst.uuid, inst.flavor.to_dict(), inst.host, read_host, check_mode)
        made["claim"] = not check_mode
        result["actions"].append("claim")
        result["changed"] = True
        if check_mode:
            result["actions"] += ["folder", "disk", "config_drive", "define", "start", "release"]
            result["instance"] = inst.to_dict()
            return result
        update_task_state(inst, TaskState.SPAWNING, expected_task_state=(TaskState.SCHEDULING,))
        made["folder"] = not os.path.isdir(idir)
        os.makedirs(idir, mode=0o755, exist_ok=True)
        Disks(qemu_img, log=log).present(
            f"{idir}/{ROOT_DISK}", "qcow2", size=root_disk_size(inst, base["virtual_size"]), backing=base["path"], backing_format=base["format"]
        )
        result["actions"] += ["folder", "disk"]
        defined = ensure_domain(
            conn,
            inst.to_dict(),
            state="running",
            instances_path=instances_path,
            domain_type=domain_type,
            machine=machine,
            networks=bridges_of(ports),
            timeout=timeout,
            run=run,
            log=log,
            ops=ops,
            config_drive=config_drive,
        )
        result["actions"] += defined["actions"]
        dom = ops.lookup(inst.uuid)
        finish_action(inst, ACTION, request_id, vm_state="active", task_state=None, power_state=ops.power_state(dom))
        ops.save_record(dom, inst, idir)
        release(claims_file, inst.uuid)
        made["claim"] = False
        result["actions"].append("release")
    except (VirtcloudError, OSError) as exc:
        _undo(conn, ops, inst, idir, made, claims_file, log)
        if isinstance(exc, ClaimError):
            raise
        raise SpawnError(f"spawn of instance {inst.label()} on {inst.host} failed ({request_id}): {exc}") from exc
    if log is not None:
        log.info(f"spawned {inst.label()}: {' '.join(result['actions'])}", instance=inst.uuid)
    result["instance"] = inst.to_dict()
    return result


def _undo(conn, ops, inst: Instance, idir: str, made: dict, claims_file: str, log) -> None:
    """Remove what a failed spawn made: the domain, the folder (when this spawn made it), the claim."""
    try:
        ensure_domain(conn, {"uuid": inst.uuid}, state="absent", ops=ops, shutdown_timeout=0)
    except VirtcloudError as exc:
        if log is not None:
            log.warning(f"removing the domain of failed spawn {inst.label()}: {exc}", instance=inst.uuid)
    if made["folder"]:
        shutil.rmtree(idir, ignore_errors=True)
    if made["claim"]:
        release(claims_file, inst.uuid)
