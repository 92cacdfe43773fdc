# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Documentation of the option groups that many modules share."""

from __future__ import annotations


class ModuleDocFragment:
    """Options built once in module_utils/_common.py."""

    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The libvirt connection URI on the host the module runs on.
    type: str
    default: qemu:///system
  request_id:
    description:
      - The request id of the workflow run, C(req-<uuid>), written to the host log
        and to the instance action log. A new one is made when it is not given.
    type: str
"""

    WAIT = r"""
options:
  wait:
    description:
      - Wait until the wanted state is reached.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the wanted state before failing.
    type: int
    default: 120
"""

    SSH = r"""
options:
  ssh_key:
    description:
      - Private key file, on the host the module runs on, used to log in to the other host
        over SSH. SSH's own defaults when not given.
    type: path
  known_hosts:
    description:
      - Known hosts file, on the host the module runs on, that holds the other host's key.
        Host keys are always checked strictly (never trusted on first use); SSH's own
        default file when not given.
    type: path
  connect_timeout:
    description:
      - Seconds SSH waits for the other host to answer.
    type: int
    default: 10
"""

    ALLOCATION = r"""
options:
  cpu_allocation_ratio:
    description:
      - Virtual to physical CPU ratio. The default is Nova's current C(initial_cpu_allocation_ratio)
        (4.0 since Nova 2023.1; 16.0 before).
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
