# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The merge rule of the operator's flavors, server groups and network over the collection's defaults."""

from __future__ import annotations

import os

import pytest
import yaml

from ansible_collections.virtcloud.compute.plugins.plugin_utils._catalog import CatalogError, merge_catalog

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
TINY = {"vcpus": 1, "ram_mb": 256, "disk_gb": 1}
BIG = {"vcpus": 2, "ram_mb": 2048, "disk_gb": 10}


@pytest.mark.parametrize(
    "defaults, additions, kind, merged",
    [
        # an addition keeps every default
        ({"m1.tiny": TINY}, {"m1.big": BIG}, "flavors", {"m1.tiny": TINY, "m1.big": BIG}),
        # an entry of the same name replaces the default's entry whole (no field kept from it)
        ({"m1.tiny": dict(TINY, extra_specs={"a": "1"})}, {"m1.tiny": BIG}, "flavors", {"m1.tiny": BIG}),
        # null removes a default
        ({"m1.tiny": TINY, "m1.big": BIG}, {"m1.big": None}, "flavors", {"m1.tiny": TINY}),
        ({"m1.tiny": TINY}, {"m1.gone": None}, "flavors", {"m1.tiny": TINY}),
        # nothing given: the defaults; no defaults: the operator's alone (how to replace them whole)
        ({"m1.tiny": TINY}, None, "flavors", {"m1.tiny": TINY}),
        ({"m1.tiny": TINY}, {}, "flavors", {"m1.tiny": TINY}),
        ({}, {"m1.big": BIG}, "flavors", {"m1.big": BIG}),
        (None, {"m1.big": BIG}, "flavors", {"m1.big": BIG}),
        (
            {"web-anti": {"policy": "anti-affinity"}},
            {"db-aff": {"policy": "affinity"}},
            "server_groups",
            {"web-anti": {"policy": "anti-affinity"}, "db-aff": {"policy": "affinity"}},
        ),
        # the network is one object: key by key
        (
            {"name": "private", "subnet": "10.100.0.0/24", "vni": 100},
            {"subnet": "10.200.0.0/24"},
            "network",
            {"name": "private", "subnet": "10.200.0.0/24", "vni": 100},
        ),
        ({"name": "private", "subnet": "10.100.0.0/24", "vni": 100}, None, "network", {"name": "private", "subnet": "10.100.0.0/24", "vni": 100}),
    ],
)
def test_merge(defaults, additions, kind, merged):
    assert merge_catalog(defaults, additions, kind) == merged


def test_the_inputs_are_not_changed():
    defaults, additions = {"m1.tiny": TINY, "m1.big": BIG}, {"m1.big": None, "m1.x": TINY}
    merge_catalog(defaults, additions, "flavors")
    assert defaults == {"m1.tiny": TINY, "m1.big": BIG} and additions == {"m1.big": None, "m1.x": TINY}


@pytest.mark.parametrize(
    "defaults, additions, kind, message",
    [
        ({}, ["m1.tiny"], "flavors", "virtcloud_flavors must be a dictionary, got list"),
        ({}, {"m1.tiny": "small"}, "flavors", "virtcloud_flavors['m1.tiny'] must be a dictionary (or null to remove the default 'm1.tiny'), got str"),
        ({}, {"g": ["affinity"]}, "server_groups", "virtcloud_server_groups['g'] must be a dictionary"),
        ("x", {}, "network", "virtcloud_network_default must be a dictionary, got str"),
        ({}, {1: {}}, "flavors", "virtcloud_flavors: key 1 is not a non-empty string"),
        ({}, {}, "images", "kind 'images' is not one of flavors, server_groups, network"),
    ],
)
def test_bad_data_is_named(defaults, additions, kind, message):
    with pytest.raises(CatalogError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        merge_catalog(defaults, additions, kind)


def test_the_playbooks_defaults_are_in_the_default_variables():
    """Operators' variables of the plain names are never set by the collection (else they could not add to them)."""
    with open(os.path.join(TOP, "playbooks", "group_vars", "all", "virtcloud.yml"), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert {"virtcloud_flavors_default", "virtcloud_server_groups_default", "virtcloud_network_default"} <= set(data)
    assert not {"virtcloud_flavors", "virtcloud_server_groups", "virtcloud_network"} & set(data)
