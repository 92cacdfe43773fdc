# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Documentation of Nova's instances_path on a compute host."""

from __future__ import annotations


class ModuleDocFragment:
    """The option built once in module_utils/_common.py (instances_path_argument_spec)."""

    DOCUMENTATION = r"""
options:
  instances_path:
    description:
      - Folder of the instance directories on the compute host (Nova's C(instances_path)).
        C(<instances_path>/<uuid>/) holds an instance's disks, config drive, console log and
        record; C(<instances_path>/_base) is the image cache.
      - Its filesystem is the disk that M(virtcloud.compute.compute_facts) and
        M(virtcloud.compute.instance_claim) count (C(total_usable_disk_gb), C(disk_available_least)).
      - Normally the inventory's C(virtcloud_instances_path) of the host.
    type: path
    default: /var/lib/virtcloud/instances
"""
