# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Each compute host's used and free RAM, vCPUs and disk against its allocation ratios (playbooks/capacity.yml).

The figures are the scheduler's and the claim's: the input is compute_facts' host facts, and
the free figures come from the one capacity rule (``module_utils/_capacity``: RamFilter,
DiskFilter, CoreFilter), so that "free" here is exactly what a launch may still claim.

For each resource:

* ``total``: the host's usable total (reserved memory and disk taken off, as placement does);
* ``ratio``: its allocation ratio; ``capacity`` = total x ratio;
* ``used``: what the instances' flavors claim (allocation based, not what guests use), plus,
  for RAM and vCPUs, the domains that have no instance record;
* ``free``: capacity - used (never below 0 in the table: an over-full host shows 0);
* ``largest``: the biggest single instance that fits now: the free figure, but never more than
  the host's physical total, whatever the ratio (one instance never gets more vCPUs, RAM or
  disk than the host has).

Disk has ``least_mb`` too: ``disk_available_least`` (the filesystem's free space minus what the
qcow2 disks may still grow into); the DiskFilter trusts the smaller of it and the allocation-
based free space, so ``free`` and ``largest`` of disk use that smaller figure, and
``allocation_free`` is the allocation-based figure alone.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from ansible_collections.virtcloud.compute.plugins.module_utils._capacity import (
    free_vcpus,
    host_capacity,
    number,
    usable_disk_mb,
    usable_ram_mb,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.plugin_utils._scheduler import HOST_REQUIRED
from ansible_collections.virtcloud.compute.plugins.plugin_utils._table import text_table

# What the report reads: the scheduler's own list of host fields (its name is the inventory's).
REQUIRED = tuple(key for key in HOST_REQUIRED if key != "host")

COLUMNS = (
    ("host", "host"),
    ("state", "state"),
    ("instances", "inst"),
    ("ram_used", "RAM used MB"),
    ("ram_free", "free"),
    ("ram_capacity", "of (total x ratio)"),
    ("vcpus_used", "vCPUs used"),
    ("vcpus_free", "free"),
    ("vcpus_capacity", "of (total x ratio)"),
    ("disk_used", "disk used MB"),
    ("disk_free", "free"),
    ("disk_capacity", "of (total x ratio)"),
    ("largest", "largest instance (vCPUs/RAM MB/disk MB)"),
)


class CapacityReportError(VirtcloudError):
    """Host facts the report cannot read; the message names the host and the field."""


def _figure(value: float) -> int | float:
    return number(max(value, 0))


def _resource(total: float, ratio: float, used: float, free: float) -> dict:
    return {
        "total": number(total),
        "ratio": number(ratio),
        "capacity": number(total * ratio),
        "used": number(used),
        "free": _figure(free),
        "largest": _figure(min(free, total)),
    }


def host_report(facts: t.Mapping[str, t.Any], name: str | None = None) -> dict:
    """One host's figures (see the module's doc) out of its compute_facts (``virtcloud_host``)."""
    if not isinstance(facts, Mapping):
        raise CapacityReportError(f"host facts must be a dictionary (compute_facts' virtcloud_host), got {type(facts).__name__}")
    host = name or facts.get("host") or "?"
    missing = [key for key in REQUIRED if not isinstance(facts.get(key), (int, float)) or isinstance(facts.get(key), bool)]
    if missing:
        raise CapacityReportError(f"the facts of {host} have no number for {', '.join(missing)}: gather them with virtcloud.compute.compute_facts")
    cap = host_capacity(facts, host)
    ram_total = cap.total_usable_ram_mb
    disk_total = cap.total_usable_disk_gb * 1024
    service = facts.get("service") or {}
    if service.get("up") is False:
        state = "down"
    elif service.get("enabled") is False:
        state = "disabled"
    else:
        state = "up"
    disk = _resource(disk_total, cap.disk_allocation_ratio, disk_total - facts["free_disk_mb"], usable_disk_mb(cap))
    least = facts.get("disk_available_least")
    disk["least_mb"] = None if least is None else number(least * 1024)
    disk["allocation_free"] = _figure(disk_total * cap.disk_allocation_ratio - (disk_total - facts["free_disk_mb"]))
    return {
        "host": host,
        "state": state,
        "disabled_reason": service.get("disabled_reason"),
        "down_reason": service.get("down_reason"),
        "availability_zone": facts.get("availability_zone"),
        "instances": facts.get("num_instances", len(facts.get("instances") or [])),
        "ram_mb": _resource(ram_total, cap.ram_allocation_ratio, ram_total - cap.free_ram_mb, usable_ram_mb(cap)),
        "vcpus": _resource(cap.vcpus_total, cap.cpu_allocation_ratio, cap.vcpus_used, free_vcpus(cap)),
        "disk_mb": disk,
    }


def _row(report: dict) -> dict:
    row = {"host": report["host"], "state": report["state"], "instances": report["instances"]}
    for key, prefix in (("ram_mb", "ram"), ("vcpus", "vcpus"), ("disk_mb", "disk")):
        for field in ("used", "free", "capacity"):
            row[f"{prefix}_{field}"] = report[key][field]
    row["ram_capacity"] = f"{report['ram_mb']['capacity']} ({report['ram_mb']['total']} x {report['ram_mb']['ratio']})"
    row["vcpus_capacity"] = f"{report['vcpus']['capacity']} ({report['vcpus']['total']} x {report['vcpus']['ratio']})"
    row["disk_capacity"] = f"{report['disk_mb']['capacity']} ({report['disk_mb']['total']} x {report['disk_mb']['ratio']})"
    row["largest"] = f"{report['vcpus']['largest']}/{report['ram_mb']['largest']}/{report['disk_mb']['largest']}"
    return row


def capacity_report(hosts: t.Any) -> dict:
    """``{hosts: [host_report...] by host name, table: [lines]}`` for a list of compute_facts' host facts."""
    if not isinstance(hosts, (list, tuple)):
        raise CapacityReportError(f"the input must be a list of host facts, got {type(hosts).__name__}")
    reports = sorted((host_report(facts) for facts in hosts), key=lambda r: r["host"])
    return {"hosts": reports, "table": text_table([_row(r) for r in reports], COLUMNS)}
