# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The instance network: validation, IPAM, MACs, the reservation files, iproute2 output in and exact commands out."""

from __future__ import annotations

import ipaddress
import json
import os
import threading

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils import _files as files
from ansible_collections.virtcloud.compute.plugins.module_utils import _network as net
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._iproute import (
    IprouteError,
    parse_addresses,
    parse_fdb_peers,
    parse_link,
    parse_link_names,
    parse_routes,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._network import (
    network_lock,
    Host,
    NetworkError,
    NetworkPaths,
    NetworkStore,
    Port,
    Tools,
    allocate_ip,
    atomic_write,
    bridge_name,
    check_no_overlap,
    generate_mac,
    make_spec,
    parse_leases,
    plan_links,
    plan_links_absent,
    plan_port,
    prune_leases,
    render_dnsmasq_conf,
    render_hosts,
    wanted_links,
)

# ---------------------------------------------------------------------------
# Recorded with iproute2 6.1.0 on Debian 12 (kernel 6.1), in a scratch network namespace:
#   ip link add name vcbr-tnet mtu 1450 type bridge
#   ip link add vcvx-tnet mtu 1450 type vxlan id 100 dstport 4789 local 127.0.0.1 nolearning
#   ip link set vcvx-tnet master vcbr-tnet; ip link set ... up; ip addr add 10.100.0.1/24 dev vcbr-tnet
#   bridge fdb append 00:00:00:00:00:00 dev vcvx-tnet dst 10.247.0.11   (and 10.247.0.12)
# then `ip -j -d link show dev X`, `ip -j addr show dev vcbr-tnet`, `bridge -j fdb show dev vcvx-tnet`,
# `ip -j link show master vcbr-tnet`; and in a namespace with a veth eth0 10.247.0.11/24 and a default route:
# `ip -j -4 addr show`, `ip -j -4 route show`, `bridge -j fdb show dev vcbr-tnet` (a bridge without ports).
# ---------------------------------------------------------------------------
LINK_BRIDGE = (
    '[{"ifindex":2,"ifname":"vcbr-tnet","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"qdisc":"noqueue",'
    '"operstate":"UP","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether","address":"7a:4d:fd:22:f0:85",'
    '"broadcast":"ff:ff:ff:ff:ff:ff","promiscuity":0,"allmulti":0,"min_mtu":68,"max_mtu":65535,"linkinfo":{"info_kind":"bridge",'
    '"info_data":{"forward_delay":1500,"hello_time":200,"max_age":2000,"ageing_time":30000,"stp_state":0,"priority":32768,'
    '"vlan_filtering":0,"bridge_id":"8000.7a:4d:fd:22:f0:85","root_id":"8000.7a:4d:fd:22:f0:85","root_port":0,'
    '"root_path_cost":0,"topology_change":0,"topology_change_detected":0,"hello_timer":0.00,"tcn_timer":0.00,'
    '"topology_change_timer":0.00,"gc_timer":0.08,"group_fwd_mask":"0","group_addr":"01:80:c2:00:00:00","mcast_snooping":1,'
    '"nf_call_iptables":0,"nf_call_ip6tables":0,"nf_call_arptables":0}},"inet6_addr_gen_mode":"eui64","num_tx_queues":1,'
    '"num_rx_queues":1,"gso_max_size":65536,"gso_max_segs":65535,"tso_max_size":65536,"tso_max_segs":65535,"gro_max_size":65536}]'
)
LINK_VXLAN = (
    '[{"ifindex":3,"ifname":"vcvx-tnet","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"qdisc":"noqueue",'
    '"master":"vcbr-tnet","operstate":"UNKNOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether",'
    '"address":"7a:4d:fd:22:f0:85","broadcast":"ff:ff:ff:ff:ff:ff","promiscuity":1,"allmulti":1,"min_mtu":68,"max_mtu":65535,'
    '"linkinfo":{"info_kind":"vxlan","info_data":{"id":100,"local":"127.0.0.1","port_range":{"low":0,"high":0},"port":4789,'
    '"learning":false,"ttl":0,"df":"unset","ageing":300,"udp_csum":true,"udp_zero_csum6_tx":false,"udp_zero_csum6_rx":false},'
    '"info_slave_kind":"bridge","info_slave_data":{"state":"forwarding","priority":32,"cost":100,"hairpin":false,"guard":false,'
    '"root_block":false,"fastleave":false,"learning":true,"flood":true,"id":"0x8001","no":"0x1","designated_port":32769,'
    '"designated_cost":0,"bridge_id":"8000.7a:4d:fd:22:f0:85","root_id":"8000.7a:4d:fd:22:f0:85","hold_timer":0.00,'
    '"message_age_timer":0.00,"forward_delay_timer":14.98,"topology_change_ack":0,"config_pending":0,"proxy_arp":false,'
    '"proxy_arp_wifi":false,"multicast_router":1,"mcast_flood":true,"bcast_flood":true,"mcast_to_unicast":false,'
    '"neigh_suppress":false,"group_fwd_mask":"0","group_fwd_mask_str":"0x0","vlan_tunnel":false,"isolated":false,'
    '"locked":false}},"inet6_addr_gen_mode":"eui64","num_tx_queues":1,"num_rx_queues":1,"gso_max_size":65536,'
    '"gso_max_segs":65535,"tso_max_size":65536,"tso_max_segs":65535,"gro_max_size":65536}]'
)
ADDR_BRIDGE = (
    '[{"ifindex":2,"ifname":"vcbr-tnet","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"qdisc":"noqueue",'
    '"operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"7a:4d:fd:22:f0:85",'
    '"broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"10.100.0.1","prefixlen":24,"scope":"global",'
    '"label":"vcbr-tnet","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6",'
    '"local":"fe80::784d:fdff:fe22:f085","prefixlen":64,"scope":"link","tentative":true,"valid_life_time":4294967295,'
    '"preferred_life_time":4294967295}]}]'
)
FDB_VXLAN = (
    '[{"mac":"7a:4d:fd:22:f0:85","flags":[],"master":"vcbr-tnet","state":"permanent"},'
    '{"mac":"00:00:00:00:00:00","dst":"10.247.0.11","flags":["self"],"state":"permanent"},'
    '{"mac":"00:00:00:00:00:00","dst":"10.247.0.12","flags":["self"],"state":"permanent"}]'
)
FDB_BRIDGE = (
    '[{"mac":"33:33:00:00:00:01","flags":["self"],"state":"permanent"},{"mac":"01:00:5e:00:00:6a","flags":["self"],'
    '"state":"permanent"},{"mac":"33:33:00:00:00:6a","flags":["self"],"state":"permanent"},{"mac":"01:00:5e:00:00:01",'
    '"flags":["self"],"state":"permanent"},{"mac":"33:33:ff:24:b3:d6","flags":["self"],"state":"permanent"},'
    '{"mac":"d2:61:8c:24:b3:d6","flags":[],"master":"vcbr-tnet","state":"permanent"}]'
)
LINKS_MASTER = (
    '[{"ifindex":3,"ifname":"vcvx-tnet","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"qdisc":"noqueue",'
    '"master":"vcbr-tnet","operstate":"UNKNOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether",'
    '"address":"7a:4d:fd:22:f0:85","broadcast":"ff:ff:ff:ff:ff:ff"}]'
)
ADDR_ALL = (
    '[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN",'
    '"group":"default","txqlen":1000,"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host",'
    '"label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":2,"link_index":85,'
    '"ifname":"eth0","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"mtu":1500,"qdisc":"noqueue","operstate":"DOWN",'
    '"group":"default","txqlen":1000,"link_netnsid":0,"addr_info":[{"family":"inet","local":"10.247.0.11","prefixlen":24,'
    '"scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295}]}]'
)
ROUTES = (
    '[{"dst":"default","gateway":"10.247.0.1","dev":"eth0","flags":["linkdown"]},{"dst":"10.247.0.0/24","dev":"eth0",'
    '"protocol":"kernel","scope":"link","prefsrc":"10.247.0.11","flags":["linkdown"]}]'
)
NO_DEVICE = 'Device "vcbr-tnet" does not exist.\n'

SPEC = make_spec("tnet", "10.100.0.0/24", 100)


def ports_of(*items):
    return {p.id: p for p in (Port(id=i, mac=m, ip=a) for i, m, a in items)}


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "tnet", "net-1", "0abc", "abcdefghij"])
def test_good_names(name):
    assert net.validate_name(name) == name
    assert len(bridge_name(name)) <= 15 and len(net.vxlan_name(name)) <= 15


@pytest.mark.parametrize("name", ["", "abcdefghijk", "Tnet", "-net", "net_1", "net.1", "net 1", "net;rm", "net\n", "a/b", "../x", None, 7])
def test_bad_names(name):
    with pytest.raises(NetworkError, match="network name"):
        net.validate_name(name)


@pytest.mark.parametrize(
    "subnet, message",
    [
        ("10.100.0.1/24", "not an IPv4 network"),  # host bits set
        ("8.8.8.0/24", "not a private range"),
        ("100.64.0.0/24", "not a private range"),
        ("10.0.0.0/8", "prefix length /8"),
        ("10.100.0.0/30", "prefix length /30"),
        ("fd00::/64", "not an IPv4 network"),
        ("10.100.0.0/24\ninterface=eth0", "not an IPv4 network"),
        ("10.100.0.0/24,static", "not an IPv4 network"),
        (None, "not an IPv4 network"),
    ],
)
def test_bad_subnets(subnet, message):
    with pytest.raises(NetworkError, match=message):
        net.validate_subnet(subnet)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vni=0), "vni 0"),
        (dict(vni=16777216), "vni 16777216"),
        (dict(vni=True), "vni True"),
        (dict(mtu=100), "mtu 100"),
        (dict(lease_time=10), "lease_time 10"),
        (dict(allocation_start="10.100.0.1"), "not a usable address"),  # the gateway
        (dict(allocation_end="10.100.0.255"), "not a usable address"),
        (dict(allocation_start="10.101.0.5"), "not a usable address"),
        (dict(allocation_start="10.100.0.50", allocation_end="10.100.0.40"), "is empty"),
        (dict(allocation_start="10.100.0.x"), "not an IPv4 address"),
    ],
)
def test_bad_network_options(kwargs, message):
    args = dict(name="tnet", subnet="10.100.0.0/24", vni=100)
    args.update(kwargs)
    with pytest.raises(NetworkError, match=message):
        make_spec(**args)


def test_spec_names_and_gateway():
    assert (SPEC.bridge, SPEC.vxlan, SPEC.gateway, SPEC.gateway_cidr) == ("vcbr-tnet", "vcvx-tnet", "10.100.0.1", "10.100.0.1/24")
    assert net.NetworkSpec.from_dict(json.loads(json.dumps(SPEC.to_dict()))) == SPEC


@pytest.mark.parametrize(
    "path", ["relative/dir", "/", "/var/lib", "/tmp/a b", "/tmp/x\nport=53", "/tmp/a,b", "/tmp/../etc", "/tmp/$(reboot)", "/tmp/a;b", "", None]
)
def test_bad_state_dirs(path):
    with pytest.raises(NetworkError, match="state_dir"):
        net.validate_state_dir(path)


@pytest.mark.parametrize(
    "value, validator, message",
    [
        ("web,10.0.0.9", net.validate_hostname, "hostname"),  # would add a field to the hosts file
        ("web\nfa:16:3e:00:00:01", net.validate_hostname, "hostname"),  # would add a line
        ("-web", net.validate_hostname, "hostname"),
        ("a" * 64, net.validate_hostname, "hostname"),
        ("web.example", net.validate_hostname, "hostname"),
        ("01:00:5e:00:00:01", net.validate_mac, "multicast"),
        ("00:00:00:00:00:00", net.validate_mac, "not usable"),
        ("fa:16:3e:00:00", net.validate_mac, "not valid"),
        ("fa:16:3e:00:00:01,10.0.0.1", net.validate_mac, "not valid"),
        ("-p", net.validate_port_id, "port id"),
        ("a b", net.validate_port_id, "port id"),
        ("x" * 81, net.validate_port_id, "port id"),
        ("not-a-uuid", net.validate_uuid, "not a UUID"),
    ],
)
def test_bad_port_fields(value, validator, message):
    with pytest.raises(NetworkError, match=message):
        validator(value)


def test_port_id_for_instance():
    uid = "0B5E5E8A-8D43-4A8E-9A53-0D1E4B6F2C11"
    assert net.port_id_for(uid, 1) == "0b5e5e8a-8d43-4a8e-9a53-0d1e4b6f2c11-1"
    with pytest.raises(NetworkError, match="port index"):
        net.port_id_for(uid, 100)


def test_errors_are_the_collections_own():
    assert issubclass(NetworkError, VirtcloudError)


# ---------------------------------------------------------------------------
# Overlap with the host's addresses and routes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subnet, message",
    [
        ("10.247.0.0/24", "overlaps the address 10.247.0.11/24 of eth0"),
        ("10.247.0.128/25", "overlaps the address 10.247.0.11/24 of eth0"),
        ("10.247.0.0/16", "overlaps the address 10.247.0.11/24 of eth0"),
    ],
)
def test_overlap_with_host_addresses(subnet, message):
    with pytest.raises(NetworkError, match=message):
        check_no_overlap(ipaddress.IPv4Network(subnet), parse_addresses(ADDR_ALL), parse_routes(ROUTES))


def test_overlap_with_a_route_and_own_devices_ignored():
    routes = parse_routes(ROUTES) + [("172.16.0.0/16", "tun0")]
    with pytest.raises(NetworkError, match="overlaps the route to 172.16.0.0/16 .dev tun0."):
        check_no_overlap(ipaddress.IPv4Network("172.16.5.0/24"), [], routes)
    # the default route overlaps everything and is ignored; so are the network's own bridge and its route
    check_no_overlap(
        ipaddress.IPv4Network("10.100.0.0/24"),
        parse_addresses(ADDR_ALL + "") + parse_addresses(ADDR_BRIDGE),
        routes + [("10.100.0.0/24", "vcbr-tnet")],
        own_devices=("vcbr-tnet", "vcvx-tnet"),
    )


# ---------------------------------------------------------------------------
# IPAM
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "used, requested, expected",
    [
        ({}, None, "10.100.0.2"),  # first after the gateway
        ({"10.100.0.2": "a"}, None, "10.100.0.3"),
        ({"10.100.0.2": "a", "10.100.0.4": "c"}, None, "10.100.0.3"),  # lowest hole first
        ({"10.100.0.3": "b"}, None, "10.100.0.2"),
        ({}, "10.100.0.77", "10.100.0.77"),
        ({"10.100.0.2": "me"}, None, "10.100.0.2"),  # the port's own address is free for it
        ({"10.100.0.9": "me"}, "10.100.0.9", "10.100.0.9"),
    ],
)
def test_allocate(used, requested, expected):
    assert allocate_ip(SPEC, used, requested, port_id="me") == expected


@pytest.mark.parametrize(
    "requested, message",
    [
        ("10.100.0.5", "is taken by port other"),
        ("10.100.0.1", "gateway"),
        ("10.100.0.0", "network address"),
        ("10.100.0.255", "broadcast address"),
        ("10.101.0.5", "not in the subnet"),
        ("10.100.0.5; reboot", "not an IPv4 address"),
    ],
)
def test_allocate_refuses(requested, message):
    with pytest.raises(NetworkError, match=message):
        allocate_ip(SPEC, {"10.100.0.5": "other"}, requested, port_id="me")


def test_pool_exhausted_and_allocation_range():
    small = make_spec("small", "10.100.0.0/29", 7)  # .2 .. .6
    used = {f"10.100.0.{i}": f"p{i}" for i in range(2, 7)}
    with pytest.raises(NetworkError, match="no free address left in 10.100.0.2..10.100.0.6"):
        allocate_ip(small, used)
    ranged = make_spec("r", "10.100.0.0/24", 7, allocation_start="10.100.0.100", allocation_end="10.100.0.101")
    assert allocate_ip(ranged, {}) == "10.100.0.100"
    assert allocate_ip(ranged, {"10.100.0.100": "a"}) == "10.100.0.101"
    with pytest.raises(NetworkError, match="no free address"):
        allocate_ip(ranged, {"10.100.0.100": "a", "10.100.0.101": "b"})
    # a fixed address outside the allocation range is still allowed (as Neutron's fixed IPs)
    assert allocate_ip(ranged, {"10.100.0.100": "a", "10.100.0.101": "b"}, "10.100.0.200") == "10.100.0.200"


def test_release_and_reuse_is_deterministic():
    ports: dict = {}
    for pid in ("a", "b", "c"):
        ports, _port = plan_port(SPEC, ports, pid, now="t")
    assert [ports[k].ip for k in "abc"] == ["10.100.0.2", "10.100.0.3", "10.100.0.4"]
    del ports["b"]
    ports, d = plan_port(SPEC, ports, "d", now="t")
    assert d.ip == "10.100.0.3"  # the released address, first free again
    again, d2 = plan_port(SPEC, ports, "d", now="later")
    assert d2 == d and again == ports  # same port, same answer, nothing new
    # the same reservations always give the same answers
    replay: dict = {}
    for pid in ("a", "b", "c"):
        replay, _port = plan_port(SPEC, replay, pid, now="t")
    del replay["b"]
    replay, d3 = plan_port(SPEC, replay, "d", now="t")
    assert (d3.ip, d3.mac) == (d.ip, d.mac)


def test_plan_port_updates_and_conflicts():
    ports, a = plan_port(SPEC, {}, "a", hostname="web1", now="t")
    ports, _b = plan_port(SPEC, ports, "b", now="t")
    moved, a2 = plan_port(SPEC, ports, "a", ip="10.100.0.50")
    assert (a2.ip, a2.mac, a2.hostname, a2.created_at) == ("10.100.0.50", a.mac, "web1", "t")
    assert moved["b"] == ports["b"]
    with pytest.raises(NetworkError, match="is taken by port b"):
        plan_port(SPEC, ports, "a", ip="10.100.0.3")
    with pytest.raises(NetworkError, match="already used by port b"):
        plan_port(SPEC, ports, "a", mac=ports["b"].mac)
    renamed, a3 = plan_port(SPEC, ports, "a", hostname="web2")
    assert a3.hostname == "web2" and renamed["a"].ip == a.ip


# ---------------------------------------------------------------------------
# MACs
# ---------------------------------------------------------------------------


def test_macs_unique_deterministic_and_local():
    macs = set()
    for i in range(500):
        mac = generate_mac("tnet", f"port-{i}", macs)
        assert mac.startswith("fa:16:3e:") and net.validate_mac(mac) == mac
        macs.add(mac)
    assert len(macs) == 500
    assert generate_mac("tnet", "port-7", set()) == generate_mac("tnet", "port-7", set())
    assert generate_mac("tnet", "port-7", set()) != generate_mac("other", "port-7", set())


def test_mac_taken_gives_the_next_candidate():
    first = generate_mac("tnet", "p", set())
    second = generate_mac("tnet", "p", {first})
    assert second != first and second.startswith("fa:16:3e:")


# ---------------------------------------------------------------------------
# dnsmasq files
# ---------------------------------------------------------------------------


def test_hosts_file_rendering():
    ports = {
        "b": Port(id="b", mac="fa:16:3e:00:00:0b", ip="10.100.0.10", hostname="web-b"),
        "a": Port(id="a", mac="fa:16:3e:00:00:0a", ip="10.100.0.9"),
        "c": Port(id="c", mac="fa:16:3e:00:00:0c", ip="10.100.0.100", hostname="c"),
    }
    assert render_hosts(ports) == ("fa:16:3e:00:00:0a,10.100.0.9\nfa:16:3e:00:00:0b,10.100.0.10,web-b\nfa:16:3e:00:00:0c,10.100.0.100,c\n")
    assert render_hosts({}) == ""


def test_hosts_file_refuses_a_forged_record():
    forged = {"x": Port(id="x", mac="fa:16:3e:00:00:0a", ip="10.100.0.9", hostname="a\ndhcp-range=0.0.0.0")}
    with pytest.raises(NetworkError, match="hostname"):
        render_hosts(forged)


def test_dnsmasq_conf():
    paths = NetworkPaths.of("/var/lib/virtcloud/networks", "tnet")
    conf = render_dnsmasq_conf(make_spec("tnet", "10.100.0.0/24", 100, lease_time=3600), paths).splitlines()
    for line in (
        "interface=vcbr-tnet",
        "except-interface=lo",
        "bind-interfaces",
        "port=0",
        "dhcp-authoritative",
        "dhcp-range=set:tnet,10.100.0.0,static,255.255.255.0,3600s",
        "dhcp-option=tag:tnet,option:mtu,1450",
        "dhcp-option=tag:tnet,option:router,10.100.0.1",
        "dhcp-hostsfile=/var/lib/virtcloud/networks/tnet/hosts",
        "dhcp-leasefile=/var/lib/virtcloud/networks/tnet/leases",
        "pid-file=/var/lib/virtcloud/networks/tnet/dnsmasq.pid",
    ):
        assert line in conf


LEASES = (
    "1795326250 fa:16:3e:00:00:01 10.100.0.2 g1 01:fa:16:3e:00:00:01\n"
    "1795326251 fa:16:3e:00:00:02 10.100.0.3 * 01:fa:16:3e:00:00:02\n"
    "1795326252 fa:16:3e:00:00:03 10.100.0.4 g3 *\n"
    "duid 00:01:00:01:2c:00:00:00:00:00:00:01\n"
)


def test_leases_parse_and_prune():
    assert [(lease.mac, lease.ip) for lease in parse_leases(LEASES)] == [
        ("fa:16:3e:00:00:01", "10.100.0.2"),
        ("fa:16:3e:00:00:02", "10.100.0.3"),
        ("fa:16:3e:00:00:03", "10.100.0.4"),
    ]
    # :01 keeps its address; :02 now has another one; :03 has none; :09 got .4 (held by :03's lease)
    ports = ports_of(("a", "fa:16:3e:00:00:01", "10.100.0.2"), ("b", "fa:16:3e:00:00:02", "10.100.0.7"), ("d", "fa:16:3e:00:00:09", "10.100.0.4"))
    text, stale = prune_leases(LEASES, ports)
    assert [lease.mac for lease in stale] == ["fa:16:3e:00:00:02", "fa:16:3e:00:00:03"]
    assert text == "1795326250 fa:16:3e:00:00:01 10.100.0.2 g1 01:fa:16:3e:00:00:01\nduid 00:01:00:01:2c:00:00:00:00:00:00:01\n"
    assert prune_leases(text, ports) == (text, [])


# ---------------------------------------------------------------------------
# Files: atomic writes, the lock, the store
# ---------------------------------------------------------------------------


def test_atomic_write_crash_leaves_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ports.json")
    atomic_write(path, "old\n")

    def crash(_src, _dst):
        raise OSError(5, "simulated crash before the rename")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write(path, "new, half written?\n")
    assert open(path, encoding="utf-8").read() == "old\n"
    assert os.listdir(tmp_path) == ["ports.json"]  # the half-made temporary file is gone, not left beside
    monkeypatch.undo()
    atomic_write(path, "new\n", mode=0o640)
    assert open(path, encoding="utf-8").read() == "new\n"
    assert oct(os.stat(path).st_mode & 0o777) == "0o640" and os.listdir(tmp_path) == ["ports.json"]


def test_store_keeps_old_reservations_when_a_write_dies(tmp_path, monkeypatch):
    paths = NetworkPaths.of(str(tmp_path), "tnet")
    os.makedirs(paths.dir)
    store = NetworkStore(paths, "tnet", "ctl")
    ports = ports_of(("a", "fa:16:3e:00:00:01", "10.100.0.2"))
    store.write_ports(ports)

    def no_space(_src, _dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", no_space)
    with pytest.raises(OSError):
        store.write_ports({})
    monkeypatch.undo()
    assert store.read_ports() == ports


def test_damaged_reservations_are_refused(tmp_path):
    paths = NetworkPaths.of(str(tmp_path), "tnet")
    os.makedirs(paths.dir)
    with open(paths.ports, "w", encoding="utf-8") as f:
        f.write('{"version": 1, "network": "tnet", "ports": {')
    with pytest.raises(NetworkError, match="not valid JSON .* never rewritten"):
        NetworkStore(paths, "tnet", "ctl").read_ports()


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"version": 2, "network": "tnet", "ports": {}}, "not a version 1"),
        ({"version": 1, "network": "other", "ports": {}}, "belongs to network 'other'"),
        ({"version": 1, "network": "tnet", "ports": {"a": {"id": "b", "mac": "fa:16:3e:00:00:01", "ip": "10.100.0.2"}}}, "filed under"),
        (
            {
                "version": 1,
                "network": "tnet",
                "ports": {"a": {"id": "a", "mac": "fa:16:3e:00:00:01", "ip": "10.100.0.2"}, "b": {"id": "b", "mac": "fa:16:3e:00:00:02", "ip": "10.100.0.2"}},
            },
            "gives ip 10.100.0.2 to ports a and b",
        ),
        ({"version": 1, "network": "tnet", "ports": {"a": {"id": "a", "mac": "fa:16:3e:00:00:01"}}}, "lacks 'ip'"),
    ],
)
def test_bad_reservation_documents(doc, message):
    with pytest.raises(NetworkError, match=message):
        net.ports_from_document(doc, "tnet")


def test_lock_is_exclusive(tmp_path):
    path = str(tmp_path / ".lock")
    with network_lock(path):
        with pytest.raises(NetworkError, match="network folder .* is busy: another run holds the lock"):
            with network_lock(path, timeout=0.2):
                pass
    held, released = threading.Event(), threading.Event()

    def hold():
        with network_lock(path):
            held.set()
            released.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(5)
    try:
        with pytest.raises(NetworkError):
            with network_lock(path, timeout=0.2):
                pass
    finally:
        released.set()
        t.join()
    with network_lock(path, timeout=1):
        pass


# ---------------------------------------------------------------------------
# iproute2 output in
# ---------------------------------------------------------------------------


def test_parse_recorded_links():
    assert parse_link(LINK_BRIDGE) == dict(name="vcbr-tnet", kind="bridge", mtu=1450, up=True, master=None, addrgenmode="eui64")
    assert parse_link(LINK_VXLAN) == dict(
        name="vcvx-tnet", kind="vxlan", mtu=1450, up=True, master="vcbr-tnet", vni=100, local="127.0.0.1", port=4789, learning=False, addrgenmode="eui64"
    )
    assert parse_link("[]") is None
    with pytest.raises(IprouteError, match="not JSON"):  # the parsers moved to _iproute, with their own error
        parse_link("Device does not exist")


def test_parse_recorded_addresses_routes_fdb():
    assert parse_addresses(ADDR_BRIDGE) == [("vcbr-tnet", "10.100.0.1/24")]
    assert parse_addresses(ADDR_BRIDGE, "inet6") == [("vcbr-tnet", "fe80::784d:fdff:fe22:f085/64")]
    assert parse_addresses(ADDR_ALL) == [("lo", "127.0.0.1/8"), ("eth0", "10.247.0.11/24")]
    assert parse_routes(ROUTES) == [("default", "eth0"), ("10.247.0.0/24", "eth0")]
    assert parse_fdb_peers(FDB_VXLAN) == ["10.247.0.11", "10.247.0.12"]
    assert parse_fdb_peers(FDB_BRIDGE) == []
    assert parse_link_names(LINKS_MASTER) == ["vcvx-tnet"]
    assert parse_link_names("[]") == []


# ---------------------------------------------------------------------------
# Exact commands out
# ---------------------------------------------------------------------------


class Recorder:
    """A fake host: answers from a table keyed by the argv, records every command."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append(list(argv))
        key = " ".join(argv)
        if key in self.answers:
            return self.answers[key]
        raise AssertionError(f"unexpected command: {key}")


def empty_host_answers():
    return {
        "ip -j -4 addr show": (0, ADDR_ALL, ""),
        "ip -j -4 route show": (0, ROUTES, ""),
        "ip -j -d link show dev vcbr-tnet": (1, "", NO_DEVICE),
        "ip -j -d link show dev vcvx-tnet": (1, "", NO_DEVICE.replace("vcbr", "vcvx")),
        "ip -j -d link show type vxlan": (0, "[]", ""),
    }


def test_plan_from_nothing_exact_commands():
    wanted = wanted_links(SPEC, "10.247.0.11", ["10.247.0.10", "10.247.0.12"], dhcp=False)
    steps = plan_links(dict(bridge=None, vxlan=None, peers=[]), wanted)
    assert [argv for _text, argv in steps] == [
        ["ip", "link", "add", "name", "vcbr-tnet", "mtu", "1450", "type", "bridge"],
        ["ip", "link", "add", "name", "vcvx-tnet", "mtu", "1450", "type", "vxlan", "id", "100", "dstport", "4789", "local", "10.247.0.11", "nolearning"],
        ["ip", "link", "set", "dev", "vcvx-tnet", "master", "vcbr-tnet"],
        ["ip", "link", "set", "dev", "vcvx-tnet", "up"],
        ["ip", "link", "set", "dev", "vcbr-tnet", "addrgenmode", "none"],
        ["ip", "link", "set", "dev", "vcbr-tnet", "up"],
        ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vcvx-tnet", "dst", "10.247.0.10"],
        ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vcvx-tnet", "dst", "10.247.0.12"],
    ]
    dhcp = wanted_links(SPEC, "10.247.0.10", [], dhcp=True)
    assert plan_links(dict(bridge=None, vxlan=None, peers=[]), dhcp)[-1][1] == ["ip", "addr", "add", "10.100.0.1/24", "dev", "vcbr-tnet"]


def recorded_state(host_answers=None):
    answers = {
        "ip -j -d link show dev vcbr-tnet": (0, LINK_BRIDGE, ""),
        "ip -j addr show dev vcbr-tnet": (0, ADDR_BRIDGE, ""),
        "ip -j -d link show dev vcvx-tnet": (0, LINK_VXLAN, ""),
        "bridge -j fdb show dev vcvx-tnet": (0, FDB_VXLAN, ""),
    }
    answers.update(host_answers or {})
    return net.read_links(Host(Recorder(answers)), "tnet")


def test_recorded_state_is_complete_for_its_options_but_ipv6():
    current = recorded_state()
    assert current == dict(
        bridge=dict(name="vcbr-tnet", mtu=1450, up=True, addresses=["10.100.0.1/24"], addrgenmode="eui64", ipv6_addresses=["fe80::784d:fdff:fe22:f085/64"]),
        vxlan=dict(name="vcvx-tnet", vni=100, local="127.0.0.1", port=4789, learning=False, mtu=1450, up=True, master="vcbr-tnet"),
        peers=["10.247.0.11", "10.247.0.12"],
    )
    # recorded before the bridge lost its IPv6: only that is left to do
    assert [argv for _t, argv in plan_links(current, wanted_links(SPEC, "127.0.0.1", ["10.247.0.11", "10.247.0.12"], dhcp=True))] == [
        ["ip", "link", "set", "dev", "vcbr-tnet", "addrgenmode", "none"],
        ["ip", "-6", "addr", "flush", "dev", "vcbr-tnet"],
    ]
    done = dict(current, bridge=dict(current["bridge"], addrgenmode="none", ipv6_addresses=[]))
    assert plan_links(done, wanted_links(SPEC, "127.0.0.1", ["10.247.0.11", "10.247.0.12"], dhcp=True)) == []
    # a kernel without IPv6 (no inet6_addr_gen_mode) is left as it is
    no_v6 = dict(current, bridge=dict(current["bridge"], addrgenmode=None, ipv6_addresses=[]))
    assert plan_links(no_v6, wanted_links(SPEC, "127.0.0.1", ["10.247.0.11", "10.247.0.12"], dhcp=True, ipv6=False)) == []


def test_plan_repairs_peers_address_and_mtu():
    current = recorded_state()
    current["bridge"].update(addrgenmode="none", ipv6_addresses=[])
    wanted = wanted_links(make_spec("tnet", "10.100.0.0/24", 100, mtu=1400), "127.0.0.1", ["10.247.0.12", "10.247.0.13"], dhcp=False)
    assert [argv for _text, argv in plan_links(current, wanted)] == [
        ["ip", "link", "set", "dev", "vcbr-tnet", "mtu", "1400"],
        ["ip", "link", "set", "dev", "vcvx-tnet", "mtu", "1400"],
        ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vcvx-tnet", "dst", "10.247.0.13"],
        ["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vcvx-tnet", "dst", "10.247.0.11"],
        ["ip", "addr", "del", "10.100.0.1/24", "dev", "vcbr-tnet"],
    ]


def test_plan_remakes_a_vxlan_with_another_vni():
    current = recorded_state()
    wanted = wanted_links(make_spec("tnet", "10.100.0.0/24", 200), "127.0.0.1", ["10.247.0.11"], dhcp=True)
    steps = plan_links(current, wanted)
    assert steps[0] == ("delete vcvx-tnet to make it again (vni 100)", ["ip", "link", "del", "dev", "vcvx-tnet"])
    assert [argv[:3] for _t, argv in steps[1:]] == [
        ["ip", "link", "add"],
        ["ip", "link", "set"],
        ["ip", "link", "set"],
        ["ip", "link", "set"],
        ["ip", "-6", "addr"],
        ["bridge", "fdb", "append"],
    ]
    assert "id 200" in " ".join(steps[1][1])


def test_plan_absent_and_wrong_device_kind():
    assert [argv for _t, argv in plan_links_absent(recorded_state())] == [["ip", "link", "del", "dev", "vcvx-tnet"], ["ip", "link", "del", "dev", "vcbr-tnet"]]
    assert plan_links_absent(dict(bridge=None, vxlan=None, peers=[])) == []
    with pytest.raises(NetworkError, match="vcvx-tnet exists on this host but is a bridge device"):
        recorded_state({"ip -j -d link show dev vcvx-tnet": (0, LINK_BRIDGE, "")})


def test_tools_paths_are_used():
    tools = Tools(ip="/usr/sbin/ip", bridge="/usr/sbin/bridge")
    steps = plan_links(dict(bridge=None, vxlan=None, peers=[]), wanted_links(SPEC, "10.247.0.11", ["10.247.0.12"], False), tools)
    assert {argv[0] for _t, argv in steps} == {"/usr/sbin/ip", "/usr/sbin/bridge"}


# ---------------------------------------------------------------------------
# The backends, on a recorded host (no DHCP server involved) and on files
# ---------------------------------------------------------------------------


def test_present_check_mode_on_a_compute_host_changes_nothing(tmp_path):
    rec = Recorder(empty_host_answers())
    out = net.network_present(Host(rec), SPEC, "10.247.0.11", ["10.247.0.10", "10.247.0.11", "10.247.0.12"], False, str(tmp_path), check_mode=True)
    assert out.changed and out.changes[0] == "create bridge vcbr-tnet (mtu 1450)"
    assert out.before["bridge"] is None and out.after["peers"] == ["10.247.0.10", "10.247.0.12"]
    assert rec.calls and all("show" in call for call in rec.calls)  # reads only


def test_present_refuses_a_vni_another_network_uses_before_changing_anything(tmp_path):
    answers = empty_host_answers()
    answers["ip -j -d link show type vxlan"] = (
        0,
        json.dumps([{"ifname": "vcvx-private", "linkinfo": {"info_kind": "vxlan", "info_data": {"id": SPEC.vni}}}]),
        "",
    )
    rec = Recorder(answers)
    with pytest.raises(NetworkError, match=f"vni {SPEC.vni} is already used on this host by vcvx-private: give network tnet a VNI of its own"):
        net.network_present(Host(rec), SPEC, "10.247.0.11", ["10.247.0.10"], False, str(tmp_path), check_mode=False)
    assert all("show" in call for call in rec.calls)  # nothing was made


@pytest.mark.parametrize(
    "local_ip, subnet, message",
    [
        ("10.247.0.99", "10.100.0.0/24", "local_ip 10.247.0.99 is not an address of this host"),
        ("10.247.0.11", "10.247.0.0/24", "overlaps the address 10.247.0.11/24 of eth0"),
    ],
)
def test_present_refuses_before_changing_anything(tmp_path, local_ip, subnet, message):
    rec = Recorder(empty_host_answers())
    with pytest.raises(NetworkError, match=message):
        net.network_present(Host(rec), make_spec("tnet", subnet, 100), local_ip, [], False, str(tmp_path))
    assert rec.calls and all("show" in call for call in rec.calls)  # it only looked


def network_folder(tmp_path, spec=SPEC):
    paths = NetworkPaths.of(str(tmp_path), spec.name)
    os.makedirs(paths.dir)
    store = NetworkStore(paths, spec.name, "ctl")
    store.write_spec(spec)
    store.write_ports({})
    return paths, store


def test_ports_on_files_idempotent_release_reuse(tmp_path):
    paths, store = network_folder(tmp_path)
    host = Host(Recorder({}), name="ctl")  # dnsmasq not running: no command at all
    check = net.port_present(host, "tnet", str(tmp_path), "p1", hostname="g1", check_mode=True)
    assert check.changed and check.result["port"]["ip"] == "10.100.0.2"
    assert store.read_ports() == {} and "dhcp" not in check.result
    first = net.port_present(host, "tnet", str(tmp_path), "p1", hostname="g1")
    assert (first.result["port"]["ip"], first.result["port"]["mac"]) == (check.result["port"]["ip"], check.result["port"]["mac"])
    assert first.result["dhcp"] == "not running"
    again = net.port_present(host, "tnet", str(tmp_path), "p1", hostname="g1")
    assert not again.changed and again.result["port"] == first.result["port"]
    second = net.port_present(host, "tnet", str(tmp_path), "p2")
    assert second.result["port"]["ip"] == "10.100.0.3"
    with open(paths.hosts, encoding="utf-8") as f:
        assert f.read() == f"{first.result['port']['mac']},10.100.0.2,g1\n{second.result['port']['mac']},10.100.0.3\n"
    # a lease of p1 is left in the lease file; releasing p1 drops it (dnsmasq is not running)
    with open(paths.leases, "w", encoding="utf-8") as f:
        f.write(f"1795326250 {first.result['port']['mac']} 10.100.0.2 g1 *\n")
    gone = net.port_absent(host, "tnet", str(tmp_path), "p1", check_mode=True)
    assert gone.changed and "p1" in store.read_ports()
    gone = net.port_absent(host, "tnet", str(tmp_path), "p1")
    assert gone.result["released"]["ip"] == "10.100.0.2" and "p1" not in store.read_ports()
    assert open(paths.leases, encoding="utf-8").read() == ""
    assert not net.port_absent(host, "tnet", str(tmp_path), "p1").changed
    third = net.port_present(host, "tnet", str(tmp_path), "p3")
    assert third.result["port"]["ip"] == "10.100.0.2" and third.result["port"]["mac"] != first.result["port"]["mac"]


def test_the_ports_of_a_request_in_one_call(tmp_path):
    paths, store = network_folder(tmp_path)
    rec = Recorder({})
    host = Host(rec, name="ctl")
    net.port_present(host, "tnet", str(tmp_path), "p0")
    wanted = [dict(port_id="p1", hostname="g1", instance_uuid=None), dict(port_id="p0"), dict(port_id="p2", ip="10.100.0.9")]
    check = net.ports_present(host, "tnet", str(tmp_path), wanted, check_mode=True)
    assert check.changes == [
        f"reserve {check.result['ports'][0]['mac']} 10.100.0.3 for port p1",
        f"reserve {check.result['ports'][2]['mac']} 10.100.0.9 for port p2",
    ]
    assert sorted(store.read_ports()) == ["p0"]
    out = net.ports_present(host, "tnet", str(tmp_path), wanted)
    assert [p["ip"] for p in out.result["ports"]] == ["10.100.0.3", "10.100.0.2", "10.100.0.9"]
    assert [p["mac"] for p in out.result["ports"]] == [p["mac"] for p in check.result["ports"]]
    assert {p["bridge"] for p in out.result["ports"]} == {"vcbr-tnet"} and out.before["ports"][0] is None
    assert sorted(store.read_ports()) == ["p0", "p1", "p2"] and open(paths.hosts, encoding="utf-8").read().count("\n") == 3
    assert not net.ports_present(host, "tnet", str(tmp_path), wanted).changed
    gone = net.ports_absent(host, "tnet", str(tmp_path), ["p1", "p9", "p2"])
    assert gone.changes == [f"release {out.result['ports'][0]['mac']} 10.100.0.3 of port p1", f"release {out.result['ports'][2]['mac']} 10.100.0.9 of port p2"]
    assert gone.result["released"][1] is None and sorted(store.read_ports()) == ["p0"]
    assert not net.ports_absent(host, "tnet", str(tmp_path), ["p1", "p2"]).changed


def test_hosts_file_lost_between_the_two_writes_is_made_again(tmp_path):
    paths, _store = network_folder(tmp_path)
    host = Host(Recorder({}), name="ctl")
    net.port_present(host, "tnet", str(tmp_path), "p1")
    os.unlink(paths.hosts)  # as if the run died after ports.json
    out = net.port_present(host, "tnet", str(tmp_path), "p1")
    assert out.changes == [f"write {paths.hosts} again from {paths.ports}"]
    assert open(paths.hosts, encoding="utf-8").read().startswith(out.result["port"]["mac"] + ",10.100.0.2")


def test_port_on_a_host_without_the_network(tmp_path):
    with pytest.raises(NetworkError, match="network tnet has no DHCP server on this host"):
        net.port_present(Host(Recorder({}), name="ctl"), "tnet", str(tmp_path), "p1")


def test_absent_refuses_while_ports_exist(tmp_path):
    _paths, store = network_folder(tmp_path)
    store.write_ports(ports_of(("p1", "fa:16:3e:00:00:01", "10.100.0.2")))
    rec = Recorder({"ip -j -d link show dev vcbr-tnet": (1, "", NO_DEVICE), "ip -j -d link show dev vcvx-tnet": (1, "", NO_DEVICE)})
    with pytest.raises(NetworkError, match=r"still has 1 port\(s\) \(p1\)"):
        net.network_absent(Host(rec, name="ctl"), "tnet", str(tmp_path))


def test_absent_refuses_while_instances_are_attached(tmp_path):
    taps = json.loads(LINKS_MASTER) + [{"ifindex": 9, "ifname": "vnet0", "master": "vcbr-tnet"}]
    rec = Recorder(
        {
            "ip -j -d link show dev vcbr-tnet": (0, LINK_BRIDGE, ""),
            "ip -j addr show dev vcbr-tnet": (0, ADDR_BRIDGE, ""),
            "ip -j -d link show dev vcvx-tnet": (0, LINK_VXLAN, ""),
            "bridge -j fdb show dev vcvx-tnet": (0, FDB_VXLAN, ""),
            "ip -j link show master vcbr-tnet": (0, json.dumps(taps), ""),
        }
    )
    with pytest.raises(NetworkError, match="vnet0 are attached to vcbr-tnet"):
        net.network_absent(Host(rec), "tnet", str(tmp_path))
    assert not any("del" in call for call in rec.calls)


def test_a_folder_of_another_host_is_never_touched(tmp_path):
    """The lab's hosts (or hosts on shared storage) see one another's folders: only the owner uses its own."""
    paths, store = network_folder(tmp_path)
    store.write_ports(ports_of(("p1", "fa:16:3e:00:00:01", "10.100.0.2")))
    with open(paths.network, encoding="utf-8") as f:
        assert json.load(f)["host"] == "ctl"
    node = Host(Recorder({"ip -j -d link show dev vcbr-tnet": (1, "", NO_DEVICE), "ip -j -d link show dev vcvx-tnet": (1, "", NO_DEVICE)}), name="node1")
    out = net.network_absent(node, "tnet", str(tmp_path))
    assert out.changes == [] and os.path.exists(paths.ports)
    with pytest.raises(NetworkError, match="belongs to host ctl, not to this host node1"):
        net.port_present(node, "tnet", str(tmp_path), "p2")
    with pytest.raises(NetworkError, match="belongs to host ctl"):
        net.port_absent(node, "tnet", str(tmp_path), "p1")
    assert sorted(store.read_ports()) == ["p1"]


def test_a_second_dhcp_server_for_a_network_is_refused(tmp_path):
    network_folder(tmp_path)  # owned by ctl
    answers = {
        "ip -j -4 addr show": (0, ADDR_ALL, ""),
        "ip -j -4 route show": (0, ROUTES, ""),
        "ip -j -d link show dev vcbr-tnet": (0, LINK_BRIDGE, ""),
        "ip -j addr show dev vcbr-tnet": (0, ADDR_BRIDGE, ""),
        "ip -j -d link show dev vcvx-tnet": (0, LINK_VXLAN, ""),
        "bridge -j fdb show dev vcvx-tnet": (0, FDB_VXLAN, ""),
        "ip -j -d link show type vxlan": (0, LINK_VXLAN, ""),
    }
    with pytest.raises(NetworkError, match="belongs to host ctl, not to this host node1: the DHCP server of a network runs on one host"):
        net.network_present(Host(Recorder(answers), name="node1"), SPEC, "127.0.0.1", ["10.247.0.11", "10.247.0.12"], True, str(tmp_path), check_mode=True)


def test_a_folder_without_owner_is_left_alone_and_removal_names_the_owner_to_the_end(tmp_path, monkeypatch):
    paths, store = network_folder(tmp_path)
    links_absent = {"ip -j -d link show dev vcbr-tnet": (1, "", NO_DEVICE), "ip -j -d link show dev vcvx-tnet": (1, "", NO_DEVICE)}
    # while the owner removes the folder, others see it owned until it is empty
    seen = []
    real_unlink = os.unlink

    def watch(path):
        seen.append((os.path.basename(path), store.owner()))
        real_unlink(path)

    monkeypatch.setattr(net.os, "unlink", watch)
    out = net.network_absent(Host(Recorder(dict(links_absent)), name="ctl"), "tnet", str(tmp_path))
    monkeypatch.undo()
    assert out.changes == [f"remove folder {paths.dir}"] and not os.path.exists(paths.dir)
    assert seen[-1] == ("network.json", "ctl") and all(owner == "ctl" for _name, owner in seen)
    # a folder without network.json (half made, or half removed) is nobody's: absent leaves it
    os.makedirs(paths.dir)
    with open(paths.ports, "w", encoding="utf-8") as f:
        f.write("{}")
    out = net.network_absent(Host(Recorder(dict(links_absent)), name="ctl"), "tnet", str(tmp_path))
    assert out.changes == [] and os.path.exists(paths.ports)
