#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# The documentation of the action plugins/action/workflow_result.py, which runs on the controller.

from __future__ import annotations

DOCUMENTATION = r"""
module: workflow_result
short_description: Return a workflow's result as data, in the play's stats and in a JSON file
version_added: 0.1.0
description:
  - Puts O(data) under O(key) in the play's custom stats, as M(ansible.builtin.set_stats) does with C(per_host=false)
    and C(aggregate=false), so that a caller of the playbook, an AWX job or a callback reads it.
  - With O(path), also writes O(data) as JSON to that file on the Ansible controller (mode 0600, replaced atomically).
  - Runs in the controller's Ansible process, without a module run on a host; it reports no change, as it is a
    report of the run and not state.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
attributes:
  check_mode:
    support: full
    details: Reports and writes the file in check mode too (the report of what the check-mode run found).
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  key:
    description: The stats key (a variable name), for example C(launch).
    type: str
    required: true
  data:
    description: The result, data that JSON can hold.
    type: raw
    required: true
  path:
    description: A file on the controller to write O(data) to as JSON; its folder must exist.
    type: path
"""

EXAMPLES = r"""
- name: Return the launch's result
  virtcloud.compute.workflow_result:
    key: launch
    data: "{{ launch_report }}"
    path: /tmp/launch-result.json
"""

RETURN = r"""
key:
  description: The stats key.
  returned: always
  type: str
  sample: launch
path:
  description: The file written, or null.
  returned: always
  type: str
  sample: /tmp/launch-result.json
"""
