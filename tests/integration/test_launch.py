# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Launch with the scheduler on the lab, checked by what the guests report; then terminate."""

from __future__ import annotations

import json
import os
import re

import pytest

from harness import console, delete, launch, launched, run_playbook


def test_five_launches_spread_over_three_hosts_and_boot_with_their_addresses(cloud):
    result = launch(cloud, launch_name="spread", launch_count=5, launch_weighers=["RAMWeigher"])
    assert result.rc == 0, result.stdout[-4000:]
    insts = launched(result)
    hosts = sorted(i["host"] for i in insts)
    assert len(insts) == 5 and sorted(set(hosts)) == ["node1", "node2", "node3"], hosts
    assert max(hosts.count(h) for h in set(hosts)) == 2
    try:
        for inst in insts:
            con = console(cloud, inst)
            con.wait("BOOT", timeout=180, pattern=r"^count=1 ")
            _i, ip = con.wait("IP", timeout=120, pattern=r"^eth0 ")
            assert ip.split()[1] == f"{inst['ip']}/24", (inst, ip)
            _i, meta = con.wait("METADATA", timeout=5)
            assert json.loads(meta)["name"] == inst["name"]
        again = launch(cloud, launch_name="spread", launch_count=5, launch_weighers=["RAMWeigher"])
        assert again.rc == 0 and again.changed == 0, again.stdout[-3000:]
        # info lists every instance across the hosts, and each one's action log with the request id
        info = run_playbook("info.yml", inventory=cloud.inventory)
        assert info.rc == 0, info.stdout[-3000:]
        req = re.search(r'"request_id": "(req-[0-9a-f-]+)"', result.stdout).group(1)
        for inst in insts:
            assert f"{inst['name']} {inst['uuid']} on {inst['host']}: active/-/running, {inst['ip']}" in info.stdout
        assert info.stdout.count(f"create {req} Success") == 5
        # a guest launched in az2 (node3) reaches the guests on node1 and node2 over the instance network
        others = [i for i in insts if i["host"] != "node3"]
        pinger = launch(cloud, launch_name="pinger", launch_availability_zone="az2", launch_meta={"ping": " ".join(i["ip"] for i in others)})
        assert pinger.rc == 0, pinger.stdout[-3000:]
        insts += launched(pinger)
        assert insts[-1]["host"] == "node3"
        con = console(cloud, insts[-1])
        for inst in others:
            con.wait("PING", timeout=150, pattern=r"^{} ok$".format(re.escape(inst["ip"])))
    finally:
        for inst in insts:
            delete(cloud, inst["name"])
    for inst in insts:
        assert not os.path.exists(os.path.join(cloud.instances_dir(inst["host"]), inst["uuid"]))


def test_a_negative_ram_multiplier_stacks(cloud):
    result = launch(cloud, launch_name="stack", launch_count=3, launch_weighers=["RAMWeigher"], launch_weigher_multipliers={"ram_weight_multiplier": -1.0})
    assert result.rc == 0, result.stdout[-4000:]
    insts = launched(result)
    try:
        assert len({i["host"] for i in insts}) == 1, insts
    finally:
        for inst in insts:
            delete(cloud, inst["name"])


def test_anti_affinity_group_of_four_on_three_hosts(cloud):
    made = []
    try:
        for n in range(1, 4):
            result = launch(cloud, launch_name=f"anti-{n}", launch_group="web-anti")
            assert result.rc == 0, result.stdout[-3000:]
            made += launched(result)
        assert sorted(i["host"] for i in made) == ["node1", "node2", "node3"]
        fourth = launch(cloud, launch_name="anti-4", launch_group="web-anti")
        assert fourth.rc != 0 and "ServerGroupAntiAffinityFilter" in fourth.stdout, fourth.stdout[-3000:]
    finally:
        for inst in made:
            delete(cloud, inst["name"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (dict(launch_name="huge", launch_flavor="m1.huge"), "RamFilter"),
        (dict(launch_name="bad name!"), "Bad launch request"),
        (dict(launch_name="nosuchflavor", launch_flavor="m9.none"), "Bad launch request"),
    ],
)
def test_refused_launches_fail_clearly_and_leave_nothing(cloud, extra, message):
    result = launch(cloud, **extra)
    assert result.rc != 0 and message in result.stdout, result.stdout[-3000:]
    for host in ("node1", "node2", "node3"):
        assert cloud.ssh(host, "virsh list --all --name").split() == []


@pytest.mark.parametrize(
    "extra, host",
    [
        (dict(launch_name="in-az2", launch_availability_zone="az2"), "node3"),
        (dict(launch_name="on-ssd", launch_flavor="m1.ssd"), "node1"),
    ],
)
def test_zone_and_extra_specs_place_the_instance(cloud, extra, host):
    result = launch(cloud, **extra)
    assert result.rc == 0, result.stdout[-3000:]
    insts = launched(result)
    try:
        assert [i["host"] for i in insts] == [host]
    finally:
        for inst in insts:
            delete(cloud, inst["name"])


def test_a_host_that_fails_its_spawn_is_left_clean_and_the_next_host_takes_the_instance(cloud):
    """node1 loses its trust in the image host (its known_hosts emptied): the image fetch fails there."""
    # an empty image cache (node1 and node2 share it), so that node1 must fetch the image
    cloud.ssh("node1", f"rm -f {cloud.instances_path}/_base/*")
    cloud.ssh("node1", "cp /root/.ssh/known_hosts /root/.ssh/known_hosts.saved && : > /root/.ssh/known_hosts")
    try:
        # with equal hosts the RAM weigher's tie goes to node1 first
        result = launch(cloud, launch_name="retry", launch_weighers=["RAMWeigher"], launch_weigher_multipliers={"ram_weight_multiplier": 1.0})
        assert result.rc == 0, result.stdout[-4000:]
        insts = launched(result)
        assert [i["host"] for i in insts] == ["node2"], insts
        assert "Host key verification failed" in result.stdout
        uuid = insts[0]["uuid"]
        # node1 is left clean: no domain, no claim, no instance folder of its own
        assert cloud.ssh("node1", "virsh list --all --name").split() == []
        assert uuid not in cloud.ssh("node1", "cat /var/lib/virtcloud/claims.json 2>/dev/null || true")
        assert cloud.ssh("node2", "cat /var/lib/virtcloud/claims.json 2>/dev/null || true").count(uuid) == 0
        # one reservation only: the failed attempt's port was released
        ports = json.loads(cloud.ssh("controller", "cat /var/lib/virtcloud/networks/private/ports.json"))["ports"]
        assert [p["instance_uuid"] for p in ports.values()].count(uuid) == 1, ports
        delete(cloud, "retry")
    finally:
        cloud.ssh("node1", "mv /root/.ssh/known_hosts.saved /root/.ssh/known_hosts")
