# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The instance record and Nova's state model (private to this collection).

Pure logic: no libvirt, no subprocess, no Ansible. Everything here takes plain
arguments and raises :class:`InstanceError` (or :class:`ActionRefused`), so modules,
filter plugins and unit tests use it alike.

* Validators for every value that may reach domain XML, a path or a command line:
  instance, project, network, zone, group, host and flavor names, UUIDs, MAC and IP
  addresses, request ids, timestamps, flavors, image properties, metadata.
* :class:`Instance`, the record that lives with the instance (libvirt ``<metadata>``
  and ``instance.json``), with ``to_dict``/``from_dict`` (validating) and JSON.
* Nova's three state fields: :class:`VmState`, :class:`TaskState`,
  :class:`PowerState` (Nova's numbers and names) and the libvirt domain state to
  power state mapping of nova/virt/libvirt/guest.py.
* The action log of ``nova instance-action-list`` (:class:`ActionEntry`, Nova's action
  names: ``createImage``, ``live-migration``, ``shelveOffload``, ...), :func:`set_lock`
  and :func:`update_task_state`. Nova's table of which action is allowed when
  (``check_action``, ``begin_action``, ``finish_action``) is the action registry in
  ``_actions``, where each action is one object.
* :func:`config_drive_files`, the content of a config drive (``meta_data.json`` as
  Nova writes it, and ``user_data``).

Differences from Nova, on purpose:

* A locked instance refuses every action but lock and unlock, evacuate included
  (Nova does not lock-check evacuate, an admin-only call); ``is_admin=True`` bypasses
  the lock as Nova's ``context.is_admin`` does.
* Nova's ``locked_by`` (owner/admin) is not kept: there is one operator role here.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import ipaddress
import json
import re
import secrets
import uuid as uuid_mod
from collections.abc import Mapping

from ansible_collections.virtcloud.compute.plugins.module_utils._validate import is_host_name, is_instance_name, is_request_id, is_simple_name, is_uuid
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError

RECORD_VERSION = 1


class InstanceError(VirtcloudError):
    """A value or a request about an instance is wrong; the message says what to do."""


class ImageDoesNotFit(InstanceError):
    """The image needs more RAM or disk than the instance's flavor has (Nova's FlavorMemoryTooSmall, FlavorDiskSmallerThanImage)."""


class ActionRefused(InstanceError):
    """Nova's state table (or the lock) refuses an action; nothing was changed."""

    def __init__(self, message, *, action=None, uuid=None, name=None, vm_state=None, task_state=None, reason=None):
        super().__init__(message)
        self.action = action
        self.uuid = uuid
        self.name = name
        self.vm_state = vm_state
        self.task_state = task_state
        self.reason = reason


# --------------------------------------------------------------------------- states


class VmState:
    """nova/compute/vm_states.py (values of nova.objects.fields.InstanceState)."""

    ACTIVE = "active"
    BUILDING = "building"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    STOPPED = "stopped"
    RESCUED = "rescued"
    RESIZED = "resized"
    SOFT_DELETED = "soft-delete"
    DELETED = "deleted"
    ERROR = "error"
    SHELVED = "shelved"
    SHELVED_OFFLOADED = "shelved_offloaded"
    ALL = (ACTIVE, BUILDING, PAUSED, SUSPENDED, STOPPED, RESCUED, RESIZED, SOFT_DELETED, DELETED, ERROR, SHELVED, SHELVED_OFFLOADED)
    ALLOW_SOFT_REBOOT = (ACTIVE,)
    ALLOW_HARD_REBOOT = (ACTIVE, STOPPED, PAUSED, SUSPENDED, ERROR)


class TaskState:
    """nova/compute/task_states.py (values of nova.objects.fields.InstanceTaskState)."""

    SCHEDULING = "scheduling"
    BLOCK_DEVICE_MAPPING = "block_device_mapping"
    NETWORKING = "networking"
    SPAWNING = "spawning"
    IMAGE_SNAPSHOT = "image_snapshot"
    IMAGE_SNAPSHOT_PENDING = "image_snapshot_pending"
    IMAGE_PENDING_UPLOAD = "image_pending_upload"
    IMAGE_UPLOADING = "image_uploading"
    IMAGE_BACKUP = "image_backup"
    UPDATING_PASSWORD = "updating_password"
    RESIZE_PREP = "resize_prep"
    RESIZE_MIGRATING = "resize_migrating"
    RESIZE_MIGRATED = "resize_migrated"
    RESIZE_FINISH = "resize_finish"
    RESIZE_REVERTING = "resize_reverting"
    RESIZE_CONFIRMING = "resize_confirming"
    REBOOTING = "rebooting"
    REBOOT_PENDING = "reboot_pending"
    REBOOT_STARTED = "reboot_started"
    REBOOTING_HARD = "rebooting_hard"
    REBOOT_PENDING_HARD = "reboot_pending_hard"
    REBOOT_STARTED_HARD = "reboot_started_hard"
    PAUSING = "pausing"
    UNPAUSING = "unpausing"
    SUSPENDING = "suspending"
    RESUMING = "resuming"
    POWERING_OFF = "powering-off"
    POWERING_ON = "powering-on"
    RESCUING = "rescuing"
    UNRESCUING = "unrescuing"
    REBUILDING = "rebuilding"
    REBUILD_BLOCK_DEVICE_MAPPING = "rebuild_block_device_mapping"
    REBUILD_SPAWNING = "rebuild_spawning"
    MIGRATING = "migrating"
    DELETING = "deleting"
    SOFT_DELETING = "soft-deleting"
    RESTORING = "restoring"
    SHELVING = "shelving"
    SHELVING_IMAGE_PENDING_UPLOAD = "shelving_image_pending_upload"
    SHELVING_IMAGE_UPLOADING = "shelving_image_uploading"
    SHELVING_OFFLOADING = "shelving_offloading"
    UNSHELVING = "unshelving"
    ALL = (
        SCHEDULING,
        BLOCK_DEVICE_MAPPING,
        NETWORKING,
        SPAWNING,
        IMAGE_SNAPSHOT,
        IMAGE_SNAPSHOT_PENDING,
        IMAGE_PENDING_UPLOAD,
        IMAGE_UPLOADING,
        IMAGE_BACKUP,
        UPDATING_PASSWORD,
        RESIZE_PREP,
        RESIZE_MIGRATING,
        RESIZE_MIGRATED,
        RESIZE_FINISH,
        RESIZE_REVERTING,
        RESIZE_CONFIRMING,
        REBOOTING,
        REBOOT_PENDING,
        REBOOT_STARTED,
        REBOOTING_HARD,
        REBOOT_PENDING_HARD,
        REBOOT_STARTED_HARD,
        PAUSING,
        UNPAUSING,
        SUSPENDING,
        RESUMING,
        POWERING_OFF,
        POWERING_ON,
        RESCUING,
        UNRESCUING,
        REBUILDING,
        REBUILD_BLOCK_DEVICE_MAPPING,
        REBUILD_SPAWNING,
        MIGRATING,
        DELETING,
        SOFT_DELETING,
        RESTORING,
        SHELVING,
        SHELVING_IMAGE_PENDING_UPLOAD,
        SHELVING_IMAGE_UPLOADING,
        SHELVING_OFFLOADING,
        UNSHELVING,
    )
    # task states a hard reboot may interrupt (task_states.ALLOW_REBOOT)
    ALLOW_REBOOT = (None, REBOOTING, REBOOT_PENDING, REBOOT_STARTED, RESUMING, REBOOTING_HARD, UNPAUSING, PAUSING, SUSPENDING)


class PowerState:
    """nova/compute/power_state.py: Nova's numbers, and Nova's names (STATE_MAP)."""

    NOSTATE = 0
    RUNNING = 1
    PAUSED = 3
    SHUTDOWN = 4
    CRASHED = 6
    SUSPENDED = 7
    ALL = (NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED, SUSPENDED)
    NAMES = {NOSTATE: "pending", RUNNING: "running", PAUSED: "paused", SHUTDOWN: "shutdown", CRASHED: "crashed", SUSPENDED: "suspended"}


# libvirt's virDomainState numbers (VIR_DOMAIN_*), so no libvirt import is needed here
VIR_DOMAIN_NOSTATE = 0
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_BLOCKED = 2
VIR_DOMAIN_PAUSED = 3
VIR_DOMAIN_SHUTDOWN = 4
VIR_DOMAIN_SHUTOFF = 5
VIR_DOMAIN_CRASHED = 6
VIR_DOMAIN_PMSUSPENDED = 7

# nova/virt/libvirt/guest.py LIBVIRT_POWER_STATE. BLOCKED (idle vCPU) counts as running;
# SHUTDOWN (being shut down) and SHUTOFF both count as SHUTDOWN, as in Nova.
LIBVIRT_POWER_STATE = {
    VIR_DOMAIN_NOSTATE: PowerState.NOSTATE,
    VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    VIR_DOMAIN_SHUTDOWN: PowerState.SHUTDOWN,
    VIR_DOMAIN_SHUTOFF: PowerState.SHUTDOWN,
    VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
}


def power_state_from_libvirt(state):
    """Nova power state (int) for a libvirt domain state number (``dom.state()[0]``)."""
    if isinstance(state, bool) or not isinstance(state, int) or state not in LIBVIRT_POWER_STATE:
        raise InstanceError(f"libvirt domain state {state!r} is not one of libvirt's virDomainState values 0..7")
    return LIBVIRT_POWER_STATE[state]


def power_state_name(state):
    """Nova's name of a power state number ('running', 'shutdown', ...)."""
    if isinstance(state, bool) or state not in PowerState.NAMES:
        raise InstanceError(f"power state {state!r} is not one of Nova's power states {sorted(PowerState.NAMES)}")
    return PowerState.NAMES[state]


# --------------------------------------------------------------------------- validators

INSTANCE_NAME_MAX = 63
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
# nova/api/validation/parameter_types.py allows word characters, '.', '-', ':' and space
EXTRA_SPEC_KEY_RE = re.compile(r"^[A-Za-z0-9_.: -]{1,255}\Z")
PROPERTY_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}\Z")
TIMESTAMP_RE = re.compile(r"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]{1,6})?(Z|\+00:00)\Z")
SSH_KEY_RE = re.compile(r"^(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+ [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?\Z")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
CONTROL_EXCEPT_NEWLINE_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

MAX_VCPUS = 1024
MIN_RAM_MB = 64
MAX_RAM_MB = 16 * 1024 * 1024
MAX_DISK_GB = 1024 * 1024
MAX_SWAP_MB = 1024 * 1024
MAX_META_ITEMS = 128  # Nova's metadata_items quota default
MAX_META_LEN = 255  # Nova's limit for a metadata key or value
MAX_USER_DATA = 65535  # Nova's MAX_USERDATA_SIZE
MAX_MESSAGE_LEN = 4096
MAX_ACTIONS = 10000


def _show(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_uuid(value, what="uuid"):
    """A canonical UUID (8-4-4-4-12 hex), returned in lower case."""
    if not isinstance(value, str) or not is_uuid(value, any_case=True):
        raise InstanceError(f"{what} {_show(value)} is not a UUID: give 8-4-4-4-12 hexadecimal digits such as 3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b")
    return value.lower()


def validate_instance_name(value):
    """An instance name: hostname-safe, 1..63 characters, no '..', not a UUID."""
    if not is_instance_name(value):
        raise InstanceError(
            f"instance name {_show(value)} is not valid: use 1 to {INSTANCE_NAME_MAX} characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, without '..'"
        )
    if is_uuid(value, any_case=True):
        raise InstanceError(f"instance name {_show(value)} is a UUID, which would be ambiguous with instance ids: choose another name")
    return value


def validate_simple_name(value, what):
    """A project, network, zone, server group or flavor name: 1..64 of [A-Za-z0-9._-], no '..'."""
    if not is_simple_name(value):
        raise InstanceError(
            f"{what} {_show(value)} is not valid: use 1 to 64 characters from letters, digits, '.', '_' and '-', starting with a letter or digit, without '..'"
        )
    return value


def validate_project(value):
    return validate_simple_name(value, "project name")


def validate_host_name(value):
    """A compute host name as the inventory knows it."""
    if not is_host_name(value):
        raise InstanceError(
            f"host name {_show(value)} is not valid: use 1 to 253 characters from letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return value


def validate_mac(value):
    """A unicast Ethernet MAC address, returned in lower case (aa:bb:cc:dd:ee:ff)."""
    mac = value.lower() if isinstance(value, str) else value
    if not isinstance(mac, str) or not MAC_RE.match(mac):
        raise InstanceError(f"MAC address {_show(value)} is not valid: give six colon-separated hexadecimal bytes such as fa:16:3e:12:34:56")
    if int(mac[:2], 16) & 1:
        raise InstanceError(f"MAC address {mac} is a multicast address: an instance NIC needs a unicast one (even first byte)")
    if mac == "00:00:00:00:00:00":
        raise InstanceError("MAC address 00:00:00:00:00:00 is not usable for an instance NIC")
    return mac


def generate_mac():
    """A random MAC address with Nova's/Neutron's fa:16:3e prefix (locally administered, unicast)."""
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def validate_ip(value):
    """An IPv4 or IPv6 address (no prefix), returned in its compressed form; None stays None."""
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InstanceError(f"IP address {_show(value)} is not a valid IPv4 or IPv6 address (give it without a prefix length)") from None


def new_request_id():
    """A request id as Nova makes them: ``req-<uuid4>``."""
    return f"req-{uuid_mod.uuid4()}"


def validate_request_id(value):
    if not is_request_id(value):
        raise InstanceError(f"request id {_show(value)} is not valid: give 'req-' followed by a lower-case UUID, as new_request_id() makes")
    return value


def format_time(moment):
    """ISO 8601 UTC with microseconds and a Z, e.g. 2024-05-01T12:00:00.000000Z."""
    if moment.tzinfo is None:
        raise InstanceError("a timestamp needs a time zone (UTC)")
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utcnow():
    return format_time(datetime.datetime.now(datetime.timezone.utc))


def validate_timestamp(value, what="timestamp"):
    """An ISO 8601 UTC timestamp, returned in the record's form (microseconds, Z)."""
    match = TIMESTAMP_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise InstanceError(f"{what} {_show(value)} is not an ISO 8601 UTC timestamp such as 2024-05-01T12:00:00Z")
    try:
        moment = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise InstanceError(f"{what} {_show(value)} is not a real date and time") from None
    fraction = (match.group(2) or ".0")[1:]
    moment = moment.replace(microsecond=int(fraction.ljust(6, "0")), tzinfo=datetime.timezone.utc)
    return format_time(moment)


def _optional_timestamp(value, what):
    return None if value is None else validate_timestamp(value, what)


def _int_in_range(value, what, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InstanceError(f"{what} must be a whole number, got {_show(value)}")
    if not low <= value <= high:
        raise InstanceError(f"{what} must be between {low} and {high}, got {value}")
    return value


def check_text(value, what, max_len, *, allow_empty=True, multiline=False):
    if not isinstance(value, str):
        raise InstanceError(f"{what} must be a string, got {_show(value)}")
    if not allow_empty and not value:
        raise InstanceError(f"{what} must not be empty")
    if len(value) > max_len:
        raise InstanceError(f"{what} is longer than {max_len} characters")
    if (CONTROL_EXCEPT_NEWLINE_RE if multiline else CONTROL_RE).search(value):
        raise InstanceError(f"{what} {_show(value)} contains control characters")
    return value


def _mapping(value, what):
    if not isinstance(value, Mapping):
        raise InstanceError(f"{what} must be a mapping, got {_show(value)}")
    return value


def _strict_keys(data, what, required, optional):
    missing = [k for k in required if k not in data]
    if missing:
        raise InstanceError(f"{what} lacks {', '.join(missing)}")
    unknown = sorted(str(k) for k in data if k not in required and k not in optional)
    if unknown:
        raise InstanceError(f"{what} has unknown keys {', '.join(unknown)}; known keys are {', '.join(list(required) + list(optional))}")


def validate_extra_specs(value):
    """Flavor extra_specs: str -> str, keys as Nova allows them, values without control characters."""
    specs = {}
    for key, val in _mapping(value, "flavor extra_specs").items():
        if not isinstance(key, str) or not EXTRA_SPEC_KEY_RE.match(key):
            raise InstanceError(f"flavor extra_specs key {_show(key)} is not valid: use 1 to 255 of letters, digits, '_', '.', ':', '-' and space")
        specs[key] = check_text(val, f"flavor extra_specs value of {key}", 255)
    return specs


def validate_meta(value, what="instance metadata"):
    """Instance metadata (``meta`` of meta_data.json): str -> str, Nova's limits."""
    meta = {}
    items = _mapping(value, what)
    if len(items) > MAX_META_ITEMS:
        raise InstanceError(f"{what} has {len(items)} items; at most {MAX_META_ITEMS} are allowed")
    for key, val in items.items():
        check_text(key, f"{what} key", MAX_META_LEN, allow_empty=False)
        meta[key] = check_text(val, f"{what} value of {key}", MAX_META_LEN)
    return meta


def validate_image_properties(value):
    """Image properties: keys as Glance's, values JSON scalars (strings without control characters)."""
    props = {}
    for key, val in _mapping(value, "image properties").items():
        if not isinstance(key, str) or not PROPERTY_KEY_RE.match(key):
            raise InstanceError(f"image property name {_show(key)} is not valid: use 1 to 255 of letters, digits, '_', '.', ':' and '-'")
        if isinstance(val, str):
            props[key] = check_text(val, f"image property {key}", 255)
        elif val is None or isinstance(val, (bool, int, float)):
            props[key] = val
        else:
            raise InstanceError(f"image property {key} must be a string, number, boolean or null, got {_show(val)}")
    return props


def validate_public_keys(value):
    """SSH public keys by key name (meta_data.json ``public_keys``)."""
    keys = {}
    for name, key in _mapping(value, "public_keys").items():
        validate_simple_name(name, "key name")
        if not isinstance(key, str) or len(key) > 16384 or not SSH_KEY_RE.match(key.strip()):
            raise InstanceError(f"public key {name} is not an OpenSSH public key on one line (type, base64 data, optional comment)")
        keys[name] = key.strip()
    return keys


def validate_user_data(value):
    if value is None:
        return None
    if not isinstance(value, str):
        raise InstanceError(f"user_data must be a string, got {_show(value)}")
    if len(value.encode("utf-8")) > MAX_USER_DATA:
        raise InstanceError(f"user_data is larger than {MAX_USER_DATA} bytes (Nova's limit)")
    if "\x00" in value:
        raise InstanceError("user_data contains a NUL character")
    return value


def validate_image_id(value):
    """An image id: a UUID or a simple name."""
    if is_uuid(value, any_case=True):
        return value.lower()
    return validate_simple_name(value, "image id")


def check_vm_state(value):
    if value not in VmState.ALL:
        raise InstanceError(f"vm_state {_show(value)} is not one of Nova's vm states: {', '.join(VmState.ALL)}")
    return value


def check_task_state(value):
    if value is not None and value not in TaskState.ALL:
        raise InstanceError(f"task_state {_show(value)} is not null or one of Nova's task states: {', '.join(TaskState.ALL)}")
    return value


def check_power_state(value):
    if isinstance(value, bool) or value not in PowerState.ALL:
        raise InstanceError(f"power_state {_show(value)} is not one of Nova's power states {list(PowerState.ALL)}")
    return value


# --------------------------------------------------------------------------- the record


@dataclasses.dataclass
class Flavor:
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int = 0
    ephemeral_gb: int = 0
    swap_mb: int = 0
    extra_specs: dict = dataclasses.field(default_factory=dict)

    KEYS = ("name", "vcpus", "ram_mb")
    OPTIONAL = ("disk_gb", "ephemeral_gb", "swap_mb", "extra_specs")

    @classmethod
    def from_dict(cls, data):
        data = _mapping(data, "flavor")
        _strict_keys(data, "flavor", cls.KEYS, cls.OPTIONAL)
        return cls(
            name=validate_simple_name(data["name"], "flavor name"),
            vcpus=_int_in_range(data["vcpus"], "flavor vcpus", 1, MAX_VCPUS),
            ram_mb=_int_in_range(data["ram_mb"], "flavor ram_mb", MIN_RAM_MB, MAX_RAM_MB),
            disk_gb=_int_in_range(data.get("disk_gb", 0), "flavor disk_gb", 0, MAX_DISK_GB),
            ephemeral_gb=_int_in_range(data.get("ephemeral_gb", 0), "flavor ephemeral_gb", 0, MAX_DISK_GB),
            swap_mb=_int_in_range(data.get("swap_mb", 0), "flavor swap_mb", 0, MAX_SWAP_MB),
            extra_specs=validate_extra_specs(data.get("extra_specs", {})),
        )

    def to_dict(self):
        return {
            "name": self.name,
            "vcpus": self.vcpus,
            "ram_mb": self.ram_mb,
            "disk_gb": self.disk_gb,
            "ephemeral_gb": self.ephemeral_gb,
            "swap_mb": self.swap_mb,
            "extra_specs": dict(self.extra_specs),
        }


def validate_flavor(data):
    """A flavor dict, validated and completed with its defaults."""
    return Flavor.from_dict(data).to_dict()


@dataclasses.dataclass
class Image:
    id: str
    properties: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data):
        data = _mapping(data, "image")
        _strict_keys(data, "image", ("id",), ("properties",))
        return cls(id=validate_image_id(data["id"]), properties=validate_image_properties(data.get("properties", {})))

    def to_dict(self):
        return {"id": self.id, "properties": copy.deepcopy(self.properties)}


@dataclasses.dataclass
class Port:
    network: str
    mac: str
    ip: str | None = None

    @classmethod
    def from_dict(cls, data):
        data = _mapping(data, "port")
        _strict_keys(data, "port", ("network", "mac"), ("ip",))
        return cls(network=validate_simple_name(data["network"], "network name"), mac=validate_mac(data["mac"]), ip=validate_ip(data.get("ip")))

    def to_dict(self):
        return {"network": self.network, "mac": self.mac, "ip": self.ip}


@dataclasses.dataclass
class ActionEntry:
    """One line of ``nova instance-action-list``."""

    action: str
    request_id: str
    start_time: str
    finish_time: str | None = None
    result: str | None = None
    message: str | None = None

    @classmethod
    def from_dict(cls, data):
        data = _mapping(data, "action log entry")
        _strict_keys(data, "action log entry", ("action", "request_id", "start_time"), ("finish_time", "result", "message"))
        if data["action"] not in ACTION_LOG_NAMES:
            raise InstanceError(f"action log entry names unknown action {_show(data['action'])}; known: {', '.join(sorted(ACTION_LOG_NAMES))}")
        result = data.get("result")
        if result not in (None,) + RESULTS:
            raise InstanceError(f"action log result {_show(result)} must be null, 'Success' or 'Error'")
        message = data.get("message")
        return cls(
            action=data["action"],
            request_id=validate_request_id(data["request_id"]),
            start_time=validate_timestamp(data["start_time"], "action start_time"),
            finish_time=_optional_timestamp(data.get("finish_time"), "action finish_time"),
            result=result,
            message=None if message is None else check_text(message, "action message", MAX_MESSAGE_LEN, multiline=True),
        )

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Instance:  # pylint: disable=too-many-instance-attributes
    """The instance record. Build it with :meth:`new` or :meth:`from_dict`; both validate."""

    uuid: str
    name: str
    project: str
    flavor: Flavor
    image: Image
    created_at: str
    updated_at: str
    availability_zone: str = "nova"
    server_group: str | None = None
    ports: list = dataclasses.field(default_factory=list)
    vm_state: str = VmState.BUILDING
    task_state: str | None = TaskState.SCHEDULING
    power_state: int = PowerState.NOSTATE
    host: str | None = None
    launched_at: str | None = None
    locked: bool = False
    locked_reason: str | None = None
    actions: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)
    public_keys: dict = dataclasses.field(default_factory=dict)
    user_data: str | None = None
    launch_index: int = 0
    config_drive: bool = True

    REQUIRED = ("uuid", "name", "project", "flavor", "image", "created_at", "updated_at")
    OPTIONAL = (
        "record_version",
        "availability_zone",
        "server_group",
        "ports",
        "vm_state",
        "task_state",
        "power_state",
        "host",
        "launched_at",
        "locked",
        "locked_reason",
        "actions",
        "meta",
        "public_keys",
        "user_data",
        "launch_index",
        "config_drive",
    )

    @classmethod
    def new(cls, *, name, project, flavor, image, uuid=None, now=None, **fields):
        """A record for a new instance: vm_state building, task_state scheduling, no action yet."""
        now = utcnow() if now is None else now
        data = dict(fields, uuid=uuid or str(uuid_mod.uuid4()), name=name, project=project, flavor=flavor, image=image, created_at=now, updated_at=now)
        if isinstance(flavor, Flavor):
            data["flavor"] = flavor.to_dict()
        if isinstance(image, Image):
            data["image"] = image.to_dict()
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data):  # pylint: disable=too-many-locals
        """Validate a record dict (from JSON, the domain metadata or a playbook) and build the record."""
        data = _mapping(data, "instance record")
        _strict_keys(data, "instance record", cls.REQUIRED, cls.OPTIONAL)
        version = data.get("record_version", RECORD_VERSION)
        if version != RECORD_VERSION:
            raise InstanceError(f"instance record version {_show(version)} is not supported by this collection version (it reads version {RECORD_VERSION})")
        ports_in = data.get("ports", [])
        if not isinstance(ports_in, list):
            raise InstanceError(f"instance ports must be a list, got {_show(ports_in)}")
        ports = [Port.from_dict(p) for p in ports_in]
        macs = [p.mac for p in ports]
        if len(set(macs)) != len(macs):
            raise InstanceError(f"instance ports repeat a MAC address: {', '.join(sorted(m for m in set(macs) if macs.count(m) > 1))}")
        actions_in = data.get("actions", [])
        if not isinstance(actions_in, list):
            raise InstanceError(f"instance actions must be a list, got {_show(actions_in)}")
        if len(actions_in) > MAX_ACTIONS:
            raise InstanceError(f"instance action log has more than {MAX_ACTIONS} entries")
        locked = data.get("locked", False)
        if not isinstance(locked, bool):
            raise InstanceError(f"locked must be true or false, got {_show(locked)}")
        reason = data.get("locked_reason")
        config_drive = data.get("config_drive", True)
        if not isinstance(config_drive, bool):
            raise InstanceError(f"config_drive must be true or false, got {_show(config_drive)}")
        group = data.get("server_group")
        host = data.get("host")
        return cls(
            uuid=validate_uuid(data["uuid"], "instance uuid"),
            name=validate_instance_name(data["name"]),
            project=validate_project(data["project"]),
            flavor=Flavor.from_dict(data["flavor"]),
            image=Image.from_dict(data["image"]),
            created_at=validate_timestamp(data["created_at"], "created_at"),
            updated_at=validate_timestamp(data["updated_at"], "updated_at"),
            availability_zone=validate_simple_name(data.get("availability_zone", "nova"), "availability zone"),
            server_group=None if group is None else validate_simple_name(group, "server group name"),
            ports=ports,
            vm_state=check_vm_state(data.get("vm_state", VmState.BUILDING)),
            task_state=check_task_state(data.get("task_state", TaskState.SCHEDULING)),
            power_state=check_power_state(data.get("power_state", PowerState.NOSTATE)),
            host=None if host is None else validate_host_name(host),
            launched_at=_optional_timestamp(data.get("launched_at"), "launched_at"),
            locked=locked,
            locked_reason=None if reason is None else check_text(reason, "locked_reason", 255),
            actions=[ActionEntry.from_dict(a) for a in actions_in],
            meta=validate_meta(data.get("meta", {})),
            public_keys=validate_public_keys(data.get("public_keys", {})),
            user_data=validate_user_data(data.get("user_data")),
            launch_index=_int_in_range(data.get("launch_index", 0), "launch_index", 0, 65535),
            config_drive=config_drive,
        )

    def to_dict(self):
        return {
            "record_version": RECORD_VERSION,
            "uuid": self.uuid,
            "name": self.name,
            "project": self.project,
            "flavor": self.flavor.to_dict(),
            "image": self.image.to_dict(),
            "availability_zone": self.availability_zone,
            "server_group": self.server_group,
            "ports": [p.to_dict() for p in self.ports],
            "vm_state": self.vm_state,
            "task_state": self.task_state,
            "power_state": self.power_state,
            "host": self.host,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "launched_at": self.launched_at,
            "locked": self.locked,
            "locked_reason": self.locked_reason,
            "actions": [a.to_dict() for a in self.actions],
            "meta": dict(self.meta),
            "public_keys": dict(self.public_keys),
            "user_data": self.user_data,
            "launch_index": self.launch_index,
            "config_drive": self.config_drive,
        }

    def to_json(self, *, indent=None):
        """Deterministic JSON (sorted keys; ASCII only, so it is safe as XML text too)."""
        separators = (",", ": ") if indent else (",", ":")
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=separators, ensure_ascii=True)

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InstanceError(f"instance record is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def validate(self):
        """Check a record that was changed in place; returns it."""
        Instance.from_dict(self.to_dict())
        return self

    def label(self):
        """How messages name the instance: ``web-1 (3f2a...)``."""
        return f"{self.name} ({self.uuid})"


def as_instance(record):
    """An :class:`Instance` from a record or a record dict (validated)."""
    if isinstance(record, Instance):
        return record.validate()
    return Instance.from_dict(record)


# --------------------------------------------------------------------------- the action log

ANY = None
NO_TASK = frozenset({None})
RESULTS = ("Success", "Error")
# The names an action log entry may carry: Nova's instance-action names (nova/compute/
# instance_actions.py). Each action of the registry in ``_actions`` logs one of them
# (a unit test holds the two equal); the state table itself is that registry.
ACTION_LOG_NAMES = frozenset(
    {
        "create",
        "start",
        "stop",
        "reboot",
        "pause",
        "unpause",
        "suspend",
        "resume",
        "createImage",
        "createBackup",
        "rebuild",
        "evacuate",
        "rescue",
        "unrescue",
        "shelve",
        "shelveOffload",
        "unshelve",
        "resize",
        "migrate",
        "confirmResize",
        "revertResize",
        "live-migration",
        "delete",
        "restore",
        "attach_volume",
        "detach_volume",
        "attach_interface",
        "detach_interface",
        "lock",
        "unlock",
    }
)


def states_text(states):
    """``a, b or c`` of a set of states (None written as None), sorted."""
    names = ["None" if s is None else s for s in sorted(states, key=lambda s: (s is not None, s or ""))]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def update_task_state(record, task_state, *, expected_task_state=NO_TASK, now=None):
    """Move to the next task state of a running action, as Nova's ``instance.save(expected_task_state=...)``."""
    if not isinstance(record, Instance):
        raise InstanceError("update_task_state needs an Instance record")
    expected = frozenset(expected_task_state) if not isinstance(expected_task_state, frozenset) else expected_task_state
    if record.task_state not in expected:
        raise InstanceError(
            f"instance {record.label()} has task_state {record.task_state}, expected {states_text(expected)}: another action changed it; look at the action log"
        )
    record.task_state = check_task_state(task_state)
    record.updated_at = utcnow() if now is None else validate_timestamp(now)
    return record


def set_lock(record, locked, request_id, *, reason=None, now=None):
    """Lock or unlock (``nova lock --reason``); returns True when the record changed.

    Locking a locked instance or unlocking an unlocked one changes nothing and logs
    nothing, so that a playbook run twice reports no change.
    """
    if not isinstance(record, Instance):
        raise InstanceError("set_lock needs an Instance record")
    if not isinstance(locked, bool):
        raise InstanceError(f"locked must be true or false, got {_show(locked)}")
    request_id = validate_request_id(request_id)
    if reason is not None:
        check_text(reason, "lock reason", 255)
    if record.locked == locked:
        return False
    now = utcnow() if now is None else validate_timestamp(now)
    action = "lock" if locked else "unlock"
    record.locked = locked
    record.locked_reason = reason if locked else None
    record.updated_at = now
    record.actions.append(ActionEntry(action=action, request_id=request_id, start_time=now, finish_time=now, result="Success"))
    return True


# --------------------------------------------------------------------------- config drive


def sanitize_hostname(name, default_name=None):
    """Nova's utils.sanitize_hostname: RFC 952/1123 hostname from a display name, at most 63 characters.

    As Nova does since it stopped publishing dotted names, spaces, underscores and periods
    become '-', so the result is one DNS label (``web.1`` gives ``web-1``), as the DHCP
    server's hosts file and the config drive need. One difference: Nova keeps non-ASCII
    word characters (``café``); here only ASCII letters, digits and '-' survive.
    """
    hostname = name.encode("latin-1", "ignore").decode("latin-1")[:63]
    hostname = re.sub(r"[ _.]", "-", hostname)
    hostname = re.sub(r"[^\w.-]+", "", hostname, flags=re.ASCII)
    hostname = hostname.lower().strip(".-")
    if not hostname and default_name is not None:
        return default_name[:63]
    return hostname


def hostname_of(record):
    inst = as_instance(record)
    return sanitize_hostname(inst.name, f"server-{inst.uuid}")


CONFIG_DRIVE_VERSIONS = ("2012-08-10", "latest")


def meta_data(record, version="latest"):
    """meta_data.json content (a dict) as Nova's InstanceMetadata writes it for ``version``.

    ``keys`` appeared in 2015-10-15 and ``project_id`` in 2016-10-06, so the
    2012-08-10 tree has neither. ``random_seed`` is left out: the content is
    deterministic, a config drive is rebuilt byte for byte from the record.
    """
    inst = as_instance(record)
    if version not in CONFIG_DRIVE_VERSIONS:
        raise InstanceError(f"config drive version {_show(version)} is not one of {', '.join(CONFIG_DRIVE_VERSIONS)}")
    data = {
        "uuid": inst.uuid,
        "name": inst.name,
        "hostname": hostname_of(inst),
        "availability_zone": inst.availability_zone,
        "launch_index": inst.launch_index,
        "meta": dict(inst.meta),
        "public_keys": dict(inst.public_keys),
    }
    if version == "latest":
        data["project_id"] = inst.project
        data["keys"] = [{"name": name, "type": "ssh", "data": key} for name, key in sorted(inst.public_keys.items())]
    return data


def config_drive_files(record):
    """The files of the instance's config drive: {relative path: bytes}, deterministic.

    openstack/{2012-08-10,latest}/meta_data.json and, when the record has user data,
    openstack/{2012-08-10,latest}/user_data. The volume label must be ``config-2``.
    """
    inst = as_instance(record)
    files = {}
    for version in CONFIG_DRIVE_VERSIONS:
        text = json.dumps(meta_data(inst, version), sort_keys=True, ensure_ascii=True)
        files[f"openstack/{version}/meta_data.json"] = text.encode("ascii")
        if inst.user_data is not None:
            files[f"openstack/{version}/user_data"] = inst.user_data.encode("utf-8")
    return files


CONFIG_DRIVE_LABEL = "config-2"


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
        raise ImageDoesNotFit(
            f"{where}: the image needs {min_ram} MB of RAM (min_ram) and flavor {flavor.name} has "
            f"{flavor.ram_mb} MB; resize the instance first or pick another image"
        )
    if flavor.disk_gb and min_disk and min_disk > flavor.disk_gb:
        raise ImageDoesNotFit(
            f"{where}: the image needs a {min_disk} GB root disk (min_disk) and flavor {flavor.name} has "
            f"{flavor.disk_gb} GB; resize the instance first or pick another image"
        )
    if flavor.disk_gb and virtual_size > flavor.disk_gb * 1024**3:
        raise ImageDoesNotFit(f"{where}: its virtual size of {virtual_size} bytes is larger than the {flavor.disk_gb} GB root disk of flavor {flavor.name}")
