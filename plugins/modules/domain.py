#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: domain
short_description: The libvirt domain of an instance, built from its record
version_added: 0.1.0
description:
  - Defines the libvirt domain C(instance-<uuid>) of an instance from its record (flavor to
    vCPUs and memory, the root disk overlay C(disk), the ephemeral and swap disks the flavor
    asks for, the config drive C(disk.config), one NIC per port with its fixed MAC, a serial
    console logged to C(console.log), ACPI, and the record itself in the domain's
    C(<metadata>)), and brings it to the wanted O(state).
  - The definition is written again only when the domain differs from the one the record
    gives, in anything this collection manages (normalised XML, what libvirt adds is
    ignored). The record is mirrored as C(instance.json) and the XML as C(libvirt.xml) in the
    instance directory C(<instances_path>/<uuid>/), both written atomically.
  - The config drive is a 4 MiB FAT file system labelled C(config-2) holding
    C(openstack/latest/meta_data.json) (uuid, name, hostname, availability_zone, project,
    meta, public_keys) and C(user_data), made with C(mkfs.vfat) and mtools, without
    mounting anything. It is made again only when its files differ from the record's.
  - The record is stored as given. This module never sets vm_state, task_state or
    power_state itself (use M(virtcloud.compute.instance_action) for Nova's actions); give
    it the current record (M(virtcloud.compute.instance_info) returns it), because the
    record given replaces the one in the domain.
  - V(shutoff) is Nova's clean shutdown. The ACPI power button is pressed, pressed
    again every O(retry_interval) seconds, and the domain is destroyed when the guest
    is still up after O(shutdown_timeout) seconds.
    V(suspended) is a managed save (the guest's memory on disk); V(paused) keeps the memory in
    the QEMU process. Every change waits until libvirt reports the state.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.connection
  - virtcloud.compute.connection.wait
  - virtcloud.compute.instances_path
  - virtcloud.compute.request_id
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The normalised domain XML before and after.
  idempotent:
    support: full
    details:
      - Not with O(reboot), which reboots on every run.
options:
  instance:
    description:
      - The instance record (uuid, name, project, flavor, image, ports, states, ...), as
        C(virtcloud.compute) keeps it. It is validated before anything else.
      - With O(state=absent) only its C(uuid) is used.
    type: dict
    required: true
  domain_type:
    description:
      - V(kvm) for hardware virtualisation, V(qemu) for TCG (hosts without usable C(/dev/kvm)).
    type: str
    choices: [kvm, qemu]
    default: kvm
  machine:
    description:
      - The machine type. V(pc) (i440fx) hot-plugs volumes without extra root ports.
    type: str
    default: pc
  networks:
    description:
      - For each network name used by the record's ports, where its NICs go. The value is a
        dictionary with the key C(bridge) (a Linux bridge) or C(libvirt_network) (a libvirt
        network), and optionally C(mtu).
    type: dict
    default: {}
  state:
    description:
      - V(present) defines the domain and leaves its power state alone.
      - V(running), V(shutoff), V(paused) and V(suspended) define it when needed and bring
        it to that state.
      - A paused domain is resumed before a clean shutdown. A suspended one is restored
        and then shut down cleanly. A shut-off domain cannot be suspended.
      - V(absent) destroys and undefines the domain (with its managed save image and NVRAM).
        The instance directory stays.
    type: str
    choices: [present, running, shutoff, paused, suspended, absent]
    default: present
  reboot:
    description:
      - With O(state=running), reboot a guest that was already up when the module
        started. A guest booted by this run is not rebooted again.
      - V(soft) is Nova's soft reboot. The ACPI power button is pressed, the guest is
        started again when it has powered off, and it is hard rebooted after
        O(shutdown_timeout) seconds. V(hard) destroys and starts the domain, and
        discards a managed save image.
    type: str
    choices: [soft, hard]
  shutdown_timeout:
    description:
      - Seconds the guest has to power off after the ACPI power button before the domain is
        destroyed (Nova's C(shutdown_timeout)); also the wait of a soft reboot. V(0) destroys at once.
    type: int
    default: 60
  retry_interval:
    description:
      - Seconds between two presses of the ACPI power button during a clean shutdown
        (Nova's C(SHUTDOWN_RETRY_INTERVAL)).
    type: int
    default: 10
notes:
  - O(wait=false) only changes O(state=shutoff). The power button is pressed once and
    the module returns without waiting for the guest or destroying it. Every other
    change finishes before the module returns.
  - O(timeout) bounds each wait for a libvirt state (start, pause, managed save, destroy).
  - Needs python3-libvirt and python3-lxml on the host, and C(mkfs.vfat) (dosfstools)
    and mtools when the record has a config drive.
seealso:
  - module: virtcloud.compute.instance_action
  - module: virtcloud.compute.instance_info
"""

EXAMPLES = r"""
- name: Define the domain of a new instance and start it
  virtcloud.compute.domain:
    instance: "{{ instance_record }}"
    instances_path: "{{ virtcloud_instances_path }}"
    domain_type: qemu
    networks:
      private: {bridge: vcbr-private}
    state: running
    request_id: "{{ request_id }}"

- name: Hard reboot it with its definition rebuilt from the record
  virtcloud.compute.domain:
    instance: "{{ instance_record }}"
    state: running
    reboot: hard

- name: Remove the domain (the instance directory stays)
  virtcloud.compute.domain:
    instance: {uuid: "{{ instance_uuid }}"}
    state: absent
"""

RETURN = r"""
domain:
  description: The libvirt domain name.
  returned: always
  type: str
  sample: instance-3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b
uuid:
  description: The instance uuid (also the domain uuid).
  returned: always
  type: str
  sample: 3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b
instance_dir:
  description: The instance directory.
  returned: state is not absent
  type: str
  sample: /var/lib/virtcloud/instances/3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b
state_before:
  description: The domain's state when the module started (absent, shutoff, running, paused, suspended, in_shutdown, crashed, pmsuspended).
  returned: always
  type: str
  sample: shutoff
state:
  description: The domain's state afterwards (in check mode, the state it would have).
  returned: always
  type: str
  sample: running
actions:
  description:
    - The steps done, or in check mode planned, in order. They are write_record_file,
      config_drive, define, redefine, start, start_paused, resume, pause, shutdown,
      wait_shutoff, destroy, managed_save, undefine, wakeup, reboot_soft and reboot_hard.
  returned: always
  type: list
  elements: str
  sample: [config_drive, define, start]
power_off:
  description: How a clean shutdown went.
  returned: when the domain was shut down
  type: dict
  sample: {clean: true, acpi_presses: 1, seconds: 0.6, destroyed: false}
reboot:
  description: How the reboot went; C(fallback) is true when a soft reboot ended as a hard one.
  returned: when O(reboot) rebooted the guest
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
    wait_argument_spec,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._domain import (
    ensure_domain,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import connection, require_libraries


def main():
    argument_spec = dict(
        instance=dict(type="dict", required=True),
        **instances_path_argument_spec(),
        domain_type=dict(type="str", choices=["kvm", "qemu"], default="kvm"),
        machine=dict(type="str", default="pc"),
        networks=dict(type="dict", default={}),
        state=dict(type="str", choices=["present", "running", "shutoff", "paused", "suspended", "absent"], default="present"),
        reboot=dict(type="str", choices=["soft", "hard"]),
        shutdown_timeout=dict(type="int", default=60),
        retry_interval=dict(type="int", default=10),
    )
    argument_spec.update(connection_argument_spec())
    argument_spec.update(wait_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_libraries(module)
    p = module.params

    run = command_runner(module, binary_data=True)

    try:
        log = HostLog("domain", request_id(p["request_id"]))
        with connection(p["uri"]) as conn:
            result = ensure_domain(
                conn,
                p["instance"],
                state=p["state"],
                instances_path=p["instances_path"],
                domain_type=p["domain_type"],
                machine=p["machine"],
                networks=p["networks"],
                reboot=p["reboot"],
                shutdown_timeout=p["shutdown_timeout"],
                retry_interval=p["retry_interval"],
                wait=p["wait"],
                timeout=p["timeout"],
                check_mode=module.check_mode,
                run=run,
                log=None if module.check_mode else log,
            )
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    diff = result.pop("diff")
    for warning in result.pop("warnings"):
        module.warn(warning)
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
