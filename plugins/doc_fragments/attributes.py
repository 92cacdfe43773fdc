# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The attributes every module declares; each module sets their C(support)."""

from __future__ import annotations


class ModuleDocFragment:
    """Descriptions of check_mode, diff_mode and idempotent."""

    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check mode and return the changed status without changing anything.
  diff_mode:
    description: Returns details on what changed (or would change) in diff mode.
  idempotent:
    description:
      - A second run with the same arguments reports no change, when nothing else changed in between.
"""

    # The attributes of a module with full check mode, no diff and idempotence (most of the
    # read-only modules, the claim, the lab): extends_documentation_fragment
    # virtcloud.compute.attributes.no_diff instead of its own attributes section.
    NO_DIFF = r"""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
"""

    # Full check mode, diff and idempotence: virtcloud.compute.attributes.full.
    FULL = r"""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
"""
