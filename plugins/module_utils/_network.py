# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The instance network: bridges joined by VXLAN, one dnsmasq, IP and MAC allocation (private).

What a network is
=================

A network has a **name** (1 to 10 of ``[a-z0-9-]``, starting with a letter or digit),
an IPv4 **subnet** (RFC 1918, /16 to /29), a **VXLAN id** (VNI, 1 to 16777215) and an
**MTU** (1450 by default: 1500 of the underlay minus the 50 bytes of VXLAN over IPv4).
It spans its member hosts, the compute hosts and the network node (the controller in
the lab), which holds the DHCP server like Neutron's DHCP agent.

On every member host (``network_present``):

- a Linux bridge ``vcbr-<name>`` with the network's MTU, set explicitly so that the
  kernel keeps it (the tap devices libvirt adds get the bridge's MTU);
- a VXLAN device ``vcvx-<name>`` (``id <vni> dstport 4789 local <underlay ip>
  nolearning``), a port of the bridge, with the same MTU;
- head-end replication, no multicast: one all-zero FDB entry per peer
  (``bridge fdb append 00:00:00:00:00:00 dev vcvx-<name> dst <peer>``), so broadcast,
  unknown unicast and multicast frames go to every other member host. With
  ``nolearning`` the VXLAN device never remembers where a MAC was seen, so every
  unicast frame to a remote instance goes to every peer too; that costs bandwidth on a
  large network but an instance is reachable the moment it runs on another host
  (migration, evacuate) without waiting for a learnt entry to age out.
- on the DHCP host only, the subnet's first address on the bridge (gateway and DHCP
  server address). On the other hosts the bridge has no IPv4 address, and on every
  host no IPv6 address at all (``addrgenmode none``, not even a link-local one): the
  compute hosts are not reachable from the instances over it. The network node is
  reachable at the gateway address: a service there that listens on every address
  (``0.0.0.0``) is reachable from the instances too, so bind services to the underlay
  address or filter the bridge. (Neutron puts its dnsmasq in a namespace of its own
  for that reason; a later version may do the same.)

Names are ``vcbr-``/``vcvx-`` plus the network name, at most 15 characters (Linux's
IFNAMSIZ), which is why a network name has at most 10 characters.

The DHCP server
===============

One dnsmasq per network on the DHCP host, bound to the network's bridge only
(``interface``, ``bind-interfaces``, ``except-interface=lo``), DHCP only (``port=0``:
no DNS), ``dhcp-range=<network>,static`` so that only reserved MACs get an address,
``dhcp-authoritative`` (a client that renews after a restart of the server gets its
answer at once), the MTU as DHCP option 26, the gateway as router (dnsmasq's default).
Its files are in the network's folder, ``<state_dir>/<name>/`` (``state_dir``
defaults to ``/var/lib/virtcloud/networks``):

=================  ===========================================================
``network.json``   the network's definition and ``host``, the hostname of the host
                   that owns the folder (written by the network module)
``ports.json``     the reservations, **the source of truth**: per port id its MAC,
                   IP, hostname, instance uuid, request id and creation time
``hosts``          dnsmasq's ``dhcp-hostsfile``, ``<mac>,<ip>[,<hostname>]`` per
                   port, always derived from ``ports.json``
``dnsmasq.conf``   the daemon's whole configuration (``--conf-file``; nothing
                   from ``/etc/dnsmasq.conf``)
``dnsmasq.pid``    its pid; a pid counts only if that process is a dnsmasq started
                   with this ``--conf-file`` in this host's network namespace
``leases``         dnsmasq's lease file
``dnsmasq.log``    dnsmasq's log (``log-dhcp``)
``.lock``          the lock every change takes (``_files.file_lock``, flock)
=================  ===========================================================

Only the owner uses the folder: a host that can see another host's folder (shared
storage, or the lab, whose hosts share one filesystem) leaves it alone on ``absent``
and ``dhcp=false``, and refuses to become a second DHCP server of the network or to
change its ports.

Every change to these files happens under the lock: read, change, write each file
atomically (a temporary file, ``fsync``, ``rename``, ``fsync`` of the folder), first
``ports.json``, then ``hosts``. A run that dies between the two leaves a ``hosts`` file
that the next run of either module makes again from ``ports.json``; a run that dies
while writing leaves the old file whole. dnsmasq re-reads ``hosts`` on SIGHUP and at
start, so a restart of dnsmasq loses no reservation.

dnsmasq keeps leases, and it will not give a reserved address to a MAC while the lease
of another MAC holds it ("not using configured address ... because it is leased to
..."). So when a reservation goes away or changes (a port deleted, its IP given to the
next port), the lease that no longer matches a reservation is removed: dnsmasq is
stopped, the stale lines are taken out of the lease file, and dnsmasq is started again
(a plain addition is a SIGHUP). The same pruning happens whenever the network module
starts dnsmasq.

Addresses
=========

The pool is the subnet minus the network address, the gateway (first address) and the
broadcast address, optionally narrowed to ``allocation_start``..``allocation_end``.
A port without a requested address gets the lowest free address of the pool
(deterministic: the same reservations always give the same answer, so check mode
reports the address the real run takes). A requested address must be in the subnet,
not the network, gateway or broadcast address, and free (it may be outside the
allocation range, as Neutron's fixed IPs may). A deleted port's address is free again
at once.

MACs have Nova's and Neutron's prefix ``fa:16:3e`` (locally administered, unicast) and
three bytes from the SHA-256 of ``<network>/<port id>/<n>``, with the first n from 0 up
whose MAC no other port of the network has: deterministic too, and unique in the
network.

Everything here takes plain arguments and raises ``NetworkError``; commands run
through an injected ``run(argv, data=None) -> (rc, stdout, stderr)``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass, field

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._files import atomic_write, file_lock, json_text
from ansible_collections.virtcloud.compute.plugins.module_utils._validate import is_uuid
from ansible_collections.virtcloud.compute.plugins.module_utils._iproute import (
    ZERO_MAC,
    Iproute,
    parse_addresses,
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,9}\Z")
PORT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,79}\Z")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}\Z")
# a path that is safe in dnsmasq's configuration file and on a command line
PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]*\Z")

RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
MIN_PREFIX = 16
MAX_PREFIX = 29
MAX_VNI = 16777215
VXLAN_PORT = 4789
DEFAULT_MTU = 1450
MIN_MTU = 576
MAX_MTU = 9000
DEFAULT_LEASE_TIME = 86400
DEFAULT_STATE_DIR = "/var/lib/virtcloud/networks"
MAC_PREFIX = "fa:16:3e"
BRIDGE_PREFIX = "vcbr-"
VXLAN_PREFIX = "vcvx-"
PORTS_VERSION = 1


class NetworkError(VirtcloudError):
    """A network operation was refused or failed; the message says what and what to do."""


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def validate_name(name) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise NetworkError(
            f"network name {name!r} is not valid: use 1 to 10 of a-z, 0-9 and '-', starting with a letter or digit "
            f"(it makes the interface names {BRIDGE_PREFIX}<name> and {VXLAN_PREFIX}<name>, which Linux limits to 15 characters)"
        )
    return name


def bridge_name(name: str) -> str:
    """The network's bridge on every member host (what a domain's <interface type='bridge'> uses)."""
    return BRIDGE_PREFIX + validate_name(name)


def vxlan_name(name: str) -> str:
    return VXLAN_PREFIX + validate_name(name)


def validate_subnet(value) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except (ValueError, TypeError) as exc:
        raise NetworkError(f"subnet {value!r} is not an IPv4 network in CIDR form such as 10.100.0.0/24: {exc}") from None
    if not any(net.subnet_of(r) for r in RFC1918):
        raise NetworkError(f"subnet {net} is not a private range: use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise NetworkError(f"subnet {net} has prefix length /{net.prefixlen}: use /{MIN_PREFIX} to /{MAX_PREFIX}")
    return net


def validate_vni(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VNI:
        raise NetworkError(f"vni {value!r} is not valid: a VXLAN id is a whole number from 1 to {MAX_VNI}")
    return value


def validate_mtu(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_MTU <= value <= MAX_MTU:
        raise NetworkError(f"mtu {value!r} is not valid: use {MIN_MTU} to {MAX_MTU} (1450 for VXLAN over a 1500-byte underlay)")
    return value


def validate_ipv4(value, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise NetworkError(f"{what} {value!r} is not an IPv4 address") from None


def validate_state_dir(value) -> str:
    if not isinstance(value, str) or not PATH_RE.match(value) or "/../" in value + "/" or "/./" in value + "/":
        raise NetworkError(f"state_dir {value!r} is not valid: give an absolute path of letters, digits and . _ + - /")
    path = os.path.normpath(value)
    if path in ("/", "/var", "/var/lib", "/etc", "/tmp", "/run", "/usr", "/root"):
        raise NetworkError(f"state_dir {value!r} must be a folder of its own (it holds one folder per network)")
    return path


def validate_port_id(value) -> str:
    if not isinstance(value, str) or not PORT_ID_RE.match(value):
        raise NetworkError(f"port id {value!r} is not valid: use 1 to 80 of letters, digits and . _ : -, starting with a letter or digit")
    return value


def validate_hostname(value) -> str:
    if not isinstance(value, str) or not HOSTNAME_RE.match(value):
        raise NetworkError(f"hostname {value!r} is not valid: one DNS label, 1 to 63 letters, digits and '-', not starting or ending with '-'")
    return value


def validate_uuid(value) -> str:
    text = value.lower() if isinstance(value, str) else value
    if not isinstance(text, str) or not is_uuid(text):
        raise NetworkError(f"instance uuid {value!r} is not a UUID (8-4-4-4-12 hexadecimal digits)")
    return text


def validate_mac(value) -> str:
    mac = value.lower() if isinstance(value, str) else value
    if not isinstance(mac, str) or not MAC_RE.match(mac):
        raise NetworkError(f"MAC address {value!r} is not valid: give six colon-separated hexadecimal bytes such as fa:16:3e:12:34:56")
    if int(mac[:2], 16) & 1:
        raise NetworkError(f"MAC address {mac} is a multicast address: a port needs a unicast one (even first byte)")
    if mac == ZERO_MAC:
        raise NetworkError("MAC address 00:00:00:00:00:00 is not usable for a port")
    return mac


def port_id_for(instance_uuid: str, index: int) -> str:
    """The id of an instance's port number ``index``: ``<uuid>-<index>``."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 99:
        raise NetworkError(f"port index {index!r} is not valid: use 0 to 99")
    return f"{validate_uuid(instance_uuid)}-{index}"


def check_no_overlap(subnet: ipaddress.IPv4Network, addresses: list, routes: list, own_devices: tuple = ()) -> None:
    """Refuse a subnet that overlaps an address or a route of the host (other than the network's own).

    ``addresses``: ``[(ifname, "a.b.c.d/len")]``; ``routes``: ``[(dst, dev)]`` with dst a
    CIDR or "default" (default routes are ignored: they overlap everything).
    """
    for dev, cidr in addresses:
        if dev in own_devices:
            continue
        iface = ipaddress.IPv4Interface(cidr)
        if iface.network.overlaps(subnet):
            raise NetworkError(f"subnet {subnet} overlaps the address {cidr} of {dev} on this host: choose a subnet that the hosts do not use")
    for dst, dev in routes:
        if dev in own_devices or dst == "default":
            continue
        try:
            route = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if route.prefixlen and route.overlaps(subnet):
            raise NetworkError(f"subnet {subnet} overlaps the route to {dst} (dev {dev or '-'}) on this host: choose a subnet that the hosts do not route")


# ---------------------------------------------------------------------------
# The network definition
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkSpec:
    """One network's definition, validated."""

    name: str
    subnet: ipaddress.IPv4Network
    vni: int
    mtu: int = DEFAULT_MTU
    allocation_start: str | None = None
    allocation_end: str | None = None
    lease_time: int = DEFAULT_LEASE_TIME

    @property
    def bridge(self) -> str:
        return bridge_name(self.name)

    @property
    def vxlan(self) -> str:
        return vxlan_name(self.name)

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def gateway_cidr(self) -> str:
        return f"{self.gateway}/{self.subnet.prefixlen}"

    def pool_bounds(self) -> tuple[int, int]:
        """First and last address (as integers) that the allocator hands out."""
        first = int(self.subnet.network_address) + 2
        last = int(self.subnet.broadcast_address) - 1
        if self.allocation_start:
            first = int(ipaddress.IPv4Address(self.allocation_start))
        if self.allocation_end:
            last = int(ipaddress.IPv4Address(self.allocation_end))
        return first, last

    def to_dict(self) -> dict:
        return dict(
            name=self.name,
            subnet=str(self.subnet),
            gateway=self.gateway,
            vni=self.vni,
            mtu=self.mtu,
            bridge=self.bridge,
            vxlan=self.vxlan,
            allocation_start=self.allocation_start,
            allocation_end=self.allocation_end,
            lease_time=self.lease_time,
        )

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkSpec":
        if not isinstance(data, dict):
            raise NetworkError(f"network definition must be a JSON object, got {data!r}")
        try:
            return make_spec(
                data["name"],
                data["subnet"],
                data["vni"],
                data.get("mtu", DEFAULT_MTU),
                data.get("allocation_start"),
                data.get("allocation_end"),
                data.get("lease_time", DEFAULT_LEASE_TIME),
            )
        except KeyError as exc:
            raise NetworkError(f"network definition lacks {exc}") from None


def make_spec(name, subnet, vni, mtu=DEFAULT_MTU, allocation_start=None, allocation_end=None, lease_time=DEFAULT_LEASE_TIME) -> NetworkSpec:
    """Validate a network's options; raises NetworkError naming the bad one."""
    validate_name(name)
    net = validate_subnet(subnet)
    validate_vni(vni)
    validate_mtu(mtu)
    if isinstance(lease_time, bool) or not isinstance(lease_time, int) or not 120 <= lease_time <= 31536000:
        raise NetworkError(f"lease_time {lease_time!r} is not valid: give seconds from 120 to 31536000")
    gateway = net.network_address + 1
    bounds = []
    for what, value in (("allocation_start", allocation_start), ("allocation_end", allocation_end)):
        if value in (None, ""):
            bounds.append(None)
            continue
        addr = ipaddress.IPv4Address(validate_ipv4(value, what))
        if addr not in net or addr in (net.network_address, net.broadcast_address, gateway):
            raise NetworkError(f"{what} {addr} is not a usable address of {net} (not the network, gateway {gateway} or broadcast address)")
        bounds.append(str(addr))
    spec = NetworkSpec(name=name, subnet=net, vni=vni, mtu=mtu, allocation_start=bounds[0], allocation_end=bounds[1], lease_time=lease_time)
    first, last = spec.pool_bounds()
    if first > last:
        raise NetworkError(
            f"allocation range {ipaddress.IPv4Address(first)}..{ipaddress.IPv4Address(last)} of {net} is empty: "
            "allocation_start must not be above allocation_end"
        )
    return spec


# ---------------------------------------------------------------------------
# Ports: the reservations, IPAM and MACs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Port:
    """One reservation."""

    id: str
    mac: str
    ip: str
    hostname: str | None = None
    instance_uuid: str | None = None
    request_id: str | None = None
    created_at: str | None = None

    def to_dict(self) -> dict:
        return dict(
            id=self.id,
            mac=self.mac,
            ip=self.ip,
            hostname=self.hostname,
            instance_uuid=self.instance_uuid,
            request_id=self.request_id,
            created_at=self.created_at,
        )

    @classmethod
    def from_dict(cls, data) -> "Port":
        if not isinstance(data, dict):
            raise NetworkError(f"a port in ports.json is not a JSON object: {data!r}")
        try:
            return cls(
                id=validate_port_id(data["id"]),
                mac=validate_mac(data["mac"]),
                ip=validate_ipv4(data["ip"], "port ip"),
                hostname=validate_hostname(data["hostname"]) if data.get("hostname") else None,
                instance_uuid=validate_uuid(data["instance_uuid"]) if data.get("instance_uuid") else None,
                request_id=data.get("request_id"),
                created_at=data.get("created_at"),
            )
        except KeyError as exc:
            raise NetworkError(f"a port in ports.json lacks {exc}: {data!r}") from None


def ports_from_document(doc, network: str) -> dict[str, Port]:
    """The content of ports.json to ``{port id: Port}``, checked (no MAC or IP twice)."""
    if not isinstance(doc, dict) or doc.get("version") != PORTS_VERSION or not isinstance(doc.get("ports"), dict):
        raise NetworkError(f"ports.json of network {network} is not a version {PORTS_VERSION} reservations document")
    if doc.get("network") != network:
        raise NetworkError(f"ports.json in the folder of network {network} belongs to network {doc.get('network')!r}")
    ports = {}
    for key, value in doc["ports"].items():
        port = Port.from_dict(value)
        if port.id != key:
            raise NetworkError(f"ports.json of network {network}: port {port.id!r} is filed under {key!r}")
        ports[key] = port
    for attr in ("mac", "ip"):
        seen: dict[str, str] = {}
        for port in ports.values():
            other = seen.setdefault(getattr(port, attr), port.id)
            if other != port.id:
                raise NetworkError(f"ports.json of network {network} gives {attr} {getattr(port, attr)} to ports {other} and {port.id}")
    return ports


def ports_document(network: str, ports: dict[str, Port]) -> dict:
    return dict(version=PORTS_VERSION, network=network, ports={k: ports[k].to_dict() for k in sorted(ports)})


def allocate_ip(spec: NetworkSpec, used: dict[str, str], requested: str | None = None, port_id: str | None = None) -> str:
    """An address for ``port_id``: ``requested`` when given and free, else the lowest free one of the pool.

    ``used`` maps each reserved address to its port id (the port's own address counts as free).
    """
    if requested not in (None, ""):
        addr = ipaddress.IPv4Address(validate_ipv4(requested, "ip"))
        net = spec.subnet
        if addr not in net:
            raise NetworkError(f"ip {addr} is not in the subnet {net} of network {spec.name}")
        if addr == net.network_address or addr == net.broadcast_address:
            raise NetworkError(f"ip {addr} is the {('network' if addr == net.network_address else 'broadcast')} address of {net}: it cannot be given to a port")
        if str(addr) == spec.gateway:
            raise NetworkError(f"ip {addr} is the gateway (DHCP server) address of network {spec.name}: it cannot be given to a port")
        owner = used.get(str(addr))
        if owner is not None and owner != port_id:
            raise NetworkError(f"ip {addr} of network {spec.name} is taken by port {owner}: ask for another address or none")
        return str(addr)
    first, last = spec.pool_bounds()
    taken = {int(ipaddress.IPv4Address(ip)) for ip, owner in used.items() if owner != port_id}
    for value in range(first, last + 1):
        if value not in taken:
            return str(ipaddress.IPv4Address(value))
    raise NetworkError(
        f"network {spec.name} has no free address left in {ipaddress.IPv4Address(first)}..{ipaddress.IPv4Address(last)} "
        f"({len(used)} ports): delete ports or use a larger subnet"
    )


def generate_mac(network: str, port_id: str, used) -> str:
    """``fa:16:3e`` + 3 bytes of sha256(network/port/n), the first n whose MAC is not in ``used``."""
    used = set(used)
    for n in range(1 << 16):
        digest = hashlib.sha256((f"{network}/{port_id}/{n}").encode("utf-8")).digest()
        mac = f"{MAC_PREFIX}:{digest[0]:02x}:{digest[1]:02x}:{digest[2]:02x}"
        if mac not in used:
            return mac
    raise NetworkError(f"no free MAC address found for port {port_id} of network {network}")


def plan_port(
    spec: NetworkSpec,
    ports: dict[str, Port],
    port_id: str,
    hostname: str | None = None,
    mac: str | None = None,
    ip: str | None = None,
    instance_uuid: str | None = None,
    request_id: str | None = None,
    now: str | None = None,
) -> tuple[dict[str, Port], Port]:
    """The reservations with ``port_id`` present as asked, and that port. Pure: nothing is written.

    An existing port keeps its MAC and IP unless other ones are asked for; a new one gets
    a generated MAC and the first free address.
    """
    validate_port_id(port_id)
    hostname = validate_hostname(hostname) if hostname else None
    instance_uuid = validate_uuid(instance_uuid) if instance_uuid else None
    mac = validate_mac(mac) if mac else None
    old = ports.get(port_id)
    others = {k: p for k, p in ports.items() if k != port_id}
    macs = {p.mac: p.id for p in others.values()}
    if mac and mac in macs:
        raise NetworkError(f"MAC address {mac} is already used by port {macs[mac]} of network {spec.name}")
    used_ips = {p.ip: p.id for p in others.values()}
    if ip in (None, "") and old is not None and old.ip not in used_ips:
        new_ip = old.ip
    else:
        new_ip = allocate_ip(spec, used_ips, ip, port_id)
    if mac is None:
        mac = old.mac if old is not None else generate_mac(spec.name, port_id, macs)
    if old is not None:
        hostname = hostname if hostname is not None else old.hostname
        instance_uuid = instance_uuid if instance_uuid is not None else old.instance_uuid
        port = Port(id=port_id, mac=mac, ip=new_ip, hostname=hostname, instance_uuid=instance_uuid, request_id=old.request_id, created_at=old.created_at)
        if port == old:
            return dict(ports), old
        port = Port(
            id=port_id, mac=mac, ip=new_ip, hostname=hostname, instance_uuid=instance_uuid, request_id=request_id or old.request_id, created_at=old.created_at
        )
    else:
        port = Port(id=port_id, mac=mac, ip=new_ip, hostname=hostname, instance_uuid=instance_uuid, request_id=request_id, created_at=now or utc_now())
    result = dict(others)
    result[port_id] = port
    return result, port


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# dnsmasq files: rendering and the lease file
# ---------------------------------------------------------------------------


def render_hosts(ports: dict[str, Port]) -> str:
    """dnsmasq's dhcp-hostsfile: ``<mac>,<ip>[,<hostname>]`` per port, ordered by address."""
    lines = []
    for port in sorted(ports.values(), key=lambda p: (int(ipaddress.IPv4Address(p.ip)), p.id)):
        fields = [validate_mac(port.mac), validate_ipv4(port.ip, "port ip")]
        if port.hostname:
            fields.append(validate_hostname(port.hostname))
        lines.append(",".join(fields))
    return "".join(line + "\n" for line in lines)


def _in_dir(filename: str) -> property:
    """A NetworkPaths property: the path of FILENAME in the network's folder."""
    return property(lambda self: os.path.join(self.dir, filename), doc=f"``<dir>/{filename}``")


@dataclass(frozen=True)
class NetworkPaths:
    """The files of one network on its DHCP host, in ``<state_dir>/<name>/``."""

    dir: str

    @classmethod
    def of(cls, state_dir: str, name: str) -> "NetworkPaths":
        return cls(os.path.join(validate_state_dir(state_dir), validate_name(name)))

    network = _in_dir("network.json")
    ports = _in_dir("ports.json")
    hosts = _in_dir("hosts")
    conf = _in_dir("dnsmasq.conf")
    pid = _in_dir("dnsmasq.pid")
    leases = _in_dir("leases")
    log = _in_dir("dnsmasq.log")
    lock = _in_dir(".lock")


def render_dnsmasq_conf(spec: NetworkSpec, paths: NetworkPaths) -> str:
    """The whole configuration of the network's dnsmasq (given with --conf-file)."""
    for path in (paths.hosts, paths.leases, paths.pid, paths.log):
        validate_state_dir(path)
    lines = [
        f"# dnsmasq of network {spec.name}, written by virtcloud.compute: changes are overwritten",
        f"interface={spec.bridge}",
        "except-interface=lo",
        "bind-interfaces",
        "port=0",
        "no-resolv",
        "no-hosts",
        "dhcp-authoritative",
        f"dhcp-range=set:{spec.name},{spec.subnet.network_address},static,{spec.subnet.netmask},{spec.lease_time}s",
        f"dhcp-option=tag:{spec.name},option:router,{spec.gateway}",
        f"dhcp-option=tag:{spec.name},option:mtu,{spec.mtu}",
        f"dhcp-hostsfile={paths.hosts}",
        f"dhcp-leasefile={paths.leases}",
        f"pid-file={paths.pid}",
        f"log-facility={paths.log}",
        "log-dhcp",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Lease:
    expiry: str
    mac: str
    ip: str
    line: str


def parse_leases(text: str) -> list[Lease]:
    """The IPv4 leases of a dnsmasq lease file (``expiry mac ip hostname clientid`` per line)."""
    leases = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and MAC_RE.match(parts[1].lower()):
            try:
                ip = str(ipaddress.IPv4Address(parts[2]))
            except ValueError:
                continue
            leases.append(Lease(parts[0], parts[1].lower(), ip, line))
    return leases


def stale_leases(text: str, ports: dict[str, Port]) -> list[Lease]:
    """Leases whose MAC has no reservation, or a reservation of another address."""
    reserved = {p.mac: p.ip for p in ports.values()}
    return [lease for lease in parse_leases(text) if reserved.get(lease.mac) != lease.ip]


def prune_leases(text: str, ports: dict[str, Port]) -> tuple[str, list[Lease]]:
    """The lease file without its stale leases, and those leases."""
    stale = stale_leases(text, ports)
    drop = {lease.line for lease in stale}
    kept = [line for line in text.splitlines() if line not in drop]
    return "".join(line + "\n" for line in kept), stale


# ---------------------------------------------------------------------------
# Files: atomic writes under a lock
# ---------------------------------------------------------------------------


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_json(path: str, what: str):
    text = read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise NetworkError(f"{what} {path} is not valid JSON ({exc}): restore it from a backup; it is never rewritten while damaged") from None


def network_lock(path: str, timeout: float = 30):
    """An exclusive lock on ``path`` (``_files.file_lock``), waited for up to ``timeout`` seconds; NetworkError after."""
    return file_lock(path, timeout, f"the network folder {os.path.dirname(path)}", error=NetworkError)


class NetworkStore:
    """The network's files on its DHCP host. Callers hold ``lock()`` around read-change-write.

    ``network.json`` names the host that owns the folder (its hostname): a folder that
    another host can see (shared storage, or the lab, whose hosts share one filesystem)
    is never touched by a host that does not own it.
    """

    def __init__(self, paths: NetworkPaths, name: str, host_name: str):
        self.paths = paths
        self.name = name
        self.host_name = host_name

    def exists(self) -> bool:
        return os.path.isdir(self.paths.dir)

    def owner(self) -> str | None:
        data = read_json(self.paths.network, "network definition")
        return data.get("host") if isinstance(data, dict) else None

    def mine(self) -> bool:
        """The folder exists and its network.json names this host.

        A folder without network.json (being made or being removed) is nobody's here:
        several hosts that see one folder must never both act on it. The DHCP host's
        next ``present`` run completes a half-made folder.
        """
        return self.exists() and self.owner() == self.host_name

    def check_mine(self) -> None:
        owner = self.owner()
        if owner not in (None, self.host_name):
            raise NetworkError(
                f"the folder {self.paths.dir} of network {self.name} belongs to host {owner}, not to this host {self.host_name}: the DHCP server of a network "
                "runs on one host (run this there, or give this host a state_dir of its own)"
            )

    def lock(self, timeout: float = 30):
        """The network folder's lock (``.lock`` beside ports.json), held around read-change-write."""
        return network_lock(self.paths.lock, timeout)

    def read_spec(self) -> NetworkSpec | None:
        data = read_json(self.paths.network, "network definition")
        return None if data is None else NetworkSpec.from_dict(data)

    def read_ports(self) -> dict[str, Port] | None:
        doc = read_json(self.paths.ports, "reservations file")
        return None if doc is None else ports_from_document(doc, self.name)

    def write_ports(self, ports: dict[str, Port]) -> None:
        atomic_write(self.paths.ports, json_text(ports_document(self.name, ports)))

    def write_spec(self, spec: NetworkSpec) -> None:
        atomic_write(self.paths.network, json_text(dict(spec.to_dict(), host=self.host_name)))


# ---------------------------------------------------------------------------
# iproute2 output (pure parsers of `ip -j` and `bridge -j`)
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# The host: iproute2 and dnsmasq
# ---------------------------------------------------------------------------


@dataclass
class Tools:
    """Paths of the commands (the module finds them with get_bin_path)."""

    ip: str = "ip"
    bridge: str = "bridge"
    dnsmasq: str = "dnsmasq"


class Host:
    """Reads and changes the host through ``run``; every command is an argv list, never a shell.

    ``name`` is the host's name (its hostname by default), which owns the DHCP folders it makes.
    """

    def __init__(self, run, tools: Tools | None = None, name: str | None = None):
        self._run = run
        self.tools = tools or Tools()
        self.name = name or socket.gethostname()
        self.iproute = Iproute(run, ip=self.tools.ip, bridge=self.tools.bridge, error=NetworkError)

    def run(self, argv: list[str], what: str | None = None) -> str:
        rc, out, err = self._run(argv)
        if rc != 0:
            raise NetworkError(f"{what or ' '.join(argv)} failed (rc={rc}): {(err or out or '').strip()}")
        return out

    def link(self, name: str) -> dict | None:
        return self.iproute.link(name)

    def vxlan_vnis(self) -> dict:
        """{device name: VNI} of every VXLAN device on the host."""
        return self.iproute.vxlan_vnis()

    def addresses(self) -> list[tuple[str, str]]:
        """The host's IPv4 addresses."""
        return self.iproute.addresses()

    def device_addresses(self, dev: str) -> tuple[list[str], list[str]]:
        """The IPv4 and the IPv6 addresses of one device."""
        out = self.iproute.run(["-j", "addr", "show", "dev", dev])
        return ([cidr for _d, cidr in parse_addresses(out, "inet")], [cidr for _d, cidr in parse_addresses(out, "inet6")])

    def routes(self) -> list[tuple[str, str | None]]:
        return self.iproute.routes()

    def fdb_peers(self, dev: str) -> list[str]:
        return self.iproute.fdb_peers(dev)

    def bridge_ports(self, bridge: str) -> list[str]:
        return self.iproute.link_names(master=bridge)


def read_links(host: Host, spec_name: str) -> dict:
    """The network's devices on this host as the diff shows them (None for a missing device)."""
    br_name, vx_name = bridge_name(spec_name), vxlan_name(spec_name)
    state: dict = dict(bridge=None, vxlan=None, peers=[])
    br = host.link(br_name)
    if br is not None:
        if br["kind"] != "bridge":
            raise NetworkError(f"{br_name} exists on this host but is a {br['kind']} device, not a bridge: remove or rename it")
        v4, v6 = host.device_addresses(br_name)
        state["bridge"] = dict(name=br_name, mtu=br["mtu"], up=br["up"], addresses=sorted(v4), addrgenmode=br["addrgenmode"], ipv6_addresses=sorted(v6))
    vx = host.link(vx_name)
    if vx is not None:
        if vx["kind"] != "vxlan":
            raise NetworkError(f"{vx_name} exists on this host but is a {vx['kind']} device, not a VXLAN: remove or rename it")
        state["vxlan"] = dict(
            name=vx_name, vni=vx["vni"], local=vx["local"], port=vx["port"], learning=bool(vx["learning"]), mtu=vx["mtu"], up=vx["up"], master=vx["master"]
        )
        state["peers"] = host.fdb_peers(vx_name)
    return state


def wanted_links(spec: NetworkSpec, local_ip: str, peers: list[str], dhcp: bool, ipv6: bool = True) -> dict:
    """The network's devices as they must be. The bridge has no IPv6 at all (no link-local address
    either, ``addrgenmode none``): instances reach no host over it. ``ipv6``: the kernel has IPv6."""
    return dict(
        bridge=dict(
            name=spec.bridge, mtu=spec.mtu, up=True, addresses=[spec.gateway_cidr] if dhcp else [], addrgenmode="none" if ipv6 else None, ipv6_addresses=[]
        ),
        vxlan=dict(name=spec.vxlan, vni=spec.vni, local=local_ip, port=VXLAN_PORT, learning=False, mtu=spec.mtu, up=True, master=spec.bridge),
        peers=peers,
    )


def plan_links(current: dict, wanted: dict, tools: Tools | None = None) -> list[tuple[str, list[str]]]:
    """The commands that turn ``current`` into ``wanted``, each with a line for ``changes``. Pure."""
    t = tools or Tools()
    steps: list[tuple[str, list[str]]] = []
    wb, wv = wanted["bridge"], wanted["vxlan"]
    br, vx = current["bridge"], current["vxlan"]
    name, mtu = wb["name"], str(wb["mtu"])
    if br is None:
        steps.append((f"create bridge {name} (mtu {mtu})", [t.ip, "link", "add", "name", name, "mtu", mtu, "type", "bridge"]))
    elif br["mtu"] != wb["mtu"]:
        steps.append((f"set mtu {mtu} on {name} (was {br['mtu']})", [t.ip, "link", "set", "dev", name, "mtu", mtu]))
    vname = wv["name"]
    peers_now = current["peers"]
    identity = ("vni", "local", "port", "learning")
    if vx is not None and any(vx[k] != wv[k] for k in identity):
        was = ", ".join(f"{k} {vx[k]}" for k in identity if vx[k] != wv[k])
        steps.append((f"delete {vname} to make it again ({was})", [t.ip, "link", "del", "dev", vname]))
        vx, peers_now = None, []
    if vx is None:
        steps.append(
            (
                f"create vxlan {vname} (vni {wv['vni']}, local {wv['local']}, dstport {VXLAN_PORT}, nolearning)",
                [
                    t.ip,
                    "link",
                    "add",
                    "name",
                    vname,
                    "mtu",
                    str(wv["mtu"]),
                    "type",
                    "vxlan",
                    "id",
                    str(wv["vni"]),
                    "dstport",
                    str(VXLAN_PORT),
                    "local",
                    wv["local"],
                    "nolearning",
                ],
            )
        )
    else:
        if vx["mtu"] != wv["mtu"]:
            steps.append((f"set mtu {wv['mtu']} on {vname} (was {vx['mtu']})", [t.ip, "link", "set", "dev", vname, "mtu", str(wv["mtu"])]))
    if vx is None or vx["master"] != wv["master"]:
        steps.append((f"attach {vname} to {name}", [t.ip, "link", "set", "dev", vname, "master", name]))
    if vx is None or not vx["up"]:
        steps.append((f"set {vname} up", [t.ip, "link", "set", "dev", vname, "up"]))
    if wb["addrgenmode"] is not None and (br is None or br["addrgenmode"] != wb["addrgenmode"]):
        steps.append((f"no IPv6 link-local address on {name}", [t.ip, "link", "set", "dev", name, "addrgenmode", wb["addrgenmode"]]))
    if br is not None and br["ipv6_addresses"]:
        steps.append((f"remove IPv6 addresses {', '.join(br['ipv6_addresses'])} from {name}", [t.ip, "-6", "addr", "flush", "dev", name]))
    if br is None or not br["up"]:
        steps.append((f"set {name} up", [t.ip, "link", "set", "dev", name, "up"]))
    for peer in wanted["peers"]:
        if peer not in peers_now:
            steps.append((f"add flood entry to peer {peer} on {vname}", [t.bridge, "fdb", "append", ZERO_MAC, "dev", vname, "dst", peer]))
    for peer in peers_now:
        if peer not in wanted["peers"]:
            steps.append((f"remove flood entry to {peer} (not a peer) from {vname}", [t.bridge, "fdb", "del", ZERO_MAC, "dev", vname, "dst", peer]))
    have = br["addresses"] if br else []
    for cidr in have:
        if cidr not in wb["addresses"]:
            steps.append((f"remove address {cidr} from {name}", [t.ip, "addr", "del", cidr, "dev", name]))
    for cidr in wb["addresses"]:
        if cidr not in have:
            steps.append((f"add address {cidr} to {name}", [t.ip, "addr", "add", cidr, "dev", name]))
    return steps


def plan_links_absent(current: dict, tools: Tools | None = None) -> list[tuple[str, list[str]]]:
    t = tools or Tools()
    steps = []
    if current["vxlan"] is not None:
        steps.append((f"delete vxlan {current['vxlan']['name']}", [t.ip, "link", "del", "dev", current["vxlan"]["name"]]))
    if current["bridge"] is not None:
        steps.append((f"delete bridge {current['bridge']['name']}", [t.ip, "link", "del", "dev", current["bridge"]["name"]]))
    return steps


class Dnsmasq:
    """The network's dnsmasq, known by its pid file and checked to be that very daemon."""

    def __init__(self, host: Host, paths: NetworkPaths, timeout: float = 30):
        self.host = host
        self.paths = paths
        self.timeout = timeout

    def pid(self) -> int | None:
        """The daemon's pid when the pid file names a live dnsmasq with our --conf-file in our network namespace."""
        try:
            with open(self.paths.pid, encoding="ascii") as f:
                pid = int(f.read().strip() or "0")
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as f:
                if f.read().strip() != "dnsmasq":
                    return False
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode("utf-8", "replace").split("\0")
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                    return False
            same_ns = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
        except OSError:
            return False
        return same_ns and f"--conf-file={self.paths.conf}" in argv

    def start(self, ports: dict[str, Port]) -> int:
        """Prune stale leases, start the daemon, wait for its pid file; returns the pid."""
        self.prune(ports)
        self.host.run([self.host.tools.dnsmasq, f"--conf-file={self.paths.conf}"], what=f"starting dnsmasq for {self.paths.dir}")
        deadline = time.monotonic() + self.timeout
        while True:
            pid = self.pid()
            if pid is not None:
                return pid
            if time.monotonic() > deadline:
                raise NetworkError(f"dnsmasq for {self.paths.dir} did not come up within {self.timeout} s: see {self.paths.log}")
            time.sleep(0.05)

    def stop(self) -> bool:
        """SIGTERM (SIGKILL after the timeout) and wait until it is gone; False when it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return True
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                if not self._is_ours(pid):
                    return True
                time.sleep(0.05)
        raise NetworkError(f"dnsmasq pid {pid} for {self.paths.dir} did not stop")

    def reload(self) -> None:
        """SIGHUP: dnsmasq reads its dhcp-hostsfile again."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def stale(self, ports: dict[str, Port]) -> list[Lease]:
        return stale_leases(read_text(self.paths.leases) or "", ports)

    def prune(self, ports: dict[str, Port]) -> list[Lease]:
        """Remove stale leases from the lease file; only while the daemon is stopped."""
        text = read_text(self.paths.leases)
        if text is None:
            return []
        new, stale = prune_leases(text, ports)
        if stale:
            atomic_write(self.paths.leases, new)
        return stale


# ---------------------------------------------------------------------------
# The backends of the modules
# ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a run did (or in check mode would do)."""

    changes: list[str] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def host_peers(local_ip: str, peers: list) -> list[str]:
    """The peers without this host's own address and without repeats, in address order."""
    local = validate_ipv4(local_ip, "local_ip")
    out = {validate_ipv4(p, "peer") for p in peers or []}
    out.discard(local)
    return sorted(out, key=ipaddress.IPv4Address)


def _empty_ports_doc(name: str) -> str:
    return json_text(ports_document(name, {}))


def network_present(
    host: Host, spec: NetworkSpec, local_ip: str, peers: list, dhcp: bool, state_dir: str, check_mode: bool = False, timeout: float = 30, log=None
) -> Outcome:
    """Make or repair the network's devices on this host, and the DHCP server when ``dhcp``."""
    local_ip = validate_ipv4(local_ip, "local_ip")
    peers = host_peers(local_ip, peers)
    paths = NetworkPaths.of(state_dir, spec.name)
    own = (spec.bridge, spec.vxlan)
    addresses = host.addresses()
    if local_ip not in [cidr.split("/")[0] for dev, cidr in addresses if dev not in own]:
        raise NetworkError(
            f"local_ip {local_ip} is not an address of this host (it has {', '.join(f'{c} on {d}' for d, c in addresses if d not in own) or 'none'}): give the "
            f"host's underlay address"
        )
    check_no_overlap(spec.subnet, addresses, host.routes(), own)
    # Linux has one VXLAN device per VNI and port: another network's VNI fails only after
    # the bridge was made, so refuse it before anything changes.
    taken = sorted(name for name, vni in host.vxlan_vnis().items() if vni == spec.vni and name != spec.vxlan)
    if taken:
        raise NetworkError(f"vni {spec.vni} is already used on this host by {', '.join(taken)}: give network {spec.name} a VNI of its own")
    out = Outcome()
    current = read_links(host, spec.name)
    wanted = wanted_links(spec, local_ip, peers, dhcp, ipv6=os.path.isdir("/proc/sys/net/ipv6"))
    out.before, out.after = dict(current), dict(wanted)
    steps = plan_links(current, wanted, host.tools)
    _run_steps(host, steps, out, check_mode)
    if not check_mode and steps:
        now = read_links(host, spec.name)
        if now != wanted:
            raise NetworkError(f"network {spec.name} on this host is still not as wanted after the changes: {now!r}, wanted {wanted!r}")
    dns = Dnsmasq(host, paths, timeout)
    if dhcp:
        _dhcp_present(dns, NetworkStore(paths, spec.name, host.name), spec, out, check_mode, timeout)
    else:
        pid = dns.pid() if NetworkStore(paths, spec.name, host.name).mine() else None
        out.before["dnsmasq"] = dict(running=pid is not None)
        out.after["dnsmasq"] = dict(running=False)
        if pid is not None:
            out.changes.append(f"stop dnsmasq (pid {pid}): this host is not the DHCP server of {spec.name}")
            if not check_mode:
                dns.stop()
        out.result["dnsmasq_pid"] = None
    if log is not None:
        for line in out.changes:
            log.info(f"network {spec.name}: {('(check mode) ' if check_mode else '')}{line}")
    return out


def _dhcp_present(dns: Dnsmasq, store: NetworkStore, spec: NetworkSpec, out: Outcome, check_mode: bool, timeout: float) -> None:
    paths = store.paths
    if not store.exists():
        out.changes.append(f"create folder {paths.dir}")
        if check_mode:
            conf = render_dnsmasq_conf(spec, paths)
            out.before.update(dnsmasq=dict(running=False, config=[]), dhcp_hosts=[])
            out.after.update(dnsmasq=dict(running=True, config=conf.splitlines()), dhcp_hosts=[])
            out.changes += [
                f"write {paths.network}",
                f"write {paths.ports}",
                f"write {paths.hosts}",
                f"write {paths.conf}",
                f"start dnsmasq for {spec.name} on {spec.bridge}",
            ]
            out.result["dnsmasq_pid"] = None
            return
        os.makedirs(paths.dir, mode=0o755, exist_ok=True)
        os.chmod(paths.dir, 0o755)  # dnsmasq re-reads the hosts file as an unprivileged user
    store.check_mine()
    with store.lock(timeout):
        old_spec = store.read_spec()
        ports = store.read_ports()
        if old_spec is not None and old_spec.subnet != spec.subnet and ports:
            raise NetworkError(
                f"network {spec.name} has {len(ports)} ports in {old_spec.subnet}: it cannot move to {spec.subnet} while they exist (delete them first)"
            )
        if old_spec != spec or store.owner() != store.host_name:
            out.changes.append(f"write {paths.network}")
            if not check_mode:
                store.write_spec(spec)
        if ports is None:
            out.changes.append(f"write {paths.ports} (no ports yet)")
            ports = {}
            if not check_mode:
                atomic_write(paths.ports, _empty_ports_doc(spec.name))
        hosts = render_hosts(ports)
        old_hosts = read_text(paths.hosts)
        hosts_changed = old_hosts != hosts
        if hosts_changed:
            out.changes.append(f"write {paths.hosts} from {paths.ports}")
            if not check_mode:
                atomic_write(paths.hosts, hosts)
        conf = render_dnsmasq_conf(spec, paths)
        old_conf = read_text(paths.conf)
        conf_changed = old_conf != conf
        if conf_changed:
            out.changes.append(f"write {paths.conf}")
            if not check_mode:
                atomic_write(paths.conf, conf)
        pid = dns.pid()
        out.before.update(dnsmasq=dict(running=pid is not None, config=(old_conf or "").splitlines()), dhcp_hosts=(old_hosts or "").splitlines())
        out.after.update(dnsmasq=dict(running=True, config=conf.splitlines()), dhcp_hosts=hosts.splitlines())
        if pid is None:
            out.changes.append(f"start dnsmasq for {spec.name} on {spec.bridge}")
            if not check_mode:
                pid = dns.start(ports)
        elif conf_changed:
            out.changes.append(f"restart dnsmasq (pid {pid}): its configuration changed")
            if not check_mode:
                dns.stop()
                pid = dns.start(ports)
        elif hosts_changed:
            out.changes.append(f"reload dnsmasq (pid {pid}, SIGHUP)")
            if not check_mode:
                dns.reload()
        out.result["dnsmasq_pid"] = pid


def network_absent(host: Host, name: str, state_dir: str, check_mode: bool = False, timeout: float = 30, log=None) -> Outcome:
    """Remove the network's devices, its DHCP server and its folder from this host."""
    paths = NetworkPaths.of(state_dir, name)
    out = Outcome()
    current = read_links(host, name)
    if current["bridge"] is not None:
        attached = [p for p in host.bridge_ports(current["bridge"]["name"]) if p != vxlan_name(name)]
        if attached:
            raise NetworkError(
                f"network {name} is still in use on this host: {', '.join(attached)} are attached to {current['bridge']['name']} "
                "(instances still running): delete or "
                f"move them first"
            )
    dns = Dnsmasq(host, paths, timeout)
    store = NetworkStore(paths, name, host.name)
    had_folder = store.mine()
    pid = dns.pid() if had_folder else None
    out.before = dict(current, dnsmasq=dict(running=pid is not None), folder=had_folder)
    out.after = dict(bridge=None, vxlan=None, peers=[], dnsmasq=dict(running=False), folder=False)
    steps = plan_links_absent(current, host.tools)
    if not had_folder:
        _run_steps(host, steps, out, check_mode)
    else:
        with store.lock(timeout):
            ports = store.read_ports()
            if ports:
                raise NetworkError(
                    f"network {name} still has {len(ports)} port(s) ({', '.join(sorted(ports))}): "
                    "delete them with virtcloud.compute.network_port state=absent first"
                )
            pid = dns.pid()
            if pid is not None:
                out.changes.append(f"stop dnsmasq (pid {pid})")
                if not check_mode:
                    dns.stop()
            _run_steps(host, steps, out, check_mode)
            out.changes.append(f"remove folder {paths.dir}")
            if not check_mode:
                _remove_folder(paths)
    if log is not None:
        for line in out.changes:
            log.info(f"network {name}: {('(check mode) ' if check_mode else '')}{line}")
    return out


def _run_steps(host: Host, steps: list[tuple[str, list[str]]], out: Outcome, check_mode: bool) -> None:
    for text, argv in steps:
        out.changes.append(text)
        if not check_mode:
            host.run(argv, what=text)


def _remove_folder(paths: NetworkPaths) -> None:
    """Remove the network's folder: only the files this collection and dnsmasq write there.

    network.json goes last, so that the folder names its owner until it is empty.
    """
    entries = sorted(os.listdir(paths.dir), key=lambda e: e == os.path.basename(paths.network))
    for entry in entries:
        full = os.path.join(paths.dir, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            raise NetworkError(f"{paths.dir} holds a folder {entry} that the collection did not make: remove it by hand")
    for entry in entries:
        os.unlink(os.path.join(paths.dir, entry))
    os.rmdir(paths.dir)


def _open_network(host: Host, paths: NetworkPaths, name: str) -> tuple[NetworkStore, NetworkSpec]:
    store = NetworkStore(paths, name, host.name)
    store.check_mine()
    spec = store.read_spec() if store.exists() else None
    if spec is None:
        raise NetworkError(
            f"network {name} has no DHCP server on this host (no {paths.network}): run virtcloud.compute.network with dhcp=true "
            "here first, or run network_port on the network's DHCP host"
        )
    return store, spec


def _apply_ports(store: NetworkStore, dns: Dnsmasq, ports: dict[str, Port], out: Outcome) -> None:
    """Write ports.json then hosts, and tell dnsmasq: SIGHUP, or a restart when leases went stale."""
    store.write_ports(ports)
    atomic_write(store.paths.hosts, render_hosts(ports))
    pid = dns.pid()
    stale = dns.stale(ports)
    if pid is None:
        if stale:
            dns.prune(ports)
        out.result["dhcp"] = "not running"
    elif stale:
        dns.stop()
        out.result["dnsmasq_pid"] = dns.start(ports)
        out.result["dhcp"] = "restarted"
    else:
        dns.reload()
        out.result["dhcp"] = "reloaded"


def port_present(
    host: Host,
    name: str,
    state_dir: str,
    port_id: str,
    hostname: str | None = None,
    mac: str | None = None,
    ip: str | None = None,
    instance_uuid: str | None = None,
    request_id: str | None = None,
    check_mode: bool = False,
    timeout: float = 30,
    log=None,
) -> Outcome:
    """Reserve (or keep) a MAC and an IP for a port on the network's DHCP host."""
    wanted = dict(port_id=port_id, hostname=hostname, mac=mac, ip=ip, instance_uuid=instance_uuid)
    out = ports_present(host, name, state_dir, [wanted], request_id=request_id, check_mode=check_mode, timeout=timeout, log=log)
    out.before, out.after = dict(port=out.before["ports"][0]), dict(port=out.after["ports"][0])
    out.result["port"] = out.result.pop("ports")[0]
    return out


def ports_present(
    host: Host,
    name: str,
    state_dir: str,
    wanted: list,
    request_id: str | None = None,
    check_mode: bool = False,
    timeout: float = 30,
    log=None,
) -> Outcome:
    """Reserve (or keep) several ports in one go: one lock, one write, one word to dnsmasq.

    ``wanted``: dicts with ``port_id`` and optionally ``hostname``, ``mac``, ``ip``, ``instance_uuid``;
    each is planned after the ones before it, so the addresses are the lowest free in order.
    """
    paths = NetworkPaths.of(state_dir, name)
    store, spec = _open_network(host, paths, name)
    dns = Dnsmasq(host, paths, timeout)
    out = Outcome()
    with store.lock(timeout):
        ports = store.read_ports() or {}
        new_ports, planned = dict(ports), []
        for item in wanted:
            port_id = item["port_id"]
            new_ports, port = plan_port(spec, new_ports, port_id, item.get("hostname"), item.get("mac"), item.get("ip"), item.get("instance_uuid"), request_id)
            old = ports.get(port_id)
            planned.append((old, port))
            if old is None:
                out.changes.append(f"reserve {port.mac} {port.ip} for port {port_id}")
            elif old != port:
                out.changes.append(f"update port {port_id}: {port.mac} {port.ip} (was {old.mac} {old.ip})")
        if not out.changes and read_text(paths.hosts) != render_hosts(new_ports):
            out.changes.append(f"write {paths.hosts} again from {paths.ports}")
        out.before = dict(ports=[old.to_dict() if old else None for old, _port in planned])
        out.after = dict(ports=[port.to_dict() for _old, port in planned])
        if out.changes and not check_mode:
            _apply_ports(store, dns, new_ports, out)
    out.result.update(ports=[dict(port.to_dict(), network=name, bridge=spec.bridge) for _old, port in planned])
    if log is not None:
        for line in out.changes:
            log.info(f"network {name}: {('(check mode) ' if check_mode else '')}{line}", instance=planned[0][1].instance_uuid if len(planned) == 1 else None)
    return out


def port_absent(host: Host, name: str, state_dir: str, port_id: str, check_mode: bool = False, timeout: float = 30, log=None) -> Outcome:
    """Release a port's reservation (its IP is free again); nothing to do when there is none."""
    out = ports_absent(host, name, state_dir, [port_id], check_mode=check_mode, timeout=timeout, log=log)
    out.before, out.after = dict(port=out.before["ports"][0]), dict(port=None)
    out.result["port"] = None
    out.result["released"] = out.result["released"][0]
    return out


def ports_absent(host: Host, name: str, state_dir: str, port_ids: list, check_mode: bool = False, timeout: float = 30, log=None) -> Outcome:
    """Release several ports in one go (one lock, one write); ports without a reservation are skipped."""
    for port_id in port_ids:
        validate_port_id(port_id)
    paths = NetworkPaths.of(state_dir, name)
    store, _spec = _open_network(host, paths, name)
    dns = Dnsmasq(host, paths, timeout)
    out = Outcome()
    with store.lock(timeout):
        ports = store.read_ports() or {}
        olds = [ports.get(port_id) for port_id in port_ids]
        out.before = dict(ports=[old.to_dict() if old else None for old in olds])
        out.after = dict(ports=[None for _old in olds])
        for port_id, old in zip(port_ids, olds):
            if old is not None:
                out.changes.append(f"release {old.mac} {old.ip} of port {port_id}")
        if out.changes and not check_mode:
            _apply_ports(store, dns, {k: p for k, p in ports.items() if k not in port_ids}, out)
    out.result["ports"] = []
    out.result["released"] = [old.to_dict() if old else None for old in olds]
    if log is not None:
        for line, old in zip(out.changes, [o for o in olds if o is not None]):
            log.info(f"network {name}: {('(check mode) ' if check_mode else '')}{line}", instance=old.instance_uuid)
    return out
