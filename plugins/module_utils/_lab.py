# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The local lab: several hosts on one Linux machine (private to this collection).

Each lab host is a network namespace (``ip netns``) plus a mount and a UTS namespace
kept alive by bind mounts of their nsfs files (``unshare --mount=FILE --uts=FILE``),
so the namespaces outlive every process and daemons can be started in them again
(repair) with ``nsenter``. Inside its mount namespace a host has its own /run
(tmpfs), /etc/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt,
/root/.ssh, /etc/hosts and instances directory, bind-mounted from the lab's state
directory. A compute host runs virtlogd, libvirtd and sshd; the controller host
(image store) runs sshd.

One name makes a lab: :func:`lab_dirs` and :func:`lab_network` derive its folders and
its range from it (the default lab ``vclab`` keeps /var/lib/virtcloud-lab,
/run/virtcloud-lab and 10.251.0.0/24), its namespaces, links and bridge are prefixed
with it. lab_up records what it makes in ``<state_dir>/lab.json`` before it makes
anything; lab_down reads that record, so it needs only the name, and removes nothing
when the record is missing or names another lab. Every change of a lab holds the
lab's lock (``/run/lock/virtcloud-lab-<name>.lock``), so two runs on one lab wait
for each other.

Everything here takes plain arguments and a ``run`` callable
``run(argv, data=None) -> (rc, stdout, stderr)`` and raises LabError, so the
module stays thin. Nothing in here is meant for real hypervisors: the libvirt
settings written here (no socket auth on a root-only socket) are the lab's only.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._files import atomic_write, file_lock, json_text
from ansible_collections.virtcloud.compute.plugins.module_utils._iproute import Iproute, find_ip, route_text

LAB_NAME_RE = re.compile(r"[a-z][a-z0-9]{1,5}")
DEFAULT_NAME = "vclab"
DEFAULT_NETWORK = "10.251.0.0/24"
# The /24 of a lab other than the default one, picked by its name's hash, when no network is given.
DERIVED_NETWORKS = ipaddress.IPv4Network("10.200.0.0/13")
RECORD = "lab.json"
LOCK_DIR = "/run/lock"
MAX_HOSTS = 16
RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")

# Binaries the lab needs, with the Debian package that provides each.
REQUIRED_BINARIES = {
    "/usr/sbin/libvirtd": "libvirt-daemon-system",
    "/usr/sbin/virtlogd": "libvirt-daemon-system",
    "/usr/bin/virsh": "libvirt-clients",
    "/usr/sbin/sshd": "openssh-server",
    "/usr/bin/ssh-keygen": "openssh-client",
    "/usr/bin/qemu-system-x86_64": "qemu-system-x86",
    "/usr/bin/qemu-img": "qemu-utils",
    "/usr/sbin/dnsmasq": "dnsmasq-base",
    "/usr/bin/unshare": "util-linux",
    "/usr/bin/nsenter": "util-linux",
}

# Bind mounts of a compute host: host path -> folder below the host's state dir.
COMPUTE_BINDS = (
    ("/etc/libvirt", "etc-libvirt"),
    ("/var/lib/libvirt", "var-lib-libvirt"),
    ("/var/log/libvirt", "var-log-libvirt"),
    ("/var/cache/libvirt", "var-cache-libvirt"),
)
# Every host's own state and log of this collection (service record, host log, network
# state), not seeded: what the collection's modules write on a host stays on that host.
HOST_PRIVATE_BINDS = (
    ("/var/lib/virtcloud", "var-lib-virtcloud"),
    ("/var/log/virtcloud", "var-log-virtcloud"),
)
DAEMON_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root"}


class LabError(VirtcloudError):
    """A lab operation failed; the message says what and what to do."""


@dataclass
class HostSpec:
    """One lab host as planned."""

    name: str
    role: str  # compute | controller
    address: str
    shared_storage: bool
    netns: str
    veth: str
    state_dir: str

    @property
    def daemons(self) -> tuple[str, ...]:
        if self.role == "compute":
            return ("virtlogd", "libvirtd", "sshd")
        return ("sshd",)


@dataclass
class LabSpec:
    """The whole lab as planned from the module's options."""

    name: str
    network: ipaddress.IPv4Network
    bridge: str
    bridge_address: str
    state_dir: str
    run_dir: str
    kvm: bool = False
    hosts: list[HostSpec] = field(default_factory=list)

    @property
    def ns_dir(self) -> str:
        return os.path.join(self.run_dir, "ns")

    @property
    def record_path(self) -> str:
        """What the lab made, written before it makes anything (see :func:`read_record`)."""
        return os.path.join(self.state_dir, RECORD)

    @property
    def inventory(self) -> str:
        """Where lab_up writes the lab's Ansible inventory, unless told otherwise."""
        return os.path.join(self.state_dir, "inventory.yml")

    @property
    def record(self) -> dict:
        return dict(
            name=self.name,
            network=str(self.network),
            hosts=[h.name for h in self.hosts if h.role == "compute"],
            non_shared=[h.name for h in self.hosts if h.role == "compute" and not h.shared_storage],
            state_dir=self.state_dir,
            run_dir=self.run_dir,
            kvm=self.kvm,
        )

    @property
    def instances_path(self) -> str:
        """The instances directory as every compute host sees it (one path for all, as Nova's)."""
        return os.path.join(self.state_dir, "instances")

    @property
    def image_store_path(self) -> str:
        """The image store as the controller host sees it."""
        return os.path.join(self.state_dir, "images")

    @property
    def shared_instances(self) -> str:
        return os.path.join(self.state_dir, "shared", "instances")

    @property
    def key_file(self) -> str:
        return os.path.join(self.state_dir, "ssh", "id_ed25519")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.state_dir, "ssh", "known_hosts")

    @property
    def ssh_config(self) -> str:
        return os.path.join(self.state_dir, "ssh", "config")

    @property
    def ssh_wrapper(self) -> str:
        return os.path.join(self.state_dir, "bin", "ssh")


def check_name(name: str) -> str:
    """``name`` when it is a valid lab name; raises LabError."""
    if not isinstance(name, str) or not LAB_NAME_RE.fullmatch(name):
        raise LabError(
            f"lab name {name!r} is not valid: use 2 to 6 lowercase letters or digits, starting with a letter "
            "(it prefixes interface names, which Linux limits to 15 characters)"
        )
    return name


def lab_dirs(name: str) -> tuple[str, str]:
    """The lab's state and run folders, from its name.

    The default lab keeps the folders it always had; every other lab gets folders of
    its own name, so two labs never share one.
    """
    check_name(name)
    if name == DEFAULT_NAME:
        return "/var/lib/virtcloud-lab", "/run/virtcloud-lab"
    return f"/var/lib/virtcloud-lab-{name}", f"/run/virtcloud-lab-{name}"


def lab_network(name: str) -> str:
    """The lab's range when none is given: 10.251.0.0/24 for the default lab, else a /24
    of 10.200.0.0/13 picked by the name (the same name, the same range; lab_up checks
    that it is free on the machine)."""
    check_name(name)
    if name == DEFAULT_NAME:
        return DEFAULT_NETWORK
    count = DERIVED_NETWORKS.num_addresses // 256
    index = int.from_bytes(hashlib.sha256(name.encode("ascii")).digest()[:4], "big") % count
    return str(ipaddress.IPv4Network((int(DERIVED_NETWORKS.network_address) + 256 * index, 24)))


def lock_path(name: str) -> str:
    """The lab's lock: one per name, outside its folders (which may be given, or gone)."""
    return os.path.join(LOCK_DIR, f"virtcloud-lab-{check_name(name)}.lock")


def read_record(state_dir: str) -> dict | None:
    """The record lab_up wrote in ``state_dir``, or None when there is none.

    A lab made before records existed has none; its SSH key (comment ``<name>-lab``)
    shows which lab made the folder, and stands for a record of that name.
    """
    try:
        with open(os.path.join(state_dir, RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as exc:
        raise LabError(f"the lab record {os.path.join(state_dir, RECORD)} cannot be read ({exc}): nothing was changed; fix or remove it") from None
    if record is None:
        try:
            with open(os.path.join(state_dir, "ssh", "id_ed25519.pub"), encoding="ascii") as f:
                comment = f.read().split()[-1:]
        except (OSError, UnicodeDecodeError):
            return None
        if not comment or not comment[0].endswith("-lab"):
            return None
        return dict(name=comment[0][: -len("-lab")], state_dir=state_dir)
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise LabError(f"the lab record {os.path.join(state_dir, RECORD)} names no lab: nothing was changed; fix or remove it")
    return record


def plan(
    name: str,
    network: str | None = None,
    compute_hosts: int = 3,
    non_shared: list[str] | tuple = (),
    state_dir: str | None = None,
    run_dir: str | None = None,
    kvm: bool = False,
) -> LabSpec:
    """Validate the options and compute names and addresses; raises LabError.

    ``network``, ``state_dir`` and ``run_dir`` left out (None) are derived from the name.
    """
    check_name(name)
    default_state, default_run = lab_dirs(name)
    state_dir = state_dir or default_state
    run_dir = run_dir or default_run
    network = network or lab_network(name)
    if not isinstance(compute_hosts, int) or not 1 <= compute_hosts <= MAX_HOSTS:
        raise LabError(f"lab_hosts must be a whole number from 1 to {MAX_HOSTS}, got {compute_hosts!r}")
    try:
        net = ipaddress.IPv4Network(network, strict=True)
    except ValueError as exc:
        raise LabError(f"lab network {network!r} is not an IPv4 network in CIDR form (e.g. 10.251.0.0/24): {exc}") from None
    if not any(net.subnet_of(ipaddress.IPv4Network(r)) for r in RFC1918):
        raise LabError(f"lab network {net} is not a private range: use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    if net.num_addresses < compute_hosts + 16:
        raise LabError(
            f"lab network {net} has room for {net.num_addresses} addresses, {compute_hosts} hosts need at least {compute_hosts + 16}: use a larger network"
        )
    for p in (state_dir, run_dir):
        if not os.path.isabs(p) or os.path.normpath(p) in ("/", "/run", "/var", "/var/lib", "/tmp", "/etc", "/root"):
            raise LabError(f"lab directory {p!r} must be an absolute path of a folder of its own")
    names = [f"node{i}" for i in range(1, compute_hosts + 1)]
    unknown = sorted(set(non_shared) - set(names))
    if unknown:
        raise LabError(f"lab_non_shared names hosts that the lab does not have: {', '.join(unknown)} (hosts: {', '.join(names)})")
    base = net.network_address
    lab = LabSpec(
        name=name,
        network=net,
        bridge=f"{name}-br0",
        bridge_address=str(base + 1),
        state_dir=os.path.normpath(state_dir),
        run_dir=os.path.normpath(run_dir),
        kvm=kvm,
    )
    lab.hosts.append(_host(lab, "controller", "controller", str(base + 10), False, "ctl"))
    for i, host in enumerate(names, start=1):
        lab.hosts.append(_host(lab, host, "compute", str(base + 10 + i), host not in non_shared, host))
    return lab


def _host(lab: LabSpec, name: str, role: str, address: str, shared: bool, short: str) -> HostSpec:
    return HostSpec(
        name=name,
        role=role,
        address=address,
        shared_storage=shared,
        netns=f"{lab.name}-{name}",
        veth=f"{lab.name}-{short}",
        state_dir=os.path.join(lab.state_dir, "hosts", name),
    )


def with_line(content: str, line: str) -> str:
    """``content`` with ``line`` in it (added at the end when missing), every other line kept."""
    line = line.strip()
    lines = content.splitlines()
    if line in (existing.strip() for existing in lines):
        return content
    return "".join(existing + "\n" for existing in lines) + line + "\n"


class Lab:
    """Operations on a planned lab. ``changes`` collects what was done (or would be)."""

    def __init__(self, spec: LabSpec, run, check_mode: bool = False, timeout: int = 60):
        self.spec = spec
        self._run = run
        self.check_mode = check_mode
        self.timeout = timeout
        self.changes: list[str] = []
        self.ip = find_ip()

    @property
    def iproute(self) -> Iproute:
        """iproute2 (the one runner, _iproute), failing with LabError."""
        return Iproute(self._run, ip=self.ip, error=LabError)

    # ----------------------------------------------------------------- helpers
    def run(self, argv: list[str], data: str | None = None, what: str | None = None) -> str:
        rc, out, err = self._run(argv, data=data)
        if rc != 0:
            raise LabError(f"{what or ' '.join(argv)} failed (rc={rc}): {(err or out).strip()}")
        return out

    def change(self, text: str) -> bool:
        """Record a change; returns True when it must really be made."""
        self.changes.append(text)
        return not self.check_mode

    def nsenter(self, host: HostSpec) -> list[str]:
        ns = self.spec.ns_dir
        return ["nsenter", f"--mount={ns}/{host.name}.mnt", f"--uts={ns}/{host.name}.uts", f"--net=/run/netns/{host.netns}", "--"]

    # ----------------------------------------------------------------- checks
    def preflight(self) -> None:
        """Fail early, naming the cause, when the machine cannot hold the lab."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root: it makes network namespaces, bridges and mounts")
        if self.ip is None:
            raise LabError("the command 'ip' is missing: install the Debian package iproute2")
        missing = sorted({pkg for path, pkg in REQUIRED_BINARIES.items() if not os.path.exists(path)})
        if missing:
            raise LabError(f"packages missing for the lab: {', '.join(missing)} (apt-get install {' '.join(missing)}, or run make deps)")
        if not os.path.exists("/proc/self/ns/net") or not os.path.exists("/proc/self/ns/mnt") or not os.path.exists("/proc/self/ns/uts"):
            raise LabError("the kernel has no network/mount/UTS namespaces (CONFIG_NET_NS, CONFIG_UTS_NS): the lab cannot run here")
        if not os.path.exists("/dev/net/tun"):
            raise LabError("/dev/net/tun is missing: the kernel needs the tun module (modprobe tun) for the guests' NICs")
        if not self._link_exists(self.spec.bridge) and not os.path.exists("/sys/module/bridge") and not self._probe_bridge():
            raise LabError("the kernel cannot make bridges (module 'bridge' missing: modprobe bridge)")
        self._check_range_free()

    def _probe_bridge(self) -> bool:
        rc, _out, _err = self._run(["modprobe", "bridge"]) if shutil.which("modprobe") else (1, "", "")
        return rc == 0 and os.path.exists("/sys/module/bridge")

    def _check_range_free(self) -> None:
        net = self.spec.network
        for dev, cidr in self.iproute.addresses():
            if dev == self.spec.bridge:
                continue
            if ipaddress.IPv4Interface(cidr).network.overlaps(net):
                raise LabError(f"lab network {net} is already in use on this machine ({dev} has {cidr}): choose another with lab_network")
        for item in self.iproute.route_entries():
            dst = item.get("dst")
            if not dst or dst == "default" or item.get("dev") == self.spec.bridge:
                continue
            try:
                route = ipaddress.IPv4Network(dst, strict=False)
            except ValueError:
                continue
            if route.overlaps(net):
                raise LabError(f"lab network {net} overlaps the route '{route_text(item)}' on this machine: choose another with lab_network")

    # ----------------------------------------------------------------- state
    def _link_exists(self, name: str, netns: str | None = None) -> bool:
        return self.iproute.attempt(["link", "show", name], netns)[0] == 0

    def netns_list(self) -> list[str]:
        return self.iproute.netns_names()

    def _mounts(self) -> list[str]:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            return [line.split()[4].replace("\\040", " ") for line in f]

    def _ns_persisted(self, host: HostSpec) -> bool:
        mounts = set(self._mounts())
        return all(f"{self.spec.ns_dir}/{host.name}.{kind}" in mounts for kind in ("mnt", "uts"))

    def _pidfile(self, host: HostSpec, daemon: str) -> str:
        return os.path.join(host.state_dir, "pids", f"{daemon}.pid")

    def daemon_pid(self, host: HostSpec, daemon: str) -> int | None:
        """The daemon's pid when it runs in the host's network namespace, else None."""
        try:
            with open(self._pidfile(host, daemon), encoding="ascii") as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/comm", encoding="ascii") as f:
                comm = f.read().strip()
            same_ns = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{host.netns}").st_ino
        except OSError:
            return None
        return pid if comm == daemon and same_ns else None

    def status(self) -> list[dict]:
        present = set(self.netns_list())
        result = []
        for host in self.spec.hosts:
            ok = host.netns in present and self._ns_persisted(host)
            daemons = {d: (self.daemon_pid(host, d) if ok else None) for d in host.daemons}
            result.append(
                dict(
                    name=host.name,
                    role=host.role,
                    address=host.address,
                    shared_storage=host.shared_storage,
                    netns=host.netns,
                    namespaces=ok,
                    daemons=daemons,
                    healthy=ok and all(daemons.values()),
                    # where the host's own paths are on the machine (they exist only in its mount namespace)
                    paths={inside: machine for machine, inside in self.binds(host)},
                )
            )
        return result

    # ----------------------------------------------------------------- up
    def up(self) -> list[dict]:
        self.preflight()
        spec = self.spec
        self._claim()
        self._dirs()
        self._ssh_key()
        self._bridge()
        self._write(os.path.join(spec.state_dir, "etc-hosts"), self._hosts_file(), "hosts file")
        self._ssh_client_files()
        present = set(self.netns_list())
        pending: list[tuple[HostSpec, str]] = []
        for host in spec.hosts:
            pending += self._host_up(host, host.netns in present)
        # all hosts' daemons start at once; then wait for each to answer
        for host, daemon in pending:
            self._wait_daemon(host, daemon)
        for host in spec.hosts:
            if not self.check_mode:
                self._known_host(host)
        self._remove_extra_hosts(present)
        return self.status()

    def leftovers(self) -> list[str]:
        """What of this lab the machine has (its namespaces and bridge), whoever recorded it."""
        if self.ip is None:
            return []
        found = [f"netns {n}" for n in sorted(self.netns_list()) if n.startswith(self.spec.name + "-")]
        if self._link_exists(self.spec.bridge):
            found.append(f"bridge {self.spec.bridge}")
        return found

    def check_run_dir(self) -> None:
        """The run folder is this lab's, or no lab's (its namespace files must never mix with another lab's)."""
        owner = self._read(os.path.join(self.spec.run_dir, "lab-name")).strip()
        if owner and owner != self.spec.name:
            raise LabError(
                f"{self.spec.run_dir} is the run folder of lab {owner!r}, not of lab {self.spec.name!r}: nothing was changed "
                "(leave lab_run_dir out: every lab gets its own)"
            )

    def _claim(self) -> None:
        """Check that the lab's folders are its own, then record the lab before anything is made."""
        spec = self.spec
        record = read_record(spec.state_dir)
        if record is None:
            found = self.leftovers()
            if found:
                raise LabError(
                    f"lab {spec.name} is up already ({', '.join(found)}), but {spec.state_dir} holds no record of it: "
                    "it was made with another lab_state_dir; give that one (or lab_down it with that one first)"
                )
        elif record["name"] != spec.name:
            raise LabError(
                f"{spec.state_dir} is the state folder of lab {record['name']!r}, not of lab {spec.name!r}: nothing was changed "
                "(leave lab_state_dir out: every lab gets its own)"
            )
        elif record.get("network") not in (None, str(spec.network)) and self.leftovers():
            raise LabError(f"lab {spec.name} is up on {record['network']} ({spec.record_path}): lab_down it before moving it to {spec.network}")
        self.check_run_dir()
        if not os.path.isdir(spec.state_dir) and self.change(f"create directory {spec.state_dir}"):
            os.makedirs(spec.state_dir, mode=0o755)
        if record != spec.record and self.change(f"write the lab record {spec.record_path}"):
            atomic_write(spec.record_path, json_text(spec.record))

    def _dirs(self) -> None:
        spec = self.spec
        wanted = [
            spec.run_dir,
            spec.ns_dir,
            spec.shared_instances,
            os.path.dirname(spec.key_file),
            os.path.dirname(spec.ssh_wrapper),
            spec.instances_path,
            spec.image_store_path,
        ]
        for path in wanted:
            if not os.path.isdir(path) and self.change(f"create directory {path}"):
                # QEMU runs as libvirt-qemu and must reach the instance folders; the keys stay private
                os.makedirs(path, mode=0o700 if path == os.path.dirname(spec.key_file) else 0o755)
        if os.path.isdir(spec.run_dir):
            self._write(os.path.join(spec.run_dir, "lab-name"), spec.name + "\n", "the lab name in its run folder")
        # nsfs files can only be bind-mounted below a private mount.
        if spec.ns_dir not in self._mounts() and self.change(f"make {spec.ns_dir} a private mount for namespace files"):
            self.run(["mount", "--bind", spec.ns_dir, spec.ns_dir])
            self.run(["mount", "--make-private", spec.ns_dir])

    def _ssh_key(self) -> None:
        key = self.spec.key_file
        if not os.path.exists(key) and self.change(f"create the lab SSH key {key}"):
            self.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.spec.name}-lab", "-f", key])

    def _bridge(self) -> None:
        spec = self.spec
        ip = self.iproute
        link = ip.link(spec.bridge)
        if link is None and self.change(f"create bridge {spec.bridge}"):
            ip.run(["link", "add", spec.bridge, "type", "bridge"], what=f"creating bridge {spec.bridge}")
        cidr = f"{spec.bridge_address}/{spec.network.prefixlen}"
        present = [a for _dev, a in ip.addresses(dev=spec.bridge)] if link is not None else []
        if cidr not in present and self.change(f"address {cidr} on {spec.bridge}"):
            ip.run(["addr", "add", cidr, "dev", spec.bridge])
        if (link is None or not link["up"]) and self.change(f"set {spec.bridge} up"):
            ip.run(["link", "set", spec.bridge, "up"])

    def _hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback", ""]
        lines += [f"{h.address} {h.name}" for h in self.spec.hosts]
        return "\n".join(lines) + "\n"

    def _ssh_client_files(self) -> None:
        spec = self.spec
        blocks = []
        for host in spec.hosts:
            blocks.append(
                f"Host {host.name} {host.address}\n  HostName {host.address}\n  User root\n  IdentityFile {spec.key_file}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {spec.known_hosts}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
            )
        self._write(spec.ssh_config, "\n".join(blocks), "lab ssh_config")
        self._write(
            spec.ssh_wrapper,
            f"#!/bin/sh\n# ssh with the lab's keys and known hosts (for qemu+ssh URIs: ?command={spec.ssh_wrapper})\n"
            f'exec /usr/bin/ssh -F {spec.ssh_config} "$@"\n',
            "lab ssh wrapper",
            mode=0o755,
        )

    def _write(self, path: str, content: str, what: str, mode: int = 0o644) -> bool:
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == content and (os.stat(path).st_mode & 0o777) == mode:
                    return False
        except OSError:
            pass
        if self.change(f"write {what} {path}"):
            atomic_write(path, content, mode)
        return True

    def _host_up(self, host: HostSpec, netns_present: bool) -> list[tuple[HostSpec, str]]:
        """Make or repair one host; returns the daemons started, to wait for."""
        if netns_present and not self._ns_persisted(host):
            # half made (an interrupted lab_up): start this host again from nothing
            self._host_down(host)
            netns_present = False
        if not netns_present:
            if self.change(f"create host {host.name} (netns {host.netns}, address {host.address})"):
                self._host_files(host)
                self._host_network(host)
                self._host_namespaces(host)
            stale = set()
        else:
            stale = self._host_files(host)
        started: list[tuple[HostSpec, str]] = []
        for daemon in host.daemons:
            pid = self.daemon_pid(host, daemon) if netns_present else None
            if pid is not None and daemon in stale and self.change(f"restart {daemon} on {host.name} (configuration changed)"):
                self._kill([pid])
                pid = None
            if self.check_mode and (pid is None or daemon in stale):
                self.changes.append(f"start {daemon} on {host.name}")
            elif pid is None and self.change(f"start {daemon} on {host.name}"):
                self._start(host, daemon)
                started.append((host, daemon))
        return started

    def _host_files(self, host: HostSpec) -> set[str]:
        """The host's own folders and configuration; returns the daemons whose configuration changed."""
        d = host.state_dir
        dirs = ["pids", "run", "root-ssh", "ssh"] + [sub for _path, sub in HOST_PRIVATE_BINDS]
        if host.role == "compute":
            dirs += [sub for _path, sub in COMPUTE_BINDS] + ["instances"]
        else:
            dirs += ["images"]
        for sub in dirs:
            path = os.path.join(d, sub)
            if not os.path.isdir(path) and self.change(f"create directory {path}"):
                os.makedirs(path, mode=0o700 if sub == "root-ssh" else 0o755)
        stale = set()
        if self.check_mode and not os.path.isdir(d):
            return stale
        if host.role == "compute":
            for src, sub in COMPUTE_BINDS[1:]:
                self._seed(src, os.path.join(d, sub))
            self._seed("/etc/libvirt", os.path.join(d, "etc-libvirt"))
            if self._libvirt_config(host):
                stale.add("libvirtd")
        key = os.path.join(d, "ssh", "ssh_host_ed25519_key")
        if not os.path.exists(key) and self.change(f"create SSH host key of {host.name}"):
            self.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", key])
        if self._write(os.path.join(d, "ssh", "sshd_config"), self._sshd_config(host), f"sshd_config of {host.name}"):
            stale.add("sshd")
        # the lab's key in the host's authorized_keys, beside the keys the compute_node role adds
        # (the compute hosts' keys for migrations and image fetches): they stay
        path = os.path.join(d, "root-ssh", "authorized_keys")
        self._write(path, with_line(self._read(path), self._read(self.spec.key_file + ".pub")), f"authorized_keys of {host.name}", mode=0o600)
        return stale

    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            return ""

    def _seed(self, src: str, dest: str) -> None:
        """Copy a package's pristine folder once (the host's own copy from then on)."""
        marker = os.path.join(dest, ".lab-seeded")
        if os.path.exists(marker) or not os.path.isdir(src):
            return
        if self.change(f"seed {dest} from {src}"):
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
            if dest.endswith("etc-libvirt"):
                # the default NAT network would start a dnsmasq on every host: the lab has its own networks
                for auto in ("qemu/networks/autostart/default.xml", "qemu/networks/default.xml"):
                    path = os.path.join(dest, auto)
                    if os.path.lexists(path):
                        os.unlink(path)
            with open(marker, "w", encoding="ascii") as f:
                f.write(f"seeded from {src}\n")

    def _libvirt_config(self, host: HostSpec) -> bool:
        d = os.path.join(host.state_dir, "etc-libvirt")
        uuid_file = os.path.join(host.state_dir, "host_uuid")
        host_uuid = self._read(uuid_file).strip()
        if not host_uuid:
            host_uuid = str(uuid.uuid4())
            if self.change(f"host_uuid {host_uuid} for {host.name}"):
                with open(uuid_file, "w", encoding="ascii") as f:
                    f.write(host_uuid + "\n")
        # Lab-only settings: root-only sockets without SASL/polkit (polkit does not run in
        # the lab); no TCP or TLS listener at all: migration goes over qemu+ssh.
        libvirtd = (
            "# written by the virtcloud.compute lab: for the lab only\n"
            "listen_tls = 0\nlisten_tcp = 0\n"
            'unix_sock_group = "root"\nunix_sock_ro_perms = "0770"\nunix_sock_rw_perms = "0770"\n'
            'auth_unix_ro = "none"\nauth_unix_rw = "none"\n'
            f'host_uuid = "{host_uuid}"\n'
        )
        changed = self._write(os.path.join(d, "libvirtd.conf"), libvirtd, f"libvirtd.conf of {host.name}")
        # No AppArmor/SELinux confinement in the lab (the host kernel has no LSM for it).
        # No cgroups: the lab hosts share the machine's cgroup tree, where their domains'
        # groups would collide. No per-domain /dev namespace: the lab host's own /dev has
        # a hidden /dev/kvm that libvirt cannot copy into one.
        qemu = '# written by the virtcloud.compute lab: for the lab only\nsecurity_driver = "none"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n'
        return self._write(os.path.join(d, "qemu.conf"), qemu, f"qemu.conf of {host.name}") or changed

    def _sshd_config(self, host: HostSpec) -> str:
        d = host.state_dir
        return (
            f"# sshd of lab host {host.name} (virtcloud.compute lab)\n"
            f"ListenAddress {host.address}\nPort 22\n"
            f"HostKey {d}/ssh/ssh_host_ed25519_key\n"
            f"PidFile {d}/pids/sshd.pid\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "AuthorizedKeysFile .ssh/authorized_keys\nUsePAM no\nUseDNS no\n"
            "AcceptEnv LANG LC_*\nSubsystem sftp internal-sftp\n"
            "MaxStartups 64:30:128\n"
        )

    def _host_network(self, host: HostSpec) -> None:
        ip = self.iproute
        spec = self.spec
        ip.run(["netns", "add", host.netns])
        if self._link_exists(host.veth):
            ip.run(["link", "del", host.veth])
        ip.run(["link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
        ip.run(["link", "set", host.veth, "master", spec.bridge, "up"])
        ip.run(["addr", "add", f"{host.address}/{spec.network.prefixlen}", "dev", "eth0"], host.netns)
        ip.run(["link", "set", "eth0", "up"], host.netns)
        ip.run(["link", "set", "lo", "up"], host.netns)
        ip.run(["route", "add", "default", "via", spec.bridge_address], host.netns)

    def binds(self, host: HostSpec) -> list[tuple[str, str]]:
        """The host's bind mounts: (folder on the machine, path inside the host's mount namespace)."""
        spec = self.spec
        d = host.state_dir
        binds = [(f"{d}/root-ssh", "/root/.ssh"), (f"{spec.state_dir}/etc-hosts", "/etc/hosts")]
        binds += [(f"{d}/{sub}", path) for path, sub in HOST_PRIVATE_BINDS]
        # the host's own SSH host keys where every tool looks for them
        binds.append((f"{d}/ssh", "/etc/ssh"))
        if host.role == "compute":
            binds += [(f"{d}/{sub}", path) for path, sub in COMPUTE_BINDS]
            binds.append((spec.shared_instances if host.shared_storage else f"{d}/instances", spec.instances_path))
        else:
            binds.append((f"{d}/images", spec.image_store_path))
        return binds

    def _host_namespaces(self, host: HostSpec) -> None:
        spec = self.spec
        mnt = f"{spec.ns_dir}/{host.name}.mnt"
        uts = f"{spec.ns_dir}/{host.name}.uts"
        for path in (mnt, uts):
            with open(path, "w", encoding="ascii"):
                pass
        binds = self.binds(host)
        script = [
            "set -e",
            f"hostname {host.name}",
            # /sys shows the network namespace of whoever mounts it: ours
            "mount -t sysfs sysfs /sys",
            "mount -t tmpfs -o mode=0755,size=64m tmpfs /run",
            "mkdir -p /run/sshd /run/libvirt /run/lock /run/netns",
        ]
        for src, dest in binds:
            script.append(f"mkdir -p {dest} || true")
            script.append(f"mount --bind {src} {dest}")
        if host.role == "compute" and not spec.kvm and os.path.exists("/dev/kvm"):
            # TCG only: hide /dev/kvm behind an unreadable file. Where /dev/kvm cannot run
            # guests (a nested PVM hypervisor) libvirt would otherwise find its cached QEMU
            # capabilities stale on every call and probe QEMU again each time.
            hidden = os.path.join(spec.state_dir, "kvm-hidden")
            with open(hidden, "w", encoding="ascii"):
                pass
            os.chmod(hidden, 0)
            script.append(f"mount --bind {hidden} /dev/kvm")
        self._record_mountpoints([dest for _src, dest in binds])
        argv = [
            "nsenter",
            f"--net=/run/netns/{host.netns}",
            "--",
            "unshare",
            f"--mount={mnt}",
            f"--uts={uts}",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            "\n".join(script),
        ]
        self.run(argv, what=f"making the mount and UTS namespaces of {host.name}")

    def _record_mountpoints(self, paths: list[str]) -> None:
        """Remember mount points that do not exist yet, so lab_down removes exactly those."""
        record = os.path.join(self.spec.state_dir, "created-mountpoints")
        known = set(self._read(record).split())
        new = []
        for path in paths:
            while not os.path.exists(path) and path not in known and path not in new:
                new.append(path)  # and each missing parent, which mkdir -p makes too
                path = os.path.dirname(path)
        if new:
            with open(record, "a", encoding="utf-8") as f:
                f.write("".join(p + "\n" for p in new))

    def _start(self, host: HostSpec, daemon: str) -> None:
        pidfile = self._pidfile(host, daemon)
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        if daemon == "sshd":
            argv = ["/usr/sbin/sshd", "-f", os.path.join(host.state_dir, "ssh", "sshd_config")]
        elif daemon == "virtlogd":
            argv = ["/usr/sbin/virtlogd", "-d", "-p", pidfile]
        else:
            argv = ["/usr/sbin/libvirtd", "-d", "-p", pidfile]
        env = " ".join("{}={}".format(*kv) for kv in DAEMON_ENV.items())
        self.run(self.nsenter(host) + ["/usr/bin/env", "-i"] + env.split() + argv, what=f"starting {daemon} on {host.name}")

    def _wait_daemon(self, host: HostSpec, daemon: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.daemon_pid(host, daemon) is not None and self._answers(host, daemon):
                return
            time.sleep(0.2)
        logs = ""
        if daemon == "libvirtd":
            logs = f" (see {host.state_dir}/var-log-libvirt/)"
        raise LabError(f"{daemon} on {host.name} did not come up within {self.timeout} s{logs}")

    def _answers(self, host: HostSpec, daemon: str) -> bool:
        if daemon == "sshd":
            try:
                with socket.create_connection((host.address, 22), timeout=1) as sock:
                    return sock.recv(4).startswith(b"SSH-")
            except OSError:
                return False
        if daemon == "libvirtd":
            return self._run(self.nsenter(host) + ["virsh", "-c", "qemu:///system", "version"])[0] == 0
        return True

    def _known_host(self, host: HostSpec) -> None:
        pub = self._read(os.path.join(host.state_dir, "ssh", "ssh_host_ed25519_key.pub")).split()
        if len(pub) < 2:
            return
        line = f"{host.name},{host.address} {pub[0]} {pub[1]}"
        lines = [entry for entry in self._read(self.spec.known_hosts).splitlines() if entry and entry.split()[0] != f"{host.name},{host.address}"]
        self._write(self.spec.known_hosts, "\n".join(sorted(lines + [line])) + "\n", f"known_hosts entry of {host.name}")

    def _remove_extra_hosts(self, present: set[str]) -> None:
        """Hosts of this lab that the options no longer ask for (lab_hosts lowered)."""
        wanted = {h.netns for h in self.spec.hosts}
        for netns in sorted(present):
            if netns.startswith(self.spec.name + "-node") and netns not in wanted:
                name = netns[len(self.spec.name) + 1 :]
                extra = _host(self.spec, name, "compute", "", False, name)
                if self.change(f"remove host {name} (not in lab_hosts)"):
                    self._host_down(extra)

    # ----------------------------------------------------------------- down
    def down(self) -> list[str]:
        """Remove everything of this lab, whatever state it is in; returns what was removed.

        Only for a lab whose record (:func:`read_record`) names it: :func:`converge` checks.
        """
        spec = self.spec
        self.check_run_dir()
        hosts = {h.netns: h for h in spec.hosts}
        for netns in self.netns_list() if self.ip else []:
            if netns.startswith(spec.name + "-") and netns not in hosts:
                name = netns[len(spec.name) + 1 :]
                hosts[netns] = _host(spec, name, "compute", "", False, name)
        for host in hosts.values():
            self._host_down(host)
        for link in self._lab_links():
            if self.change(f"delete link {link}"):
                self.iproute.attempt(["link", "del", link])
        for mount in sorted((m for m in self._mounts() if m == spec.ns_dir or m.startswith(spec.ns_dir + "/")), reverse=True):
            if self.change(f"unmount {mount}"):
                self.run(["umount", "-l", mount])
        record = os.path.join(spec.state_dir, "created-mountpoints")
        # An empty folder that is a mount point in another lab's namespaces must stay:
        # removing it would detach that lab's mounts.
        other_labs = [n for n in self.netns_list() if n.endswith("-controller") and not n.startswith(spec.name + "-")] if self.ip else []
        for path in [] if other_labs else sorted(set(self._read(record).split()), reverse=True):
            try:
                if os.path.isdir(path) and not os.listdir(path) and self.change(f"remove mount point {path}"):
                    os.rmdir(path)
            except OSError:
                pass
        for path in (spec.state_dir, spec.run_dir):
            if os.path.lexists(path) and self.change(f"remove {path}"):
                shutil.rmtree(path)
        return self.changes

    def _lab_links(self) -> list[str]:
        if self.ip is None:
            return []
        links = [name for name in self.iproute.link_names() if name.startswith(self.spec.name + "-")]
        # veths before the bridge
        return sorted(links, key=lambda n: n == self.spec.bridge)

    def _host_down(self, host: HostSpec) -> None:
        pids = self._netns_pids(host.netns)
        for daemon in host.daemons:
            pid = self.daemon_pid(host, daemon) if os.path.exists(f"/run/netns/{host.netns}") else None
            if pid and pid not in pids:
                pids.append(pid)
        if pids and self.change(f"stop {len(pids)} processes of {host.name}: {' '.join(map(str, sorted(pids)))}"):
            self._kill(pids)
        for kind in ("mnt", "uts"):
            path = f"{self.spec.ns_dir}/{host.name}.{kind}"
            if path in self._mounts() and self.change(f"unmount {path}"):
                self.run(["umount", path])
            if os.path.exists(path) and not self.check_mode:
                os.unlink(path)
        if host.netns in self.netns_list() and self.change(f"delete netns {host.netns}"):
            self.iproute.run(["netns", "del", host.netns])
        if self._link_exists(host.veth) and self.change(f"delete link {host.veth}"):
            self.iproute.attempt(["link", "del", host.veth])

    def _netns_pids(self, netns: str) -> list[int]:
        if not os.path.exists(f"/run/netns/{netns}"):
            return []
        return self.iproute.netns_pids(netns)

    def _kill(self, pids: list[int]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        raise LabError(f"cannot stop process {pid}: {exc}") from None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
                time.sleep(0.1)
            if not any(_alive(p) for p in pids):
                return
        left = [p for p in pids if _alive(p)]
        if left:
            raise LabError(f"processes {left} of the lab did not stop")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def converge(
    run,
    name: str,
    state: str = "present",
    network: str | None = None,
    hosts: int = 3,
    non_shared: list[str] | tuple = (),
    state_dir: str | None = None,
    run_dir: str | None = None,
    kvm: bool = False,
    timeout: int = 60,
    lock_timeout: float = 300,
    check_mode: bool = False,
) -> dict:
    """The lab module's work: lab ``name`` up (``present``) or down (``absent``), under its lock.

    Returns the module's result. Left out (None), ``network`` and ``run_dir`` come from the
    lab's record, else from its name; ``state_dir`` from its name (the record lives there).
    lab_down takes everything from the record, and removes nothing when there is none.
    """
    check_name(name)
    state_dir = os.path.normpath(state_dir) if state_dir else lab_dirs(name)[0]
    try:
        os.makedirs(LOCK_DIR, exist_ok=True)
        with file_lock(lock_path(name), lock_timeout, f"lab {name}", error=LabError, holder=True):
            record = read_record(state_dir)
            mine = record if record and record["name"] == name else {}
            if state == "absent":
                return _down(run, name, state_dir, record, timeout, check_mode)
            spec = plan(name, network or mine.get("network"), hosts, non_shared, state_dir, run_dir or mine.get("run_dir"), kvm=kvm)
            lab = Lab(spec, run, check_mode=check_mode, timeout=timeout)
            result = dict(hosts=lab.up())
    except OSError as exc:
        raise LabError(os_error_message(state, exc)) from None
    return dict(
        result,
        changed=bool(lab.changes),
        changes=lab.changes,
        msg=f"lab {name} is up on {spec.network}, its files in {spec.state_dir}",
        **spec_result(spec),
    )


def spec_result(spec: LabSpec) -> dict:
    """Where the lab is: what the module returns about it besides its hosts."""
    return dict(
        name=spec.name,
        network=str(spec.network),
        state_dir=spec.state_dir,
        run_dir=spec.run_dir,
        inventory=spec.inventory,
        ssh=dict(key_file=spec.key_file, known_hosts=spec.known_hosts, config=spec.ssh_config, wrapper=spec.ssh_wrapper),
        instances_path=spec.instances_path,
        image_store_path=spec.image_store_path,
    )


def _down(run, name: str, state_dir: str, record: dict | None, timeout: int, check_mode: bool) -> dict:
    if record is None:
        lab = Lab(plan(name, state_dir=state_dir), run, check_mode=check_mode, timeout=timeout)
        found = lab.leftovers()
        msg = f"lab {name} is not up: {state_dir} holds no record of it ({RECORD}), so nothing was removed"
        if found:
            msg += f"; {', '.join(found)} exist: lab {name} was made with another lab_state_dir, give that one"
        return dict(changed=False, changes=[], msg=msg)
    if record["name"] != name:
        raise LabError(
            f"{state_dir} is the state folder of lab {record['name']!r}, not of lab {name!r}: nothing was removed "
            f"(lab_name={record['name']} removes that lab; leave lab_state_dir out to remove lab {name})"
        )
    hosts = record.get("hosts") or []
    spec = plan(
        name,
        record.get("network"),
        len(hosts) if isinstance(hosts, list) and 1 <= len(hosts) <= MAX_HOSTS else 3,
        [h for h in record.get("non_shared") or [] if h in hosts],
        state_dir,
        record.get("run_dir"),
        kvm=bool(record.get("kvm")),
    )
    lab = Lab(spec, run, check_mode=check_mode, timeout=timeout)
    lab.down()
    return dict(changed=bool(lab.changes), changes=lab.changes, msg=f"lab {name} removed" if lab.changes else f"lab {name}: nothing left to remove")


def os_error_message(state: str, exc: OSError) -> str:
    """An OSError of a lab run, with the hint that fits its cause (and no other)."""
    text = f"lab {state}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return text + " (the machine is out of disk space: free some and run again)"
    if exc.errno == errno.EBUSY:
        return text + " (something still uses it: a shell or a mount inside the lab's folders?)"
    return text
