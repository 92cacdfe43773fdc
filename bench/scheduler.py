# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Scheduler benchmark: requests per second of the engine behind virtcloud.compute.schedule.

For each cloud size (1,000 and 10,000 hosts by default) a synthetic cloud is built
with a fixed seed: hosts of four sizes, part of the capacity used, four availability
zones, a few aggregates, some disabled hosts, a few instance records per host. Then
a stream of single-instance requests (mixed flavors; some with a zone, a server
group, capability extra specs or image properties) is scheduled one by one with the
default filters and weighers; after each request the chosen host's facts are
updated as compute_facts would report them next time, so the cloud fills up.

The same stream is also run through a naive baseline in the same process: one pass
over the same host dictionaries keeping the host with the most free RAM that has
enough. The baseline is what the ratio is measured against: on a noisy machine the
engine/baseline ratio and the growth of that ratio with the number of hosts are
meaningful where absolute times are not.

Run: python3 bench/scheduler.py [--hosts 1000 10000] [--requests 1000 150]
Stdlib only; the engine is loaded from plugins/plugin_utils/_scheduler.py by path (with the
repository's .collections on sys.path for the capacity rule it shares with the claim).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ENGINE_PATH = Path(__file__).resolve().parent.parent / "plugins" / "plugin_utils" / "_scheduler.py"

HOST_SIZES = [  # (ram MB, physical cpus, disk GB)
    (65536, 16, 1000),
    (131072, 32, 2000),
    (262144, 64, 4000),
    (524288, 128, 8000),
]
FLAVORS = [
    {"name": "m1.tiny", "vcpus": 1, "ram_mb": 512, "disk_gb": 1},
    {"name": "m1.small", "vcpus": 1, "ram_mb": 2048, "disk_gb": 20},
    {"name": "m1.medium", "vcpus": 2, "ram_mb": 4096, "disk_gb": 40},
    {"name": "m1.large", "vcpus": 4, "ram_mb": 8192, "disk_gb": 80},
    {"name": "m1.xlarge", "vcpus": 8, "ram_mb": 16384, "disk_gb": 160, "swap_mb": 1024},
]
ZONES = ["az1", "az2", "az3", "az4"]


def load_engine():
    collections = str(ENGINE_PATH.parent.parent.parent / ".collections")
    if collections not in sys.path:
        sys.path.insert(0, collections)
    spec = importlib.util.spec_from_file_location("virtcloud_scheduler", ENGINE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def make_cloud(count: int, rng: random.Random) -> list[dict]:
    hosts = []
    for index in range(count):
        ram, cpus, disk = rng.choice(HOST_SIZES)
        used = rng.random() * 0.6
        instances = [
            {"uuid": f"{index:05d}-{n}", "name": f"vm-{index}-{n}", "vm_state": "active", "task_state": None, "server_group": rng.choice([None, None, "web"])}
            for n in range(rng.randint(0, 8))
        ]
        aggregates = [{"name": "ssd", "metadata": {"ssd": "true"}}] if index % 5 == 0 else []
        if index % 50 == 0:
            aggregates.append({"name": "stack", "metadata": {"ram_weight_multiplier": "-1.0"}})
        hosts.append(
            {
                "host": f"compute{index:05d}",
                "free_ram_mb": int(ram * (1 - used)),
                "total_usable_ram_mb": ram,
                "vcpus_total": cpus,
                "vcpus_used": int(cpus * 4 * used),
                "total_usable_disk_gb": disk,
                "free_disk_mb": int(disk * 1024 * (1 - used)),
                "ram_allocation_ratio": 1.0,
                "cpu_allocation_ratio": 4.0,
                "disk_allocation_ratio": 1.0,
                "hypervisor_type": "QEMU",
                "hypervisor_version": rng.choice([7002000, 8002000, 9000000]),
                "supported_instances": [["x86_64", "kvm", "hvm"], ["x86_64", "qemu", "hvm"]],
                "cpu_info": {"arch": "x86_64", "vendor": rng.choice(["Intel", "AMD"]), "features": ["sse4_2", "avx2"]},
                "num_instances": len(instances),
                "num_io_ops": rng.randint(0, 3),
                "availability_zone": ZONES[index % len(ZONES)],
                "aggregates": aggregates,
                "service": {"enabled": index % 100 != 7, "disabled_reason": "maintenance" if index % 100 == 7 else None, "up": True},
                "instances": instances,
                "failed_builds": 1 if index % 97 == 0 else 0,
            }
        )
    return hosts


def make_requests(count: int, rng: random.Random) -> list[dict]:
    requests = []
    for index in range(count):
        request = {"flavor": dict(rng.choice(FLAVORS)), "num_instances": 1}
        kind = index % 10
        if kind in (1, 2):
            request["availability_zone"] = rng.choice(ZONES)
        elif kind == 3:
            request["flavor"]["extra_specs"] = {"capabilities:cpu_info:vendor": "Intel", "aggregate_instance_extra_specs:ssd": "true"}
        elif kind == 4:
            request["image"] = {"id": "img-1", "properties": {"hw_architecture": "x86_64", "img_hv_type": "kvm", "img_hv_requested_version": ">= 8.0"}}
        elif kind == 5:
            request["group"] = {"name": "web", "policy": "soft-anti-affinity", "hosts": []}
        requests.append(request)
    return requests


def consume(host: dict, flavor: dict) -> None:
    """What compute_facts would report after the instance is spawned."""
    host["free_ram_mb"] -= flavor["ram_mb"]
    host["free_disk_mb"] -= 1024 * (flavor["disk_gb"] + flavor.get("ephemeral_gb", 0)) + flavor.get("swap_mb", 0)
    host["vcpus_used"] += flavor["vcpus"]
    host["num_instances"] += 1


def run_engine(engine, hosts: list[dict], requests: list[dict]) -> tuple[list[float], int]:
    by_name = {h["host"]: h for h in hosts}
    times, failures = [], 0
    for request in requests:
        start = time.perf_counter()
        try:
            result = engine.schedule(hosts, request)
        except engine.NoValidHost:
            result = None
        times.append(time.perf_counter() - start)
        if result is None:
            failures += 1
            continue
        consume(by_name[result["selected"][0]], request["flavor"])
    return times, failures


def baseline_choice(hosts: list[dict], ram_mb: int) -> dict | None:
    best, best_free = None, -1
    for host in hosts:
        free = host["free_ram_mb"]
        if free >= ram_mb and free > best_free:
            best, best_free = host, free
    return best


def run_baseline(hosts: list[dict], requests: list[dict]) -> list[float]:
    times = []
    for request in requests:
        start = time.perf_counter()
        best = baseline_choice(hosts, request["flavor"]["ram_mb"])
        times.append(time.perf_counter() - start)
        if best is not None:
            consume(best, request["flavor"])
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000], help="cloud sizes")
    parser.add_argument("--requests", type=int, nargs="+", default=[1000, 150], help="requests per cloud size (the last value repeats for further sizes)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--gc-off",
        action="store_true",
        help="diagnostic: disable CPython's cyclic garbage collector while the engine runs, to separate the engine's "
        "own cost from the collector scanning a large heap",
    )
    args = parser.parse_args()

    engine = load_engine()
    print(f"virtcloud.compute scheduler benchmark - Python {platform.python_version()} on {platform.machine()}")
    print(f"filters ({len(engine.DEFAULT_FILTERS)}): {', '.join(engine.DEFAULT_FILTERS)}")
    print(f"weighers ({len(engine.DEFAULT_WEIGHERS)}): {', '.join(engine.DEFAULT_WEIGHERS)}")
    print("each request: 1 instance, full trace returned; the chosen host is consumed before the next request")
    if args.gc_off:
        print("garbage collector disabled while the engine runs (diagnostic)")
    print()

    rows = []
    for position, count in enumerate(args.hosts):
        requests_count = args.requests[min(position, len(args.requests) - 1)]
        requests = make_requests(requests_count, random.Random(args.seed + 1))
        note = "" if requests_count >= 1000 else f" (only {requests_count} requests, to keep the run short)"
        print(f"{count} hosts, {requests_count} requests{note} ...", flush=True)
        # The same cloud, rebuilt from the seed for each run, so only one copy is alive at a time.
        cloud = make_cloud(count, random.Random(args.seed))
        if args.gc_off:
            gc.collect()
            gc.disable()
        engine_times, failures = run_engine(engine, cloud, requests)
        gc.enable()
        del cloud
        base_times = run_baseline(make_cloud(count, random.Random(args.seed)), requests)
        row = {
            "hosts": count,
            "requests": requests_count,
            "failures": failures,
            "mean": statistics.fmean(engine_times),
            "median": statistics.median(engine_times),
            "p95": sorted(engine_times)[int(0.95 * (len(engine_times) - 1))],
            "total": sum(engine_times),
            "base_mean": statistics.fmean(base_times),
        }
        row["ratio"] = row["mean"] / row["base_mean"]
        rows.append(row)
        print(
            f"  engine:   mean {ms(row['mean'])}  median {ms(row['median'])}  p95 {ms(row['p95'])}  "
            f"total {row['total']:.1f} s  ({row['mean'] / count * 1e6:.2f} us per host)  no valid host: {failures}"
        )
        print(f"  baseline: mean {ms(row['base_mean'])}  ({row['base_mean'] / count * 1e6:.3f} us per host)")
        print(f"  engine / baseline: {row['ratio']:.0f}x")

    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        hosts_growth = last["hosts"] / first["hosts"]
        print()
        print(f"growth from {first['hosts']} to {last['hosts']} hosts ({hosts_growth:.0f}x hosts):")
        print(f"  engine time per request:   x{last['mean'] / first['mean']:.2f}")
        print(f"  baseline time per request: x{last['base_mean'] / first['base_mean']:.2f}")
        print(
            f"  engine/baseline ratio:     {first['ratio']:.0f}x -> {last['ratio']:.0f}x "
            f"(x{last['ratio'] / first['ratio']:.2f}; 1.00 means the engine grows exactly as linearly as one pass over the hosts)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
