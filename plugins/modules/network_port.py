#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: network_port
short_description: A port of an instance network, its MAC address and its reserved IP address
version_added: 0.1.0
description:
  - Reserves a MAC and an IPv4 address for one port of an instance network, or releases it.
    Runs on the network's DHCP host (the host where M(virtcloud.compute.network) ran with
    C(dhcp=true)), which keeps the reservations in C(<state_dir>/<network>/ports.json).
  - A new port gets a MAC with Nova's prefix C(fa:16:3e), unique in the network, and the
    lowest free address of the network's pool, unless it asks for a MAC or an address.
    Both are deterministic, so check mode reports what the real run reserves.
  - The same port asked for again keeps its MAC and address (no change). Asking for another
    MAC, address or hostname updates the reservation.
  - dnsmasq is told at once (SIGHUP); when a released or changed reservation leaves a lease
    that no longer matches, dnsmasq is restarted without that lease, so the address can be
    given to the next port's MAC.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.attributes.full
  - virtcloud.compute.request_id
options:
  network:
    description:
      - Name of the network.
    type: str
    required: true
  state:
    description:
      - V(present) reserves (or keeps) the port, V(absent) releases it and its address.
    type: str
    choices: [present, absent]
    default: present
  port_id:
    description:
      - Id of the port, 1 to 80 of letters, digits, C(.), C(_), C(:) and C(-).
      - By default C(<instance_uuid>-<index>).
      - One of O(port_id), O(instance_uuid) and O(ports) is required.
    type: str
  instance_uuid:
    description:
      - UUID of the instance the port belongs to, kept in the reservation.
    type: str
  index:
    description:
      - Number of the port among the instance's ports (0 for the first NIC), used for the default O(port_id).
    type: int
    default: 0
  hostname:
    description:
      - Host name the DHCP server gives with the address (one DNS label).
    type: str
  mac:
    description:
      - MAC address for the port. Generated when not given (or kept, for an existing port).
    type: str
  ip:
    description:
      - IPv4 address for the port, inside the network's subnet and free. The lowest free
        address of the pool when not given (or the port's current one, for an existing port).
    type: str
  ports:
    description:
      - Several ports at once, in one lock, one write and one word to dnsmasq (a launch reserves
        the ports of all the instances of its request in one call). Each entry has the options
        of a single port; new addresses are the lowest free ones, in the order given.
      - With O(state=absent), the ports to release (only O(ports[].port_id) or
        O(ports[].instance_uuid) and O(ports[].index) are used).
      - Not with O(port_id), O(instance_uuid), O(hostname), O(mac) or O(ip).
    type: list
    elements: dict
    suboptions:
      port_id:
        description: Id of the port; by default C(<instance_uuid>-<index>).
        type: str
      instance_uuid:
        description: UUID of the instance the port belongs to.
        type: str
      index:
        description: Number of the port among the instance's ports.
        type: int
        default: 0
      hostname:
        description: Host name the DHCP server gives with the address.
        type: str
      mac:
        description: MAC address for the port.
        type: str
      ip:
        description: IPv4 address for the port.
        type: str
  state_dir:
    description:
      - Folder that holds one folder per network on the DHCP host, as given to M(virtcloud.compute.network).
    type: path
    default: /var/lib/virtcloud/networks
  timeout:
    description:
      - Seconds to wait for the lock of the network's folder and for dnsmasq to restart.
    type: int
    default: 30
notes:
  - The network's DHCP host must have the network already (M(virtcloud.compute.network) with C(dhcp=true)).
  - The O(request_id) is kept in the reservation.
seealso:
  - module: virtcloud.compute.network
"""

EXAMPLES = r"""
- name: Reserve the first port of an instance on the network's DHCP host
  virtcloud.compute.network_port:
    network: private
    instance_uuid: "{{ instance_uuid }}"
    hostname: web1
  delegate_to: "{{ groups['control'][0] }}"
  register: port

- name: A port with a fixed address
  virtcloud.compute.network_port:
    network: private
    port_id: router-gw
    ip: 10.100.0.254

- name: Reserve the ports of a whole request in one call
  virtcloud.compute.network_port:
    network: private
    ports:
      - {instance_uuid: "{{ uuid1 }}", hostname: web-1}
      - {instance_uuid: "{{ uuid2 }}", hostname: web-2}
  register: request_ports

- name: Release it on terminate
  virtcloud.compute.network_port:
    network: private
    instance_uuid: "{{ instance_uuid }}"
    state: absent
"""

RETURN = r"""
port:
  description: The reservation, null after O(state=absent).
  returned: without O(ports)
  type: dict
  sample:
    id: 0b5e5e8a-8d43-4a8e-9a53-0d1e4b6f2c11-0
    network: private
    bridge: vcbr-private
    mac: fa:16:3e:5c:0a:17
    ip: 10.100.0.2
    hostname: web1
    instance_uuid: 0b5e5e8a-8d43-4a8e-9a53-0d1e4b6f2c11
    request_id: req-6f1c1b1e-0a4b-4c36-8f7e-0c2c9d1b5a77
    created_at: "2026-01-01T12:00:00Z"
ports:
  description: With O(ports), the reservations in the order given (as RV(port)); empty after O(state=absent).
  returned: when O(ports) is given
  type: list
  elements: dict
  sample: [{id: 0b5e5e8a-8d43-4a8e-9a53-0d1e4b6f2c11-0, network: private, bridge: vcbr-private, mac: "fa:16:3e:5c:0a:17", ip: 10.100.0.2}]
mac:
  description: MAC address of the port.
  returned: state=present without O(ports)
  type: str
  sample: fa:16:3e:5c:0a:17
ip:
  description: IPv4 address reserved for the port.
  returned: state=present without O(ports)
  type: str
  sample: 10.100.0.2
released:
  description:
    - The reservation that O(state=absent) released (or would release), null when there was none.
    - With O(ports), a list of them in the order given.
  returned: state=absent
  type: dict
  sample: {id: web1-0, mac: "fa:16:3e:5c:0a:17", ip: 10.100.0.2}
dhcp:
  description:
    - What happened to the DHCP server, V(reloaded) (SIGHUP), V(restarted) (a stale lease
      removed) or V(not running) (the files were written; the network module starts it).
    - Absent when nothing changed.
  returned: when changed and not in check mode
  type: str
  sample: reloaded
changes:
  description: What the run did (or, in check mode, would do), one line each.
  returned: always
  type: list
  elements: str
  sample: ["reserve fa:16:3e:5c:0a:17 10.100.0.2 for port web1-0"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import HostLog, VirtcloudError, command_runner, request_id, request_id_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._network import (
    DEFAULT_STATE_DIR,
    Host,
    Tools,
    port_absent,
    port_id_for,
    port_present,
    ports_absent,
    ports_present,
    validate_name,
    validate_port_id,
    validate_state_dir,
)


def _port_options():
    """The options of one port: at the top level, and for each entry of O(ports)."""
    return dict(
        port_id=dict(type="str"),
        instance_uuid=dict(type="str"),
        index=dict(type="int", default=0),
        hostname=dict(type="str"),
        mac=dict(type="str"),
        ip=dict(type="str"),
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            network=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            **_port_options(),
            state_dir=dict(type="path", default=DEFAULT_STATE_DIR),
            timeout=dict(type="int", default=30),
            **request_id_argument_spec(),
            ports=dict(
                type="list",
                elements="dict",
                options=_port_options(),
                required_one_of=[("port_id", "instance_uuid")],
            ),
        ),
        required_one_of=[("port_id", "instance_uuid", "ports")],
        mutually_exclusive=[("ports", "port_id"), ("ports", "instance_uuid"), ("ports", "hostname"), ("ports", "mac"), ("ports", "ip")],
        supports_check_mode=True,
    )
    p = module.params

    run = command_runner(module)

    try:
        req = request_id(p["request_id"])
        log = HostLog("network_port", req)
        name = validate_name(p["network"])
        state_dir = validate_state_dir(p["state_dir"])
        tools = Tools(dnsmasq=module.get_bin_path("dnsmasq", required=False, opt_dirs=["/usr/sbin", "/sbin"]) or "dnsmasq")
        host = Host(run, tools)
        if p["ports"] is not None:
            _many(module, p, host, name, state_dir, req, log)
        port_id = validate_port_id(p["port_id"]) if p["port_id"] else port_id_for(p["instance_uuid"], p["index"])
        if p["state"] == "absent":
            out = port_absent(host, name, state_dir, port_id, check_mode=module.check_mode, timeout=p["timeout"], log=log)
            module.exit_json(
                changed=out.changed,
                changes=out.changes,
                port=None,
                released=out.result["released"],
                diff=dict(before=out.before, after=out.after),
                **_dhcp(out),
            )
        out = port_present(
            host,
            name,
            state_dir,
            port_id,
            hostname=p["hostname"],
            mac=p["mac"],
            ip=p["ip"],
            instance_uuid=p["instance_uuid"],
            request_id=req,
            check_mode=module.check_mode,
            timeout=p["timeout"],
            log=log,
        )
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"port of network {p['network']}: {exc} (is the disk full or the state_dir not writable?)")
    port = out.result["port"]
    module.exit_json(
        changed=out.changed, changes=out.changes, port=port, mac=port["mac"], ip=port["ip"], diff=dict(before=out.before, after=out.after), **_dhcp(out)
    )


def _many(module, p, host, name, state_dir, req, log):
    """O(ports): the ports of several instances in one call; exits the module."""
    wanted = [
        dict(item, port_id=validate_port_id(item["port_id"]) if item["port_id"] else port_id_for(item["instance_uuid"], item["index"])) for item in p["ports"]
    ]
    if p["state"] == "absent":
        out = ports_absent(host, name, state_dir, [w["port_id"] for w in wanted], check_mode=module.check_mode, timeout=p["timeout"], log=log)
        module.exit_json(
            changed=out.changed, changes=out.changes, ports=[], released=out.result["released"], diff=dict(before=out.before, after=out.after), **_dhcp(out)
        )
    out = ports_present(host, name, state_dir, wanted, request_id=req, check_mode=module.check_mode, timeout=p["timeout"], log=log)
    module.exit_json(changed=out.changed, changes=out.changes, ports=out.result["ports"], diff=dict(before=out.before, after=out.after), **_dhcp(out))


def _dhcp(out):
    return dict(dhcp=out.result["dhcp"]) if "dhcp" in out.result else {}


if __name__ == "__main__":
    main()
