#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: instance_info
short_description: The instances on this host, with their records and action logs
version_added: 0.1.0
description:
  - Lists the instances whose domains are on the host the module runs on (every one, or
    the one with O(uuid) or O(name)). For each it returns the record kept in the domain's metadata, the
    domain's libvirt state and Nova's power state, the console log path and the action log
    (C(nova instance-action-list)).
  - Read only. An instance that is not on the host gives an empty list, not an error.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.attributes.no_diff
  - virtcloud.compute.connection
  - virtcloud.compute.instances_path
  - virtcloud.compute.request_id
options:
  instance:
    description:
      - Only this instance, by uuid or by name (a value in the form of a uuid is a uuid), as
        O(virtcloud.compute.instance_action#module:instance) takes it.
      - Mutually exclusive with O(uuid) and O(name).
    type: str
  uuid:
    description:
      - Only the instance with this uuid.
    type: str
  name:
    description:
      - Only the instances with this name.
    type: str
notes:
  - The O(request_id) option is accepted for uniformity with the other modules and not used.
seealso:
  - module: virtcloud.compute.instance_action
  - module: virtcloud.compute.compute_facts
"""

EXAMPLES = r"""
- name: Every instance on the compute hosts
  virtcloud.compute.instance_info:
    instances_path: "{{ virtcloud_instances_path }}"
  register: found

- name: One instance's action log
  virtcloud.compute.instance_info:
    name: web-1
  register: web1

- name: An instance given as the user gave it, a name or a uuid
  virtcloud.compute.instance_info:
    instance: "{{ instance }}"
  register: found_one

- name: Show it
  ansible.builtin.debug:
    msg: "{{ web1.instances[0].actions }}"
"""

RETURN = r"""
instances:
  description: The instances, sorted by name and uuid.
  returned: always
  type: list
  elements: dict
  contains:
    uuid:
      description: The instance uuid.
      type: str
    name:
      description: The instance name.
      type: str
    domain:
      description: The libvirt domain name.
      type: str
    state:
      description: The domain's state (shutoff, running, paused, suspended, in_shutdown, crashed, pmsuspended).
      type: str
    libvirt_state:
      description: libvirt's own name of the state, as virsh shows it.
      type: str
    power_state:
      description: Nova's power state number (0 pending, 1 running, 3 paused, 4 shutdown, 6 crashed, 7 suspended).
      type: int
    power_state_name:
      description: Nova's name of the power state.
      type: str
    vm_state:
      description: The record's vm_state.
      type: str
    task_state:
      description: The record's task_state (null when no task is in progress).
      type: str
    locked:
      description: Whether the instance is locked.
      type: bool
    locked_reason:
      description: Why it is locked.
      type: str
    host:
      description: The host in the record.
      type: str
    instance_dir:
      description: The instance directory.
      type: str
    console_log:
      description: The serial console log file.
      type: str
    actions:
      description: The action log, oldest first (action, request_id, start_time, finish_time, result, message).
      type: list
      elements: dict
    record:
      description: The whole record.
      type: dict
  sample:
    - uuid: 3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b
      name: web-1
      domain: instance-3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b
      state: running
      libvirt_state: running
      power_state: 1
      power_state_name: running
      vm_state: active
      task_state: null
      locked: false
      console_log: /var/lib/virtcloud/instances/3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b/console.log
unreadable:
  description: Domains named like instances whose record cannot be read, with the reason.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError, connection_argument_spec, instances_path_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._domain import (
    list_instances,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import connection, require_libraries


def main():
    argument_spec = dict(
        instance=dict(type="str"),
        uuid=dict(type="str"),
        name=dict(type="str"),
        **instances_path_argument_spec(),
    )
    argument_spec.update(connection_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, mutually_exclusive=[("uuid", "name", "instance")])
    require_libraries(module)
    p = module.params
    try:
        with connection(p["uri"]) as conn:
            instances, unreadable = list_instances(conn, uuid=p["uuid"], name=p["name"], instance=p["instance"], instances_path=p["instances_path"])
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    for text in unreadable:
        module.warn(f"domain with an unreadable record: {text}")
    module.exit_json(changed=False, instances=instances, unreadable=unreadable)


if __name__ == "__main__":
    main()
