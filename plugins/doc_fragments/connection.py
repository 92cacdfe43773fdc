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
