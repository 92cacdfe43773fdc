# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Nova's instance actions, one object each, and their registry (private).

Each action is one :class:`InstanceAction`: Nova's allowed vm_states and task states
(the decorators ``@check_instance_lock`` / ``@check_instance_state`` of
nova/compute/api.py), the task_state it sets, the vm_state and domain state it leads
to, the options it takes (:class:`ActionOption`, with their checks), what it checks
before it begins (``prepare``) and its steps over the guest primitives of ``_guest``
(``steps``). :data:`REGISTRY` (an explicit dict, name -> action) is read by

* the state table: :func:`check_action`, :func:`is_allowed`, :func:`allowed_actions`,
  :func:`begin_action`, :func:`finish_action`;
* the module ``instance_action``: its ``action`` choices are :data:`INSTANCE_ACTIONS`
  (the actions that have steps), its ``required_if`` is :func:`required_if`, and
  :func:`run_instance_action` checks the options against the action's own;
* the docs: a unit test holds the module's documented choices equal to the registry.

Actions of Nova's table without steps here yet (create, migrate, live_migrate, shelve,
evacuate, the volume actions, ...) are in the registry for the state table; a move
gets its steps (and, when it has options of its own, a module of its own).

Decisions
---------

* Instance actions are desired states where Ansible users expect them: start, stop,
  pause, unpause, suspend, resume, lock and unlock report no change when the instance
  is already there (vm_state and the domain's state both), without a check of Nova's
  table or the lock (nothing would be done); reboot and reboot_hard always run; delete
  of an instance that is not (or no longer) here reports no change. Anything else goes
  through Nova's table (:func:`check_action`): a refusal changes nothing, in check mode
  too.
* The power actions reach their domain state through the one power state machine
  (``DomainOps.reach``), the one the domain module uses.
* Every action holds the per-instance lock (``_record.instance_lock``, in the instances
  folder so that it holds across hosts that share it), as nova-compute serialises
  actions with ``@synchronized(instance.uuid)``.
* The record is saved (domain metadata and ``instance.json``) when the action begins
  (task_state set) and when it ends (vm_state, task_state None, the log entry closed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from typing import Callable

from ansible_collections.virtcloud.compute.plugins.module_utils._common import DEFAULT_INSTANCES_PATH, VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._domain import find_instance
from ansible_collections.virtcloud.compute.plugins.module_utils._domain_xml import (
    RESCUE_DISK,
    ROOT_DISK,
    build_domain,
    build_params,
    validate_path,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._guest import (
    ABSENT,
    PAUSED,
    RUNNING,
    SHUTOFF,
    SUSPENDED,
    DomainError,
    DomainOps,
    shutdown_schedule,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import base_path
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import (
    ANY,
    NO_TASK,
    RESULTS,
    ActionEntry,
    ActionRefused,
    Image,
    Instance,
    InstanceError,
    MAX_MESSAGE_LEN,
    TaskState,
    VmState,
    as_instance,
    check_power_state,
    check_task_state,
    check_text,
    check_image_fits,
    check_vm_state,
    set_lock,
    states_text,
    update_task_state,
    utcnow,
    validate_request_id,
    validate_timestamp,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import LibvirtError
from ansible_collections.virtcloud.compute.plugins.module_utils._record import (
    RecordError,
    instance_dir_of,
    instance_lock,
    write_xml_file,
)

IMAGE_FORMATS = ("qcow2", "raw")
SNAPSHOT_FORMAT = "qcow2"
# what a stop of a domain that is already off reports
ALREADY_OFF = {"clean": True, "acpi_presses": 0, "seconds": 0.0, "destroyed": False}


class ActionFailed(DomainError):
    """An instance action began and failed; ``record`` is the record as saved afterwards."""

    def __init__(self, message, record=None):
        super().__init__(message)
        self.record = record


# vm_state -> the observed domain state that goes with it (Nova's power-state sync)
VM_STATE_DOMAIN = {
    VmState.ACTIVE: RUNNING,
    VmState.STOPPED: SHUTOFF,
    VmState.PAUSED: PAUSED,
    VmState.SUSPENDED: SUSPENDED,
    VmState.RESCUED: RUNNING,
}


def vm_state_matches(vm_state, observed):
    """True when the domain's observed state is the one vm_state stands for."""
    return VM_STATE_DOMAIN.get(vm_state) == observed


# --------------------------------------------------------------------------- the action objects


@dataclasses.dataclass(frozen=True)
class ActionOption:
    """An option of ``instance_action`` that only some actions take."""

    name: str
    required: bool = False
    needs: str = ""  # what it is, for the message when a required one is missing


@dataclasses.dataclass
class Job:
    """One run of an action's steps: the domain (a step that defines it again replaces it) and what it was given."""

    action: InstanceAction
    ops: DomainOps
    dom: object
    inst: Instance
    idir: str
    args: ActionArgs
    plan: dict
    shutdown_timeout: int
    retry_interval: int
    timeout: int
    log: object = None

    def info(self, text: str) -> None:
        if self.log:
            self.log.info(text, instance=self.inst.uuid)

    def reach(self, wanted: str) -> dict:
        """Bring the domain to ``wanted`` with the power state machine; returns its details (power_off)."""
        _steps, details = self.ops.reach(
            self.dom,
            wanted,
            shutdown_timeout=self.shutdown_timeout,
            retry_interval=self.retry_interval,
            timeout=self.timeout,
            name=f"instance {self.inst.label()}",
        )
        return details


@dataclasses.dataclass(frozen=True)
class InstanceAction:
    """One Nova instance action: when it is allowed, where it leads, what it takes, what it does.

    ``vm_states``/``task_states``: the allowed values, None meaning any (Nova's
    ``check_instance_state(vm_state=None, task_state=None)``). ``vm_state``/``domain``:
    the vm_state and observed domain state after success (None: unchanged / not a power
    action). ``steps(job) -> dict`` (extra result keys; ``vm_state`` and ``message``
    go to the record) is None for an action of Nova's table that ``instance_action``
    does not offer yet.
    """

    name: str
    log_name: str
    vm_states: frozenset | None
    task_state: str | None = None
    task_states: frozenset | None = NO_TASK
    must_have_launched: bool = True
    lock_checked: bool = True
    launches: bool = False  # success sets launched_at (spawn, rebuild, finish_resize, unshelve)
    vm_state: str | None = None
    domain: str | None = None
    always: bool = False  # runs every time (reboots, snapshot, rebuild)
    options: tuple = ()
    needs_qemu_img: bool = False
    removes: bool = False  # the domain is gone afterwards (delete)
    locks: bool | None = None  # True lock, False unlock: a desired lock state, logged without a task state
    prepare: Callable | None = None  # prepare(action, inst, idir, args, check_mode) -> plan; raises to refuse
    steps: Callable | None = None

    @property
    def offered(self) -> bool:
        """True when ``instance_action`` runs this action (it has steps)."""
        return self.steps is not None

    def option(self, name: str) -> ActionOption | None:
        for option in self.options:
            if option.name == name:
                return option
        return None

    def planned(self, inst: Instance) -> tuple:
        """(vm_state, domain state) a successful run leaves, for check mode; (None, None) when unchanged."""
        if self.name == "rebuild":  # Nova powers a stopped instance off again at the end
            return (VmState.STOPPED, SHUTOFF) if inst.vm_state == VmState.STOPPED else (VmState.ACTIVE, RUNNING)
        return self.vm_state, self.domain


# --------------------------------------------------------------------------- the steps


def _reach_target(job: Job) -> dict:
    """pause, unpause, suspend, resume: the power state machine to the action's domain state."""
    job.reach(job.action.domain)
    return {}


def _start(job: Job) -> dict:
    """Nova's power_on (a hard reboot underneath): a stale managed save is dropped, then the guest boots."""
    job.ops.discard_managed_save(job.dom)
    job.reach(RUNNING)
    return {}


def _stop(job: Job) -> dict:
    """Nova's power_off: a paused guest is resumed first (it cannot take the ACPI press), then the clean shutdown."""
    details = job.reach(SHUTOFF)
    return {"power_off": details.get("power_off", dict(ALREADY_OFF))}


def _reboot(job: Job) -> dict:
    return {"reboot": job.ops.soft_reboot(job.dom, job.shutdown_timeout, job.retry_interval, job.timeout)}


def _reboot_hard(job: Job) -> dict:
    return {"reboot": job.ops.hard_reboot(job.dom, job.timeout)}


def _lock(job: Job, request_id: str, reason: str | None) -> None:
    """lock, unlock: Nova's lock (``nova lock --reason``), its own action log entry."""
    locked = job.action.locks
    set_lock(job.inst, locked, request_id, reason=reason)
    job.ops.save_record(job.dom, job.inst, job.idir)
    job.info(("locked" if locked else "unlocked") + (f" ({reason})" if reason else ""))


def _delete(job: Job) -> dict:
    """Nova's terminate on the host: destroy (no clean shutdown), remove the instance directory, undefine.

    The directory goes before the undefine, so that a delete that fails half way leaves
    the domain (and its record) to run the delete again. Base images are not touched:
    the root disk is an overlay, only the files in the instance directory go.
    """
    job.ops.destroy(job.dom, job.timeout)
    if os.path.islink(job.idir):
        raise DomainError(f"{job.idir} is a symbolic link, not an instance directory: remove it by hand after checking it")
    if os.path.isdir(job.idir):
        shutil.rmtree(job.idir)
        job.info(f"delete: removed {job.idir}")
    job.ops.undefine(job.dom)
    return {"ports": [p.to_dict() for p in job.inst.ports], "instance_dir_removed": job.idir}


def _prepare_snapshot(action: InstanceAction, inst: Instance, idir: str, args: ActionArgs, check_mode: bool = False) -> dict:
    """The snapshot file must not exist, its folder must (except in check mode), the root disk too."""
    del action
    root = f"{idir}/{ROOT_DISK}"
    path = args.snapshot_path
    if os.path.lexists(path):
        raise DomainError(f"cannot snapshot instance {inst.label()} to {path}: the file exists; remove it or give another snapshot_path")
    if not os.path.isdir(os.path.dirname(path)) and not check_mode:  # a check run of the workflow made no folder
        raise DomainError(f"cannot snapshot instance {inst.label()} to {path}: the folder {os.path.dirname(path)} does not exist")
    if not os.path.isfile(root):
        raise DomainError(f"cannot snapshot instance {inst.label()}: its root disk {root} does not exist")
    return {"snapshot": {"path": path, "format": SNAPSHOT_FORMAT, "image": inst.image.to_dict()}}


def _prepare_image(action: InstanceAction, inst: Instance, idir: str, args: ActionArgs, check_mode: bool = False) -> dict:
    """rebuild, rescue: the image's base must be in this host's cache and readable (and, for rebuild, fit the flavor)."""
    del idir
    name = action.name
    image = args.image if args.image is not None else inst.image
    try:
        base = args.base(image)
    except VirtcloudError:
        raise DomainError(f"cannot {name} instance {inst.label()}: image id {image.id} is not an image store id (a uuid)") from None
    if not os.path.isfile(base):
        if check_mode:
            # a check-mode run of the workflow did not fill the cache: plan without the image's size
            if name == "rebuild":
                check_image_fits(inst, image, 0)
            return {"image": image.to_dict(), "base": base, "virtual_size": None}
        raise DomainError(
            f"cannot {name} instance {inst.label()}: image {image.id} is not in this host's image cache "
            f"({base}); fill the cache first (virtcloud.compute.image_cache)"
        )
    try:
        virtual_size = args.qemu_img.info(base, args.image_format, force_share=False)["virtual_size"]
    except VirtcloudError as exc:
        raise DomainError(f"cannot {name} instance {inst.label()}: the cached image {base} cannot be read as {args.image_format}: {exc}") from None
    if name == "rebuild":
        check_image_fits(inst, image, virtual_size)
    return {"image": image.to_dict(), "base": base, "virtual_size": virtual_size}


def _stop_for_disk_change(job: Job) -> None:
    """Nova's ``_power_off_instance`` then ``destroy``: a clean shutdown of a running guest, the rest destroyed."""
    observed = job.ops.observe(job.dom)
    if observed in (RUNNING, PAUSED):
        job.reach(SHUTOFF)  # a paused guest is resumed first, to take the ACPI press
    job.ops.destroy(job.dom, job.timeout)
    job.ops.discard_managed_save(job.dom)


def _redefine(job: Job, params: dict, rescue: bool) -> None:
    xml = build_domain(job.inst, instance_dir=job.idir, rescue=rescue, **params)
    job.dom = job.ops.define(xml)
    write_xml_file(job.idir, xml)


def _new_overlay(qemu_img, path, base, base_format, size=None):
    """A fresh qcow2 overlay at ``path`` (made beside it, then moved in place)."""
    part = path + ".part"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)
    try:
        qemu_img.create_overlay(part, base, base_format, size)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise


def _snapshot(job: Job) -> dict:
    """Nova's cold snapshot as in the seeds: pause, qemu-img convert, resume.

    A running guest is paused (QEMU drains and flushes its disks when it stops the vCPUs),
    its root disk with the whole backing chain is converted into a standalone qcow2 with
    ``--force-share`` (QEMU keeps the image open), and the guest is resumed: its memory and
    its uptime go on. A stopped or suspended instance has no QEMU holding the disk.
    """
    ops, dom, args = job.ops, job.dom, job.args
    path = args.snapshot_path
    part = path + ".part"
    observed = ops.observe(dom)
    paused_here = observed == RUNNING
    update_task_state(job.inst, TaskState.IMAGE_SNAPSHOT, expected_task_state=[TaskState.IMAGE_SNAPSHOT_PENDING])
    if paused_here:
        ops.pause(dom, job.timeout)
        job.info("snapshot: guest paused")
    try:
        args.qemu_img.convert(f"{job.idir}/{ROOT_DISK}", "qcow2", part, SNAPSHOT_FORMAT, force_share=observed in (RUNNING, PAUSED))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    finally:
        if paused_here:
            ops.resume(dom, job.timeout)
            job.info("snapshot: guest resumed")
    os.replace(part, path)
    update_task_state(job.inst, TaskState.IMAGE_PENDING_UPLOAD, expected_task_state=[TaskState.IMAGE_SNAPSHOT])
    info = args.qemu_img.info(path, SNAPSHOT_FORMAT, force_share=False)
    snapshot = dict(job.plan["snapshot"], size=os.stat(path).st_size, virtual_size=info["virtual_size"], paused=paused_here)
    job.info(f"snapshot: root disk extracted to {path} ({snapshot['size']} bytes)")
    return {"snapshot": snapshot, "message": f"extracted to {path}"}


def _rebuild(job: Job) -> dict:
    """Nova's rebuild: power off, a new root disk from the image, the same domain started again.

    Same uuid, flavor, ports (MAC and IP), config drive and definition; the record's image is
    the new one. An instance that was stopped stays stopped (Nova powers it off again).
    """
    inst, plan = job.inst, job.plan
    params = build_params(job.ops.inactive_xml(job.dom), inst)
    was_stopped = inst.vm_state == VmState.STOPPED
    _stop_for_disk_change(job)
    update_task_state(inst, TaskState.REBUILD_SPAWNING, expected_task_state=[TaskState.REBUILDING])
    flavor_size = inst.flavor.disk_gb * 1024**3
    size = max(flavor_size, plan["virtual_size"]) if flavor_size else None
    _new_overlay(job.args.qemu_img, f"{job.idir}/{ROOT_DISK}", plan["base"], job.args.image_format, size)
    old_image = inst.image.id
    inst.image = Image.from_dict(plan["image"])
    _redefine(job, params, rescue=False)
    job.info(f"rebuild: new root disk on image {inst.image.id} (was {old_image})")
    if not was_stopped:
        job.ops.start(job.dom, job.timeout)
    return {
        "vm_state": VmState.STOPPED if was_stopped else VmState.ACTIVE,
        "image": plan["image"],
        "message": f"rebuilt from image {inst.image.id} (was {old_image})",
    }


def _rescue(job: Job) -> dict:
    """Nova's rescue: power off, boot ``disk.rescue`` (an overlay on the rescue image) as vda
    with the instance's own disk as vdb and the config drive last."""
    plan = job.plan
    params = build_params(job.ops.inactive_xml(job.dom), job.inst)
    _stop_for_disk_change(job)
    _new_overlay(job.args.qemu_img, f"{job.idir}/{RESCUE_DISK}", plan["base"], job.args.image_format)
    _redefine(job, params, rescue=True)
    job.ops.start(job.dom, job.timeout)
    job.info(f"rescue: booted rescue image {plan['image']['id']}")
    return {"image": plan["image"], "message": f"rescue image {plan['image']['id']}"}


def _unrescue(job: Job) -> dict:
    """Nova's unrescue: destroy the rescue guest, define the instance's own layout, drop
    ``disk.rescue``, boot the original disk again."""
    params = build_params(job.ops.inactive_xml(job.dom), job.inst)
    job.ops.destroy(job.dom, job.timeout)
    _redefine(job, params, rescue=False)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{job.idir}/{RESCUE_DISK}")
    job.ops.start(job.dom, job.timeout)
    job.info("unrescue: booted the instance's own disk")
    return {}


# --------------------------------------------------------------------------- the registry

_V = VmState
_T = TaskState
_VOLUME_STATES = (_V.ACTIVE, _V.PAUSED, _V.STOPPED, _V.RESIZED, _V.SOFT_DELETED, _V.SHELVED, _V.SHELVED_OFFLOADED)
REASON = ActionOption("reason")
IMAGE = ActionOption("image")
IMAGE_REQUIRED = ActionOption("image", required=True, needs="the image ({id, properties}) to rebuild the instance from")
SNAPSHOT_PATH = ActionOption("snapshot_path", required=True, needs="the file to write the snapshot to")
# the options only some actions take (the others every action takes)
ACTION_OPTIONS = ("reason", "image", "snapshot_path")


def _action(name, vm_states, log_name, task_state=None, **kwargs) -> InstanceAction:
    return InstanceAction(name, log_name, None if vm_states is ANY else frozenset(vm_states), task_state, **kwargs)


# Nova's table checked against nova/compute/api.py (Victoria..2023.x): the decorators of each
# API call. First the actions instance_action offers, in the order of its documentation.
REGISTRY = {
    action.name: action
    for action in (
        _action("start", (_V.STOPPED,), "start", _T.POWERING_ON, vm_state=_V.ACTIVE, domain=RUNNING, steps=_start),
        _action("stop", (_V.ACTIVE, _V.ERROR), "stop", _T.POWERING_OFF, vm_state=_V.STOPPED, domain=SHUTOFF, steps=_stop),
        _action("reboot", _V.ALLOW_SOFT_REBOOT, "reboot", _T.REBOOTING, vm_state=_V.ACTIVE, domain=RUNNING, always=True, steps=_reboot),
        _action(
            "reboot_hard",
            _V.ALLOW_HARD_REBOOT,
            "reboot",
            _T.REBOOTING_HARD,
            task_states=frozenset(_T.ALLOW_REBOOT),
            vm_state=_V.ACTIVE,
            domain=RUNNING,
            always=True,
            steps=_reboot_hard,
        ),
        _action("pause", (_V.ACTIVE,), "pause", _T.PAUSING, vm_state=_V.PAUSED, domain=PAUSED, steps=_reach_target),
        _action("unpause", (_V.PAUSED,), "unpause", _T.UNPAUSING, vm_state=_V.ACTIVE, domain=RUNNING, steps=_reach_target),
        _action("suspend", (_V.ACTIVE,), "suspend", _T.SUSPENDING, vm_state=_V.SUSPENDED, domain=SUSPENDED, steps=_reach_target),
        _action("resume", (_V.SUSPENDED,), "resume", _T.RESUMING, vm_state=_V.ACTIVE, domain=RUNNING, steps=_reach_target),
        _action("lock", ANY, "lock", task_states=ANY, must_have_launched=False, lock_checked=False, options=(REASON,), locks=True, steps=_lock),
        _action("unlock", ANY, "unlock", task_states=ANY, must_have_launched=False, lock_checked=False, locks=False, steps=_lock),
        _action(
            "delete", ANY, "delete", _T.DELETING, task_states=ANY, must_have_launched=False, vm_state=_V.DELETED, domain=ABSENT, removes=True, steps=_delete
        ),
        _action(
            "snapshot",
            (_V.ACTIVE, _V.STOPPED, _V.PAUSED, _V.SUSPENDED),
            "createImage",
            _T.IMAGE_SNAPSHOT_PENDING,
            always=True,
            options=(SNAPSHOT_PATH,),
            needs_qemu_img=True,
            prepare=_prepare_snapshot,
            steps=_snapshot,
        ),
        _action(
            "rebuild",
            (_V.ACTIVE, _V.STOPPED, _V.ERROR),
            "rebuild",
            _T.REBUILDING,
            launches=True,
            always=True,
            options=(IMAGE_REQUIRED,),
            needs_qemu_img=True,
            prepare=_prepare_image,
            steps=_rebuild,
        ),
        _action(
            "rescue",
            (_V.ACTIVE, _V.STOPPED, _V.ERROR),
            "rescue",
            _T.RESCUING,
            vm_state=_V.RESCUED,
            domain=RUNNING,
            options=(IMAGE,),
            needs_qemu_img=True,
            prepare=_prepare_image,
            steps=_rescue,
        ),
        _action("unrescue", (_V.RESCUED,), "unrescue", _T.UNRESCUING, vm_state=_V.ACTIVE, domain=RUNNING, steps=_unrescue),
        # Nova's table, no steps here yet
        # create: the build itself (not an API-decorated call): only while building
        _action("create", (_V.BUILDING,), "create", _T.SCHEDULING, task_states=ANY, must_have_launched=False, lock_checked=False, launches=True),
        _action("backup", (_V.ACTIVE, _V.STOPPED, _V.PAUSED, _V.SUSPENDED), "createBackup", _T.IMAGE_BACKUP),
        _action("evacuate", (_V.ACTIVE, _V.STOPPED, _V.ERROR), "evacuate", _T.REBUILDING, launches=True),
        _action("shelve", (_V.ACTIVE, _V.STOPPED, _V.PAUSED, _V.SUSPENDED), "shelve", _T.SHELVING),
        _action("shelve_offload", (_V.SHELVED,), "shelveOffload", _T.SHELVING_OFFLOADING),
        _action("unshelve", (_V.SHELVED, _V.SHELVED_OFFLOADED), "unshelve", _T.UNSHELVING, launches=True),
        _action("resize", (_V.ACTIVE, _V.STOPPED), "resize", _T.RESIZE_PREP, launches=True),
        _action("migrate", (_V.ACTIVE, _V.STOPPED), "migrate", _T.RESIZE_PREP, launches=True),
        _action("confirm_resize", (_V.RESIZED,), "confirmResize", _T.RESIZE_CONFIRMING),
        _action("revert_resize", (_V.RESIZED,), "revertResize", _T.RESIZE_REVERTING),
        _action("live_migrate", (_V.ACTIVE, _V.PAUSED), "live-migration", _T.MIGRATING),
        _action("force_delete", ANY, "delete", _T.DELETING, task_states=ANY, must_have_launched=False),
        _action("soft_delete", ANY, "delete", _T.SOFT_DELETING, task_states=ANY),
        _action("restore", (_V.SOFT_DELETED,), "restore", _T.RESTORING),
        _action("attach_volume", _VOLUME_STATES, "attach_volume"),
        _action("detach_volume", _VOLUME_STATES, "detach_volume"),
        _action("attach_interface", (_V.ACTIVE, _V.PAUSED, _V.STOPPED), "attach_interface"),
        _action("detach_interface", (_V.ACTIVE, _V.PAUSED, _V.STOPPED), "detach_interface"),
    )
}
# the actions instance_action runs (its choices for action)
INSTANCE_ACTIONS = tuple(name for name, action in REGISTRY.items() if action.offered)


def get_action(name) -> InstanceAction:
    """The action of the registry with this name; InstanceError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise InstanceError(f"unknown action {name!r}; known actions: {', '.join(sorted(REGISTRY))}") from None


def required_if() -> list:
    """``AnsibleModule(required_if=...)`` of instance_action: the options an action requires."""
    return [("action", action.name, [o.name for o in action.options if o.required]) for action in REGISTRY.values() if any(o.required for o in action.options)]


# --------------------------------------------------------------------------- the state table


def check_action(record, action: str, *, is_admin: bool = False) -> None:
    """Raise :class:`ActionRefused` unless Nova's table allows ``action`` now.

    The checks run in Nova's order: the lock (``@check_instance_lock``, which an admin
    passes), then vm_state, task_state and launched_at (``@check_instance_state``).
    """
    inst = as_instance(record)
    rule = get_action(action)
    state = inst.vm_state if inst.task_state is None else f"{inst.vm_state} with task {inst.task_state} in progress"
    details = {"action": action, "uuid": inst.uuid, "name": inst.name, "vm_state": inst.vm_state, "task_state": inst.task_state}
    if rule.lock_checked and inst.locked and not is_admin:
        reason = f"reason: {inst.locked_reason}" if inst.locked_reason else "no reason given"
        raise ActionRefused(f"Cannot {action} instance {inst.label()}: it is locked ({reason}); unlock it first", reason="locked", **details)
    if rule.vm_states is not None and inst.vm_state not in rule.vm_states:
        raise ActionRefused(
            f"Cannot {action} instance {inst.label()} while it is {state}: {action} needs vm_state {states_text(rule.vm_states)}", reason="vm_state", **details
        )
    if rule.task_states is not None and inst.task_state not in rule.task_states:
        needs = "no task in progress (task_state None)" if rule.task_states == NO_TASK else f"task_state {states_text(rule.task_states)}"
        raise ActionRefused(f"Cannot {action} instance {inst.label()} while it is {state}: {action} needs {needs}", reason="task_state", **details)
    if rule.must_have_launched and not inst.launched_at:
        raise ActionRefused(
            f"Cannot {action} instance {inst.label()} while it is {state}: it has never been launched (launched_at is empty)", reason="not_launched", **details
        )


def is_allowed(record, action: str, *, is_admin: bool = False) -> bool:
    try:
        check_action(record, action, is_admin=is_admin)
    except ActionRefused:
        return False
    return True


def allowed_actions(record, *, is_admin: bool = False) -> list:
    """The actions Nova's table allows now, sorted."""
    inst = as_instance(record)
    return [action for action in sorted(REGISTRY) if is_allowed(inst, action, is_admin=is_admin)]


def begin_action(record, action, request_id, task_state=None, *, is_admin=False, now=None):
    """Check the action, then set the task state and open an action log entry.

    ``task_state`` defaults to the action's own (``pausing`` for pause, ...).
    A refused action raises :class:`ActionRefused` and leaves the record unchanged.
    Changes ``record`` (an :class:`Instance`) in place and returns it.
    """
    if not isinstance(record, Instance):
        raise InstanceError("begin_action needs an Instance record; build one with Instance.from_dict()")
    check_action(record, action, is_admin=is_admin)
    rule = REGISTRY[action]
    request_id = validate_request_id(request_id)
    new_task = check_task_state(rule.task_state if task_state is None else task_state)
    now = utcnow() if now is None else validate_timestamp(now)
    record.task_state = new_task
    record.updated_at = now
    record.actions.append(ActionEntry(action=rule.log_name, request_id=request_id, start_time=now))
    return record


def finish_action(record, action, request_id, *, vm_state=None, task_state=None, power_state=None, result="Success", message=None, now=None):
    """Close the action's open log entry and set the states it ended in.

    ``vm_state``/``power_state`` None leave them as they are; ``task_state`` is set
    (None: no task in progress). ``result`` is 'Success' or 'Error'.
    """
    if not isinstance(record, Instance):
        raise InstanceError("finish_action needs an Instance record")
    rule = get_action(action)
    request_id = validate_request_id(request_id)
    if result not in RESULTS:
        raise InstanceError(f"result {result!r} must be 'Success' or 'Error'")
    if message is not None:
        check_text(message, "action message", MAX_MESSAGE_LEN, multiline=True)
    new_vm = record.vm_state if vm_state is None else check_vm_state(vm_state)
    new_task = check_task_state(task_state)
    new_power = record.power_state if power_state is None else check_power_state(power_state)
    now = utcnow() if now is None else validate_timestamp(now)
    for entry in reversed(record.actions):
        if entry.action == rule.log_name and entry.request_id == request_id and entry.finish_time is None:
            break
    else:
        raise InstanceError(
            f"instance {record.label()} has no open {rule.log_name} action for request {request_id}: call begin_action first (with the same request id)"
        )
    entry.finish_time = now
    entry.result = result
    entry.message = message
    record.vm_state = new_vm
    record.task_state = new_task
    record.power_state = new_power
    record.updated_at = now
    if result == "Success" and rule.launches and new_vm == VmState.ACTIVE:
        record.launched_at = now
    return record


def action_decision(record, action, observed):
    """'noop' when the instance is already where the action leads, 'run' when it must run.

    Raises ``ActionRefused`` (from Nova's table or the lock) when it may not run.
    ``record`` None means the instance is not on this host (only delete accepts that).
    """
    if action not in INSTANCE_ACTIONS:
        raise DomainError(f"action {action!r} is not one of {', '.join(INSTANCE_ACTIONS)}")
    target = REGISTRY[action]
    if record is None:
        if target.removes:
            return "noop"
        raise DomainError(f"cannot {action}: no such instance on this host")
    inst = as_instance(record)
    if target.locks is not None:
        return "noop" if inst.locked == target.locks else "run"
    if not target.always and target.domain is not None and inst.vm_state == target.vm_state and inst.task_state is None and observed == target.domain:
        return "noop"
    check_action(inst, action)
    return "run"


def vm_state_after_failure(before_vm_state, target, observed):
    """vm_state after an action that failed: kept when the domain is where it was, the
    target when it got there anyway, error when it is anywhere else (Nova's instance fault)."""
    if vm_state_matches(before_vm_state, observed):
        return before_vm_state
    if target is not None and target.vm_state is not None and target.domain == observed:
        return target.vm_state
    return VmState.ERROR


# --------------------------------------------------------------------------- the module backend


@dataclasses.dataclass
class ActionArgs:
    """What the actions with options of their own (snapshot, rebuild, rescue, unrescue) are given."""

    instances_path: str
    image: Image | None
    image_format: str
    snapshot_path: str | None
    qemu_img: object

    def base(self, image):
        """The cached base of ``image`` on this host."""
        return base_path(self.instances_path, image.id)


def _image(value):
    try:
        return Image.from_dict(value)
    except InstanceError as exc:
        raise DomainError(f"image is not valid: {exc}") from None


def check_options(action: InstanceAction, given: dict) -> None:
    """Refuse an option the action does not take, and a missing one it requires (from the registry)."""
    for name in ACTION_OPTIONS:
        option = action.option(name)
        if given.get(name) is not None and option is None:
            takers = [a.name for a in REGISTRY.values() if a.option(name) is not None]
            where = f"action={takers[0]}" if len(takers) == 1 else f"action {' or '.join(takers)}"
            raise DomainError(f"{name} is only used with {where}, not action={action.name}")
        if given.get(name) is None and option is not None and option.required:
            raise DomainError(f"action={action.name} needs {name}: {option.needs}")


def run_instance_action(
    conn,
    *,
    instance,
    action,
    request_id,
    instances_path=DEFAULT_INSTANCES_PATH,
    reason=None,
    shutdown_timeout=60,
    retry_interval=10,
    timeout=120,
    check_mode=False,
    log=None,
    ops=None,
    lock_dir=None,
    image=None,
    image_format="qcow2",
    snapshot_path=None,
    qemu_img=None,
):
    """Carry out a Nova action on an existing instance on this host; returns the module result.

    ``image`` ({id, properties}) is the image of a rebuild (required) or a rescue (default:
    the instance's own image); its base must be in the host's image cache
    (``<instances_path>/_base/<sha1 of the id>``, format ``image_format``).
    ``snapshot_path`` is the file a snapshot writes (qcow2, must not exist).
    ``qemu_img`` (a ``_qemu_img.QemuImg``) is needed by snapshot, rebuild and rescue.
    ``lock_dir`` (default ``<instances_path>/.locks``) holds the instance locks.
    """
    if action not in INSTANCE_ACTIONS:
        raise DomainError(f"action {action!r} is not one of {', '.join(INSTANCE_ACTIONS)}")
    target = REGISTRY[action]
    check_options(target, {"reason": reason, "image": image, "snapshot_path": snapshot_path})
    if image_format not in IMAGE_FORMATS:
        raise DomainError(f"image_format {image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")
    if snapshot_path is not None:
        validate_path(snapshot_path, "snapshot_path")
    if target.needs_qemu_img and qemu_img is None:
        raise DomainError(f"action={action} needs a qemu-img runner")
    image = None if image is None else _image(image)
    shutdown_schedule(shutdown_timeout, retry_interval)
    validate_path(instances_path, "instances_path")
    ops = ops or DomainOps(conn)
    dom, inst = find_instance(conn, instance, ops)
    if inst is None:
        if target.removes:
            return {
                "changed": False,
                "action": action,
                "instance": None,
                "ports": [],
                "state": ABSENT,
                "msg": f"instance {instance} is not on this host: nothing to delete",
            }
        raise DomainError(f"cannot {action} instance {instance}: there is no such instance on this host (instance_info lists the instances of a host)")
    args = ActionArgs(instances_path, image, image_format, snapshot_path, qemu_img)
    with instance_lock(instances_path, inst.uuid, timeout, lock_dir=lock_dir):
        dom, inst = find_instance(conn, inst.uuid, ops)  # again, under the lock
        if inst is None:
            if target.removes:
                return {"changed": False, "action": action, "instance": None, "ports": [], "state": ABSENT, "msg": f"instance {instance} was deleted meanwhile"}
            raise DomainError(f"cannot {action} instance {instance}: it was deleted meanwhile")
        job = Job(target, ops, dom, inst, instance_dir_of(instances_path, inst.uuid), args, {}, shutdown_timeout, retry_interval, timeout, log)
        return _run_locked(job, request_id=request_id, reason=reason, check_mode=check_mode)


def _result(inst, action, changed, observed, **extra):
    result = {
        "changed": changed,
        "action": action,
        "uuid": inst.uuid,
        "name": inst.name,
        "vm_state": inst.vm_state,
        "task_state": inst.task_state,
        "state": observed,
        "instance": inst.to_dict(),
    }
    result.update(extra)
    return result


def _power(ops, uuid):
    dom = ops.lookup(uuid)
    return 0 if dom is None else ops.power_state(dom)


def _run_locked(job: Job, *, request_id: str, reason: str | None, check_mode: bool) -> dict:
    ops, inst, target = job.ops, job.inst, job.action
    action = target.name
    observed = ops.observe(job.dom)
    if action_decision(inst, action, observed) == "noop":
        return _result(inst, action, False, observed)
    if target.prepare is not None:
        job.plan = target.prepare(target, inst, job.idir, job.args, check_mode)
    if check_mode:
        result = _result(inst, action, True, observed, **job.plan)
        vm_state, domain = target.planned(inst)
        if vm_state is not None:
            result["vm_state"] = vm_state
            result["state"] = domain
        if target.removes:
            result["ports"] = [p.to_dict() for p in inst.ports]
        return result
    if target.locks is not None:
        target.steps(job, request_id, reason)
        return _result(inst, action, True, observed)

    before_vm_state = inst.vm_state
    begin_action(inst, action, request_id)
    ops.save_record(job.dom, inst, job.idir)
    job.info(f"{action}: begins (vm_state {before_vm_state}, task_state {inst.task_state})")
    try:
        extra = target.steps(job)
    except (VirtcloudError, LibvirtError, OSError) as exc:
        text = f"{action} of instance {inst.label()} failed: {exc}"
        after = ops.observe(ops.lookup(inst.uuid))
        vm_state = vm_state_after_failure(before_vm_state, target, after)
        finish_action(inst, action, request_id, vm_state=vm_state, task_state=None, power_state=_power(ops, inst.uuid), result="Error", message=text[:4000])
        if after != ABSENT:
            with contextlib.suppress(DomainError, LibvirtError, RecordError):
                ops.save_record(ops.lookup(inst.uuid), inst, job.idir)
        if job.log:
            job.log.error(f"{text}; vm_state is now {vm_state} (domain {after})", instance=inst.uuid)
        raise ActionFailed(f"{text} (vm_state is now {vm_state}, the domain is {after})", record=inst.to_dict()) from None
    after = ABSENT if target.removes else ops.observe(job.dom)
    finish_action(
        inst,
        action,
        request_id,
        vm_state=extra.pop("vm_state", target.vm_state),
        task_state=None,
        power_state=0 if target.removes else _power(ops, inst.uuid),
        message=extra.pop("message", None),
    )
    if not target.removes:
        ops.save_record(job.dom, inst, job.idir)
    job.info(f"{action}: done (vm_state {inst.vm_state}, domain {after})")
    return _result(inst, action, True, after, **extra)
