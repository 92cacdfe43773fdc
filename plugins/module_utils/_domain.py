# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The domain module's backend and the listing of a host's instances (private).

* :func:`ensure_domain` (module ``domain``): the definition, the config drive, the
  record files and the wanted state of an instance's domain, through the guest
  primitives and the power state machine of ``_guest``.
* :func:`find_instance`, :func:`list_domains`, :func:`list_instances` (module
  ``instance_info``, and ``_actions`` to find the instance an action is for).

The instance actions are in ``_actions``, the config drive writer in ``_config_drive``,
the record files and the instance lock in ``_record``.

Decisions
---------

* The domain module stores the record it is given, unchanged: it never sets
  vm_state or power_state itself, otherwise its second run would find the record
  it wrote different from the one it is given and never be idempotent. The caller
  passes the current record (``instance_info`` returns it).
* Check mode plans the steps with ``_guest.plan_steps``; a real run re-plans from the
  real state after each step (``DomainOps.reach``).
"""

from __future__ import annotations

import os

from ansible_collections.virtcloud.compute.plugins.module_utils._common import DEFAULT_INSTANCES_PATH
from ansible_collections.virtcloud.compute.plugins.module_utils._config_drive import ConfigDrive
from ansible_collections.virtcloud.compute.plugins.module_utils._domain_xml import (
    CONFIG_DISK,
    CONSOLE_LOG,
    ROOT_DISK,
    DomainXmlError,
    build_domain,
    domain_name,
    normalise,
    normalised_pair,
    read_instance,
    validate_path,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._guest import (
    ABSENT,
    CRASHED,
    RUNNING,
    SHUTOFF,
    STEP_RESULT,
    SUSPENDED,
    WANTED_STATES,
    DomainError,
    DomainOps,
    plan_steps,
    shutdown_schedule,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import (
    as_instance,
    config_drive_files,
    power_state_from_libvirt,
    power_state_name,
    validate_instance_name,
    validate_uuid,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import (
    STATE_ABSENT,
    VIR_DOMAIN_XML_INACTIVE,
    VIR_ERR_NO_DOMAIN,
    LibvirtError,
    domain_state,
    libvirt_errors,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._record import (
    RECORD_FILE,
    instance_dir_of,
    record_file_content,
    write_record_file,
    write_xml_file,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._validate import is_uuid

PREPARE_STEPS = ("write_record_file", "config_drive", "define", "redefine")


# --------------------------------------------------------------------------- the domain module


def ensure_domain(
    conn,
    record,
    *,
    state,
    instances_path=DEFAULT_INSTANCES_PATH,
    domain_type="kvm",
    machine="pc",
    networks=None,
    reboot=None,
    shutdown_timeout=60,
    retry_interval=10,
    wait=True,
    timeout=120,
    check_mode=False,
    run=None,
    log=None,
    ops=None,
    config_drive=None,
):
    """Bring the instance's domain to ``state``; returns the module result (without diff text keys)."""
    if state not in WANTED_STATES:
        raise DomainError(f"state {state!r} is not one of {', '.join(WANTED_STATES)}")
    if reboot not in (None, "soft", "hard"):
        raise DomainError(f"reboot {reboot!r} is not soft or hard")
    if reboot is not None and state != RUNNING:
        raise DomainError(f"reboot={reboot} is only used with state=running, not state={state}")
    shutdown_schedule(shutdown_timeout, retry_interval)
    ops = ops or DomainOps(conn)
    if state == ABSENT:
        uuid = validate_uuid(record.get("uuid") if isinstance(record, dict) else None, "instance uuid")
        return _ensure_absent(ops, uuid, shutdown_timeout, retry_interval, timeout, check_mode, log)

    inst = as_instance(record)
    idir = instance_dir_of(instances_path, inst.uuid)
    wanted_xml = build_domain(inst, instance_dir=idir, domain_type=domain_type, machine=machine, networks=networks)
    dom = ops.lookup(inst.uuid)
    observed = ops.observe(dom)
    current_xml = ops.inactive_xml(dom) if dom is not None else None
    if current_xml is None:
        before, after = "", normalise(wanted_xml)
    else:
        before, after = normalised_pair(current_xml, wanted_xml)
    redefine = before != after
    result = {
        "changed": False,
        "actions": [],
        "domain": domain_name(inst.uuid),
        "uuid": inst.uuid,
        "instance_dir": idir,
        "state_before": observed,
        "warnings": [],
        "diff": {
            "before": before,
            "after": after,
            "before_header": f"{domain_name(inst.uuid)} (defined)",
            "after_header": f"{domain_name(inst.uuid)} (wanted)",
        },
    }

    # config drive
    drive = config_drive or ConfigDrive(run)
    drive_path = f"{idir}/{CONFIG_DISK}"
    wanted_files = config_drive_files(inst) if inst.config_drive else None
    build_drive = wanted_files is not None and not drive.same(drive.read(drive_path), wanted_files)

    steps = []
    if redefine:
        steps.append("define" if dom is None else "redefine")
    if build_drive:
        steps.insert(0, "config_drive")
    plan_from = SHUTOFF if dom is None else observed
    state_steps = plan_steps(plan_from, state, f"domain {domain_name(inst.uuid)}")
    fresh_boot = plan_from in (SHUTOFF, CRASHED)
    if reboot and not fresh_boot:
        state_steps.append(f"reboot_{reboot}")
    steps += state_steps
    if not wait:
        steps = _cut_after_shutdown(steps)
    if any(s in ("start", "start_paused") for s in steps) and not os.path.exists(f"{idir}/{ROOT_DISK}"):
        raise DomainError(f"cannot start {inst.label()}: its root disk {idir}/{ROOT_DISK} does not exist; create it first (virtcloud.compute.disk)")
    if redefine and dom is not None and observed not in (SHUTOFF, SUSPENDED) and _differs_beyond_record(current_xml, wanted_xml):
        if reboot != "hard":
            result["warnings"].append(
                f"the definition of running domain {domain_name(inst.uuid)} changed: the new definition takes effect at "
                "its next cold boot (stop and start, or reboot=hard)"
            )
    if redefine and observed == SUSPENDED and _differs_beyond_record(current_xml, wanted_xml):
        result["warnings"].append(
            f"domain {domain_name(inst.uuid)} is suspended: its saved memory state restores the old definition; the new one takes effect at its next cold boot"
        )
    record_file_stale = not redefine and os.path.isdir(idir) and _file_differs(f"{idir}/{RECORD_FILE}", record_file_content(inst))
    if record_file_stale:
        steps.insert(0, "write_record_file")
    result["actions"] = steps
    result["changed"] = bool(steps)
    planned = plan_from
    for step in state_steps:
        planned = STEP_RESULT.get(step, planned)
    if check_mode or not steps:
        result["state"] = planned if check_mode else observed
        return result

    try:
        os.makedirs(idir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise DomainError(f"cannot make the instance directory {idir}: {exc.strerror or exc}") from None
    executed = []
    for step in [s for s in steps if s in PREPARE_STEPS]:
        if step == "config_drive":
            drive.build(drive_path, wanted_files, ConfigDrive.volume_id(inst.uuid))
        elif step in ("define", "redefine"):
            dom = ops.define(wanted_xml)
            write_xml_file(idir, wanted_xml)
            write_record_file(idir, inst)
            if step == "redefine" and ops.observe(dom) not in (SHUTOFF, SUSPENDED):
                ops.save_record(dom, inst)  # the live metadata too
        else:
            write_record_file(idir, inst)
        executed.append(step)
        if log:
            log.info(f"domain {domain_name(inst.uuid)}: {step}", instance=inst.uuid)

    # the state steps, re-planned from the real state after each one
    def logged(step, detail):
        if log:
            log.info(f"domain {domain_name(inst.uuid)}: {step}" + (f" {detail}" if detail else ""), instance=inst.uuid)

    done, details = ops.reach(
        dom,
        state,
        shutdown_timeout=shutdown_timeout,
        retry_interval=retry_interval,
        timeout=timeout,
        wait=wait,
        name=f"domain {domain_name(inst.uuid)}",
        on_step=logged,
    )
    executed += done
    result.update(details)
    if reboot and not fresh_boot and ops.observe(dom) == RUNNING:
        if reboot == "soft":
            result["reboot"] = ops.soft_reboot(dom, shutdown_timeout, retry_interval, timeout)
        else:
            result["reboot"] = ops.hard_reboot(dom, timeout)
        executed.append(f"reboot_{reboot}")
        if log:
            log.info(f"domain {domain_name(inst.uuid)}: reboot {result['reboot']}", instance=inst.uuid)
    result["actions"] = executed
    result["changed"] = bool(executed)
    result["state"] = ops.observe(dom)
    return result


def _cut_after_shutdown(steps):
    if "shutdown" in steps:
        return steps[: steps.index("shutdown") + 1]
    return steps


def _differs_beyond_record(current_xml, wanted_xml):
    before, after = normalised_pair(current_xml, wanted_xml, include_record=False)
    return before != after


def _file_differs(path, data):
    try:
        with open(path, "rb") as f:
            return f.read() != data
    except FileNotFoundError:
        return True
    except OSError:
        return True


def _ensure_absent(ops, uuid, shutdown_timeout, retry_interval, timeout, check_mode, log):
    name = domain_name(uuid)
    dom = ops.lookup(uuid)
    observed = ops.observe(dom)
    before = normalise(ops.inactive_xml(dom)) if dom is not None else ""
    steps = plan_steps(observed, ABSENT, f"domain {name}")
    result = {
        "changed": bool(steps),
        "actions": steps,
        "domain": name,
        "uuid": uuid,
        "state_before": observed,
        "state": ABSENT if steps or dom is None else observed,
        "warnings": [],
        "diff": {"before": before, "after": "", "before_header": f"{name} (defined)", "after_header": f"{name} (absent)"},
    }
    if check_mode or not steps:
        return result

    def logged(step, _detail):
        if log:
            log.info(f"domain {name}: {step}", instance=uuid)

    executed, _details = ops.reach(
        dom, ABSENT, shutdown_timeout=shutdown_timeout, retry_interval=retry_interval, timeout=timeout, name=f"domain {name}", on_step=logged
    )
    result["actions"] = executed
    result["state"] = ABSENT
    return result


# --------------------------------------------------------------------------- finding instances


def _is_instance_domain_name(name):
    return name.startswith("instance-") and is_uuid(name[len("instance-") :])


def list_domains(conn):
    """[(dom, Instance)] for every domain of this collection on the host; bad records in ``errors``."""
    with libvirt_errors("listing the domains"):
        domains = conn.listAllDomains(0)
    found, errors = [], []
    for dom in domains:
        try:
            with libvirt_errors("reading a domain"):
                name = dom.name()
                if not _is_instance_domain_name(name):
                    continue
                xml = dom.XMLDesc(VIR_DOMAIN_XML_INACTIVE)
        except LibvirtError as exc:
            if exc.code == VIR_ERR_NO_DOMAIN:
                continue  # undefined while we looked
            raise
        try:
            inst = read_instance(xml)
        except DomainXmlError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if inst is None:
            continue
        found.append((dom, inst))
    return found, errors


def find_instance(conn, ref, ops=None):
    """(dom, Instance) of the instance with this uuid or name on the host, or (None, None)."""
    ops = ops or DomainOps(conn)
    if isinstance(ref, str) and is_uuid(ref, any_case=True):
        uuid = validate_uuid(ref, "instance")
        dom = ops.lookup(uuid)
        if dom is None:
            return None, None
        inst = read_instance(ops.inactive_xml(dom))
        if inst is None:
            raise DomainError(f"domain {domain_name(uuid)} has no instance record in its metadata: it was not made by this collection")
        return dom, inst
    name = validate_instance_name(ref)
    found, _errors = list_domains(conn)
    matches = [(dom, inst) for dom, inst in found if inst.name == name]
    if len(matches) > 1:
        raise DomainError(f"several instances on this host are named {name}: {', '.join(sorted(inst.uuid for _d, inst in matches))}; give the uuid")
    return matches[0] if matches else (None, None)


def instance_info(ops, dom, inst, instances_path):
    """What instance_info returns for one instance."""
    idir = instance_dir_of(instances_path, inst.uuid)
    state = domain_state(dom)
    power = 0 if state[0] == STATE_ABSENT else power_state_from_libvirt(state[0])
    return {
        "uuid": inst.uuid,
        "name": inst.name,
        "domain": domain_name(inst.uuid),
        "state": ops.observe(dom),
        "libvirt_state": state[2],
        "power_state": power,
        "power_state_name": power_state_name(power),
        "vm_state": inst.vm_state,
        "task_state": inst.task_state,
        "locked": inst.locked,
        "locked_reason": inst.locked_reason,
        "host": inst.host,
        "instance_dir": idir,
        "console_log": f"{idir}/{CONSOLE_LOG}",
        "actions": [a.to_dict() for a in inst.actions],
        "record": inst.to_dict(),
    }


def list_instances(conn, *, uuid=None, name=None, instance=None, instances_path=DEFAULT_INSTANCES_PATH):
    """instance_info: every instance on the host, or the one with ``uuid`` / ``name``.

    ``instance`` is either: a uuid when it has a uuid's form, a name otherwise (as
    instance_action's ``instance``), so that playbooks never tell the two apart themselves.
    """
    ops = DomainOps(conn)
    validate_path(instances_path, "instances_path")
    if instance is not None:
        if uuid is not None or name is not None:
            raise DomainError("instance is either a uuid or a name: give instance, or uuid or name, not both")
        uuid, name = (instance, None) if is_uuid(instance, any_case=True) else (None, instance)
    if uuid is not None:
        dom, inst = find_instance(conn, validate_uuid(uuid, "uuid"), ops)
        pairs, errors = ([(dom, inst)] if dom is not None else []), []
    else:
        if name is not None:
            validate_instance_name(name)
        pairs, errors = list_domains(conn)
        if name is not None:
            pairs = [(d, i) for d, i in pairs if i.name == name]
    instances = sorted((instance_info(ops, d, i, instances_path) for d, i in pairs), key=lambda x: (x["name"], x["uuid"]))
    return instances, errors
