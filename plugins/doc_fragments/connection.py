# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Documentation of the option groups that many modules share."""

from __future__ import annotations


class ModuleDocFragment:
    """Options built once in module_utils/_common.py (the request id of connection_argument_spec is in the fragment request_id)."""

    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The libvirt connection URI on the host the module runs on.
    type: str
    default: qemu:///system
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
