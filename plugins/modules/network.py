#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: network
short_description: The instance network on one host, a bridge joined to the other hosts by VXLAN, and its DHCP server
version_added: 0.1.0
description:
  - Makes, repairs or removes one instance network on the host the module runs on. Run it on
    every member host of the network (the compute hosts and the network node that holds
    the DHCP server), each with its own O(local_ip) and the same O(peers).
  - On every member host a Linux bridge C(vcbr-<name>) and a VXLAN device C(vcvx-<name>)
    (C(id <vni> dstport 4789 local <local_ip> nolearning)) attached to it, both with
    the network's MTU, and one all-zero FDB entry per peer (head-end replication, no
    multicast), so instances on any host reach each other on one layer-2 segment.
  - On the host with O(dhcp=true) the bridge gets the subnet's first address (gateway and
    DHCP server address) and a dnsmasq bound to the bridge serves DHCP from the
    reservations that M(virtcloud.compute.network_port) makes. Only reserved MACs get an
    address. Its files are in C(<state_dir>/<name>/).
  - Repairs what it finds wrong, a dead dnsmasq, a missing or extra FDB peer entry, a wrong
    MTU, a VXLAN device with another VNI or local address, a DHCP hosts file that does not
    match the reservations.
  - O(state=absent) removes the devices, stops dnsmasq and removes the network's folder.
    It refuses while instances are attached to the bridge or ports are reserved.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.attributes.full
  - virtcloud.compute.request_id
options:
  name:
    description:
      - Name of the network, 1 to 10 of C(a-z), C(0-9) and C(-), starting with a letter or digit.
      - The bridge is C(vcbr-<name>), the VXLAN device C(vcvx-<name>).
    type: str
    required: true
  state:
    description:
      - V(present) makes or repairs the network on this host, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  subnet:
    description:
      - IPv4 subnet of the instances in CIDR form, inside RFC 1918, C(/16) to C(/29).
      - It must not overlap an address or route of the host (the hosts' own network, for one).
      - Its first address is the gateway and DHCP server address.
      - Required with O(state=present).
    type: str
  vni:
    description:
      - VXLAN network identifier, 1 to 16777215, the same on every member host and unique per network.
      - Required with O(state=present).
    type: int
  local_ip:
    description:
      - This host's underlay address, the source of its VXLAN packets (in an inventory, often C(ansible_host)).
      - It must be an IPv4 address of the host. Required with O(state=present).
    type: str
  peers:
    description:
      - Underlay addresses of the network's member hosts. This host's own O(local_ip) may be
        in the list (it is left out), so every host can get the same list.
      - Flood entries to addresses not in the list are removed.
    type: list
    elements: str
    default: []
  dhcp:
    description:
      - This host runs the network's DHCP server (one host per network).
      - With V(false) a dnsmasq of this network found running here is stopped; the
        reservations stay in the network's folder.
    type: bool
    default: false
  mtu:
    description:
      - MTU of the bridge and of the VXLAN device, also sent to instances as DHCP option 26.
      - 1450 fits VXLAN over an underlay with MTU 1500.
    type: int
    default: 1450
  allocation_start:
    description:
      - First address that M(virtcloud.compute.network_port) hands out when a port asks for none.
        By default the address after the gateway. Only used on the DHCP host.
    type: str
  allocation_end:
    description:
      - Last address handed out. By default the address before the broadcast address. Only used on the DHCP host.
    type: str
  lease_time:
    description:
      - DHCP lease time in seconds. Only used on the DHCP host.
    type: int
    default: 86400
  state_dir:
    description:
      - Folder that holds one folder per network on the DHCP host (C(network.json),
        C(ports.json), the dnsmasq files).
    type: path
    default: /var/lib/virtcloud/networks
  timeout:
    description:
      - Seconds to wait for dnsmasq to start or stop, and for the lock of the network's folder.
    type: int
    default: 30
notes:
  - Needs root, iproute2 (C(ip), C(bridge)), a kernel with bridge and vxlan, and on the
    DHCP host dnsmasq (Debian package dnsmasq-base). The underlay must carry UDP port 4789
    between the member hosts.
  - The network's folder is readable by everyone, because dnsmasq reads the hosts file
    again as an unprivileged user.
seealso:
  - module: virtcloud.compute.network_port
"""

EXAMPLES = r"""
- name: Instance network on every member host, DHCP server on the controller
  virtcloud.compute.network:
    name: private
    subnet: 10.100.0.0/24
    vni: 100
    local_ip: "{{ ansible_host }}"
    peers: "{{ groups['all'] | map('extract', hostvars, 'ansible_host') | list }}"
    dhcp: "{{ inventory_hostname in groups['control'] }}"

- name: Remove it (ports deleted and instances gone first)
  virtcloud.compute.network:
    name: private
    state: absent
"""

RETURN = r"""
network:
  description: The network as made on this host.
  returned: state=present
  type: dict
  sample:
    name: private
    subnet: 10.100.0.0/24
    gateway: 10.100.0.1
    vni: 100
    mtu: 1450
    bridge: vcbr-private
    vxlan: vcvx-private
    local_ip: 10.251.0.11
    peers: [10.251.0.10, 10.251.0.12]
    dhcp: false
    allocation_start: null
    allocation_end: null
    lease_time: 86400
    state_dir: /var/lib/virtcloud/networks/private
bridge:
  description: Name of the network's bridge on every member host (what a domain's interface uses).
  returned: always
  type: str
  sample: vcbr-private
dnsmasq_pid:
  description: Pid of the network's dnsmasq on this host, null when this host is not the DHCP server (or in check mode before it started).
  returned: state=present
  type: int
  sample: 4242
changes:
  description: What the run did (or, in check mode, would do), one line each.
  returned: always
  type: list
  elements: str
  sample: ["create bridge vcbr-private (mtu 1450)", "add flood entry to peer 10.251.0.12 on vcvx-private"]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import HostLog, VirtcloudError, command_runner, request_id, request_id_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._network import (
    DEFAULT_STATE_DIR,
    Host,
    Tools,
    bridge_name,
    make_spec,
    network_absent,
    network_present,
    validate_state_dir,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            subnet=dict(type="str"),
            vni=dict(type="int"),
            local_ip=dict(type="str"),
            peers=dict(type="list", elements="str", default=[]),
            dhcp=dict(type="bool", default=False),
            mtu=dict(type="int", default=1450),
            allocation_start=dict(type="str"),
            allocation_end=dict(type="str"),
            lease_time=dict(type="int", default=86400),
            state_dir=dict(type="path", default=DEFAULT_STATE_DIR),
            timeout=dict(type="int", default=30),
            **request_id_argument_spec(),
        ),
        required_if=[("state", "present", ("subnet", "vni", "local_ip"))],
        supports_check_mode=True,
    )
    p = module.params
    opt_dirs = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]

    run = command_runner(module)

    try:
        req = request_id(p["request_id"])
        log = HostLog("network", req)
        bridge = bridge_name(p["name"])
        state_dir = validate_state_dir(p["state_dir"])
        tools = Tools(
            ip=module.get_bin_path("ip", required=False, opt_dirs=opt_dirs),
            bridge=module.get_bin_path("bridge", required=False, opt_dirs=opt_dirs),
            dnsmasq=module.get_bin_path("dnsmasq", required=False, opt_dirs=opt_dirs),
        )
        if not tools.ip or not tools.bridge:
            module.fail_json(msg="the commands ip and bridge are missing on this host: install iproute2")
        if p["state"] == "absent":
            out = network_absent(Host(run, tools), p["name"], state_dir, check_mode=module.check_mode, timeout=p["timeout"], log=log)
            module.exit_json(changed=out.changed, changes=out.changes, bridge=bridge, diff=dict(before=out.before, after=out.after))
        spec = make_spec(p["name"], p["subnet"], p["vni"], p["mtu"], p["allocation_start"], p["allocation_end"], p["lease_time"])
        if p["dhcp"] and not tools.dnsmasq:
            module.fail_json(msg=f"dnsmasq is missing on this host, the DHCP server of network {p['name']}: install dnsmasq-base")
        out = network_present(
            Host(run, tools), spec, p["local_ip"], p["peers"], p["dhcp"], state_dir, check_mode=module.check_mode, timeout=p["timeout"], log=log
        )
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"network {p['name']}: {exc} (is the disk full or the state_dir not writable?)")
    network = dict(spec.to_dict(), local_ip=p["local_ip"], peers=out.after["peers"], dhcp=p["dhcp"], state_dir=os.path.join(state_dir, p["name"]))
    module.exit_json(
        changed=out.changed,
        changes=out.changes,
        network=network,
        bridge=spec.bridge,
        dnsmasq_pid=out.result.get("dnsmasq_pid"),
        diff=dict(before=out.before, after=out.after),
    )


if __name__ == "__main__":
    main()
