# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The images of the store with the instances that use them (playbooks/image_list.yml, image_delete.yml).

An instance uses an image when its record's ``image.id`` is that image: the image it was
launched from or last rebuilt onto. Its running disk does not depend on the store: the disk is
a qcow2 overlay on the compute host's cache (``_base/<sha1 of the image id>``), which deleting
an image from the store never touches. What needs the image in the store is a later step:
a rescue without an explicit image (the instance's own image), a rebuild onto it, a host that
has no cached copy yet (launch, evacuate or migration to a new host).

Glance lets an image in use be deleted; this collection refuses by default and names the
instances (delete them, or rebuild them onto another image, first), and deletes anyway with
``force``, with the consequences above. A snapshot is an image like any other (a flattened
qcow2: nothing depends on the image it was taken from).
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.plugins.plugin_utils._table import text_table

COLUMNS = (
    ("name", "name"),
    ("id", "id"),
    ("image_type", "type"),
    ("disk_format", "format"),
    ("size_mb", "size MB"),
    ("virtual_size_mb", "virtual MB"),
    ("status", "status"),
    ("users", "used by"),
)


class ImageReportError(VirtcloudError):
    """Input the report cannot read, or a delete refused; the message names what and what to do."""


def _records(instances: t.Any) -> list[dict]:
    """Instance records out of instance_info's items ({record: ...}) or bare records, deleted ones left out."""
    if instances is None:
        return []
    if not isinstance(instances, (list, tuple)):
        raise ImageReportError(f"instances must be a list (instance_info's instances), got {type(instances).__name__}")
    out = []
    for item in instances:
        record = item.get("record", item) if isinstance(item, Mapping) else None
        if not isinstance(record, Mapping) or not isinstance(record.get("image"), Mapping):
            raise ImageReportError(f"an instance without a record with an image: {item!r}")
        if record.get("vm_state") != "deleted":
            out.append(record)
    return out


def image_users(image_id: str, instances: t.Any) -> list[dict]:
    """The instances whose record uses IMAGE_ID, as {name, uuid, host, vm_state}, by name."""
    users = [
        {"name": r.get("name"), "uuid": r.get("uuid"), "host": r.get("host"), "vm_state": r.get("vm_state")}
        for r in _records(instances)
        if r["image"].get("id") == image_id
    ]
    return sorted(users, key=lambda u: (str(u["name"]), str(u["uuid"])))


def _mb(size: t.Any) -> float | None:
    return round(size / 1048576, 1) if isinstance(size, (int, float)) and not isinstance(size, bool) else None


def refusal(image: Mapping, users: list[dict]) -> str:
    names = ", ".join(f"{u['name']} ({u['uuid']}) on {u['host']}" for u in users)
    return (
        f"image {image['name']} ({image['id']}) is the image of {len(users)} instance(s): {names}. Delete those instances or rebuild "
        "them onto another image first, or give image_delete_force=true to delete it anyway (Glance's behaviour: the instances "
        "keep running on their hosts' cached copy, but a rescue without an image, a rebuild onto it, or a new host for them "
        "(evacuate, migration) would then fail)"
    )


def image_report(images: t.Any, instances: t.Any = None, delete: bool = False, force: bool = False) -> dict:
    """``{images: [record + in_use_by], table, refused}``; ``refused`` is the message of a delete that may not happen, else None."""
    if not isinstance(images, (list, tuple)) or not all(isinstance(i, Mapping) and "id" in i and "name" in i for i in images):
        raise ImageReportError("images must be a list of image records (image_info's images)")
    records = _records(instances)
    report = [dict(image, in_use_by=image_users(image["id"], records)) for image in images]
    rows = [
        dict(image, size_mb=_mb(image.get("size")), virtual_size_mb=_mb(image.get("virtual_size")), users=[u["name"] for u in image["in_use_by"]])
        for image in report
    ]
    refused = None
    if delete and not force:
        in_use = [image for image in report if image["in_use_by"]]
        refused = "; ".join(refusal(image, image["in_use_by"]) for image in in_use) or None
    return {"images": report, "table": text_table(rows, COLUMNS), "refused": refused}
