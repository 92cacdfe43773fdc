# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The virtcloud.compute.schedule filter plugin: an adapter, so only the adapter's own work is tested here."""

from __future__ import annotations

import pytest
import yaml

from ansible.errors import AnsibleFilterError

from ansible_collections.virtcloud.compute.plugins.filter import schedule as plugin
from ansible_collections.virtcloud.compute.plugins.plugin_utils import _scheduler as sched


def host(name, free_ram_mb=8192):
    return {
        "host": name,
        "free_ram_mb": free_ram_mb,
        "total_usable_ram_mb": 8192,
        "vcpus_total": 4,
        "vcpus_used": 0,
        "total_usable_disk_gb": 100,
        "free_disk_mb": 102400,
        "ram_allocation_ratio": 1.0,
        "cpu_allocation_ratio": 4.0,
        "disk_allocation_ratio": 1.0,
        "num_instances": 0,
        "num_io_ops": 0,
    }


REQUEST = {"flavor": {"name": "m1.small", "vcpus": 1, "ram_mb": 2048, "disk_gb": 10}}
schedule = plugin.FilterModule().filters()["schedule"]


def test_registered_name():
    assert set(plugin.FilterModule().filters()) == {"schedule"}


def test_passes_options_through():
    hosts = [host("node1", 1024 * 3), host("node2", 1024 * 6), host("node3", 1024 * 8)]
    result = schedule(hosts, REQUEST, weighers=["RAMWeigher"], weigher_multipliers={"ram_weight_multiplier": -1.0}, max_attempts=2)
    assert result["selected"] == ["node1"]
    assert result["alternates"] == [["node2"]]
    assert result["trace"]["weighers"] == ["RAMWeigher"]


class _OmitType:  # pylint: disable=too-few-public-methods
    """Stands for ansible-core's Omit singleton, which has no public name."""


@pytest.mark.parametrize("omit", [_OmitType(), "__omit_place_holder__0123abcd"])
def test_omit_means_default(omit):
    hosts = [host("node1", 1024 * 3), host("node2", 1024 * 6)]
    result = schedule(
        hosts, REQUEST, filters=omit, weighers=omit, weigher_multipliers=omit, filter_options=omit, max_attempts=omit, host_subset_size=omit, seed=omit
    )
    assert result["selected"] == ["node2"]
    assert result["alternates"] == [["node1"]]
    assert result["trace"]["filters"] == list(sched.DEFAULT_FILTERS)
    assert (result["trace"]["max_attempts"], result["trace"]["host_subset_size"]) == (3, 1)


@pytest.mark.parametrize(
    "hosts, request_, message",
    [
        ("node1", REQUEST, "the input must be a list of host facts, got str"),
        ({"node1": host("node1")}, REQUEST, "the input must be a list of host facts, got dict"),
        ([host("node1")], "m1.small", "the request must be a dictionary, got str"),
    ],
)
def test_input_types(hosts, request_, message):
    with pytest.raises(AnsibleFilterError, match=message):
        schedule(hosts, request_)


def test_engine_errors_become_filter_errors():
    with pytest.raises(AnsibleFilterError, match="virtcloud.compute.schedule: unknown filters Nope") as info:
        schedule([host("node1")], REQUEST, filters=["Nope"])
    assert isinstance(info.value.__cause__, sched.SchedulerError)


def test_no_valid_host_message_carries_the_trace_summary():
    with pytest.raises(AnsibleFilterError) as info:
        schedule([host("node1", 1536), host("node2", 1024)], REQUEST)
    message = str(info.value)
    assert "No valid host was found for instance 1 of 1" in message
    assert "RamFilter 2 -> 0" in message
    assert "RamFilter: node1 has 1536 MB usable, 2048 MB requested" in message
    assert isinstance(info.value.__cause__, sched.NoValidHost)


def test_errors_return_gives_the_message_as_data():
    placed = schedule([host("node1", 1536)], REQUEST, errors="return")
    assert list(placed) == ["error"] and "RamFilter: node1 has 1536 MB usable, 2048 MB requested" in placed["error"]
    assert "selected" in schedule([host("node1")], REQUEST, errors="return")
    with pytest.raises(AnsibleFilterError, match="errors must be raise or return, got 'ignore'"):
        schedule([host("node1")], REQUEST, errors="ignore")


def test_documented_defaults_match_the_engine():
    doc = yaml.safe_load(plugin.DOCUMENTATION)
    text = " ".join(doc["description"])
    filters_line = next(line for line in doc["description"] if line.startswith("Default filters:"))
    default_filters = filters_line.split(":", 1)[1].split(".")[0].replace(" ", "").split(",")
    assert default_filters == list(sched.DEFAULT_FILTERS)
    for name in set(sched.FILTERS) - set(sched.DEFAULT_FILTERS):
        assert name in text
    for name in sched.DEFAULT_WEIGHERS:
        assert name in text
    multipliers = " ".join(doc["options"]["weigher_multipliers"]["description"])
    for option, value in sched.MULTIPLIER_DEFAULTS.items():
        assert f"C({option}={value})" in multipliers
    assert doc["positional"] == "_input, request"
    yaml.safe_load(plugin.EXAMPLES)
    assert "selected" in yaml.safe_load(plugin.RETURN)["_value"]["contains"]
