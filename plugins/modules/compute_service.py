#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: compute_service
short_description: Enable or disable a compute host for new instances, like nova service-enable/disable
version_added: 0.1.0
description:
  - Keeps the host's service record, a small JSON file on the compute host with
    C(enabled), C(disabled_reason), C(updated_at) and C(host), the way
    C(nova service-disable --reason) and C(nova service-enable) keep the row of the
    C(nova-compute) service.
  - M(virtcloud.compute.compute_facts) reports it as C(service), and the scheduler's
    ComputeFilter places no new instance on a disabled host. Instances already on the
    host are not touched.
  - A host without a record is enabled (Nova's C(enable_new_services)), so O(state=enabled)
    on a new host changes nothing and writes no file.
  - The file is replaced atomically (a temporary file in the same folder, fsync, rename).
    C(updated_at) changes only when the record changes.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.attributes.full
  - virtcloud.compute.request_id
options:
  state:
    description:
      - V(enabled) lets the scheduler place new instances on the host and clears the reason;
        V(disabled) stops it.
    type: str
    choices: [enabled, disabled]
    default: enabled
  disabled_reason:
    description:
      - Why the host is disabled, required with O(state=disabled), at most 255 characters
        on one line. Not used with O(state=enabled).
    type: str
  host:
    description:
      - The host's name for the scheduler, normally C({{ inventory_hostname }}).
      - Defaults to the host's own hostname. A record of another host in O(service_file)
        is refused, so a path on shared storage cannot disable several hosts at once.
    type: str
  service_file:
    description:
      - Where the record is kept on the host; its folder is made when missing.
    type: path
    default: /var/lib/virtcloud/service.json
seealso:
  - module: virtcloud.compute.compute_facts
"""

EXAMPLES = r"""
- name: Take node2 out of scheduling for maintenance
  virtcloud.compute.compute_service:
    host: "{{ inventory_hostname }}"
    state: disabled
    disabled_reason: "maintenance: firmware update, ticket OPS-1234"

- name: Put it back
  virtcloud.compute.compute_service:
    host: "{{ inventory_hostname }}"
    state: enabled
"""

RETURN = r"""
service:
  description: The service record after the run (in check mode, the record the run would write).
  returned: always
  type: dict
  contains:
    host:
      description: The host the record belongs to.
      type: str
      sample: node2
    enabled:
      description: Whether the scheduler may place new instances on the host.
      type: bool
      sample: false
    disabled_reason:
      description: Why the host is disabled; null when enabled.
      type: str
      sample: "maintenance: firmware update"
    updated_at:
      description: When the record last changed (UTC, ISO 8601); null for a host that never had a record.
      type: str
      sample: "2025-01-01T12:00:00.000000Z"
  sample:
    host: node2
    enabled: false
    disabled_reason: "maintenance: firmware update"
    updated_at: "2025-01-01T12:00:00.000000Z"
service_file:
  description: The path of the record.
  returned: always
  type: str
  sample: /var/lib/virtcloud/service.json
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import HostLog, VirtcloudError, request_id, request_id_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import (
    check_host_name,
    default_host,
    set_service_state,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["enabled", "disabled"], default="enabled"),
            disabled_reason=dict(type="str"),
            host=dict(type="str"),
            service_file=dict(type="path", default="/var/lib/virtcloud/service.json"),
            **request_id_argument_spec(),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        req = request_id(p["request_id"])
        host = check_host_name(p["host"] or default_host())
        result = set_service_state(p["service_file"], p["state"], p["disabled_reason"], host, check_mode=module.check_mode)
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    if result["changed"] and not module.check_mode:
        after = result["after"]
        HostLog("compute_service", req).info(
            f"service of host {host} {'enabled' if after['enabled'] else 'disabled: ' + str(after['disabled_reason'])} ({p['service_file']})"
        )
    output = dict(changed=result["changed"], service=result["after"], service_file=p["service_file"])
    if module._diff:
        before = result["before"] if result["exists"] or not result["changed"] else {}
        output["diff"] = dict(before=before, after=result["after"], before_header=p["service_file"], after_header=p["service_file"])
    module.exit_json(**output)


if __name__ == "__main__":
    main()
