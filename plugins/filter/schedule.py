# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The virtcloud.compute.schedule filter: an adapter over plugin_utils/_scheduler.py."""

from __future__ import annotations


DOCUMENTATION = r"""
name: schedule
short_description: Choose compute hosts for instances the way Nova's filter scheduler does
version_added: 0.1.0
author: Contributors to the virtcloud.compute project
description:
  - Runs Nova's filter scheduler over the host facts gathered by M(virtcloud.compute.compute_facts) and returns a host
    for each instance of the request, ordered alternates, and a trace of every decision.
  - "Filters remove hosts that cannot take the instance: each enabled filter runs in the order given and the trace
    records, for each filter, the hosts left and every rejected host with the numbers (for example
    C(RamFilter: node2 has 1536 MB usable, 2048 MB requested))."
  - "Weighers rank the remaining hosts: each weigher's raw value per host is clamped to the weigher's bounds, scaled
    to 0..1 (all equal gives 0), multiplied by its signed multiplier and summed. A multiplier set as metadata of an
    aggregate (same name as in O(weigher_multipliers)) overrides it for the hosts of that aggregate; when several
    aggregates set it, the smallest value wins. Ties are broken by host name."
  - With C(num_instances) greater than 1 in O(request), all instances are placed in one call; each placed instance
    consumes RAM, disk, vCPUs, an instance slot and an I/O operation on its host and joins the server group before
    the next one is placed. If any instance has no valid host, the whole request fails.
  - An instance never overcommits against one host's physical total, whatever the allocation ratios.
  - Hints and availability zones never bypass a filter; there are no forced hosts.
  - Every option after O(request) may be left out or given as C(omit) for its default.
  - When no host is valid for an instance, the filter fails with a message that names the instance, the flavor,
    how many hosts each filter left and why hosts were rejected.
  - "Default filters: RetryFilter, ComputeFilter, AvailabilityZoneFilter, RamFilter, DiskFilter, CoreFilter,
    ComputeCapabilitiesFilter, ImagePropertiesFilter, AggregateInstanceExtraSpecsFilter, ServerGroupAntiAffinityFilter,
    ServerGroupAffinityFilter, SameHostFilter, DifferentHostFilter. Also available: NumInstancesFilter, IoOpsFilter."
  - "Default weighers (all of them): RAMWeigher, CPUWeigher, DiskWeigher, IoOpsWeigher, NumInstancesWeigher,
    ServerGroupSoftAffinityWeigher, ServerGroupSoftAntiAffinityWeigher, BuildFailureWeigher, HypervisorVersionWeigher."
positional: _input, request
options:
  _input:
    description:
      - The host facts, one dictionary per compute host, as returned by M(virtcloud.compute.compute_facts) plus C(host),
        the inventory name.
      - "Required keys: C(host), C(free_ram_mb), C(total_usable_ram_mb), C(vcpus_total), C(vcpus_used),
        C(total_usable_disk_gb), C(free_disk_mb), C(ram_allocation_ratio), C(cpu_allocation_ratio),
        C(disk_allocation_ratio), C(num_instances), C(num_io_ops)."
      - "Optional keys: C(disk_available_least), C(hypervisor_type), C(hypervisor_version) (integer, major * 1000000 +
        minor * 1000 + micro), C(supported_instances) (list of [architecture, hypervisor type, vm mode]), C(cpu_info),
        C(availability_zone), C(aggregates) (list of C(name) and C(metadata)), C(service) (C(enabled),
        C(disabled_reason), C(up)), C(instances) (list of C(uuid), C(name), C(flavor), C(vm_state), C(task_state),
        C(server_group)), C(failed_builds). Other keys are kept for unscoped ComputeCapabilitiesFilter lookups."
    type: list
    elements: dict
    required: true
  request:
    description:
      - What to place.
      - "C(flavor) (required): C(name), C(vcpus), C(ram_mb), C(disk_gb), C(ephemeral_gb), C(swap_mb), C(extra_specs).
        Extra specs C(capabilities:<path>) are checked by ComputeCapabilitiesFilter, C(aggregate_instance_extra_specs:<key>)
        by AggregateInstanceExtraSpecsFilter, with Nova's operators C(=), C(==), C(!=), C(>=), C(<=), C(s==), C(s!=),
        C(s<), C(s<=), C(s>), C(s>=), C(<in>), C(<all-in>), C(<or>). Use scoped keys: an unscoped key is checked by both
        filters, as in Nova."
      - "C(image): C(id) and C(properties); ImagePropertiesFilter reads C(hw_architecture), C(img_hv_type), C(hw_vm_mode)
        and C(img_hv_requested_version) (for example C(>= 7.0))."
      - "C(availability_zone): the zone name."
      - "C(group): the server group, C(name), C(policy) (C(affinity), C(anti-affinity), C(soft-affinity) or
        C(soft-anti-affinity)), C(rules) (C(max_server_per_host), anti-affinity only, default 1) and C(hosts), the host
        of each current member (one entry per member)."
      - "C(hints): C(same_host) and C(different_host), lists of instance UUIDs."
      - "C(retry_hosts): hosts already tried for this request (RetryFilter)."
      - "C(num_instances): how many instances to place, default 1."
    type: dict
    required: true
  filters:
    description:
      - The enabled filters, in the order they run. Unknown names are an error.
      - Omit for the default list given above.
    type: list
    elements: str
  weighers:
    description:
      - The enabled weighers. Unknown names are an error.
      - Omit for all weighers.
    type: list
    elements: str
  weigher_multipliers:
    description:
      - Multipliers by Nova's option name; a negative multiplier inverts a weigher (a negative C(ram_weight_multiplier)
        stacks instances instead of spreading them).
      - "Defaults, as in Nova: C(ram_weight_multiplier=1.0), C(cpu_weight_multiplier=1.0), C(disk_weight_multiplier=1.0),
        C(io_ops_weight_multiplier=-1.0), C(num_instances_weight_multiplier=0.0), C(soft_affinity_weight_multiplier=1.0),
        C(soft_anti_affinity_weight_multiplier=1.0), C(build_failure_weight_multiplier=1000000.0) (applied negated),
        C(hypervisor_version_weight_multiplier=1.0)."
    type: dict
  filter_options:
    description:
      - "C(max_instances_per_host) for NumInstancesFilter (default 50), C(max_io_ops_per_host) for IoOpsFilter
        (default 8), C(default_availability_zone), the zone of a host that names none (default C(nova))."
    type: dict
  max_attempts:
    description:
      - Attempts per instance, as Nova's C(max_attempts); each instance gets up to O(max_attempts) - 1 alternates.
    type: int
    default: 3
  host_subset_size:
    description:
      - Choose at random among the best N hosts instead of always the best one, as Nova's C(host_subset_size).
      - The choice is reproducible; set O(seed) (for example to the request id) so that concurrent runs differ.
    type: int
    default: 1
  seed:
    description:
      - Seed for the choice within O(host_subset_size). The default seed is 0.
    type: raw
  errors:
    description:
      - V(raise) fails the task with the scheduler's message (NoValidHost and why); V(return) gives a dictionary with
        the message as C(error) instead, so that a M(ansible.builtin.fail) task can fail with the message alone.
    type: str
    choices: [raise, return]
    default: raise
"""

EXAMPLES = r"""
---
- name: Place two instances of m1.small, spread by free RAM
  ansible.builtin.set_fact:
    placement: >-
      {{ compute_hosts | virtcloud.compute.schedule({
           'flavor': {'name': 'm1.small', 'vcpus': 1, 'ram_mb': 2048, 'disk_gb': 20},
           'image': {'id': image_id, 'properties': {'hw_architecture': 'x86_64'}},
           'availability_zone': 'az1',
           'num_instances': 2}) }}

- name: Stack instances on the fullest hosts, only RAM counts
  ansible.builtin.set_fact:
    placement: >-
      {{ compute_hosts | virtcloud.compute.schedule(request,
           weighers=['RAMWeigher'], weigher_multipliers={'ram_weight_multiplier': -1.0}) }}

- name: Retry after a failed spawn on the first choice
  ansible.builtin.set_fact:
    placement: >-
      {{ compute_hosts | virtcloud.compute.schedule(request | combine({'retry_hosts': [placement.selected[0]]}),
           host_subset_size=2, seed=request_id) }}

- name: Show where each instance goes and why
  ansible.builtin.debug:
    msg: "{{ placement.selected }} (alternates {{ placement.alternates }}), filters: {{ placement.trace.instances[0].filters }}"
"""

RETURN = r"""
_value:
  description:
    - The placement; with O(errors=return) and no valid host, a dictionary with the message as C(error).
  type: dict
  contains:
    selected:
      description: The chosen host for each instance, in order.
      type: list
      elements: str
      sample: [node1, node2]
    alternates:
      description:
        - For each instance, up to O(max_attempts) - 1 other hosts, best first, that passed the filters for it and were
          not selected for any instance of the request.
      type: list
      elements: list
      sample: [[node3], [node3]]
    trace:
      description:
        - C(filters), C(weighers), C(multipliers), C(filter_options), C(host_subset_size), C(max_attempts), C(hosts)
          (count), C(warnings) (for example an aggregate multiplier that is not a number), and C(instances).
        - Each element of C(instances) has C(instance) (1-based), C(hosts) (count), C(filters) (one entry per filter
          with C(filter), C(applied), C(hosts_left), C(hosts) and C(rejected), a list of C(host), C(filter) and C(reason)),
          C(weights) (best first, each with C(host), C(total) and per weigher C(raw), C(normalised), C(multiplier),
          C(weighted)), C(subset), C(selected) and C(alternates).
      type: dict
"""

import typing as t
from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError

from ansible_collections.virtcloud.compute.plugins.plugin_utils._refusal import refusable

# The backend is imported when a filter runs, not with this file: Ansible imports every filter
# file of the collection, in each worker process, to find one filter by name.


def _omitted(value: t.Any) -> bool:
    """True for Jinja's ``omit``, so that ``filters=my_filters | default(omit)`` means the default.

    ansible-core 2.19 hands filters its Omit singleton (no public name to import);
    earlier releases handed a placeholder string.
    """
    return type(value).__name__ == "_OmitType" or (isinstance(value, str) and value.startswith("__omit_place_holder__"))


def schedule_filter(
    hosts: t.Any,
    request: t.Any,
    filters: t.Any = None,
    weighers: t.Any = None,
    weigher_multipliers: t.Any = None,
    filter_options: t.Any = None,
    max_attempts: t.Any = 3,
    host_subset_size: t.Any = 1,
    seed: t.Any = None,
    errors: str = "raise",
) -> dict[str, t.Any]:
    options = {
        "filters": filters,
        "weighers": weighers,
        "weigher_multipliers": weigher_multipliers,
        "filter_options": filter_options,
        "max_attempts": max_attempts,
        "host_subset_size": host_subset_size,
        "seed": seed,
    }
    defaults = {"max_attempts": 3, "host_subset_size": 1}
    options = {key: defaults.get(key) if _omitted(value) else value for key, value in options.items()}
    if isinstance(hosts, (str, bytes)) or not isinstance(hosts, Sequence):
        raise AnsibleFilterError(f"virtcloud.compute.schedule: the input must be a list of host facts, got {type(hosts).__name__}")
    if not isinstance(request, Mapping):
        raise AnsibleFilterError(f"virtcloud.compute.schedule: the request must be a dictionary, got {type(request).__name__}")
    from ansible_collections.virtcloud.compute.plugins.plugin_utils._scheduler import SchedulerError, schedule  # pylint: disable=import-outside-toplevel

    return refusable("schedule", errors, lambda: schedule(list(hosts), dict(request), **options), SchedulerError, prefix="virtcloud.compute.schedule: ")


class FilterModule:
    """Ansible jinja2 filters"""

    def filters(self) -> dict[str, t.Callable]:
        return {
            "schedule": schedule_filter,
        }
