# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``errors`` option of the collection's checking filters, once: a refused request fails the
filter, or comes back as ``{"error": message}`` so that a playbook's fail task gives the message
alone (a filter's error reaches the user wrapped in Ansible's words about the task's arguments)."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleFilterError

ERRORS = ("raise", "return")


def refusable(filter_name: str, errors: t.Any, call: t.Callable[[], t.Any], refusal: type, prefix: str = "") -> t.Any:
    """CALL(); an exception of type REFUSAL raises AnsibleFilterError (PREFIX, then the message) with
    ``errors='raise'``, or is returned as {"error": message} with ``errors='return'``."""
    if errors not in ERRORS:
        raise AnsibleFilterError(f"virtcloud.compute.{filter_name}: errors must be raise or return, got {errors!r}")
    try:
        return call()
    except refusal as exc:
        if errors == "return":
            return {"error": str(exc)}
        raise AnsibleFilterError(f"{prefix}{exc}") from exc
