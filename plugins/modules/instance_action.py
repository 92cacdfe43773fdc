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
  - Starts, stops, reboots, pauses, unpauses, suspends, resumes, locks, unlocks, snapshots,
    rebuilds, rescues, unrescues or deletes
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
  - V(snapshot) is Nova's cold snapshot as the seeds describe it. A running guest is paused,
    its root disk with the whole backing chain is converted by C(qemu-img convert) into a
    standalone qcow2 at O(snapshot_path), and the guest is resumed (its memory and uptime go
    on). The upload to the image store is the workflow's next step (C(image) with
    C(src_host)); the action log entry C(createImage) is closed when the file is written.
  - V(rebuild) is Nova's rebuild. The guest is shut down cleanly, the root disk is replaced
    by a new overlay on O(image) (whose base must be in the host's image cache), and the
    same domain (uuid, flavor, ports with their MAC and IP, config drive) boots from it. A
    stopped instance stays stopped. The image must fit the flavor (min_ram, min_disk,
    virtual size), or nothing is done.
  - V(rescue) is Nova's rescue. The guest is shut down cleanly and boots the rescue image
    (O(image), default the instance's own image) from C(disk.rescue) as vda, with its own
    root disk as vdb; vm_state becomes C(rescued). V(unrescue) destroys the rescue guest,
    removes C(disk.rescue) and boots the instance's own disk again.
  - V(delete) is Nova's terminate on the host. The domain is destroyed (no clean
    shutdown, as Nova), the instance directory is removed and the domain is undefined
    with its managed save image. Base images stay. The instance's ports are returned so
    that the workflow releases their DHCP reservations and addresses.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.connection
  - virtcloud.compute.instances_path
  - virtcloud.compute.request_id
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - V(reboot), V(reboot_hard), V(snapshot) and V(rebuild) change on every run (the
        workflows make them idempotent, a snapshot name already in the store is not taken
        again); every other action reports no change the second time.
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
      - V(snapshot) writes the root disk to O(snapshot_path); V(rebuild) replaces the root
        disk by one from O(image); V(rescue) boots a rescue image with the root disk as the
        second disk, V(unrescue) boots the root disk again.
    type: str
    required: true
    choices: [start, stop, reboot, reboot_hard, pause, unpause, suspend, resume, lock, unlock, delete, snapshot, rebuild, rescue,
              unrescue]
  image:
    description:
      - The image of a V(rebuild) (required) or a V(rescue) (default the instance's own image),
        as the instance record holds it. Its base must be in the host's image cache,
        C(<instances_path>/_base/<sha1 of the id>) (M(virtcloud.compute.image_cache)).
    type: dict
    suboptions:
      id:
        description: The image id (a uuid).
        type: str
        required: true
      properties:
        description: The image properties (min_ram and min_disk are checked against the flavor).
        type: dict
        default: {}
  image_format:
    description:
      - The format of the cached base of O(image) (V(raw) when the cache converts images, like
        Nova's C(force_raw_images)).
    type: str
    choices: [qcow2, raw]
    default: qcow2
  snapshot_path:
    description:
      - The file V(snapshot) writes, a qcow2 that must not exist yet, in an existing folder.
        Required with O(action=snapshot), refused with the other actions.
    type: path
  reason:
    description:
      - Why the instance is locked (C(nova lock --reason)). Only with O(action=lock).
    type: str
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

- name: Extract its root disk for an image upload
  virtcloud.compute.instance_action:
    instance: web-1
    action: snapshot
    snapshot_path: /var/lib/virtcloud/instances/snapshots/web-1-backup.qcow2
  register: snap

- name: Rebuild it from another image (its base already in the host's cache)
  virtcloud.compute.instance_action:
    instance: web-1
    action: rebuild
    image:
      id: 0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d
      properties: {min_ram: 128}

- name: Boot it from the rescue image, its own disk as the second disk
  virtcloud.compute.instance_action:
    instance: web-1
    action: rescue
    image: {id: 6d1f1b4e-8a1b-4f0e-9c1a-0e5e3f1b2c3e}

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
snapshot:
  description:
    - The snapshot file (C(path), C(format) qcow2, C(size) and C(virtual_size) in bytes), the
      instance's image it was made from (C(image), whose properties a snapshot image carries),
      and C(paused), true when the guest was paused for the copy. In check mode without the sizes.
  returned: action is snapshot
  type: dict
  sample: {path: /var/lib/virtcloud/instances/snapshots/web-1.qcow2, format: qcow2, size: 14221312,
           virtual_size: 67108864, paused: true, image: {id: 0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d, properties: {}}}
image:
  description: The image the instance was rebuilt from, or the rescue image.
  returned: action is rebuild or rescue and the action ran
  type: dict
  sample: {id: 0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d, properties: {}}
reboot:
  description: How the reboot went (C(kind) soft or hard, C(fallback) true when a soft reboot became a hard one).
  returned: action is reboot or reboot_hard
  type: dict
  sample: {kind: soft, acpi_presses: 1, seconds: 0.5, fallback: false}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import (
    HostLog,
    VirtcloudError,
    command_runner,
    connection_argument_spec,
    instances_path_argument_spec,
    request_id,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._actions import (
    IMAGE_FORMATS,
    INSTANCE_ACTIONS,
    ActionFailed,
    required_if,
    run_instance_action,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import ActionRefused
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import connection, require_libraries
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImg


def main():
    argument_spec = dict(
        instance=dict(type="str", required=True),
        action=dict(type="str", required=True, choices=list(INSTANCE_ACTIONS)),
        reason=dict(type="str"),
        **instances_path_argument_spec(),
        shutdown_timeout=dict(type="int", default=60),
        retry_interval=dict(type="int", default=10),
        timeout=dict(type="int", default=120),
        image=dict(type="dict", options=dict(id=dict(type="str", required=True), properties=dict(type="dict", default={}))),
        image_format=dict(type="str", default="qcow2", choices=list(IMAGE_FORMATS)),
        snapshot_path=dict(type="path"),
    )
    argument_spec.update(connection_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, required_if=required_if())
    require_libraries(module)
    p = module.params

    run = command_runner(module)

    try:
        req = request_id(p["request_id"])
        with connection(p["uri"]) as conn:
            result = run_instance_action(
                conn,
                instance=p["instance"],
                action=p["action"],
                request_id=req,
                instances_path=p["instances_path"],
                reason=p["reason"],
                shutdown_timeout=p["shutdown_timeout"],
                retry_interval=p["retry_interval"],
                timeout=p["timeout"],
                check_mode=module.check_mode,
                log=HostLog("instance_action", req),
                image=p["image"],
                image_format=p["image_format"],
                snapshot_path=p["snapshot_path"],
                qemu_img=QemuImg(run),
            )
    except ActionRefused as exc:
        module.fail_json(msg=str(exc), action=p["action"], uuid=exc.uuid, name=exc.name, vm_state=exc.vm_state, task_state=exc.task_state, refused=exc.reason)
    except ActionFailed as exc:
        module.fail_json(msg=str(exc), action=p["action"], instance=exc.record)
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc), action=p["action"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
