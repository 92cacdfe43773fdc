# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The virtcloud.compute.image_report filter: an adapter over plugin_utils/_image_report.py."""

from __future__ import annotations

DOCUMENTATION = r"""
name: image_report
short_description: The images of the store with the instances that use them, and whether one may be deleted
version_added: 0.1.0
author: Contributors to the virtcloud.compute project
description:
  - Adds to each image record (from M(virtcloud.compute.image_info)) C(in_use_by), the instances whose record's image
    is that image (name, uuid, host, vm_state); instances in vm_state C(deleted) are left out.
  - With O(delete), says in C(refused) why the images may not be deleted when an instance uses one, unless O(force).
    A running instance's disk never depends on the store (it is an overlay on the compute host's cached copy);
    what would fail after a forced delete is a rescue without an image, a rebuild onto it, or a new host for the
    instance.
positional: _input, instances, delete, force
options:
  _input:
    description: The image records.
    type: list
    elements: dict
    required: true
  instances:
    description: The instances of every compute host (the C(instances) of M(virtcloud.compute.instance_info)) or their records.
    type: list
    elements: dict
    default: []
  delete:
    description: The images are to be deleted.
    type: bool
    default: false
  force:
    description: Delete images that instances use all the same (Glance's behaviour).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Which instances use which image
  ansible.builtin.set_fact:
    report: "{{ found.images | virtcloud.compute.image_report(groups['compute'] | map('extract', hostvars, ['seen', 'instances']) | flatten) }}"
"""

RETURN = r"""
_value:
  description:
    - C(images), the records with C(in_use_by); C(table), the same as lines of text; C(refused), the reason a delete
      may not happen, or null.
  type: dict
"""

import typing as t

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.virtcloud.compute.plugins.plugin_utils._image_report import ImageReportError, image_report


def image_report_filter(images: t.Any, instances: t.Any = None, delete: bool = False, force: bool = False) -> dict:
    try:
        return image_report(images, instances, delete=boolean(delete, strict=True), force=boolean(force, strict=True))
    except (ImageReportError, TypeError) as exc:
        raise AnsibleFilterError(f"virtcloud.compute.image_report: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, t.Callable]:
        return {"image_report": image_report_filter}
