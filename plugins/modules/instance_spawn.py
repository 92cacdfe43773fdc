#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: instance_spawn
short_description: Make one instance on this compute host, as nova-compute's build and run does
version_added: 0.1.0
description:
  - Runs on the compute host the scheduler chose. Makes the instance record, opens the C(create)
    action in its action log, checks the image against the flavor (C(min_ram), C(min_disk) and the
    image's virtual size, the same check as a rebuild), claims the flavor under the host's claim
    lock (as M(virtcloud.compute.instance_claim)), makes the instance folder, the root disk (a qcow2
    overlay on the cached image) and the config drive, defines and starts the domain, closes
    the C(create) action and releases the claim.
  - With O(source_host), the image is first made present in this host's image cache, fetched from
    the image store host when missing and verified as M(virtcloud.compute.image_cache) does (the
    same code), so that a launch needs one task per host; this needs a Python with oslo.utils'
    format inspector when the image must be fetched. Without it, O(base) names a cache entry
    filled beforehand.
  - A spawn that fails removes what it made (the domain, the instance folder when it made it, the
    claim) and fails with a message naming the instance, the host and the reason, so that the
    launch can move to the next alternate host.
  - An instance whose domain is already defined on the host is left as it is.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.connection
  - virtcloud.compute.connection.ssh
  - virtcloud.compute.capacity
  - virtcloud.compute.image_source
  - virtcloud.compute.instances_path
  - virtcloud.compute.request_id
attributes:
  check_mode:
    support: full
    details: Checks the image against the flavor and the claim against the host's figures, verifies a cached image (read only), makes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  uuid:
    description: The instance's uuid.
    type: str
    required: true
  name:
    description: The instance's name.
    type: str
    required: true
  project:
    description: The instance's project.
    type: str
    required: true
  flavor:
    description: The flavor, with C(name), C(vcpus), C(ram_mb), C(disk_gb) and optionally C(ephemeral_gb), C(swap_mb), C(extra_specs).
    type: dict
    required: true
  image:
    description:
      - The image record (from M(virtcloud.compute.image_info)); C(id) and C(properties) are used, and with
        O(source_host) also C(sha256), C(size), C(disk_format) (checked against the store's copy) and C(virtual_size)
        (the size checked against the flavor in check mode when the image is not cached yet).
    type: dict
    required: true
  base:
    description:
      - The cached image on this host, as M(virtcloud.compute.image_cache) returns it (C(path), C(format), C(virtual_size)).
      - Give O(base) or O(source_host), not both.
    type: dict
  source_host:
    description:
      - The image store host, as this host reaches it over SSH (name or address). The image cache is filled from it
        before the spawn.
      - Give O(base) or O(source_host), not both.
    type: str
  cache_timeout:
    description: Seconds to wait for another run that holds the lock of the image's base file (fetching it).
    type: int
    default: 600
  ports:
    description: The instance's ports, reserved beforehand (M(virtcloud.compute.network_port)).
    type: list
    elements: dict
    default: []
    suboptions:
      network:
        description: The network's name.
        type: str
        required: true
      mac:
        description: The port's MAC address.
        type: str
        required: true
      ip:
        description: The port's IP address.
        type: str
      bridge:
        description: The network's bridge on this host.
        type: str
  host:
    description: This host's name as the inventory knows it (the record's C(host)).
    type: str
    required: true
  availability_zone:
    description: The host's availability zone.
    type: str
    default: nova
  server_group:
    description: The server group's name.
    type: str
  meta:
    description: Instance metadata (strings), on the config drive.
    type: dict
    default: {}
  public_keys:
    description: SSH public keys by name, on the config drive.
    type: dict
    default: {}
  user_data:
    description: User data, on the config drive.
    type: str
  launch_index:
    description: The instance's index in its request.
    type: int
    default: 0
  claims_file:
    description: The host's claims file.
    type: path
    default: /var/lib/virtcloud/claims.json
  domain_type:
    description: libvirt domain type (V(qemu) where KVM is not usable).
    type: str
    choices: [kvm, qemu]
    default: kvm
  machine:
    description: The machine type.
    type: str
    default: pc
  timeout:
    description: Seconds to wait for the domain to run.
    type: int
    default: 120
"""

EXAMPLES = r"""
- name: Make web-1 on the chosen host
  virtcloud.compute.instance_spawn:
    uuid: 0b6f1b52-5c1e-5a6e-9c3f-2f1d4e5a6b7c
    name: web-1
    project: demo
    flavor: {name: m1.tiny, vcpus: 1, ram_mb: 256, disk_gb: 1}
    image: "{{ image_record }}"
    source_host: 10.0.0.10
    source_path: /var/lib/virtcloud/images
    ssh_key: /root/.ssh/id_ed25519
    known_hosts: /root/.ssh/known_hosts
    ports: [{network: private, mac: "fa:16:3e:12:34:56", ip: 10.10.0.5, bridge: vcbr-private}]
    host: "{{ inventory_hostname }}"
    availability_zone: az1
    domain_type: qemu
    request_id: "{{ request_id }}"
"""

RETURN = r"""
instance:
  description: The instance record as stored in the domain's metadata and in C(instance.json).
  returned: success
  type: dict
  sample: {uuid: 0b6f1b52-5c1e-5a6e-9c3f-2f1d4e5a6b7c, name: web-1, vm_state: active, power_state: 1}
domain:
  description: The libvirt domain's name.
  returned: success
  type: str
  sample: instance-0b6f1b52-5c1e-5a6e-9c3f-2f1d4e5a6b7c
instance_dir:
  description: The instance folder.
  returned: success
  type: str
  sample: /var/lib/virtcloud/instances/0b6f1b52-5c1e-5a6e-9c3f-2f1d4e5a6b7c
base:
  description:
    - The image's base file in this host's cache (C(path), C(format), C(virtual_size), and with O(source_host) what
      M(virtcloud.compute.image_cache) returns, C(fetched) true when it was fetched now).
  returned: success
  type: dict
  sample: {path: /var/lib/virtcloud/instances/_base/1b2c..., format: qcow2, virtual_size: 67108864, fetched: false}
actions:
  description: What was done (would be, in check mode), in order.
  returned: success
  type: list
  elements: str
  sample: [cache, claim, folder, disk, config_drive, define, start, release]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._capacity import allocation_argument_spec, allocation_params
from ansible_collections.virtcloud.compute.plugins.module_utils._claim import DEFAULT_CLAIMS_FILE
from ansible_collections.virtcloud.compute.plugins.module_utils._common import (
    HostLog,
    VirtcloudError,
    command_runner,
    connection_argument_spec,
    instances_path_argument_spec,
    request_id,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import fill_cache, image_source_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import allocation_options, connection, require_libraries
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImg
from ansible_collections.virtcloud.compute.plugins.module_utils._spawn import new_record, spawn


def main():
    spec = dict(connection_argument_spec(), **allocation_argument_spec(), **instances_path_argument_spec(), **image_source_argument_spec())
    spec.update(
        uuid=dict(type="str", required=True),
        name=dict(type="str", required=True),
        project=dict(type="str", required=True),
        flavor=dict(type="dict", required=True),
        image=dict(type="dict", required=True),
        base=dict(type="dict"),
        source_host=dict(type="str"),
        cache_timeout=dict(type="int", default=600),
        ports=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(network=dict(type="str", required=True), mac=dict(type="str", required=True), ip=dict(type="str"), bridge=dict(type="str")),
        ),
        host=dict(type="str", required=True),
        availability_zone=dict(type="str", default="nova"),
        server_group=dict(type="str"),
        meta=dict(type="dict", default={}),
        public_keys=dict(type="dict", default={}),
        user_data=dict(type="str"),
        launch_index=dict(type="int", default=0),
        claims_file=dict(type="path", default=DEFAULT_CLAIMS_FILE),
        domain_type=dict(type="str", choices=["kvm", "qemu"], default="kvm"),
        machine=dict(type="str", default="pc"),
        timeout=dict(type="int", default=120),
    )
    module = AnsibleModule(
        argument_spec=spec, supports_check_mode=True, required_one_of=[("base", "source_host")], mutually_exclusive=[("base", "source_host")]
    )
    require_libraries(module)
    p = module.params
    try:
        req = request_id(p["request_id"])
        inst = new_record(
            uuid=p["uuid"],
            name=p["name"],
            project=p["project"],
            flavor=p["flavor"],
            image=p["image"],
            ports=p["ports"],
            host=p["host"],
            availability_zone=p["availability_zone"],
            server_group=p["server_group"],
            meta=p["meta"],
            public_keys=p["public_keys"],
            user_data=p["user_data"],
            launch_index=p["launch_index"],
        )
        allocation = allocation_options(**allocation_params(p))
        log = None if module.check_mode else HostLog("instance_spawn", req)
        base, cached = p["base"], None
        if p["source_host"]:
            cached = fill_cache(p, p["image"], command_runner(module), QemuImg(command_runner(module)), module.check_mode, log, p["cache_timeout"])
            base = dict(cached, virtual_size=cached["virtual_size"] or p["image"].get("virtual_size") or 0)
        with connection(p["uri"]) as conn:
            result = spawn(
                conn,
                inst,
                request_id=req,
                base=base,
                ports=p["ports"],
                run=command_runner(module, binary_data=True),
                qemu_img=QemuImg(command_runner(module)),
                uri=p["uri"],
                instances_path=p["instances_path"],
                claims_file=p["claims_file"],
                allocation=allocation,
                domain_type=p["domain_type"],
                machine=p["machine"],
                timeout=p["timeout"],
                check_mode=module.check_mode,
                log=log,
            )
        if cached is not None:
            result.update(changed=result["changed"] or cached["fetched"], actions=(["cache"] if cached["fetched"] else []) + result["actions"])
        result["base"] = base
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(request_id=req, **result)


if __name__ == "__main__":
    main()
