# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""iproute2 (``ip``, ``bridge``): the one runner (private).

Every command is an argv list, never a shell. Reads use the tools' JSON output (``-j``),
parsed by the small pure functions below, which unit tests feed with recorded output.
The instance network (``_network.Host``) and the lab (``_lab.Lab``) both use
:class:`Iproute`; a failed command is raised as the caller's own error class (NetworkError,
LabError), output that is not what iproute2 prints as :class:`IprouteError`.
"""

from __future__ import annotations

import ipaddress
import json
import os

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError

IP_PATHS = ("/usr/sbin/ip", "/usr/bin/ip", "/sbin/ip", "/bin/ip")
ZERO_MAC = "00:00:00:00:00:00"


class IprouteError(VirtcloudError):
    """iproute2 failed, or printed something that is not its JSON."""


def find_ip(paths: tuple = IP_PATHS) -> str | None:
    """The ``ip`` binary, or None when iproute2 is not installed."""
    return next((p for p in paths if os.path.exists(p)), None)


# --------------------------------------------------------------------------- pure parsers


def load(text: str, what: str) -> list:
    try:
        data = json.loads(text or "[]")
    except ValueError as exc:
        raise IprouteError(f"{what} gave output that is not JSON ({exc}): {(text or '')[:200]!r}") from None
    if not isinstance(data, list):
        raise IprouteError(f"{what} gave a JSON {type(data).__name__}, expected a list")
    return data


def parse_link(text: str) -> dict | None:
    """``ip -j -d link show dev X`` to {name, kind, mtu, up, master, vni, local, port, learning} (None: no such link)."""
    items = load(text, "ip link show")
    if not items:
        return None
    item = items[0]
    info = item.get("linkinfo") or {}
    data = info.get("info_data") or {}
    link = dict(
        name=item.get("ifname"),
        kind=info.get("info_kind"),
        mtu=item.get("mtu"),
        up="UP" in (item.get("flags") or []),
        master=item.get("master"),
        addrgenmode=item.get("inet6_addr_gen_mode"),
    )
    if link["kind"] == "vxlan":
        link.update(vni=data.get("id"), local=data.get("local"), port=data.get("port"), learning=data.get("learning"))
    return link


def parse_addresses(text: str, family: str = "inet") -> list[tuple[str, str]]:
    """``ip -j addr show`` to [(ifname, "address/len")] of one family (inet: IPv4, inet6: IPv6)."""
    result = []
    for item in load(text, "ip addr show"):
        for addr in item.get("addr_info") or []:
            if addr.get("family") == family:
                result.append((item.get("ifname"), f"{addr['local']}/{addr['prefixlen']}"))
    return result


def parse_routes(text: str) -> list[tuple[str, str | None]]:
    """``ip -j -4 route show`` to [(dst, dev)]."""
    return [(item.get("dst"), item.get("dev")) for item in load(text, "ip route show")]


def route_text(item: dict) -> str:
    """One entry of ``ip -j route show`` as ``ip route show`` prints its start: ``DST [via GW] [dev DEV]``."""
    via = f" via {item['gateway']}" if item.get("gateway") else ""
    dev = f" dev {item['dev']}" if item.get("dev") else ""
    return f"{item.get('dst')}{via}{dev}"


def parse_fdb_peers(text: str) -> list[str]:
    """``bridge -j fdb show dev VX`` to the sorted destinations of the all-zero (flood) entries."""
    peers = {item["dst"] for item in load(text, "bridge fdb show") if item.get("mac") == ZERO_MAC and item.get("dst")}
    return sorted(peers, key=ipaddress.ip_address)


def parse_link_names(text: str) -> list[str]:
    """``ip -j link show [master BR]`` to the sorted names of the links."""
    return sorted(item.get("ifname") for item in load(text, "ip link show"))


def parse_netns_names(text: str) -> list[str]:
    """``ip -j netns list`` to the names of the network namespaces."""
    return [item.get("name") for item in load(text, "ip netns list") if item.get("name")]


# --------------------------------------------------------------------------- the runner


class Iproute:
    """``ip`` and ``bridge`` through ``run(argv) -> (rc, out, err)``; ``netns`` runs ``ip -n NETNS``."""

    def __init__(self, run, ip: str = "ip", bridge: str = "bridge", error: type = IprouteError):
        self._run = run
        self.ip = ip
        self.bridge = bridge
        self.error = error

    def argv(self, args: list[str], netns: str | None = None, tool: str | None = None) -> list[str]:
        return [tool or self.ip] + (["-n", netns] if netns else []) + list(args)

    def attempt(self, args: list[str], netns: str | None = None, tool: str | None = None) -> tuple:
        """Run the command; (rc, out, err) whatever the result."""
        return self._run(self.argv(args, netns, tool))

    def run(self, args: list[str], netns: str | None = None, what: str | None = None, tool: str | None = None) -> str:
        """Run the command; its output, or the caller's error naming the command and iproute2's message."""
        argv = self.argv(args, netns, tool)
        rc, out, err = self._run(argv)
        if rc != 0:
            raise self.error(f"{what or ' '.join(argv)} failed (rc={rc}): {(err or out or '').strip()}")
        return out

    # reads (JSON)
    def link(self, name: str, netns: str | None = None) -> dict | None:
        """The link NAME (parse_link), None when there is none."""
        rc, out, err = self.attempt(["-j", "-d", "link", "show", "dev", name], netns)
        if rc != 0:
            if "does not exist" in (err or "") or "Cannot find device" in (err or ""):
                return None
            raise self.error(f"ip link show dev {name} failed (rc={rc}): {(err or '').strip()}")
        return parse_link(out)

    def link_names(self, master: str | None = None) -> list[str]:
        """The names of every link (of the ports of bridge MASTER)."""
        return parse_link_names(self.run(["-j", "link", "show"] + (["master", master] if master else [])))

    def vxlan_vnis(self) -> dict:
        """{device name: VNI} of every VXLAN device on the host."""
        items = load(self.run(["-j", "-d", "link", "show", "type", "vxlan"]), "ip link show type vxlan")
        return {item.get("ifname"): ((item.get("linkinfo") or {}).get("info_data") or {}).get("id") for item in items}

    def addresses(self, dev: str | None = None, family: str = "inet") -> list[tuple[str, str]]:
        """[(ifname, cidr)] of one family, of every device or of DEV."""
        if dev is None:
            return parse_addresses(self.run(["-j", "-4" if family == "inet" else "-6", "addr", "show"]), family)
        return parse_addresses(self.run(["-j", "addr", "show", "dev", dev]), family)

    def routes(self) -> list[tuple[str, str | None]]:
        """[(dst, dev)] of the IPv4 routes."""
        return parse_routes(self.run(["-j", "-4", "route", "show"]))

    def route_entries(self) -> list[dict]:
        """The IPv4 routes as ``ip -j -4 route show`` gives them."""
        return load(self.run(["-j", "-4", "route", "show"]), "ip route show")

    def fdb_peers(self, dev: str) -> list[str]:
        return parse_fdb_peers(self.run(["-j", "fdb", "show", "dev", dev], tool=self.bridge))

    def netns_names(self) -> list[str]:
        return parse_netns_names(self.run(["-j", "netns", "list"]))

    def netns_pids(self, netns: str) -> list[int]:
        """The pids in NETNS (``ip netns pids`` prints no JSON); empty when it cannot be read."""
        rc, out, _err = self.attempt(["netns", "pids", netns])
        return [int(p) for p in out.split() if p.isdigit()] if rc == 0 else []
