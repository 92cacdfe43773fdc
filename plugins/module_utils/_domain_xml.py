# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Build and read libvirt domain XML for an instance record (private to this collection).

Pure logic with lxml: no libvirt call, no subprocess. Every value that goes into the
XML is validated first (names and the record by ``_instance``, paths, bridges, MACs);
the XML is built element by element, never by string interpolation.

Decisions
---------

* **Domain name** ``instance-<uuid>``. Nova names domains ``instance-%08x`` after a
  database id that does not exist here; the uuid is unique across every host, stays
  the same through rename, migration, evacuate and shelve, and can never collide
  between projects. The instance name is the domain ``<title>`` (``virsh list
  --title``) and is in the record; ``<uuid>`` is the instance uuid.
* **Disks**, in the instance directory ``<instances_path>/<uuid>/``, on virtio, in
  this order (Nova's): ``disk`` (vda, qcow2 overlay on the image cache),
  ``disk.eph0`` (qcow2, when the flavor has ephemeral_gb), ``disk.swap`` (qcow2,
  when the flavor has swap_mb), ``disk.config`` (raw vfat config drive, last).
  Every disk uses ``cache='none'`` (libvirt refuses live migration without shared
  storage otherwise); qcow2 disks pass discards through (``discard='unmap'``). The
  config drive is *not* read-only: libvirt does not copy read-only disks in a block
  migration, and the guest mounts it read-only anyway.
* **Rescue** (``nova rescue``): ``disk.rescue`` (the rescue image's overlay) is vda
  and boots, the instance's own ``disk`` is vdb, the config drive stays last;
  ephemeral and swap disks are left out, as Nova does. The metadata says
  ``rescue="yes"``.
* **CPU**: ``host-model`` for kvm; for qemu (TCG) the model libvirt would pick,
  ``qemu64``, written out so that the defined XML compares equal to the built one.
* **NICs**: one ``<interface>`` per port of the record, in order, with its fixed MAC,
  on a bridge (``type='bridge'``) or a libvirt network (``type='network'``), model
  virtio, optional MTU. The tap name is left to libvirt.
* **Console**: serial port on a pty, logged to ``<instance dir>/console.log``
  (``append='on'``, so a log holds several boots), plus the matching console.
* **Record**: in ``<metadata>``, element ``<vc:instance>`` in the collection's
  namespace ``https://virtcloud.invalid/xmlns/compute/1``: the record as JSON text
  (ASCII only, lossless) and readable attributes uuid, name, vm_state, task_state,
  rescue.
* ``machine='pc'`` (i440fx) is the default: PCI hot-plug of volumes works without
  extra root ports, and the test guest's kernel has no AHCI for q35's SATA cdrom.
  With ``machine='q35'`` hot-plug needs spare pcie-root-ports, not added here.

Comparing (``normalise``/``differs``): both documents are projected onto the part of
the schema this builder writes (the elements and attributes below in ``_KEEP``);
what libvirt adds (ids, aliases, PCI addresses, controllers, emulator, seclabels,
tap names, pty paths, backing chains, defaults such as ``check`` on ``<cpu>``) is not
in that part and drops out, while a change to anything this builder sets shows.
A machine alias (``pc``, ``q35``) matches its versioned expansion
(``pc-i440fx-7.2``, ``pc-q35-7.2``) that libvirt stores.
"""

from __future__ import annotations

import json
import os
import re
import traceback

try:
    from lxml import etree

    HAS_LXML = True
    LXML_IMPORT_ERROR = None
except ImportError:
    HAS_LXML = False
    LXML_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.virtcloud.compute.plugins.module_utils._instance import (
    Instance,
    InstanceError,
    VmState,
    as_instance,
    validate_mac,
    validate_simple_name,
    validate_uuid,
)

NS = "https://virtcloud.invalid/xmlns/compute/1"
NS_PREFIX = "vc"
RECORD_TAG = f"{{{NS}}}instance"

DOMAIN_TYPES = ("kvm", "qemu")
ARCHES = ("x86_64", "aarch64", "i686", "ppc64le", "s390x")
CPU_MODES = ("host-model", "host-passthrough", "custom")
MACHINE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
CPU_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
BRIDGE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}\Z")
PATH_RE = re.compile(r"^/[A-Za-z0-9_.+@/-]*\Z")
MACHINE_ALIASES = {"pc": "pc-i440fx-", "q35": "pc-q35-"}

ROOT_DISK = "disk"
EPHEMERAL_DISK = "disk.eph0"
SWAP_DISK = "disk.swap"
CONFIG_DISK = "disk.config"
RESCUE_DISK = "disk.rescue"
CONSOLE_LOG = "console.log"
MAX_DISKS = 26


class DomainXmlError(InstanceError):
    """Domain XML cannot be built or read; the message says why and what to do."""


def _require_lxml():
    if not HAS_LXML:
        raise DomainXmlError(
            "the Python lxml library is needed on the host to build or read domain XML: "
            "install python3-lxml (Debian/Ubuntu/RHEL package) for the Python that runs the module"
        )


def domain_name(uuid):
    """The libvirt domain name of an instance: ``instance-<uuid>``."""
    return f"instance-{validate_uuid(uuid, 'instance uuid')}"


# --------------------------------------------------------------------------- validation


def validate_path(path, what, roots=None):
    """An absolute, normalised path of plain characters, inside one of ``roots`` when given."""
    if not isinstance(path, str) or not PATH_RE.match(path) or path.startswith("//") or os.path.normpath(path) != path or path == "/":
        raise DomainXmlError(
            f"{what} {path!r} is not valid: give an absolute, normalised path (no '..', '//' or trailing '/') of letters, digits and '_ . + @ - /'"
        )
    if roots is not None and not any(path.startswith(root + "/") for root in roots):
        raise DomainXmlError(f"{what} {path} is outside {' and '.join(roots)}: instance disks live in the instance directory or the image cache")
    return path


def validate_bridge(name):
    """A Linux bridge name: at most 15 characters (IFNAMSIZ), letters, digits, '_', '.', '-'."""
    if not isinstance(name, str) or not BRIDGE_RE.match(name):
        raise DomainXmlError(
            f"bridge name {name!r} is not valid: use 1 to 15 characters from letters, digits, '_', '.' and '-', starting with a letter or digit"
        )
    return name


def _validate_networks(networks):
    """{network name: {'bridge': name} | {'libvirt_network': name}, optional 'mtu'} -> validated copy."""
    if networks is None:
        return {}
    if not isinstance(networks, dict):
        raise DomainXmlError(f"networks must be a mapping of network name to {{'bridge': ...}} or {{'libvirt_network': ...}}, got {networks!r}")
    result = {}
    for net, spec in networks.items():
        validate_simple_name(net, "network name")
        if not isinstance(spec, dict):
            raise DomainXmlError(f"networks[{net}] must be a mapping with 'bridge' or 'libvirt_network', got {spec!r}")
        unknown = sorted(set(spec) - {"bridge", "libvirt_network", "mtu"})
        if unknown:
            raise DomainXmlError(f"networks[{net}] has unknown keys {', '.join(map(str, unknown))}; known keys are bridge, libvirt_network, mtu")
        if ("bridge" in spec) == ("libvirt_network" in spec):
            raise DomainXmlError(f"networks[{net}] needs exactly one of 'bridge' and 'libvirt_network'")
        entry = {}
        if "bridge" in spec:
            entry["bridge"] = validate_bridge(spec["bridge"])
        else:
            entry["libvirt_network"] = validate_simple_name(spec["libvirt_network"], "libvirt network name")
        mtu = spec.get("mtu")
        if mtu is not None:
            if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
                raise DomainXmlError(f"networks[{net}] mtu must be a whole number from 68 to 65535, got {mtu!r}")
            entry["mtu"] = mtu
        result[net] = entry
    return result


def _instance_dir(path, inst):
    validate_path(path, "instance_dir")
    if os.path.basename(path) != inst.uuid:
        raise DomainXmlError(f"instance_dir {path} must be <instances_path>/{inst.uuid}: the directory is named after the instance uuid")
    return path


# --------------------------------------------------------------------------- disks


def _target(index):
    return "vd" + chr(ord("a") + index)


def instance_disks(record, *, instance_dir, rescue=None, rescue_disk=None, image_cache=None):
    """The instance's disks in target order: list of dicts.

    Each dict: ``role`` (root, ephemeral, swap, config, rescue), ``source`` (path),
    ``target`` (vda...), ``format`` (qcow2/raw), ``size_bytes`` (None when the size
    comes from the image: root with disk_gb 0, rescue, config drive).
    ``rescue`` None means: rescue layout when the record's vm_state is rescued.
    """
    inst = as_instance(record)
    instance_dir = _instance_dir(instance_dir, inst)
    rescue = inst.vm_state == VmState.RESCUED if rescue is None else rescue
    if not isinstance(rescue, bool):
        raise DomainXmlError(f"rescue must be true, false or null, got {rescue!r}")
    roots = [instance_dir] + ([validate_path(image_cache, "image_cache")] if image_cache is not None else [])
    flavor = inst.flavor
    root = {"role": "root", "source": f"{instance_dir}/{ROOT_DISK}", "format": "qcow2", "size_bytes": flavor.disk_gb * 1024**3 if flavor.disk_gb else None}
    disks = []
    if rescue:
        source = f"{instance_dir}/{RESCUE_DISK}" if rescue_disk is None else validate_path(rescue_disk, "rescue_disk", roots)
        disks.append({"role": "rescue", "source": source, "format": "qcow2", "size_bytes": None})
        disks.append(root)
    else:
        if rescue_disk is not None:
            raise DomainXmlError("rescue_disk is only used with rescue=true")
        disks.append(root)
        if flavor.ephemeral_gb:
            disks.append({"role": "ephemeral", "source": f"{instance_dir}/{EPHEMERAL_DISK}", "format": "qcow2", "size_bytes": flavor.ephemeral_gb * 1024**3})
        if flavor.swap_mb:
            disks.append({"role": "swap", "source": f"{instance_dir}/{SWAP_DISK}", "format": "qcow2", "size_bytes": flavor.swap_mb * 1024**2})
    if inst.config_drive:
        disks.append({"role": "config", "source": f"{instance_dir}/{CONFIG_DISK}", "format": "raw", "size_bytes": None})
    for index, disk in enumerate(disks):
        validate_path(disk["source"], f"{disk['role']} disk", roots)
        disk["target"] = _target(index)
    return disks


# --------------------------------------------------------------------------- build


def _sub(parent, tag, text=None, **attrs):
    element = etree.SubElement(parent, tag)
    for key in sorted(attrs):
        element.set(key, str(attrs[key]))
    if text is not None:
        element.text = str(text)
    return element


def _cpu(dom, domain_type, cpu_mode, cpu_model):
    if cpu_mode is None:
        cpu_mode = "host-model" if domain_type == "kvm" else "custom"
    if cpu_mode not in CPU_MODES:
        raise DomainXmlError(f"cpu_mode {cpu_mode!r} is not one of {', '.join(CPU_MODES)}")
    if cpu_mode != "custom":
        if cpu_model is not None:
            raise DomainXmlError(f"cpu_model is only used with cpu_mode custom, not {cpu_mode}")
        _sub(dom, "cpu", mode=cpu_mode)
        return
    cpu_model = "qemu64" if cpu_model is None else cpu_model
    if not isinstance(cpu_model, str) or not CPU_MODEL_RE.match(cpu_model):
        raise DomainXmlError(f"cpu_model {cpu_model!r} is not a valid CPU model name (such as qemu64, Haswell-noTSX)")
    cpu = _sub(dom, "cpu", mode="custom", match="exact")
    _sub(cpu, "model", cpu_model, fallback="forbid")


def _disk(devices, disk):
    element = _sub(devices, "disk", type="file", device="disk")
    driver = {"name": "qemu", "type": disk["format"], "cache": "none"}
    if disk["format"] == "qcow2":
        driver["discard"] = "unmap"
    _sub(element, "driver", **driver)
    _sub(element, "source", file=disk["source"])
    _sub(element, "target", dev=disk["target"], bus="virtio")


def _interface(devices, port, networks):
    if port.network not in networks:
        raise DomainXmlError(
            f"port {port.mac} is on network {port.network}, which networks does not map to a bridge or libvirt network: "
            f"give networks={{'{port.network}': {{'bridge': ...}}}}"
        )
    spec = networks[port.network]
    if "bridge" in spec:
        element = _sub(devices, "interface", type="bridge")
        _sub(element, "mac", address=validate_mac(port.mac))
        _sub(element, "source", bridge=spec["bridge"])
    else:
        element = _sub(devices, "interface", type="network")
        _sub(element, "mac", address=validate_mac(port.mac))
        _sub(element, "source", network=spec["libvirt_network"])
    _sub(element, "model", type="virtio")
    if "mtu" in spec:
        _sub(element, "mtu", size=spec["mtu"])


def record_element(record, rescue=False, namespaced=True):
    """The ``<vc:instance>`` metadata element: the record as JSON and its readable attributes.

    ``namespaced`` False gives the bare ``<instance>`` that libvirt's ``setMetadata``
    takes (it adds the namespace itself).
    """
    _require_lxml()
    inst = as_instance(record)
    element = etree.Element(RECORD_TAG, nsmap={NS_PREFIX: NS}) if namespaced else etree.Element("instance")
    element.set("name", inst.name)
    element.set("rescue", "yes" if rescue else "no")
    element.set("task_state", inst.task_state or "")
    element.set("uuid", inst.uuid)
    element.set("vm_state", inst.vm_state)
    element.text = inst.to_json()
    return element


def build_domain(
    record,
    *,
    instance_dir,
    domain_type="kvm",
    machine="pc",
    arch="x86_64",
    networks=None,
    rescue=None,
    rescue_disk=None,
    image_cache=None,
    cpu_mode=None,
    cpu_model=None,
):
    """The domain XML (a string) for an instance record.

    ``networks`` maps each port's network name to ``{'bridge': 'vcbr0'}`` or
    ``{'libvirt_network': 'default'}``, with an optional ``'mtu'``. ``rescue`` None
    means: the rescue layout when the record's vm_state is rescued. ``rescue_disk``
    (default ``<instance_dir>/disk.rescue``) and every other disk must lie in
    ``instance_dir`` or ``image_cache``.
    """
    _require_lxml()
    inst = as_instance(record)
    if domain_type not in DOMAIN_TYPES:
        raise DomainXmlError(f"domain_type {domain_type!r} is not one of {', '.join(DOMAIN_TYPES)} (kvm on real hosts, qemu for TCG)")
    if not isinstance(machine, str) or not MACHINE_RE.match(machine):
        raise DomainXmlError(f"machine {machine!r} is not a valid machine type (such as pc, q35, pc-i440fx-7.2)")
    if arch not in ARCHES:
        raise DomainXmlError(f"arch {arch!r} is not one of {', '.join(ARCHES)}")
    nets = _validate_networks(networks)
    disks = instance_disks(inst, instance_dir=instance_dir, rescue=rescue, rescue_disk=rescue_disk, image_cache=image_cache)
    if len(disks) > MAX_DISKS:
        raise DomainXmlError(f"an instance can have at most {MAX_DISKS} virtio disks")
    is_rescue = disks[0]["role"] == "rescue"

    dom = etree.Element("domain", type=domain_type)
    _sub(dom, "name", domain_name(inst.uuid))
    _sub(dom, "uuid", inst.uuid)
    _sub(dom, "title", inst.name)
    metadata = _sub(dom, "metadata")
    metadata.append(record_element(inst, is_rescue))
    kib = inst.flavor.ram_mb * 1024
    _sub(dom, "memory", kib, unit="KiB")
    _sub(dom, "currentMemory", kib, unit="KiB")
    _sub(dom, "vcpu", inst.flavor.vcpus, placement="static")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch=arch, machine=machine)
    _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _cpu(dom, domain_type, cpu_mode, cpu_model)
    clock = _sub(dom, "clock", offset="utc")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="hpet", present="no")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    for disk in disks:
        _disk(devices, disk)
    for port in inst.ports:
        _interface(devices, port, nets)
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=f"{instance_dir}/{CONSOLE_LOG}", append="on")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    balloon = _sub(devices, "memballoon", model="virtio")
    _sub(balloon, "stats", period="10")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    etree.indent(dom, space="  ")
    return etree.tostring(dom, encoding="unicode") + "\n"


# --------------------------------------------------------------------------- read


def _parse(xml):
    _require_lxml()
    if isinstance(xml, str):
        xml = xml.encode("utf-8")
    if not isinstance(xml, bytes):
        raise DomainXmlError(f"domain XML must be a string, got {type(xml).__name__}")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True, remove_comments=True, remove_pis=True)
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        raise DomainXmlError(f"domain XML does not parse: {exc}") from None
    if root.tag != "domain":
        raise DomainXmlError(f"domain XML must have <domain> as its root element, not <{root.tag}>")
    return root


def _record_element(root):
    metadata = root.find("metadata")
    return None if metadata is None else metadata.find(RECORD_TAG)


def record_element_xml(record, rescue=False):
    """The ``<instance>`` metadata element as :func:`build_domain` writes it, for ``setMetadata`` (which adds the namespace)."""
    return etree.tostring(record_element(record, rescue, namespaced=False), encoding="unicode")


def read_instance(xml):
    """The :class:`Instance` kept in the domain's metadata, or None when there is none."""
    element = _record_element(_parse(xml))
    if element is None:
        return None
    try:
        return Instance.from_json(element.text or "")
    except InstanceError as exc:
        raise DomainXmlError(f"the instance record in the domain metadata is not valid: {exc}") from None


def read_record(xml):
    """The record (a dict) kept in the domain's metadata, or None when there is none."""
    inst = read_instance(xml)
    return None if inst is None else inst.to_dict()


def is_rescue(xml):
    """True when the domain was built in the rescue layout (metadata flag)."""
    element = _record_element(_parse(xml))
    return element is not None and element.get("rescue") == "yes"


def domain_disks(xml):
    """The domain's disks in document order: list of {target, source, format, device, bus, type}."""
    disks = []
    for disk in _parse(xml).iterfind("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        driver = disk.find("driver")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("name") or source.get("volume")
        disks.append(
            {
                "target": None if target is None else target.get("dev"),
                "bus": None if target is None else target.get("bus"),
                "source": path,
                "format": None if driver is None else driver.get("type"),
                "device": disk.get("device", "disk"),
                "type": disk.get("type"),
            }
        )
    return disks


def build_params(xml, record=None):
    """The keyword arguments of :func:`build_domain` that a defined domain was built with.

    domain_type, machine, arch, cpu_mode, cpu_model and networks (each port of the
    record mapped to the bridge or libvirt network its interface is on, with its MTU),
    so that an action which changes the disks (rebuild, rescue, unrescue) defines the
    domain again as it was, without the caller repeating how it was made.
    ``record`` (default: the record in the XML's metadata) gives the ports' networks.
    """
    root = _parse(xml)
    inst = read_instance(xml) if record is None else as_instance(record)
    if inst is None:
        raise DomainXmlError("the domain XML has no instance record: give the record")
    os_type = root.find("os/type")
    params = {
        "domain_type": root.get("type"),
        "machine": None if os_type is None else os_type.get("machine"),
        "arch": None if os_type is None else os_type.get("arch"),
    }
    cpu = root.find("cpu")
    params["cpu_mode"] = None if cpu is None else cpu.get("mode")
    model = None if cpu is None else cpu.find("model")
    params["cpu_model"] = None if model is None or params["cpu_mode"] != "custom" else (model.text or "").strip() or None
    by_mac = {port.mac: port.network for port in inst.ports}
    networks = {}
    for interface in root.iterfind("devices/interface"):
        mac = interface.find("mac")
        address = None if mac is None else (mac.get("address") or "").lower()
        if address not in by_mac:
            raise DomainXmlError(f"the domain has an interface with MAC {address} that is not a port of instance {inst.uuid}")
        source = interface.find("source")
        if interface.get("type") == "bridge" and source is not None and source.get("bridge"):
            entry = {"bridge": source.get("bridge")}
        elif interface.get("type") == "network" and source is not None and source.get("network"):
            entry = {"libvirt_network": source.get("network")}
        else:
            raise DomainXmlError(f"the interface with MAC {address} is of type {interface.get('type')}, not a bridge or a libvirt network")
        mtu = interface.find("mtu")
        if mtu is not None and mtu.get("size", "").isdigit():
            entry["mtu"] = int(mtu.get("size"))
        networks[by_mac[address]] = entry
    params["networks"] = networks
    return params


def domain_macs(xml):
    """The MAC addresses of the domain's interfaces, in order, lower case."""
    macs = []
    for mac in _parse(xml).iterfind("devices/interface/mac"):
        address = mac.get("address")
        if address:
            macs.append(address.lower())
    return macs


# --------------------------------------------------------------------------- compare

# The part of the domain schema this builder writes: path -> (attributes kept, text kept).
# Elements not listed drop out with everything below them; attributes not listed drop out.
_KEEP = {
    ("domain",): (("type",), False),
    ("domain", "name"): ((), True),
    ("domain", "uuid"): ((), True),
    ("domain", "title"): ((), True),
    ("domain", "metadata"): ((), False),
    ("domain", "metadata", RECORD_TAG): (("name", "rescue", "task_state", "uuid", "vm_state"), True),
    ("domain", "memory"): (("unit",), True),
    ("domain", "currentMemory"): (("unit",), True),
    ("domain", "vcpu"): (("placement", "current"), True),
    ("domain", "os"): ((), False),
    ("domain", "os", "type"): (("arch", "machine"), True),
    ("domain", "os", "boot"): (("dev",), False),
    ("domain", "features"): ((), False),
    ("domain", "features", "acpi"): ((), False),
    ("domain", "features", "apic"): ((), False),
    ("domain", "cpu"): (("mode", "match"), False),
    ("domain", "cpu", "model"): (("fallback",), True),
    ("domain", "clock"): (("offset",), False),
    ("domain", "clock", "timer"): (("name", "tickpolicy", "present"), False),
    ("domain", "on_poweroff"): ((), True),
    ("domain", "on_reboot"): ((), True),
    ("domain", "on_crash"): ((), True),
    ("domain", "devices"): ((), False),
    ("domain", "devices", "disk"): (("type", "device"), False),
    ("domain", "devices", "disk", "driver"): (("name", "type", "cache", "discard", "io"), False),
    ("domain", "devices", "disk", "source"): (("file", "dev", "protocol", "name"), False),
    ("domain", "devices", "disk", "source", "host"): (("name", "port", "transport"), False),
    ("domain", "devices", "disk", "target"): (("dev", "bus"), False),
    ("domain", "devices", "disk", "readonly"): ((), False),
    ("domain", "devices", "disk", "shareable"): ((), False),
    ("domain", "devices", "disk", "serial"): ((), True),
    ("domain", "devices", "disk", "boot"): (("order",), False),
    ("domain", "devices", "interface"): (("type",), False),
    ("domain", "devices", "interface", "mac"): (("address",), False),
    ("domain", "devices", "interface", "source"): (("bridge", "network"), False),
    ("domain", "devices", "interface", "model"): (("type",), False),
    ("domain", "devices", "interface", "mtu"): (("size",), False),
    ("domain", "devices", "serial"): (("type",), False),
    ("domain", "devices", "serial", "log"): (("file", "append"), False),
    ("domain", "devices", "console"): (("type",), False),
    ("domain", "devices", "console", "target"): (("type", "port"), False),
    ("domain", "devices", "memballoon"): (("model",), False),
    ("domain", "devices", "memballoon", "stats"): (("period",), False),
    ("domain", "devices", "rng"): (("model",), False),
    ("domain", "devices", "rng", "backend"): (("model",), True),
}
_TOP_ORDER = (
    "name",
    "uuid",
    "title",
    "metadata",
    "memory",
    "currentMemory",
    "vcpu",
    "os",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "devices",
)
_DEVICE_ORDER = ("disk", "interface", "serial", "console", "memballoon", "rng")
_OS_ORDER = ("type", "boot")


def _kept_attrs(path, element, parent):
    attrs = _KEEP[path][0]
    if path == ("domain", "devices", "interface", "source"):
        # a running type='network' interface also shows the bridge libvirt picked
        kind = parent.get("type")
        attrs = {"bridge": ("bridge",), "network": ("network",)}.get(kind, attrs)
    if path == ("domain", "devices", "interface", "mac"):
        return {"address": (element.get("address") or "").lower()} if element.get("address") is not None else {}
    return {key: element.get(key) for key in sorted(attrs) if element.get(key) is not None}


def _kept_text(path, element):
    text = (element.text or "").strip()
    if path[-1] == RECORD_TAG:
        try:
            return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        except ValueError:
            return text
    return text


def _order_key(path, element, index):
    tag = element.tag
    if path == ("domain",):
        return (_TOP_ORDER.index(tag), index)
    if path == ("domain", "devices"):
        return (_DEVICE_ORDER.index(tag), index)
    if path == ("domain", "os"):
        return (_OS_ORDER.index(tag), index)
    if path == ("domain", "features"):
        return (0, tag)
    if path == ("domain", "clock"):
        return (0, element.get("name") or "")
    return (0, index)


def _project(element, path, parent, out_parent):
    attrs = _kept_attrs(path, element, parent)
    if out_parent is None:
        out = etree.Element(element.tag, nsmap={NS_PREFIX: NS} if element.tag == RECORD_TAG else None)
    elif element.tag == RECORD_TAG:
        out = etree.SubElement(out_parent, element.tag, nsmap={NS_PREFIX: NS})
    else:
        out = etree.SubElement(out_parent, element.tag)
    for key, value in attrs.items():
        out.set(key, value)
    if _KEEP[path][1]:
        text = _kept_text(path, element)
        out.text = text or None
    children = []
    for index, child in enumerate(element):
        if not isinstance(child.tag, str):
            continue
        child_path = path + (child.tag,)
        if child_path in _KEEP:
            children.append((_order_key(path, child, index), child, child_path))
    for _key, child, child_path in sorted(children, key=lambda item: item[0]):
        _project(child, child_path, element, out)
    return out


def _projected(xml):
    root = _parse(xml)
    return _project(root, ("domain",), None, None)


def _serialise(tree):
    etree.indent(tree, space="  ")
    return etree.tostring(tree, encoding="unicode") + "\n"


def normalise(xml):
    """Canonical text of the part of a domain XML this collection manages.

    Sorted attributes, no insignificant whitespace, devices and top-level elements
    in a fixed order, and none of what libvirt adds at define or run time (``id``,
    ``<seclabel>``, ``<alias>``, ``<address>``, controllers, the tap ``<target>`` of
    an interface, pty paths, backing chains, ...). For ``--diff`` and idempotence.
    """
    return _serialise(_projected(xml))


def _drop_record(tree):
    metadata = tree.find("metadata")
    if metadata is not None:
        tree.remove(metadata)


def normalised_pair(current_xml, wanted_xml, *, include_record=True):
    """(before, after) normalised for a diff; a machine alias in ``wanted`` matches libvirt's expansion."""
    current = _projected(current_xml)
    wanted = _projected(wanted_xml)
    cur_type = current.find("os/type")
    want_type = wanted.find("os/type")
    if cur_type is not None and want_type is not None:
        alias = want_type.get("machine")
        expanded = cur_type.get("machine") or ""
        if alias in MACHINE_ALIASES and expanded.startswith(MACHINE_ALIASES[alias]):
            cur_type.set("machine", alias)
    if not include_record:
        _drop_record(current)
        _drop_record(wanted)
    return _serialise(current), _serialise(wanted)


def differs(current_xml, wanted_xml, *, include_record=True):
    """True when the defined domain differs from the wanted one in anything this collection manages."""
    before, after = normalised_pair(current_xml, wanted_xml, include_record=include_record)
    return before != after
