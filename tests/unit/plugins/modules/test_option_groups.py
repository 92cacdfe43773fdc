# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The action group and the shared option groups: every module of group compute takes request_id."""

from __future__ import annotations

import ast
import os

import yaml

from ansible_collections.virtcloud.compute.plugins.module_utils import _common

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
MODULES = os.path.join(TOP, "plugins", "modules")


def documentation(name: str) -> dict:
    with open(os.path.join(MODULES, f"{name}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DOCUMENTATION":
            return yaml.safe_load(node.value.value)
    raise AssertionError(f"{name} has no DOCUMENTATION")


# lab makes the lab itself; workflow_result is an action on the controller that reports a workflow's result
OUTSIDE_THE_GROUP = ("lab", "workflow_result")


def test_group_compute_lists_every_module_but_lab_and_the_report():
    with open(os.path.join(TOP, "meta", "runtime.yml"), encoding="utf-8") as f:
        runtime = yaml.safe_load(f)
    modules = sorted(n[:-3] for n in os.listdir(MODULES) if n.endswith(".py") and not n.startswith("_"))
    assert runtime["action_groups"]["compute"] == [m for m in modules if m not in OUTSIDE_THE_GROUP]


def test_every_module_of_the_group_documents_request_id_once_by_the_fragment():
    for name in [n[:-3] for n in sorted(os.listdir(MODULES)) if n.endswith(".py") and n[:-3] not in OUTSIDE_THE_GROUP]:
        doc = documentation(name)
        assert "virtcloud.compute.request_id" in doc["extends_documentation_fragment"], name
        assert "request_id" not in doc.get("options", {}), name
        assert "instances_path" not in doc.get("options", {}), name  # the fragment instances_path documents it


def test_instances_path_has_one_default():
    assert _common.instances_path_argument_spec() == {"instances_path": {"type": "path", "default": _common.DEFAULT_INSTANCES_PATH}}
    assert _common.connection_argument_spec()["request_id"] == _common.request_id_argument_spec()["request_id"]
