#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: compute_facts
short_description: The compute host as Nova's scheduler sees it (HostState)
version_added: 0.1.0
description:
  - Reads the host's libvirt (node info, memory, capabilities, domain capabilities, every
    domain and the instance record in its metadata), the instances filesystem and the
    service record, and returns the host with the field names of Nova's C(HostState),
    ready for the filter plugin C(virtcloud.compute.schedule).
  - Capacity is allocation based, as Nova's resource tracker counts it. The flavors of
    the instances on the host (running or shut off) claim their vCPUs, RAM and disk;
    instances in vm_state C(deleted) or C(shelved_offloaded) claim nothing. The reserved
    memory and disk are taken off the totals before the allocation ratios apply, as
    placement computes capacity.
  - Domains without a collection record are listed in C(other_domains).
    Their memory and vCPUs, running or not, are taken off C(free_ram_mb) and added to
    C(vcpus_used), because nothing else would stop the scheduler from overcommitting
    against them.
  - When libvirt does not answer, the facts still come back with C(service.up=false),
    the reason in C(service.down_reason), zero capacity and no instances, so that the
    scheduler reports the host as down.
  - Read only. Sets the fact C(virtcloud_host).
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.attributes.no_diff
  - virtcloud.compute.connection
  - virtcloud.compute.capacity
  - virtcloud.compute.instances_path
  - virtcloud.compute.request_id
options:
  host:
    description:
      - The host's name for the scheduler, normally C({{ inventory_hostname }}).
      - Defaults to the host's own hostname (Nova's C(host) option).
    type: str
  availability_zone:
    description:
      - The host's availability zone, normally C({{ virtcloud_availability_zone }}) from the inventory.
      - When empty, the C(availability_zone) metadata of the host's aggregates, else C(nova)
        (Nova's C(default_availability_zone)).
    type: str
  aggregates:
    description:
      - The host aggregates the host is in, normally C({{ virtcloud_aggregates }}) from the
        inventory. Metadata values are turned into strings, as Nova keeps them.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of the aggregate.
        type: str
        required: true
      metadata:
        description: Key/value metadata of the aggregate (extra specs matching, zone, weigher multipliers).
        type: dict
        default: {}
  service_file:
    description:
      - The service record written by M(virtcloud.compute.compute_service). A host without
        one is enabled.
    type: path
    default: /var/lib/virtcloud/service.json
notes:
  - Needs python3-libvirt and python3-lxml for the Python that runs the module on the host.
  - C(hypervisor_type) is C(QEMU) for kvm and qemu alike, as Nova
    reports it; C(virt_type) says which domain type to use.
seealso:
  - module: virtcloud.compute.compute_service
"""

EXAMPLES = r"""
- name: Gather the host facts of every compute host
  virtcloud.compute.compute_facts:
    host: "{{ inventory_hostname }}"
    instances_path: "{{ virtcloud_instances_path }}"
    availability_zone: "{{ virtcloud_availability_zone | default('') }}"
    aggregates: "{{ virtcloud_aggregates | default([]) }}"

- name: Schedule one instance over them
  ansible.builtin.set_fact:
    placement: >-
      {{ groups['compute'] | map('extract', hostvars, ['ansible_facts', 'virtcloud_host'])
         | list | virtcloud.compute.schedule({'flavor': flavor}) }}
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
ansible_facts:
  description: Facts set on the host.
  returned: always
  type: complex
  contains:
    virtcloud_host:
      description:
        - The host as Nova's HostState sees it. Sizes in MB unless the name says GB.
        - "Keys: host, hypervisor_hostname, uuid (libvirt host uuid), hypervisor_type, virt_type,
          hypervisor_version and libvirt_version (major * 1000000 + minor * 1000 + micro),
          cpu_info (arch, model, vendor, topology, features), supported_instances
          ([arch, hypervisor type, vm mode] lists), instances_path, availability_zone,
          aggregates, service (host, binary, enabled, disabled_reason, updated_at, forced_down,
          up, down_reason), vcpus_total, vcpus_used, memory_mb_total, memory_mb_reserved,
          memory_mb_used, total_usable_ram_mb, free_ram_mb, local_gb, disk_mb_reserved,
          disk_mb_used, total_usable_disk_gb, free_disk_mb, disk_available_least,
          cpu_allocation_ratio, ram_allocation_ratio, disk_allocation_ratio, num_instances,
          num_io_ops, instances, other_domains, updated."
        - Each of instances has uuid, name, domain, project, flavor, vm_state, task_state,
          power_state (Nova's number, from libvirt's state now), domain_state (virsh's name),
          server_group, availability_zone and host (from the record).
        - Each of other_domains has name, uuid, domain_state, vcpus, memory_mb and reason.
      returned: always
      type: dict
      sample:
        host: node1
        hypervisor_hostname: node1
        uuid: d0828ffe-6c7a-420e-ac9f-ed277f3a434a
        hypervisor_type: QEMU
        virt_type: qemu
        hypervisor_version: 7002022
        libvirt_version: 9000000
        cpu_info:
          arch: x86_64
          model: kvm64
          vendor: AMD
          topology: {cells: 1, sockets: 1, cores: 2, threads: 1}
          features: [aes, avx, avx2]
        supported_instances: [[i686, qemu, hvm], [x86_64, qemu, hvm]]
        instances_path: /var/lib/virtcloud/instances
        availability_zone: az1
        aggregates: [{name: ssd, metadata: {ssd: "true"}}]
        service: {host: node1, binary: nova-compute, enabled: true, disabled_reason: null, updated_at: null,
                  forced_down: false, up: true, down_reason: null}
        vcpus_total: 2
        vcpus_used: 2
        memory_mb_total: 24105
        memory_mb_reserved: 512
        memory_mb_used: 1024
        total_usable_ram_mb: 23593
        free_ram_mb: 23081
        local_gb: 251
        disk_mb_reserved: 0
        disk_mb_used: 1024
        total_usable_disk_gb: 251
        free_disk_mb: 256000
        disk_available_least: 79
        cpu_allocation_ratio: 4.0
        ram_allocation_ratio: 1.0
        disk_allocation_ratio: 1.0
        num_instances: 1
        num_io_ops: 0
        instances:
          - uuid: 3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b
            name: web-1
            domain: instance-3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b
            project: demo
            flavor: {name: m1.small, vcpus: 2, ram_mb: 512, disk_gb: 1, ephemeral_gb: 0, swap_mb: 0, extra_specs: {}}
            vm_state: active
            task_state: null
            power_state: 1
            domain_state: running
            server_group: null
            availability_zone: az1
            host: node1
        other_domains: []
        updated: "2025-01-01T12:00:00.000000Z"
host_state:
  description: The same dictionary as RV(ansible_facts.virtcloud_host).
  returned: always
  type: dict
  sample: {host: node1, free_ram_mb: 23081}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._capacity import allocation_argument_spec, allocation_params
from ansible_collections.virtcloud.compute.plugins.module_utils._common import (
    VirtcloudError,
    connection_argument_spec,
    instances_path_argument_spec,
    request_id,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import (
    NO_RECORD,
    connections,
    gather_host_facts,
    require_libraries,
)


def main():
    argument_spec = dict(connection_argument_spec(), **allocation_argument_spec())
    argument_spec.update(
        **instances_path_argument_spec(),
        host=dict(type="str"),
        availability_zone=dict(type="str"),
        aggregates=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                name=dict(type="str", required=True),
                metadata=dict(type="dict", default={}),
            ),
        ),
        **allocation_argument_spec(),
        service_file=dict(type="path", default="/var/lib/virtcloud/service.json"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_libraries(module)
    p = module.params
    try:
        request_id(p["request_id"])
        with connections():
            facts = gather_host_facts(
                uri=p["uri"],
                instances_path=p["instances_path"],
                host=p["host"],
                availability_zone=p["availability_zone"],
                aggregates=p["aggregates"],
                **allocation_params(p),
                service_file=p["service_file"],
            )
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    if not facts["service"]["up"]:
        module.warn(f"host {facts['host']}: libvirt does not answer, the facts say service.up=false: {facts['service']['down_reason']}")
    for other in facts["other_domains"]:
        if other["reason"] != NO_RECORD:
            module.warn(f"domain {other['name']}: {other['reason']}; it is counted as a foreign domain")
    module.exit_json(changed=False, ansible_facts={"virtcloud_host": facts}, host_state=facts)


if __name__ == "__main__":
    main()
