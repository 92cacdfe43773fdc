# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The virtcloud.compute.instance_noop filter: an adapter over plugin_utils/_instance_noop.py."""

from __future__ import annotations

DOCUMENTATION = r"""
name: instance_noop
short_description: Whether an action on an instance would change nothing, from what instance_info read
version_added: 0.1.0
author: Contributors to the virtcloud.compute project
description:
  - The action registry's own decision (the one M(virtcloud.compute.instance_action) makes on the host) on the record
    and domain state that M(virtcloud.compute.instance_info) returned; true when the instance is already where the
    action leads (for example C(start) of an active, running instance, C(lock) of a locked one).
  - False for anything else, a refusal by Nova's state table included, so that M(virtcloud.compute.instance_action)
    runs and decides on the host.
positional: _input, action
options:
  _input:
    description: One item of the C(instances) of M(virtcloud.compute.instance_info) (with C(record) and C(state)).
    type: dict
    required: true
  action:
    description: The action.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Start the instance unless it runs already
  virtcloud.compute.instance_action:
    instance: "{{ found.uuid }}"
    action: start
  when: not found | virtcloud.compute.instance_noop('start')
"""

RETURN = r"""
_value:
  description: True when the action would change nothing.
  type: bool
"""

import typing as t

from ansible_collections.virtcloud.compute.plugins.plugin_utils._instance_noop import instance_noop


class FilterModule:
    def filters(self) -> dict[str, t.Callable]:
        return {"instance_noop": instance_noop}
