# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""libvirt operations on an instance's domain, and Nova's instance actions (private).

Used by the modules ``domain`` (the libvirt object), ``instance_action`` (Nova-level
actions on an existing instance) and ``instance_info``. The libvirt connection,
lookups, state reads and waits come from ``_libvirt``; the XML from ``_domain_xml``;
the record and Nova's state table from ``_instance``.

Sections:

* **Pure parts** (unit tested without libvirt): the observed state of a domain
  (:func:`observed_state`), the steps from one state to a wanted one
  (:func:`next_step`, :func:`plan_steps`), the ACPI schedule of a clean shutdown
  (:func:`shutdown_schedule`), what each instance action wants and whether it is
  already done (:data:`ACTION_TARGETS`, :func:`action_decision`), the config drive's
  command lines (:meth:`ConfigDrive.commands`).
* **Domain operations** (:class:`DomainOps`): define, undefine, start, clean
  shutdown, destroy, pause/resume, managed save, soft and hard reboot, each waiting
  for the libvirt state; the record in ``<metadata>`` and ``instance.json``.
* **Config drive** (:class:`ConfigDrive`): a 4 MiB FAT image ``disk.config``
  labelled ``config-2``, made with ``mkfs.vfat`` and filled with mtools (``mmd``,
  ``mcopy``): no mount, no loop device, through an injected runner.
* **The three module backends**: :func:`ensure_domain`, :func:`run_instance_action`,
  :func:`list_instances`.

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
* The **domain module** reaches a state by steps from the observed one
  (:data:`_NEXT`): paused to shutoff resumes first so that the guest can take the
  ACPI press; suspended to shutoff restores first and then shuts down cleanly
  (the guest's memory is not thrown away without the guest knowing); shut off to
  suspended is refused (a managed save needs a running guest); a paused domain is
  started with ``VIR_DOMAIN_START_PAUSED``.
* The **record** is authoritative in the persistent (inactive) domain XML. Actions
  update it with ``setMetadata`` (live and persistent for a running domain, so no
  redefine and no restart) and rewrite ``instance.json`` atomically.
  ``libvirt.xml`` is the XML as this collection last defined it (Nova's file).
* The domain module stores the record it is given, unchanged: it never sets
  vm_state or power_state itself, otherwise its second run would find the record
  it wrote different from the one it is given and never be idempotent. The caller
  passes the current record (``instance_info`` returns it).
* **Instance actions** are desired states where Ansible users expect them: start,
  stop, pause, unpause, suspend, resume, lock and unlock report no change when the
  instance is already there (vm_state and the domain's state both), without a
  check of Nova's table or the lock (nothing would be done); reboot and
  reboot_hard always run; delete of an instance that is not (or no longer) here
  reports no change. Anything else goes through Nova's table (``check_action``):
  a refusal changes nothing, in check mode too.
* Every action holds a per-instance lock file (``/run/virtcloud/locks/<uuid>.lock``,
  flock), as nova-compute serialises actions with ``@synchronized(instance.uuid)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import tempfile
import time
import traceback

try:
    from lxml import etree

    HAS_LXML = True
    LXML_IMPORT_ERROR = None
except ImportError:
    etree = None
    HAS_LXML = False
    LXML_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.virtcloud.compute.plugins.module_utils._common import DEFAULT_INSTANCES_PATH, VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._domain_xml import (
    CONFIG_DISK,
    CONSOLE_LOG,
    NS,
    RESCUE_DISK,
    ROOT_DISK,
    DomainXmlError,
    build_domain,
    build_params,
    domain_name,
    is_rescue,
    normalise,
    normalised_pair,
    read_instance,
    record_element,
    validate_path,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import base_path
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import (
    UUID_RE,
    Image,
    TaskState,
    VmState,
    as_instance,
    begin_action,
    check_action,
    config_drive_files,
    finish_action,
    power_state_from_libvirt,
    power_state_name,
    set_lock,
    update_task_state,
    validate_instance_name,
    validate_uuid,
    CONFIG_DRIVE_LABEL,
    InstanceError,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import (  # noqa: F401 (re-exported for the modules)
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
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
    VIR_ERR_NO_DOMAIN,
    VIR_ERR_OPERATION_INVALID,
    LibvirtError,
    WaitTimeout,
    domain_state,
    libvirt_errors,
    lookup_domain,
    wait_for_state,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImgError

# libvirt flags and error codes used here (stable libvirt ABI numbers)
LOCK_DIR = "/run/virtcloud/locks"
RECORD_FILE = "instance.json"
XML_FILE = "libvirt.xml"
CONFIG_DRIVE_SIZE = 4 * 1024 * 1024  # FAT12, like the test image check's drive
POLL_INTERVAL = 0.5
MAX_STEPS = 6
PREPARE_STEPS = ("write_record_file", "config_drive", "define", "redefine")


class DomainError(VirtcloudError):
    """A domain operation failed or cannot be done; the message says why and what to do."""


class ActionFailed(DomainError):
    """An instance action began and failed; ``record`` is the record as saved afterwards."""

    def __init__(self, message, record=None):
        super().__init__(message)
        self.record = record


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


# --------------------------------------------------------------------------- instance actions (pure)


@dataclasses.dataclass(frozen=True)
class ActionTarget:
    vm_state: str | None  # vm_state after success (None: unchanged)
    domain: str | None  # observed domain state after success (None: not a power action)
    always: bool = False  # runs every time (reboots)


ACTION_TARGETS = {
    "start": ActionTarget(VmState.ACTIVE, RUNNING),
    "stop": ActionTarget(VmState.STOPPED, SHUTOFF),
    "reboot": ActionTarget(VmState.ACTIVE, RUNNING, always=True),
    "reboot_hard": ActionTarget(VmState.ACTIVE, RUNNING, always=True),
    "pause": ActionTarget(VmState.PAUSED, PAUSED),
    "unpause": ActionTarget(VmState.ACTIVE, RUNNING),
    "suspend": ActionTarget(VmState.SUSPENDED, SUSPENDED),
    "resume": ActionTarget(VmState.ACTIVE, RUNNING),
    "lock": ActionTarget(None, None),
    "unlock": ActionTarget(None, None),
    "delete": ActionTarget(VmState.DELETED, ABSENT),
    "snapshot": ActionTarget(None, None, always=True),
    "rebuild": ActionTarget(None, None, always=True),
    "rescue": ActionTarget(VmState.RESCUED, RUNNING),
    "unrescue": ActionTarget(VmState.ACTIVE, RUNNING),
}
# the actions that make or replace disks, with what they need
IMAGE_ACTIONS = ("rebuild", "rescue")
DISK_ACTIONS = ("snapshot", "rebuild", "rescue", "unrescue")
IMAGE_FORMATS = ("qcow2", "raw")
SNAPSHOT_FORMAT = "qcow2"
ACTIONS = tuple(ACTION_TARGETS)


def action_decision(record, action, observed):
    """'noop' when the instance is already where the action leads, 'run' when it must run.

    Raises ``ActionRefused`` (from Nova's table or the lock) when it may not run.
    ``record`` None means the instance is not on this host (only delete accepts that).
    """
    if action not in ACTION_TARGETS:
        raise DomainError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    target = ACTION_TARGETS[action]
    if record is None:
        if action == "delete":
            return "noop"
        raise DomainError(f"cannot {action}: no such instance on this host")
    inst = as_instance(record)
    if action == "lock" and inst.locked or action == "unlock" and not inst.locked:
        return "noop"
    if action in ("lock", "unlock"):
        return "run"
    if not target.always and target.domain is not None and inst.vm_state == target.vm_state and inst.task_state is None and observed == target.domain:
        return "noop"
    check_action(inst, action)
    return "run"


def _whole(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def check_image_fits(inst, image, virtual_size, action="rebuild"):
    """Refuse an image the instance's flavor is too small for, as Nova's API does.

    min_ram (MiB) above the flavor's RAM (FlavorMemoryTooSmall), min_disk (GiB) above
    its root disk, and an image whose virtual size exceeds the root disk
    (FlavorDiskSmallerThanImage). A flavor with disk_gb 0 takes the image's size.
    """
    flavor = inst.flavor
    min_ram = _whole(image.properties.get("min_ram", 0))
    min_disk = _whole(image.properties.get("min_disk", 0))
    where = f"cannot {action} instance {inst.label()} with image {image.id}"
    if min_ram and min_ram > flavor.ram_mb:
        raise DomainError(
            f"{where}: the image needs {min_ram} MB of RAM (min_ram) and flavor {flavor.name} has "
            f"{flavor.ram_mb} MB; resize the instance first or pick another image"
        )
    if flavor.disk_gb and min_disk and min_disk > flavor.disk_gb:
        raise DomainError(
            f"{where}: the image needs a {min_disk} GB root disk (min_disk) and flavor {flavor.name} has "
            f"{flavor.disk_gb} GB; resize the instance first or pick another image"
        )
    if flavor.disk_gb and virtual_size > flavor.disk_gb * 1024**3:
        raise DomainError(f"{where}: its virtual size of {virtual_size} bytes is larger than the {flavor.disk_gb} GB root disk of flavor {flavor.name}")


def vm_state_after_failure(before_vm_state, target, observed):
    """vm_state after an action that failed: kept when the domain is where it was, the
    target when it got there anyway, error when it is anywhere else (Nova's instance fault)."""
    if vm_state_matches(before_vm_state, observed):
        return before_vm_state
    if target is not None and target.vm_state is not None and target.domain == observed:
        return target.vm_state
    return VmState.ERROR


# --------------------------------------------------------------------------- files


def instance_dir_of(instances_path, uuid):
    """``<instances_path>/<uuid>``, both validated."""
    validate_path(instances_path, "instances_path")
    return f"{instances_path}/{validate_uuid(uuid, 'instance uuid')}"


def atomic_write(path, data, mode=0o600):
    """Write bytes to ``path`` through a temporary file in the same folder, fsync and rename.

    Returns False (and writes nothing) when the file already has exactly this content.
    """
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def record_file_content(inst):
    return (inst.to_json(indent=2) + "\n").encode("ascii")


def write_record_file(instance_dir, inst):
    """Mirror the record as ``instance.json``; True when the file changed."""
    path = f"{instance_dir}/{RECORD_FILE}"
    try:
        return atomic_write(path, record_file_content(inst))
    except OSError as exc:
        raise DomainError(f"cannot write {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def instance_lock(uuid, timeout, lock_dir=LOCK_DIR, clock=time.monotonic, sleep=time.sleep):
    """Hold the per-instance lock (flock on ``<lock_dir>/<uuid>.lock``) while the block runs."""
    uuid = validate_uuid(uuid, "instance uuid")
    path = f"{lock_dir}/{uuid}.lock"
    try:
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DomainError(f"cannot open the instance lock {path}: {exc.strerror or exc} (modules run as root on the host)") from None
    try:
        deadline = clock() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if clock() >= deadline:
                    raise DomainError(
                        f"instance {uuid} is busy: another action holds {path} for more than {timeout} s; wait for it to finish, then try again"
                    ) from None
                sleep(0.2)
        yield
    finally:
        os.close(fd)


def find_tool(name):
    """The path of a command-line tool, also looking in the sbin folders."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        package = "dosfstools" if name.startswith("mkfs") else "mtools"
        raise DomainError(f"{name} is not installed on the host: install the {package} package (needed for the config drive)")
    return found


# --------------------------------------------------------------------------- config drive


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
                raise DomainError(f"config drive file name {rel!r} is not a plain relative path")

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
            raise DomainError(f"{what} failed (rc {rc}): {detail}")
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
            raise DomainError(f"cannot write the config drive {path}: {exc.strerror or exc}") from None
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


# --------------------------------------------------------------------------- the record in <metadata>


def record_element_xml(inst, rescue=False):
    """The ``<instance>`` metadata element as build_domain writes it, for ``setMetadata`` (which adds the namespace)."""
    return etree.tostring(record_element(inst, rescue, namespaced=False), encoding="unicode")


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
        """Put the record in the domain's metadata (live and persistent) and in instance.json."""
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
            try:
                atomic_write(f"{idir}/{XML_FILE}", wanted_xml.encode("utf-8"))
            except OSError as exc:
                raise DomainError(f"cannot write {idir}/{XML_FILE}: {exc.strerror or exc}") from None
            write_record_file(idir, inst)
            if step == "redefine" and ops.observe(dom) not in (SHUTOFF, SUSPENDED):
                ops.save_record(dom, inst)  # the live metadata too
        else:
            write_record_file(idir, inst)
        executed.append(step)
        if log:
            log.info(f"domain {domain_name(inst.uuid)}: {step}", instance=inst.uuid)
    # the state steps, re-planned from the real state after each one
    current = ops.observe(dom)
    for _attempt in range(MAX_STEPS + 1):
        step = next_step(current, state, f"domain {domain_name(inst.uuid)}")
        if step is None:
            break
        detail = ops.run_step(dom, step, shutdown_timeout=shutdown_timeout, retry_interval=retry_interval, timeout=timeout, wait=wait)
        executed.append(step)
        if detail:
            result["power_off"] = detail
        if log:
            log.info(f"domain {domain_name(inst.uuid)}: {step}" + (f" {detail}" if detail else ""), instance=inst.uuid)
        if step == "shutdown" and not wait:
            break
        current = ops.observe(dom)
    else:
        raise DomainError(f"domain {domain_name(inst.uuid)} did not reach {state}: it is {current}")
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
    executed = []
    current = observed
    while current != ABSENT:
        step = next_step(current, ABSENT, f"domain {name}")
        ops.run_step(dom, step, shutdown_timeout=shutdown_timeout, retry_interval=retry_interval, timeout=timeout)
        executed.append(step)
        if log:
            log.info(f"domain {name}: {step}", instance=uuid)
        current = ops.observe(ops.lookup(uuid))
        if len(executed) > MAX_STEPS:
            raise DomainError(f"domain {name} could not be removed: it is {current}")
    result["actions"] = executed
    result["state"] = ABSENT
    return result


# --------------------------------------------------------------------------- finding instances


def _is_instance_domain_name(name):
    return name.startswith("instance-") and bool(UUID_RE.match(name[len("instance-") :]))


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
    if isinstance(ref, str) and UUID_RE.match(ref.lower()):
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


def list_instances(conn, *, uuid=None, name=None, instances_path=DEFAULT_INSTANCES_PATH):
    """instance_info: every instance on the host, or the one with ``uuid`` / ``name``."""
    ops = DomainOps(conn)
    validate_path(instances_path, "instances_path")
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


# --------------------------------------------------------------------------- instance actions


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
    lock_dir=LOCK_DIR,
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
    """
    if action not in ACTION_TARGETS:
        raise DomainError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if reason is not None and action != "lock":
        raise DomainError(f"reason is only used with action=lock, not action={action}")
    if image is not None and action not in IMAGE_ACTIONS:
        raise DomainError(f"image is only used with action rebuild or rescue, not action={action}")
    if action == "rebuild" and image is None:
        raise DomainError("action=rebuild needs image: the image ({id, properties}) to rebuild the instance from")
    if image_format not in IMAGE_FORMATS:
        raise DomainError(f"image_format {image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")
    if (snapshot_path is None) != (action != "snapshot"):
        raise DomainError(
            "action=snapshot needs snapshot_path, the file to write the snapshot to"
            if action == "snapshot"
            else f"snapshot_path is only used with action=snapshot, not action={action}"
        )
    if snapshot_path is not None:
        validate_path(snapshot_path, "snapshot_path")
    if action in DISK_ACTIONS and action != "unrescue" and qemu_img is None:
        raise DomainError(f"action={action} needs a qemu-img runner")
    image = None if image is None else _image(image)
    shutdown_schedule(shutdown_timeout, retry_interval)
    validate_path(instances_path, "instances_path")
    ops = ops or DomainOps(conn)
    dom, inst = find_instance(conn, instance, ops)
    if inst is None:
        if action == "delete":
            return {
                "changed": False,
                "action": action,
                "instance": None,
                "ports": [],
                "state": ABSENT,
                "msg": f"instance {instance} is not on this host: nothing to delete",
            }
        raise DomainError(f"cannot {action} instance {instance}: there is no such instance on this host (instance_info lists the instances of a host)")
    disk_args = DiskArgs(instances_path, image, image_format, snapshot_path, qemu_img)
    with instance_lock(inst.uuid, timeout, lock_dir=lock_dir):
        dom, inst = find_instance(conn, inst.uuid, ops)  # again, under the lock
        if inst is None:
            if action == "delete":
                return {"changed": False, "action": action, "instance": None, "ports": [], "state": ABSENT, "msg": f"instance {instance} was deleted meanwhile"}
            raise DomainError(f"cannot {action} instance {instance}: it was deleted meanwhile")
        return _run_locked(
            ops,
            dom,
            inst,
            action=action,
            request_id=request_id,
            instances_path=instances_path,
            reason=reason,
            shutdown_timeout=shutdown_timeout,
            retry_interval=retry_interval,
            timeout=timeout,
            check_mode=check_mode,
            log=log,
            disk_args=disk_args,
        )


def _image(value):
    try:
        return Image.from_dict(value)
    except InstanceError as exc:
        raise DomainError(f"image is not valid: {exc}") from None


@dataclasses.dataclass
class DiskArgs:
    """What the disk actions (snapshot, rebuild, rescue, unrescue) are given."""

    instances_path: str
    image: Image | None
    image_format: str
    snapshot_path: str | None
    qemu_img: object

    def base(self, image):
        """The cached base of ``image`` on this host."""
        return base_path(self.instances_path, image.id)


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


def _run_locked(ops, dom, inst, *, action, request_id, instances_path, reason, shutdown_timeout, retry_interval, timeout, check_mode, log, disk_args):
    observed = ops.observe(dom)
    idir = instance_dir_of(instances_path, inst.uuid)
    decision = action_decision(inst, action, observed)
    target = ACTION_TARGETS[action]
    if decision == "noop":
        return _result(inst, action, False, observed)
    plan = _prepare_disk_action(inst, action, idir, disk_args, check_mode) if action in DISK_ACTIONS else {}
    if check_mode:
        result = _result(inst, action, True, observed, **plan)
        if target.vm_state is not None:
            result["vm_state"] = target.vm_state
            result["state"] = target.domain
        elif action == "rebuild":
            result["vm_state"] = VmState.STOPPED if inst.vm_state == VmState.STOPPED else VmState.ACTIVE
            result["state"] = SHUTOFF if inst.vm_state == VmState.STOPPED else RUNNING
        if action == "delete":
            result["ports"] = [p.to_dict() for p in inst.ports]
        return result
    if action in ("lock", "unlock"):
        set_lock(inst, action == "lock", request_id, reason=reason)
        ops.save_record(dom, inst, idir)
        if log:
            log.info(f"{action}ed" + (f" ({reason})" if reason else ""), instance=inst.uuid)
        return _result(inst, action, True, observed)

    before_vm_state = inst.vm_state
    begin_action(inst, action, request_id)
    ops.save_record(dom, inst, idir)
    if log:
        log.info(f"{action}: begins (vm_state {before_vm_state}, task_state {inst.task_state})", instance=inst.uuid)
    extra = {}
    try:
        if action == "delete":
            extra = _delete(ops, dom, inst, idir, timeout, log)
        elif action in DISK_ACTIONS:
            dom, extra = DISK_ACTION_RUNNERS[action](
                ops, dom, inst, idir, disk_args, plan, shutdown_timeout=shutdown_timeout, retry_interval=retry_interval, timeout=timeout, log=log
            )
        else:
            extra = _power_action(ops, dom, action, shutdown_timeout, retry_interval, timeout)
    except (DomainError, LibvirtError, QemuImgError, OSError) as exc:
        text = f"{action} of instance {inst.label()} failed: {exc}"
        after = ops.observe(ops.lookup(inst.uuid))
        vm_state = vm_state_after_failure(before_vm_state, target, after)
        finish_action(inst, action, request_id, vm_state=vm_state, task_state=None, power_state=_power(ops, inst.uuid), result="Error", message=text[:4000])
        if after != ABSENT:
            with contextlib.suppress(DomainError, LibvirtError):
                ops.save_record(ops.lookup(inst.uuid), inst, idir)
        if log:
            log.error(f"{text}; vm_state is now {vm_state} (domain {after})", instance=inst.uuid)
        raise ActionFailed(f"{text} (vm_state is now {vm_state}, the domain is {after})", record=inst.to_dict()) from None
    after = ABSENT if action == "delete" else ops.observe(dom)
    finish_action(
        inst,
        action,
        request_id,
        vm_state=extra.pop("vm_state", target.vm_state),
        task_state=None,
        power_state=0 if action == "delete" else _power(ops, inst.uuid),
        message=extra.pop("message", None),
    )
    if action != "delete":
        ops.save_record(dom, inst, idir)
    if log:
        log.info(f"{action}: done (vm_state {inst.vm_state}, domain {after})", instance=inst.uuid)
    return _result(inst, action, True, after, **extra)


# --------------------------------------------------------------------------- snapshot, rebuild, rescue


def _prepare_disk_action(inst, action, idir, args, check_mode=False):
    """Everything a disk action checks before it begins (a refusal changes nothing); returns its plan."""
    root = f"{idir}/{ROOT_DISK}"
    if action == "snapshot":
        path = args.snapshot_path
        if os.path.lexists(path):
            raise DomainError(f"cannot snapshot instance {inst.label()} to {path}: the file exists; remove it or give another snapshot_path")
        if not os.path.isdir(os.path.dirname(path)) and not check_mode:  # a check run of the workflow made no folder
            raise DomainError(f"cannot snapshot instance {inst.label()} to {path}: the folder {os.path.dirname(path)} does not exist")
        if not os.path.isfile(root):
            raise DomainError(f"cannot snapshot instance {inst.label()}: its root disk {root} does not exist")
        return {"snapshot": {"path": path, "format": SNAPSHOT_FORMAT, "image": inst.image.to_dict()}}
    if action == "unrescue":
        return {}
    image = args.image if args.image is not None else inst.image
    try:
        base = args.base(image)
    except VirtcloudError:
        raise DomainError(f"cannot {action} instance {inst.label()}: image id {image.id} is not an image store id (a uuid)") from None
    if not os.path.isfile(base):
        if check_mode:
            # a check-mode run of the workflow did not fill the cache: plan without the image's size
            if action == "rebuild":
                check_image_fits(inst, image, 0)
            return {"image": image.to_dict(), "base": base, "virtual_size": None}
        raise DomainError(
            f"cannot {action} instance {inst.label()}: image {image.id} is not in this host's image cache "
            f"({base}); fill the cache first (virtcloud.compute.image_cache)"
        )
    try:
        virtual_size = args.qemu_img.info(base, args.image_format, force_share=False)["virtual_size"]
    except VirtcloudError as exc:
        raise DomainError(f"cannot {action} instance {inst.label()}: the cached image {base} cannot be read as {args.image_format}: {exc}") from None
    if action == "rebuild":
        check_image_fits(inst, image, virtual_size)
    return {"image": image.to_dict(), "base": base, "virtual_size": virtual_size}


def _stop_for_disk_change(ops, dom, shutdown_timeout, retry_interval, timeout):
    """Nova's ``_power_off_instance`` then ``destroy``: a clean shutdown of a running guest, the rest destroyed."""
    observed = ops.observe(dom)
    if observed == PAUSED:
        ops.resume(dom, timeout)
        observed = RUNNING
    if observed == RUNNING:
        ops.power_off(dom, shutdown_timeout, retry_interval, timeout)
    ops.destroy(dom, timeout)
    ops.discard_managed_save(dom)


def _redefine(ops, inst, idir, params, rescue):
    xml = build_domain(inst, instance_dir=idir, rescue=rescue, **params)
    dom = ops.define(xml)
    try:
        atomic_write(f"{idir}/{XML_FILE}", xml.encode("utf-8"))
    except OSError as exc:
        raise DomainError(f"cannot write {idir}/{XML_FILE}: {exc.strerror or exc}") from None
    return dom


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


def _snapshot(ops, dom, inst, idir, args, plan, *, shutdown_timeout, retry_interval, timeout, log):
    """Nova's cold snapshot as in the seeds: pause, qemu-img convert, resume.

    A running guest is paused (QEMU drains and flushes its disks when it stops the vCPUs),
    its root disk with the whole backing chain is converted into a standalone qcow2 with
    ``--force-share`` (QEMU keeps the image open), and the guest is resumed: its memory and
    its uptime go on. A stopped or suspended instance has no QEMU holding the disk.
    """
    del shutdown_timeout, retry_interval
    path = args.snapshot_path
    part = path + ".part"
    observed = ops.observe(dom)
    paused_here = observed == RUNNING
    update_task_state(inst, TaskState.IMAGE_SNAPSHOT, expected_task_state=[TaskState.IMAGE_SNAPSHOT_PENDING])
    if paused_here:
        ops.pause(dom, timeout)
        if log:
            log.info("snapshot: guest paused", instance=inst.uuid)
    try:
        args.qemu_img.convert(f"{idir}/{ROOT_DISK}", "qcow2", part, SNAPSHOT_FORMAT, force_share=observed in (RUNNING, PAUSED))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    finally:
        if paused_here:
            ops.resume(dom, timeout)
            if log:
                log.info("snapshot: guest resumed", instance=inst.uuid)
    os.replace(part, path)
    update_task_state(inst, TaskState.IMAGE_PENDING_UPLOAD, expected_task_state=[TaskState.IMAGE_SNAPSHOT])
    info = args.qemu_img.info(path, SNAPSHOT_FORMAT, force_share=False)
    snapshot = dict(plan["snapshot"], size=os.stat(path).st_size, virtual_size=info["virtual_size"], paused=paused_here)
    if log:
        log.info(f"snapshot: root disk extracted to {path} ({snapshot['size']} bytes)", instance=inst.uuid)
    return dom, {"snapshot": snapshot, "message": f"extracted to {path}"}


def _rebuild(ops, dom, inst, idir, args, plan, *, shutdown_timeout, retry_interval, timeout, log):
    """Nova's rebuild: power off, a new root disk from the image, the same domain started again.

    Same uuid, flavor, ports (MAC and IP), config drive and definition; the record's image is
    the new one. An instance that was stopped stays stopped (Nova powers it off again).
    """
    params = build_params(ops.inactive_xml(dom), inst)
    was_stopped = inst.vm_state == VmState.STOPPED
    _stop_for_disk_change(ops, dom, shutdown_timeout, retry_interval, timeout)
    update_task_state(inst, TaskState.REBUILD_SPAWNING, expected_task_state=[TaskState.REBUILDING])
    flavor_size = inst.flavor.disk_gb * 1024**3
    size = max(flavor_size, plan["virtual_size"]) if flavor_size else None
    _new_overlay(args.qemu_img, f"{idir}/{ROOT_DISK}", plan["base"], args.image_format, size)
    old_image = inst.image.id
    inst.image = Image.from_dict(plan["image"])
    dom = _redefine(ops, inst, idir, params, rescue=False)
    if log:
        log.info(f"rebuild: new root disk on image {inst.image.id} (was {old_image})", instance=inst.uuid)
    if not was_stopped:
        ops.start(dom, timeout)
    return dom, {
        "vm_state": VmState.STOPPED if was_stopped else VmState.ACTIVE,
        "image": plan["image"],
        "message": f"rebuilt from image {inst.image.id} (was {old_image})",
    }


def _rescue(ops, dom, inst, idir, args, plan, *, shutdown_timeout, retry_interval, timeout, log):
    """Nova's rescue: power off, boot ``disk.rescue`` (an overlay on the rescue image) as vda
    with the instance's own disk as vdb and the config drive last."""
    params = build_params(ops.inactive_xml(dom), inst)
    _stop_for_disk_change(ops, dom, shutdown_timeout, retry_interval, timeout)
    _new_overlay(args.qemu_img, f"{idir}/{RESCUE_DISK}", plan["base"], args.image_format)
    dom = _redefine(ops, inst, idir, params, rescue=True)
    ops.start(dom, timeout)
    if log:
        log.info(f"rescue: booted rescue image {plan['image']['id']}", instance=inst.uuid)
    return dom, {"image": plan["image"], "message": f"rescue image {plan['image']['id']}"}


def _unrescue(ops, dom, inst, idir, args, plan, *, shutdown_timeout, retry_interval, timeout, log):
    """Nova's unrescue: destroy the rescue guest, define the instance's own layout, drop
    ``disk.rescue``, boot the original disk again."""
    del args, plan, shutdown_timeout, retry_interval
    params = build_params(ops.inactive_xml(dom), inst)
    ops.destroy(dom, timeout)
    dom = _redefine(ops, inst, idir, params, rescue=False)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{idir}/{RESCUE_DISK}")
    ops.start(dom, timeout)
    if log:
        log.info("unrescue: booted the instance's own disk", instance=inst.uuid)
    return dom, {}


DISK_ACTION_RUNNERS = {"snapshot": _snapshot, "rebuild": _rebuild, "rescue": _rescue, "unrescue": _unrescue}


def _power(ops, uuid):
    dom = ops.lookup(uuid)
    return 0 if dom is None else ops.power_state(dom)


def _power_action(ops, dom, action, shutdown_timeout, retry_interval, timeout):
    if action == "start":
        ops.discard_managed_save(dom)  # a stopped instance boots (Nova's power_on is a hard reboot)
        ops.start(dom, timeout)
    elif action == "stop":
        if ops.observe(dom) == PAUSED:
            ops.resume(dom, timeout)  # a paused guest cannot take the ACPI press (vm_state error)
        return {"power_off": ops.power_off(dom, shutdown_timeout, retry_interval, timeout)}
    elif action == "reboot":
        return {"reboot": ops.soft_reboot(dom, shutdown_timeout, retry_interval, timeout)}
    elif action == "reboot_hard":
        return {"reboot": ops.hard_reboot(dom, timeout)}
    elif action == "pause":
        ops.pause(dom, timeout)
    elif action == "unpause":
        ops.resume(dom, timeout)
    elif action == "suspend":
        ops.managed_save(dom, timeout)
    elif action == "resume":
        ops.start(dom, timeout)
        if ops.observe(dom) == PAUSED:
            ops.resume(dom, timeout)
    return {}


def _delete(ops, dom, inst, idir, timeout, log):
    """Nova's terminate on the host: destroy (no clean shutdown), remove the instance directory, undefine.

    The directory goes before the undefine, so that a delete that fails half way leaves
    the domain (and its record) to run the delete again. Base images are not touched:
    the root disk is an overlay, only the files in the instance directory go.
    """
    ops.destroy(dom, timeout)
    if os.path.islink(idir):
        raise DomainError(f"{idir} is a symbolic link, not an instance directory: remove it by hand after checking it")
    if os.path.isdir(idir):
        shutil.rmtree(idir)
        if log:
            log.info(f"delete: removed {idir}", instance=inst.uuid)
    ops.undefine(dom)
    return {"ports": [p.to_dict() for p in inst.ports], "instance_dir_removed": idir}


# names the modules use
__all__ = [
    "ACTIONS",
    "ActionFailed",
    "ConfigDrive",
    "DEFAULT_INSTANCES_PATH",
    "DomainError",
    "DomainOps",
    "HAS_LIBVIRT",
    "HAS_LXML",
    "InstanceError",
    "LIBVIRT_IMPORT_ERROR",
    "LXML_IMPORT_ERROR",
    "LibvirtError",
    "WANTED_STATES",
    "action_decision",
    "ensure_domain",
    "list_instances",
    "next_step",
    "observed_state",
    "plan_steps",
    "run_instance_action",
    "shutdown_schedule",
]
