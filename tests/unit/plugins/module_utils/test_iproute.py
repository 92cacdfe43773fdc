# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""iproute2, the one runner: recorded output in, exact commands out (the parsers' own cases are in test_network.py)."""

from __future__ import annotations

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils._iproute import Iproute, IprouteError, parse_netns_names, route_text
from ansible_collections.virtcloud.compute.plugins.module_utils._lab import LabError
from ansible_collections.virtcloud.compute.plugins.module_utils._network import NetworkError

NO_DEVICE = 'Device "vc-br0" does not exist.\n'


class Recorder:
    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append(" ".join(argv))
        return self.answers.get(" ".join(argv), (0, "", ""))


def test_commands_with_and_without_a_namespace():
    rec = Recorder({})
    ip = Iproute(rec, ip="/usr/sbin/ip")
    ip.run(["link", "set", "lo", "up"], "lab-node1")
    ip.run(["link", "set", "vc-br0", "up"])
    ip.fdb_peers("vcvx-x")
    assert rec.calls == ["/usr/sbin/ip -n lab-node1 link set lo up", "/usr/sbin/ip link set vc-br0 up", "bridge -j fdb show dev vcvx-x"]


@pytest.mark.parametrize("error", [NetworkError, LabError, IprouteError])
def test_a_failed_command_is_the_callers_error(error):
    ip = Iproute(Recorder({"ip netns add x": (1, "", "Cannot create namespace file: File exists\n")}), error=error)
    with pytest.raises(error, match=r"^ip netns add x failed \(rc=1\): Cannot create namespace file: File exists$"):
        ip.run(["netns", "add", "x"])


def test_a_missing_link_is_none_and_other_failures_raise():
    ip = Iproute(Recorder({"ip -j -d link show dev vc-br0": (1, "", NO_DEVICE), "ip -j -d link show dev bad": (2, "", "Permission denied")}), error=LabError)
    assert ip.link("vc-br0") is None
    with pytest.raises(LabError, match="ip link show dev bad failed"):
        ip.link("bad")


def test_namespaces_pids_and_routes():
    ip = Iproute(
        Recorder({"ip -j netns list": (0, '[{"name":"lab-node1","id":3},{"name":"lab-controller"}]', ""), "ip netns pids lab-node1": (0, "12\n345\n", "")})
    )
    assert ip.netns_names() == ["lab-node1", "lab-controller"]
    assert ip.netns_pids("lab-node1") == [12, 345]
    assert parse_netns_names("") == []
    assert route_text({"dst": "10.60.0.0/16", "gateway": "192.0.2.7", "dev": "eth0"}) == "10.60.0.0/16 via 192.0.2.7 dev eth0"
    assert route_text({"dst": "10.9.9.0/24", "dev": "vc-br0"}) == "10.9.9.0/24 dev vc-br0"
    with pytest.raises(IprouteError, match="expected a list"):
        parse_netns_names("{}")
