# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The virtcloud.compute.instance_request filter: an adapter over plugin_utils/_instance_request.py."""

from __future__ import annotations

DOCUMENTATION = r"""
name: instance_request
short_description: Check a request for an action on an existing instance, before anything changes
version_added: 0.1.0
author: Contributors to the virtcloud.compute project
description:
  - Checks what role M(virtcloud.compute.instance) is asked to do, with the collection's own rules (the actions and
    the options each requires from the action registry, the request id and instance patterns, the image store's rule
    for a snapshot's name), and fails naming each bad value only.
  - Makes the request id (C(req-<uuid4>)) when none is given.
positional: _input
options:
  _input:
    description:
      - C(instance) (a uuid or an instance name), C(action), C(request_id) (empty or C(req-<uuid>)), C(image),
        C(snapshot_name), C(reason).
    type: dict
    required: true
  errors:
    description:
      - V(raise) fails the task with the message; V(return) gives a dictionary with the message as C(error) instead, so
        that a M(ansible.builtin.fail) task can fail with the message alone.
    type: str
    choices: [raise, return]
    default: raise
"""

EXAMPLES = r"""
- name: Check the request
  ansible.builtin.set_fact:
    checked: "{{ {'instance': 'web-1', 'action': 'snapshot', 'snapshot_name': 'web-1-snap'} | virtcloud.compute.instance_request }}"
"""

RETURN = r"""
_value:
  description:
    - C(request_id), the given one or a new one; or C(error) with O(errors=return).
  type: dict
"""

import typing as t
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.virtcloud.compute.plugins.plugin_utils._refusal import refusable

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError

# The backend is imported when a filter runs, not with this file: Ansible imports every filter
# file of the collection, in each worker process, to find one filter by name.

FIELDS = ("instance", "action", "request_id", "image", "snapshot_name", "reason")


def instance_request_filter(params: t.Any, errors: str = "raise") -> dict:
    if not isinstance(params, Mapping):
        raise AnsibleFilterError(f"virtcloud.compute.instance_request: the input must be a dictionary, got {type(params).__name__}")
    unknown = sorted(set(params) - set(FIELDS))
    if unknown:
        raise AnsibleFilterError(f"virtcloud.compute.instance_request: unknown keys {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    from ansible_collections.virtcloud.compute.plugins.plugin_utils._instance_request import check_instance_request  # pylint: disable=import-outside-toplevel

    return refusable("instance_request", errors, lambda: check_instance_request(**{k: ("" if v is None else v) for k, v in params.items()}), VirtcloudError)


class FilterModule:
    def filters(self) -> dict[str, t.Callable]:
        return {"instance_request": instance_request_filter}
