#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: image
short_description: Import, update and delete images in the image store
version_added: 0.1.0
description:
  - Manages the image store on the image host, the part of Glance this collection
    has. Each image is a directory C(<store_path>/<id>/) holding the file C(image)
    and its record C(image.json).
  - An import copies O(src) (a file on the image host, or with O(src_host) a file on
    that other host, pulled with C(scp)) or downloads O(url) into a
    temporary directory of the store while computing its sha256, then inspects the
    copy as untrusted data with oslo.utils' format inspector (as Nova does) and
    qemu-img (explicit format, CPU-time and memory limits), and only then moves it
    into place. Refused, and leaving nothing behind, are a qcow2 with a backing file,
    an external data file or unknown incompatible features, a file whose real format
    is not O(disk_format), a VMDK descriptor, and a file that matches several formats
    (CVE-2022-47951, CVE-2024-32498, CVE-2024-40767).
  - Idempotent by content. An image found by O(id), or else by O(name), is
    compared with the source by sha256; the same content changes nothing, other
    content is refused (an image id never changes content; names are unique in the
    store). With O(url) or O(src_host) and without O(checksum) an existing image is
    taken as it is and the URL or remote file is not fetched again; with O(checksum)
    the existing image's sha256 must be that checksum.
  - With O(src_host), the image host itself fetches O(src) from that host with C(scp)
    (SSH as O(src_user), with O(ssh_key), strict host key checking against
    O(known_hosts); an unknown or changed host key fails, it is never trusted on first
    use). This is how a snapshot a compute host extracted reaches the store (Nova's
    snapshot upload), without passing through the Ansible controller. The file lands in
    the import's temporary directory (its size bounded at O(size_cap) while it is
    copied) and is then hashed and inspected exactly as a local O(src); a file that is
    refused, or a failed transfer, leaves nothing in the store.
  - Name (when O(id) is given), O(properties), O(owner) and O(visibility) of an
    existing image are updated in place.
  - Runs on the image host with a Python that has oslo.utils with
    C(imageutils.format_inspector) (see the role virtcloud.compute.image_store) when
    it imports; updating and deleting need only the standard library.
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.connection.ssh
  - virtcloud.compute.request_id
attributes:
  check_mode:
    support: full
    details:
      - A local O(src) is inspected and hashed in check mode too, so an unsafe file fails as in a real run.
      - A URL is not fetched, and a file on O(src_host) is not read (the host is not contacted); they are
        inspected in the real run, so check mode reports the import that would happen without sha256 or sizes.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  state:
    description:
      - V(present) imports the image (or updates its record), V(absent) deletes it.
    type: str
    choices: [present, absent]
    default: present
  name:
    description:
      - "Image name, unique in the store: 1 to 255 letters, digits, inner spaces and the characters C(. _ + : @ ( ) -)."
      - One of O(name) and O(id) is required.
    type: str
  id:
    description:
      - Image id (a uuid). A new one is made on import when not given.
    type: str
  src:
    description:
      - Path of the file to import, on the image host.
      - With O(src_host), the absolute path of the file on that host; only letters,
        digits and C(. _ + @ -) between slashes.
    type: path
  src_host:
    description:
      - The host that holds O(src) (name or address, as the image host reaches it over
        SSH), for example the compute host where a snapshot was extracted. Requires O(src).
    type: str
  src_user:
    description:
      - SSH user on O(src_host); it must be able to read O(src).
    type: str
    default: root
  src_port:
    description:
      - SSH port of O(src_host).
    type: int
    default: 22
  url:
    description:
      - C(http://) or C(https://) address to download the image from, on the image host.
    type: str
  checksum:
    description:
      - Expected sha256 of the image data (64 hex digits, optionally C(sha256:) first).
        An import whose data has another sha256 is refused.
    type: str
  disk_format:
    description:
      - The format the image is declared to have; its content must really be that format.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  properties:
    description:
      - The image's properties, all of them (keys not listed are removed), for example
        C(hw_architecture), C(img_hv_type), C(hw_vm_mode), C(min_ram) (MiB),
        C(min_disk) (GiB), C(os_type), C(os_distro).
      - Keys are 1 to 255 of C([a-z0-9_:]); values strings of at most 255 characters
        (numbers and booleans are turned into strings). C(min_ram) and C(min_disk) must
        be whole numbers; C(hw_architecture), C(img_hv_type), C(hw_vm_mode) must be
        values Nova knows and are canonicalised as Nova does (C(amd64) becomes C(x86_64)).
      - A snapshot carries, as Nova makes it, its instance's image properties plus
        C(base_image_ref), C(image_location=snapshot), C(image_state), C(owner_id) and
        C(user_id); its O(image_type), O(instance_uuid) and O(owner) are options of
        their own (fields of the record), not properties.
      - Leave out to keep the properties of an existing image.
    type: dict
  image_type:
    description:
      - V(snapshot) for an image made from an instance (O(instance_uuid) is then required).
    type: str
    choices: [image, snapshot]
    default: image
  instance_uuid:
    description:
      - The instance a snapshot was taken from.
    type: str
  owner:
    description:
      - The project that owns the image.
    type: str
  visibility:
    description:
      - Who may use the image. New images are V(public) when not given.
    type: str
    choices: [public, private, shared, community]
  store_path:
    description:
      - The image store directory on the image host.
    type: path
    default: /var/lib/virtcloud/images
  size_cap:
    description:
      - Largest image accepted, in bytes (Glance's C(image_size_cap), 1 TiB by default).
    type: int
    default: 1099511627776
  timeout:
    description:
      - Seconds to wait for the store lock held by another run, and for the URL's server to answer.
    type: int
    default: 60
  validate_certs:
    description:
      - Verify the server certificate of an C(https://) O(url).
    type: bool
    default: true
notes:
  - The store is changed under a lock (C(<store_path>/.lock)); leftovers of an
    interrupted import are removed by the next run.
seealso:
  - module: virtcloud.compute.image_info
  - module: virtcloud.compute.image_cache
"""

EXAMPLES = r"""
- name: Import the test image with its properties
  virtcloud.compute.image:
    name: vctest
    src: /srv/images/vctest.qcow2
    disk_format: qcow2
    properties:
      hw_architecture: x86_64
      img_hv_type: qemu
      min_ram: 128
      os_type: linux

- name: Import from a web server, checking the sha256
  virtcloud.compute.image:
    name: debian-12
    url: https://images.example.org/debian-12-generic-amd64.qcow2
    checksum: "sha256:4f0f1b1e5c6a3d6f1a3e1d5b9b8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f901"

- name: Store a snapshot of an instance
  virtcloud.compute.image:
    name: web1-snap
    src: /var/lib/virtcloud/images/incoming/web1.qcow2
    image_type: snapshot
    instance_uuid: 6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10
    visibility: private
    owner: demo

- name: Upload a snapshot a compute host extracted, pulled by the image host over scp
  virtcloud.compute.image:
    name: web1-snap
    src: /var/lib/virtcloud/instances/snapshots/web1-snap.qcow2
    src_host: "{{ hostvars['node1'].ansible_host }}"
    ssh_key: /root/.ssh/id_ed25519
    known_hosts: /root/.ssh/known_hosts
    image_type: snapshot
    instance_uuid: 6c1f0a38-8f4d-4a57-9d0c-2b1e7f3c5a10
    owner: demo
    visibility: private
    properties:
      hw_architecture: x86_64
      min_ram: 128
      base_image_ref: 0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d
      image_location: snapshot
      user_id: alice
  delegate_to: "{{ groups['control'][0] }}"
  vars:
    ansible_python_interpreter: /opt/virtcloud/venv/bin/python

- name: Delete an image
  virtcloud.compute.image:
    name: debian-12
    state: absent
"""

RETURN = r"""
image:
  description: The image record after the run (in check mode, as it would be); null when absent.
  returned: always
  type: dict
  sample:
    id: 0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d
    name: vctest
    status: active
    disk_format: qcow2
    container_format: bare
    size: 13515776
    virtual_size: 67108864
    sha256: 9b1f4e3c2a7d4c8e8f0b6a5d3c2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e
    properties: {hw_architecture: x86_64, img_hv_type: qemu, min_ram: "128"}
    owner: null
    visibility: public
    image_type: image
    instance_uuid: null
    created_at: "2025-01-01T12:00:00Z"
    updated_at: "2025-01-01T12:00:00Z"
path:
  description: The image file in the store; null when absent. In check mode the id of a new image is not final.
  returned: always
  type: str
  sample: /var/lib/virtcloud/images/0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d/image
changes:
  description: What the run did (or would do), one line each.
  returned: always
  type: list
  elements: str
  sample: ["import /srv/images/vctest.qcow2 as image vctest (0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d)"]
request_id:
  description: The request id used.
  returned: always
  type: str
  sample: req-3f1c2b4a-5d6e-4f70-8a9b-0c1d2e3f4a5b
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import (
    HostLog,
    VirtcloudError,
    command_runner,
    request_id,
    request_id_argument_spec,
    ssh_argument_spec,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._image_inspect import (
    require_oslo,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import ImageStore
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImg


def main():
    argument_spec = ssh_argument_spec()
    argument_spec.update(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        name=dict(type="str"),
        id=dict(type="str"),
        src=dict(type="path"),
        src_host=dict(type="str"),
        src_user=dict(type="str", default="root"),
        src_port=dict(type="int", default=22),
        url=dict(type="str"),
        checksum=dict(type="str"),
        disk_format=dict(type="str", choices=["qcow2", "raw"], default="qcow2"),
        properties=dict(type="dict"),
        image_type=dict(type="str", choices=["image", "snapshot"], default="image"),
        instance_uuid=dict(type="str"),
        owner=dict(type="str"),
        visibility=dict(type="str", choices=["public", "private", "shared", "community"]),
        store_path=dict(type="path", default="/var/lib/virtcloud/images"),
        size_cap=dict(type="int", default=1024**4),
        timeout=dict(type="int", default=60),
        validate_certs=dict(type="bool", default=True),
        **request_id_argument_spec(),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_one_of=[("name", "id")],
        mutually_exclusive=[("src", "url")],
        required_by={"src_host": "src"},
        supports_check_mode=True,
    )
    p = module.params
    if p["state"] == "present" and (p["src"] or p["url"]):
        require_oslo(module, "the image store's venv python")

    run = command_runner(module)

    try:
        req = request_id(p["request_id"])
        store = ImageStore(p["store_path"], qemu_img=QemuImg(run), check_mode=module.check_mode, log=HostLog("image", req), lock_timeout=p["timeout"], run=run)
        if p["state"] == "absent":
            result = store.delete(image_id=p["id"], name=p["name"])
        else:
            result = store.ensure(
                name=p["name"],
                image_id=p["id"],
                src=p["src"],
                url=p["url"],
                disk_format=p["disk_format"],
                properties=p["properties"],
                image_type=p["image_type"],
                instance_uuid=p["instance_uuid"],
                checksum=p["checksum"],
                owner=p["owner"],
                visibility=p["visibility"],
                size_cap=p["size_cap"],
                timeout=p["timeout"],
                validate_certs=p["validate_certs"],
                src_host=p["src_host"],
                src_user=p["src_user"],
                src_port=p["src_port"],
                ssh_key=p["ssh_key"],
                known_hosts=p["known_hosts"],
                connect_timeout=p["connect_timeout"],
            )
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"image store {p['store_path']}: {exc} (is the disk full, or the store not writable?)")

    after = result["after"]
    module.exit_json(
        changed=result["changed"],
        image=after,
        changes=result["actions"],
        request_id=req,
        path=os.path.join(store.path, after["id"], "image") if after else None,
        diff=dict(before=result["before"] or {}, after=after or {}),
    )


if __name__ == "__main__":
    main()
