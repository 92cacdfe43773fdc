# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The libvirt connection of a module run, and the host as Nova's HostState sees it (private).

Sections:

* **URI check** (``check_uri``): only the QEMU driver, locally (``qemu:///system``,
  ``qemu:///session``, ``qemu+unix:///...``) or over an authenticated transport
  (``qemu+ssh``, ``qemu+libssh``, ``qemu+libssh2``, ``qemu+tls``). ``qemu+tcp`` is
  refused: it carries the libvirt API unauthenticated and unencrypted (SASL aside),
  so anybody who reaches the port controls every domain on the host. ``no_verify=1``
  (skip the TLS certificate or SSH host key check) is refused for the same reason.
* **Connection and errors** (``with connection(uri) as conn:``, ``connect``): one
  connection per URI per module run, cached, closed when the ``with`` block ends;
  every ``libvirt.libvirtError`` becomes a :class:`LibvirtError` (a
  ``VirtcloudError``) naming the operation, libvirt's message and error code.
* **Domains**: ``lookup_domain`` (None when absent), ``domain_state``
  (state number, reason number, virsh's state name), ``wait_for_state``.
* **Pure parsers** for recorded XML: ``parse_capabilities``, ``cpu_info``,
  ``supported_instances``, ``parse_domain_capabilities``, ``parse_domain``,
  ``read_record``.
* **Host state arithmetic** (``host_state``): pure, Nova's resource tracker formulas.
* **Gathering** (``gather_host_facts``): libvirt calls + the filesystem + the service
  record, then ``host_state``.
* **Service record** (``read_service_record``/``write_service_record``): the
  ``nova service-disable`` flag as a JSON file on the host.

Decisions (Nova behaviour, and where this differs on purpose)
-------------------------------------------------------------

* Allocation ratios default to Nova's current ``initial_*_allocation_ratio``:
  cpu 4.0, ram 1.0, disk 1.0 (nova/conf/compute.py since 2023.1; before that
  16.0/1.5/1.0). The ``*_allocation_ratio`` options themselves default to None in
  Nova and fall back to these initial values.
* Reserved resources are taken off the total *before* the ratio, as placement
  computes capacity ``(total - reserved) * allocation_ratio``:
  ``total_usable_ram_mb = memory_mb_total - reserved_host_memory_mb`` and
  ``total_usable_disk_gb = local_gb - ceil(reserved_host_disk_mb / 1024)``.
  ``free_ram_mb`` and ``free_disk_mb`` are allocation based, as the resource
  tracker's: usable total minus what the instances' flavors claim (RAM; root +
  ephemeral + swap for disk), whatever the guests really use, running or shut off.
  Instances in vm_state ``deleted`` or ``shelved_offloaded`` claim nothing and are not
  counted in ``num_instances`` (Nova's ``ALLOW_RESOURCE_REMOVAL``).
* ``memory_mb_total`` is the host's whole memory (libvirt's node memory stats,
  ``/proc/meminfo``), not the sum of the NUMA cells of ``virNodeGetInfo``, which can
  be smaller (it is on the development machines).
* Domains without a collection record ("foreign" domains, listed in
  ``other_domains``) still occupy the host: their memory and vCPUs, running or not,
  are taken off ``free_ram_mb`` and added to ``vcpus_used``. Nova does not know them;
  here nothing else would stop the scheduler from overcommitting against them. Their
  disks are not allocation-tracked, but they show in ``disk_available_least``.
* ``disk_available_least`` is Nova's: free space of the instances filesystem in whole
  GiB, minus the sum over every domain's qcow2 disks of (virtual size - allocated
  size) (``_get_disk_over_committed_size_total``), from libvirt's ``blockInfo``.
* ``num_io_ops`` counts instances in vm_state ``building`` or with one of Nova's
  I/O-heavy task states (``nova/compute/stats.py`` ``io_workload``): rebuilding,
  resize_prep, resize_migrating, image_snapshot, image_backup, rescuing, unshelving.
* ``hypervisor_type`` is libvirt's driver type, ``QEMU``, for kvm and qemu alike (as
  Nova reports it); ``virt_type`` says which one domains must use: ``kvm`` when the
  host capabilities offer a kvm domain for the host architecture, the domain
  capabilities for virttype kvm can be read, and (for a local URI) ``/dev/kvm`` is
  readable and writable; otherwise ``qemu`` (TCG).
* When libvirt does not answer, the facts still come back, with ``service.up`` false
  and the reason, zero capacity and no instances, so the scheduler's ComputeFilter
  names the host as down instead of the play losing it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import re
import socket
import time
import traceback
from urllib.parse import parse_qsl, urlsplit

from ansible.module_utils.basic import missing_required_lib

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError:
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

try:
    from lxml import etree

    HAS_LXML = True
    LXML_IMPORT_ERROR = None
except ImportError:
    etree = None
    HAS_LXML = False
    LXML_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.virtcloud.compute.plugins.module_utils._capacity import (
    ALLOCATION_DEFAULTS,
    DEFAULT_CPU_ALLOCATION_RATIO,
    DEFAULT_DISK_ALLOCATION_RATIO,
    DEFAULT_RAM_ALLOCATION_RATIO,
    DEFAULT_RESERVED_HOST_DISK_MB,
    DEFAULT_RESERVED_HOST_MEMORY_MB,
    flavor_needs,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import LIBVIRT_POWER_STATE

from ansible_collections.virtcloud.compute.plugins.module_utils._domain_xml import DomainXmlError
from ansible_collections.virtcloud.compute.plugins.module_utils._domain_xml import read_record as _read_record_of_domain
from ansible_collections.virtcloud.compute.plugins.module_utils._files import atomic_write, json_text
from ansible_collections.virtcloud.compute.plugins.module_utils._validate import is_host_name, is_simple_name, is_uuid

GIB = 1024**3
MIB = 1024**2

DEFAULT_AVAILABILITY_ZONE = "nova"

# vm_states whose instances claim no resources (vm_states.ALLOW_RESOURCE_REMOVAL).
VM_STATES_NOT_CLAIMING = ("deleted", "shelved_offloaded")
# Nova's io_workload (nova/compute/stats.py): vm_state building plus these task states.
IO_VM_STATES = ("building",)
IO_TASK_STATES = ("rebuilding", "resize_prep", "resize_migrating", "image_snapshot", "image_backup", "rescuing", "unshelving")

# virDomainState, and virsh's names for them.
VIR_DOMAIN_NOSTATE = 0
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_BLOCKED = 2
VIR_DOMAIN_PAUSED = 3
VIR_DOMAIN_SHUTDOWN = 4
VIR_DOMAIN_SHUTOFF = 5
VIR_DOMAIN_CRASHED = 6
VIR_DOMAIN_PMSUSPENDED = 7
STATE_ABSENT = -1  # not a libvirt state: the domain is not defined
STATE_NAMES = {
    STATE_ABSENT: "absent",
    VIR_DOMAIN_NOSTATE: "no state",
    VIR_DOMAIN_RUNNING: "running",
    VIR_DOMAIN_BLOCKED: "idle",
    VIR_DOMAIN_PAUSED: "paused",
    VIR_DOMAIN_SHUTDOWN: "in shutdown",
    VIR_DOMAIN_SHUTOFF: "shut off",
    VIR_DOMAIN_CRASHED: "crashed",
    VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
# virDomain*Reason for the states whose reason matters to the messages.
STATE_REASONS = {
    VIR_DOMAIN_RUNNING: (
        "unknown",
        "booted",
        "migrated",
        "restored",
        "from snapshot",
        "unpaused",
        "migration canceled",
        "save canceled",
        "wakeup",
        "crashed",
        "post-copy",
    ),
    VIR_DOMAIN_PAUSED: (
        "unknown",
        "user",
        "migrating",
        "saving",
        "dumping",
        "I/O error",
        "watchdog",
        "from snapshot",
        "shutting down",
        "snapshot",
        "crashed",
        "starting up",
        "post-copy",
        "post-copy failed",
    ),
    VIR_DOMAIN_SHUTOFF: ("unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from snapshot", "daemon"),
}

# libvirt error codes used here (virErrorNumber).
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_OPERATION_INVALID = 55

# libvirt flags used here (the libvirt module is imported guarded, so they are written out).
VIR_DOMAIN_XML_INACTIVE = 2
VIR_DOMAIN_START_PAUSED = 1
VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN = 1
VIR_DOMAIN_UNDEFINE_MANAGED_SAVE = 1
VIR_DOMAIN_UNDEFINE_NVRAM = 4
VIR_DOMAIN_AFFECT_LIVE = 1
VIR_DOMAIN_AFFECT_CONFIG = 2
VIR_DOMAIN_METADATA_ELEMENT = 2

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_REASON = 255  # Nova's services.disabled_reason column
NO_RECORD = "no virtcloud record in its metadata"


# --------------------------------------------------------------------------- errors


class LibvirtError(VirtcloudError):
    """A libvirt call failed; the message names the operation and libvirt's own message."""

    def __init__(self, message: str, code: int | None = None, operation: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.operation = operation


class LibvirtConnectionError(LibvirtError):
    """libvirt did not answer at the URI."""


class UnsafeUriError(VirtcloudError):
    """The URI is not one the collection connects to."""


class WaitTimeout(VirtcloudError):
    """A domain did not reach the wanted state in time."""

    def __init__(self, message: str, domain: str = "", wanted: tuple = (), current: tuple = ()) -> None:
        super().__init__(message)
        self.domain = domain
        self.wanted = wanted
        self.current = current


class HostFactsError(VirtcloudError):
    """An option or a host resource needed for the facts is wrong or missing."""


class ServiceRecordError(VirtcloudError):
    """The service record file cannot be read or written, or a value for it is wrong."""


class _NoLibvirtError(Exception):
    """Never raised: stands in for libvirt.libvirtError when libvirt-python is missing."""


_LIBVIRT_ERROR = libvirt.libvirtError if HAS_LIBVIRT else _NoLibvirtError


def require_libvirt() -> None:
    if not HAS_LIBVIRT:
        raise LibvirtError(
            "the libvirt Python bindings are needed on the host: install python3-libvirt (Debian/Ubuntu/RHEL package) for the Python that runs the module"
        )


def require_libraries(module, lxml: bool = True) -> None:
    """Fail the module (``fail_json``) when libvirt-python, or lxml with ``lxml``, cannot be imported."""
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python (package python3-libvirt)"), exception=LIBVIRT_IMPORT_ERROR)
    if lxml and not HAS_LXML:
        module.fail_json(msg=missing_required_lib("lxml (package python3-lxml)"), exception=LXML_IMPORT_ERROR)


def require_lxml() -> None:
    if not HAS_LXML:
        raise HostFactsError("the Python lxml library is needed on the host to read libvirt XML: install python3-lxml for the Python that runs the module")


def _error_code(exc) -> int | None:
    try:
        return exc.get_error_code()
    except AttributeError:
        return None


def _error_text(exc) -> str:
    try:
        text = exc.get_error_message()
    except AttributeError:
        text = None
    return " ".join(str(text or exc).split())


def translate(exc, operation: str) -> LibvirtError:
    """A LibvirtError for a libvirt.libvirtError raised by OPERATION."""
    code = _error_code(exc)
    where = f" (libvirt error code {code})" if code is not None else ""
    return LibvirtError(f"{operation} failed: {_error_text(exc)}{where}", code=code, operation=operation)


@contextlib.contextmanager
def libvirt_errors(operation: str):
    """Turn libvirt.libvirtError raised inside the block into LibvirtError naming OPERATION."""
    try:
        yield
    except _LIBVIRT_ERROR as exc:
        raise translate(exc, operation) from None


# --------------------------------------------------------------------------- URI

LOCAL_SCHEMES = ("qemu", "qemu+unix")
REMOTE_SCHEMES = ("qemu+ssh", "qemu+libssh", "qemu+libssh2", "qemu+tls")
URI_PATHS = ("/system", "/session")


def check_uri(uri) -> str:
    """The URI, when it is one the collection may use; UnsafeUriError (with the reason) otherwise."""
    if not isinstance(uri, str) or not uri or CONTROL_RE.search(uri) or " " in uri:
        raise UnsafeUriError(f"uri {uri!r} is not a libvirt URI: give one such as qemu:///system or qemu+ssh://host/system")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "qemu+tcp":
        raise UnsafeUriError(
            f"uri {uri} uses qemu+tcp, which carries the libvirt API without authentication or encryption: anybody who "
            "reaches the port controls every domain on the host. Use qemu+ssh://HOST/system or qemu+tls://HOST/system"
        )
    if scheme == "qemu+ext":
        raise UnsafeUriError(f"uri {uri} runs an arbitrary command as transport (qemu+ext); use qemu+ssh or qemu+tls")
    if scheme not in LOCAL_SCHEMES + REMOTE_SCHEMES:
        raise UnsafeUriError(
            f"uri {uri} is not a QEMU driver URI over a supported transport: use qemu:///system, qemu:///session, "
            "qemu+ssh://HOST/system or qemu+tls://HOST/system"
        )
    if parts.path not in URI_PATHS:
        raise UnsafeUriError(f"uri {uri} must end in /system or /session (the QEMU driver's two instances), not {parts.path or ''!r}")
    if scheme in LOCAL_SCHEMES and parts.netloc:
        raise UnsafeUriError(
            f"uri {uri} names a host with a local transport: use qemu+ssh://{parts.netloc}{parts.path} or qemu+tls://{parts.netloc}{parts.path}"
        )
    if scheme in REMOTE_SCHEMES and not parts.hostname:
        raise UnsafeUriError(f"uri {uri} has no host name: use {scheme}://HOST{parts.path}")
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "no_verify" and value not in ("", "0"):
            raise UnsafeUriError(
                f"uri {uri} turns off the check of the server's {'certificate' if scheme == 'qemu+tls' else 'host key'} "
                f"(no_verify={value}): remove it and trust "
                f"the host properly"
            )
    return uri


def is_local_uri(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in LOCAL_SCHEMES


# --------------------------------------------------------------------------- connection

_CONNECTIONS: dict = {}


def _quiet_error_handler(_ctx, _err):
    """libvirt prints every error to stderr by default; the exception carries it already."""


def connect(uri: str):
    """The libvirt connection for URI, opened once per module run (cached per URI)."""
    check_uri(uri)
    require_libvirt()
    conn = _CONNECTIONS.get(uri)
    if conn is not None:
        return conn
    libvirt.registerErrorHandler(_quiet_error_handler, None)
    try:
        conn = libvirt.open(uri)
    except _LIBVIRT_ERROR as exc:
        raise LibvirtConnectionError(
            f"cannot connect to libvirt at {uri}: {_error_text(exc)}. Is libvirtd (or virtqemud) running on the host, and may this user "
            f"use its socket? Check with: virsh -c {uri} version",
            code=_error_code(exc),
            operation="connect",
        ) from None
    if conn is None:
        raise LibvirtConnectionError(f"cannot connect to libvirt at {uri} (libvirt returned no connection)", operation="connect")
    _CONNECTIONS[uri] = conn
    return conn


def close_all() -> None:
    """Close the connections this run opened (the end of the outermost :func:`connections` block)."""
    while _CONNECTIONS:
        _uri, conn = _CONNECTIONS.popitem()
        try:
            conn.close()
        except _LIBVIRT_ERROR:
            pass


_SCOPES: list = []


@contextlib.contextmanager
def connections():
    """Every libvirt connection :func:`connect` opens inside the block is closed when the outermost block ends.

    For code that connects lazily or not at all (compute_facts reports a libvirtd that does not
    answer as a fact; instance_claim connects only under its lock). Otherwise use :func:`connection`.
    """
    _SCOPES.append(True)
    try:
        yield
    finally:
        _SCOPES.pop()
        if not _SCOPES:
            close_all()


@contextlib.contextmanager
def connection(uri: str):
    """``with connection(uri) as conn:``: the run's libvirt connection for URI, closed when the block ends."""
    with connections():
        yield connect(uri)


# --------------------------------------------------------------------------- domains


def _check_domain_ref(name_or_uuid) -> str:
    if not isinstance(name_or_uuid, str) or not name_or_uuid or len(name_or_uuid) > 255 or CONTROL_RE.search(name_or_uuid):
        raise LibvirtError(f"domain name or uuid {name_or_uuid!r} is not valid: give 1 to 255 printable characters")
    return name_or_uuid


def lookup_domain(conn, name_or_uuid: str):
    """The virDomain with this UUID or name, or None when there is none."""
    ref = _check_domain_ref(name_or_uuid)
    lookups = []
    if is_uuid(ref, any_case=True):
        lookups.append(("lookupByUUIDString", ref.lower()))
    lookups.append(("lookupByName", ref))
    for method, value in lookups:
        try:
            return getattr(conn, method)(value)
        except _LIBVIRT_ERROR as exc:
            if _error_code(exc) == VIR_ERR_NO_DOMAIN:
                continue
            raise translate(exc, f"looking up domain {ref}") from None
    return None


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, f"state {state}")


def reason_name(state: int, reason: int) -> str:
    names = STATE_REASONS.get(state, ())
    return names[reason] if 0 <= reason < len(names) else f"reason {reason}"


def domain_state(dom) -> tuple:
    """(libvirt state number, reason number, virsh's state name); an undefined domain is STATE_ABSENT."""
    if dom is None:
        return (STATE_ABSENT, 0, STATE_NAMES[STATE_ABSENT])
    try:
        state, reason = dom.state()
    except _LIBVIRT_ERROR as exc:
        if _error_code(exc) == VIR_ERR_NO_DOMAIN:
            return (STATE_ABSENT, 0, STATE_NAMES[STATE_ABSENT])
        raise translate(exc, f"reading the state of domain {_dom_name(dom)}") from None
    return (state, reason, state_name(state))


def _dom_name(dom) -> str:
    try:
        return dom.name()
    except (_LIBVIRT_ERROR, AttributeError):
        return "?"


def _wanted_states(wanted) -> tuple:
    items = (wanted,) if isinstance(wanted, int) else tuple(wanted)
    if not items or any(isinstance(s, bool) or s not in STATE_NAMES for s in items):
        raise LibvirtError(f"wanted domain state(s) {wanted!r} are not libvirt states (0..7) or STATE_ABSENT")
    return items


def wait_for_state(target, wanted, timeout: float, interval: float = 0.5, name: str | None = None, clock=time.monotonic, sleep=time.sleep) -> tuple:
    """Wait until the domain is in one of the WANTED states; returns its ``domain_state``.

    TARGET is a virDomain or a function returning the virDomain or None (absent), so
    that a wait for STATE_ABSENT or for a domain being defined works. Raises
    WaitTimeout naming the domain, the wanted and the current state after TIMEOUT s.
    """
    states = _wanted_states(wanted)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise LibvirtError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise LibvirtError(f"interval must be a number of seconds above 0, got {interval!r}")
    deadline = clock() + timeout
    label = name
    while True:
        dom = target() if callable(target) else target
        if label is None and dom is not None:
            label = _dom_name(dom)
        current = domain_state(dom)
        if current[0] in states:
            return current
        remaining = deadline - clock()
        if remaining <= 0:
            wanted_text = " or ".join(state_name(s) for s in states)
            reason = "" if current[0] == STATE_ABSENT else f" (reason: {reason_name(current[0], current[1])})"
            raise WaitTimeout(
                f"domain {label or '?'} did not become {wanted_text} within {_seconds(timeout)} s: it is {current[2]}{reason}",
                domain=label or "",
                wanted=states,
                current=current,
            )
        sleep(min(interval, remaining))


def _seconds(value) -> str:
    return f"{int(value)}" if float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- XML parsing (pure)


def _parse_xml(text, what: str):
    require_lxml()
    if isinstance(text, str):
        text = text.encode("utf-8")
    if not isinstance(text, bytes):
        raise HostFactsError(f"{what} must be XML text, got {type(text).__name__}")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True, remove_pis=True)
    try:
        return etree.fromstring(text, parser)
    except etree.XMLSyntaxError as exc:
        raise HostFactsError(f"{what} does not parse as XML: {exc}") from None


def _int(text, default=None):
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return default


def _text(element, path: str) -> str | None:
    """Stripped text of the child at PATH, None when absent or empty (or ELEMENT is None)."""
    if element is None:
        return None
    return (element.findtext(path) or "").strip() or None


def parse_capabilities(xml) -> dict:
    """``virConnectGetCapabilities`` XML to a dict.

    Keys: uuid, cpu {arch, model, vendor, topology {cells, sockets, dies, cores,
    threads}, features (sorted)}, guests [{os_type, arch, wordsize, emulator,
    domain_types}] in document order.
    """
    root = _parse_xml(xml, "the capabilities XML")
    if root.tag != "capabilities":
        raise HostFactsError(f"the capabilities XML has <{root.tag}> as its root, not <capabilities>")
    host = root.find("host")
    if host is None:
        raise HostFactsError("the capabilities XML has no <host> element")
    cpu = host.find("cpu")
    topo = cpu.find("topology") if cpu is not None else None
    cells = host.find("topology/cells")
    n_cells = _int(cells.get("num")) if cells is not None else None
    if n_cells is None:
        n_cells = len(host.findall("topology/cells/cell")) or 1
    caps = {
        "uuid": _text(host, "uuid"),
        "cpu": {
            "arch": _text(cpu, "arch"),
            "model": _text(cpu, "model"),
            "vendor": _text(cpu, "vendor"),
            "topology": {
                "cells": n_cells,
                "sockets": _int(topo.get("sockets"), 1) if topo is not None else 1,
                "dies": _int(topo.get("dies"), 1) if topo is not None else 1,
                "cores": _int(topo.get("cores"), 1) if topo is not None else 1,
                "threads": _int(topo.get("threads"), 1) if topo is not None else 1,
            },
            "features": sorted({f.get("name") for f in cpu.findall("feature") if f.get("name")}) if cpu is not None else [],
        },
        "guests": [],
    }
    for guest in root.findall("guest"):
        arch = guest.find("arch")
        if arch is None:
            continue
        types = []
        for domain in arch.findall("domain"):
            kind = domain.get("type")
            if kind and kind not in types:
                types.append(kind)
        caps["guests"].append(
            {
                "os_type": _text(guest, "os_type"),
                "arch": arch.get("name"),
                "wordsize": _int(arch.findtext("wordsize")),
                "emulator": _text(arch, "emulator"),
                "domain_types": types,
            }
        )
    return caps


def cpu_info(caps: dict) -> dict:
    """Nova's cpu_info (nova/virt/libvirt/driver.py ``_get_cpu_info``): arch, model, vendor, topology, features."""
    cpu = caps["cpu"]
    topo = cpu["topology"]
    return {
        "arch": cpu["arch"],
        "model": cpu["model"],
        "vendor": cpu["vendor"],
        "topology": {"cells": topo["cells"], "sockets": topo["sockets"], "cores": topo["cores"], "threads": topo["threads"]},
        "features": list(cpu["features"]),
    }


_ARCH_ALIASES = {"i386": "i686", "i486": "i686", "i586": "i686", "x86_32": "i686", "amd64": "x86_64"}
_HV_ALIASES = {"xapi": "xen"}
_VM_MODE_ALIASES = {"pv": "xen", "hv": "hvm", "baremetal": "hvm"}


def supported_instances(caps: dict) -> list:
    """Nova's supported_instances: [arch, hypervisor type, vm mode] for every guest and domain type.

    As ``_get_instance_capabilities``: every ``<guest>`` and every ``<domain type>`` the
    capabilities list, canonicalised as nova.objects.fields does (lower case,
    i386 -> i686, ...), duplicates dropped, document order kept.
    """
    result = []
    for guest in caps["guests"]:
        if not guest["arch"] or not guest["os_type"]:
            continue
        arch = guest["arch"].lower()
        arch = _ARCH_ALIASES.get(arch, arch)
        mode = guest["os_type"].lower()
        mode = _VM_MODE_ALIASES.get(mode, mode)
        for kind in guest["domain_types"]:
            hv_type = _HV_ALIASES.get(kind.lower(), kind.lower())
            item = [arch, hv_type, mode]
            if item not in result:
                result.append(item)
    return result


def parse_domain_capabilities(xml) -> dict:
    """``virConnectGetDomainCapabilities`` XML: path, domain (the virt type), machine, arch, vcpu_max, host_model."""
    root = _parse_xml(xml, "the domain capabilities XML")
    if root.tag != "domainCapabilities":
        raise HostFactsError(f"the domain capabilities XML has <{root.tag}> as its root, not <domainCapabilities>")
    vcpu = root.find("vcpu")
    host_model = None
    for mode in root.findall("cpu/mode"):
        if mode.get("name") == "host-model" and mode.get("supported") == "yes":
            host_model = _text(mode, "model")
    return {
        "path": _text(root, "path"),
        "domain": _text(root, "domain"),
        "machine": _text(root, "machine"),
        "arch": _text(root, "arch"),
        "vcpu_max": _int(vcpu.get("max")) if vcpu is not None else None,
        "host_model": host_model,
    }


def detect_virt_type(caps: dict, kvm_domcaps: dict | None, dev_kvm_usable: bool) -> str:
    """``kvm`` when the host can run kvm domains of its own architecture, else ``qemu`` (TCG)."""
    host_arch = caps["cpu"]["arch"]
    offers_kvm = any(g["arch"] == host_arch and "kvm" in g["domain_types"] for g in caps["guests"])
    if offers_kvm and kvm_domcaps is not None and kvm_domcaps.get("domain") == "kvm" and dev_kvm_usable:
        return "kvm"
    return "qemu"


_UNIT_BYTES = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": MIB,
    "mib": MIB,
    "mb": 1000**2,
    "g": GIB,
    "gib": GIB,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}


def _memory_mb(element) -> int:
    if element is None:
        return 0
    value = _int(element.text, 0)
    factor = _UNIT_BYTES.get((element.get("unit") or "KiB").lower(), 1024)
    return int(math.ceil(value * factor / MIB))


def read_record(xml):
    """The instance record (a dict) in the domain's <metadata>, or None when there is none.

    ``_domain_xml.read_record`` reads it (the one reader, which validates the whole
    record); a record that is there but not valid raises HostFactsError.
    """
    try:
        return _read_record_of_domain(xml)
    except DomainXmlError as exc:
        raise HostFactsError(f"the virtcloud record in its metadata is not valid: {exc}") from None


def parse_domain(xml) -> dict:
    """Domain XML: name, uuid, type, vcpus, memory_mb, disks [{target, source, format, device, type}],
    record (dict or None) and record_error (text or None)."""
    root = _parse_xml(xml, "the domain XML")
    if root.tag != "domain":
        raise HostFactsError(f"the domain XML has <{root.tag}> as its root, not <domain>")
    disks = []
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        driver = disk.find("driver")
        disks.append(
            {
                "target": None if target is None else target.get("dev"),
                "source": None if source is None else (source.get("file") or source.get("dev")),
                "format": None if driver is None else driver.get("type"),
                "device": disk.get("device", "disk"),
                "type": disk.get("type"),
            }
        )
    record, record_error = None, None
    try:
        record = read_record(xml)
    except HostFactsError as exc:
        record_error = str(exc)
    return {
        "name": _text(root, "name") or "",
        "uuid": _text(root, "uuid"),
        "type": root.get("type"),
        "vcpus": _int(root.findtext("vcpu"), 1),
        "memory_mb": _memory_mb(root.find("memory")),
        "disks": disks,
        "record": record,
        "record_error": record_error,
    }


# --------------------------------------------------------------------------- host state (pure)


def claims_resources(instance: dict) -> bool:
    """An instance in vm_state deleted or shelved_offloaded claims nothing on the host (Nova)."""
    return instance.get("vm_state") not in VM_STATES_NOT_CLAIMING


def is_io_op(instance: dict) -> bool:
    """Nova's io_workload: building, or one of the I/O-heavy task states."""
    return instance.get("vm_state") in IO_VM_STATES or instance.get("task_state") in IO_TASK_STATES


def host_state(
    *,
    vcpus_total: int,
    memory_mb_total: int,
    disk_total_bytes: int,
    disk_free_bytes: int,
    disk_over_committed_bytes: int = 0,
    instances: list = (),
    other_domains: list = (),
    cpu_allocation_ratio: float = DEFAULT_CPU_ALLOCATION_RATIO,
    ram_allocation_ratio: float = DEFAULT_RAM_ALLOCATION_RATIO,
    disk_allocation_ratio: float = DEFAULT_DISK_ALLOCATION_RATIO,
    reserved_host_memory_mb: int = DEFAULT_RESERVED_HOST_MEMORY_MB,
    reserved_host_disk_mb: int = DEFAULT_RESERVED_HOST_DISK_MB,
) -> dict:
    """Nova's capacity figures of one host, from its totals and what is on it.

    ``instances``: dicts with ``flavor`` (vcpus, ram_mb, disk_gb, ephemeral_gb,
    swap_mb), ``vm_state`` and ``task_state``. ``other_domains``: dicts with
    ``vcpus`` and ``memory_mb``. Sizes of the instances filesystem in bytes.
    """
    claiming = [i for i in instances if claims_resources(i)]
    inst_vcpus = inst_ram = inst_disk = 0
    for instance in claiming:
        vcpus, ram, disk = flavor_needs(instance.get("flavor") or {})
        inst_vcpus += vcpus
        inst_ram += ram
        inst_disk += disk
    other_vcpus = sum(int(d.get("vcpus") or 0) for d in other_domains)
    other_ram = sum(int(d.get("memory_mb") or 0) for d in other_domains)

    total_usable_ram_mb = max(memory_mb_total - reserved_host_memory_mb, 0)
    # Nova's _get_local_gb_info: whole GiB; placement reserves ceil(reserved_host_disk_mb / 1024) GiB.
    local_gb = disk_total_bytes // GIB
    disk_free_gb = disk_free_bytes // GIB
    reserved_disk_gb = -(-reserved_host_disk_mb // 1024)
    total_usable_disk_gb = max(local_gb - reserved_disk_gb, 0)
    return {
        "vcpus_total": vcpus_total,
        "vcpus_used": inst_vcpus + other_vcpus,
        "memory_mb_total": memory_mb_total,
        "memory_mb_reserved": reserved_host_memory_mb,
        "memory_mb_used": reserved_host_memory_mb + inst_ram + other_ram,
        "total_usable_ram_mb": total_usable_ram_mb,
        "free_ram_mb": total_usable_ram_mb - inst_ram - other_ram,
        "local_gb": local_gb,
        "disk_mb_reserved": reserved_host_disk_mb,
        "disk_mb_used": reserved_host_disk_mb + inst_disk,
        "total_usable_disk_gb": total_usable_disk_gb,
        "free_disk_mb": total_usable_disk_gb * 1024 - inst_disk,
        "disk_available_least": (disk_free_gb * GIB - disk_over_committed_bytes) // GIB,
        "cpu_allocation_ratio": float(cpu_allocation_ratio),
        "ram_allocation_ratio": float(ram_allocation_ratio),
        "disk_allocation_ratio": float(disk_allocation_ratio),
        "num_instances": len(claiming),
        "num_io_ops": sum(1 for i in claiming if is_io_op(i)),
    }


# --------------------------------------------------------------------------- options


def check_ratio(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise HostFactsError(f"{name} must be a number above 0 (Nova's default is {ALLOCATION_DEFAULTS.get(name, 1.0)}), got {value!r}")
    return float(value)


def check_reserved(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HostFactsError(f"{name} must be a whole number of MB >= 0, got {value!r}")
    return value


def check_host_name(value, what: str = "host") -> str:
    if not is_host_name(value):
        raise HostFactsError(f"{what} {value!r} is not a valid host name: use 1 to 253 letters, digits, '.', '_' and '-', starting with a letter or digit")
    return value


def check_zone(value) -> str | None:
    if value is None or value == "":
        return None
    if not is_simple_name(value):
        raise HostFactsError(f"availability_zone {value!r} is not valid: use 1 to 64 letters, digits, '.', '_' and '-', starting with a letter or digit")
    return value


def _metadata_text(value, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        text = str(value)
        if CONTROL_RE.search(text) or len(text) > 255:
            raise HostFactsError(f"{where} must be at most 255 printable characters")
        return text
    raise HostFactsError(f"{where} must be a string (Nova's aggregate metadata values are strings), got {value!r}")


def normalise_aggregates(aggregates) -> list:
    """[{name, metadata}] with metadata values as strings, as Nova keeps them."""
    if aggregates is None:
        return []
    if not isinstance(aggregates, list):
        raise HostFactsError(f"aggregates must be a list of {{name, metadata}}, got {aggregates!r}")
    result = []
    for index, aggregate in enumerate(aggregates):
        where = f"aggregates[{index}]"
        if not isinstance(aggregate, dict):
            raise HostFactsError(f"{where} must be a dictionary with name and metadata, got {aggregate!r}")
        unknown = sorted(set(aggregate) - {"name", "metadata"})
        if unknown:
            raise HostFactsError(f"{where} has unknown keys {', '.join(map(str, unknown))}; an aggregate has name and metadata")
        name = aggregate.get("name")
        if not isinstance(name, str) or not name.strip() or CONTROL_RE.search(name) or len(name) > 255:
            raise HostFactsError(f"{where}.name must be a non-empty string of at most 255 printable characters, got {name!r}")
        metadata = aggregate.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise HostFactsError(f"{where}.metadata must be a dictionary of strings, got {metadata!r}")
        texts = {str(k): _metadata_text(v, f"{where}.metadata.{k}") for k, v in metadata.items()}
        result.append({"name": name, "metadata": dict(sorted(texts.items()))})
    return result


def host_zone(availability_zone: str | None, aggregates: list) -> str:
    """The host's zone: the option, else its aggregates' availability_zone metadata, else Nova's default."""
    if availability_zone:
        return availability_zone
    zones = sorted({a["metadata"]["availability_zone"] for a in aggregates if a["metadata"].get("availability_zone")})
    return ",".join(zones) if zones else DEFAULT_AVAILABILITY_ZONE


# --------------------------------------------------------------------------- service record


def now_text() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_reason(reason) -> str:
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON or CONTROL_RE.search(reason):
        raise ServiceRecordError(
            f"disabled_reason must be 1 to {MAX_REASON} printable characters on one line (as nova service-disable --reason), got {reason!r}"
        )
    return reason


def read_service_record(path: str, host: str) -> dict | None:
    """The service record at PATH, checked, or None when there is none. It must belong to HOST."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServiceRecordError(f"cannot read the service record {path}: {exc.strerror or exc}") from None
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise ServiceRecordError(
            f"the service record {path} is not valid JSON ({exc}): fix it or set the state again with virtcloud.compute.compute_service after removing it"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("enabled"), bool):
        raise ServiceRecordError(f"the service record {path} has no boolean 'enabled': fix it or remove it")
    reason = record.get("disabled_reason")
    if reason is not None and not isinstance(reason, str):
        raise ServiceRecordError(f"the service record {path} has a disabled_reason that is not a string")
    owner = record.get("host")
    if owner is not None and owner != host:
        raise ServiceRecordError(
            f"the service record {path} belongs to host {owner}, not {host}: each compute host needs its own service_file "
            "(is the path on storage shared between hosts?)"
        )
    return {"enabled": record["enabled"], "disabled_reason": reason, "updated_at": record.get("updated_at"), "host": owner or host}


def service_state(record: dict | None, host: str) -> dict:
    """The effective service state: a host without a record is enabled (Nova's enable_new_services)."""
    if record is None:
        return {"enabled": True, "disabled_reason": None, "updated_at": None, "host": host}
    return dict(record)


def write_service_record(path: str, record: dict) -> None:
    """Write the record atomically (``_files.atomic_write``: a temporary file beside it, fsync, rename)."""
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        atomic_write(path, json_text(record), 0o644)
    except OSError as exc:
        raise ServiceRecordError(f"cannot write the service record {path}: {exc.strerror or exc}") from None


def wanted_service_record(state: str, disabled_reason: str | None, host: str) -> dict:
    """The record ``nova service-enable``/``service-disable --reason`` would leave (without updated_at)."""
    if state not in ("enabled", "disabled"):
        raise ServiceRecordError(f"state must be enabled or disabled, got {state!r}")
    if disabled_reason == "":
        disabled_reason = None
    if state == "disabled":
        if disabled_reason is None:
            raise ServiceRecordError(
                "disabled_reason is required with state=disabled: say why the host takes no new instances (it shows in the facts and in the scheduler's trace)"
            )
        return {"enabled": False, "disabled_reason": check_reason(disabled_reason), "host": host}
    if disabled_reason is not None:
        raise ServiceRecordError("disabled_reason is only used with state=disabled (enabling clears the reason)")
    return {"enabled": True, "disabled_reason": None, "host": host}


def set_service_state(path: str, state: str, disabled_reason: str | None, host: str, check_mode: bool = False) -> dict:
    """Make the service record say STATE; returns changed, before, after (effective records)."""
    check_host_name(host)
    current = read_service_record(path, host)
    before = service_state(current, host)
    wanted = wanted_service_record(state, disabled_reason, host)
    compare = ("enabled", "disabled_reason", "host")
    changed = any(before.get(k) != wanted[k] for k in compare)
    if not changed:
        return {"changed": False, "before": before, "after": before, "exists": current is not None}
    after = dict(wanted, updated_at=now_text())
    if not check_mode:
        write_service_record(path, after)
    return {"changed": True, "before": before, "after": after, "exists": current is not None}


# --------------------------------------------------------------------------- gathering


def _disk_usage(path: str) -> tuple:
    if not os.path.isabs(path):
        raise HostFactsError(f"instances_path {path!r} must be an absolute path")
    try:
        st = os.statvfs(path)
    except FileNotFoundError:
        raise HostFactsError(
            f"instances_path {path} does not exist on this host: prepare the host (role virtcloud.compute.compute_node) or give the right path"
        ) from None
    except OSError as exc:
        raise HostFactsError(f"cannot read the filesystem of instances_path {path}: {exc.strerror or exc}") from None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _dev_kvm_usable(path: str = "/dev/kvm") -> bool:
    return os.path.exists(path) and os.access(path, os.R_OK | os.W_OK)


def _over_committed(dom, disks: list) -> int:
    """Sum of (virtual - allocated) bytes of the domain's qcow2 disks; missing disks count 0 (as Nova)."""
    total = 0
    for disk in disks:
        if disk["device"] != "disk" or disk["format"] != "qcow2" or not disk["target"] or not disk["source"]:
            continue
        try:
            capacity, allocation, _physical = dom.blockInfo(disk["target"])
        except _LIBVIRT_ERROR:
            continue
        total += max(capacity - allocation, 0)
    return total


def _instance_entry(domain: dict, state: tuple) -> dict:
    record = domain["record"]
    return {
        "uuid": record["uuid"],
        "name": record.get("name"),
        "domain": domain["name"],
        "project": record.get("project"),
        "flavor": record.get("flavor"),
        "vm_state": record.get("vm_state"),
        "task_state": record.get("task_state"),
        "power_state": LIBVIRT_POWER_STATE.get(state[0], 0),
        "domain_state": state[2],
        "server_group": record.get("server_group"),
        "availability_zone": record.get("availability_zone"),
        "host": record.get("host"),
    }


def _other_entry(domain: dict, state: tuple) -> dict:
    return {
        "name": domain["name"],
        "uuid": domain["uuid"],
        "domain_state": state[2],
        "vcpus": domain["vcpus"],
        "memory_mb": domain["memory_mb"],
        "reason": domain["record_error"] or NO_RECORD,
    }


def read_libvirt(conn, uri: str) -> dict:
    """What libvirt says about the host and its domains (one pass of calls)."""
    with libvirt_errors("reading the host's capabilities"):
        caps = parse_capabilities(conn.getCapabilities())
    with libvirt_errors("reading the host's node info"):
        info = conn.getInfo()
    try:
        memory_kib = conn.getMemoryStats(-1).get("total")  # VIR_NODE_MEMORY_STATS_ALL_CELLS
    except _LIBVIRT_ERROR:
        memory_kib = None
    memory_mb = memory_kib // 1024 if memory_kib else int(info[1])
    with libvirt_errors("reading the hypervisor's name and versions"):
        driver = conn.getType()
        hv_version = conn.getVersion()
        lib_version = conn.getLibVersion()
        hostname = conn.getHostname()
    kvm_domcaps = None
    if any(g["arch"] == caps["cpu"]["arch"] and "kvm" in g["domain_types"] for g in caps["guests"]):
        try:
            kvm_domcaps = parse_domain_capabilities(conn.getDomainCapabilities(None, caps["cpu"]["arch"], None, "kvm", 0))
        except _LIBVIRT_ERROR:
            kvm_domcaps = None
    dev_kvm = _dev_kvm_usable() if is_local_uri(uri) else True
    instances, others, over = [], [], 0
    with libvirt_errors("listing the domains"):
        domains = conn.listAllDomains(0)
    for dom in domains:
        try:
            xml = dom.XMLDesc(VIR_DOMAIN_XML_INACTIVE)  # the record is authoritative in the persistent XML
            state = domain_state(dom)
        except _LIBVIRT_ERROR as exc:
            if _error_code(exc) == VIR_ERR_NO_DOMAIN:
                continue  # undefined while we looked
            raise translate(exc, f"reading domain {_dom_name(dom)}") from None
        if state[0] == STATE_ABSENT:
            continue
        domain = parse_domain(xml)
        over += _over_committed(dom, domain["disks"])
        if domain["record"] is not None:
            instances.append(_instance_entry(domain, state))
        else:
            others.append(_other_entry(domain, state))
    instances.sort(key=lambda i: (i["name"] or "", i["uuid"]))
    others.sort(key=lambda d: d["name"])
    return {
        "caps": caps,
        "vcpus_total": int(info[2]),
        "memory_mb_total": int(memory_mb),
        "hypervisor_type": driver,
        "hypervisor_version": int(hv_version),
        "libvirt_version": int(lib_version),
        "hypervisor_hostname": hostname,
        "virt_type": detect_virt_type(caps, kvm_domcaps, dev_kvm),
        "instances": instances,
        "other_domains": others,
        "disk_over_committed_bytes": over,
    }


def default_host() -> str:
    return socket.gethostname()


def allocation_options(
    cpu_allocation_ratio: float = DEFAULT_CPU_ALLOCATION_RATIO,
    ram_allocation_ratio: float = DEFAULT_RAM_ALLOCATION_RATIO,
    disk_allocation_ratio: float = DEFAULT_DISK_ALLOCATION_RATIO,
    reserved_host_memory_mb: int = DEFAULT_RESERVED_HOST_MEMORY_MB,
    reserved_host_disk_mb: int = DEFAULT_RESERVED_HOST_DISK_MB,
) -> dict:
    """The allocation ratios and reservations, checked: keyword arguments of :func:`host_state`."""
    options = {
        name: check_ratio(value, name)
        for name, value in (
            ("cpu_allocation_ratio", cpu_allocation_ratio),
            ("ram_allocation_ratio", ram_allocation_ratio),
            ("disk_allocation_ratio", disk_allocation_ratio),
        )
    }
    options["reserved_host_memory_mb"] = check_reserved(reserved_host_memory_mb, "reserved_host_memory_mb")
    options["reserved_host_disk_mb"] = check_reserved(reserved_host_disk_mb, "reserved_host_disk_mb")
    return options


def host_figures(seen: dict, instances_path: str, options: dict, extra_instances=()) -> dict:
    """Nova's HostState numbers from what :func:`read_libvirt` saw and the instances folder's
    file system, with ``extra_instances`` (pending claims) counted too.

    compute_facts and the claim of a spawn (instance_claim) both count with this, so the
    scheduler and the claim never disagree on how a host is used.
    """
    disk_total, disk_free = _disk_usage(instances_path)
    return host_state(
        vcpus_total=seen["vcpus_total"],
        memory_mb_total=seen["memory_mb_total"],
        disk_total_bytes=disk_total,
        disk_free_bytes=disk_free,
        disk_over_committed_bytes=seen["disk_over_committed_bytes"],
        instances=list(seen["instances"]) + list(extra_instances),
        other_domains=seen["other_domains"],
        **options,
    )


def gather_host_facts(
    *,
    uri: str,
    instances_path: str,
    host: str | None = None,
    availability_zone: str | None = None,
    aggregates=None,
    cpu_allocation_ratio: float = DEFAULT_CPU_ALLOCATION_RATIO,
    ram_allocation_ratio: float = DEFAULT_RAM_ALLOCATION_RATIO,
    disk_allocation_ratio: float = DEFAULT_DISK_ALLOCATION_RATIO,
    reserved_host_memory_mb: int = DEFAULT_RESERVED_HOST_MEMORY_MB,
    reserved_host_disk_mb: int = DEFAULT_RESERVED_HOST_DISK_MB,
    service_file: str = "/var/lib/virtcloud/service.json",
    connector=connect,
) -> dict:
    """The host facts (Nova's HostState names). Raises VirtcloudError subclasses for bad options."""
    check_uri(uri)
    host = check_host_name(host if host else default_host())
    zone = check_zone(availability_zone)
    aggs = normalise_aggregates(aggregates)
    options = allocation_options(cpu_allocation_ratio, ram_allocation_ratio, disk_allocation_ratio, reserved_host_memory_mb, reserved_host_disk_mb)
    require_lxml()
    service = service_state(read_service_record(service_file, host), host)
    _disk_usage(instances_path)  # a missing instances folder is an error, not a down service

    down_reason = None
    try:
        seen = read_libvirt(connector(uri), uri)
    except LibvirtConnectionError as exc:
        down_reason = str(exc)
        seen = {
            "caps": None,
            "vcpus_total": 0,
            "memory_mb_total": 0,
            "hypervisor_type": None,
            "hypervisor_version": 0,
            "libvirt_version": 0,
            "hypervisor_hostname": None,
            "virt_type": None,
            "instances": [],
            "other_domains": [],
            "disk_over_committed_bytes": 0,
        }
    numbers = host_figures(seen, instances_path, options)
    caps = seen["caps"]
    facts = {
        "host": host,
        "hypervisor_hostname": seen["hypervisor_hostname"],
        "uuid": caps["uuid"] if caps else None,
        "hypervisor_type": seen["hypervisor_type"],
        "virt_type": seen["virt_type"],
        "hypervisor_version": seen["hypervisor_version"],
        "libvirt_version": seen["libvirt_version"],
        "cpu_info": cpu_info(caps) if caps else {},
        "supported_instances": supported_instances(caps) if caps else [],
        "instances_path": instances_path,
        "availability_zone": host_zone(zone, aggs),
        "aggregates": aggs,
        "service": {
            "host": host,
            "binary": "nova-compute",
            "enabled": service["enabled"],
            "disabled_reason": service["disabled_reason"],
            "updated_at": service["updated_at"],
            "forced_down": False,
            "up": down_reason is None,
            "down_reason": down_reason,
        },
        "instances": seen["instances"],
        "other_domains": seen["other_domains"],
        "updated": now_text(),
    }
    facts.update(numbers)
    return facts
