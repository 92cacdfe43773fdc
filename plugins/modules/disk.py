#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: disk
short_description: Instance disk files with qemu-img (overlay, grow, convert, remove)
version_added: 0.1.0
description:
  - Manages one disk file on the host with qemu-img, always with explicit formats
    (qemu-img never guesses a format) and under CPU-time and address-space limits.
  - V(present) creates a qcow2 overlay on a backing file (an instance's root disk on
    its cached image), or an empty disk without one; an existing disk must have the
    same format and backing file, and is grown to O(size) when that is larger.
  - V(resized) grows an existing disk to O(size). A smaller size is refused, since shrinking
    loses the guest's data.
  - V(converted) copies O(src) into a new image at O(path) in O(format) (for example
    to make a snapshot from an overlay with its backing chain); an existing O(path)
    is left as it is. The copy is written beside O(path) and renamed, so an
    interrupted run leaves no half image.
  - V(absent) removes the file.
  - Disks are only grown while no domain holds them (qemu-img takes the image's
    lock); grow a running instance's disk through libvirt instead.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.attributes.full
  - virtcloud.compute.request_id
options:
  path:
    description:
      - The disk file (absolute path). For V(converted), the new image.
    type: path
    required: true
  state:
    description:
      - What to make of the disk.
    type: str
    choices: [present, resized, converted, absent]
    default: present
  format:
    description:
      - Format of the disk at O(path). A disk with a backing file is always qcow2.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  size:
    description:
      - Virtual size in bytes, or with a unit, in powers of 1024 (V(10G), V(512M)).
      - With O(backing), the overlay's size; it must not be below the backing file's
        virtual size. Without O(backing), required to create the disk.
      - Required with V(resized).
    type: bytes
  backing:
    description:
      - The backing file of the overlay, for example the cached image
        C(<instances_path>/_base/<sha1>) from M(virtcloud.compute.image_cache).
    type: path
  backing_format:
    description:
      - Format of O(backing) (RV(virtcloud.compute.image_cache#module:format) of image_cache). Required with O(backing).
    type: str
    choices: [qcow2, raw]
  src:
    description:
      - The disk to copy from, for V(converted).
    type: path
  src_format:
    description:
      - Format of O(src).
    type: str
    choices: [qcow2, raw]
  compress:
    description:
      - Write a compressed qcow2 with V(converted).
    type: bool
    default: false
seealso:
  - module: virtcloud.compute.disk_info
  - module: virtcloud.compute.image_cache
"""

EXAMPLES = r"""
- name: Root disk of an instance, an overlay on the cached image, grown to the flavor's size
  virtcloud.compute.disk:
    path: /var/lib/virtcloud/instances/6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10/disk
    backing: "{{ base.path }}"
    backing_format: "{{ base.format }}"
    size: 10G

- name: An empty ephemeral disk
  virtcloud.compute.disk:
    path: /var/lib/virtcloud/instances/6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10/disk.eph0
    size: 1G

- name: Grow it
  virtcloud.compute.disk:
    path: /var/lib/virtcloud/instances/6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10/disk
    state: resized
    size: 20G

- name: Flatten the disk into a snapshot file
  virtcloud.compute.disk:
    src: /var/lib/virtcloud/instances/6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10/disk
    src_format: qcow2
    path: /var/lib/virtcloud/snapshots/web1-snap.qcow2
    state: converted
    compress: true
"""

RETURN = r"""
disk:
  description: The disk after the run (in check mode, as it would be); empty when absent.
  returned: always
  type: dict
  contains:
    path:
      description: The disk file.
      type: str
      sample: /var/lib/virtcloud/instances/6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10/disk
    format:
      description: Its format.
      type: str
      sample: qcow2
    virtual_size:
      description: Its virtual size in bytes.
      type: int
      sample: 10737418240
    backing_file:
      description: Its backing file, or null.
      type: str
      sample: /var/lib/virtcloud/instances/_base/9d2a4f0c3b1e8d7a6c5b4a3f2e1d0c9b8a7f6e5d
    backing_format:
      description: Format of the backing file, or null.
      type: str
      sample: qcow2
changes:
  description: What the run did (or would do), one line each.
  returned: always
  type: list
  elements: str
  sample: ["grow /var/lib/virtcloud/instances/6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10/disk from 67108864 to 10737418240 bytes"]
request_id:
  description: The request id used.
  returned: always
  type: str
  sample: req-3f1c2b4a-5d6e-4f70-8a9b-0c1d2e3f4a5b
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import HostLog, VirtcloudError, command_runner, request_id, request_id_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._disks import Disks
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImg


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "resized", "converted", "absent"], default="present"),
            format=dict(type="str", choices=["qcow2", "raw"], default="qcow2"),
            size=dict(type="bytes"),
            backing=dict(type="path"),
            backing_format=dict(type="str", choices=["qcow2", "raw"]),
            src=dict(type="path"),
            src_format=dict(type="str", choices=["qcow2", "raw"]),
            compress=dict(type="bool", default=False),
            **request_id_argument_spec(),
        ),
        required_if=[
            ("state", "resized", ("size",)),
            ("state", "converted", ("src", "src_format")),
        ],
        required_together=[("backing", "backing_format")],
        supports_check_mode=True,
    )
    p = module.params

    run = command_runner(module)

    try:
        req = request_id(p["request_id"])
        disks = Disks(QemuImg(run), check_mode=module.check_mode, log=HostLog("disk", req))
        state = p["state"]
        if state != "converted" and (p["src"] or p["src_format"]):
            raise VirtcloudError("src and src_format are only for state converted")
        if state != "present" and (p["backing"] or p["backing_format"]):
            raise VirtcloudError("backing and backing_format are only for state present")
        if state == "present":
            result = disks.present(p["path"], p["format"], size=p["size"], backing=p["backing"], backing_format=p["backing_format"])
        elif state == "resized":
            result = disks.resized(p["path"], p["format"], p["size"])
        elif state == "converted":
            result = disks.converted(p["src"], p["src_format"], p["path"], p["format"], compress=p["compress"])
        else:
            result = disks.absent(p["path"])
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"disk {p['path']}: {exc}")
    module.exit_json(
        changed=result["changed"], disk=result["after"], changes=result["actions"], request_id=req, diff=dict(before=result["before"], after=result["after"])
    )


if __name__ == "__main__":
    main()
