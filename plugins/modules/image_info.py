#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: image_info
short_description: List the images of the image store, or show one
version_added: 0.1.0
description:
  - Reads the records of the image store on the image host (see virtcloud.compute.image).
  - Without filters every image is returned, oldest first; O(id), O(name),
    O(image_type) and O(instance_uuid) narrow the list.
  - Every record read is validated; a broken record fails the module with its path.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.attributes.no_diff
  - virtcloud.compute.request_id
options:
  image:
    description:
      - Only this image, by id or by name (a value in the form of a uuid is an id).
      - Mutually exclusive with O(id) and O(name).
    type: str
  id:
    description:
      - Only the image with this id.
    type: str
  name:
    description:
      - Only the image with this name.
    type: str
  image_type:
    description:
      - Only images of this type.
    type: str
    choices: [image, snapshot]
  instance_uuid:
    description:
      - Only the snapshots of this instance.
    type: str
  store_path:
    description:
      - The image store directory on the image host.
    type: path
    default: /var/lib/virtcloud/images
seealso:
  - module: virtcloud.compute.image
"""

EXAMPLES = r"""
- name: All images
  virtcloud.compute.image_info:
  register: images

- name: One image by name
  virtcloud.compute.image_info:
    name: vctest
  register: vctest

- name: An image as the user gave it, a name or an id
  virtcloud.compute.image_info:
    image: "{{ image_ref }}"
  register: found

- name: Use its record
  ansible.builtin.debug:
    msg: "{{ vctest.images[0].id }} has sha256 {{ vctest.images[0].sha256 }}"
"""

RETURN = r"""
images:
  description: The matching image records, oldest first, as M(virtcloud.compute.image) returns them in C(image).
  returned: always
  type: list
  elements: dict
  sample:
    - id: 0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d
      name: vctest
      status: active
      disk_format: qcow2
      container_format: bare
      size: 13515776
      virtual_size: 67108864
      sha256: 9b1f4e3c2a7d4c8e8f0b6a5d3c2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e
      properties: {hw_architecture: x86_64}
      owner: null
      visibility: public
      image_type: image
      instance_uuid: null
      created_at: "2025-01-01T12:00:00Z"
      updated_at: "2025-01-01T12:00:00Z"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError, request_id, request_id_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import ImageStore


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="str"),
            id=dict(type="str"),
            name=dict(type="str"),
            image_type=dict(type="str", choices=["image", "snapshot"]),
            instance_uuid=dict(type="str"),
            store_path=dict(type="path", default="/var/lib/virtcloud/images"),
            **request_id_argument_spec(),
        ),
        supports_check_mode=True,
        mutually_exclusive=[("image", "id", "name")],
    )
    p = module.params
    try:
        request_id(p["request_id"])
        images = ImageStore(p["store_path"]).list(
            image_id=p["id"], name=p["name"], image_type=p["image_type"], instance_uuid=p["instance_uuid"], ref=p["image"]
        )
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"image store {p['store_path']} cannot be read: {exc}")
    module.exit_json(changed=False, images=images)


if __name__ == "__main__":
    main()
