# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one capacity rule: does a flavor fit on a host (private).

The scheduler's RamFilter, DiskFilter and CoreFilter (plugins/plugin_utils/_scheduler.py)
and the compute host's claim (``_claim``, module instance_claim) both ask :func:`fits` or
the per-resource tests below, so that they cannot disagree. The rule is Nova's:

* RAM: ``total_usable_ram_mb * ram_allocation_ratio - (total_usable_ram_mb - free_ram_mb)``
  must hold the flavor's RAM (RamFilter);
* disk: root + ephemeral in GB and swap in MB, against the same formula over
  ``total_usable_disk_gb`` and ``free_disk_mb``, where ``free_disk_mb`` is the smaller of
  the allocation-based free space and ``disk_available_least`` (the filesystem's free
  space minus what the qcow2 disks may still grow into; DiskFilter);
* vCPUs: ``vcpus_total * cpu_allocation_ratio - vcpus_used`` (CoreFilter);
* whatever the ratios, one instance never gets more than the host's physical total of
  RAM, disk or vCPUs (it may over-commit only against other instances).

A host is anything with the attributes of Nova's HostState used here (the scheduler's
``HostState``, or :func:`host_capacity` of compute_facts' figures). This module
imports nothing from Ansible: the scheduler engine uses it too.

The allocation ratios and reservations, with Nova's defaults, are an option group
(:func:`allocation_argument_spec`, doc fragment ``virtcloud.compute.capacity``) shared by
compute_facts and instance_claim, so both see the same figures for a host.
"""

from __future__ import annotations

import types
import typing as t
from dataclasses import dataclass

# Nova's defaults (nova/conf/compute.py initial_*_allocation_ratio since 2023.1, reserved_host_*).
DEFAULT_CPU_ALLOCATION_RATIO = 4.0
DEFAULT_RAM_ALLOCATION_RATIO = 1.0
DEFAULT_DISK_ALLOCATION_RATIO = 1.0
DEFAULT_RESERVED_HOST_MEMORY_MB = 512
DEFAULT_RESERVED_HOST_DISK_MB = 0

ALLOCATION_DEFAULTS = {
    "cpu_allocation_ratio": DEFAULT_CPU_ALLOCATION_RATIO,
    "ram_allocation_ratio": DEFAULT_RAM_ALLOCATION_RATIO,
    "disk_allocation_ratio": DEFAULT_DISK_ALLOCATION_RATIO,
    "reserved_host_memory_mb": DEFAULT_RESERVED_HOST_MEMORY_MB,
    "reserved_host_disk_mb": DEFAULT_RESERVED_HOST_DISK_MB,
}

PHYSICAL_NOTE = "(an instance never overcommits against one host's physical total)"


def allocation_argument_spec() -> dict:
    """Allocation ratios and reservations (doc fragment virtcloud.compute.capacity)."""
    return {name: dict(type="float" if name.endswith("_ratio") else "int", default=value) for name, value in ALLOCATION_DEFAULTS.items()}


def allocation_params(params: t.Mapping[str, t.Any]) -> dict:
    """The option group's values out of a module's params (keyword arguments of ``_libvirt.allocation_options``)."""
    return {name: params[name] for name in ALLOCATION_DEFAULTS}


def number(value: float) -> int | float:
    """A number for a message: 2048 rather than 2048.0, at most two decimals."""
    if float(value).is_integer():
        return int(value)
    return round(value, 2)


def flavor_disk_mb(disk_gb: int, ephemeral_gb: int, swap_mb: int) -> int:
    """The disk a flavor takes on the host: root + ephemeral in GB, swap in MB (Nova's DiskFilter)."""
    return 1024 * (disk_gb + ephemeral_gb) + swap_mb


def flavor_needs(flavor: t.Mapping[str, t.Any]) -> tuple[int, int, int]:
    """(vcpus, ram_mb, disk_mb) a flavor claims."""
    disk = flavor_disk_mb(int(flavor.get("disk_gb") or 0), int(flavor.get("ephemeral_gb") or 0), int(flavor.get("swap_mb") or 0))
    return int(flavor.get("vcpus") or 0), int(flavor.get("ram_mb") or 0), disk


def effective_free_disk_mb(free_disk_mb: float, disk_available_least: float | None) -> float:
    """Nova: with qcow2 overlays the virtual sizes may all be consumed; trust the smaller figure."""
    if disk_available_least is None:
        return free_disk_mb
    return min(free_disk_mb, disk_available_least * 1024)


def host_capacity(figures: t.Mapping[str, t.Any], host: str) -> types.SimpleNamespace:
    """compute_facts' figures (``_libvirt.host_figures``) as a host :func:`fits` reads, disk_available_least applied.

    The scheduler's HostState has the same attribute names; it applies the same rule when it is made.
    """
    least = figures.get("disk_available_least")
    return types.SimpleNamespace(**dict(figures, host=host, free_disk_mb=effective_free_disk_mb(figures["free_disk_mb"], least), disk_available_least=least))


@dataclass(frozen=True)
class Shortfall:
    """One resource that does not fit: which, how much is asked and how much is there."""

    resource: str  # RAM, disk, vCPUs
    filter: str  # the scheduler filter that applies the same test
    requested: float
    available: float
    unit: str
    detail: str  # the scheduler's reason text, with the figures

    @property
    def short(self) -> float:
        return self.requested - self.available

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.resource} short by {number(self.short)}{unit}: {self.detail}"


# --------------------------------------------------------------------------- RAM


def usable_ram_mb(host: t.Any) -> float:
    """Nova's RamFilter: total * ratio - used, where used = total - free."""
    return host.total_usable_ram_mb * host.ram_allocation_ratio - (host.total_usable_ram_mb - host.free_ram_mb)


def ram_fits(host: t.Any, ram_mb: float) -> bool:
    return host.total_usable_ram_mb >= ram_mb and usable_ram_mb(host) >= ram_mb


def ram_shortfall(host: t.Any, ram_mb: float) -> Shortfall | None:
    if host.total_usable_ram_mb < ram_mb:
        detail = f"{host.host} has {number(host.total_usable_ram_mb)} MB RAM in total, {ram_mb} MB requested {PHYSICAL_NOTE}"
        return Shortfall("RAM", "RamFilter", ram_mb, host.total_usable_ram_mb, "MB", detail)
    usable = usable_ram_mb(host)
    if usable < ram_mb:
        detail = (
            f"{host.host} has {number(usable)} MB usable, {ram_mb} MB requested "
            f"({number(host.total_usable_ram_mb)} MB x {number(host.ram_allocation_ratio)} ratio, "
            f"{number(host.free_ram_mb)} MB free)"
        )
        return Shortfall("RAM", "RamFilter", ram_mb, usable, "MB", detail)
    return None


# --------------------------------------------------------------------------- disk


def usable_disk_mb(host: t.Any) -> float:
    total_mb = host.total_usable_disk_gb * 1024
    return total_mb * host.disk_allocation_ratio - (total_mb - host.free_disk_mb)


def disk_fits(host: t.Any, disk_mb: float) -> bool:
    return host.total_usable_disk_gb * 1024 >= disk_mb and usable_disk_mb(host) >= disk_mb


def disk_shortfall(host: t.Any, disk_mb: float) -> Shortfall | None:
    total_mb = host.total_usable_disk_gb * 1024
    if total_mb < disk_mb:
        detail = f"{host.host} has {number(total_mb)} MB disk in total, {disk_mb} MB requested {PHYSICAL_NOTE}"
        return Shortfall("disk", "DiskFilter", disk_mb, total_mb, "MB", detail)
    usable = usable_disk_mb(host)
    if usable < disk_mb:
        least = host.disk_available_least
        # Say so when disk_available_least is the figure that limits (it is smaller than the allocation-based free space).
        qcow2 = "" if least is None or least * 1024 > host.free_disk_mb else f", disk_available_least {number(least)} GB: the qcow2 disks' over-commit counted"
        detail = (
            f"{host.host} has {number(usable)} MB usable disk, {disk_mb} MB requested "
            f"({number(host.total_usable_disk_gb)} GB x {number(host.disk_allocation_ratio)} ratio, "
            f"{number(host.free_disk_mb)} MB free{qcow2})"
        )
        return Shortfall("disk", "DiskFilter", disk_mb, usable, "MB", detail)
    return None


# --------------------------------------------------------------------------- vCPUs


def free_vcpus(host: t.Any) -> float:
    return host.vcpus_total * host.cpu_allocation_ratio - host.vcpus_used


def vcpus_fit(host: t.Any, vcpus: float) -> bool:
    return host.vcpus_total >= vcpus and free_vcpus(host) >= vcpus


def vcpus_shortfall(host: t.Any, vcpus: float) -> Shortfall | None:
    if host.vcpus_total < vcpus:
        detail = f"{host.host} has {host.vcpus_total} physical vcpus, {vcpus} requested {PHYSICAL_NOTE}"
        return Shortfall("vCPUs", "CoreFilter", vcpus, host.vcpus_total, "", detail)
    free = free_vcpus(host)
    if free < vcpus:
        detail = (
            f"{host.host} has {number(free)} vcpus free ({host.vcpus_total} x "
            f"{number(host.cpu_allocation_ratio)} ratio - {number(host.vcpus_used)} used), {vcpus} requested"
        )
        return Shortfall("vCPUs", "CoreFilter", vcpus, free, "", detail)
    return None


# --------------------------------------------------------------------------- all of them


def fits(host: t.Any, vcpus: float, ram_mb: float, disk_mb: float) -> list[Shortfall]:
    """What does not fit on HOST (RAM, disk, vCPUs in that order); empty when the flavor fits."""
    found = (ram_shortfall(host, ram_mb), disk_shortfall(host, disk_mb), vcpus_shortfall(host, vcpus))
    return [s for s in found if s is not None]
