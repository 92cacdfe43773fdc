# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""lab_down leaves nothing behind, also after an interrupted lab_up. Runs after test_lab.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from harness import TOP, VENV_BIN, ansible_env, run_playbook


def lab_footprint(name: str, state_dir: str, run_dir: str) -> dict:
    """Everything of a lab that the machine shows: namespaces, links, mounts, processes, folders."""
    netns = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split() if n.startswith(name + "-")]
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines()
        if line.split(":")[1].strip().startswith(name + "-")
    ]
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line.split()[4] for line in f if line.split()[4].startswith((state_dir, run_dir))]
    pids = []
    for n in netns:
        pids += subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True, check=False).stdout.split()
    folders = [p for p in (state_dir, run_dir) if os.path.exists(p)]
    return dict(netns=netns, links=links, mounts=mounts, pids=pids, folders=folders)


def test_lab_down_leaves_nothing(lab):
    before = lab_footprint(lab.name, lab.state_dir, lab.run_dir)
    assert len(before["netns"]) == 4 and before["pids"] and before["mounts"], before
    daemons = [int(p) for p in before["pids"]]
    check = run_playbook("lab_down.yml", lab.vars, check=True)
    assert check.rc == 0 and check.changed == 1
    assert lab_footprint(lab.name, lab.state_dir, lab.run_dir) == before, "check mode changed the lab"
    result = run_playbook("lab_down.yml", lab.vars)
    assert result.rc == 0 and result.changed == 1, result.stdout[-2000:]
    assert f"delete netns {lab.name}-node1" in result.stdout
    after = lab_footprint(lab.name, lab.state_dir, lab.run_dir)
    assert after == dict(netns=[], links=[], mounts=[], pids=[], folders=[]), after
    assert not [p for p in daemons if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat", encoding="ascii").read().split(")")[1][:3]]
    again = run_playbook("lab_down.yml", lab.vars)
    assert again.rc == 0 and again.changed == 0


def test_lab_down_after_an_interrupted_lab_up():
    vars_ = dict(
        lab_name="vchalf", lab_network="10.253.0.0/24", lab_state_dir="/var/lib/virtcloud-lab-vchalf", lab_run_dir="/run/virtcloud-lab-vchalf", lab_hosts=2
    )
    argv = [os.path.join(VENV_BIN, "ansible-playbook"), os.path.join(TOP, "playbooks", "lab_up.yml"), "-e", str(vars_).replace("'", '"')]
    proc = subprocess.Popen(argv, cwd=TOP, env=ansible_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # interrupt as soon as the first compute host has processes, before the lab is complete
        while time.monotonic() < deadline:
            fp = lab_footprint("vchalf", vars_["lab_state_dir"], vars_["lab_run_dir"])
            if "vchalf-node1" in fp["netns"] and fp["pids"]:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    half = lab_footprint("vchalf", vars_["lab_state_dir"], vars_["lab_run_dir"])
    assert (
        half["netns"] and "vchalf-node2" not in half["netns"] or not os.path.exists(os.path.join(vars_["lab_state_dir"], "hosts", "node2", "pids", "sshd.pid"))
    ), half
    result = run_playbook("lab_down.yml", vars_)
    assert result.rc == 0 and result.changed == 1, result.stdout[-2000:]
    assert lab_footprint("vchalf", vars_["lab_state_dir"], vars_["lab_run_dir"]) == dict(netns=[], links=[], mounts=[], pids=[], folders=[])
