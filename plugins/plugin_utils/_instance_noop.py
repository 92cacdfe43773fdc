# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Is an instance action already done? The registry's own decision, on what instance_info read.

playbooks/instance.yml finds the instance with instance_info on every compute host; when the
record and the domain state it read are already where the action leads (``_actions.
action_decision``: start of an active running instance, lock of a locked one, ...), the role
does not run instance_action on the host: that second round trip would change nothing. Any
other answer, a refusal of Nova's table included, lets instance_action run and decide (and
refuse with its own message) on the host, under the instance lock, as before.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from ansible_collections.virtcloud.compute.plugins.module_utils._actions import action_decision
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError


def instance_noop(found: t.Any, action: str) -> bool:
    """True when FOUND (an item of instance_info's instances: record and state) needs nothing for ACTION."""
    if not isinstance(found, Mapping) or not isinstance(found.get("record"), Mapping) or not found.get("state"):
        return False
    try:
        return action_decision(dict(found["record"]), action, found["state"]) == "noop"
    except (VirtcloudError, KeyError, TypeError, ValueError):
        return False
