# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The launch conductor's decisions, in Python (the role only composes them).

* :func:`check_request`: the request as the user gave it (name, count, flavor, group,
  request id, attempts), checked; a new request id when none is given.
* :func:`plan_launch`: with the compute hosts' facts and the image record: the names to
  make (existing names are left alone), their uuids (uuid5 of the request id and the
  name), the image checked against the flavor before anything is made, and the request
  spec for the scheduler (the server group's members are counted once, by the scheduler).
* :func:`launch_round`: which host tries which instance in attempt round N (the chosen
  host, then the alternates, at most max_attempts hosts per instance).
* :func:`launch_report`: the result of the launch as data.
"""

from __future__ import annotations

import typing as t
import uuid as uuid_mod

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError, new_request_id
from ansible_collections.virtcloud.compute.plugins.module_utils._validate import split_image_ref
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import (
    Image,
    Instance,
    InstanceError,
    check_image_fits,
    sanitize_hostname,
    validate_instance_name,
    validate_request_id,
)

# Ansible's to_uuid namespace: the uuids stay what the Jinja launch made before.
UUID_NAMESPACE = uuid_mod.UUID("361E6D51-FAEC-444A-9079-341386DA8E2E")
MAX_COUNT = 99
ROUNDS = 3  # the attempt rounds playbooks/launch.yml runs (Nova's max_attempts default)


class LaunchError(VirtcloudError):
    """A launch request that cannot be carried out; nothing was made."""


def _names(name: str, count: int) -> list[str]:
    return [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]


def _count(value: t.Any) -> int | None:
    """An integer given as a number or as digits (extra vars arrive as text); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def check_request(
    name: t.Any,
    count: t.Any = 1,
    flavor: t.Any = None,
    flavors: t.Any = None,
    group: t.Any = "",
    server_groups: t.Any = None,
    request_id: t.Any = "",
    max_attempts: t.Any = 3,
    image: t.Any = None,
) -> dict:
    """The launch request checked: {request_id, names, flavor, group, max_attempts, image}.

    Raises LaunchError("Bad launch request: ...") naming every bad field.
    """
    flavors = flavors or {}
    server_groups = server_groups or {}
    problems = []
    number = _count(count)
    if number is None or not 1 <= number <= MAX_COUNT:
        problems.append(f"count {count!r} (1 to {MAX_COUNT})")
        number = 1
    names = []
    try:
        names = [validate_instance_name(n) for n in _names(name, number)]
        for n in names:
            if not sanitize_hostname(n):
                raise InstanceError(f"instance name {n!r} gives no host name")
    except InstanceError as exc:
        problems.append(f"name {name!r}: {exc}")
    if not isinstance(flavor, str) or flavor not in flavors:
        problems.append(f"flavor {flavor!r} (one of {', '.join(sorted(flavors)) or 'none defined'})")
    if group and (not isinstance(group, str) or group not in server_groups):
        problems.append(f"group {group!r} (one of {', '.join(sorted(server_groups)) or 'none defined'})")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        problems.append(f"image {image!r} (an image's name or id)")
    attempts = _count(max_attempts)
    if attempts is None or not 1 <= attempts <= ROUNDS:
        problems.append(f"max attempts {max_attempts!r} (1 to {ROUNDS}: the launch runs {ROUNDS} attempt rounds)")
    if request_id:
        try:
            validate_request_id(request_id)
        except InstanceError as exc:
            problems.append(str(exc))
    if problems:
        raise LaunchError(f"Bad launch request: {'; '.join(problems)}")
    group_spec = None
    if group:
        spec = server_groups[group] or {}
        group_spec = {"name": group, "policy": spec.get("policy"), "rules": spec.get("rules") or {}}
    return {
        "request_id": request_id or new_request_id(),
        "names": names,
        "flavor": dict(flavors[flavor], name=flavor),
        "group": group_spec,
        "max_attempts": attempts,
        "image": image.strip() if isinstance(image, str) else None,
    }


def instance_uuid(request_id: str, name: str) -> str:
    """uuid5 of the request id and the name (Ansible's ``to_uuid`` of ``<req>/<name>``)."""
    return str(uuid_mod.uuid5(UUID_NAMESPACE, f"{request_id}/{name}"))


def pick_image(images: list, ref: str, image_host: str = "the image host") -> dict:
    """The one image record of IMAGES (the image store's, image_info's result) that REF names
    (an id, or a name that one image has); LaunchError naming what is there otherwise."""
    image_id, name = split_image_ref(ref)
    found = [r for r in images if (r.get("id") == image_id if image_id else r.get("name") == name)]
    if len(found) == 1:
        return found[0]
    if not found:
        there = ", ".join(f"{r.get('name')} ({r.get('id')})" for r in images) or "none"
        raise LaunchError(
            f"Bad launch request: image {ref!r} is not in the image store on {image_host}; the images there: {there} "
            "(import one with playbooks/image_import.yml)"
        )
    raise LaunchError(
        f"Bad launch request: {len(found)} images on {image_host} are named {ref!r} ({', '.join(r.get('id') for r in found)}): give the image's id"
    )


def plan_launch(
    request: dict,
    hosts: list,
    images: list,
    project: str = "demo",
    availability_zone: t.Any = "",
    hints: t.Any = None,
    image_host: str = "the image host",
    image_error: str = "",
) -> dict:
    """What to make: {request_id, new, existing, spec (for the scheduler), image (the record)}.

    ``hosts`` are the compute hosts' facts (compute_facts' host_state); an instance whose
    name is on a host already is not made again. ``images`` are the image store's records
    (image_info's result on ``image_host``), from which the request's image is picked. The
    image is checked against the flavor (min_ram, min_disk, virtual size) with the rule
    rebuild uses, before anything is made. ``images`` None means the image host could not
    read its store (``image_error`` says why).
    """
    if images is None:
        raise LaunchError(
            f"Launch refused before anything was made ({request['request_id']}): the image store on {image_host} could not be read: "
            f"{image_error or 'the host did not answer'}"
        )
    image = pick_image(images, request["image"], image_host)
    if "id" not in image:
        raise LaunchError(f"the image record {image!r} has no id: give an image_info result")
    req = request["request_id"]
    existing_names = {i.get("name") for h in hosts for i in (h.get("instances") or [])}
    new, existing = [], []
    for index, name in enumerate(request["names"]):
        if name in existing_names:
            existing.append(name)
        else:
            uuid, hostname = instance_uuid(req, name), sanitize_hostname(name)
            new.append({"name": name, "uuid": uuid, "index": index, "hostname": hostname, "port_request": {"instance_uuid": uuid, "hostname": hostname}})
    image_spec = {"id": image["id"], "properties": image.get("properties") or {}}
    try:
        for item in new:
            inst = Instance.new(uuid=item["uuid"], name=item["name"], project=project, flavor=request["flavor"], image=image_spec)
            check_image_fits(inst, Image.from_dict(image_spec), int(image.get("virtual_size") or 0), action="launch")
    except VirtcloudError as exc:
        raise LaunchError(f"Launch refused before anything was made ({req}): {exc}") from None
    spec = {
        "flavor": request["flavor"],
        "image": image_spec,
        "availability_zone": availability_zone or None,
        "group": dict(request["group"], hosts=[]) if request["group"] else None,
        "hints": hints or {},
        "num_instances": max(len(new), 1),
    }
    return {"request_id": req, "new": new, "existing": existing, "spec": spec, "image": image}


def candidates(placement: dict, index: int, max_attempts: int) -> list[str]:
    """The hosts instance INDEX (of the new ones) may try: the chosen one, then its alternates."""
    return ([placement["selected"][index]] + list(placement["alternates"][index]))[:max_attempts]


def launch_round(plan: dict, placement: dict, ports: list, results: list, attempt: int, max_attempts: int = 3) -> dict:
    """{host: [instance, ...]} for attempt ATTEMPT (0 = the chosen hosts).

    An instance is in the round when no earlier attempt made it and it has a host left
    to try; each entry carries its port (mac, ip, bridge) from the reservation.
    """
    done = {r["uuid"] for r in results if r.get("ok")}
    by_uuid = {p.get("instance_uuid"): p for p in ports or []}
    out: dict[str, list] = {}
    for i, item in enumerate(plan["new"]):
        hosts = candidates(placement, i, max_attempts)
        if item["uuid"] in done or attempt >= len(hosts):
            continue
        port = by_uuid.get(item["uuid"])
        if port is None:
            raise LaunchError(f"instance {item['name']} ({item['uuid']}) has no reserved port")
        out.setdefault(hosts[attempt], []).append(dict(item, port={k: port.get(k) for k in ("network", "mac", "ip", "bridge")}))
    return out


def launch_report(plan: dict, placement: t.Any, ports: list, results: list, max_attempts: int = 3) -> dict:
    """{request_id, launched, existing, failed}: launched instances with host, ip and mac;
    failed ones with the hosts tried and why."""
    by_uuid = {p.get("instance_uuid"): p for p in ports or []}
    launched, failed = [], []
    for i, item in enumerate(plan["new"]):
        tries = [r for r in results if r["uuid"] == item["uuid"]]
        ok = [r for r in tries if r.get("ok")]
        port = by_uuid.get(item["uuid"]) or {}
        if ok:
            launched.append({"name": item["name"], "uuid": item["uuid"], "host": ok[0]["host"], "ip": port.get("ip"), "mac": port.get("mac")})
        else:
            hosts = candidates(placement, i, max_attempts) if placement else []
            failed.append(
                {
                    "name": item["name"],
                    "uuid": item["uuid"],
                    "hosts": hosts,
                    "errors": [f"{r['host']}: {r.get('error') or 'failed'}" for r in tries],
                    "port_request": item["port_request"],
                }
            )
    return {"request_id": plan["request_id"], "launched": launched, "existing": plan["existing"], "failed": failed}
