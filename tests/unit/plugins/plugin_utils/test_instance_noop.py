# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""instance.yml skips the host when the registry says the action has nothing to do."""

from __future__ import annotations

import pytest

from ansible_collections.virtcloud.compute.plugins.plugin_utils._instance_noop import instance_noop
from ansible_collections.virtcloud.compute.tests.unit.plugins.module_utils.fake_libvirt import record as sample_record


def found(state="running", **overrides):
    data = sample_record()
    data.update(overrides)
    return {"record": data, "state": state, "uuid": data["uuid"]}


@pytest.mark.parametrize(
    "item, action, noop",
    [
        (found("running", vm_state="active"), "start", True),
        (found("running", vm_state="active"), "stop", False),
        (found("shutoff", vm_state="stopped"), "stop", True),
        (found("shutoff", vm_state="active"), "start", False),  # the record and the domain disagree: the module decides
        (found("running", vm_state="active", task_state="rebooting"), "start", False),
        (found("paused", vm_state="paused"), "pause", True),
        (found("running", vm_state="active"), "reboot", False),  # always runs
        (found("running", vm_state="active"), "delete", False),
        (found("running", vm_state="active"), "snapshot", False),
        (found("running", vm_state="active", locked=True), "lock", True),
        (found("running", vm_state="active"), "lock", False),
        (found("running", vm_state="stopped"), "unpause", False),  # refused by Nova's table: the module says so
        (found("running", vm_state="active"), "fly", False),
        ({}, "start", False),
        ({"record": {"name": "x"}, "state": "running"}, "start", False),  # a record that is not valid
        (None, "start", False),
    ],
)
def test_noop(item, action, noop):
    assert instance_noop(item, action) is noop
