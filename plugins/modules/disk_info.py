#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: disk_info
short_description: What qemu-img says about a disk file, with its backing chain
version_added: 0.1.0
description:
  - Runs C(qemu-img info --output=json) on one disk file with the given format (never
    a guessed one), under CPU-time and address-space limits, and with
    C(--force-share) so a disk held by a running domain can be read.
  - With O(backing_chain) the images below it are returned too, nearest first.
  - A missing file is not an error (RV(exists) is false).
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.attributes.no_diff
  - virtcloud.compute.request_id
options:
  path:
    description:
      - The disk file (absolute path).
    type: path
    required: true
  format:
    description:
      - Its format.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  backing_chain:
    description:
      - Also describe the backing files, down to the last one.
    type: bool
    default: true
seealso:
  - module: virtcloud.compute.disk
"""

EXAMPLES = r"""
- name: Describe an instance disk and its backing file
  virtcloud.compute.disk_info:
    path: /var/lib/virtcloud/instances/6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10/disk
  register: disk

- name: Show the backing file
  ansible.builtin.debug:
    msg: "{{ disk.disk.backing_chain | map(attribute='filename') | list }}"
"""

RETURN = r"""
exists:
  description: The file exists.
  returned: always
  type: bool
  sample: true
disk:
  description:
    - qemu-img's description of the file; empty when it does not exist.
    - Keys are those of qemu-img's JSON with C(_) for C(-), flattened (C(data_file),
      C(compat), C(corrupt) from the qcow2 specific part, which is also kept whole in
      C(format_specific)).
  returned: always
  type: dict
  contains:
    filename:
      description: The file.
      type: str
      sample: /var/lib/virtcloud/instances/6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10/disk
    format:
      description: Its format.
      type: str
      sample: qcow2
    virtual_size:
      description: Virtual size in bytes.
      type: int
      sample: 10737418240
    actual_size:
      description: Bytes the file takes on disk.
      type: int
      sample: 200704
    backing_filename:
      description: The backing file as written in the image, or null.
      type: str
      sample: /var/lib/virtcloud/instances/_base/9d2a4f0c3b1e8d7a6c5b4a3f2e1d0c9b8a7f6e5d
    full_backing_filename:
      description: The backing file resolved to a full path, or null.
      type: str
      sample: /var/lib/virtcloud/instances/_base/9d2a4f0c3b1e8d7a6c5b4a3f2e1d0c9b8a7f6e5d
    backing_format:
      description: Format of the backing file, or null.
      type: str
      sample: qcow2
    backing_chain:
      description: With O(backing_chain), the images below this one, nearest first, each described the same way.
      type: list
      elements: dict
      sample: [{filename: /var/lib/virtcloud/instances/_base/9d2a4f0c3b1e8d7a6c5b4a3f2e1d0c9b8a7f6e5d, format: qcow2}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError, command_runner, request_id, request_id_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._disks import Disks
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImg


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            format=dict(type="str", choices=["qcow2", "raw"], default="qcow2"),
            backing_chain=dict(type="bool", default=True),
            **request_id_argument_spec(),
        ),
        supports_check_mode=True,
    )
    p = module.params

    run = command_runner(module)

    try:
        request_id(p["request_id"])
        info = Disks(QemuImg(run)).info(p["path"], p["format"], backing_chain=p["backing_chain"])
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"disk {p['path']}: {exc}")
    module.exit_json(changed=False, exists=info is not None, disk=info or {})


if __name__ == "__main__":
    main()
