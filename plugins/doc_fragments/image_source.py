# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Documentation of the image store host that a compute host fills its image cache from."""

from __future__ import annotations


class ModuleDocFragment:
    """The options built once in module_utils/_image_store.py (image_source_argument_spec)."""

    DOCUMENTATION = r"""
options:
  source_path:
    description:
      - The image store directory on O(source_host).
    type: path
    default: /var/lib/virtcloud/images
  source_user:
    description:
      - SSH user on O(source_host); it must be able to read the store.
    type: str
    default: root
  source_port:
    description:
      - SSH port of O(source_host).
    type: int
    default: 22
  force_raw:
    description:
      - Convert a fetched qcow2 image to a raw base file (Nova's C(force_raw_images)).
    type: bool
    default: false
  verify:
    description:
      - V(quick) hashes a present base file only when its size, mtime, ctime or inode
        changed since its last hash; V(full) hashes it every time.
    type: str
    choices: [quick, full]
    default: quick
"""
