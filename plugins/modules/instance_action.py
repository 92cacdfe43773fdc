#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: instance_action
short_description: Nova's lifecycle actions on an instance of this host
version_added: 0.1.0
description:
  - Starts, stops, reboots, pauses, unpauses, suspends, resumes, locks, unlocks or deletes
    an existing instance on the host the module runs on, found by uuid or name in the
    records of the host's domains.
  - Nova's table of which action is allowed from which vm_state applies (pause only from
    active, start only from stopped, and so on), and a locked instance refuses every action
    but unlock. A refused action fails with a message naming the instance, the action and
    its state, and changes nothing, also in check mode.
  - While the action runs the record's task_state says so (C(powering-off), C(pausing), ...);
    afterwards vm_state is the action's result and the action is in the instance's action
    log (C(nova instance-action-list)) with the request id, start and finish times and the
    result. An action that fails is logged with result C(Error) and the message; vm_state
    stays when the domain is still where it was, and becomes C(error) when the domain ended
    in a state the action does not lead to.
  - Desired states, as Ansible users expect them. V(start), V(stop), V(pause), V(unpause),
    V(suspend), V(resume), V(lock) and V(unlock) report no change when the instance is
    already there (vm_state and the domain's state). Nothing is done then, so neither
    Nova's table nor the lock is consulted. Nova's API would answer 409 instead.
    V(reboot) and V(reboot_hard) run every time. V(delete) of an instance that is not on
    the host reports no change.
  - V(delete) is Nova's terminate on the host. The domain is destroyed (no clean
    shutdown, as Nova), the instance directory is removed and the domain is undefined
    with its managed save image. Base images stay. The instance's ports are returned so
    that the workflow releases their DHCP reservations and addresses.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.connection
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - V(reboot) and V(reboot_hard) change on every run; every other action reports no
        change the second time.
options:
  instance:
    description:
      - The instance's uuid or name. A name must be unique on the host.
    type: str
    required: true
  action:
    description:
      - V(start) powers on a stopped instance, and V(stop) is Nova's clean shutdown (ACPI,
        re-sent every O(retry_interval) seconds, destroy after O(shutdown_timeout) seconds).
      - V(reboot) is a soft reboot (ACPI, then hard after O(shutdown_timeout) seconds) and
        V(reboot_hard) destroys and starts the domain.
      - V(pause) and V(unpause) stop and continue the vCPUs (memory in the QEMU process).
        V(suspend) and V(resume) save the memory to disk (managed save) and restore it.
      - V(lock) makes the instance refuse every action but unlock; V(unlock) undoes it.
      - V(delete) terminates the instance on this host.
    type: str
    required: true
    choices: [start, stop, reboot, reboot_hard, pause, unpause, suspend, resume, lock, unlock, delete]
  reason:
    description:
      - Why the instance is locked (C(nova lock --reason)). Only with O(action=lock).
    type: str
  instances_path:
    description:
      - Folder of the instance directories (Nova's C(instances_path)).
    type: path
    default: /var/lib/virtcloud/instances
  shutdown_timeout:
    description:
      - Seconds the guest has to power off after the ACPI power button before it is destroyed
        (stop), or before a soft reboot becomes a hard one. V(0) destroys at once.
    type: int
    default: 60
  retry_interval:
    description:
      - Seconds between two presses of the ACPI power button.
    type: int
    default: 10
  timeout:
    description:
      - Seconds to wait for each libvirt state change, and for another action on the same
        instance to finish (one action at a time per instance).
    type: int
    default: 120
seealso:
  - module: virtcloud.compute.domain
  - module: virtcloud.compute.instance_info
"""

EXAMPLES = r"""
- name: Stop an instance (no change when it is stopped already)
  virtcloud.compute.instance_action:
    instance: web-1
    action: stop
    instances_path: "{{ virtcloud_instances_path }}"
    request_id: "{{ request_id }}"

- name: Lock it
  virtcloud.compute.instance_action:
    instance: 3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b
    action: lock
    reason: legal hold

- name: Terminate it and keep its ports for the network release
  virtcloud.compute.instance_action:
    instance: web-1
    action: delete
  register: deleted
"""

RETURN = r"""
action:
  description: The action.
  returned: always
  type: str
  sample: pause
uuid:
  description: The instance uuid.
  returned: when the instance was found
  type: str
  sample: 3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b
name:
  description: The instance name.
  returned: when the instance was found
  type: str
  sample: web-1
vm_state:
  description: The vm_state afterwards (in check mode, the one the action would leave).
  returned: when the instance was found
  type: str
  sample: paused
task_state:
  description: The task_state afterwards (null when no task is in progress).
  returned: when the instance was found
  type: str
  sample: null
state:
  description: The domain's state afterwards (absent, shutoff, running, paused, suspended).
  returned: always
  type: str
  sample: paused
instance:
  description: The instance record afterwards, with the action log. Null when there was no instance to delete.
  returned: always
  type: dict
ports:
  description: The instance's ports (network, mac, ip), for the DHCP release.
  returned: action is delete
  type: list
  elements: dict
  sample: [{network: private, mac: "fa:16:3e:00:00:01", ip: 10.0.0.5}]
instance_dir_removed:
  description: The instance directory that was removed.
  returned: action is delete and the instance was deleted
  type: str
power_off:
  description: How the clean shutdown went.
  returned: action is stop and the instance was stopped
  type: dict
  sample: {clean: true, acpi_presses: 1, seconds: 0.6, destroyed: false}
reboot:
  description: How the reboot went (C(kind) soft or hard, C(fallback) true when a soft reboot became a hard one).
  returned: action is reboot or reboot_hard
  type: dict
  sample: {kind: soft, acpi_presses: 1, seconds: 0.5, fallback: false}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.virtcloud.compute.plugins.module_utils._common import (
    HostLog,
    VirtcloudError,
    connection_argument_spec,
    request_id,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._domain import (
    ACTIONS,
    HAS_LIBVIRT,
    HAS_LXML,
    LIBVIRT_IMPORT_ERROR,
    LXML_IMPORT_ERROR,
    ActionFailed,
    InstanceError,
    run_instance_action,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import ActionRefused
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import close_all, connect


def main():
    argument_spec = dict(
        instance=dict(type="str", required=True),
        action=dict(type="str", required=True, choices=list(ACTIONS)),
        reason=dict(type="str"),
        instances_path=dict(type="path", default="/var/lib/virtcloud/instances"),
        shutdown_timeout=dict(type="int", default=60),
        retry_interval=dict(type="int", default=10),
        timeout=dict(type="int", default=120),
    )
    argument_spec.update(connection_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python (package python3-libvirt)"), exception=LIBVIRT_IMPORT_ERROR)
    if not HAS_LXML:
        module.fail_json(msg=missing_required_lib("lxml (package python3-lxml)"), exception=LXML_IMPORT_ERROR)
    p = module.params
    try:
        req = request_id(p["request_id"])
        result = run_instance_action(
            connect(p["uri"]), instance=p["instance"], action=p["action"], request_id=req,
            instances_path=p["instances_path"], reason=p["reason"], shutdown_timeout=p["shutdown_timeout"],
            retry_interval=p["retry_interval"], timeout=p["timeout"], check_mode=module.check_mode,
            log=HostLog("instance_action", req))
    except ActionRefused as exc:
        close_all()
        module.fail_json(msg=str(exc), action=p["action"], uuid=exc.uuid, name=exc.name, vm_state=exc.vm_state,
                         task_state=exc.task_state, refused=exc.reason)
    except ActionFailed as exc:
        close_all()
        module.fail_json(msg=str(exc), action=p["action"], instance=exc.record)
    except (VirtcloudError, InstanceError) as exc:
        close_all()
        module.fail_json(msg=str(exc), action=p["action"])
    close_all()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
