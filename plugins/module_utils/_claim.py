# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The compute host's claim: the authoritative check that an instance fits, as nova-compute's.

The scheduler chose the host from facts gathered a moment before; other launches may
have landed since. Under an exclusive lock on the host, the claim takes the host's
figures now (libvirt's domains plus the claims of instances still being built), checks
the flavor against them with the allocation ratios, and records the claim in the host's
claims file. The launch releases the claim once the domain is defined (it then counts
as a domain) or when the spawn fails.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from contextlib import contextmanager

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import host_figures, read_libvirt

DEFAULT_CLAIMS_FILE = "/var/lib/virtcloud/claims.json"


class ClaimError(VirtcloudError):
    """The instance does not fit on this host (or the claims file is unusable)."""


def shortfalls(state: dict, flavor: dict, host: str) -> list[str]:
    """Why FLAVOR does not fit on a host in STATE (Nova's claim test); empty when it fits.

    The allocation ratios raise the limits, but an instance never gets more than the
    host physically has.
    """
    vcpus = int(flavor.get("vcpus") or 0)
    ram = int(flavor.get("ram_mb") or 0)
    disk = int(flavor.get("disk_gb") or 0) * 1024 + int(flavor.get("ephemeral_gb") or 0) * 1024 + int(flavor.get("swap_mb") or 0)
    out = []
    usable_ram = state["total_usable_ram_mb"]
    ram_free = usable_ram * state["ram_allocation_ratio"] - (usable_ram - state["free_ram_mb"])
    if ram > usable_ram:
        out.append(f"{host} has {usable_ram} MB of usable RAM in all, the flavor asks {ram} MB")
    elif ram > ram_free:
        out.append(f"{host} has {int(ram_free)} MB of RAM free (ratio {state['ram_allocation_ratio']:g}), the flavor asks {int(ram)} MB")
    usable_disk = state["total_usable_disk_gb"] * 1024
    disk_free = usable_disk * state["disk_allocation_ratio"] - (usable_disk - state["free_disk_mb"])
    if disk > usable_disk:
        out.append(f"{host} has {usable_disk} MB of disk in all, the flavor asks {disk} MB")
    elif disk > disk_free:
        out.append(f"{host} has {int(disk_free)} MB of disk free (ratio {state['disk_allocation_ratio']:g}), the flavor asks {int(disk)} MB")
    total = state["vcpus_total"]
    vcpus_free = total * state["cpu_allocation_ratio"] - state["vcpus_used"]
    if vcpus > total:
        out.append(f"{host} has {total} vCPUs in all, the flavor asks {vcpus}")
    elif vcpus > vcpus_free:
        out.append(f"{host} has {vcpus_free:g} vCPUs free (ratio {state['cpu_allocation_ratio']:g}), the flavor asks {int(vcpus)}")
    return out


@contextmanager
def locked(path: str):
    """An exclusive lock beside the claims file, held for the whole check-and-record."""
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    with open(path + ".lock", "a", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_claims(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ClaimError(f"the claims file {path} cannot be read ({exc}): remove it if no launch is running on this host") from None
    if not isinstance(data, dict):
        raise ClaimError(f"the claims file {path} does not hold a mapping: remove it if no launch is running on this host")
    return data


def write_claims(path: str, claims: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(claims, f, sort_keys=True, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pending(claims: dict, defined_uuids: set) -> list[dict]:
    """Claims of instances that have no domain yet, as instance entries for host_state()."""
    return [dict(uuid=uuid, flavor=c["flavor"], vm_state="building", task_state="spawning") for uuid, c in sorted(claims.items()) if uuid not in defined_uuids]


def claim(path: str, uuid: str, flavor: dict, host: str, read_host, check_mode: bool = False) -> dict:
    """Claim FLAVOR for instance UUID on this host, under the host's claim lock.

    ``read_host(extra_instances)`` returns ``(figures, defined_uuids)``: the host's state
    (compute_facts' names) counting EXTRA_INSTANCES too, and the uuids that have a domain.
    Returns {changed, figures}; raises ClaimError naming what does not fit.
    """
    with locked(path):
        claims = read_claims(path)
        if uuid in claims:
            return dict(changed=False, figures=None)
        _figures, defined = read_host([])
        if uuid in defined:
            return dict(changed=False, figures=None)
        figures, _defined = read_host(pending(claims, defined))
        short = shortfalls(figures, flavor, host)
        if short:
            raise ClaimError(f"claim for instance {uuid} on {host} failed: {'; '.join(short)}")
        if not check_mode:
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            claims[uuid] = dict(flavor=flavor, claimed_at=now)
            write_claims(path, claims)
        return dict(changed=True, figures=figures)


def libvirt_host_reader(conn, uri: str, instances_path: str, options: dict):
    """``read_host`` for :func:`claim`: the host's figures from libvirt (read once) and its instances folder.

    ``options`` are the allocation ratios and reservations (``_libvirt.allocation_options``).
    """
    seen = {}

    def read_host(extra):
        if not seen:
            seen.update(read_libvirt(conn, uri))
        return host_figures(seen, instances_path, options, extra), {i["uuid"] for i in seen["instances"]}

    return read_host


def release(path: str, uuid: str, check_mode: bool = False) -> bool:
    with locked(path):
        claims = read_claims(path)
        if uuid not in claims:
            return False
        if not check_mode:
            del claims[uuid]
            write_claims(path, claims)
        return True
