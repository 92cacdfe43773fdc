# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The libvirt guest primitives and the one power state machine (private).

Nova keeps the thin libvirt wrapper in ``nova/virt/libvirt/guest.py`` and the workflows
in the driver; so does this collection: this module is the wrapper, ``_actions`` (the
instance actions) and ``_domain`` (the domain module's ``ensure_domain``) compose it.

* **Observed states** (pure): :func:`observed_state`, the domain's state in this
  collection's words (``suspended`` is a shut-off domain with a managed save image).
* **The power state machine** (pure planning, one driver): :func:`next_step`,
  :func:`plan_steps` (check mode shows these) and :meth:`DomainOps.reach`, which runs
  the steps and plans again from the real state after each one. The domain module
  (``state=``) and the power actions of ``instance_action`` (start, stop, pause,
  unpause, suspend, resume) both use it.
* **Primitives** (:class:`DomainOps`): lookup, define, undefine, start, pause, resume,
  managed save, destroy, power off with the ACPI retry, soft and hard reboot, the record
  in ``<metadata>``, job info, abort and migrate; each waits for the libvirt state it
  leads to, with a timeout.

Decisions
---------

* **Clean shutdown** is Nova's ``_clean_shutdown``: the ACPI power button
  (``VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN``), pressed again every ``retry_interval``
  seconds (a guest that was still booting missed the first press), the state read
  every half second, and a destroy when ``shutdown_timeout`` has passed.
  Presses at 0, 10, 20, ... 50 s for 60/10 (Nova's countdown presses every
  ``retry_interval + 1`` s: 0, 10, 21, 32, ...). A timeout of 0 destroys at once, as
  Nova does when ``clean_shutdown`` is false.
* **Soft reboot** is Nova's ``_soft_reboot``: ACPI power button (re-sent like a
  shutdown), and when the guest has powered off, start it again (the domain's
  ``on_poweroff`` is destroy, so a guest that shuts down stays off until started).
  A guest that reboots by itself (new domain id, running) is done too. When
  ``shutdown_timeout`` passes first: hard reboot. **Hard reboot** is Nova's
  ``_hard_reboot`` without the XML regeneration (the domain module defines the XML):
  destroy, drop a managed save image (its memory is discarded, as in Nova), start.
* **Suspend** is libvirt's managed save (the guest's memory on disk, the domain shut
  off); a start restores it. **Pause** is libvirt's suspend (vCPUs stopped, memory
  kept in the QEMU process).
* The state machine reaches a state by steps from the observed one (:data:`_NEXT`):
  paused to shutoff resumes first so that the guest can take the ACPI press;
  suspended to shutoff restores first and then shuts down cleanly (the guest's memory
  is not thrown away without the guest knowing); shut off to suspended is refused (a
  managed save needs a running guest); a paused domain is started with
  ``VIR_DOMAIN_START_PAUSED``; a domain restored from a managed save that comes back
  paused is resumed when running is wanted.
* The **record** is authoritative in the persistent (inactive) domain XML.
  :meth:`DomainOps.save_record` updates it with ``setMetadata`` (live and persistent
  for a running domain, so no redefine and no restart) and rewrites ``instance.json``.
* **Migration**: :meth:`DomainOps.migrate` is libvirt's ``migrateToURI3`` (it returns
  when the migration has ended); a caller that watches it reads :meth:`DomainOps.job_info`
  from another connection and stops it with :meth:`DomainOps.abort_job`, as Nova's
  ``_live_migration_monitor`` does.
"""

from __future__ import annotations

import os
import time

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._domain_xml import (
    NS,
    domain_name,
    is_rescue,
    read_instance,
    record_element_xml,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import power_state_from_libvirt
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import (
    STATE_ABSENT,
    VIR_DOMAIN_AFFECT_CONFIG,
    VIR_DOMAIN_AFFECT_LIVE,
    VIR_DOMAIN_BLOCKED,
    VIR_DOMAIN_CRASHED,
    VIR_DOMAIN_METADATA_ELEMENT,
    VIR_DOMAIN_NOSTATE,
    VIR_DOMAIN_PAUSED,
    VIR_DOMAIN_PMSUSPENDED,
    VIR_DOMAIN_RUNNING,
    VIR_DOMAIN_SHUTDOWN,
    VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
    VIR_DOMAIN_SHUTOFF,
    VIR_DOMAIN_START_PAUSED,
    VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
    VIR_DOMAIN_UNDEFINE_NVRAM,
    VIR_DOMAIN_XML_INACTIVE,
    VIR_ERR_OPERATION_INVALID,
    LibvirtError,
    WaitTimeout,
    domain_state,
    libvirt_errors,
    lookup_domain,
    wait_for_state,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._record import write_record_file

POLL_INTERVAL = 0.5
MAX_STEPS = 6
# virDomainJobType, as jobStats() reports it in "type"
JOB_TYPES = {0: "none", 1: "bounded", 2: "unbounded", 3: "completed", 4: "failed", 5: "cancelled"}
VIR_DOMAIN_JOB_STATS_COMPLETED = 1


class DomainError(VirtcloudError):
    """A domain operation failed or cannot be done; the message says why and what to do."""


# --------------------------------------------------------------------------- observed states (pure)

ABSENT = "absent"
SHUTOFF = "shutoff"
RUNNING = "running"
PAUSED = "paused"
SUSPENDED = "suspended"
IN_SHUTDOWN = "in_shutdown"
CRASHED = "crashed"
PMSUSPENDED = "pmsuspended"
NOSTATE = "nostate"
WANTED_STATES = ("present", RUNNING, SHUTOFF, PAUSED, SUSPENDED, ABSENT)

_OBSERVED = {
    VIR_DOMAIN_NOSTATE: NOSTATE,
    VIR_DOMAIN_RUNNING: RUNNING,
    VIR_DOMAIN_BLOCKED: RUNNING,
    VIR_DOMAIN_PAUSED: PAUSED,
    VIR_DOMAIN_SHUTDOWN: IN_SHUTDOWN,
    VIR_DOMAIN_SHUTOFF: SHUTOFF,
    VIR_DOMAIN_CRASHED: CRASHED,
    VIR_DOMAIN_PMSUSPENDED: PMSUSPENDED,
}


def observed_state(libvirt_state, has_managed_save=False):
    """The domain's state in this collection's words, from libvirt's state number.

    ``suspended`` is a shut-off domain with a managed save image; ``absent`` is
    ``_libvirt.STATE_ABSENT`` (not defined).
    """
    if libvirt_state == STATE_ABSENT:
        return ABSENT
    if isinstance(libvirt_state, bool) or libvirt_state not in _OBSERVED:
        raise DomainError(f"libvirt domain state {libvirt_state!r} is not one of libvirt's states 0..7")
    name = _OBSERVED[libvirt_state]
    if name == SHUTOFF and has_managed_save:
        return SUSPENDED
    return name


# --------------------------------------------------------------------------- steps (pure)

# The next step from an observed state (key) towards a wanted state; missing: refused.
_NEXT = {
    "present": {ABSENT: "define"},
    RUNNING: {ABSENT: "define", SHUTOFF: "start", SUSPENDED: "start", PAUSED: "resume", IN_SHUTDOWN: "wait_shutoff", CRASHED: "destroy", PMSUSPENDED: "wakeup"},
    SHUTOFF: {ABSENT: "define", RUNNING: "shutdown", PAUSED: "resume", SUSPENDED: "start", IN_SHUTDOWN: "shutdown", CRASHED: "destroy", PMSUSPENDED: "wakeup"},
    PAUSED: {
        ABSENT: "define",
        SHUTOFF: "start_paused",
        SUSPENDED: "start_paused",
        RUNNING: "pause",
        IN_SHUTDOWN: "wait_shutoff",
        CRASHED: "destroy",
        PMSUSPENDED: "wakeup",
    },
    SUSPENDED: {ABSENT: "define", RUNNING: "managed_save", PAUSED: "managed_save", PMSUSPENDED: "wakeup"},
    ABSENT: {
        SHUTOFF: "undefine",
        SUSPENDED: "undefine",
        RUNNING: "destroy",
        PAUSED: "destroy",
        IN_SHUTDOWN: "destroy",
        CRASHED: "destroy",
        PMSUSPENDED: "destroy",
    },
}

# What each step leaves (for planning; a real run reads the state again after each step).
STEP_RESULT = {
    "define": SHUTOFF,
    "start": RUNNING,
    "start_paused": PAUSED,
    "resume": RUNNING,
    "pause": PAUSED,
    "shutdown": SHUTOFF,
    "wait_shutoff": SHUTOFF,
    "destroy": SHUTOFF,
    "managed_save": SUSPENDED,
    "undefine": ABSENT,
    "wakeup": RUNNING,
}


def reached(current, wanted):
    if wanted not in WANTED_STATES:
        raise DomainError(f"wanted state {wanted!r} is not one of {', '.join(WANTED_STATES)}")
    return current != ABSENT if wanted == "present" else current == wanted


def next_step(current, wanted, name="the domain"):
    """The next step from ``current`` towards ``wanted``; None when reached; DomainError when impossible."""
    if reached(current, wanted):
        return None
    if current == NOSTATE:
        raise DomainError(f"{name} is in no state libvirt can name (VIR_DOMAIN_NOSTATE): look at the libvirt log and at the QEMU process before changing it")
    step = _NEXT[wanted].get(current)
    if step is None:
        if wanted == SUSPENDED and current == SHUTOFF:
            raise DomainError(f"cannot suspend {name}: it is shut off, and a managed save needs a running guest; start it first (state=running)")
        raise DomainError(f"cannot bring {name} from {current} to {wanted}")
    return step


def plan_steps(current, wanted, name="the domain"):
    """The steps from ``current`` to ``wanted`` as planned (check mode shows these)."""
    steps = []
    while True:
        step = next_step(current, wanted, name)
        if step is None:
            return steps
        steps.append(step)
        if len(steps) > MAX_STEPS:
            raise DomainError(f"no way found from {current} to {wanted} for {name} in {MAX_STEPS} steps")
        current = STEP_RESULT[step]


def shutdown_schedule(timeout, retry_interval):
    """Seconds after the start of a clean shutdown at which the ACPI power button is pressed.

    ``[0, retry_interval, 2*retry_interval, ...]`` below ``timeout``; a destroy follows
    at ``timeout`` if the guest is still up. A timeout of 0: no press, destroy at once.
    """
    for value, what in ((timeout, "shutdown_timeout"), (retry_interval, "retry_interval")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DomainError(f"{what} must be a whole number of seconds, 0 or more, got {value!r}")
    if timeout == 0:
        return []
    if retry_interval == 0:
        return [0]
    return list(range(0, timeout, retry_interval))


# --------------------------------------------------------------------------- domain operations


class DomainOps:
    """libvirt operations on instance domains, each waiting for the state it leads to."""

    def __init__(self, conn, *, clock=time.monotonic, sleep=time.sleep, poll=POLL_INTERVAL):
        self.conn = conn
        self.clock = clock
        self.sleep = sleep
        self.poll = poll

    # -- reading ----------------------------------------------------------------

    def lookup(self, uuid):
        """The instance's domain (``instance-<uuid>``), or None when it is not defined here."""
        name = domain_name(uuid)
        dom = lookup_domain(self.conn, uuid)
        if dom is None:
            return None
        with libvirt_errors(f"reading the name of domain {uuid}"):
            found = dom.name()
        if found != name:
            raise DomainError(f"a domain named {found} has the uuid {uuid} of the instance: it is not this collection's domain {name}; rename or remove it")
        return dom

    @staticmethod
    def has_managed_save(dom):
        with libvirt_errors("reading the managed save state"):
            return bool(dom.hasManagedSaveImage(0))

    def observe(self, dom):
        state = domain_state(dom)[0]
        if state == STATE_ABSENT:
            return ABSENT
        return observed_state(state, state == VIR_DOMAIN_SHUTOFF and self.has_managed_save(dom))

    @staticmethod
    def inactive_xml(dom):
        with libvirt_errors("reading the persistent domain XML"):
            return dom.XMLDesc(VIR_DOMAIN_XML_INACTIVE)

    @staticmethod
    def power_state(dom):
        state = domain_state(dom)[0]
        return 0 if state == STATE_ABSENT else power_state_from_libvirt(state)

    def _wait(self, dom, states, timeout, what):
        try:
            return wait_for_state(dom, states, timeout, interval=self.poll, clock=self.clock, sleep=self.sleep)
        except WaitTimeout as exc:
            raise DomainError(f"{what}: {exc}") from None

    # -- define / undefine -----------------------------------------------------------

    def define(self, xml):
        with libvirt_errors("defining the domain"):
            return self.conn.defineXML(xml)

    def undefine(self, dom):
        with libvirt_errors("undefining the domain"):
            dom.undefineFlags(VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_NVRAM)

    def save_record(self, dom, inst, instance_dir=None):
        """Put the record in the domain's metadata (live and persistent) and mirror it in instance.json."""
        xml = record_element_xml(inst, is_rescue(self.inactive_xml(dom)))
        active = domain_state(dom)[0] not in (VIR_DOMAIN_SHUTOFF, STATE_ABSENT)
        flags = VIR_DOMAIN_AFFECT_CONFIG | (VIR_DOMAIN_AFFECT_LIVE if active else 0)
        with libvirt_errors("writing the instance record into the domain metadata"):
            dom.setMetadata(VIR_DOMAIN_METADATA_ELEMENT, xml, "vc", NS, flags)
        if instance_dir is not None and os.path.isdir(instance_dir):
            write_record_file(instance_dir, inst)

    # -- power ------------------------------------------------------------------------

    def start(self, dom, timeout, paused=False):
        """Start (or restore from a managed save); a domain saved while paused comes back paused.

        A restored domain runs with the live XML of its save image, whose record is the one
        of the moment it was saved: the persistent record is put back into the live metadata.
        """
        wanted = (VIR_DOMAIN_PAUSED,) if paused else (VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED)
        restoring = self.has_managed_save(dom)
        if restoring:
            wanted += (VIR_DOMAIN_PAUSED,)
        with libvirt_errors("starting the domain"):
            dom.createWithFlags(VIR_DOMAIN_START_PAUSED if paused else 0)
        self._wait(dom, wanted, timeout, "start")
        if restoring:
            xml = self.inactive_xml(dom)
            inst = read_instance(xml)
            if inst is not None:
                with libvirt_errors("writing the instance record into the live domain metadata"):
                    dom.setMetadata(VIR_DOMAIN_METADATA_ELEMENT, record_element_xml(inst, is_rescue(xml)), "vc", NS, VIR_DOMAIN_AFFECT_LIVE)

    def pause(self, dom, timeout):
        with libvirt_errors("pausing the domain"):
            dom.suspend()
        self._wait(dom, VIR_DOMAIN_PAUSED, timeout, "pause")

    def resume(self, dom, timeout):
        with libvirt_errors("resuming the paused domain"):
            dom.resume()
        self._wait(dom, (VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED), timeout, "unpause")

    def wakeup(self, dom, timeout):
        with libvirt_errors("waking up the domain from guest suspend"):
            dom.pMWakeup(0)
        self._wait(dom, (VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED), timeout, "wake up")

    def managed_save(self, dom, timeout):
        with libvirt_errors("saving the domain's memory (managed save)"):
            dom.managedSave(0)
        self._wait(dom, VIR_DOMAIN_SHUTOFF, timeout, "managed save")
        if not self.has_managed_save(dom):
            raise DomainError("managed save: the domain is shut off but has no managed save image")

    def destroy(self, dom, timeout):
        if domain_state(dom)[0] in (VIR_DOMAIN_SHUTOFF, STATE_ABSENT):
            return
        try:
            with libvirt_errors("destroying the domain"):
                dom.destroy()
        except LibvirtError as exc:
            if exc.code != VIR_ERR_OPERATION_INVALID or domain_state(dom)[0] != VIR_DOMAIN_SHUTOFF:
                raise
        self._wait(dom, VIR_DOMAIN_SHUTOFF, timeout, "destroy")

    def discard_managed_save(self, dom):
        if self.has_managed_save(dom):
            with libvirt_errors("removing the managed save image"):
                dom.managedSaveRemove(0)

    def _press_power_button(self, dom):
        """ACPI power button; False when the domain is no longer running (nothing to press)."""
        try:
            with libvirt_errors("sending the ACPI power button"):
                dom.shutdownFlags(VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except LibvirtError as exc:
            if exc.code == VIR_ERR_OPERATION_INVALID and domain_state(dom)[0] in (VIR_DOMAIN_SHUTOFF, STATE_ABSENT):
                return False
            raise
        return True

    def _acpi_wait(self, dom, timeout, retry_interval, done):
        """Press the power button on the schedule until ``done(state)`` or the timeout; returns (done, presses, seconds)."""
        schedule = shutdown_schedule(timeout, retry_interval)
        start = self.clock()
        presses = 0
        while True:
            elapsed = self.clock() - start
            state = domain_state(dom)[0]
            if done(state):
                return True, presses, elapsed
            if elapsed >= timeout:
                return False, presses, elapsed
            if presses < len(schedule) and elapsed >= schedule[presses]:
                if state in (VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED, VIR_DOMAIN_SHUTDOWN):
                    self._press_power_button(dom)
                presses += 1
                continue
            self.sleep(min(self.poll, max(timeout - elapsed, 0)))

    def power_off(self, dom, shutdown_timeout, retry_interval, timeout, wait=True):
        """Nova's power_off: clean shutdown (ACPI, re-sent), destroy after shutdown_timeout.

        Returns {clean, acpi_presses, seconds, destroyed}. ``wait`` false: one press, no wait.
        """
        if not wait:
            pressed = self._press_power_button(dom)
            return {"clean": None, "acpi_presses": int(pressed), "seconds": 0.0, "destroyed": False}
        clean, presses, seconds = self._acpi_wait(dom, shutdown_timeout, retry_interval, lambda s: s in (VIR_DOMAIN_SHUTOFF, STATE_ABSENT, VIR_DOMAIN_CRASHED))
        if not clean:
            self.destroy(dom, timeout)
        return {"clean": clean, "acpi_presses": presses, "seconds": round(seconds, 1), "destroyed": not clean}

    def hard_reboot(self, dom, timeout):
        """Nova's _hard_reboot: destroy, drop a managed save image, start."""
        self.destroy(dom, timeout)
        self.discard_managed_save(dom)
        self.start(dom, timeout)
        return {"kind": "hard"}

    def soft_reboot(self, dom, shutdown_timeout, retry_interval, timeout):
        """Nova's _soft_reboot: ACPI power button; start again when off; hard reboot after the timeout."""
        with libvirt_errors("reading the domain id"):
            old_id = dom.ID()

        def rebooted(state):
            if state in (VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_CRASHED):
                return True
            if state in (VIR_DOMAIN_RUNNING, VIR_DOMAIN_BLOCKED):
                with libvirt_errors("reading the domain id"):
                    return dom.ID() != old_id
            return False

        done, presses, seconds = self._acpi_wait(dom, shutdown_timeout, retry_interval, rebooted)
        if not done:
            result = self.hard_reboot(dom, timeout)
            result.update(acpi_presses=presses, seconds=round(seconds, 1), fallback=True)
            return result
        if domain_state(dom)[0] in (VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_CRASHED):
            self.destroy(dom, timeout)
            self.start(dom, timeout)
        return {"kind": "soft", "acpi_presses": presses, "seconds": round(seconds, 1), "fallback": False}

    def run_step(self, dom, step, *, shutdown_timeout, retry_interval, timeout, wait=True):
        """Carry out one step of :data:`_NEXT`; returns details (power_off) or None."""
        if step in ("start", "start_paused"):
            self.start(dom, timeout, paused=step == "start_paused")
        elif step == "resume":
            self.resume(dom, timeout)
        elif step == "pause":
            self.pause(dom, timeout)
        elif step == "shutdown":
            return self.power_off(dom, shutdown_timeout, retry_interval, timeout, wait=wait)
        elif step == "wait_shutoff":
            self._wait(dom, VIR_DOMAIN_SHUTOFF, timeout, "waiting for the guest's shutdown")
        elif step == "destroy":
            self.destroy(dom, timeout)
        elif step == "managed_save":
            self.managed_save(dom, timeout)
        elif step == "undefine":
            self.undefine(dom)
        elif step == "wakeup":
            self.wakeup(dom, timeout)
        else:
            raise DomainError(f"unknown step {step!r}")
        return None

    def reach(
        self, dom, wanted: str, *, shutdown_timeout: int, retry_interval: int, timeout: float, wait: bool = True, name: str = "the domain", on_step=None
    ) -> tuple:
        """The power state machine: run the steps from the domain's real state to ``wanted``.

        The state is read again after each step and the next step planned from it (a
        guest may do something of its own meanwhile). ``wait`` false stops after the
        first ACPI press of a shutdown. ``on_step(step, detail)`` is called after each
        step. Returns ``(steps, details)``: the steps run, and ``{"power_off": ...}``
        when a clean shutdown was one of them.
        """
        steps, details = [], {}
        current = self.observe(dom)
        for _attempt in range(MAX_STEPS + 1):
            step = next_step(current, wanted, name)
            if step is None:
                return steps, details
            detail = self.run_step(dom, step, shutdown_timeout=shutdown_timeout, retry_interval=retry_interval, timeout=timeout, wait=wait)
            steps.append(step)
            if detail:
                details["power_off"] = detail
            if on_step is not None:
                on_step(step, detail)
            if step == "shutdown" and not wait:
                return steps, details
            current = self.observe(dom)
        raise DomainError(f"{name} did not reach {wanted}: it is {current}")

    # -- jobs and migration ---------------------------------------------------------------

    @staticmethod
    def job_info(dom, completed: bool = False) -> dict:
        """The domain's current job (or, with ``completed``, the last finished one), as libvirt's jobStats.

        ``type`` is named (none, bounded, unbounded, completed, failed, cancelled); the
        figures (``time_elapsed`` ms, ``data_total``/``data_processed``/``data_remaining``
        bytes, ``memory_*``, ``disk_*``, ``downtime``...) are libvirt's own keys.
        """
        with libvirt_errors("reading the domain's job"):
            stats = dict(dom.jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0))
        kind = stats.get("type", 0)
        stats["type"] = JOB_TYPES.get(kind, f"unknown ({kind})")
        return stats

    @staticmethod
    def abort_job(dom) -> None:
        """Stop the domain's running job (a migration); libvirt's abortJob."""
        with libvirt_errors("aborting the domain's job"):
            dom.abortJob()

    @staticmethod
    def migrate(dom, dest_uri: str, params: dict | None, flags: int) -> None:
        """libvirt's migrateToURI3 to ``dest_uri`` (qemu+ssh or qemu+tls), returning when the migration ends.

        ``params`` are libvirt's typed migration parameters (``migrate_uri``,
        ``bandwidth``, ``destination_xml``, ...), ``flags`` the VIR_MIGRATE_* bits the
        caller decided on (this primitive adds none, VIR_MIGRATE_UNSAFE least of all).
        """
        with libvirt_errors(f"migrating the domain to {dest_uri}"):
            dom.migrateToURI3(dest_uri, dict(params or {}), flags)
