# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Tables for the scheduler engine: filters, operators, weighers, normalisation, placement."""

from __future__ import annotations

import copy

import pytest

from ansible_collections.virtcloud.compute.plugins.plugin_utils import _scheduler as sched


def make_host(name: str = "node1", **overrides):
    """A 8 GB / 4 cpu / 100 GB host with nothing on it, as compute_facts reports it."""
    facts = {
        "host": name,
        "free_ram_mb": 8192,
        "total_usable_ram_mb": 8192,
        "vcpus_total": 4,
        "vcpus_used": 0,
        "total_usable_disk_gb": 100,
        "free_disk_mb": 102400,
        "ram_allocation_ratio": 1.0,
        "cpu_allocation_ratio": 4.0,
        "disk_allocation_ratio": 1.0,
        "hypervisor_type": "QEMU",
        "hypervisor_version": 7002000,
        "supported_instances": [["x86_64", "qemu", "hvm"]],
        "cpu_info": {"arch": "x86_64", "vendor": "Intel", "features": ["sse", "avx"]},
        "num_instances": 0,
        "num_io_ops": 0,
        "availability_zone": "nova",
        "aggregates": [],
        "service": {"enabled": True, "disabled_reason": None, "up": True},
        "instances": [],
    }
    facts.update(overrides)
    return facts


def make_request(**overrides):
    request = {"flavor": {"name": "m1.small", "vcpus": 1, "ram_mb": 1024, "disk_gb": 10}}
    flavor = overrides.pop("flavor", None)
    if flavor:
        request["flavor"] = dict(request["flavor"], **flavor)
    request.update(overrides)
    return request


def three_hosts(**overrides):
    return [make_host(name, **overrides) for name in ("node1", "node2", "node3")]


def rejection(exc: sched.NoValidHost, instance: int = -1):
    """The rejected entries of one instance's trace, flattened."""
    return [r for step in exc.trace["instances"][instance]["filters"] for r in step["rejected"]]


# --------------------------------------------------------------------------
# extra_specs operators
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, req, expected",
    [
        ("1", "1", True),
        ("1", "2", False),
        ("x86_64", "x86_64", True),
        ("123", "= 123", True),
        ("124", "= 123", True),  # "=" means at least
        ("34", "= 234", False),
        ("123", "== 123", True),
        ("123.0", "== 123", True),
        ("124", "== 123", False),
        ("124", "!= 123", True),
        ("123", "!= 123", False),
        ("1000", ">= 234", True),
        ("234", ">= 234", True),
        ("234", ">= 1000", False),
        ("234", "<= 1000", True),
        ("1000", "<= 234", False),
        ("abc", ">= 1", False),  # a host value that is not a number never matches a numeric operator
        ("123", "s== 123", True),
        ("1234", "s== 123", False),
        ("12", "s!= 123", True),
        ("123", "s!= 123", False),
        ("12", "s< 2", True),  # string comparison, not numeric
        ("2", "s< 12", False),
        ("12", "s<= 12", True),
        ("13", "s<= 12", False),
        ("2", "s> 12", True),
        ("12", "s> 2", False),
        ("2", "s>= 2", True),
        ("12", "s>= 2", False),
        ("12311321", "<in> 11", True),
        ("12310321", "<in> 11", False),
        ("['sse', 'avx']", "<all-in> sse avx", True),
        ("['sse']", "<all-in> sse avx", False),
        ("12", "<or> 11 <or> 12", True),
        ("11", "<or> 11", True),
        ("13", "<or> 11 <or> 12", False),
        ("<or>", "<or> 11 <or> 12", False),  # the keyword is not one of the values
        (None, ">= 1", False),
        (None, "x", False),
    ],
)
def test_match_requirement(value, req, expected):
    assert sched.match_requirement(value, req) is expected


@pytest.mark.parametrize(
    "req, message",
    [
        (">=", "needs a value"),
        ("<in>", "needs a value"),
        (">= abc", "is not a number"),
        ("= lots", "is not a number"),
        ("<or> a b", "write '<or> a <or> b ...'"),
        ("<or> a <or>", "write '<or> a <or> b ...'"),
    ],
)
def test_check_requirement_rejects(req, message):
    with pytest.raises(sched.SchedulerError, match=message):
        sched.check_requirement(req, "spec")


@pytest.mark.parametrize("req", ["x86_64", "= 4", "<or> a <or> b", "<all-in> sse", "s< abc", "two words"])
def test_check_requirement_accepts(req):
    sched.check_requirement(req, "spec")


# --------------------------------------------------------------------------
# Filters: each one against one host, then the same case through schedule()
# --------------------------------------------------------------------------

SSD = [{"name": "fast", "metadata": {"ssd": "true", "disks": "nvme, sata"}}]

FILTER_CASES = [
    # name, host overrides, request overrides, filter options, passes, words in the reason
    ("ComputeFilter", {}, {}, {}, True, None),
    ("ComputeFilter", {"service": {"enabled": False, "disabled_reason": "maintenance", "up": True}}, {}, {}, False, "node1 is disabled (reason: maintenance)"),
    ("ComputeFilter", {"service": {"enabled": True, "up": False}}, {}, {}, False, "node1 is down"),
    ("AvailabilityZoneFilter", {"availability_zone": "az1"}, {"availability_zone": "az1"}, {}, True, None),
    ("AvailabilityZoneFilter", {"availability_zone": "az1"}, {"availability_zone": "az2"}, {}, False, "node1 is in zone az1, az2 requested"),
    ("AvailabilityZoneFilter", {"availability_zone": None}, {"availability_zone": "nova"}, {}, True, None),
    (
        "AvailabilityZoneFilter",
        {"availability_zone": None},
        {"availability_zone": "nova"},
        {"default_availability_zone": "zone0"},
        False,
        "node1 is in zone zone0, nova requested",
    ),
    (
        "AvailabilityZoneFilter",
        {"availability_zone": None, "aggregates": [{"name": "a", "metadata": {"availability_zone": "az3"}}]},
        {"availability_zone": "az3"},
        {},
        True,
        None,
    ),
    ("AvailabilityZoneFilter", {"availability_zone": "az1"}, {}, {}, True, None),
    # RamFilter: usable = total * ratio - (total - free)
    ("RamFilter", {"total_usable_ram_mb": 4096, "free_ram_mb": 2048}, {"flavor": {"ram_mb": 2048}}, {}, True, None),
    (
        "RamFilter",
        {"total_usable_ram_mb": 4096, "free_ram_mb": 1536},
        {"flavor": {"ram_mb": 2048}},
        {},
        False,
        "RamFilter: node1 has 1536 MB usable, 2048 MB requested",
    ),
    ("RamFilter", {"total_usable_ram_mb": 4096, "free_ram_mb": 0, "ram_allocation_ratio": 1.5}, {"flavor": {"ram_mb": 2048}}, {}, True, None),
    (
        "RamFilter",
        {"total_usable_ram_mb": 4096, "free_ram_mb": 0, "ram_allocation_ratio": 1.5},
        {"flavor": {"ram_mb": 2049}},
        {},
        False,
        "node1 has 2048 MB usable, 2049 MB requested",
    ),
    (
        "RamFilter",
        {"total_usable_ram_mb": 2048, "free_ram_mb": 2048, "ram_allocation_ratio": 16.0},
        {"flavor": {"ram_mb": 4096}},
        {},
        False,
        "node1 has 2048 MB RAM in total, 4096 MB requested",
    ),
    # DiskFilter: root + ephemeral in GB, swap in MB
    ("DiskFilter", {"free_disk_mb": 10240}, {"flavor": {"disk_gb": 10}}, {}, True, None),
    (
        "DiskFilter",
        {"free_disk_mb": 10240},
        {"flavor": {"disk_gb": 9, "ephemeral_gb": 1, "swap_mb": 1}},
        {},
        False,
        "node1 has 10240 MB usable disk, 10241 MB requested",
    ),
    (
        "DiskFilter",
        {"free_disk_mb": 20480, "disk_available_least": 5},
        {"flavor": {"disk_gb": 10}},
        {},
        False,
        "node1 has 5120 MB usable disk, 10240 MB requested",
    ),
    ("DiskFilter", {"total_usable_disk_gb": 10, "free_disk_mb": 0, "disk_allocation_ratio": 2.0}, {"flavor": {"disk_gb": 10}}, {}, True, None),
    (
        "DiskFilter",
        {"total_usable_disk_gb": 10, "free_disk_mb": 10240, "disk_allocation_ratio": 10.0},
        {"flavor": {"disk_gb": 11}},
        {},
        False,
        "node1 has 10240 MB disk in total, 11264 MB requested",
    ),
    # CoreFilter: free = total * ratio - used; never more than the physical cpus
    ("CoreFilter", {"vcpus_used": 14}, {"flavor": {"vcpus": 2}}, {}, True, None),
    ("CoreFilter", {"vcpus_used": 14}, {"flavor": {"vcpus": 3}}, {}, False, "node1 has 2 vcpus free (4 x 4 ratio - 14 used), 3 requested"),
    ("CoreFilter", {"cpu_allocation_ratio": 16.0}, {"flavor": {"vcpus": 8}}, {}, False, "node1 has 4 physical vcpus, 8 requested"),
    ("CoreFilter", {"vcpus_total": 0}, {}, {}, False, "node1 has 0 physical vcpus, 1 requested"),
    ("NumInstancesFilter", {"num_instances": 49}, {}, {}, True, None),
    ("NumInstancesFilter", {"num_instances": 50}, {}, {}, False, "node1 has 50 instances, max_instances_per_host is 50"),
    ("NumInstancesFilter", {"num_instances": 10}, {}, {"max_instances_per_host": 10}, False, "max_instances_per_host is 10"),
    ("IoOpsFilter", {"num_io_ops": 7}, {}, {}, True, None),
    ("IoOpsFilter", {"num_io_ops": 8}, {}, {}, False, "node1 has 8 I/O-heavy operations in progress, max_io_ops_per_host is 8"),
    ("IoOpsFilter", {"num_io_ops": 2}, {}, {"max_io_ops_per_host": 2}, False, "max_io_ops_per_host is 2"),
    ("RetryFilter", {}, {"retry_hosts": ["node2"]}, {}, True, None),
    ("RetryFilter", {}, {"retry_hosts": ["node1"]}, {}, False, "node1 was already tried"),
    # ComputeCapabilitiesFilter
    ("ComputeCapabilitiesFilter", {}, {"flavor": {"extra_specs": {"capabilities:cpu_info:arch": "x86_64"}}}, {}, True, None),
    (
        "ComputeCapabilitiesFilter",
        {},
        {"flavor": {"extra_specs": {"capabilities:cpu_info:arch": "aarch64"}}},
        {},
        False,
        "node1 has capabilities:cpu_info:arch = 'x86_64', flavor m1.small requires 'aarch64'",
    ),
    (
        "ComputeCapabilitiesFilter",
        {},
        {"flavor": {"extra_specs": {"capabilities:cpu_info:model": "Haswell"}}},
        {},
        False,
        "node1 has no value for capabilities:cpu_info:model",
    ),
    ("ComputeCapabilitiesFilter", {}, {"flavor": {"extra_specs": {"capabilities:cpu_info:features": "<all-in> sse avx"}}}, {}, True, None),
    ("ComputeCapabilitiesFilter", {}, {"flavor": {"extra_specs": {"capabilities:cpu_info:features": "<all-in> sse avx512f"}}}, {}, False, "requires"),
    (
        "ComputeCapabilitiesFilter",
        {"cpu_info": '{"arch": "x86_64"}'},
        {"flavor": {"extra_specs": {"capabilities:cpu_info:arch": "s== x86_64"}}},
        {},
        True,
        None,
    ),
    ("ComputeCapabilitiesFilter", {}, {"flavor": {"extra_specs": {"capabilities:hypervisor_version": ">= 7000000"}}}, {}, True, None),
    (
        "ComputeCapabilitiesFilter",
        {},
        {"flavor": {"extra_specs": {"capabilities:hypervisor_version": ">= 8000000"}}},
        {},
        False,
        "hypervisor_version = '7002000'",
    ),
    ("ComputeCapabilitiesFilter", {}, {"flavor": {"extra_specs": {"hypervisor_type": "<or> QEMU <or> KVM"}}}, {}, True, None),
    ("ComputeCapabilitiesFilter", {}, {"flavor": {"extra_specs": {"hypervisor_type": "Xen"}}}, {}, False, "hypervisor_type = 'QEMU'"),
    ("ComputeCapabilitiesFilter", {}, {"flavor": {"extra_specs": {"no_such_attribute": "x"}}}, {}, True, None),
    ("ComputeCapabilitiesFilter", {}, {"flavor": {"extra_specs": {"hw:cpu_policy": "dedicated"}}}, {}, True, None),
    ("ComputeCapabilitiesFilter", {"lab_rack": "r2"}, {"flavor": {"extra_specs": {"capabilities:lab_rack": "r1"}}}, {}, False, "lab_rack = 'r2'"),
    # ImagePropertiesFilter
    ("ImagePropertiesFilter", {}, {"image": {"id": "img", "properties": {"hw_architecture": "x86_64"}}}, {}, True, None),
    ("ImagePropertiesFilter", {}, {"image": {"id": "img", "properties": {"hw_architecture": "amd64"}}}, {}, True, None),
    ("ImagePropertiesFilter", {}, {"image": {"id": "img", "properties": {"architecture": "x86_64"}}}, {}, True, None),
    (
        "ImagePropertiesFilter",
        {},
        {"image": {"id": "img", "properties": {"hw_architecture": "aarch64"}}},
        {},
        False,
        "node1 supports x86_64/qemu/hvm; image img requires architecture=aarch64",
    ),
    ("ImagePropertiesFilter", {}, {"image": {"id": "img", "properties": {"img_hv_type": "QEMU", "hw_vm_mode": "hvm"}}}, {}, True, None),
    ("ImagePropertiesFilter", {}, {"image": {"id": "img", "properties": {"img_hv_type": "kvm"}}}, {}, False, "hypervisor type=kvm"),
    ("ImagePropertiesFilter", {}, {"image": {"id": "img", "properties": {"hw_vm_mode": "xen"}}}, {}, False, "vm mode=xen"),
    (
        "ImagePropertiesFilter",
        {"supported_instances": []},
        {"image": {"id": "img", "properties": {"hw_architecture": "x86_64"}}},
        {},
        False,
        "node1 supports nothing",
    ),
    ("ImagePropertiesFilter", {"supported_instances": []}, {"image": {"id": "img", "properties": {"os_type": "linux"}}}, {}, True, None),
    ("ImagePropertiesFilter", {}, {"image": {"id": "img", "properties": {"img_hv_requested_version": ">= 7.0"}}}, {}, True, None),
    (
        "ImagePropertiesFilter",
        {},
        {"image": {"id": "img", "properties": {"img_hv_requested_version": ">= 8.0"}}},
        {},
        False,
        "node1 runs hypervisor version 7.2.0, image img requires >= 8.0",
    ),
    (
        "ImagePropertiesFilter",
        {},
        {"image": {"id": "img", "properties": {"hw_architecture": "x86_64", "img_hv_requested_version": ">= 6.0, < 7.2"}}},
        {},
        False,
        "requires >= 6.0, < 7.2",
    ),
    # AggregateInstanceExtraSpecsFilter: metadata values are comma-split, as in Nova
    ("AggregateInstanceExtraSpecsFilter", {"aggregates": SSD}, {"flavor": {"extra_specs": {"aggregate_instance_extra_specs:ssd": "true"}}}, {}, True, None),
    ("AggregateInstanceExtraSpecsFilter", {"aggregates": SSD}, {"flavor": {"extra_specs": {"aggregate_instance_extra_specs:ssd": True}}}, {}, True, None),
    (
        "AggregateInstanceExtraSpecsFilter",
        {"aggregates": SSD},
        {"flavor": {"extra_specs": {"aggregate_instance_extra_specs:ssd": "false"}}},
        {},
        False,
        "node1 aggregates have ssd in ['true'], flavor m1.small requires 'false'",
    ),
    (
        "AggregateInstanceExtraSpecsFilter",
        {},
        {"flavor": {"extra_specs": {"aggregate_instance_extra_specs:ssd": "true"}}},
        {},
        False,
        "node1 has no aggregate with metadata ssd (aggregates: none)",
    ),
    ("AggregateInstanceExtraSpecsFilter", {"aggregates": SSD}, {"flavor": {"extra_specs": {"aggregate_instance_extra_specs:disks": "sata"}}}, {}, True, None),
    ("AggregateInstanceExtraSpecsFilter", {"aggregates": SSD}, {"flavor": {"extra_specs": {"ssd": "true"}}}, {}, True, None),
    ("AggregateInstanceExtraSpecsFilter", {}, {"flavor": {"extra_specs": {"capabilities:cpu_info:arch": "x86_64", "hw:numa_nodes": "1"}}}, {}, True, None),
    # Server groups
    ("ServerGroupAntiAffinityFilter", {}, {"group": {"name": "g", "policy": "anti-affinity", "hosts": ["node2"]}}, {}, True, None),
    (
        "ServerGroupAntiAffinityFilter",
        {},
        {"group": {"name": "g", "policy": "anti-affinity", "hosts": ["node1"]}},
        {},
        False,
        "node1 already has 1 member(s) of anti-affinity group g, max_server_per_host is 1",
    ),
    (
        "ServerGroupAntiAffinityFilter",
        {},
        {"group": {"name": "g", "policy": "anti-affinity", "rules": {"max_server_per_host": 2}, "hosts": ["node1"]}},
        {},
        True,
        None,
    ),
    (
        "ServerGroupAntiAffinityFilter",
        {},
        {"group": {"name": "g", "policy": "anti-affinity", "rules": {"max_server_per_host": 2}, "hosts": ["node1", "node1"]}},
        {},
        False,
        "already has 2 member(s)",
    ),
    (
        "ServerGroupAntiAffinityFilter",
        {"instances": [{"uuid": "u1", "server_group": "g"}]},
        {"group": {"name": "g", "policy": "anti-affinity"}},
        {},
        False,
        "already has 1 member(s)",
    ),
    ("ServerGroupAntiAffinityFilter", {}, {"group": {"name": "g", "policy": "soft-anti-affinity", "hosts": ["node1"]}}, {}, True, None),
    ("ServerGroupAffinityFilter", {}, {"group": {"name": "g", "policy": "affinity", "hosts": ["node1"]}}, {}, True, None),
    (
        "ServerGroupAffinityFilter",
        {},
        {"group": {"name": "g", "policy": "affinity", "hosts": ["node2"]}},
        {},
        False,
        "node1 has no member of affinity group g (members on node2)",
    ),
    ("ServerGroupAffinityFilter", {}, {"group": {"name": "g", "policy": "affinity", "hosts": []}}, {}, True, None),
    ("ServerGroupAffinityFilter", {}, {"group": {"name": "g", "policy": "soft-affinity", "hosts": ["node2"]}}, {}, True, None),
    # Hints
    ("SameHostFilter", {"instances": [{"uuid": "u1"}]}, {"hints": {"same_host": ["u1", "u9"]}}, {}, True, None),
    ("SameHostFilter", {"instances": [{"uuid": "u1"}]}, {"hints": {"same_host": "u2"}}, {}, False, "node1 runs none of the same_host instances u2"),
    ("DifferentHostFilter", {"instances": [{"uuid": "u1"}]}, {"hints": {"different_host": ["u2"]}}, {}, True, None),
    ("DifferentHostFilter", {"instances": [{"uuid": "u1"}]}, {"hints": {"different_host": ["u1", "u2"]}}, {}, False, "node1 runs u1 listed in different_host"),
]


@pytest.mark.parametrize("name, host_kw, request_kw, options, passes, reason", FILTER_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(FILTER_CASES)])
def test_filter(name, host_kw, request_kw, options, passes, reason):
    opts = dict(sched.FILTER_OPTION_DEFAULTS, **options)
    state = sched.make_host_state(make_host(**host_kw), 0, opts, [])
    spec = sched.make_request_spec(make_request(**copy.deepcopy(request_kw)), opts)
    sched.count_group_members(spec, [state])
    flt = sched.FILTERS[name]()
    assert flt.host_passes(state, spec) is passes
    if not passes:
        assert flt.relevant(spec), "a filter that can reject must say it is relevant"
        assert reason in f"{name}: {flt.reason(state, spec)}"

    # The same case through the engine with only this filter enabled.
    call = {"filters": [name], "weighers": [], "filter_options": options}
    if passes:
        assert sched.schedule([make_host(**host_kw)], make_request(**copy.deepcopy(request_kw)), **call)["selected"] == ["node1"]
    else:
        with pytest.raises(sched.NoValidHost) as info:
            sched.schedule([make_host(**host_kw)], make_request(**copy.deepcopy(request_kw)), **call)
        assert reason in str(info.value)
        assert rejection(info.value) == [{"host": "node1", "filter": name, "reason": f"{name}: {flt.reason(state, spec)}"}]


def test_every_registered_filter_has_a_table_case():
    assert {c[0] for c in FILTER_CASES} == set(sched.FILTERS)


def test_unscoped_key_counts_only_when_host_has_it():
    """Nova: an unscoped key the host has is checked; one it lacks is ignored by ComputeCapabilitiesFilter."""
    with pytest.raises(sched.NoValidHost, match="ComputeCapabilitiesFilter: node1 has free_ram_mb"):
        sched.schedule([make_host(free_ram_mb=1024)], make_request(flavor={"extra_specs": {"free_ram_mb": ">= 4096"}}), filters=["ComputeCapabilitiesFilter"])


# --------------------------------------------------------------------------
# Normalisation and weighers
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, minval, maxval, expected",
    [
        ([], None, None, []),
        ([3], None, None, [0.0]),
        ([3], 0, None, [1.0]),
        ([5, 5, 5], None, None, [0.0, 0.0, 0.0]),
        ([0, 0], 0, None, [0.0, 0.0]),
        ([1, 2, 3], None, None, [0.0, 0.5, 1.0]),
        ([2, 4], 0, None, [0.5, 1.0]),
        ([-5, 10], 0, None, [0.0, 1.0]),  # clamped to minval
        ([-5, -1], 0, None, [0.0, 0.0]),  # all clamped to the same value
        ([5, 15], None, 10, [0.0, 1.0]),  # clamped to maxval
        ([5, 10], 0, 20, [0.25, 0.5]),
        ([-3, -1, -2], None, None, [0.0, 1.0, 0.5]),
    ],
)
def test_normalise(values, minval, maxval, expected):
    assert sched.normalise(values, minval, maxval) == pytest.approx(expected)


def weights_of(result, instance=0):
    return {row["host"]: row for row in result["trace"]["instances"][instance]["weights"]}


WEIGHER_CASES = [
    # weigher, node1 overrides, node2 overrides, request overrides, multipliers, winner, (raw1, raw2), (norm1, norm2)
    ("RAMWeigher", {"free_ram_mb": 1024}, {"free_ram_mb": 4096}, {}, {}, "node2", (1024, 4096), (0.25, 1.0)),
    ("CPUWeigher", {"vcpus_used": 0}, {"vcpus_used": 8}, {}, {}, "node1", (16, 8), (1.0, 0.5)),
    ("DiskWeigher", {"free_disk_mb": 1000}, {"free_disk_mb": 4000}, {}, {}, "node2", (1000, 4000), (0.25, 1.0)),
    ("IoOpsWeigher", {"num_io_ops": 4}, {"num_io_ops": 0}, {}, {}, "node2", (4, 0), (1.0, 0.0)),
    ("NumInstancesWeigher", {"num_instances": 2}, {"num_instances": 6}, {}, {}, "node1", (2, 6), (0.0, 1.0)),  # multiplier 0: tie
    ("NumInstancesWeigher", {"num_instances": 6}, {"num_instances": 2}, {}, {"num_instances_weight_multiplier": -1.0}, "node2", (6, 2), (1.0, 0.0)),
    ("NumInstancesWeigher", {"num_instances": 2}, {"num_instances": 6}, {}, {"num_instances_weight_multiplier": 1.0}, "node2", (2, 6), (0.0, 1.0)),
    ("ServerGroupSoftAffinityWeigher", {}, {}, {"group": {"name": "g", "policy": "soft-affinity", "hosts": ["node2"]}}, {}, "node2", (0, 1), (0.0, 1.0)),
    ("ServerGroupSoftAffinityWeigher", {}, {}, {"group": {"name": "g", "policy": "soft-anti-affinity", "hosts": ["node2"]}}, {}, "node1", (0, 0), (0.0, 0.0)),
    (
        "ServerGroupSoftAntiAffinityWeigher",
        {},
        {},
        {"group": {"name": "g", "policy": "soft-anti-affinity", "hosts": ["node1"]}},
        {},
        "node2",
        (-1, 0),
        (0.0, 1.0),
    ),
    ("BuildFailureWeigher", {"failed_builds": 3}, {}, {}, {}, "node2", (3, 0), (1.0, 0.0)),
    ("HypervisorVersionWeigher", {"hypervisor_version": 7002000}, {"hypervisor_version": 8000000}, {}, {}, "node2", (7002000, 8000000), (0.0, 1.0)),
]


@pytest.mark.parametrize(
    "name, host1, host2, request_kw, multipliers, winner, raw, norm", WEIGHER_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(WEIGHER_CASES)]
)
def test_weigher(name, host1, host2, request_kw, multipliers, winner, raw, norm):
    hosts = [make_host("node1", **host1), make_host("node2", **host2)]
    result = sched.schedule(hosts, make_request(**request_kw), filters=[], weighers=[name], weigher_multipliers=multipliers)
    assert result["selected"] == [winner]
    weights = weights_of(result)
    expected_multiplier = dict(sched.MULTIPLIER_DEFAULTS, **multipliers)[sched.WEIGHERS[name].option]
    if sched.WEIGHERS[name].negated:
        expected_multiplier = -expected_multiplier
    for host, raw_value, norm_value in zip(("node1", "node2"), raw, norm):
        entry = weights[host]["weighers"][name]
        assert entry["raw"] == raw_value
        assert entry["normalised"] == pytest.approx(norm_value)
        assert entry["multiplier"] == expected_multiplier
        assert weights[host]["total"] == pytest.approx(expected_multiplier * norm_value)


def test_every_registered_weigher_has_a_table_case():
    assert {c[0] for c in WEIGHER_CASES} == set(sched.WEIGHERS)


def test_build_failure_outweighs_free_ram():
    hosts = [make_host("node1", free_ram_mb=8192, failed_builds=1), make_host("node2", free_ram_mb=1024)]
    assert sched.schedule(hosts, make_request())["selected"] == ["node2"]


def test_weights_are_summed_with_signed_multipliers():
    hosts = [make_host("node1", free_ram_mb=2048, free_disk_mb=102400), make_host("node2", free_ram_mb=8192, free_disk_mb=51200)]
    result = sched.schedule(
        hosts,
        make_request(),
        filters=[],
        weighers=["RAMWeigher", "DiskWeigher"],
        weigher_multipliers={"ram_weight_multiplier": 2.0, "disk_weight_multiplier": -1.0},
    )
    weights = weights_of(result)
    # node1: 2 * 0.25 - 1 * 1.0; node2: 2 * 1.0 - 1 * 0.5
    assert weights["node1"]["total"] == pytest.approx(-0.5)
    assert weights["node2"]["total"] == pytest.approx(1.5)
    assert [row["host"] for row in result["trace"]["instances"][0]["weights"]] == ["node2", "node1"]


@pytest.mark.parametrize("multiplier, winner", [(1.0, "node2"), (-1.0, "node1"), (0.0, "node1")])
def test_ram_multiplier_sign(multiplier, winner):
    hosts = [make_host("node1", free_ram_mb=1024), make_host("node2", free_ram_mb=4096)]
    result = sched.schedule(hosts, make_request(), weighers=["RAMWeigher"], weigher_multipliers={"ram_weight_multiplier": multiplier})
    assert result["selected"] == [winner]


@pytest.mark.parametrize(
    "aggregates, expected_multiplier, warned",
    [
        ([{"name": "a", "metadata": {"ram_weight_multiplier": "-1.0"}}, {"name": "b", "metadata": {"ram_weight_multiplier": "2.0"}}], -1.0, False),
        ([{"name": "a", "metadata": {"ram_weight_multiplier": 3}}], 3.0, False),
        ([{"name": "a", "metadata": {"ram_weight_multiplier": "lots"}}], 1.0, True),
        ([{"name": "a", "metadata": {"other": "x"}}], 1.0, False),
    ],
)
def test_aggregate_multiplier_override_minimum_wins(aggregates, expected_multiplier, warned):
    hosts = [make_host("node1", free_ram_mb=8192, aggregates=aggregates), make_host("node2", free_ram_mb=4096)]
    result = sched.schedule(hosts, make_request(), filters=[], weighers=["RAMWeigher"])
    weights = weights_of(result)
    assert weights["node1"]["weighers"]["RAMWeigher"]["multiplier"] == expected_multiplier
    assert weights["node2"]["weighers"]["RAMWeigher"]["multiplier"] == 1.0
    assert result["selected"] == (["node2"] if expected_multiplier < 0.5 else ["node1"])
    assert bool(result["trace"]["warnings"]) is warned


def test_single_host_is_not_weighed():
    result = sched.schedule([make_host()], make_request())
    assert result["trace"]["instances"][0]["weights"] == [{"host": "node1", "total": 0.0, "weighers": {}}]


# --------------------------------------------------------------------------
# Placement of several instances, groups, ties, alternates
# --------------------------------------------------------------------------


def test_five_instances_spread_over_three_hosts():
    result = sched.schedule(three_hosts(), make_request(num_instances=5))
    assert result["selected"] == ["node1", "node2", "node3", "node1", "node2"]
    # The fourth instance saw the RAM, vcpus and io ops the first three consumed.
    fourth = weights_of(result, 3)
    assert fourth["node1"]["weighers"]["RAMWeigher"]["raw"] == 8192 - 1024
    assert fourth["node1"]["weighers"]["CPUWeigher"]["raw"] == 16 - 1
    assert fourth["node1"]["weighers"]["IoOpsWeigher"]["raw"] == 1
    assert fourth["node1"]["weighers"]["DiskWeigher"]["raw"] == 102400 - 10240


def test_negative_ram_multiplier_stacks():
    result = sched.schedule(three_hosts(), make_request(num_instances=5), weighers=["RAMWeigher"], weigher_multipliers={"ram_weight_multiplier": -1.0})
    assert result["selected"] == ["node1"] * 5


def test_stacking_stops_when_the_host_is_full():
    hosts = three_hosts(free_ram_mb=2048, total_usable_ram_mb=2048)
    result = sched.schedule(hosts, make_request(num_instances=5), weighers=["RAMWeigher"], weigher_multipliers={"ram_weight_multiplier": -1.0})
    assert result["selected"] == ["node1", "node1", "node2", "node2", "node3"]


def test_resources_run_out_across_instances():
    hosts = three_hosts(free_ram_mb=2048, total_usable_ram_mb=2048)
    with pytest.raises(sched.NoValidHost, match="instance 7 of 7") as info:
        sched.schedule(hosts, make_request(num_instances=7))
    assert [r["reason"] for r in rejection(info.value)] == [
        f"RamFilter: {h} has 0 MB usable, 1024 MB requested (2048 MB x 1 ratio, 0 MB free)" for h in ("node1", "node2", "node3")
    ]
    assert [i["selected"] for i in info.value.trace["instances"]] == ["node1", "node2", "node3", "node1", "node2", "node3", None]


def test_anti_affinity_group_of_four_on_three_hosts():
    request = make_request(num_instances=4, group={"name": "web", "policy": "anti-affinity"})
    with pytest.raises(sched.NoValidHost) as info:
        sched.schedule(three_hosts(), request)
    assert "instance 4 of 4" in str(info.value)
    assert "ServerGroupAntiAffinityFilter 3 -> 0" in str(info.value)
    trace = info.value.trace
    assert sorted(i["selected"] for i in trace["instances"][:3]) == ["node1", "node2", "node3"]
    assert {r["filter"] for r in rejection(info.value)} == {"ServerGroupAntiAffinityFilter"}
    assert len(rejection(info.value)) == 3

    # Three fit, one per host; a fourth scheduled later with the members' hosts fails the same way.
    placed = sched.schedule(three_hosts(), make_request(num_instances=3, group={"name": "web", "policy": "anti-affinity"}))
    assert sorted(placed["selected"]) == ["node1", "node2", "node3"]
    with pytest.raises(sched.NoValidHost, match="ServerGroupAntiAffinityFilter: node1 already has 1 member"):
        sched.schedule(three_hosts(), make_request(group={"name": "web", "policy": "anti-affinity", "hosts": placed["selected"]}))


def test_affinity_group_follows_the_first_member():
    hosts = [make_host("node1", free_ram_mb=2048), make_host("node2", free_ram_mb=8192)]
    result = sched.schedule(hosts, make_request(num_instances=2, group={"name": "db", "policy": "affinity"}))
    assert result["selected"] == ["node2", "node2"]


def test_soft_anti_affinity_spreads_but_never_fails():
    request = make_request(num_instances=4, group={"name": "g", "policy": "soft-anti-affinity"})
    result = sched.schedule(three_hosts(), request, weighers=["ServerGroupSoftAntiAffinityWeigher"])
    assert sorted(result["selected"][:3]) == ["node1", "node2", "node3"]
    assert len(result["selected"]) == 4


def test_soft_affinity_packs():
    request = make_request(num_instances=3, group={"name": "g", "policy": "soft-affinity", "hosts": ["node3"]})
    result = sched.schedule(three_hosts(), request, weighers=["ServerGroupSoftAffinityWeigher", "RAMWeigher"])
    assert result["selected"] == ["node3", "node3", "node3"]


def test_flavor_bigger_than_any_host():
    request = make_request(flavor={"name": "huge", "vcpus": 2, "ram_mb": 65536})
    with pytest.raises(sched.NoValidHost) as info:
        sched.schedule(three_hosts(), request)
    message = str(info.value)
    assert "No valid host was found for instance 1 of 1 (flavor huge: 2 vcpus, 65536 MB RAM" in message
    assert "RamFilter 3 -> 0" in message
    assert "node3 has 8192 MB RAM in total, 65536 MB requested" in message
    steps = info.value.trace["instances"][0]["filters"]
    ram_step = next(s for s in steps if s["filter"] == "RamFilter")
    assert ram_step["hosts_left"] == 0 and ram_step["hosts"] == []
    assert [r["host"] for r in ram_step["rejected"]] == ["node1", "node2", "node3"]


def test_trace_lists_hosts_left_after_each_filter():
    hosts = three_hosts()
    hosts[0]["service"] = {"enabled": False, "disabled_reason": "maintenance", "up": True}
    hosts[2]["free_ram_mb"] = 512
    result = sched.schedule(hosts, make_request())
    steps = {s["filter"]: s for s in result["trace"]["instances"][0]["filters"]}
    assert [s["filter"] for s in result["trace"]["instances"][0]["filters"]] == list(sched.DEFAULT_FILTERS)
    assert (steps["ComputeFilter"]["hosts_left"], steps["ComputeFilter"]["hosts"]) == (2, ["node2", "node3"])
    assert (steps["RamFilter"]["hosts_left"], steps["RamFilter"]["hosts"]) == (1, ["node2"])
    assert steps["RetryFilter"]["applied"] is False
    assert result["selected"] == ["node2"]


def test_message_is_capped_but_trace_is_complete():
    hosts = [make_host(f"node{i:02d}", free_ram_mb=0) for i in range(15)]
    with pytest.raises(sched.NoValidHost, match="and 5 more in the trace") as info:
        sched.schedule(hosts, make_request())
    assert len(rejection(info.value)) == 15


def test_no_hosts_at_all():
    with pytest.raises(sched.NoValidHost, match="0 host"):
        sched.schedule([], make_request())


def test_hints_never_bypass_a_filter():
    hosts = [make_host("node1", free_ram_mb=512, instances=[{"uuid": "u1"}]), make_host("node2")]
    with pytest.raises(sched.NoValidHost) as info:
        sched.schedule(hosts, make_request(hints={"same_host": ["u1"]}))
    assert {(r["host"], r["filter"]) for r in rejection(info.value)} == {("node1", "RamFilter"), ("node2", "SameHostFilter")}


def test_retry_moves_to_the_next_host():
    first = sched.schedule(three_hosts(), make_request())
    second = sched.schedule(three_hosts(), make_request(retry_hosts=first["selected"]))
    assert second["selected"] != first["selected"]
    assert second["selected"] == [first["alternates"][0][0]]


@pytest.mark.parametrize("order", [("node1", "node2", "node3"), ("node3", "node1", "node2"), ("node2", "node3", "node1")])
def test_ties_are_broken_by_host_name(order):
    result = sched.schedule([make_host(name) for name in order], make_request(num_instances=3))
    assert result["selected"] == ["node1", "node2", "node3"]
    assert [row["host"] for row in result["trace"]["instances"][0]["weights"]] == ["node1", "node2", "node3"]


def test_host_subset_size_is_reproducible_and_stays_in_the_top():
    hosts = [make_host(f"node{i}", free_ram_mb=1024 * i) for i in range(1, 7)]
    top3 = {"node6", "node5", "node4"}
    picks = set()
    for seed in range(30):
        first = sched.schedule(hosts, make_request(), host_subset_size=3, seed=seed)
        again = sched.schedule(hosts, make_request(), host_subset_size=3, seed=seed)
        assert first["selected"] == again["selected"]
        assert first["selected"][0] in top3
        assert first["trace"]["instances"][0]["subset"] == ["node6", "node5", "node4"]
        picks.add(first["selected"][0])
    assert picks == top3
    assert sched.schedule(hosts, make_request(), host_subset_size=3, seed="req-1") == sched.schedule(hosts, make_request(), host_subset_size=3, seed="req-1")
    assert sched.schedule(hosts, make_request(), host_subset_size=1, seed=5)["selected"] == ["node6"]


@pytest.mark.parametrize("max_attempts, expected", [(1, [[]]), (2, [["node3"]]), (3, [["node3", "node2"]]), (10, [["node3", "node2", "node1"]])])
def test_alternates_are_ordered_and_limited(max_attempts, expected):
    hosts = [make_host(f"node{i}", free_ram_mb=1024 * i) for i in range(1, 5)]
    result = sched.schedule(hosts, make_request(), max_attempts=max_attempts)
    assert result["selected"] == ["node4"]
    assert result["alternates"] == expected


def test_alternates_exclude_hosts_selected_for_the_request():
    hosts = [make_host(f"node{i}", free_ram_mb=1024 * i) for i in range(1, 5)]
    result = sched.schedule(hosts, make_request(num_instances=2))
    assert result["selected"] == ["node4", "node3"]
    assert result["alternates"] == [["node2", "node1"], ["node2", "node1"]]


def test_input_is_not_modified():
    hosts = three_hosts()
    request = make_request(num_instances=5, group={"name": "g", "policy": "soft-anti-affinity", "hosts": ["node1"]})
    before = copy.deepcopy((hosts, request))
    sched.schedule(hosts, request)
    assert (hosts, request) == before


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def _without(key):
    host = make_host()
    del host[key]
    return [host]


BAD_INPUT = [
    ("node1", make_request(), {}, "hosts must be a list"),
    (["node1"], make_request(), {}, r"hosts\[0\] must be a dictionary"),
    ([{"free_ram_mb": 1}], make_request(), {}, r"hosts\[0\].host must be a non-empty string"),
    (_without("free_ram_mb"), make_request(), {}, "host node1 is missing free_ram_mb"),
    ([make_host(free_ram_mb="1024")], make_request(), {}, "host node1.free_ram_mb must be a number, got str '1024'"),
    ([make_host(vcpus_total=True)], make_request(), {}, "host node1.vcpus_total must be an integer, got bool"),
    ([make_host(ram_allocation_ratio=0)], make_request(), {}, "ram_allocation_ratio must be greater than 0"),
    ([make_host(num_instances=-1)], make_request(), {}, "num_instances must be at least 0"),
    (
        [
            make_host(supported_instances=[["x86_64", "qemu"]]),
        ],
        make_request(),
        {},
        "must be \\[architecture, hypervisor type, vm mode\\]",
    ),
    ([make_host(service={"enabled": "yes"})], make_request(), {}, "service.enabled and .up must be booleans"),
    ([make_host(aggregates=[{"metadata": {}}])], make_request(), {}, r"aggregates\[0\].name must be a non-empty string"),
    ([make_host(instances=[{"name": "x"}])], make_request(), {}, r"instances\[0\] must be a dictionary with a uuid"),
    ([make_host(), make_host()], make_request(), {}, "host node1 appears more than once"),
    ([make_host()], [], {}, "request must be a dictionary"),
    ([make_host()], {"num_instances": 1}, {}, "request.flavor is required"),
    ([make_host()], make_request(flavour={}), {}, "request has unknown key\\(s\\) flavour"),
    ([make_host()], make_request(flavor={"vcpus": 0}), {}, "request.flavor.vcpus must be at least 1"),
    ([make_host()], make_request(flavor={"ram": 1}), {}, "request.flavor has unknown key\\(s\\) ram"),
    ([make_host()], make_request(flavor={"extra_specs": {"capabilities:x": ">= many"}}), {}, "is not a number"),
    ([make_host()], make_request(flavor={"extra_specs": {"capabilities:x": ["a"]}}), {}, "must be a string, number or boolean"),
    ([make_host()], make_request(num_instances="5"), {}, "request.num_instances must be an integer, got str '5'"),
    ([make_host()], make_request(group={"name": "g", "policy": "spread"}), {}, "request.group.policy must be one of"),
    (
        [make_host()],
        make_request(group={"name": "g", "policy": "affinity", "rules": {"max_server_per_host": 2}}),
        {},
        "max_server_per_host only applies to the anti-affinity policy",
    ),
    ([make_host()], make_request(group={"policy": "affinity"}), {}, "request.group.name must be a non-empty string"),
    ([make_host()], make_request(hints={"same_hots": ["u1"]}), {}, "request.hints has unknown key\\(s\\) same_hots"),
    ([make_host()], make_request(image={"properties": {"img_hv_requested_version": "newest"}}), {}, "is not a version predicate"),
    ([make_host()], make_request(availability_zone="nova:node1"), {}, "forced hosts are not supported"),
    ([make_host()], make_request(), {"filters": ["RamFilter", "NoSuchFilter"]}, "unknown filters NoSuchFilter"),
    ([make_host()], make_request(), {"filters": "RamFilter"}, "filters must be a list"),
    ([make_host()], make_request(), {"filters": ["RamFilter", "RamFilter"]}, "filters lists RamFilter more than once"),
    ([make_host()], make_request(), {"weighers": ["RamWeigher"]}, "unknown weighers RamWeigher"),
    ([make_host()], make_request(), {"weigher_multipliers": {"RAMWeigher": 2}}, "weigher_multipliers has unknown key"),
    ([make_host()], make_request(), {"weigher_multipliers": {"ram_weight_multiplier": "high"}}, "must be a number"),
    ([make_host()], make_request(), {"filter_options": {"max_io_ops_per_host": 0}}, "max_io_ops_per_host must be at least 1"),
    ([make_host()], make_request(), {"filter_options": {"max_ios": 1}}, "filter_options has unknown key"),
    ([make_host()], make_request(), {"max_attempts": 0}, "max_attempts must be at least 1"),
    ([make_host()], make_request(), {"host_subset_size": 0}, "host_subset_size must be at least 1"),
    ([make_host()], make_request(), {"seed": 1.5}, "seed must be an integer or a string"),
]


@pytest.mark.parametrize("hosts, request_, kwargs, message", BAD_INPUT, ids=[c[3][:40] for c in BAD_INPUT])
def test_bad_input(hosts, request_, kwargs, message):
    with pytest.raises(sched.SchedulerError, match=message) as info:
        sched.schedule(hosts, request_, **kwargs)
    assert not isinstance(info.value, sched.NoValidHost)
