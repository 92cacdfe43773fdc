# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The launch conductor's filters (docs in launch_*.yml beside this file); the logic is in plugin_utils/_launch.py."""

from __future__ import annotations

import typing as t
from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError

from ansible_collections.virtcloud.compute.plugins.plugin_utils._refusal import refusable

# The backend is imported when a filter runs, not with this file: Ansible imports every filter
# file of the collection, in each worker process, to find one filter by name.


def _launch():
    from ansible_collections.virtcloud.compute.plugins.plugin_utils import _launch as backend  # pylint: disable=import-outside-toplevel

    return backend


def _call(filter_name: str, func: str, *args: t.Any, errors: str = "raise", **kwargs: t.Any) -> t.Any:
    """FUNC of the backend; a refused launch raises, or with ``errors='return'`` comes back as
    {"error": message}, so that a playbook can fail with that message alone (a filter's error
    reaches the user wrapped in Ansible's own words about the task's arguments)."""
    backend = _launch()
    try:
        return refusable(filter_name, errors, lambda: getattr(backend, func)(*args, **kwargs), backend.LaunchError)
    except (KeyError, TypeError, IndexError) as exc:
        raise AnsibleFilterError(f"virtcloud.compute.{filter_name}: malformed input ({type(exc).__name__}: {exc})") from exc


def _mapping(name: str, value: t.Any, what: str) -> dict:
    if not isinstance(value, Mapping):
        raise AnsibleFilterError(f"virtcloud.compute.{name}: {what} must be a dictionary, got {type(value).__name__}")
    return dict(value)


def launch_request_filter(params: t.Any, errors: str = "raise") -> dict:
    params = _mapping("launch_request", params, "the input")
    return _call("launch_request", "check_request", errors=errors, **params)


def launch_plan_filter(
    request: t.Any,
    hosts: t.Any,
    images: t.Any,
    project: str = "demo",
    availability_zone: t.Any = "",
    hints: t.Any = None,
    image_host: str = "the image host",
    image_error: str = "",
    errors: str = "raise",
) -> dict:
    request = _mapping("launch_plan", request, "the input (launch_request's result)")
    if images is not None:
        if isinstance(images, (str, bytes, Mapping)) or not isinstance(images, Sequence):
            raise AnsibleFilterError(
                f"virtcloud.compute.launch_plan: images must be a list of image records (image_info's images), got {type(images).__name__}"
            )
        images = [_mapping("launch_plan", i, "each image") for i in images]
    return _call("launch_plan", "plan_launch", request, list(hosts), images, project, availability_zone, hints, image_host, image_error, errors=errors)


def launch_round_filter(plan: t.Any, placement: t.Any, ports: t.Any, results: t.Any, attempt: int, max_attempts: int = 3) -> dict:
    plan = _mapping("launch_round", plan, "the input (launch_plan's result)")
    return _call(
        "launch_round",
        "launch_round",
        plan,
        _mapping("launch_round", placement, "placement"),
        list(ports or []),
        list(results or []),
        int(attempt),
        int(max_attempts),
    )


def launch_report_filter(plan: t.Any, placement: t.Any, ports: t.Any, results: t.Any, max_attempts: int = 3) -> dict:
    plan = _mapping("launch_report", plan, "the input (launch_plan's result)")
    return _call("launch_report", "launch_report", plan, placement or None, list(ports or []), list(results or []), int(max_attempts))


class FilterModule:
    """Ansible jinja2 filters"""

    def filters(self) -> dict[str, t.Callable]:
        return {
            "launch_request": launch_request_filter,
            "launch_plan": launch_plan_filter,
            "launch_round": launch_round_filter,
            "launch_report": launch_report_filter,
        }
