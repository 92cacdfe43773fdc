# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The virtcloud.compute.merge_catalog filter: an adapter over plugin_utils/_catalog.py."""

from __future__ import annotations

DOCUMENTATION = r"""
name: merge_catalog
short_description: Merge an operator's flavors, server groups or network over the collection's defaults
version_added: 0.1.0
author: Contributors to the virtcloud.compute project
description:
  - Ansible replaces a dictionary variable whole when it is set again, so the collection keeps its defaults in
    C(virtcloud_flavors_default), C(virtcloud_server_groups_default) and C(virtcloud_network_default) and merges the
    operator's C(virtcloud_flavors), C(virtcloud_server_groups) and C(virtcloud_network) (extra vars, inventory
    group_vars or host_vars) over them with this filter.
  - "Flavors and server groups (O(kind=flavors), O(kind=server_groups)): an entry adds a name or replaces that name's
    entry whole; an entry set to null removes the default of that name."
  - "The network (O(kind=network)): the operator's keys replace the default's keys, the others are kept."
  - To replace the defaults whole, set the C(*_default) variable to C({}) too.
positional: _input, additions, kind
options:
  _input:
    description: The defaults (a dictionary; null is an empty one).
    type: dict
    required: true
  additions:
    description: The operator's dictionary (null or empty changes nothing).
    type: dict
    required: true
  kind:
    description: Which data, and so which rule.
    type: str
    choices: [flavors, server_groups, network]
    required: true
"""

EXAMPLES = r"""
- name: The flavors a launch may use
  ansible.builtin.set_fact:
    flavors: "{{ virtcloud_flavors_default | virtcloud.compute.merge_catalog(virtcloud_flavors | default({}), 'flavors') }}"
"""

RETURN = r"""
_value:
  description: The merged dictionary.
  type: dict
"""

import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.virtcloud.compute.plugins.plugin_utils._catalog import CatalogError, merge_catalog


def merge_catalog_filter(defaults: t.Any, additions: t.Any, kind: str) -> dict:
    try:
        return merge_catalog(defaults, additions, kind)
    except CatalogError as exc:
        raise AnsibleFilterError(f"virtcloud.compute.merge_catalog: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, t.Callable]:
        return {"merge_catalog": merge_catalog_filter}
