# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The instance role's request check: the registry's rules, each bad value named alone."""

from __future__ import annotations

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils._actions import INSTANCE_ACTIONS, REGISTRY
from ansible_collections.virtcloud.compute.plugins.module_utils._validate import is_request_id
from ansible_collections.virtcloud.compute.plugins.plugin_utils._instance_request import InstanceRequestError, check_instance_request

REQ = "req-0b6f1b52-5c1e-4a6e-9c3f-2f1d4e5a6b7c"


@pytest.mark.parametrize("action", INSTANCE_ACTIONS)
def test_every_action_of_the_registry_is_accepted_with_what_it_requires(action):
    given = {}
    for option in REGISTRY[action].options:
        if option.required:
            given[{"image": "image", "snapshot_path": "snapshot_name", "reason": "reason"}[option.name]] = "vctest"
    assert check_instance_request("web-1", action, REQ, **given) == {"request_id": REQ}


def test_a_new_request_id_is_made_when_none_is_given():
    first, second = check_instance_request("web-1", "stop")["request_id"], check_instance_request("web-1", "stop")["request_id"]
    assert is_request_id(first) and is_request_id(second) and first != second


@pytest.mark.parametrize(
    "args, message",
    [
        (("web-1", "rebuild"), "rebuild needs image (the image, a name or an id)"),
        (("web-1", "snapshot"), "snapshot needs snapshot_name (the name of the snapshot image to make)"),
        (("web-1", "snapshot", "", "", "bad name!"), "snapshot_name: image name 'bad name!' is not valid"),
        (("web-1", "fly"), "action 'fly' is not one of start, "),
        (("web 1", "stop"), "instance 'web 1' is neither a uuid nor an instance name"),
        (("web-1", "stop", "req-1"), "request_id 'req-1' is not of the form req-<uuid>"),
    ],
)
def test_each_bad_value_is_named_alone(args, message):
    with pytest.raises(InstanceRequestError) as info:
        check_instance_request(*args)
    text = str(info.value)
    assert text.startswith(f"Bad request for {args[1]} of {args[0]}: ") and message in text and text.endswith("nothing was changed")
    assert text.count(";") == 1  # one wrong value, one reason (then "nothing was changed")


def test_several_bad_values_are_all_named():
    with pytest.raises(InstanceRequestError, match="rebuild needs image .*; request_id 'x' is not"):
        check_instance_request("web-1", "rebuild", "x")


def test_a_snapshot_name_follows_the_image_store_rule():
    # inner spaces are allowed by the store (the role's old pattern refused them: two rules that disagreed)
    assert check_instance_request("web-1", "snapshot", REQ, snapshot_name="web 1 snap")["request_id"] == REQ
