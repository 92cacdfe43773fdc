# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Nova's filter scheduler as a pure-Python engine.

The engine takes the host facts gathered by ``virtcloud.compute.compute_facts``
(Nova's HostState field names) and a request (flavor, image, availability zone,
server group, hints, retry hosts, number of instances) and returns a host per
instance, ordered alternates and a trace of every decision.

It follows nova/filters.py, nova/weights.py and nova/scheduler/{filters,weights}:

* a filter is a small class with ``host_passes(host, spec) -> bool``; for a
  rejected host ``reason(host, spec)`` says why, with the numbers;
* a weigher returns a raw number per host; raw weights are clamped to the
  weigher's minval/maxval, scaled to 0..1 (all equal gives 0), multiplied by a
  signed multiplier (a per-aggregate value overrides it, the minimum of several
  aggregates wins) and summed;
* hosts are sorted by total weight, ties broken by host name; with
  ``host_subset_size`` > 1 the host is drawn from the top N with a seeded
  random generator, so the same input always gives the same answer;
* ``num_instances`` > 1 is scheduled in one call: each placed instance consumes
  RAM, disk, vCPUs, an instance slot and an I/O operation on its host and joins
  the server group, as Nova's ``consume_from_request`` does.

Deliberate differences from Nova, all in the direction of never placing an
instance where it cannot run:

* CoreFilter rejects a host that reports no vCPUs (Nova lets it pass);
* a placed instance consumes its swap from free_disk_mb too (Nova's DiskFilter
  asks for it but Nova's consume step forgets it);
* forced hosts (``zone:host``) do not exist: hints and zones never bypass a filter.

The engine imports nothing from Ansible; the filter plugin
``virtcloud.compute.schedule`` is a thin adapter over ``schedule()``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import random
import re
import types
import typing as t
from dataclasses import dataclass, field

from ansible_collections.virtcloud.compute.plugins.module_utils._capacity import (
    disk_fits,
    disk_shortfall,
    effective_free_disk_mb,
    flavor_disk_mb,
    free_vcpus,
    ram_fits,
    ram_shortfall,
    vcpus_fit,
    vcpus_shortfall,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError


class SchedulerError(VirtcloudError):
    """Bad input: the message says which value is wrong and why."""


class NoValidHost(SchedulerError):
    """No host passed the filters for one of the instances of the request."""

    def __init__(self, message: str, trace: dict[str, t.Any]) -> None:
        super().__init__(message)
        self.trace = trace


DEFAULT_AVAILABILITY_ZONE = "nova"
GROUP_POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")
FILTER_OPTION_DEFAULTS: dict[str, t.Any] = {
    # Nova's [filter_scheduler] max_instances_per_host and max_io_ops_per_host.
    "max_instances_per_host": 50,
    "max_io_ops_per_host": 8,
    # Nova's [DEFAULT] default_availability_zone: the zone of a host that names none.
    "default_availability_zone": DEFAULT_AVAILABILITY_ZONE,
}


# --------------------------------------------------------------------------
# Input validation helpers
# --------------------------------------------------------------------------


def _fail(message: str) -> t.NoReturn:
    raise SchedulerError(message)


def _type_name(value: t.Any) -> str:
    return type(value).__name__


def _is_number(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _label(where: str, key: str) -> str:
    """Messages are built only on failure: callers on the per-host path pass where and key apart."""
    return f"{where}.{key}" if key else where


def _want_int(value: t.Any, where: str, minimum: int | None = None, key: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(f"{_label(where, key)} must be an integer, got {_type_name(value)} {value!r}")
    if minimum is not None and value < minimum:
        _fail(f"{_label(where, key)} must be at least {minimum}, got {value}")
    return int(value)


def _want_number(value: t.Any, where: str, minimum: float | None = None, positive: bool = False, key: str = "") -> float:
    if not _is_number(value):
        _fail(f"{_label(where, key)} must be a number, got {_type_name(value)} {value!r}")
    if positive and value <= 0:
        _fail(f"{_label(where, key)} must be greater than 0, got {value}")
    if minimum is not None and value < minimum:
        _fail(f"{_label(where, key)} must be at least {minimum}, got {value}")
    return value


def _want_str(value: t.Any, where: str, key: str = "") -> str:
    if not isinstance(value, str) or not value:
        _fail(f"{_label(where, key)} must be a non-empty string, got {_type_name(value)} {value!r}")
    return str(value)


def _want_dict(value: t.Any, where: str, key: str = "") -> dict:
    if not isinstance(value, dict):
        _fail(f"{_label(where, key)} must be a dictionary, got {_type_name(value)}")
    return value


def _want_list(value: t.Any, where: str, key: str = "") -> list:
    if not isinstance(value, (list, tuple)):
        _fail(f"{_label(where, key)} must be a list, got {_type_name(value)}")
    return list(value)


def _check_keys(value: dict, allowed: t.Iterable[str], where: str) -> None:
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        _fail(f"{where} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _text(value: t.Any) -> str:
    """Metadata and extra specs are strings in Nova; YAML booleans become 'true'/'false'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _want_scalar_text(value: t.Any, where: str) -> str:
    if not isinstance(value, (str, int, float, bool)):
        _fail(f"{where} must be a string, number or boolean, got {_type_name(value)}")
    return _text(value)


# --------------------------------------------------------------------------
# extra_specs operators (nova/scheduler/filters/extra_specs_ops.py)
# --------------------------------------------------------------------------

_NUMERIC_OPS: dict[str, t.Callable[[float, float], bool]] = {
    "=": operator.ge,  # Nova: "= 4" means "at least 4"
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
}
_STRING_OPS: dict[str, t.Callable[[str, str], bool]] = {
    "s==": operator.eq,
    "s!=": operator.ne,
    "s<": operator.lt,
    "s<=": operator.le,
    "s>": operator.gt,
    "s>=": operator.ge,
}
EXTRA_SPEC_OPERATORS = tuple(_NUMERIC_OPS) + tuple(_STRING_OPS) + ("<in>", "<all-in>", "<or>")


def check_requirement(req: str, where: str) -> None:
    """Reject an extra-spec requirement that Nova would silently never match."""
    words = req.split()
    if not words or words[0] not in EXTRA_SPEC_OPERATORS:
        return  # a plain value: compared as a whole string
    op, args = words[0], words[1:]
    if not args:
        _fail(f"{where} = {req!r}: operator {op} needs a value")
    if op in _NUMERIC_OPS:
        try:
            float(args[0])
        except ValueError:
            _fail(f"{where} = {req!r}: operator {op} compares numbers, {args[0]!r} is not a number")
    if op == "<or>" and (len(args) % 2 == 0 or any(w != "<or>" for w in args[1::2])):
        _fail(f"{where} = {req!r}: write '<or> a <or> b ...'")


def match_requirement(value: str | None, req: str) -> bool:
    """Nova's extra_specs_ops.match(): does the host value satisfy the requirement?

    Without an operator the requirement is compared as a whole string. A host value
    that is not a number never satisfies a numeric operator.
    """
    words = req.split()
    op = words[0] if words else None
    if op not in EXTRA_SPEC_OPERATORS:
        return value == req
    if value is None or len(words) < 2:
        return False
    args = words[1:]
    if op == "<or>":
        return value in args[0::2]
    if op == "<in>":
        return args[0] in value
    if op == "<all-in>":
        return all(word in value for word in args)
    if op in _STRING_OPS:
        return _STRING_OPS[op](value, args[0])
    try:
        return _NUMERIC_OPS[op](float(value), float(args[0]))
    except ValueError:
        return False


# --------------------------------------------------------------------------
# Image properties (nova/objects/fields.py canonicalisation)
# --------------------------------------------------------------------------

_ARCH_ALIASES = {"i386": "i686", "i486": "i686", "i586": "i686", "x86_32": "i686", "amd64": "x86_64"}
_HV_ALIASES = {"xapi": "xen"}
_VM_MODE_ALIASES = {"pv": "xen", "hv": "hvm", "baremetal": "hvm"}
# Current property name first, then the legacy name Nova still maps onto it.
_IMAGE_PROPERTY_NAMES = {
    "arch": ("hw_architecture", "architecture"),
    "hv_type": ("img_hv_type", "hypervisor_type"),
    "vm_mode": ("hw_vm_mode", "vm_mode"),
    "hv_version": ("img_hv_requested_version", "hypervisor_version_requires"),
}
_VERSION_CLAUSE = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(\d+(?:\.\d+){0,2})\s*$")
_VERSION_OPS: dict[str, t.Callable[[t.Any, t.Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
}


def canonical_arch(name: str | None) -> str | None:
    if not name:
        return None
    name = name.lower()
    return _ARCH_ALIASES.get(name, name)


def canonical_hv_type(name: str | None) -> str | None:
    if not name:
        return None
    name = name.lower()
    return _HV_ALIASES.get(name, name)


def canonical_vm_mode(name: str | None) -> str | None:
    if not name:
        return None
    name = name.lower()
    return _VM_MODE_ALIASES.get(name, name)


def version_tuple(version: int) -> tuple[int, int, int]:
    """Nova's integer hypervisor version (major * 1000000 + minor * 1000 + micro)."""
    return (version // 1000000, version // 1000 % 1000, version % 1000)


def version_text(version: int) -> str:
    return ".".join(str(part) for part in version_tuple(version))


def parse_version_predicate(text: str, where: str) -> list[tuple[str, tuple[int, int, int]]]:
    """'>= 6.0, < 9' -> [('>=', (6, 0, 0)), ('<', (9, 0, 0))]."""
    clauses = []
    for part in text.split(","):
        found = _VERSION_CLAUSE.match(part)
        if not found:
            _fail(f"{where} = {text!r} is not a version predicate such as '>= 6.2' or '>= 6.0, < 9.0'")
        numbers = [int(n) for n in found.group(2).split(".")] + [0, 0]
        clauses.append((found.group(1), (numbers[0], numbers[1], numbers[2])))
    return clauses


# --------------------------------------------------------------------------
# Host state
# --------------------------------------------------------------------------

HOST_REQUIRED = (
    "host",
    "free_ram_mb",
    "total_usable_ram_mb",
    "vcpus_total",
    "vcpus_used",
    "total_usable_disk_gb",
    "free_disk_mb",
    "ram_allocation_ratio",
    "cpu_allocation_ratio",
    "disk_allocation_ratio",
    "num_instances",
    "num_io_ops",
)


# Shared, read-only values: with 10,000 hosts every container a host does not need
# is garbage-collector work saved on each call.
_EMPTY: t.Mapping[str, t.Any] = types.MappingProxyType({})


@dataclass(slots=True, eq=False)
class HostState:
    """One compute host as the scheduler sees it; consumed as instances are placed."""

    host: str
    free_ram_mb: float
    total_usable_ram_mb: float
    vcpus_total: int
    vcpus_used: float
    total_usable_disk_gb: float
    free_disk_mb: float
    ram_allocation_ratio: float
    cpu_allocation_ratio: float
    disk_allocation_ratio: float
    num_instances: int
    num_io_ops: int
    hypervisor_type: str = ""
    hypervisor_version: int = 0
    supported_instances: tuple[tuple[str | None, str | None, str | None], ...] = ()
    cpu_info: dict = field(default_factory=dict)
    availability_zones: frozenset[str] = frozenset()
    aggregate_names: tuple[str, ...] = ()
    aggregate_metadata: t.Mapping[str, set[str]] = field(default_factory=lambda: _EMPTY)
    multiplier_overrides: t.Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    enabled: bool = True
    disabled_reason: str = ""
    up: bool = True
    instance_uuids: frozenset[str] = frozenset()
    failed_builds: int = 0
    facts: dict = field(default_factory=dict)
    disk_available_least: float | None = None

    def capability(self, path: t.Sequence[str]) -> t.Any:
        """Nova's ComputeCapabilitiesFilter lookup: an attribute, then nested keys.

        The first name is a live attribute of the host state when there is one (so
        it reflects the instances placed earlier in this request), otherwise a key
        of the host facts. Strings holding JSON are decoded on the way down.
        """
        first = path[0]
        value = getattr(self, first) if first in HOST_ATTRIBUTES else self.facts.get(first)
        for name in path[1:]:
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    return None
            if not isinstance(value, dict):
                return None
            value = value.get(name)
            if value is None:
                return None
        return value


HOST_ATTRIBUTES = frozenset(f.name for f in dataclasses.fields(HostState))


def _aggregates(raw: t.Any, where: str) -> tuple[tuple[str, ...], t.Mapping[str, set[str]], dict[str, list[str]]]:
    """Aggregate names, metadata key -> values (comma-split, as Nova), and raw values per key."""
    if not raw:
        return (), _EMPTY, {}
    names: list[str] = []
    metadata: dict[str, set[str]] = {}
    raw_values: dict[str, list[str]] = {}
    for index, aggregate in enumerate(_want_list(raw, where, key="aggregates")):
        here = f"{where}.aggregates[{index}]"
        aggregate = _want_dict(aggregate, here)
        names.append(_want_str(aggregate.get("name"), f"{here}.name"))
        for key, value in _want_dict(aggregate.get("metadata") or {}, f"{here}.metadata").items():
            text = _want_scalar_text(value, f"{here}.metadata.{key}")
            metadata.setdefault(str(key), set()).update(part.strip() for part in text.split(","))
            raw_values.setdefault(str(key), []).append(text)
    return tuple(names), metadata, raw_values


def _multiplier_overrides(raw_values: dict[str, list[str]], host: str, warnings: list[str]) -> t.Mapping[str, float]:
    """Per-aggregate weigher multipliers: the minimum of the host's aggregates wins.

    As in Nova, a value that is not a number is ignored with a warning and the
    configured multiplier applies.
    """
    overrides: dict[str, float] = {}
    for option in MULTIPLIER_DEFAULTS:
        if option not in raw_values:
            continue
        try:
            values = [float(v) for v in raw_values[option]]
        except ValueError:
            warnings.append(f"host {host}: aggregate metadata {option}={raw_values[option]} is not a number; the configured multiplier is used")
            continue
        overrides[option] = min(values)
    return overrides or _EMPTY


def _service(raw: t.Any, where: str) -> tuple[bool, str, bool]:
    if raw is None:
        return True, "", True
    raw = _want_dict(raw, where, key="service")
    enabled = raw.get("enabled", True)
    up = raw.get("up", True)
    if not isinstance(enabled, bool) or not isinstance(up, bool):
        _fail(f"{where}.service.enabled and .up must be booleans, got {enabled!r} and {up!r}")
    reason = raw.get("disabled_reason") or ""
    return enabled, str(reason), up


@functools.lru_cache(maxsize=512)
def _canonical_supported(arch: str, hv_type: str, vm_mode: str) -> tuple[str | None, str | None, str | None]:
    return canonical_arch(arch), canonical_hv_type(hv_type), canonical_vm_mode(vm_mode)


def _supported_instances(raw: t.Any, where: str) -> tuple[tuple[str | None, str | None, str | None], ...]:
    result = []
    for index, item in enumerate(_want_list(raw, where, key="supported_instances")):
        if not isinstance(item, (list, tuple)) or len(item) != 3 or not all(isinstance(v, str) for v in item):
            _fail(f"{where}.supported_instances[{index}] must be [architecture, hypervisor type, vm mode], got {item!r}")
        result.append(_canonical_supported(str(item[0]), str(item[1]), str(item[2])))
    return _shared_supported(tuple(result))


@functools.lru_cache(maxsize=256)
def _shared_supported(value: tuple[tuple[str | None, str | None, str | None], ...]) -> tuple[tuple[str | None, str | None, str | None], ...]:
    return value


@functools.lru_cache(maxsize=256)
def _zone_set(*zones: str) -> frozenset[str]:
    return frozenset(zones)


def _instances(raw: t.Any, where: str) -> list[dict]:
    instances = _want_list(raw, where, key="instances")
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or not isinstance(instance.get("uuid"), str) or not instance["uuid"]:
            _fail(f"{where}.instances[{index}] must be a dictionary with a uuid, got {instance!r}")
    return instances


def _cpu_info(raw: t.Any, where: str) -> dict:
    """A dictionary, or the JSON text of one (the form Nova keeps it in)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            _fail(f"{where}.cpu_info is a string but not JSON")
    return _want_dict(raw, where, key="cpu_info")


# Numeric host facts: (key, must be an integer, minimum, must be positive, default when optional).
_HOST_NUMBERS: tuple[tuple[str, bool, float | None, bool, int | None], ...] = (
    ("free_ram_mb", False, None, False, None),
    ("total_usable_ram_mb", False, 0, False, None),
    ("vcpus_total", True, 0, False, None),
    ("vcpus_used", False, 0, False, None),
    ("total_usable_disk_gb", False, 0, False, None),
    ("free_disk_mb", False, None, False, None),
    ("ram_allocation_ratio", False, None, True, None),
    ("cpu_allocation_ratio", False, None, True, None),
    ("disk_allocation_ratio", False, None, True, None),
    ("num_instances", True, 0, False, None),
    ("num_io_ops", True, 0, False, None),
    ("hypervisor_version", True, 0, False, 0),
    ("failed_builds", True, 0, False, 0),
)


def _host_numbers(facts: dict, where: str) -> dict[str, t.Any]:
    """The numeric facts, checked; plain int/float in range take the fast path."""
    numbers = {}
    for key, integer, minimum, positive, default in _HOST_NUMBERS:
        value = facts.get(key)
        if value is None:
            value = default
        kind = type(value)
        plain = kind is int or (kind is float and not integer and math.isfinite(value))
        if plain and (minimum is None or value >= minimum) and (not positive or value > 0):
            numbers[key] = value
        elif integer:
            numbers[key] = _want_int(value, where, minimum, key=key)
        else:
            numbers[key] = _want_number(value, where, minimum, positive, key=key)
    return numbers


def make_host_state(facts: t.Any, index: int, options: dict[str, t.Any], warnings: list[str]) -> HostState:
    """Validate one host's facts and build its HostState (the input is not modified)."""
    facts = _want_dict(facts, f"hosts[{index}]")
    name = _want_str(facts.get("host"), f"hosts[{index}]", key="host")
    where = f"host {name}"
    missing = [key for key in HOST_REQUIRED if facts.get(key) is None]
    if missing:
        _fail(f"{where} is missing {', '.join(missing)} (host facts come from virtcloud.compute.compute_facts)")
    numbers = _host_numbers(facts, where)
    least = facts.get("disk_available_least")
    if least is not None:
        least = _want_number(least, where, key="disk_available_least")
        numbers["free_disk_mb"] = effective_free_disk_mb(numbers["free_disk_mb"], least)
    names, metadata, raw_values = _aggregates(facts.get("aggregates") or [], where)

    zone = facts.get("availability_zone")
    if zone:
        zones = _zone_set(_want_str(zone, where, key="availability_zone"))
    elif "availability_zone" in metadata:
        zones = _zone_set(*sorted(metadata["availability_zone"]))
    else:
        zones = _zone_set(options["default_availability_zone"])
    enabled, disabled_reason, up = _service(facts.get("service"), where)
    instances = _instances(facts.get("instances") or [], where)
    hypervisor_type = facts.get("hypervisor_type") or ""
    if not isinstance(hypervisor_type, str):
        _fail(f"{where}.hypervisor_type must be a string, got {_type_name(hypervisor_type)}")

    return HostState(
        host=name,
        hypervisor_type=hypervisor_type,
        supported_instances=_supported_instances(facts.get("supported_instances") or [], where),
        cpu_info=_cpu_info(facts.get("cpu_info") or {}, where),
        availability_zones=zones,
        aggregate_names=names,
        aggregate_metadata=metadata,
        multiplier_overrides=_multiplier_overrides(raw_values, name, warnings) if raw_values else {},
        enabled=enabled,
        disabled_reason=disabled_reason,
        up=up,
        instance_uuids=frozenset(i["uuid"] for i in instances) if instances else frozenset(),
        facts=facts,
        disk_available_least=least,
        **numbers,
    )


# --------------------------------------------------------------------------
# Request spec
# --------------------------------------------------------------------------

REQUEST_KEYS = ("flavor", "image", "availability_zone", "group", "hints", "retry_hosts", "num_instances")
FLAVOR_KEYS = ("name", "vcpus", "ram_mb", "disk_gb", "ephemeral_gb", "swap_mb", "extra_specs")
GROUP_KEYS = ("name", "policy", "rules", "hosts")
HINT_KEYS = ("same_host", "different_host")
AGGREGATE_SPEC_SCOPE = "aggregate_instance_extra_specs"


@dataclass(slots=True, eq=False)
class RequestSpec:
    """The validated request, with the derived values the filters and weighers use."""

    flavor_name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    ephemeral_gb: int
    swap_mb: int
    extra_specs: dict[str, str]
    image_id: str
    image_properties: dict[str, str]
    availability_zone: str | None
    group_name: str | None
    group_policy: str | None
    max_server_per_host: int
    group_hosts: list[str]
    same_host: frozenset[str]
    different_host: frozenset[str]
    retry_hosts: frozenset[str]
    num_instances: int
    options: dict[str, t.Any]
    # derived
    disk_mb: int = 0
    capability_reqs: list[tuple[str, tuple[str, ...], str, bool]] = field(default_factory=list)  # key, path, req, unscoped
    aggregate_reqs: list[tuple[str, str, str]] = field(default_factory=list)
    image_arch: str | None = None
    image_hv_type: str | None = None
    image_vm_mode: str | None = None
    image_hv_version: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)
    image_hv_version_text: str = ""
    # server group members per host, kept up to date while instances are placed
    group_members: dict[str, int] = field(default_factory=dict)

    def members_on(self, host: str) -> int:
        return self.group_members.get(host, 0)


def _uuid_list(value: t.Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    return frozenset(_want_str(v, f"{where}[{i}]") for i, v in enumerate(_want_list(value, where)))


def _flavor(raw: t.Any) -> dict[str, t.Any]:
    raw = _want_dict(raw, "request.flavor")
    _check_keys(raw, FLAVOR_KEYS, "request.flavor")
    flavor = {
        "name": _want_str(raw.get("name", "unnamed"), "request.flavor.name"),
        "vcpus": _want_int(raw.get("vcpus"), "request.flavor.vcpus", minimum=1),
        "ram_mb": _want_int(raw.get("ram_mb"), "request.flavor.ram_mb", minimum=1),
        "disk_gb": _want_int(raw.get("disk_gb", 0), "request.flavor.disk_gb", minimum=0),
        "ephemeral_gb": _want_int(raw.get("ephemeral_gb", 0), "request.flavor.ephemeral_gb", minimum=0),
        "swap_mb": _want_int(raw.get("swap_mb", 0), "request.flavor.swap_mb", minimum=0),
    }
    specs = {}
    for key, value in _want_dict(raw.get("extra_specs") or {}, "request.flavor.extra_specs").items():
        key = _want_str(key, "request.flavor.extra_specs key")
        where = f"request.flavor.extra_specs[{key!r}]"
        specs[key] = _want_scalar_text(value, where)
        check_requirement(specs[key], where)
    flavor["extra_specs"] = specs
    return flavor


def _group(raw: t.Any) -> tuple[str | None, str | None, int, list[str]]:
    if raw is None:
        return None, None, 1, []
    raw = _want_dict(raw, "request.group")
    _check_keys(raw, GROUP_KEYS, "request.group")
    name = _want_str(raw.get("name"), "request.group.name")
    policy = raw.get("policy")
    if policy not in GROUP_POLICIES:
        _fail(f"request.group.policy must be one of {', '.join(GROUP_POLICIES)}, got {policy!r}")
    rules = _want_dict(raw.get("rules") or {}, "request.group.rules")
    _check_keys(rules, ("max_server_per_host",), "request.group.rules")
    max_per_host = 1
    if "max_server_per_host" in rules:
        if policy != "anti-affinity":
            _fail(f"request.group.rules.max_server_per_host only applies to the anti-affinity policy, not {policy}")
        max_per_host = _want_int(rules["max_server_per_host"], "request.group.rules.max_server_per_host", minimum=1)
    hosts = [_want_str(h, f"request.group.hosts[{i}]") for i, h in enumerate(_want_list(raw.get("hosts") or [], "request.group.hosts"))]
    return name, str(policy), max_per_host, hosts


def _image(raw: t.Any) -> tuple[str, dict[str, str]]:
    if raw is None:
        return "", {}
    raw = _want_dict(raw, "request.image")
    _check_keys(raw, ("id", "name", "properties"), "request.image")
    image_id = raw.get("id") or ""
    if not isinstance(image_id, str):
        _fail(f"request.image.id must be a string, got {_type_name(image_id)}")
    properties = {}
    for key, value in _want_dict(raw.get("properties") or {}, "request.image.properties").items():
        if value is not None:
            properties[str(key)] = _want_scalar_text(value, f"request.image.properties.{key}")
    return image_id, properties


def _image_property(properties: dict[str, str], what: str) -> tuple[str, str | None]:
    for name in _IMAGE_PROPERTY_NAMES[what]:
        if properties.get(name):
            return name, properties[name]
    return _IMAGE_PROPERTY_NAMES[what][0], None


def make_request_spec(request: t.Any, options: dict[str, t.Any]) -> RequestSpec:
    """Validate the request and derive what the filters need once, not once per host."""
    request = _want_dict(request, "request")
    _check_keys(request, REQUEST_KEYS, "request")
    if "flavor" not in request:
        _fail("request.flavor is required")
    flavor = _flavor(request["flavor"])
    image_id, properties = _image(request.get("image"))
    zone = request.get("availability_zone") or None
    if zone is not None:
        zone = _want_str(zone, "request.availability_zone")
        if ":" in zone:
            _fail(f"request.availability_zone {zone!r} names a host: forced hosts are not supported, every placement goes through the filters")
    group_name, policy, max_per_host, group_hosts = _group(request.get("group"))
    hints = _want_dict(request.get("hints") or {}, "request.hints")
    _check_keys(hints, HINT_KEYS, "request.hints")

    spec = RequestSpec(
        flavor_name=flavor["name"],
        vcpus=flavor["vcpus"],
        ram_mb=flavor["ram_mb"],
        disk_gb=flavor["disk_gb"],
        ephemeral_gb=flavor["ephemeral_gb"],
        swap_mb=flavor["swap_mb"],
        extra_specs=flavor["extra_specs"],
        image_id=image_id,
        image_properties=properties,
        availability_zone=zone,
        group_name=group_name,
        group_policy=policy,
        max_server_per_host=max_per_host,
        group_hosts=group_hosts,
        same_host=_uuid_list(hints.get("same_host"), "request.hints.same_host"),
        different_host=_uuid_list(hints.get("different_host"), "request.hints.different_host"),
        retry_hosts=frozenset(
            _want_str(h, f"request.retry_hosts[{i}]") for i, h in enumerate(_want_list(request.get("retry_hosts") or [], "request.retry_hosts"))
        ),
        num_instances=_want_int(request.get("num_instances", 1), "request.num_instances", minimum=1),
        options=options,
    )
    spec.disk_mb = flavor_disk_mb(spec.disk_gb, spec.ephemeral_gb, spec.swap_mb)

    for key, req in spec.extra_specs.items():
        scope = key.split(":")
        if len(scope) == 1:
            # Nova: an unscoped key counts only when the host has such an attribute.
            spec.capability_reqs.append((key, (key,), req, True))
        elif scope[0] == "capabilities" and all(scope[1:]):
            spec.capability_reqs.append((key, tuple(scope[1:]), req, False))
        agg_scope = key.split(":", 1)
        if len(agg_scope) == 1:
            spec.aggregate_reqs.append((key, key, req))
        elif agg_scope[0] == AGGREGATE_SPEC_SCOPE:
            spec.aggregate_reqs.append((key, agg_scope[1], req))

    spec.image_arch = canonical_arch(_image_property(properties, "arch")[1])
    spec.image_hv_type = canonical_hv_type(_image_property(properties, "hv_type")[1])
    spec.image_vm_mode = canonical_vm_mode(_image_property(properties, "vm_mode")[1])
    version_name, version_req = _image_property(properties, "hv_version")
    if version_req:
        spec.image_hv_version = parse_version_predicate(version_req, f"request.image.properties.{version_name}")
        spec.image_hv_version_text = version_req
    return spec


def count_group_members(spec: RequestSpec, hosts: list[HostState]) -> None:
    """Members of the server group per host.

    Two sources describe the same members: request.group.hosts (one entry per
    member) and the instances on each host tagged with the group's name. The larger
    count per host is used, so a lagging source never hides a member.
    """
    if spec.group_name is None:
        return
    from_request: dict[str, int] = {}
    for host in spec.group_hosts:
        from_request[host] = from_request.get(host, 0) + 1
    members = dict(from_request)
    for host in hosts:
        tagged = 0
        for instance in host.facts.get("instances") or []:
            group = instance.get("server_group")
            if isinstance(group, dict):
                group = group.get("name")
            if group == spec.group_name:
                tagged += 1
        if tagged > members.get(host.host, 0):
            members[host.host] = tagged
    spec.group_members = members


# --------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------


class BaseFilter:
    """A filter keeps the hosts for which ``host_passes`` is True.

    ``relevant`` is False when the request gives the filter nothing to check (no
    zone, no group, no hints...): ``host_passes`` is then True for every host, so
    the engine skips the per-host calls. ``reason`` explains a rejection with the
    numbers.
    """

    name = "BaseFilter"

    def relevant(self, spec: RequestSpec) -> bool:  # pylint: disable=unused-argument
        return True

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        raise NotImplementedError

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        raise NotImplementedError


class RetryFilter(BaseFilter):
    """Skip the hosts already tried for this request (a failed claim or spawn)."""

    name = "RetryFilter"

    def relevant(self, spec: RequestSpec) -> bool:
        return bool(spec.retry_hosts)

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return host.host not in spec.retry_hosts

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return f"{host.host} was already tried for this request (retry_hosts)"


class ComputeFilter(BaseFilter):
    """Only enabled hosts whose libvirt answers."""

    name = "ComputeFilter"

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return host.enabled and host.up

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        if not host.enabled:
            return f"{host.host} is disabled (reason: {host.disabled_reason or 'none given'})"
        return f"{host.host} is down (libvirt does not answer)"


class AvailabilityZoneFilter(BaseFilter):
    """Only hosts in the requested availability zone."""

    name = "AvailabilityZoneFilter"

    def relevant(self, spec: RequestSpec) -> bool:
        return spec.availability_zone is not None

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return spec.availability_zone is None or spec.availability_zone in host.availability_zones

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return f"{host.host} is in zone {', '.join(sorted(host.availability_zones))}, {spec.availability_zone} requested"


class RamFilter(BaseFilter):
    """Enough RAM, with ram_allocation_ratio, but never more than the host's total for one instance (``_capacity``)."""

    name = "RamFilter"

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return ram_fits(host, spec.ram_mb)

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return ram_shortfall(host, spec.ram_mb).detail


class DiskFilter(BaseFilter):
    """Enough disk for root + ephemeral + swap, with disk_allocation_ratio and disk_available_least, within the host's total."""

    name = "DiskFilter"

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return disk_fits(host, spec.disk_mb)

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return disk_shortfall(host, spec.disk_mb).detail


class CoreFilter(BaseFilter):
    """Enough vCPUs with cpu_allocation_ratio; never more vCPUs than the host's physical CPUs."""

    name = "CoreFilter"

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return vcpus_fit(host, spec.vcpus)

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return vcpus_shortfall(host, spec.vcpus).detail


class NumInstancesFilter(BaseFilter):
    """Fewer than max_instances_per_host instances."""

    name = "NumInstancesFilter"

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return host.num_instances < spec.options["max_instances_per_host"]

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return f"{host.host} has {host.num_instances} instances, max_instances_per_host is {spec.options['max_instances_per_host']}"


class IoOpsFilter(BaseFilter):
    """Fewer than max_io_ops_per_host instances building, resizing, snapshotting..."""

    name = "IoOpsFilter"

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return host.num_io_ops < spec.options["max_io_ops_per_host"]

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return f"{host.host} has {host.num_io_ops} I/O-heavy operations in progress, max_io_ops_per_host is {spec.options['max_io_ops_per_host']}"


class ComputeCapabilitiesFilter(BaseFilter):
    """Flavor extra specs ``capabilities:<path>`` (and unscoped host attributes) against the host."""

    name = "ComputeCapabilitiesFilter"

    def relevant(self, spec: RequestSpec) -> bool:
        return bool(spec.capability_reqs)

    @staticmethod
    def _failure(host: HostState, spec: RequestSpec) -> str | None:
        for key, path, req, unscoped in spec.capability_reqs:
            if unscoped and key not in HOST_ATTRIBUTES and key not in host.facts:
                continue  # an unscoped key the host does not know: ignored, as in Nova
            value = host.capability(path)
            if value is None:
                return f"{host.host} has no value for {key}, flavor {spec.flavor_name} requires {req!r}"
            text = _text(value)
            if not match_requirement(text, req):
                return f"{host.host} has {key} = {text!r}, flavor {spec.flavor_name} requires {req!r}"
        return None

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return self._failure(host, spec) is None

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return self._failure(host, spec) or ""


class ImagePropertiesFilter(BaseFilter):
    """Architecture, hypervisor type, vm mode and hypervisor version the image asks for.

    As Nova: the host must advertise a supported_instances entry matching every
    property the image sets. Unlike Nova, img_hv_requested_version is checked even
    when the image sets none of the other three.
    """

    name = "ImagePropertiesFilter"

    def relevant(self, spec: RequestSpec) -> bool:
        return bool(spec.image_arch or spec.image_hv_type or spec.image_vm_mode or spec.image_hv_version)

    @staticmethod
    def _props_ok(host: HostState, spec: RequestSpec) -> bool:
        wanted = (spec.image_arch, spec.image_hv_type, spec.image_vm_mode)
        if not any(wanted):
            return True
        return any(all(w is None or w == s for w, s in zip(wanted, supported)) for supported in host.supported_instances)

    @staticmethod
    def _version_ok(host: HostState, spec: RequestSpec) -> bool:
        if not spec.image_hv_version or not host.hypervisor_version:
            return True  # Nova: no requirement, or a host that reports no version
        have = version_tuple(host.hypervisor_version)
        return all(_VERSION_OPS[op](have, want) for op, want in spec.image_hv_version)

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return self._props_ok(host, spec) and self._version_ok(host, spec)

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        if not self._props_ok(host, spec):
            wanted = [
                f"{name}={value}"
                for name, value in (("architecture", spec.image_arch), ("hypervisor type", spec.image_hv_type), ("vm mode", spec.image_vm_mode))
                if value
            ]
            offers = ", ".join("/".join(str(v) for v in s) for s in host.supported_instances) or "nothing"
            return f"{host.host} supports {offers}; image {spec.image_id or '(no id)'} requires {', '.join(wanted)}"
        return (
            f"{host.host} runs hypervisor version {version_text(host.hypervisor_version)}, "
            f"image {spec.image_id or '(no id)'} requires {spec.image_hv_version_text}"
        )


class AggregateInstanceExtraSpecsFilter(BaseFilter):
    """Flavor extra specs ``aggregate_instance_extra_specs:<key>`` (and unscoped keys) against aggregate metadata."""

    name = "AggregateInstanceExtraSpecsFilter"

    def relevant(self, spec: RequestSpec) -> bool:
        return bool(spec.aggregate_reqs)

    @staticmethod
    def _failure(host: HostState, spec: RequestSpec) -> str | None:
        for full_key, key, req in spec.aggregate_reqs:
            values = host.aggregate_metadata.get(key)
            if not values:
                aggregates = ", ".join(host.aggregate_names) or "none"
                return f"{host.host} has no aggregate with metadata {key} (aggregates: {aggregates}), flavor {spec.flavor_name} requires {full_key}={req!r}"
            if not any(match_requirement(value, req) for value in values):
                return f"{host.host} aggregates have {key} in {sorted(values)}, flavor {spec.flavor_name} requires {req!r}"
        return None

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return self._failure(host, spec) is None

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return self._failure(host, spec) or ""


class ServerGroupAffinityFilter(BaseFilter):
    """Policy affinity: once the group has a member, only that member's host."""

    name = "ServerGroupAffinityFilter"

    def relevant(self, spec: RequestSpec) -> bool:
        return spec.group_policy == "affinity" and any(spec.group_members.values())

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return not self.relevant(spec) or spec.members_on(host.host) > 0

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        where = ", ".join(sorted(h for h, n in spec.group_members.items() if n))
        return f"{host.host} has no member of affinity group {spec.group_name} (members on {where})"


class ServerGroupAntiAffinityFilter(BaseFilter):
    """Policy anti-affinity: fewer than max_server_per_host (default 1) members on the host."""

    name = "ServerGroupAntiAffinityFilter"

    def relevant(self, spec: RequestSpec) -> bool:
        return spec.group_policy == "anti-affinity"

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return spec.group_policy != "anti-affinity" or spec.members_on(host.host) < spec.max_server_per_host

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return (
            f"{host.host} already has {spec.members_on(host.host)} member(s) of anti-affinity group "
            f"{spec.group_name}, max_server_per_host is {spec.max_server_per_host}"
        )


class SameHostFilter(BaseFilter):
    """Hint same_host: only hosts running at least one of the listed instances."""

    name = "SameHostFilter"

    def relevant(self, spec: RequestSpec) -> bool:
        return bool(spec.same_host)

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return not spec.same_host or not spec.same_host.isdisjoint(host.instance_uuids)

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return f"{host.host} runs none of the same_host instances {', '.join(sorted(spec.same_host))}"


class DifferentHostFilter(BaseFilter):
    """Hint different_host: only hosts running none of the listed instances."""

    name = "DifferentHostFilter"

    def relevant(self, spec: RequestSpec) -> bool:
        return bool(spec.different_host)

    def host_passes(self, host: HostState, spec: RequestSpec) -> bool:
        return spec.different_host.isdisjoint(host.instance_uuids)

    def reason(self, host: HostState, spec: RequestSpec) -> str:
        return f"{host.host} runs {', '.join(sorted(spec.different_host & host.instance_uuids))} listed in different_host"


FILTERS: dict[str, type[BaseFilter]] = {
    "RetryFilter": RetryFilter,
    "ComputeFilter": ComputeFilter,
    "AvailabilityZoneFilter": AvailabilityZoneFilter,
    "RamFilter": RamFilter,
    "DiskFilter": DiskFilter,
    "CoreFilter": CoreFilter,
    "NumInstancesFilter": NumInstancesFilter,
    "IoOpsFilter": IoOpsFilter,
    "ComputeCapabilitiesFilter": ComputeCapabilitiesFilter,
    "ImagePropertiesFilter": ImagePropertiesFilter,
    "AggregateInstanceExtraSpecsFilter": AggregateInstanceExtraSpecsFilter,
    "ServerGroupAffinityFilter": ServerGroupAffinityFilter,
    "ServerGroupAntiAffinityFilter": ServerGroupAntiAffinityFilter,
    "SameHostFilter": SameHostFilter,
    "DifferentHostFilter": DifferentHostFilter,
}

# Nova's defaults plus what placement does for Nova (RAM, disk, vCPUs, zones) and the
# hint filters, so that a hint is always honoured. NumInstancesFilter and IoOpsFilter
# are available but, as in Nova, not enabled by default. Cheap filters run first.
DEFAULT_FILTERS: tuple[str, ...] = (
    "RetryFilter",
    "ComputeFilter",
    "AvailabilityZoneFilter",
    "RamFilter",
    "DiskFilter",
    "CoreFilter",
    "ComputeCapabilitiesFilter",
    "ImagePropertiesFilter",
    "AggregateInstanceExtraSpecsFilter",
    "ServerGroupAntiAffinityFilter",
    "ServerGroupAffinityFilter",
    "SameHostFilter",
    "DifferentHostFilter",
)


# --------------------------------------------------------------------------
# Weighers
# --------------------------------------------------------------------------


def normalise(values: t.Sequence[float], minval: float | None = None, maxval: float | None = None) -> list[float]:
    """Nova's weight normalisation.

    Each value is clamped to [minval, maxval] where those are set; the range is
    minval..maxval, or the smallest..largest clamped value where they are not; the
    values are scaled to 0..1 within the range. When the range is empty (all values
    equal) every value becomes 0.
    """
    clamped = [float(v) for v in values]
    if minval is not None:
        clamped = [max(v, minval) for v in clamped]
    if maxval is not None:
        clamped = [min(v, maxval) for v in clamped]
    if not clamped:
        return []
    low = float(minval) if minval is not None else min(clamped)
    high = float(maxval) if maxval is not None else max(clamped)
    if low == high:
        return [0.0] * len(clamped)
    span = high - low
    return [(v - low) / span for v in clamped]


class BaseWeigher:
    """A weigher returns a raw number per host; higher wins after the multiplier.

    ``option`` is Nova's multiplier option name, also the aggregate metadata key that
    overrides it per host. ``negated`` weighers use minus the multiplier (Nova's
    BuildFailureWeigher).
    """

    name = "BaseWeigher"
    option = ""
    minval: float | None = None
    maxval: float | None = None
    negated = False

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        raise NotImplementedError


class RAMWeigher(BaseWeigher):
    """Free RAM: spread by default, stack with a negative multiplier."""

    name = "RAMWeigher"
    option = "ram_weight_multiplier"
    minval = 0

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        return host.free_ram_mb


class CPUWeigher(BaseWeigher):
    """Free vCPUs (total x ratio - used)."""

    name = "CPUWeigher"
    option = "cpu_weight_multiplier"
    minval = 0

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        return free_vcpus(host)


class DiskWeigher(BaseWeigher):
    """Free disk."""

    name = "DiskWeigher"
    option = "disk_weight_multiplier"
    minval = 0

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        return host.free_disk_mb


class IoOpsWeigher(BaseWeigher):
    """Operations in progress; the default negative multiplier prefers quiet hosts."""

    name = "IoOpsWeigher"
    option = "io_ops_weight_multiplier"
    minval = 0

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        return host.num_io_ops


class NumInstancesWeigher(BaseWeigher):
    """Number of instances; off by default (multiplier 0), negative spreads, positive packs."""

    name = "NumInstancesWeigher"
    option = "num_instances_weight_multiplier"

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        return host.num_instances


class ServerGroupSoftAffinityWeigher(BaseWeigher):
    """Policy soft-affinity: more members of the group on the host is better."""

    name = "ServerGroupSoftAffinityWeigher"
    option = "soft_affinity_weight_multiplier"

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        return spec.members_on(host.host) if spec.group_policy == "soft-affinity" else 0


class ServerGroupSoftAntiAffinityWeigher(BaseWeigher):
    """Policy soft-anti-affinity: fewer members of the group on the host is better."""

    name = "ServerGroupSoftAntiAffinityWeigher"
    option = "soft_anti_affinity_weight_multiplier"

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        return -spec.members_on(host.host) if spec.group_policy == "soft-anti-affinity" else 0


class BuildFailureWeigher(BaseWeigher):
    """Recent failed builds push a host down (the multiplier is negated, as in Nova)."""

    name = "BuildFailureWeigher"
    option = "build_failure_weight_multiplier"
    negated = True

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        return host.failed_builds


class HypervisorVersionWeigher(BaseWeigher):
    """Newer hypervisors first."""

    name = "HypervisorVersionWeigher"
    option = "hypervisor_version_weight_multiplier"

    def weigh(self, host: HostState, spec: RequestSpec) -> float:
        return host.hypervisor_version


WEIGHERS: dict[str, type[BaseWeigher]] = {
    "RAMWeigher": RAMWeigher,
    "CPUWeigher": CPUWeigher,
    "DiskWeigher": DiskWeigher,
    "IoOpsWeigher": IoOpsWeigher,
    "NumInstancesWeigher": NumInstancesWeigher,
    "ServerGroupSoftAffinityWeigher": ServerGroupSoftAffinityWeigher,
    "ServerGroupSoftAntiAffinityWeigher": ServerGroupSoftAntiAffinityWeigher,
    "BuildFailureWeigher": BuildFailureWeigher,
    "HypervisorVersionWeigher": HypervisorVersionWeigher,
}

# All weighers, as Nova's default weight_classes (nova.scheduler.weights.all_weighers).
DEFAULT_WEIGHERS: tuple[str, ...] = tuple(WEIGHERS)

# Nova's [filter_scheduler] *_weight_multiplier defaults.
MULTIPLIER_DEFAULTS: dict[str, float] = {
    "ram_weight_multiplier": 1.0,
    "cpu_weight_multiplier": 1.0,
    "disk_weight_multiplier": 1.0,
    "io_ops_weight_multiplier": -1.0,
    "num_instances_weight_multiplier": 0.0,
    "soft_affinity_weight_multiplier": 1.0,
    "soft_anti_affinity_weight_multiplier": 1.0,
    "build_failure_weight_multiplier": 1000000.0,
    "hypervisor_version_weight_multiplier": 1.0,
}


# --------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------


def _names(value: t.Any, registry: dict[str, type], what: str, default: tuple[str, ...]) -> list[str]:
    if value is None:
        return list(default)
    names = [_want_str(v, f"{what}[{i}]") for i, v in enumerate(_want_list(value, what))]
    unknown = [n for n in names if n not in registry]
    if unknown:
        _fail(f"unknown {what} {', '.join(unknown)}; known: {', '.join(registry)}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        _fail(f"{what} lists {', '.join(duplicates)} more than once")
    return names


def _multipliers(value: t.Any) -> dict[str, float]:
    result = dict(MULTIPLIER_DEFAULTS)
    if value is None:
        return result
    value = _want_dict(value, "weigher_multipliers")
    _check_keys(value, MULTIPLIER_DEFAULTS, "weigher_multipliers")
    for key, number in value.items():
        result[key] = float(_want_number(number, f"weigher_multipliers.{key}"))
    return result


def _filter_options(value: t.Any) -> dict[str, t.Any]:
    result = dict(FILTER_OPTION_DEFAULTS)
    if value is None:
        return result
    value = _want_dict(value, "filter_options")
    _check_keys(value, FILTER_OPTION_DEFAULTS, "filter_options")
    for key in ("max_instances_per_host", "max_io_ops_per_host"):
        if key in value:
            result[key] = _want_int(value[key], f"filter_options.{key}", minimum=1)
    if "default_availability_zone" in value:
        result["default_availability_zone"] = _want_str(value["default_availability_zone"], "filter_options.default_availability_zone")
    return result


def _run_filters(hosts: list[HostState], spec: RequestSpec, filters: list[BaseFilter]) -> tuple[list[HostState], list[dict[str, t.Any]]]:
    steps = []
    names = [h.host for h in hosts]
    for flt in filters:
        applied = flt.relevant(spec)
        passed = [h for h in hosts if flt.host_passes(h, spec)] if applied else hosts
        rejected = []
        if len(passed) != len(hosts):
            kept = {id(h) for h in passed}
            rejected = [{"host": h.host, "filter": flt.name, "reason": f"{flt.name}: {flt.reason(h, spec)}"} for h in hosts if id(h) not in kept]
            names = [h.host for h in passed]
        steps.append(
            {
                "filter": flt.name,
                "applied": applied,
                "hosts_left": len(passed),
                "hosts": list(names),  # a copy: shared lists would show up as YAML aliases
                "rejected": rejected,
            }
        )
        hosts = passed
    return hosts, steps


def _weigh(hosts: list[HostState], spec: RequestSpec, weighers: list[BaseWeigher], multipliers: dict[str, float]) -> list[tuple[HostState, dict[str, t.Any]]]:
    """Weigh the hosts: (host, trace row) pairs, best first, ties broken by host name."""
    rows: list[dict[str, t.Any]] = [{"host": h.host, "total": 0.0, "weighers": {}} for h in hosts]
    if len(hosts) > 1:  # Nova does not weigh a single host
        for weigher in weighers:
            raw = [weigher.weigh(h, spec) for h in hosts]
            scaled = normalise(raw, weigher.minval, weigher.maxval)
            configured = multipliers[weigher.option]
            for row, host, raw_value, norm in zip(rows, hosts, raw, scaled):
                multiplier = host.multiplier_overrides.get(weigher.option, configured)
                if weigher.negated:
                    multiplier = -multiplier
                weighted = multiplier * norm + 0.0  # no -0.0 in the trace
                row["total"] += weighted
                row["weighers"][weigher.name] = {"raw": raw_value, "normalised": norm, "multiplier": multiplier, "weighted": weighted}
    order = sorted(range(len(hosts)), key=lambda i: (-rows[i]["total"], hosts[i].host))
    return [(hosts[i], rows[i]) for i in order]


def _consume(host: HostState, spec: RequestSpec) -> None:
    """Nova's consume_from_request: the next instance of the request sees this one."""
    host.free_ram_mb -= spec.ram_mb
    host.free_disk_mb -= spec.disk_mb
    host.vcpus_used += spec.vcpus
    host.num_instances += 1
    host.num_io_ops += 1  # a building instance is an I/O-heavy operation
    if spec.group_name is not None:
        spec.group_members[host.host] = spec.group_members.get(host.host, 0) + 1


def _no_valid_host_message(spec: RequestSpec, number: int, considered: int, steps: list[dict[str, t.Any]], limit: int = 10) -> str:
    flavor = f"flavor {spec.flavor_name}: {spec.vcpus} vcpus, {spec.ram_mb} MB RAM, {spec.disk_gb + spec.ephemeral_gb} GB disk, {spec.swap_mb} MB swap"
    counts = []
    reasons = []
    left = considered
    for step in steps:
        if step["hosts_left"] != left:
            counts.append(f"{step['filter']} {left} -> {step['hosts_left']}")
            left = step["hosts_left"]
        reasons.extend(r["reason"] for r in step["rejected"])
    text = f"No valid host was found for instance {number} of {spec.num_instances} ({flavor}): {considered} host(s) considered"
    if counts:
        text += f"; hosts left after each filter: {', '.join(counts)}"
    if reasons:
        text += f"; rejected: {'; '.join(reasons[:limit])}"
        if len(reasons) > limit:
            text += f"; and {len(reasons) - limit} more in the trace"
    return text


def schedule(
    hosts: t.Any,
    request: t.Any,
    filters: t.Any = None,
    weighers: t.Any = None,
    weigher_multipliers: t.Any = None,
    filter_options: t.Any = None,
    max_attempts: t.Any = 3,
    host_subset_size: t.Any = 1,
    seed: t.Any = None,
) -> dict[str, t.Any]:
    """Choose a host for each instance of the request.

    Returns ``{"selected": [host, ...], "alternates": [[host, ...], ...], "trace": {...}}``;
    ``alternates[i]`` holds up to max_attempts - 1 hosts for instance i, best first,
    that passed the filters for it and were not selected for any instance of the
    request (Nova: a claimed host is a poor alternate). Raises SchedulerError for
    bad input and NoValidHost, carrying the trace, when an instance has no host.
    """
    filter_names = _names(filters, FILTERS, "filters", DEFAULT_FILTERS)
    weigher_names = _names(weighers, WEIGHERS, "weighers", DEFAULT_WEIGHERS)
    multipliers = _multipliers(weigher_multipliers)
    options = _filter_options(filter_options)
    attempts = _want_int(max_attempts, "max_attempts", minimum=1)
    subset_size = _want_int(host_subset_size, "host_subset_size", minimum=1)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, str))):
        _fail(f"seed must be an integer or a string, got {_type_name(seed)}")

    spec = make_request_spec(request, options)
    warnings: list[str] = []
    states = [make_host_state(facts, i, options, warnings) for i, facts in enumerate(_want_list(hosts, "hosts"))]
    seen: set[str] = set()
    for state in states:
        if state.host in seen:
            _fail(f"host {state.host} appears more than once in the host list")
        seen.add(state.host)
    count_group_members(spec, states)

    filter_objs = [FILTERS[n]() for n in filter_names]
    weigher_objs = [WEIGHERS[n]() for n in weigher_names]
    rng = random.Random(0 if seed is None else seed)
    trace: dict[str, t.Any] = {
        "filters": filter_names,
        "weighers": weigher_names,
        "multipliers": multipliers,
        "filter_options": options,
        "host_subset_size": subset_size,
        "max_attempts": attempts,
        "hosts": len(states),
        "instances": [],
        "warnings": warnings,
    }
    chosen: list[HostState] = []
    ranked_per_instance: list[list[str]] = []
    for index in range(spec.num_instances):
        passed, steps = _run_filters(states, spec, filter_objs)
        record: dict[str, t.Any] = {"instance": index + 1, "hosts": len(states), "filters": steps}
        trace["instances"].append(record)
        if not passed:
            record["selected"] = None
            raise NoValidHost(_no_valid_host_message(spec, index + 1, len(states), steps), trace)
        ranked = _weigh(passed, spec, weigher_objs, multipliers)
        subset = ranked[:subset_size]
        pick = subset[0][0] if len(subset) == 1 else rng.choice(subset)[0]
        _consume(pick, spec)
        chosen.append(pick)
        ranked_per_instance.append([state.host for state, _row in ranked])
        record["weights"] = [row for _state, row in ranked]
        record["subset"] = [state.host for state, _row in subset]
        record["selected"] = pick.host

    selected_names = {h.host for h in chosen}
    alternates = [[name for name in ranked if name not in selected_names][: attempts - 1] for ranked in ranked_per_instance]
    for record, alts in zip(trace["instances"], alternates):
        record["alternates"] = alts
    return {"selected": [h.host for h in chosen], "alternates": alternates, "trace": trace}
