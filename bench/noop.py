# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""No-op figures: playbooks that have nothing to do, against `ansible -m ping` to the same hosts in the same run.

On a prepared 3-host lab (compute_node.yml run once, the test image imported, one instance
launched and running), each repetition times, in turn:

- `ansible -m ansible.builtin.ping` to the hosts compute_node.yml runs on (compute and controller);
- playbooks/compute_node.yml again (nothing to change: it must report changed=0);
- `ansible -m ansible.builtin.ping` to the compute hosts (those instance.yml reaches);
- playbooks/instance.yml with instance_action=start on the running instance (changed=0).

It prints the medians, each run's figure and the ratios compute_node.yml / ping (the aim is
at most 5) and instance.yml / ping (at most 2). The machines are noisy: only the ratios of
figures taken in the same run mean something.

The bench brings up a lab of its own (by default `vcnoop`, 10.243.0.0/24; set
VIRTCLOUD_BENCH_LAB and VIRTCLOUD_BENCH_LAB_NETWORK to use another name and network) and
removes it at the end, also on failure or interrupt (unless --keep).

With --profile DIR (a folder holding ansible_collections/ansible/posix, as for
bench/launch.py), the playbooks run with the profile_tasks callback and the bench prints the
slowest tasks of the last repetition.

Run as root: `.venv/bin/python bench/noop.py [--reps N] [--profile DIR] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))

from harness import GUEST_IMAGE, TOP, VENV_BIN, ansible_env, named_lab, parse_recap, run_playbook  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from launch import lab_namespaces, profile_of, start_bench  # noqa: E402  pylint: disable=wrong-import-position

LAB = named_lab(os.environ.get("VIRTCLOUD_BENCH_LAB", "vcnoop"), os.environ.get("VIRTCLOUD_BENCH_LAB_NETWORK", "10.243.0.0/24"), hosts=3, non_shared=["node3"])
INSTANCE = "noop"  # the one instance prepare() launches


def timed(argv: list[str]) -> tuple[float, str]:
    """Run ARGV from the checkout with the tests' Ansible environment; (seconds, stdout); fails on rc != 0."""
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=TOP, env=ansible_env(), timeout=900, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-1000:]}")
    return took, proc.stdout


def ping(pattern: str) -> float:
    return timed([os.path.join(VENV_BIN, "ansible"), "-i", LAB.inventory, pattern, "-m", "ansible.builtin.ping"])[0]


def noop_playbook(playbook: str, extra: dict | None = None) -> tuple[float, str]:
    argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", LAB.inventory, os.path.join(TOP, "playbooks", playbook)]
    if extra:
        argv += ["-e", json.dumps(extra)]
    took, out = timed(argv)
    changed = sum(r["changed"] for r in parse_recap(out).values())
    if changed:
        raise RuntimeError(f"{playbook} changed {changed} things on a run that should change nothing:\n{out[-3000:]}")
    return took, out


def prepare() -> None:
    steps = [
        ("lab_up.yml", LAB.vars, None),
        ("compute_node.yml", None, LAB.inventory),
        ("image_import.yml", dict(image_name="vctest", image_src=GUEST_IMAGE, image_properties={"hw_architecture": "x86_64"}), LAB.inventory),
        ("launch.yml", dict(launch_name="noop", launch_count=1, launch_flavor="m1.nano"), LAB.inventory),
    ]
    for playbook, extra, inventory in steps:
        start = time.monotonic()
        result = run_playbook(playbook, extra, inventory=inventory)
        if result.rc != 0:
            raise RuntimeError(f"{playbook} failed:\n{result.stdout[-3000:]}\n{result.stderr[-1000:]}")
        print(f"  {playbook}: {time.monotonic() - start:.1f} s", flush=True)


def bench(reps: int) -> dict:
    runs: dict[str, list[float]] = {"ping_cn": [], "compute_node": [], "ping_compute": [], "instance": []}
    profiles = {}
    for rep in range(1, reps + 1):
        runs["ping_cn"].append(ping("compute:controller"))
        took, out = noop_playbook("compute_node.yml")
        runs["compute_node"].append(took)
        profiles["compute_node.yml"] = profile_of(out)
        runs["ping_compute"].append(ping("compute"))
        took, out = noop_playbook("instance.yml", dict(instance=INSTANCE, instance_action="start"))
        runs["instance"].append(took)
        profiles["instance.yml"] = profile_of(out)
        print(f"  rep {rep}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()), flush=True)
    return dict(runs=runs, profiles=profiles)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--profile", metavar="DIR", help="a folder with ansible_collections/ansible/posix: run with its profile_tasks callback")
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end (and use it when it is up already)")
    args = parser.parse_args()
    start_bench(LAB, args.profile, lab_may_be_up=args.keep)
    started = time.monotonic()
    try:
        print(f"preparing lab {LAB.name} ({LAB.hosts} compute hosts and a controller):", flush=True)
        prepare()
        result = bench(args.reps)
    finally:
        if not args.keep:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            down = run_playbook("lab_down.yml", LAB.vars)
            print(f"lab_down rc={down.rc}; {LAB.name} namespaces left: {' '.join(lab_namespaces(LAB)) or 'none'}", flush=True)
    runs = result["runs"]
    med = {key: statistics.median(values) for key, values in runs.items()}
    print()
    print(f"no-op figures (3-host lab, {os.cpu_count()} cores, {args.reps} repetitions, medians, whole bench {time.monotonic() - started:.0f} s)")
    print(f"  ansible -m ping compute:controller   {med['ping_cn']:6.2f} s  ({', '.join(f'{v:.2f}' for v in runs['ping_cn'])})")
    print(f"  compute_node.yml, nothing to do      {med['compute_node']:6.2f} s  ({', '.join(f'{v:.2f}' for v in runs['compute_node'])})")
    print(f"  ansible -m ping compute               {med['ping_compute']:6.2f} s  ({', '.join(f'{v:.2f}' for v in runs['ping_compute'])})")
    print(f"  instance.yml start on an active one  {med['instance']:6.2f} s  ({', '.join(f'{v:.2f}' for v in runs['instance'])})")
    cn = [c / p for c, p in zip(runs["compute_node"], runs["ping_cn"])]
    inst = [i / p for i, p in zip(runs["instance"], runs["ping_compute"])]
    print(f"  ratio compute_node.yml / ping        {med['compute_node'] / med['ping_cn']:6.2f}    (aim <= 5; each run: {', '.join(f'{r:.2f}' for r in cn)})")
    print(f"  ratio instance.yml / ping            {med['instance'] / med['ping_compute']:6.2f}    (aim <= 2; each run: {', '.join(f'{r:.2f}' for r in inst)})")
    for playbook, profile in result["profiles"].items():
        if profile:
            print(f"  slowest tasks of {playbook} (profile_tasks, last rep): " + "; ".join(f"{name} {secs:.2f}s" for name, secs in profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
