# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one merge rule for the data an operator changes: flavors, server groups, the instance network.

Ansible replaces a dictionary variable whole when it is given again (``hash_behaviour =
replace``, the only supported setting), so an operator who adds one flavor as an extra var
would have to repeat all of them. The collection therefore keeps its defaults in variables of
their own (``virtcloud_flavors_default``, ``virtcloud_server_groups_default``,
``virtcloud_network_default``) and merges the operator's variables of the plain names over
them, here and nowhere else:

* flavors and server groups (``kind`` ``flavors`` / ``server_groups``) are catalogues by name:
  an operator's entry adds a name or replaces that name's entry whole (a flavor is never
  merged field by field: Nova's flavors are immutable, a changed one is a new definition),
  and an entry set to null (``~``) removes the default of that name;
* the network (``kind`` ``network``) is one object: the operator's keys replace the default's
  keys (``{subnet: 10.200.0.0/24}`` keeps the default name and VNI).

To replace the defaults whole, set the ``*_default`` variable to ``{}`` as well.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError

# kind -> (the operator's variable, the defaults' variable, whether it is a catalogue of named entries)
KINDS = {
    "flavors": ("virtcloud_flavors", "virtcloud_flavors_default", True),
    "server_groups": ("virtcloud_server_groups", "virtcloud_server_groups_default", True),
    "network": ("virtcloud_network", "virtcloud_network_default", False),
}


class CatalogError(VirtcloudError):
    """Operator data that cannot be merged; the message names the variable and the entry."""


def _mapping(value: t.Any, what: str) -> dict:
    if value is None or value == "":
        return {}
    if not isinstance(value, Mapping):
        raise CatalogError(f"{what} must be a dictionary, got {type(value).__name__} {value!r}")
    return dict(value)


def merge_catalog(defaults: t.Any, additions: t.Any, kind: str) -> dict:
    """DEFAULTS with the operator's ADDITIONS merged over them, by the rule of KIND (see the module's doc)."""
    if kind not in KINDS:
        raise CatalogError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    variable, default_variable, named = KINDS[kind]
    merged = _mapping(defaults, default_variable)
    extra = _mapping(additions, variable)
    for key, value in extra.items():
        if not isinstance(key, str) or not key:
            raise CatalogError(f"{variable}: key {key!r} is not a non-empty string")
        if value is None:
            merged.pop(key, None)
        elif named and not isinstance(value, Mapping):
            raise CatalogError(f"{variable}[{key!r}] must be a dictionary (or null to remove the default {key!r}), got {type(value).__name__} {value!r}")
        else:
            merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged
