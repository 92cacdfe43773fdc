# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The action registry: one object per action, read by the state table, the module and its docs."""

from __future__ import annotations

import pytest
import yaml

from ansible_collections.virtcloud.compute.plugins.module_utils import _actions as ac
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import ACTION_LOG_NAMES, ActionRefused, Instance, VmState
from ansible_collections.virtcloud.compute.plugins.modules import instance_action
from ansible_collections.virtcloud.compute.tests.unit.plugins.module_utils.fake_libvirt import UUID
from ansible_collections.virtcloud.compute.tests.unit.plugins.module_utils.fake_libvirt import record as sample_record


def record(**overrides):
    return Instance.from_dict(sample_record(**overrides))


def documented_options():
    return yaml.safe_load(instance_action.DOCUMENTATION)["options"]


def test_the_registry_is_a_dict_of_action_objects_named_by_their_key():
    assert isinstance(ac.REGISTRY, dict) and ac.REGISTRY
    for name, action in ac.REGISTRY.items():
        assert isinstance(action, ac.InstanceAction) and action.name == name


def test_every_action_of_the_registry_is_in_the_state_table():
    inst = record(vm_state="active")
    for name in ac.REGISTRY:
        ac.is_allowed(inst, name)  # known to check_action: no "unknown action"
    assert set(ac.allowed_actions(record(vm_state="error", locked=True))) <= set(ac.REGISTRY)
    with pytest.raises(Exception, match="unknown action 'fly'; known actions: "):
        ac.check_action(inst, "fly")


def test_every_log_name_is_one_the_record_accepts_and_the_other_way_round():
    assert {action.log_name for action in ac.REGISTRY.values()} == ACTION_LOG_NAMES


def test_the_module_offers_exactly_the_actions_with_steps_and_documents_them():
    offered = [name for name, action in ac.REGISTRY.items() if action.steps is not None]
    assert list(ac.INSTANCE_ACTIONS) == offered
    documented = documented_options()["action"]["choices"]
    assert documented == list(ac.INSTANCE_ACTIONS)
    text = " ".join(documented_options()["action"]["description"])
    for name in ac.INSTANCE_ACTIONS:
        assert f"V({name})" in text, f"the action option's description does not explain {name}"


def test_the_documented_image_formats_are_the_registry_s():
    assert documented_options()["image_format"]["choices"] == list(ac.IMAGE_FORMATS)


def test_the_options_an_action_takes_are_documented_and_required_if_comes_from_the_registry():
    options = documented_options()
    for name in ac.ACTION_OPTIONS:
        assert name in options
    assert ac.required_if() == [("action", "snapshot", ["snapshot_path"]), ("action", "rebuild", ["image"])]
    for action in ac.REGISTRY.values():
        assert {o.name for o in action.options} <= set(ac.ACTION_OPTIONS)


@pytest.mark.parametrize("name", [n for n, a in ac.REGISTRY.items() if a.vm_states is not None])
def test_a_refused_action_names_the_instance_the_action_and_the_state(name):
    action = ac.REGISTRY[name]
    refused_state = next(state for state in VmState.ALL if state not in action.vm_states)
    inst = record(vm_state=refused_state)
    with pytest.raises(ActionRefused) as info:
        ac.check_action(inst, name)
    message = str(info.value)
    assert "web-1" in message and UUID in message and name in message and refused_state in message
    assert (info.value.action, info.value.uuid, info.value.vm_state, info.value.reason) == (name, UUID, refused_state, "vm_state")


def test_power_actions_lead_to_a_domain_state_and_the_others_say_what_they_do():
    for name in ("start", "stop", "pause", "unpause", "suspend", "resume"):
        action = ac.REGISTRY[name]
        assert action.vm_state is not None and action.domain is not None and not action.always
    for name in ("reboot", "reboot_hard", "snapshot", "rebuild"):
        assert ac.REGISTRY[name].always


def test_option_checks_come_from_the_registry():
    with pytest.raises(ac.DomainError, match="reason is only used with action=lock, not action=stop"):
        ac.check_options(ac.REGISTRY["stop"], {"reason": "x"})
    with pytest.raises(ac.DomainError, match="image is only used with action rebuild or rescue, not action=pause"):
        ac.check_options(ac.REGISTRY["pause"], {"image": {"id": UUID}})
    with pytest.raises(ac.DomainError, match="action=snapshot needs snapshot_path: the file to write the snapshot to"):
        ac.check_options(ac.REGISTRY["snapshot"], {})
    ac.check_options(ac.REGISTRY["rescue"], {})  # rescue's image is optional
    ac.check_options(ac.REGISTRY["lock"], {"reason": "legal hold"})


def test_rebuild_plans_to_keep_a_stopped_instance_stopped():
    rebuild = ac.REGISTRY["rebuild"]
    assert rebuild.planned(record(vm_state="stopped")) == ("stopped", "shutoff")
    assert rebuild.planned(record(vm_state="active")) == ("active", "running")
    assert ac.REGISTRY["snapshot"].planned(record()) == (None, None)
