#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: lab
short_description: Several libvirt hosts on one Linux machine, for tests and demos
version_added: 0.1.0
description:
  - Makes (or removes) the collection's local lab on the machine the module runs on
    (normally C(localhost)), with a bridge on a private address range, one controller
    host (the image store) and O(hosts) compute hosts.
  - Each lab host is a network, mount and UTS namespace with its own hostname, address,
    sshd, and on compute hosts its own virtlogd, libvirtd (with its own C(host_uuid)) and
    instances directory at C(<state_dir>/instances), the same path on every host. Compute hosts with shared
    storage bind-mount one shared instances directory.
  - The libvirt settings the lab writes (no socket authentication on root-only sockets,
    no confinement) are for the lab only and are never defaults of the roles for real hosts.
  - A second run changes nothing while the lab is healthy, and starts again any daemon
    that died. O(state=absent) removes every namespace, mount, link, process and file the
    lab made, also after an interrupted O(state=present).
  - Lab only. Do not run it against production hypervisors.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.attributes.no_diff
options:
  name:
    description:
      - Name of the lab, used as prefix of its network namespaces and links, and the one
        option two labs side by side need to differ in (O(state_dir), O(run_dir) and
        O(network) follow it).
      - 2 to 6 lowercase letters or digits, starting with a letter.
      - Two runs on one lab wait for each other (a lock per name, C(/run/lock/virtcloud-lab-<name>.lock)),
        up to O(lock_timeout).
    type: str
    default: vclab
  state:
    description:
      - V(present) makes the lab or repairs it, V(absent) removes it.
      - V(absent) needs only O(name) (and O(state_dir) when the lab was made with one); it
        removes what the lab's record C(<state_dir>/lab.json) says the lab made, and nothing
        when there is no record (a lab that is not up) or the record is another lab's.
    type: str
    choices: [present, absent]
    default: present
  hosts:
    description:
      - Number of compute hosts, from 1 to 16. They are named C(node1) to C(nodeN).
      - Ignored by V(absent), which removes the hosts the lab has.
    type: int
    default: 3
  network:
    description:
      - Private IPv4 range of the lab bridge. The bridge takes the first address, the
        controller the tenth, compute host N the address 10 + N.
      - It must not overlap an address or route already on the machine.
      - Left out, the range the lab was made with; for a new lab C(10.251.0.0/24) when
        O(name=vclab), else a C(/24) inside C(10.200.0.0/13) picked from the name (the same
        name always gets the same range).
    type: str
  non_shared:
    description:
      - Compute hosts that keep a private instances directory instead of the shared one
        (for block migration).
    type: list
    elements: str
    default: []
  state_dir:
    description:
      - Folder holding the lab's files (per-host configuration, keys, instance
        directories, the inventory, the record C(lab.json)). Removed by O(state=absent).
      - Left out, C(/var/lib/virtcloud-lab) for the lab V(vclab), C(/var/lib/virtcloud-lab-<name>)
        for any other. A lab made with this option needs it for O(state=absent) too.
      - A folder whose record names another lab is refused.
    type: path
  run_dir:
    description:
      - Folder holding the namespace files. Removed by O(state=absent).
      - Left out, the one the lab was made with; for a new lab C(/run/virtcloud-lab) for
        V(vclab), C(/run/virtcloud-lab-<name>) for any other. Another lab's is refused.
    type: path
  timeout:
    description:
      - Seconds to wait for each daemon to answer.
    type: int
    default: 60
  lock_timeout:
    description:
      - Seconds to wait while another run changes the same lab, then fail naming that run's pid.
    type: int
    default: 300
  kvm:
    description:
      - Let the compute hosts use C(/dev/kvm).
      - Off by default, so lab guests run under TCG. On machines whose C(/dev/kvm) cannot
        run guests (nested or paravirtual hypervisors) libvirt would otherwise probe QEMU
        again on every call.
    type: bool
    default: false
notes:
  - Needs root, the iproute2, util-linux, openssh-server, libvirt-daemon-system,
    qemu-system-x86, qemu-utils and dnsmasq-base packages, and a kernel with network
    namespaces, bridges and tun.
"""

EXAMPLES = r"""
- name: Bring up a lab with three compute hosts, node3 without shared storage
  virtcloud.compute.lab:
    hosts: 3
    non_shared: [node3]
  register: lab

- name: A second lab beside it (folders /var/lib/virtcloud-lab-demo2, /run/virtcloud-lab-demo2)
  virtcloud.compute.lab:
    name: demo2
    network: 10.250.0.0/24

- name: Remove the second lab, and only it
  virtcloud.compute.lab:
    name: demo2
    state: absent

- name: Remove the first
  virtcloud.compute.lab:
    state: absent
"""

RETURN = r"""
hosts:
  description: The lab hosts after the run.
  returned: state=present
  type: list
  elements: dict
  sample:
    - name: node1
      role: compute
      address: 10.251.0.11
      shared_storage: true
      netns: vclab-node1
      namespaces: true
      healthy: true
      daemons: {virtlogd: 4242, libvirtd: 4250, sshd: 4260}
      paths: {/var/lib/virtcloud: /var/lib/virtcloud-lab/hosts/node1/var-lib-virtcloud}
changes:
  description: What the run did (or, in check mode, would do), one line each.
  returned: always
  type: list
  elements: str
  sample: ["create bridge vclab-br0", "start libvirtd on node2"]
msg:
  description: The outcome in one line; for O(state=absent) of a lab that is not up, why nothing was removed.
  returned: always
  type: str
  sample: "lab demo2 is not up: /var/lib/virtcloud-lab-demo2 holds no record of it (lab.json), so nothing was removed"
name:
  description: The lab's name.
  returned: state=present
  type: str
  sample: vclab
network:
  description: The lab's range (given, recorded or derived from the name).
  returned: state=present
  type: str
  sample: 10.251.0.0/24
state_dir:
  description: The lab's state folder.
  returned: state=present
  type: str
  sample: /var/lib/virtcloud-lab
run_dir:
  description: The lab's run folder (namespace files).
  returned: state=present
  type: str
  sample: /run/virtcloud-lab
inventory:
  description: Where the lab's inventory belongs (the role writes it there unless told otherwise).
  returned: state=present
  type: str
  sample: /var/lib/virtcloud-lab/inventory.yml
instances_path:
  description: The instances directory, the same path on every compute host (shared or private below it).
  returned: state=present
  type: str
  sample: /var/lib/virtcloud-lab/instances
image_store_path:
  description: The image store directory on the controller host.
  returned: state=present
  type: str
  sample: /var/lib/virtcloud-lab/images
ssh:
  description: How to reach the hosts.
  returned: state=present
  type: dict
  sample:
    key_file: /var/lib/virtcloud-lab/ssh/id_ed25519
    known_hosts: /var/lib/virtcloud-lab/ssh/known_hosts
    config: /var/lib/virtcloud-lab/ssh/config
    wrapper: /var/lib/virtcloud-lab/bin/ssh
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError, command_runner
from ansible_collections.virtcloud.compute.plugins.module_utils._lab import converge


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", default="vclab"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            hosts=dict(type="int", default=3),
            network=dict(type="str"),
            non_shared=dict(type="list", elements="str", default=[]),
            state_dir=dict(type="path"),
            run_dir=dict(type="path"),
            timeout=dict(type="int", default=60),
            lock_timeout=dict(type="int", default=300),
            kvm=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = converge(
            command_runner(module),
            p["name"],
            p["state"],
            network=p["network"],
            hosts=p["hosts"],
            non_shared=p["non_shared"],
            state_dir=p["state_dir"],
            run_dir=p["run_dir"],
            kvm=p["kvm"],
            timeout=p["timeout"],
            lock_timeout=p["lock_timeout"],
            check_mode=module.check_mode,
        )
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
