# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers of the lab tests: run playbooks, reach lab hosts, read guest consoles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, ".collections"))

from ansible_collections.virtcloud.compute.plugins.module_utils._lab import plan  # noqa: E402  pylint: disable=wrong-import-position

VENV_BIN = os.path.join(TOP, ".venv", "bin")
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
GUEST_IMAGE = os.path.join(TOP, "build", "guest", "vctest.qcow2")
RESCUE_IMAGE = os.path.join(TOP, "build", "guest", "vctest-rescue.qcow2")


@dataclass
class PlaybookResult:
    rc: int
    stdout: str
    stderr: str
    recap: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # the workflow's result file (launch_result_file), when it wrote one
    stats: dict = field(default_factory=dict)  # the run's set_stats data (per run)

    @property
    def changed(self) -> int:
        return sum(r["changed"] for r in self.recap.values())

    @property
    def failed(self) -> int:
        return sum(r["failed"] + r["unreachable"] for r in self.recap.values())


def parse_recap(stdout: str) -> dict:
    """PLAY RECAP lines -> {host: {ok, changed, unreachable, failed}}."""
    recap = {}
    for host, ok, changed, unreachable, failed in RECAP_RE.findall(stdout.split("PLAY RECAP")[-1]):
        recap[host] = dict(ok=int(ok), changed=int(changed), unreachable=int(unreachable), failed=int(failed))
    return recap


STATS_RE = re.compile(r"^\tRUN: (\{.*\})$", re.M)


def parse_stats(stdout: str) -> dict:
    """The set_stats data of a run (the default callback's CUSTOM STATS line with ANSIBLE_SHOW_CUSTOM_STATS)."""
    found = STATS_RE.findall(stdout.split("CUSTOM STATS")[-1]) if "CUSTOM STATS" in stdout else []
    return json.loads(found[-1]) if found else {}


def ansible_env() -> dict:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        PATH=VENV_BIN + os.pathsep + env.get("PATH", ""),
        ANSIBLE_DEPRECATION_WARNINGS="0",
        ANSIBLE_SHOW_CUSTOM_STATS="1",
    )
    return env


def run_playbook(
    playbook: str, extra_vars: dict | None = None, inventory: str | None = None, check: bool = False, timeout: int = 900, diff: bool = False
) -> PlaybookResult:
    """Run ansible-playbook from the checkout; returns rc, output and the parsed recap."""
    argv = [os.path.join(VENV_BIN, "ansible-playbook"), os.path.join(TOP, "playbooks", playbook)]
    if inventory:
        argv += ["-i", inventory]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=TOP, env=ansible_env(), timeout=timeout, check=False)
    return PlaybookResult(proc.returncode, proc.stdout, proc.stderr, parse_recap(proc.stdout), stats=parse_stats(proc.stdout))


STATUS_RE = re.compile(r"^(\S+) \| (SUCCESS|CHANGED|FAILED!|UNREACHABLE!)(?= )", re.M)


@dataclass
class HostResult:
    """One host's result of a module run: its status line and the module's JSON."""

    status: str
    result: dict
    stdout: str = ""  # the whole output of the run (with --diff, the diff)

    @property
    def ok(self) -> bool:
        return self.status in ("SUCCESS", "CHANGED")

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed"))

    @property
    def msg(self) -> str:
        return self.result.get("msg", "")

    def __repr__(self):
        return f"{self.status} {json.dumps({k: v for k, v in self.result.items() if k != 'instance'})[:1500]}"


@dataclass
class ModuleRun:
    """A module run on one or more hosts: rc, output, and each host's JSON result."""

    rc: int
    stdout: str
    stderr: str
    hosts: dict = field(default_factory=dict)

    @property
    def results(self) -> dict:
        """{host: module result}, with "_status" (the status line) and "failed" added."""
        return {h: dict(r.result, _status=r.status, failed=not r.ok) for h, r in self.hosts.items()}

    def one(self, host: str) -> HostResult:
        assert host in self.hosts, f"no result for {host}:\n{self.stdout[-2000:]}\n{self.stderr[-2000:]}"
        return self.hosts[host]

    def ok(self) -> bool:
        return self.rc == 0 and bool(self.hosts) and all(r.ok for r in self.hosts.values())

    def changed(self) -> dict:
        return {h: r.changed for h, r in self.hosts.items()}

    def __repr__(self):
        return f"rc={self.rc}\n{self.stdout[-4000:]}\n{self.stderr[-2000:]}"


def run_module(
    lab,
    pattern: str,
    module: str,
    args: dict | str,
    check: bool = False,
    diff: bool = False,
    extra_vars: dict | None = None,
    timeout: int = 300,
) -> ModuleRun:
    """Run a module (virtcloud.compute.MODULE unless MODULE has a dot) ad hoc on the lab hosts PATTERN over SSH.

    The one way the lab tests call a module: each host's JSON result comes from ansible's --tree files, its
    status from its status line; a Python traceback in any result fails the test at once.
    """
    name = module if "." in module else f"virtcloud.compute.{module}"
    with tempfile.TemporaryDirectory(prefix="vc-module-") as tree:
        argv = [os.path.join(VENV_BIN, "ansible"), "-i", lab.inventory, pattern, "-m", name, "--tree", tree]
        argv += ["-a", args if isinstance(args, str) else json.dumps(args)]
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=TOP, env=ansible_env(), timeout=timeout, check=False)
        found = {}
        for host in os.listdir(tree):
            with open(os.path.join(tree, host), encoding="utf-8") as f:
                found[host] = json.load(f)
    run = ModuleRun(proc.returncode, proc.stdout, proc.stderr)
    for host, status in STATUS_RE.findall(proc.stdout):
        if host in found:
            run.hosts[host] = HostResult(status, found[host], proc.stdout)
    assert "Traceback" not in proc.stdout + proc.stderr + json.dumps(found), proc.stdout[-3000:] + proc.stderr[-2000:]
    return run


class LabHandle:
    """A lab as the tests see it: the lab module's own plan, plus ways to reach its hosts.

    Left out, the network and the folders are the ones the lab module derives from the name,
    and the playbooks are given only the name (and the network, when given).
    """

    def __init__(self, name: str, network: str | None, hosts: int, non_shared: list, state_dir: str | None = None, run_dir: str | None = None):
        self.spec = plan(name, network, hosts, non_shared, state_dir, run_dir)
        self.non_shared = non_shared
        self.name = name
        self.hosts = hosts
        self.network = str(self.spec.network)
        self.state_dir = self.spec.state_dir
        self.run_dir = self.spec.run_dir
        self.instances_path = self.spec.instances_path
        self.ssh_config = self.spec.ssh_config
        self.ssh_wrapper = self.spec.ssh_wrapper
        self.inventory = self.spec.inventory
        self.vars = dict(lab_name=name, lab_hosts=hosts, lab_non_shared=non_shared)
        for key, value in (("lab_network", network), ("lab_state_dir", state_dir), ("lab_run_dir", run_dir)):
            if value:
                self.vars[key] = value

    def address(self, host: str) -> str:
        return next(h.address for h in self.spec.hosts if h.name == host)

    def ssh(self, host: str, command: str, check: bool = True, timeout: int = 120, data: str | None = None) -> str:
        proc = subprocess.run(["ssh", "-F", self.ssh_config, host, command], capture_output=True, text=True, timeout=timeout, input=data, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"on {host}: {command} failed (rc={proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def uri(self, host: str) -> str:
        return f"qemu+ssh://{host}/system?command={self.ssh_wrapper}"

    def instances_dir(self, host: str) -> str:
        """The host's instances directory as seen from the machine running the tests."""
        spec = next(h for h in self.spec.hosts if h.name == host)
        return self.spec.shared_instances if spec.shared_storage else os.path.join(spec.state_dir, "instances")


def named_lab(name: str, network: str | None, hosts: int, non_shared: list) -> LabHandle:
    """A lab by name: its folders (/var/lib/virtcloud-lab-<name>, /run/virtcloud-lab-<name>) follow the name."""
    return LabHandle(name=name, network=network, hosts=hosts, non_shared=non_shared)


def lab_footprint(lab) -> dict:
    """Everything of a lab that the machine shows: namespaces, links, mounts, processes, folders."""
    name, state_dir, run_dir = lab.name, lab.state_dir, lab.run_dir
    netns = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split() if n.startswith(name + "-")]
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines()
        if line.split(":")[1].strip().startswith(name + "-")
    ]
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [m for m in (line.split()[4] for line in f) if any(m == d or m.startswith(d + "/") for d in (state_dir, run_dir))]
    pids = []
    for n in netns:
        pids += subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True, check=False).stdout.split()
    folders = [p for p in (state_dir, run_dir) if os.path.exists(p)]
    return dict(netns=netns, links=links, mounts=mounts, pids=sorted(pids), folders=folders)


NOTHING = dict(netns=[], links=[], mounts=[], pids=[], folders=[])


class Console:
    """The serial console log of a test guest (the protocol in docs/test-guest.md)."""

    LINE_RE = re.compile(r"^VCGUEST (\S+) ?(.*)$")

    def __init__(self, path: str):
        self.path = path

    def lines(self) -> list[tuple[str, str]]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        out = []
        for raw in text.replace("\r", "").split("\n"):
            m = self.LINE_RE.match(raw.strip())
            if m:
                out.append((m.group(1), m.group(2)))
        return out

    def wait(self, kind: str, timeout: float = 60, after: int = 0, pattern: str | None = None) -> tuple[int, str]:
        """Wait for the first line of KIND (matching PATTERN) past index AFTER; returns (index, text)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern) if pattern else None
        while True:
            for i, (k, text) in enumerate(self.lines()):
                if i >= after and k == kind and (rx is None or rx.search(text)):
                    return i, text
            if time.monotonic() > deadline:
                tail = "\n".join("{} {}".format(*kv) for kv in self.lines()[-8:])
                raise AssertionError(f"no VCGUEST {kind} line in {self.path} within {timeout}s; last lines:\n{tail}")
            time.sleep(0.25)

    def ticks(self) -> list[int]:
        return [int(text) for kind, text in self.lines() if kind == "TICK" and text.isdigit()]


def domain_xml(name: str, disk: str, console_log: str, network: str, memory_mb: int = 256, disks: tuple = ()) -> str:
    """A minimal domain for the test guest: boots its virtio disk under SeaBIOS, serial log, ACPI."""
    extra = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}' cache='none'/><source file='{path}'/><target dev='{dev}' bus='virtio'/></disk>"
        for path, fmt, dev in disks
    )
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>{memory_mb}</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><features><acpi/></features>"
        "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>{extra}"
        f"<interface type='network'><source network='{network}'/><model type='virtio'/></interface>"
        f"<serial type='pty'><log file='{console_log}' append='on'/><target port='0'/></serial>"
        "</devices></domain>"
    )


def start_bare_qemu(disk: str, console_log: str) -> subprocess.Popen:
    """The test guest under a bare qemu-system-x86_64 (TCG, no libvirt, no NIC), its serial to a file."""
    return subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
            "-serial",
            f"file:{console_log}",
            "-drive",
            f"file={disk},if=virtio,format=qcow2,cache=none",
        ]
    )


# --------------------------------------------------------------------------- the cloud workflows


def launch(lab, **extra) -> PlaybookResult:
    """playbooks/launch.yml; its result file (request_id, launched, existing, failed) in ``.data``."""
    with tempfile.TemporaryDirectory(prefix="vc-launch-") as tmp:
        path = os.path.join(tmp, "result.json")
        result = run_playbook("launch.yml", dict(extra, launch_result_file=path), inventory=lab.inventory)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                result.data = json.load(f)
    return result


def launched(result) -> list:
    """The instances a launch made, from its result file."""
    assert "launched" in result.data, result.stdout[-3000:]
    return result.data["launched"]


def act(lab, name, action, check=False, **extra) -> PlaybookResult:
    """playbooks/instance.yml: an action on an instance wherever it runs."""
    extra = {"instance_" + key: value for key, value in extra.items()}
    return run_playbook("instance.yml", dict(extra, instance=name, instance_action=action), inventory=lab.inventory, check=check)


def delete(lab, name) -> None:
    result = act(lab, name, "delete")
    assert result.rc == 0, result.stdout[-3000:]


def console(lab, inst) -> Console:
    return Console(os.path.join(lab.instances_dir(inst["host"]), inst["uuid"], "console.log"))
