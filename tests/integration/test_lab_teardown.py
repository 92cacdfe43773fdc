# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""lab_down leaves nothing behind, also after an interrupted lab_up, and never touches another lab.

Runs after test_lab.py. The second lab (conftest.LAB2) is given only its name, its network
and its size: its folders follow the name; lab_down is given only the name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import LAB2
from harness import NOTHING, TOP, VENV_BIN, ansible_env, lab_footprint, run_module, run_playbook


def lab_down_started(lab) -> subprocess.Popen:
    """A lab_down of the lab, given only its name, started (not waited for)."""
    argv = [os.path.join(VENV_BIN, "ansible-playbook"), os.path.join(TOP, "playbooks", "lab_down.yml"), "-e", json.dumps(dict(lab_name=lab.name))]
    return subprocess.Popen(argv, cwd=TOP, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def daemons(lab) -> dict:
    """The pid of each lab daemon (from its pid file) that runs."""
    found = {}
    for host in lab.spec.hosts:
        for daemon in host.daemons:
            try:
                with open(os.path.join(host.state_dir, "pids", f"{daemon}.pid"), encoding="ascii") as f:
                    pid = int(f.read())
            except (OSError, ValueError):
                continue
            if os.path.exists(f"/proc/{pid}"):
                found[f"{host.name}/{daemon}"] = pid
    return found


def assert_lab_works(lab, before: dict, before_daemons: dict) -> None:
    """Nothing of the lab is gone, its daemons are the same processes, every host answers over SSH
    and every libvirtd answers (SSH sessions come and go in the namespaces: processes are compared by daemon)."""
    now = lab_footprint(lab)
    assert {k: v for k, v in now.items() if k != "pids"} == {k: v for k, v in before.items() if k != "pids"}
    assert daemons(lab) == before_daemons
    pings = run_module(lab, "all", "ansible.builtin.ping", "")
    assert pings.ok() and len(pings.hosts) == lab.hosts + 1, pings
    for host in (h.name for h in lab.spec.hosts if h.role == "compute"):
        assert "Using library" in lab.ssh(host, "virsh version")


def test_two_labs_side_by_side_and_lab_down_of_one_leaves_the_other(lab):
    before, before_daemons = lab_footprint(lab), daemons(lab)
    assert len(before["netns"]) == 4 and len(before_daemons) == 10 and before["mounts"], (before, before_daemons)
    up = run_playbook("lab_up.yml", LAB2.vars)
    try:
        assert up.rc == 0, up.stdout[-3000:]
        assert "lab_state_dir" not in LAB2.vars and os.path.isdir(f"/var/lib/virtcloud-lab-{LAB2.name}") and os.path.isdir(f"/run/virtcloud-lab-{LAB2.name}")
        second = lab_footprint(LAB2)
        assert len(second["netns"]) == LAB2.hosts + 1 and second["pids"], second
        pings = run_module(LAB2, "all", "ansible.builtin.ping", "")
        assert pings.ok() and len(pings.hosts) == LAB2.hosts + 1, pings
        assert_lab_works(lab, before, before_daemons)
        # two lab_down runs of the second lab at once, given only its name: one removes it,
        # the other waits for it (the lab's lock), then finds nothing left to remove
        runs = [lab_down_started(LAB2), lab_down_started(LAB2)]
        outputs = [r.communicate(timeout=600)[0] for r in runs]
        assert [r.returncode for r in runs] == [0, 0], outputs
        changed = sorted(int(o.split("PLAY RECAP")[-1].split("changed=")[1].split()[0]) for o in outputs)
        assert changed == [0, 1], outputs
        quiet = next(o for o in outputs if "changed=0" in o.split("PLAY RECAP")[-1])
        assert f"lab {LAB2.name} is not up: /var/lib/virtcloud-lab-{LAB2.name} holds no record of it" in quiet, quiet
        assert "disk space" not in "".join(outputs)
        assert lab_footprint(LAB2) == NOTHING
        assert_lab_works(lab, before, before_daemons)
    finally:
        run_playbook("lab_down.yml", dict(lab_name=LAB2.name))


def test_lab_down_leaves_nothing(lab):
    before = lab_footprint(lab)
    assert len(before["netns"]) == 4 and before["pids"] and before["mounts"], before
    daemons = [int(p) for p in before["pids"]]
    check = run_playbook("lab_down.yml", dict(lab_name=lab.name), check=True)
    assert check.rc == 0 and check.changed == 1
    assert lab_footprint(lab) == before, "check mode changed the lab"
    result = run_playbook("lab_down.yml", dict(lab_name=lab.name))
    assert result.rc == 0 and result.changed == 1, result.stdout[-2000:]
    assert f"delete netns {lab.name}-node1" in result.stdout
    after = lab_footprint(lab)
    assert after == NOTHING, after
    assert not [p for p in daemons if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat", encoding="ascii").read().split(")")[1][:3]]
    again = run_playbook("lab_down.yml", dict(lab_name=lab.name))
    assert again.rc == 0 and again.changed == 0
    assert f"lab {lab.name} is not up" in again.stdout, again.stdout[-2000:]


def test_lab_down_after_an_interrupted_lab_up():
    argv = [os.path.join(VENV_BIN, "ansible-playbook"), os.path.join(TOP, "playbooks", "lab_up.yml"), "-e", json.dumps(LAB2.vars)]
    proc = subprocess.Popen(argv, cwd=TOP, env=ansible_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # interrupt as soon as the first compute host has processes, before the lab is complete
        while time.monotonic() < deadline:
            fp = lab_footprint(LAB2)
            if f"{LAB2.name}-node1" in fp["netns"] and fp["pids"]:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    half = lab_footprint(LAB2)
    assert (
        half["netns"] and f"{LAB2.name}-node2" not in half["netns"] or not os.path.exists(os.path.join(LAB2.state_dir, "hosts", "node2", "pids", "sshd.pid"))
    ), half
    result = run_playbook("lab_down.yml", dict(lab_name=LAB2.name))
    assert result.rc == 0 and result.changed == 1, result.stdout[-2000:]
    assert lab_footprint(LAB2) == NOTHING
