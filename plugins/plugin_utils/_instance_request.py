# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The check of an action request on an existing instance (role virtcloud.compute.instance), before any change.

The rules come from where they live: the actions and the options each one requires from the
action registry (``_actions``), the request id and the instance reference from ``_validate``,
a snapshot's image name from the image store's own rule. The message names only what is wrong.
"""

from __future__ import annotations

from ansible_collections.virtcloud.compute.plugins.module_utils._actions import INSTANCE_ACTIONS, REGISTRY
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError, new_request_id
from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import check_name
from ansible_collections.virtcloud.compute.plugins.module_utils._validate import is_instance_name, is_request_id, is_uuid

# The role's variable (and what it is) for each option of the registry's actions.
ROLE_OPTIONS = {
    "image": ("image", "the image, a name or an id"),
    "snapshot_path": ("snapshot_name", "the name of the snapshot image to make"),
    "reason": ("reason", "why it is locked"),
}


class InstanceRequestError(VirtcloudError):
    """An action request that cannot be carried out; nothing was changed."""


def check_instance_request(instance: str, action: str, request_id: str = "", image: str = "", snapshot_name: str = "", reason: str = "") -> dict:
    """``{request_id}`` of a valid request (the given id, or a new one); InstanceRequestError naming each bad value."""
    errors = []
    if not isinstance(instance, str) or not (is_uuid(instance, any_case=True) or is_instance_name(instance)):
        errors.append(f"instance {instance!r} is neither a uuid nor an instance name (letters, digits, '.', '_', '-', 1 to 63 characters)")
    given = {"image": image, "snapshot_name": snapshot_name, "reason": reason}
    if action not in INSTANCE_ACTIONS:
        errors.append(f"action {action!r} is not one of {', '.join(INSTANCE_ACTIONS)}")
    else:
        for option in REGISTRY[action].options:
            var, what = ROLE_OPTIONS[option.name]
            if option.required and not given[var]:
                errors.append(f"{action} needs {var} ({what})")
        if snapshot_name and action == "snapshot":
            try:
                check_name(snapshot_name)
            except VirtcloudError as exc:
                errors.append(f"snapshot_name: {exc}")
    if request_id and not is_request_id(request_id):
        errors.append(f"request_id {request_id!r} is not of the form req-<uuid> (lowercase hex)")
    if errors:
        raise InstanceRequestError(f"Bad request for {action} of {instance}: {'; '.join(errors)}; nothing was changed")
    return {"request_id": request_id or new_request_id()}
