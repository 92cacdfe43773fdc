# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lab's planning: names, addresses and the validation of its options."""

from __future__ import annotations

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils._lab import Lab, LabError, plan, with_line


def test_plan_names_and_addresses():
    lab = plan("vclab", "10.251.0.0/24", 3, ["node3"], "/var/lib/x", "/run/x")
    assert lab.bridge == "vclab-br0" and lab.bridge_address == "10.251.0.1"
    assert [(h.name, h.role, h.address, h.shared_storage, h.netns, h.veth) for h in lab.hosts] == [
        ("controller", "controller", "10.251.0.10", False, "vclab-controller", "vclab-ctl"),
        ("node1", "compute", "10.251.0.11", True, "vclab-node1", "vclab-node1"),
        ("node2", "compute", "10.251.0.12", True, "vclab-node2", "vclab-node2"),
        ("node3", "compute", "10.251.0.13", False, "vclab-node3", "vclab-node3"),
    ]
    assert lab.instances_path == "/var/lib/x/instances" and lab.shared_instances == "/var/lib/x/shared/instances"
    assert max(len(h.veth) for h in plan("abcdef", "10.0.0.0/24", 16, [], "/a/b", "/c/d").hosts) <= 15


@pytest.mark.parametrize(
    "args, message",
    [
        (("Lab", "10.251.0.0/24", 3, [], "/a/b", "/c/d"), "lab name 'Lab' is not valid"),
        (("toolongname", "10.251.0.0/24", 3, [], "/a/b", "/c/d"), "is not valid"),
        (("vc", "10.251.0.0/24", 0, [], "/a/b", "/c/d"), "lab_hosts must be a whole number from 1 to 16, got 0"),
        (("vc", "10.251.0.0/24", 17, [], "/a/b", "/c/d"), "from 1 to 16, got 17"),
        (("vc", "10.251.0.1/24", 3, [], "/a/b", "/c/d"), "is not an IPv4 network in CIDR form"),
        (("vc", "fd00::/64", 3, [], "/a/b", "/c/d"), "is not an IPv4 network"),
        (("vc", "192.0.2.0/24", 3, [], "/a/b", "/c/d"), "192.0.2.0/24 is not a private range"),
        (("vc", "8.8.8.0/24", 3, [], "/a/b", "/c/d"), "is not a private range"),
        (("vc", "10.9.9.0/28", 3, [], "/a/b", "/c/d"), "has room for 16 addresses, 3 hosts need at least 19"),
        (("vc", "10.9.9.0/24", 2, ["node3"], "/a/b", "/c/d"), "lab_non_shared names hosts that the lab does not have: node3"),
        (("vc", "10.9.9.0/24", 2, [], "relative", "/c/d"), "must be an absolute path"),
        (("vc", "10.9.9.0/24", 2, [], "/var/lib", "/c/d"), "must be an absolute path of a folder of its own"),
    ],
)
def test_plan_refuses_bad_options(args, message):
    with pytest.raises(LabError, match=None) as err:
        plan(*args)
    assert message in str(err.value)


# Recorded on a machine with a lab bridge vc-br0 (ip -j -4 addr show, ip -j -4 route show; iproute2 6.1).
ADDR = (
    '[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,'
    '"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295}]},'
    '{"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"192.0.2.2",'
    '"prefixlen":24,"broadcast":"192.0.2.255","scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295}]},'
    '{"ifindex":7,"ifname":"vc-br0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"10.9.9.1",'
    '"prefixlen":24,"scope":"global","label":"vc-br0","valid_life_time":4294967295,"preferred_life_time":4294967295}]}]'
)
ROUTES = (
    '[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},'
    '{"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},'
    '{"dst":"10.60.0.0/16","gateway":"192.0.2.7","dev":"eth0","flags":[]},'
    '{"dst":"10.9.9.0/24","dev":"vc-br0","protocol":"kernel","scope":"link","prefsrc":"10.9.9.1","flags":[]}]'
)


def fake_ip(argv, data=None):
    """Recorded output of `ip -j -4 addr show` and `ip -j -4 route show` on a machine."""
    if argv[1:] == ["-j", "-4", "addr", "show"]:
        return 0, ADDR, ""
    if argv[1:] == ["-j", "-4", "route", "show"]:
        return 0, ROUTES, ""
    raise AssertionError(f"unexpected command {argv}")


@pytest.mark.parametrize(
    "name, network, message",
    [
        ("vc", "10.9.9.0/24", None),  # the lab's own bridge holds it: that is no conflict
        ("other", "10.9.9.0/24", "already in use on this machine (vc-br0 has 10.9.9.1/24)"),
        ("vc", "192.168.0.0/16", None),
        ("vc", "10.60.4.0/24", "overlaps the route '10.60.0.0/16 via 192.0.2.7 dev eth0'"),
        ("vc", "10.0.0.0/8", "overlaps the route"),
    ],
)
def test_address_range_in_use(name, network, message):
    lab = Lab(plan(name, network, 2, [], "/a/b", "/c/d"), fake_ip)
    lab.ip = "ip"
    if message is None:
        lab._check_range_free()  # pylint: disable=protected-access
    else:
        with pytest.raises(LabError) as err:
            lab._check_range_free()  # pylint: disable=protected-access
        assert message in str(err.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "ssh-ed25519 AAAA lab\n"),
        ("ssh-ed25519 BBBB root@node2\n", "ssh-ed25519 BBBB root@node2\nssh-ed25519 AAAA lab\n"),
        ("ssh-ed25519 BBBB root@node2", "ssh-ed25519 BBBB root@node2\nssh-ed25519 AAAA lab\n"),
        ("ssh-ed25519 AAAA lab\nssh-ed25519 BBBB root@node2\n", "ssh-ed25519 AAAA lab\nssh-ed25519 BBBB root@node2\n"),
    ],
)
def test_the_lab_key_is_added_and_other_keys_stay(content, expected):
    assert with_line(content, "ssh-ed25519 AAAA lab\n") == expected
