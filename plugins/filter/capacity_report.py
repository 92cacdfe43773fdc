# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The virtcloud.compute.capacity_report filter: an adapter over plugin_utils/_capacity_report.py."""

from __future__ import annotations

DOCUMENTATION = r"""
name: capacity_report
short_description: Each compute host's used and free RAM, vCPUs and disk against its allocation ratios
version_added: 0.1.0
author: Contributors to the virtcloud.compute project
description:
  - Reads the host facts of M(virtcloud.compute.compute_facts) and returns, per host and per resource (RAM in MB,
    vCPUs, disk in MB), the usable total, the allocation ratio, the capacity (total x ratio), what the instances'
    flavors use, what is free and the largest single instance that fits now.
  - The free figures are the scheduler's and the claim's (RamFilter, DiskFilter, CoreFilter, the one capacity rule
    of the collection), so a flavor fits on a host when it is within every C(free) figure and every C(largest)
    figure.
  - C(largest) is the free figure but never more than the host's physical total, whatever the ratio; one instance
    never gets more vCPUs (or RAM, or disk) than the host has, ratios only let instances share them.
  - "Disk's free figure is the smaller of the allocation-based one (C(allocation_free)) and C(least_mb)
    (C(disk_available_least): the filesystem's free space minus what the qcow2 disks may still grow into), as the
    DiskFilter counts."
positional: _input
options:
  _input:
    description:
      - The host facts, one dictionary per compute host (C(ansible_facts.virtcloud_host) of
        M(virtcloud.compute.compute_facts)).
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: The capacity of every compute host
  ansible.builtin.set_fact:
    capacity: "{{ groups['compute'] | map('extract', hostvars, ['ansible_facts', 'virtcloud_host']) | list | virtcloud.compute.capacity_report }}"
"""

RETURN = r"""
_value:
  description:
    - C(hosts), by host name, each with C(host), C(state) (up, disabled or down), C(disabled_reason), C(down_reason),
      C(availability_zone), C(instances), and C(ram_mb), C(vcpus), C(disk_mb), each with C(total), C(ratio),
      C(capacity), C(used), C(free), C(largest); C(disk_mb) also has C(least_mb) and C(allocation_free).
    - C(table), the same as lines of text.
  type: dict
"""

import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.virtcloud.compute.plugins.plugin_utils._capacity_report import CapacityReportError, capacity_report


def capacity_report_filter(hosts: t.Any) -> dict:
    try:
        return capacity_report(hosts)
    except CapacityReportError as exc:
        raise AnsibleFilterError(f"virtcloud.compute.capacity_report: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, t.Callable]:
        return {"capacity_report": capacity_report_filter}
