# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The compute host's claim: the authoritative check that an instance fits, as nova-compute's.

The scheduler chose the host from facts gathered a moment before; other launches may
have landed since. Under an exclusive lock on the host, the claim takes the host's
figures now (libvirt's domains plus the claims of instances still being built), checks
the flavor against them with the scheduler's own rule (``_capacity.fits``: the allocation
ratios, disk_available_least, never beyond the physical totals), and records the claim in the host's
claims file. The launch releases the claim once the domain is defined (it then counts
as a domain) or when the spawn fails.
"""

from __future__ import annotations

import datetime
import json
import os

from ansible_collections.virtcloud.compute.plugins.module_utils._capacity import fits, flavor_needs, host_capacity
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.module_utils._files import file_lock, write_json
from ansible_collections.virtcloud.compute.plugins.module_utils._libvirt import connect, host_figures, read_libvirt

DEFAULT_CLAIMS_FILE = "/var/lib/virtcloud/claims.json"
LOCK_TIMEOUT = 120  # seconds a claim waits for the other claims of the host


class ClaimError(VirtcloudError):
    """The instance does not fit on this host (or the claims file is unusable)."""


def locked(path: str, timeout: float = LOCK_TIMEOUT):
    """An exclusive lock beside the claims file, held for the whole check-and-record (ClaimError after ``timeout`` s)."""
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    return file_lock(path + ".lock", timeout, f"the claims file {path}", error=ClaimError)


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
    write_json(path, claims)


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
        short = fits(host_capacity(figures, host), *flavor_needs(flavor))
        if short:
            raise ClaimError(f"claim for instance {uuid} on {host} failed: {'; '.join(str(s) for s in short)}")
        if not check_mode:
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            claims[uuid] = dict(flavor=flavor, claimed_at=now)
            write_claims(path, claims)
        return dict(changed=True, figures=figures)


def libvirt_host_reader(conn, uri: str, instances_path: str, options: dict):
    """``read_host`` for :func:`claim`: the host's figures from libvirt (read once) and its instances folder.

    ``options`` are the allocation ratios and reservations (``_libvirt.allocation_options``).
    ``conn`` may be None: the connection to ``uri`` is then opened when the claim first reads
    the host, under the claim's lock (inside a ``_libvirt.connections()`` block).
    """
    seen = {}

    def read_host(extra):
        if not seen:
            seen.update(read_libvirt(conn or connect(uri), uri))
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
