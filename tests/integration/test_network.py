# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The instance network on the lab: bridges joined by VXLAN, dnsmasq reservations, guests that reach each other.

The tests run in file order and build on each other: the network, then ports, then
guests on node1 and node3 (no shared storage) that ping each other, a DHCP server
restart and a guest reboot, a released address reused by a third guest, and the
network's removal. The module fixture cleans up whatever a failed test left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from conftest import LAB
from harness import GUEST_IMAGE, Console, ModuleRun, run_module

NET = "tnet"
# not the compute_node role's network (10.100.0.0/24, VNI 100), which may be up in the same lab
SUBNET = "10.101.0.0/24"
VNI = 101
BRIDGE = "vcbr-" + NET
VXLAN = "vcvx-" + NET
HOSTS = ["controller", "node1", "node2", "node3"]
UNUSED_IP = "10.101.0.250"  # nobody has it: the guests' negative control
LAB_NET = LAB.address("controller").rsplit(".", 1)[0]  # e.g. 10.252.0

# what the tests learn on the way (ports, guests), shared in file order
SEEN: dict = {"guests": {}}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def adhoc(lab, pattern: str, module: str, args: dict, check: bool = False, diff: bool = False) -> ModuleRun:
    return run_module(lab, pattern, module, args, check=check, diff=diff)


def state_dir(lab) -> str:
    """The networks' folder of the DHCP host (the controller); the same path on the machine."""
    return os.path.join(lab.state_dir, "hosts", "controller", "networks")


def net_args(lab, **extra) -> dict:
    args = dict(
        name=NET,
        subnet=SUBNET,
        vni=VNI,
        local_ip="{{ ansible_host }}",
        peers="{{ groups['all'] | map('extract', hostvars, 'ansible_host') | list }}",
        dhcp="{{ inventory_hostname == 'controller' }}",
        state_dir=state_dir(lab),
    )
    args.update(extra)
    return args


def port(lab, check=False, diff=False, **args) -> ModuleRun:
    return adhoc(lab, "controller", "network_port", dict(args, network=NET, state_dir=state_dir(lab)), check=check, diff=diff)


def net_folder(lab, name=NET) -> str:
    return os.path.join(state_dir(lab), name)


def read_ports(lab) -> dict:
    with open(os.path.join(net_folder(lab), "ports.json"), encoding="utf-8") as f:
        return json.load(f)["ports"]


def running_dnsmasq(pid: int) -> bool:
    """PID is a dnsmasq that runs (a zombie has exited: this machine's init reaps late)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            comm, rest = f.read().split(" (", 1)[1].rsplit(") ", 1)
    except (OSError, IndexError, ValueError):
        return False
    return comm == "dnsmasq" and rest.split()[0] != "Z"


def dnsmasq_pid(lab):
    """The network's dnsmasq pid when that process runs and is dnsmasq, else None."""
    try:
        with open(os.path.join(net_folder(lab), "dnsmasq.pid"), encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if running_dnsmasq(pid) else None


def host_links(lab, host: str) -> dict:
    """What iproute2 shows of the network on HOST, read without the collection's own parsers."""
    out = lab.ssh(host, f"ip -d -o link show; echo ===; ip -o addr show dev {BRIDGE} 2>/dev/null; echo ===; bridge fdb show dev {VXLAN} 2>/dev/null; true")
    links, addrs, fdb = out.split("===\n")
    vx = next((line for line in links.splitlines() if f": {VXLAN}: " in line), None)
    br = next((line for line in links.splitlines() if f": {BRIDGE}: " in line), None)
    return dict(
        bridge=br,
        vxlan=vx,
        addresses=sorted(line.split()[3] for line in addrs.splitlines() if line.split()[2] in ("inet", "inet6")),
        peers=sorted(m.group(1) for m in re.finditer(r"^00:00:00:00:00:00 dst (\S+) ", fdb, re.M)),
    )


def lab_addresses(lab) -> dict:
    return {h: lab.address(h) for h in HOSTS}


def boot_guest(lab, host: str, name: str, mac: str, ping: list[str]) -> Console:
    """The test guest on HOST with plain virsh: overlay disk, vfat config drive (meta.ping), NIC on the network's bridge."""
    local = os.path.join(lab.instances_dir(host), name)  # as the machine running the tests sees it
    remote = os.path.join(lab.instances_path, name)  # as the host sees it
    os.makedirs(local)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", GUEST_IMAGE, os.path.join(local, "disk")], check=True)
    meta = os.path.join(local, "meta_data.json")
    with open(meta, "w", encoding="utf-8") as f:
        json.dump(dict(uuid=str(uuid.uuid4()), name=name, hostname=name, meta=dict(ping=" ".join(ping))), f)
    drive = os.path.join(local, "disk.config")
    subprocess.run(["mkfs.vfat", "-n", "config-2", "-C", drive, "4096"], check=True, capture_output=True)
    subprocess.run(["mmd", "-i", drive, "::openstack", "::openstack/latest"], check=True)
    subprocess.run(["mcopy", "-i", drive, meta, "::openstack/latest/meta_data.json"], check=True)

    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "256"
    ET.SubElement(dom, "vcpu").text = "1"
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_, "boot", dev="hd")
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    devices = ET.SubElement(dom, "devices")
    for fmt, path, dev in (("qcow2", "disk", "vda"), ("raw", "disk.config", "vdb")):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type=fmt, cache="none")
        ET.SubElement(disk, "source", file=os.path.join(remote, path))
        ET.SubElement(disk, "target", dev=dev, bus="virtio")
    nic = ET.SubElement(devices, "interface", type="bridge")
    ET.SubElement(nic, "source", bridge=BRIDGE)
    ET.SubElement(nic, "mac", address=mac)
    ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=os.path.join(remote, "console.log"), append="on")
    ET.SubElement(serial, "target", port="0")
    lab.ssh(host, "virsh define /dev/stdin", data=ET.tostring(dom, encoding="unicode"))
    SEEN["guests"][name] = host
    lab.ssh(host, f"virsh start {name}")
    return Console(os.path.join(local, "console.log"))


def remove_guest(lab, name: str) -> None:
    host = SEEN["guests"].pop(name, None)
    if host is None:
        return
    lab.ssh(host, f"virsh destroy {name}; virsh undefine {name}", check=False)
    subprocess.run(["rm", "-rf", os.path.join(lab.instances_dir(host), name)], check=False)


def figure(what: str, started: float) -> None:
    """A measured time, printed (pytest -s shows them)."""
    print(f"FIGURE {what:<55} {time.monotonic() - started:6.1f} s")


def ip_of(console: Console, after: int = 0, timeout: float = 90) -> tuple[int, str]:
    i, text = console.wait("IP", timeout=timeout, after=after)
    m = re.match(r"^eth0 (\S+)/(\d+) mac=(\S+)$", text)
    assert m, text
    return i, m.group(1)


@pytest.fixture(scope="module", autouse=True)
def cleanup(lab):
    """Whatever happens: guests gone, dnsmasq stopped, devices and folders removed."""
    yield
    for name in list(SEEN["guests"]):
        remove_guest(lab, name)
    for folder in (net_folder(lab), net_folder(lab, "tbad")):
        pid = dnsmasq_pid(lab) if folder == net_folder(lab) else None
        if pid:
            os.kill(pid, signal.SIGTERM)
        subprocess.run(["rm", "-rf", folder], check=False)
    for host in HOSTS:
        lab.ssh(host, f"ip link del {VXLAN} 2>/dev/null; ip link del {BRIDGE} 2>/dev/null; ip link del vcbr-tbad 2>/dev/null; true", check=False)


# ---------------------------------------------------------------------------
# the tests, in order
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts, extra, message",
    [
        ("controller:node1", dict(name="tbad", subnet=LAB_NET + ".0/24"), f"subnet {LAB_NET}.0/24 overlaps the address {LAB_NET}."),
        ("controller", dict(name="tbad", subnet=LAB_NET + ".128/25"), f"overlaps the address {LAB_NET}.10/24 of eth0"),
        ("controller", dict(name="tbad", subnet="8.8.8.0/24"), "is not a private range"),
        ("controller", dict(name="Bad_Net"), "network name 'Bad_Net' is not valid"),
        ("controller", dict(name="tbad", vni=0), "vni 0 is not valid"),
        ("controller", dict(name="tbad", local_ip=LAB_NET + ".99"), f"local_ip {LAB_NET}.99 is not an address of this host"),
        ("controller", dict(name="tbad", state_dir="/tmp/x,y"), "state_dir '/tmp/x,y' is not valid"),
    ],
)
def test_bad_options_fail_clearly_and_change_nothing(lab, hosts, extra, message):
    run = adhoc(lab, hosts, "network", net_args(lab, **extra))
    assert run.rc != 0 and set(run.results) == set(hosts.split(":")), run
    for host, result in run.results.items():
        assert result["_status"] == "FAILED!" and message in result["msg"], (host, result)
        assert "Traceback" not in result["msg"]
        assert "vcbr-tbad" not in lab.ssh(host, "ip -o link show")
    assert not os.path.exists(net_folder(lab, "tbad"))


def test_network_check_mode_then_create_then_no_change(lab):
    check = adhoc(lab, "all", "network", net_args(lab), check=True)
    assert check.ok() and check.changed() == {h: True for h in HOSTS}, check
    assert "start dnsmasq for tnet on vcbr-tnet" in check.results["controller"]["changes"]
    for host in HOSTS:
        assert host_links(lab, host)["bridge"] is None and host_links(lab, host)["vxlan"] is None
    assert not os.path.exists(net_folder(lab))

    started = time.monotonic()
    real = adhoc(lab, "all", "network", net_args(lab), diff=True)
    figure("network made on 4 hosts (one ad-hoc run)", started)
    assert real.ok() and real.changed() == {h: True for h in HOSTS}, real
    assert "--- before" in real.stdout and '"running": true' in real.stdout  # the diff
    addresses = lab_addresses(lab)
    for host in HOSTS:
        seen = host_links(lab, host)
        assert seen["bridge"] and " mtu 1450 " in seen["bridge"] and "bridge" in seen["bridge"], seen
        vx = seen["vxlan"]
        assert vx and " mtu 1450 " in vx and f" master {BRIDGE} " in vx, seen
        assert f"vxlan id {VNI} local {addresses[host]} " in vx and " dstport 4789 " in vx and " nolearning " in vx, vx
        assert seen["peers"] == sorted(a for h, a in addresses.items() if h != host), seen
        # the gateway on the DHCP host only, and no IPv6 (not even link-local) anywhere
        assert seen["addresses"] == (["10.101.0.1/24"] if host == "controller" else []), seen
        assert real.results[host]["bridge"] == BRIDGE and real.results[host]["network"]["gateway"] == "10.101.0.1"
    pid = dnsmasq_pid(lab)
    assert pid is not None and real.results["controller"]["dnsmasq_pid"] == pid
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[1] == (f"--conf-file={net_folder(lab)}/dnsmasq.conf").encode()
    assert read_ports(lab) == {}

    started = time.monotonic()
    for again in (adhoc(lab, "all", "network", net_args(lab), check=True), adhoc(lab, "all", "network", net_args(lab))):
        assert again.ok() and again.changed() == {h: False for h in HOSTS}, again
    figure("check mode + real run, both unchanged, 4 hosts", started)
    assert dnsmasq_pid(lab) == pid


def test_network_repairs_flood_entries(lab):
    lab.ssh(
        "node2",
        f"bridge fdb del 00:00:00:00:00:00 dev {VXLAN} dst {lab.address('node3')} && bridge fdb append 00:00:00:00:00:00 dev {VXLAN} dst {LAB_NET}.99",
    )
    check = adhoc(lab, "all", "network", net_args(lab), check=True)
    assert check.ok() and check.changed() == dict({h: False for h in HOSTS}, node2=True), check
    assert sorted(check.results["node2"]["changes"]) == [
        f"add flood entry to peer {lab.address('node3')} on {VXLAN}",
        f"remove flood entry to {LAB_NET}.99 (not a peer) from {VXLAN}",
    ]
    assert LAB_NET + ".99" in host_links(lab, "node2")["peers"]
    real = adhoc(lab, "all", "network", net_args(lab))
    assert real.ok() and real.changed() == dict({h: False for h in HOSTS}, node2=True), real
    assert host_links(lab, "node2")["peers"] == sorted(lab.address(h) for h in ("controller", "node1", "node3"))
    again = adhoc(lab, "all", "network", net_args(lab))
    assert again.changed() == {h: False for h in HOSTS}, again


def test_ports_allocate_idempotent_and_refuse_a_taken_address(lab):
    u1 = str(uuid.uuid4())
    check = port(lab, check=True, instance_uuid=u1, hostname="g1")
    assert check.ok() and check.changed() == {"controller": True}, check
    planned = check.results["controller"]
    assert planned["ip"] == "10.101.0.2" and planned["mac"].startswith("fa:16:3e:")
    assert read_ports(lab) == {}
    started = time.monotonic()
    real = port(lab, diff=True, instance_uuid=u1, hostname="g1")
    figure("port reserved (one ad-hoc run)", started)
    p1 = real.results["controller"]
    assert real.ok() and p1["changed"] and (p1["ip"], p1["mac"]) == (planned["ip"], planned["mac"]), real
    assert p1["port"]["id"] == f"{u1}-0" and p1["dhcp"] == "reloaded" and p1["port"]["bridge"] == BRIDGE
    for again in (port(lab, check=True, instance_uuid=u1, hostname="g1"), port(lab, instance_uuid=u1, hostname="g1")):
        assert again.ok() and again.changed() == {"controller": False}, again
        assert (again.results["controller"]["ip"], again.results["controller"]["mac"]) == (p1["ip"], p1["mac"])

    p2 = port(lab, port_id="g2-port", hostname="g2").results["controller"]
    assert p2["changed"] and p2["ip"] == "10.101.0.3" and p2["mac"] != p1["mac"], p2
    taken = port(lab, port_id="other", ip="10.101.0.2")
    assert taken.rc != 0 and f"ip 10.101.0.2 of network tnet is taken by port {u1}-0" in taken.results["controller"]["msg"], taken
    gateway = port(lab, port_id="other", ip="10.101.0.1")
    assert gateway.rc != 0 and "gateway" in gateway.results["controller"]["msg"], gateway
    assert sorted(read_ports(lab)) == sorted([f"{u1}-0", "g2-port"])
    with open(os.path.join(net_folder(lab), "hosts"), encoding="utf-8") as f:
        assert f.read() == f"{p1['mac']},10.101.0.2,g1\n{p2['mac']},10.101.0.3,g2\n"
    SEEN.update(p1=p1, p2=p2, u1=u1)


def test_guests_on_two_hosts_get_their_reservations_and_reach_each_other(lab):
    p1, p2 = SEEN["p1"], SEEN["p2"]
    started = time.monotonic()
    g1 = boot_guest(lab, "node1", "g1", p1["mac"], [p2["ip"], UNUSED_IP])
    g2 = boot_guest(lab, "node3", "g2", p2["mac"], [p1["ip"]])
    for console, p in ((g1, p1), (g2, p2)):
        _i, ip = ip_of(console)
        assert ip == p["ip"], (console.path, ip, p)
        console.wait("IP", pattern=r"mac={}$".format(re.escape(p["mac"])), timeout=5)
    figure("two guests defined and started to both IP lines", started)
    g1.wait("PING", pattern=r"^{} ok$".format(re.escape(p2["ip"])), timeout=90)
    g2.wait("PING", pattern=r"^{} ok$".format(re.escape(p1["ip"])), timeout=90)
    figure("... to both PING ok lines", started)
    SEEN.update(g1=g1, g2=g2)
    # the address a guest asks for is the reservation's, nothing else: dnsmasq has no free range
    with open(os.path.join(net_folder(lab), "leases"), encoding="utf-8") as f:
        leases = sorted(tuple(line.split()[1:3]) for line in f)
    assert leases == sorted([(p1["mac"], p1["ip"]), (p2["mac"], p2["ip"])])


def test_dhcp_server_restart_and_guest_reboot_keep_the_address(lab):
    pid = dnsmasq_pid(lab)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while dnsmasq_pid(lab) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dnsmasq_pid(lab) is None
    check = adhoc(lab, "all", "network", net_args(lab), check=True)
    assert check.changed() == dict({h: False for h in HOSTS}, controller=True), check
    assert check.results["controller"]["changes"] == ["start dnsmasq for tnet on vcbr-tnet"]
    assert dnsmasq_pid(lab) is None
    real = adhoc(lab, "all", "network", net_args(lab))
    assert real.changed() == dict({h: False for h in HOSTS}, controller=True), real
    new_pid = dnsmasq_pid(lab)
    assert new_pid and new_pid != pid and real.results["controller"]["dnsmasq_pid"] == new_pid
    assert adhoc(lab, "all", "network", net_args(lab)).changed() == {h: False for h in HOSTS}

    # a cold reboot of g2 (node3): a new DHCP exchange with the restarted server, same address, still reaches g1
    g2, p1, p2 = SEEN["g2"], SEEN["p1"], SEEN["p2"]
    after = len(g2.lines())
    started = time.monotonic()
    lab.ssh("node3", "virsh destroy g2 && virsh start g2")
    i, boot = g2.wait("BOOT", after=after, timeout=90)
    assert boot.startswith("count=2 "), boot
    _j, ip = ip_of(g2, after=i)
    assert ip == p2["ip"]
    figure("cold reboot of a guest to its IP line", started)
    g2.wait("PING", after=i, pattern=r"^{} ok$".format(re.escape(p1["ip"])), timeout=90)


def test_released_address_goes_to_the_next_port_and_its_guest(lab):
    g1, p1, p2 = SEEN["g1"], SEEN["p1"], SEEN["p2"]
    # the negative control: the address nobody has never answers
    g1.wait("PING", pattern=rf"^{re.escape(UNUSED_IP)} fail$", timeout=120)
    remove_guest(lab, "g1")
    check = port(lab, check=True, instance_uuid=SEEN["u1"], state="absent")
    assert check.changed() == {"controller": True} and check.results["controller"]["released"]["ip"] == p1["ip"], check
    assert f"{SEEN['u1']}-0" in read_ports(lab)
    started = time.monotonic()
    gone = port(lab, instance_uuid=SEEN["u1"], state="absent")
    figure("port released with a dnsmasq restart (one ad-hoc run)", started)
    result = gone.results["controller"]
    # g1's lease would keep the address from another MAC: dnsmasq was restarted without it
    assert gone.ok() and result["changed"] and result["released"]["mac"] == p1["mac"] and result["dhcp"] == "restarted", gone
    assert sorted(read_ports(lab)) == ["g2-port"]
    with open(os.path.join(net_folder(lab), "leases"), encoding="utf-8") as f:
        assert p1["mac"] not in f.read()
    assert port(lab, instance_uuid=SEEN["u1"], state="absent").changed() == {"controller": False}

    p3 = port(lab, port_id="g3-port", hostname="g3").results["controller"]
    assert p3["ip"] == p1["ip"] and p3["mac"] != p1["mac"], p3
    g3 = boot_guest(lab, "node2", "g3", p3["mac"], [p2["ip"]])
    _i, ip = ip_of(g3)
    assert ip == p1["ip"]
    g3.wait("PING", pattern=r"^{} ok$".format(re.escape(p2["ip"])), timeout=90)
    SEEN.update(p3=p3)


def test_remove_the_network(lab):
    # refused while it is in use: ports reserved, an instance on the bridge
    busy = adhoc(lab, "controller:node2", "network", dict(name=NET, state="absent", state_dir=state_dir(lab)))
    assert busy.rc != 0, busy
    assert "network tnet still has 2 port(s) (g2-port, g3-port)" in busy.results["controller"]["msg"]
    assert "are attached to vcbr-tnet" in busy.results["node2"]["msg"]
    assert dnsmasq_pid(lab) and host_links(lab, "node2")["bridge"]

    for name in ("g2", "g3"):
        remove_guest(lab, name)
    for port_id in ("g2-port", "g3-port"):
        assert port(lab, port_id=port_id, state="absent").changed() == {"controller": True}
    pid = dnsmasq_pid(lab)
    assert pid is not None
    args = dict(name=NET, state="absent", state_dir=state_dir(lab))
    check = adhoc(lab, "all", "network", args, check=True)
    assert check.ok() and check.changed() == {h: True for h in HOSTS}, check
    assert dnsmasq_pid(lab) == pid and all(host_links(lab, h)["bridge"] for h in HOSTS)
    real = adhoc(lab, "all", "network", args)
    assert real.ok() and real.changed() == {h: True for h in HOSTS}, real
    for host in HOSTS:
        seen = host_links(lab, host)
        assert seen["bridge"] is None and seen["vxlan"] is None, seen
    assert not running_dnsmasq(pid)
    assert not os.path.exists(net_folder(lab))
    again = adhoc(lab, "all", "network", args)
    assert again.ok() and again.changed() == {h: False for h in HOSTS}, again
