# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Documentation of the request id every module of the compute action group takes."""

from __future__ import annotations


class ModuleDocFragment:
    """The option built once in module_utils/_common.py (request_id_argument_spec)."""

    DOCUMENTATION = r"""
options:
  request_id:
    description:
      - The request id of the workflow run, C(req-<uuid>), written to the host log
        and, for an instance, to its action log. A new one is made when it is not given.
      - Set it once for a play or block with C(module_defaults) on the action group
        C(group/virtcloud.compute.compute).
    type: str
"""
