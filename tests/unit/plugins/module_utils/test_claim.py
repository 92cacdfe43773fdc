# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The compute host's claim: the fit test and the claims file under its lock."""

from __future__ import annotations

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils._claim import ClaimError, claim, pending, read_claims, release, shortfalls
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import host_state

GIB = 1024**3


def figures(instances=(), ram=4096, vcpus=2, disk_gb=20, ratios=(4.0, 1.0, 1.0)):
    return host_state(
        vcpus_total=vcpus,
        memory_mb_total=ram,
        disk_total_bytes=disk_gb * GIB,
        disk_free_bytes=disk_gb * GIB,
        instances=list(instances),
        cpu_allocation_ratio=ratios[0],
        ram_allocation_ratio=ratios[1],
        disk_allocation_ratio=ratios[2],
        reserved_host_memory_mb=512,
        reserved_host_disk_mb=0,
    )


def flavor(vcpus=1, ram_mb=512, disk_gb=1, **extra):
    return dict(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb, **extra)


@pytest.mark.parametrize(
    "state, wanted, reasons",
    [
        (figures(), flavor(), []),
        (figures(), flavor(ram_mb=3584), []),  # exactly the usable RAM
        (figures(), flavor(ram_mb=3585), ["node has 3584 MB of usable RAM in all, the flavor asks 3585 MB"]),
        (figures([dict(flavor=flavor(ram_mb=3000))]), flavor(ram_mb=1024), ["node has 584 MB of RAM free (ratio 1), the flavor asks 1024 MB"]),
        (figures([dict(flavor=flavor(ram_mb=3000))], ratios=(4.0, 1.5, 1.0)), flavor(ram_mb=1024), []),
        (figures(), flavor(vcpus=3), ["node has 2 vCPUs in all, the flavor asks 3"]),  # never beyond the physical total
        (figures([dict(flavor=flavor(vcpus=2, ram_mb=64))] * 3), flavor(vcpus=2, ram_mb=64), []),  # 6 of 8 used: 2 left
        (figures([dict(flavor=flavor(vcpus=2, ram_mb=64))] * 4), flavor(vcpus=1, ram_mb=64), ["node has 0 vCPUs free (ratio 4), the flavor asks 1"]),
        (figures(), flavor(disk_gb=21), ["node has 20480 MB of disk in all, the flavor asks 21504 MB"]),
        (figures(), flavor(disk_gb=19, swap_mb=2048), ["node has 20480 MB of disk in all, the flavor asks 21504 MB"]),
        (figures([dict(flavor=flavor(disk_gb=15))]), flavor(disk_gb=5, ephemeral_gb=1), ["node has 5120 MB of disk free (ratio 1), the flavor asks 6144 MB"]),
        (figures([dict(flavor=flavor(disk_gb=15), vm_state="shelved_offloaded")]), flavor(disk_gb=5, ephemeral_gb=1), []),
    ],
)
def test_shortfalls(state, wanted, reasons):
    assert shortfalls(state, wanted, "node") == reasons


def test_claims_count_until_the_domain_exists_and_the_lock_file_records_them(tmp_path):
    path = str(tmp_path / "claims.json")
    domains = []

    def read_host(extra):
        return figures(list(domains) + list(extra)), {d["uuid"] for d in domains}

    big = flavor(ram_mb=2000)
    assert claim(path, "u1", big, "node", read_host)["changed"] is True
    assert claim(path, "u1", big, "node", read_host)["changed"] is False  # idempotent
    with pytest.raises(ClaimError, match=r"claim for instance u2 on node failed: node has 1584 MB of RAM free"):
        claim(path, "u2", big, "node", read_host)  # u1's pending claim counts
    assert sorted(read_claims(path)) == ["u1"]
    # check mode reports the claim and writes nothing
    assert claim(path, "u3", flavor(ram_mb=100), "node", read_host, check_mode=True)["changed"] is True
    assert sorted(read_claims(path)) == ["u1"]
    # once u1 is a domain its claim is not counted twice
    domains.append(dict(uuid="u1", flavor=big, vm_state="building", task_state="spawning"))
    assert pending(read_claims(path), {"u1"}) == []
    assert release(path, "u1") is True and release(path, "u1") is False
    assert claim(path, "u2", flavor(ram_mb=1500), "node", read_host)["changed"] is True


def test_a_broken_claims_file_is_reported(tmp_path):
    path = tmp_path / "claims.json"
    path.write_text("[1, 2]")
    with pytest.raises(ClaimError, match="does not hold a mapping"):
        read_claims(str(path))
    path.write_text("{not json")
    with pytest.raises(ClaimError, match="cannot be read"):
        read_claims(str(path))
