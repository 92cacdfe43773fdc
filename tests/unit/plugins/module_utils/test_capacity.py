# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one capacity rule: the claim and the scheduler's filters give the same verdict."""

from __future__ import annotations

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils import _capacity as cap
from ansible_collections.virtcloud.compute.plugins.module_utils._claim import ClaimError, claim
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import host_state
from ansible_collections.virtcloud.compute.plugins.plugin_utils import _scheduler as sched

GIB = 1024**3
CAPACITY_FILTERS = ["RamFilter", "DiskFilter", "CoreFilter"]  # the order of cap.fits


def figures(instances=(), ram=4096, vcpus=2, disk_gb=20, ratios=(4.0, 1.0, 1.0), free_gb=None, over_gb=0, other_domains=()):
    """A host as compute_facts counts it (host_figures -> host_state)."""
    return host_state(
        vcpus_total=vcpus,
        memory_mb_total=ram,
        disk_total_bytes=disk_gb * GIB,
        disk_free_bytes=(disk_gb if free_gb is None else free_gb) * GIB,
        disk_over_committed_bytes=over_gb * GIB,
        instances=list(instances),
        other_domains=list(other_domains),
        cpu_allocation_ratio=ratios[0],
        ram_allocation_ratio=ratios[1],
        disk_allocation_ratio=ratios[2],
        reserved_host_memory_mb=512,
        reserved_host_disk_mb=0,
    )


def flavor(vcpus=1, ram_mb=512, disk_gb=1, **extra):
    return dict(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb, **extra)


PHYSICAL = "(an instance never overcommits against one host's physical total)"
# The 100 GiB filesystem of issue 7 with 80 GiB of qcow2 over-commit (a foreign domain's overlay).
OVERCOMMITTED = dict(disk_gb=100, ram=65536, vcpus=8, over_gb=80, other_domains=[dict(vcpus=1, memory_mb=512)])

CASES = [
    (figures(), flavor(), []),
    (figures(), flavor(ram_mb=3584), []),  # exactly the usable RAM
    (figures(), flavor(ram_mb=3585), [f"RAM short by 1 MB: node has 3584 MB RAM in total, 3585 MB requested {PHYSICAL}"]),
    (
        figures([dict(flavor=flavor(ram_mb=3000))]),
        flavor(ram_mb=1024),
        ["RAM short by 440 MB: node has 584 MB usable, 1024 MB requested (3584 MB x 1 ratio, 584 MB free)"],
    ),
    (figures([dict(flavor=flavor(ram_mb=3000))], ratios=(4.0, 1.5, 1.0)), flavor(ram_mb=1024), []),
    (figures(), flavor(vcpus=3), [f"vCPUs short by 1: node has 2 physical vcpus, 3 requested {PHYSICAL}"]),  # never beyond the physical total
    (figures([dict(flavor=flavor(vcpus=2, ram_mb=64))] * 3), flavor(vcpus=2, ram_mb=64), []),  # 6 of 8 used: 2 left
    (
        figures([dict(flavor=flavor(vcpus=2, ram_mb=64))] * 4),
        flavor(vcpus=1, ram_mb=64),
        ["vCPUs short by 1: node has 0 vcpus free (2 x 4 ratio - 8 used), 1 requested"],
    ),
    (figures(), flavor(disk_gb=21), [f"disk short by 1024 MB: node has 20480 MB disk in total, 21504 MB requested {PHYSICAL}"]),
    (figures(), flavor(disk_gb=19, swap_mb=2048), [f"disk short by 1024 MB: node has 20480 MB disk in total, 21504 MB requested {PHYSICAL}"]),
    (
        figures([dict(flavor=flavor(disk_gb=15))]),
        flavor(disk_gb=5, ephemeral_gb=1),
        ["disk short by 1024 MB: node has 5120 MB usable disk, 6144 MB requested (20 GB x 1 ratio, 5120 MB free)"],
    ),
    (figures([dict(flavor=flavor(disk_gb=15), vm_state="shelved_offloaded")]), flavor(disk_gb=5, ephemeral_gb=1), []),
    # qcow2 over-commit: the filesystem is empty by allocation, but the overlays may grow into 80 of its 100 GiB
    (figures(**OVERCOMMITTED), flavor(disk_gb=20), []),
    (
        figures(**OVERCOMMITTED),
        flavor(disk_gb=40),
        [
            "disk short by 20480 MB: node has 20480 MB usable disk, 40960 MB requested "
            "(100 GB x 1 ratio, 20480 MB free, disk_available_least 20 GB: the qcow2 disks' over-commit counted)"
        ],
    ),
    (figures(**dict(OVERCOMMITTED, ratios=(4.0, 1.0, 2.0))), flavor(disk_gb=40), []),  # the ratio applies on top, as in Nova
    (
        figures(**dict(OVERCOMMITTED, free_gb=30)),
        flavor(disk_gb=40, ram_mb=65536, vcpus=9),
        [
            f"RAM short by 512 MB: node has 65024 MB RAM in total, 65536 MB requested {PHYSICAL}",
            "disk short by 92160 MB: node has -51200 MB usable disk, 40960 MB requested "
            "(100 GB x 1 ratio, -51200 MB free, disk_available_least -50 GB: the qcow2 disks' over-commit counted)",
            f"vCPUs short by 1: node has 8 physical vcpus, 9 requested {PHYSICAL}",
        ],
    ),
]


def scheduler_verdict(state: dict, wanted: dict) -> tuple[bool, list[dict]]:
    """The scheduler's verdict with only the capacity filters: (placed, rejections)."""
    try:
        sched.schedule([dict(state, host="node")], {"flavor": wanted}, filters=CAPACITY_FILTERS, weighers=[])
    except sched.NoValidHost as exc:
        return False, [r for step in exc.trace["instances"][0]["filters"] for r in step["rejected"]]
    return True, []


def claim_verdict(tmp_path, state: dict, wanted: dict) -> tuple[bool, str]:
    """The claim's verdict for the same host figures (the claims file in TMP_PATH)."""
    try:
        claim(str(tmp_path / "claims.json"), "u1", wanted, "node", lambda extra: (state, set()))
    except ClaimError as exc:
        return False, str(exc)
    return True, ""


@pytest.mark.parametrize("state, wanted, reasons", CASES)
def test_claim_and_filters_agree(tmp_path, state, wanted, reasons):
    shortfalls = cap.fits(cap.host_capacity(state, "node"), *cap.flavor_needs(wanted))
    assert [str(s) for s in shortfalls] == reasons

    claimed, message = claim_verdict(tmp_path, state, wanted)
    placed, rejected = scheduler_verdict(state, wanted)
    assert claimed is placed is (not reasons)
    if reasons:
        assert message == f"claim for instance u1 on node failed: {'; '.join(reasons)}"
        # The scheduler stops at the first filter that leaves no host: the first shortfall, word for word.
        first = shortfalls[0]
        assert rejected == [{"host": "node", "filter": first.filter, "reason": f"{first.filter}: {first.detail}"}]


@pytest.mark.parametrize("state, wanted, reasons", CASES)
def test_each_filter_says_what_fits_says(state, wanted, reasons):
    host = sched.make_host_state(dict(state, host="node"), 0, dict(sched.FILTER_OPTION_DEFAULTS), [])
    spec = sched.make_request_spec({"flavor": wanted}, dict(sched.FILTER_OPTION_DEFAULTS))
    short = {s.filter: s for s in cap.fits(cap.host_capacity(state, "node"), *cap.flavor_needs(wanted))}
    for name in CAPACITY_FILTERS:
        flt = sched.FILTERS[name]()
        assert flt.host_passes(host, spec) is (name not in short)
        if name in short:
            assert flt.reason(host, spec) == short[name].detail


def test_disk_available_least_is_the_smaller_figure():
    assert cap.effective_free_disk_mb(102400, None) == 102400
    assert cap.effective_free_disk_mb(102400, 20) == 20480
    assert cap.effective_free_disk_mb(5120, 20) == 5120


def test_flavor_needs_counts_root_ephemeral_and_swap():
    assert cap.flavor_needs(dict(vcpus=2, ram_mb=1024, disk_gb=10, ephemeral_gb=1, swap_mb=512)) == (2, 1024, 11776)
    assert cap.flavor_needs({}) == (0, 0, 0)


def test_shortfall_names_the_resource_and_the_amount():
    short = cap.Shortfall("RAM", "RamFilter", 2048, 1536.5, "MB", "detail")
    assert (short.short, str(short)) == (511.5, "RAM short by 511.5 MB: detail")


def test_the_option_group_has_nova_defaults_once():
    spec = cap.allocation_argument_spec()
    assert {k: v["default"] for k, v in spec.items()} == cap.ALLOCATION_DEFAULTS
    assert {k: v["type"] for k, v in spec.items()} == {
        "cpu_allocation_ratio": "float",
        "ram_allocation_ratio": "float",
        "disk_allocation_ratio": "float",
        "reserved_host_memory_mb": "int",
        "reserved_host_disk_mb": "int",
    }
    assert cap.allocation_params(dict(cap.ALLOCATION_DEFAULTS, uri="x")) == cap.ALLOCATION_DEFAULTS
