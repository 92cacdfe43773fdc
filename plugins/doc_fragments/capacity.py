# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Documentation of the allocation ratios and reservations of a compute host."""

from __future__ import annotations


class ModuleDocFragment:
    """Options built once in module_utils/_capacity.py (allocation_argument_spec)."""

    DOCUMENTATION = r"""
options:
  cpu_allocation_ratio:
    description:
      - Virtual to physical CPU ratio. The default is Nova's current C(initial_cpu_allocation_ratio)
        (4.0 since Nova 2023.1; 16.0 before).
      - Give the same value to M(virtcloud.compute.compute_facts) and M(virtcloud.compute.instance_claim)
        for a host (the inventory's C(virtcloud_cpu_allocation_ratio)), so that the scheduler and the claim agree.
    type: float
    default: 4.0
  ram_allocation_ratio:
    description:
      - Virtual to physical RAM ratio. The default is Nova's current C(initial_ram_allocation_ratio)
        (1.0 since Nova 2023.1; 1.5 before).
    type: float
    default: 1.0
  disk_allocation_ratio:
    description:
      - Virtual to physical disk ratio (Nova's C(initial_disk_allocation_ratio)).
    type: float
    default: 1.0
  reserved_host_memory_mb:
    description:
      - Memory kept for the host itself, in MB (Nova's default).
    type: int
    default: 512
  reserved_host_disk_mb:
    description:
      - Disk of the instances filesystem kept for the host, in MB (Nova's default).
        Rounded up to whole GB, as placement does.
    type: int
    default: 0
"""
