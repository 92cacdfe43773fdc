#!/usr/bin/python
# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: image_cache
short_description: Cache an image on a compute host, fetched straight from the image store
version_added: 0.1.0
description:
  - Makes sure C(<instances_path>/_base/<sha1 of the image id>) (Nova's image cache
    name) holds the image, verified, so instance disks can be qcow2 overlays on it.
  - When the base file is missing or fails verification, the compute host itself
    fetches the image and its record from the image store host with C(scp) (SSH with
    strict host key checking and the given key). The data never passes through the
    Ansible controller. The copy must have the size and sha256 of the record (and of
    O(sha256), O(size), O(disk_format) when given), is inspected as untrusted data
    (format inspector and qemu-img, as Nova does), optionally converted to raw
    (O(force_raw), Nova's C(force_raw_images)) and inspected again, then moved into
    place.
  - A present base file is verified on every use, without contacting the image host.
    Its side file C(<base>.info) records the sha256 and the file's size, mtime,
    ctime and inode after the last hash; while they are unchanged the hash is not
    computed again (ctime changes with every write and cannot be set back), otherwise
    (or with O(verify=full)) the file is hashed and compared. The file is inspected
    again each time.
  - A base file that fails verification is fetched again and replaced (RV(repaired)
    says why). Running domains keep the old file open; new overlays get the good one.
  - An existing base file keeps its format even if O(force_raw) now says otherwise,
    also when it is fetched again after failing verification, because overlays made
    on it name that format. Use RV(format) as the backing format.
  - Two runs for the same image on one host, or on hosts sharing O(instances_path)
    (POSIX locks reach NFS), fetch once; the second waits for the first and reuses its file.
  - Runs on the compute host with a Python that has oslo.utils with
    C(imageutils.format_inspector) (the venv of the role virtcloud.compute.compute_node).
author:
  - virtcloud.compute developers (@virtcloud)
extends_documentation_fragment:
  - virtcloud.compute.attributes
  - virtcloud.compute.connection.ssh
  - virtcloud.compute.image_source
  - virtcloud.compute.instances_path
  - virtcloud.compute.request_id
attributes:
  check_mode:
    support: full
    details: The base file is verified (read only); nothing is fetched.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  image_id:
    description:
      - The image id (a uuid), as in the image store.
    type: str
    required: true
  source_host:
    description:
      - The image store host, as the compute host reaches it over SSH (name or address).
    type: str
    required: true
  sha256:
    description:
      - Expected sha256 of the image (from M(virtcloud.compute.image_info)); the store's
        record and the data must agree.
    type: str
  size:
    description:
      - Expected size of the image file in bytes; also checked against the free space before a fetch.
    type: int
  disk_format:
    description:
      - Expected disk format of the image in the store.
    type: str
    choices: [qcow2, raw]
  timeout:
    description:
      - Seconds to wait for another run that holds the lock of this base file (fetching it).
    type: int
    default: 600
notes:
  - Files in C(_base) per image are C(<sha1>) (the base), C(<sha1>.info) (what was
    verified, JSON) and C(<sha1>.lock); C(.fetch-<sha1>-*) directories are fetches in
    progress, removed by the next run if one was interrupted.
seealso:
  - module: virtcloud.compute.image
  - module: virtcloud.compute.disk
"""

EXAMPLES = r"""
- name: Read the image record on the image host
  virtcloud.compute.image_info:
    name: vctest
  delegate_to: "{{ groups['control'][0] }}"
  run_once: true
  register: img

- name: Cache it on the compute host, fetched from the image host directly
  virtcloud.compute.image_cache:
    image_id: "{{ img.images[0].id }}"
    sha256: "{{ img.images[0].sha256 }}"
    size: "{{ img.images[0].size }}"
    disk_format: "{{ img.images[0].disk_format }}"
    instances_path: /var/lib/virtcloud/instances
    source_host: images.example.org
    source_path: /var/lib/virtcloud/images
    ssh_key: /root/.ssh/virtcloud_images
    known_hosts: /etc/virtcloud/known_hosts
  vars:
    ansible_python_interpreter: /opt/virtcloud/venv/bin/python
  register: base
"""

RETURN = r"""
path:
  description: The base file.
  returned: success
  type: str
  sample: /var/lib/virtcloud/instances/_base/9d2a4f0c3b1e8d7a6c5b4a3f2e1d0c9b8a7f6e5d
format:
  description: Format of the base file (V(raw) after O(force_raw)); the backing format for overlays on it.
  returned: success
  type: str
  sample: qcow2
disk_format:
  description: Format of the image in the store.
  returned: success
  type: str
  sample: qcow2
image_id:
  description: The image id.
  returned: success
  type: str
  sample: 0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d
sha256:
  description: sha256 of the image as in the store.
  returned: success
  type: str
  sample: 9b1f4e3c2a7d4c8e8f0b6a5d3c2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e
base_sha256:
  description: sha256 of the base file (differs from RV(sha256) after a conversion to raw).
  returned: success
  type: str
  sample: 9b1f4e3c2a7d4c8e8f0b6a5d3c2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e
size:
  description: Size of the base file in bytes.
  returned: success
  type: int
  sample: 13515776
virtual_size:
  description: Virtual size of the base file in bytes.
  returned: success
  type: int
  sample: 67108864
fetched:
  description: The image was fetched in this run (would be, in check mode).
  returned: success
  type: bool
  sample: true
hashed:
  description: The base file was hashed in this run (fetched, or its stat changed, or O(verify=full)).
  returned: success
  type: bool
  sample: false
repaired:
  description: Why a present base file was not usable and was fetched again; null otherwise.
  returned: success
  type: str
  sample: "sha256 of /var/lib/virtcloud/instances/_base/9d2a... is 1c0f..., not 9b1f... as when it was fetched"
transport:
  description: How the image was fetched (V(scp)); null when it was not.
  returned: success
  type: str
  sample: scp
source:
  description: Where the image was fetched from; null when it was not.
  returned: success
  type: str
  sample: root@images.example.org:/var/lib/virtcloud/images/0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d
fetched_on:
  description: Host name of the compute host that ran the transfer; null when nothing was fetched.
  returned: success
  type: str
  sample: node1
bytes:
  description: Bytes transferred.
  returned: success
  type: int
  sample: 13515776
seconds:
  description: Seconds the fetch took, from the start of the transfer to the file in place.
  returned: success
  type: float
  sample: 0.42
request_id:
  description: The request id used.
  returned: always
  type: str
  sample: req-3f1c2b4a-5d6e-4f70-8a9b-0c1d2e3f4a5b
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtcloud.compute.plugins.module_utils._common import (
    HostLog,
    VirtcloudError,
    command_runner,
    instances_path_argument_spec,
    request_id,
    request_id_argument_spec,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._image_inspect import (
    require_oslo,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._image_store import fill_cache, image_source_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._qemu_img import QemuImg


def main():
    argument_spec = image_source_argument_spec()
    argument_spec.update(
        image_id=dict(type="str", required=True),
        **instances_path_argument_spec(),
        source_host=dict(type="str", required=True),
        sha256=dict(type="str"),
        size=dict(type="int"),
        disk_format=dict(type="str", choices=["qcow2", "raw"]),
        timeout=dict(type="int", default=600),
        **request_id_argument_spec(),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
    )
    p = module.params
    require_oslo(module, "the compute host's venv python")

    run = command_runner(module)

    try:
        req = request_id(p["request_id"])
        result = fill_cache(
            p,
            {"id": p["image_id"], "sha256": p["sha256"], "size": p["size"], "disk_format": p["disk_format"]},
            run,
            QemuImg(run),
            check_mode=module.check_mode,
            log=HostLog("image_cache", req),
            lock_timeout=p["timeout"],
        )
    except VirtcloudError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=result["fetched"], request_id=req, **result)


if __name__ == "__main__":
    main()
