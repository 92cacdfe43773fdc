# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The patterns of ids and names, in one place (private).

Every pattern here is used with ``fullmatch`` (never ``match`` with ``$``, which lets
a trailing newline through), through the predicates below. The validators that raise
with a message saying what to do live with the objects they check (``_instance`` for
the record's fields, ``_libvirt`` for host facts, ...) and call these predicates.
"""

from __future__ import annotations

import re

UUID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID_RE = re.compile(UUID_PATTERN)
UUID_ANY_CASE_RE = re.compile(UUID_PATTERN, re.IGNORECASE)
REQUEST_ID_RE = re.compile(f"req-{UUID_PATTERN}")
# an instance name: hostname-safe (the length is checked by the validator)
INSTANCE_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]*")
# projects, networks, availability zones, server groups, flavors: 1..64 characters
SIMPLE_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}")
# a host name as an inventory knows it: 1..253 characters
HOST_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,252}")


def is_uuid(value: object, any_case: bool = False) -> bool:
    """True for a canonical 8-4-4-4-12 hexadecimal UUID (lower case unless ``any_case``)."""
    return isinstance(value, str) and (UUID_ANY_CASE_RE if any_case else UUID_RE).fullmatch(value) is not None


def split_image_ref(ref: str) -> tuple:
    """(id, None) when REF has a uuid's form (any case, given back in lower case), (None, name) otherwise:
    how a user names an image (by id or by name, as Glance's and Nova's clients take it)."""
    return (ref.lower(), None) if is_uuid(ref, any_case=True) else (None, ref)


def is_request_id(value: object) -> bool:
    """True for ``req-`` followed by a lower-case UUID (Nova's request id)."""
    return isinstance(value, str) and REQUEST_ID_RE.fullmatch(value) is not None


def is_instance_name(value: object) -> bool:
    """True for 1..63 of [A-Za-z0-9._-], starting with a letter or digit, without '..' (a UUID is not refused here)."""
    return isinstance(value, str) and len(value) <= 63 and INSTANCE_NAME_RE.fullmatch(value) is not None and ".." not in value


def is_simple_name(value: object) -> bool:
    """True for a project, network, zone, server group or flavor name: 1..64 of [A-Za-z0-9._-], no '..'."""
    return isinstance(value, str) and SIMPLE_NAME_RE.fullmatch(value) is not None and ".." not in value


def is_host_name(value: object) -> bool:
    """True for a host name as the inventory knows it: 1..253 of [A-Za-z0-9._-], no '..'."""
    return isinstance(value, str) and HOST_NAME_RE.fullmatch(value) is not None and ".." not in value
