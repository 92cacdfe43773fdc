#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: instance_claim
short_description: Claim (or release) a flavor's resources on a compute host, as nova-compute does before a spawn
version_added: 0.1.0
description:
  - The authoritative check that an instance fits on the host the scheduler chose. Under an
    exclusive lock on the host it reads the host's state now (libvirt's domains plus the claims
    of instances still being built), checks the flavor with the allocation ratios, and records
    the claim.
  - A claim that does not fit fails with the figures, so that the launch moves to the next
    alternate host. Release the claim when the domain is defined (it counts as a domain then)
    or when the spawn failed.
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
  uuid:
    description: The instance's uuid.
    type: str
    required: true
  flavor:
    description:
      - The flavor to claim, with C(vcpus), C(ram_mb), C(disk_gb) and optionally C(ephemeral_gb),
        C(swap_mb), C(name) and C(extra_specs). Required with O(state=present).
    type: dict
  state:
    description: V(present) claims, V(absent) releases.
    type: str
    choices: [present, absent]
    default: present
  claims_file:
    description: The host's claims file; a lock file is kept beside it.
    type: path
    default: /var/lib/virtcloud/claims.json
  host:
    description: The host's name in messages (default the node's hostname).
    type: str
"""

EXAMPLES = r"""
- name: Claim m1.small for the instance on the chosen host
  virtcloud.compute.instance_claim:
    uuid: "{{ instance_uuid }}"
    flavor: {vcpus: 1, ram_mb: 2048, disk_gb: 20}
  delegate_to: "{{ chosen_host }}"

- name: Release it
  virtcloud.compute.instance_claim:
    uuid: "{{ instance_uuid }}"
    state: absent
"""

RETURN = r"""
figures:
  description: The host's figures the claim was checked against (compute_facts' names), when a claim was made.
  returned: when a new claim was checked
  type: dict
  sample: {free_ram_mb: 3072, total_usable_ram_mb: 3584, vcpus_used: 1, vcpus_total: 2}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._capacity import allocation_argument_spec, allocation_params
from ansible_collections.virtcloud.compute.plugins.module_utils._claim import DEFAULT_CLAIMS_FILE, claim, libvirt_host_reader, release
from ansible_collections.virtcloud.compute.plugins.module_utils._common import (
    VirtcloudError,
    connection_argument_spec,
    instances_path_argument_spec,
    request_id,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import validate_flavor, validate_uuid
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import (
    allocation_options,
    check_host_name,
    connections,
    default_host,
    require_libraries,
)


def main():
    spec = dict(connection_argument_spec(), **allocation_argument_spec())
    spec.update(
        uuid=dict(type="str", required=True),
        flavor=dict(type="dict"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        **instances_path_argument_spec(),
        claims_file=dict(type="path", default=DEFAULT_CLAIMS_FILE),
        host=dict(type="str"),
    )
    module = AnsibleModule(argument_spec=spec, required_if=[("state", "present", ("flavor",))], supports_check_mode=True)
    p = module.params
    try:
        request_id(p["request_id"])
        uuid = validate_uuid(p["uuid"])
        if p["state"] == "absent":
            module.exit_json(changed=release(p["claims_file"], uuid, check_mode=module.check_mode))
        require_libraries(module, lxml=False)
        flavor = validate_flavor(p["flavor"])
        host = check_host_name(p["host"] or default_host())
        options = allocation_options(**allocation_params(p))
        with connections():  # the claim connects under its lock, once
            result = claim(
                p["claims_file"], uuid, flavor, host, libvirt_host_reader(None, p["uri"], p["instances_path"], options), check_mode=module.check_mode
            )
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=result["changed"], figures=result["figures"])


if __name__ == "__main__":
    main()
