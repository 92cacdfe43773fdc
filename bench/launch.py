# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Launch figures: wall time to launch 1, 10 and 20 instances over 3 hosts of the lab, from
ansible-playbook's start to every guest's boot line, against a plain script doing the same
qemu-img and virsh steps on the same hosts (no scheduler, claim, port or config drive), each
host's steps at the same time as the other hosts' (one thread per host, as an operator's
script would), in the same run. Then the launch's facts play over 3 and over 8 lab hosts.

The bench brings up a lab of its own (by default `vclnch`, 10.247.0.0/24; set
VIRTCLOUD_BENCH_LAB and VIRTCLOUD_BENCH_LAB_NETWORK to use another name and network) with
8 compute hosts on shared storage, prepares it (compute_node.yml, image import of the test
image), launches once untimed to fill the image cache (its time is shown as the cold-cache
figure), then for each repetition launches 1, 10 and 20 instances on node1..node3 with
playbooks/launch.yml and with the plain script, alternating which goes first, removing the
guests after each run. The lab is removed at the end, also on failure or interrupt.

A watcher thread polls the instance folders during each run, so each figure comes with
phase hints: when the first and the last domain started (console.log appeared) and when
the last guest printed its BOOT line.

With --profile DIR (a folder holding ansible_collections/ansible/posix, for example
`pip install --no-deps --target DIR ansible`), the playbook runs with the profile_tasks
callback and the bench prints the slowest tasks of each launch.

Run as root: `.venv/bin/python bench/launch.py [--reps N] [--counts 1,10,20] [--profile DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))

from harness import GUEST_IMAGE, TOP, Console, named_lab, run_playbook  # noqa: E402  pylint: disable=wrong-import-position

LAB = named_lab(os.environ.get("VIRTCLOUD_BENCH_LAB", "vclnch"), os.environ.get("VIRTCLOUD_BENCH_LAB_NETWORK", "10.247.0.0/24"), hosts=8, non_shared=[])
HOSTS = ["node1", "node2", "node3"]  # the launches use these; the facts play also runs over all 8
ALL_HOSTS = [f"node{i}" for i in range(1, 9)]
COUNTS = (1, 10, 20)
BOOT_TIMEOUT = 600
PROFILE_RE = re.compile(r"^(.+?) -+ (\d+\.\d+)s$", re.M)


def lab_namespaces(lab=None) -> list[str]:
    """The network namespaces of LAB (default: this bench's lab) that are up."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith((lab or LAB).name + "-")]


def _panicked(log: str) -> bool:
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            return "Kernel panic" in f.read()
    except FileNotFoundError:
        return False


class Watcher(threading.Thread):
    """Polls the (shared) instances folder for new instance folders: when each one's
    console.log appeared (the domain started) and when it showed the BOOT line."""

    def __init__(self, expected: int, start: float):
        super().__init__(daemon=True)
        # every compute host of this lab shares one instances folder
        self.root = LAB.instances_dir(HOSTS[0])
        self.before = set(self._dirs())
        self.expected = expected
        self.start_time = start
        self.started: dict[str, float] = {}
        self.booted: dict[str, float] = {}
        self.panicked: list[str] = []
        self.stop_event = threading.Event()

    def _dirs(self) -> list[str]:
        try:
            return [d for d in os.listdir(self.root) if not d.startswith(("_", "."))]
        except FileNotFoundError:
            return []

    def run(self) -> None:
        while not self.stop_event.is_set():
            now = time.monotonic() - self.start_time
            for d in self._dirs():
                if d in self.before or d in self.booted:
                    continue
                log = os.path.join(self.root, d, "console.log")
                if d not in self.started and os.path.exists(log):
                    self.started[d] = now
                if d in self.started and any(kind == "BOOT" for kind, _text in Console(log).lines()):
                    self.booted[d] = now
                elif d in self.started and d not in self.panicked and _panicked(log):
                    self.panicked.append(d)
            if len(self.booted) >= self.expected or self.panicked:
                return
            time.sleep(0.2)

    def finish(self, timeout: float = BOOT_TIMEOUT) -> None:
        self.join(timeout)
        self.stop_event.set()
        if self.panicked:
            raise RuntimeError(f"guest {self.panicked[0]} panicked while booting (a starved TCG guest's timer check); no figure for this run")
        if len(self.booted) < self.expected:
            raise RuntimeError(f"only {len(self.booted)} of {self.expected} guests showed their BOOT line within {timeout}s (started: {sorted(self.started)})")

    def phases(self) -> dict:
        return dict(first_start=min(self.started.values()), last_start=max(self.started.values()), last_boot=max(self.booted.values()))


def profile_of(stdout: str, most: int = 8) -> list[tuple[str, float]]:
    """The slowest tasks of a run, from the profile_tasks callback's summary (empty without it)."""
    tail = stdout.split("PLAY RECAP")[-1]
    return [(name.strip(), float(secs)) for name, secs in PROFILE_RE.findall(tail)][:most]


def ansible_launch(name: str, count: int) -> dict:
    """launch.yml for COUNT instances; times from ansible-playbook's start to the last BOOT line."""
    start = time.monotonic()
    watcher = Watcher(count, start)
    watcher.start()
    result_file = os.path.join(LAB.run_dir, f"bench-{name}.json")
    result = run_playbook(
        "launch.yml", dict(launch_name=name, launch_count=count, launch_compute_hosts=HOSTS, launch_result_file=result_file), inventory=LAB.inventory
    )
    playbook = time.monotonic() - start
    if result.rc != 0:
        watcher.stop_event.set()
        raise RuntimeError(f"launch of {name} x{count} failed:\n{result.stdout[-3000:]}\n{result.stderr[-1000:]}")
    with open(result_file, encoding="utf-8") as f:
        launched = json.load(f)["launched"]
    os.unlink(result_file)
    if len(launched) != count:
        watcher.stop_event.set()
        raise RuntimeError(f"launch of {name} x{count} reported {len(launched)} instances:\n{result.stdout[-3000:]}")
    watcher.finish()
    total = time.monotonic() - start
    return dict(total=total, playbook=playbook, hosts=sorted(i["host"] for i in launched), profile=profile_of(result.stdout), **watcher.phases())


def plain_xml(name: str, d: str, bridge: str) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><features><acpi/></features>"
        "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
        f"<source file='{d}/disk'/><target dev='vda' bus='virtio'/></disk>"
        f"<interface type='bridge'><source bridge='{bridge}'/><model type='virtio'/></interface>"
        f"<serial type='pty'><log file='{d}/console.log' append='on'/><target port='0'/></serial>"
        "</devices></domain>"
    )


def plain_launch(count: int, base: str, base_format: str, bridge: str) -> dict:
    """qemu-img overlay + virsh define + virsh start per instance (one ssh each), round robin over
    the hosts; each host's instances one after another, the hosts at the same time (a thread each)."""
    start = time.monotonic()
    watcher = Watcher(count, start)
    watcher.start()
    errors: list[str] = []

    def one_host(host: str, n: int) -> None:
        for _i in range(n):
            name = f"plain-{uuid.uuid4().hex[:8]}"
            d = f"{LAB.instances_path}/{name}"
            try:
                LAB.ssh(
                    host,
                    f"mkdir -p {d} && qemu-img create -q -f qcow2 -F {base_format} -b {base} {d}/disk 1G"
                    f" && virsh -q define /dev/stdin >/dev/null && virsh -q start {name} >/dev/null",
                    data=plain_xml(name, d, bridge),
                )
            except AssertionError as exc:
                errors.append(str(exc))
                return

    threads = [threading.Thread(target=one_host, args=(host, len(range(i, count, len(HOSTS))))) for i, host in enumerate(HOSTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    scripted = time.monotonic() - start
    if errors:
        watcher.stop_event.set()
        raise RuntimeError("; ".join(errors))
    watcher.finish()
    total = time.monotonic() - start
    return dict(total=total, playbook=scripted, **watcher.phases())


def facts_play(hosts: list[str]) -> dict:
    """bench/facts.yml (the launch's facts play) over HOSTS: wall time of the playbook and of its facts task."""
    start = time.monotonic()
    result = run_playbook("../bench/facts.yml", dict(bench_hosts=hosts), inventory=LAB.inventory)
    total = time.monotonic() - start
    if result.rc != 0:
        raise RuntimeError(f"facts over {len(hosts)} hosts failed:\n{result.stdout[-3000:]}")
    task = dict(profile_of(result.stdout, 50)).get("virtcloud.compute.launch : Gather the host's facts")
    return dict(total=total, task=task)


def clean_all() -> None:
    """Remove every guest of the lab (domains and instance folders). The DHCP reservations of the
    launched instances are left (a few dozen of the /24; lab_down removes them with the lab)."""
    for host in HOSTS:
        LAB.ssh(
            host,
            "for d in $(virsh list --all --name); do virsh -q destroy $d >/dev/null 2>&1; virsh -q undefine $d --managed-save >/dev/null; done",
            timeout=300,
        )
    LAB.ssh(
        HOSTS[0],
        f"cd {LAB.instances_path} && rm -rf -- $(ls | grep -E "
        "'^(plain-[0-9a-f]{8}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$')",
    )


def run_checked(playbook: str, extra: dict | None = None, inventory: str | None = None) -> float:
    start = time.monotonic()
    result = run_playbook(playbook, extra, inventory=inventory)
    if result.rc != 0:
        raise RuntimeError(f"{playbook} failed:\n{result.stdout[-3000:]}\n{result.stderr[-1000:]}")
    return time.monotonic() - start


def fmt_run(r: dict) -> str:
    return (
        f"{r['total']:6.1f} s (steps done {r['playbook']:5.1f}, 1st domain up {r['first_start']:5.1f}, "
        f"last up {r['last_start']:5.1f}, last BOOT {r['last_boot']:5.1f})"
    )


def bench(reps: int, counts: tuple = COUNTS) -> tuple[dict, dict]:
    setup = {}
    setup["lab_up"] = run_checked("lab_up.yml", LAB.vars)
    setup["compute_node"] = run_checked("compute_node.yml", inventory=LAB.inventory)
    setup["image_import"] = run_checked("image_import.yml", dict(image_name="vctest", image_src=GUEST_IMAGE), inventory=LAB.inventory)
    # untimed warm-up: fills the (shared) image cache, as a later launch of the same image finds it
    warm = ansible_launch("warmup", 1)
    setup["cold_launch"] = warm
    print(f"setup: lab_up {setup['lab_up']:.1f} s, compute_node {setup['compute_node']:.1f} s, image_import {setup['image_import']:.1f} s", flush=True)
    print(f"  warm-up launch x1 (cold image cache): {fmt_run(warm)}", flush=True)
    base_info = LAB.ssh(
        "node1",
        f"cd {LAB.instances_path}/_base && for f in $(ls | grep -E '^[0-9a-f]{{40}}$'); do echo $PWD/$f;"
        " qemu-img info -U --output=json $PWD/$f | grep '\"format\"'; done",
    )
    lines = base_info.split("\n")
    base = lines[0].strip()
    base_format = re.search(r'"format": "(\w+)"', base_info).group(1)
    bridge = re.search(r"<source bridge='([^']+)'", LAB.ssh(warm["hosts"][0], "virsh dumpxml $(virsh list --name | head -1)")).group(1)
    print(f"  plain script uses base {base} ({base_format}) and bridge {bridge}", flush=True)
    clean_all()
    runs: dict = {(kind, n): [] for kind in ("ansible", "plain") for n in counts}
    for rep in range(reps):
        for count in counts:
            order = ("ansible", "plain") if rep % 2 == 0 else ("plain", "ansible")
            for kind in order:
                try:
                    r = ansible_launch(f"b{count}-{rep}", count) if kind == "ansible" else plain_launch(count, base, base_format, bridge)
                except RuntimeError as exc:  # a run without a figure; the bench goes on
                    print(f"  rep {rep + 1}  {kind:<7} x{count:<2} FAILED: {str(exc)[:300]}", flush=True)
                    clean_all()
                    continue
                runs[(kind, count)].append(r)
                print(f"  rep {rep + 1}  {kind:<7} x{count:<2} {fmt_run(r)}", flush=True)
                clean_all()
    facts = {n: [] for n in (3, 8)}
    for _rep in range(max(reps, 3)):
        for n in (3, 8):
            facts[n].append(facts_play(ALL_HOSTS[:n]))
    runs["facts"] = facts
    return setup, runs


def start_bench(lab, profile: str | None, lab_may_be_up: bool = False) -> None:
    """What every lab bench does first: profile_tasks with --profile, root, its lab not up already, the image, signals."""
    if profile:
        os.environ["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([os.path.join(TOP, ".collections"), profile])
        os.environ["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
        os.environ["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "50"
    if os.geteuid() != 0:
        sys.exit("run as root")
    if lab_namespaces(lab) and not lab_may_be_up:
        sys.exit(
            f"lab {lab.name} is already up ({' '.join(lab_namespaces(lab))}): another bench may be using it; if it is stale, remove it with "
            f"ansible-playbook playbooks/lab_down.yml -e '{json.dumps(lab.vars)}'"
        )
    if not os.path.exists(GUEST_IMAGE):
        subprocess.run([os.path.join(TOP, "tools", "build-test-image")], check=True)
    # SIGTERM/SIGHUP as SystemExit, so that the caller's finally removes the lab
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(f"stopped by signal {signum}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1, help="repetitions of each launch measurement (default 1; the facts play runs at least 3 times)")
    parser.add_argument(
        "--counts", default=",".join(map(str, COUNTS)), help=f"the launch sizes to measure, comma separated (default {','.join(map(str, COUNTS))})"
    )
    parser.add_argument("--profile", metavar="DIR", help="a folder with ansible_collections/ansible/posix: run with its profile_tasks callback")
    args = parser.parse_args()
    try:
        counts = tuple(int(c) for c in args.counts.split(","))
    except ValueError:
        sys.exit(f"--counts {args.counts!r}: give whole numbers separated by commas, for example 1,10")
    start_bench(LAB, args.profile)
    started = time.monotonic()
    try:
        setup, runs = bench(args.reps, counts)
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        down = run_playbook("lab_down.yml", LAB.vars)
        left = lab_namespaces()
        print(
            f"lab_down rc={down.rc}; {LAB.name} namespaces left: {' '.join(left) or 'none'}; "
            f"state dir {'LEFT' if os.path.exists(LAB.state_dir) else 'removed'}",
            flush=True,
        )
    facts = runs.pop("facts")
    med = {key: statistics.median(r["total"] for r in rs) for key, rs in runs.items() if rs}
    print()
    print(
        f"launch figures (lab: launches on 3 of its 8 compute hosts, shared storage, TCG guests of 256 MiB, {os.cpu_count()} cores, "
        f"{args.reps} repetitions, whole bench {time.monotonic() - started:.0f} s)"
    )
    print("  instances  ansible-playbook (median)  plain qemu-img+virsh (median)  ratio   (each run: ansible / plain)")
    for n in [n for n in counts if ("ansible", n) in med and ("plain", n) in med]:
        each = ", ".join(f"{a['total']:.1f}/{p['total']:.1f}" for a, p in zip(runs[("ansible", n)], runs[("plain", n)]))
        ratio = med[("ansible", n)] / med[("plain", n)]
        print(f"  {n:9d}  {med[('ansible', n)]:24.1f} s  {med[('plain', n)]:28.1f} s  {ratio:5.2f}   ({each})")
    print()
    print("  phases, medians in s from the start     steps done  1st domain up  last domain up  last BOOT")
    for n in [n for n in counts if ("ansible", n) in med and ("plain", n) in med]:
        for kind, label in (("ansible", "ansible-playbook"), ("plain", "plain script")):
            rs = runs[(kind, n)]
            print(
                f"  x{n:<2} {label:<34} "
                + "  ".join(
                    f"{statistics.median(r[k] for r in rs):{w}.1f}" for k, w in (("playbook", 10), ("first_start", 13), ("last_start", 14), ("last_boot", 9))
                )
            )
    cold = setup["cold_launch"]
    print(
        f"  cold image cache, ansible x1 (warm-up): {cold['total']:.1f} s; setup: lab_up {setup['lab_up']:.1f} s, compute_node {setup['compute_node']:.1f} s, "
        f"image_import {setup['image_import']:.1f} s"
    )
    for n in [n for n in counts if n > 1 and runs[("ansible", n)]]:
        print(f"  ansible x{n} placement (last rep): " + ", ".join(f"{h}={runs[('ansible', n)][-1]['hosts'].count(h)}" for h in HOSTS))
    f3, f8 = (statistics.median(r["total"] for r in facts[n]) for n in (3, 8))
    print()
    print(f"  facts play (bench/facts.yml, {len(facts[3])} runs each, median wall time): 3 hosts {f3:.2f} s, 8 hosts {f8:.2f} s, ratio {f8 / f3:.2f}")
    if facts[3][0]["task"] is not None:
        t3, t8 = (statistics.median(r["task"] for r in facts[n]) for n in (3, 8))
        print(f"    the facts task alone (profile_tasks): 3 hosts {t3:.2f} s, 8 hosts {t8:.2f} s, ratio {t8 / t3:.2f}")
    for n in counts:
        profile = runs[("ansible", n)][-1].get("profile") if runs[("ansible", n)] else None
        if profile:
            print(f"  slowest tasks, ansible x{n} (profile_tasks, last rep): " + "; ".join(f"{name} {secs:.2f}s" for name, secs in profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
