# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The workflow_result action (docs in plugins/modules/workflow_result.py): a workflow's result as
data, in the play's stats (as set_stats) and in a JSON file on the controller, without a module run."""

from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.vars import validate_variable_name

from ansible_collections.virtcloud.compute.plugins.module_utils._files import atomic_write

ARGUMENT_SPEC = dict(
    key=dict(type="str", required=True),
    data=dict(type="raw", required=True),
    path=dict(type="path"),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        key, data, path = args["key"], args["data"], args["path"]
        try:
            validate_variable_name(key)
        except Exception as exc:  # pylint: disable=broad-exception-caught  # ansible raises its own error types here
            raise AnsibleActionFail(f"key {key!r} is not a valid variable name: {exc}") from None
        try:
            text = json.dumps(data, indent=4, sort_keys=True) + "\n"
        except (TypeError, ValueError) as exc:
            raise AnsibleActionFail(f"the data of {key} cannot be written as JSON: {exc}") from None
        if path:
            if not os.path.isdir(os.path.dirname(path) or "."):
                raise AnsibleActionFail(f"cannot write the result file {path}: its folder does not exist; give a path in an existing folder")
            try:
                atomic_write(path, text, mode=0o600)
            except OSError as exc:
                raise AnsibleActionFail(f"cannot write the result file {path}: {exc}") from None
        result.update(changed=False, key=key, path=path, ansible_stats={"data": {key: data}, "per_host": False, "aggregate": False})
        return result
