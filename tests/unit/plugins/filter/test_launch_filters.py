# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The launch filters as Ansible calls them: a refused launch raises, or is returned as data."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtcloud.compute.plugins.filter import launch as plugin

FLAVORS = {"m1.tiny": {"vcpus": 1, "ram_mb": 256, "disk_gb": 1}}
IMAGE = {"id": "976891f2-fa89-4792-82b3-a11c18abeff7", "name": "vctest", "properties": {}, "virtual_size": 1}
REQUEST = dict(name="web", count=1, flavor="m1.tiny", flavors=FLAVORS, group="", server_groups={}, request_id="", max_attempts=3, image="vctest")


def test_a_bad_request_raises_or_comes_back_as_its_message_alone():
    bad = dict(REQUEST, flavor="m9.nope")
    with pytest.raises(AnsibleFilterError, match=r"^Bad launch request: flavor 'm9.nope' \(one of m1.tiny\)$"):
        plugin.launch_request_filter(bad)
    assert plugin.launch_request_filter(bad, errors="return") == {"error": "Bad launch request: flavor 'm9.nope' (one of m1.tiny)"}
    assert "error" not in plugin.launch_request_filter(REQUEST, errors="return")


def test_an_unknown_image_comes_back_as_its_message_alone():
    request = plugin.launch_request_filter(dict(REQUEST, image="nosuch"))
    out = plugin.launch_plan_filter(request, [], [IMAGE], "demo", "", None, "controller", errors="return")
    assert out == {
        "error": f"Bad launch request: image 'nosuch' is not in the image store on controller; the images there: vctest ({IMAGE['id']}) "
        "(import one with playbooks/image_import.yml)"
    }
    assert plugin.launch_plan_filter(plugin.launch_request_filter(REQUEST), [], [IMAGE], errors="return")["image"] == IMAGE


@pytest.mark.parametrize("images", ["vctest", {"id": "x"}, 5])
def test_the_images_must_be_a_list_of_records(images):
    with pytest.raises(AnsibleFilterError, match="images must be a list of image records"):
        plugin.launch_plan_filter(plugin.launch_request_filter(REQUEST), [], images)


def test_errors_takes_raise_or_return():
    with pytest.raises(AnsibleFilterError, match="errors must be raise or return, got 'ignore'"):
        plugin.launch_request_filter(REQUEST, errors="ignore")


def test_a_bad_instance_request_comes_back_as_its_message_alone():
    from ansible_collections.virtcloud.compute.plugins.filter.instance_request import instance_request_filter

    out = instance_request_filter({"instance": "web-1", "action": "bogus"}, errors="return")
    assert list(out) == ["error"] and out["error"].startswith("Bad request for bogus of web-1: action 'bogus' is not one of start, stop, ")
    with pytest.raises(AnsibleFilterError, match="action 'bogus' is not one of"):
        instance_request_filter({"instance": "web-1", "action": "bogus"})
    assert instance_request_filter({"instance": "web-1", "action": "start"}, errors="return")["request_id"].startswith("req-")


def test_the_instance_roles_documented_actions_are_the_registrys():
    import os
    import re

    import yaml

    from ansible_collections.virtcloud.compute.plugins.module_utils._actions import INSTANCE_ACTIONS

    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    with open(os.path.join(top, "..", "roles", "instance", "meta", "argument_specs.yml"), encoding="utf-8") as f:
        option = yaml.safe_load(f)["argument_specs"]["main"]["options"]["instance_action"]
    assert "choices" not in option  # the registry checks the value, with a message naming the bad one
    assert re.findall(r"V\((\w+)\)", option["description"][0]) == list(INSTANCE_ACTIONS)


def test_an_image_store_that_could_not_be_read_refuses_the_launch():
    request = plugin.launch_request_filter(REQUEST)
    out = plugin.launch_plan_filter(request, [], None, "demo", "", None, "controller", "image store /x cannot be read: denied", errors="return")
    assert out == {
        "error": f"Launch refused before anything was made ({request['request_id']}): the image store on controller could not be read: "
        "image store /x cannot be read: denied"
    }
