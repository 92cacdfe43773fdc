# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one lock and the one atomic write (_files), the patterns (_validate), the instance lock (_record)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils import _files as fi
from ansible_collections.virtcloud.compute.plugins.module_utils import _record as rec
from ansible_collections.virtcloud.compute.plugins.module_utils import _validate as va
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError

UUID = "3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b"
HOLDER = "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)"
HOLDER_WITH_PID = (
    "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
    "os.write(fd, b'%d\\n' % os.getpid()); print('held', flush=True); time.sleep(30)"
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_a_lock_timeout_raises_the_collections_error(tmp_path):
    path = str(tmp_path / ".lock")
    clock = Clock()
    with fi.file_lock(path, 5, "the thing"):
        with pytest.raises(fi.LockTimeout, match=r"the thing is busy: another run holds the lock .*\.lock for more than 2 s") as info:
            with fi.file_lock(path, 2, "the thing", clock=clock, sleep=clock.sleep):
                pass
    assert isinstance(info.value, VirtcloudError)
    assert 1002 <= clock.now < 1003  # waited for the timeout, not longer


def test_a_backend_gets_its_own_error_from_the_lock(tmp_path):
    class StoreError(VirtcloudError):
        pass

    path = str(tmp_path / ".lock")
    with fi.file_lock(path, 5):
        with pytest.raises(StoreError, match="busy"):
            with fi.file_lock(path, 0, error=StoreError):
                pass


def test_two_holders_exclude_each_other_in_one_process(tmp_path):
    path = str(tmp_path / ".lock")
    inside, order = threading.Lock(), []

    def hold(name):
        with fi.file_lock(path, 10):
            assert inside.acquire(blocking=False), "two holders at once"
            order.append(name)
            time.sleep(0.2)
            inside.release()

    threads = [threading.Thread(target=hold, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(order) == ["a", "b", "c"]


def test_a_holder_in_another_process_excludes_and_its_end_releases(tmp_path):
    path = str(tmp_path / ".lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER,
            path,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(fi.LockTimeout):
            with fi.file_lock(path, 0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    with fi.file_lock(path, 2):
        pass


def test_the_instance_lock_lives_in_the_instances_folder(tmp_path):
    instances = str(tmp_path / "instances")
    os.makedirs(instances)
    assert rec.instance_lock_path(instances, UUID.upper()) == f"{instances}/.locks/{UUID}.lock"
    with rec.instance_lock(instances, UUID, 5):
        assert os.path.exists(f"{instances}/.locks/{UUID}.lock")
        with pytest.raises(rec.RecordError, match=f"instance {UUID} is busy"):
            with rec.instance_lock(instances, UUID, 0):
                pass
    with rec.instance_lock(instances, UUID, 0):
        pass


def test_atomic_write_skips_same_content_and_mode_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "f.json")
    assert fi.write_json(path, {"b": 1, "a": [1]})
    assert open(path, encoding="utf-8").read() == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}\n'
    assert not fi.write_json(path, {"a": [1], "b": 1})
    assert fi.atomic_write(path, "x", 0o600) and oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert fi.atomic_write(path, "x", 0o640)  # the mode changed
    assert os.listdir(tmp_path) == ["f.json"]


@pytest.mark.parametrize(
    "value, any_case, expected",
    [
        (UUID, False, True),
        (UUID.upper(), False, False),
        (UUID.upper(), True, True),
        (UUID + "\n", True, False),
        (UUID + "0", False, False),
        (" " + UUID, False, False),
        (None, False, False),
        (12, True, False),
    ],
)
def test_one_uuid_pattern_fully_matched(value, any_case, expected):
    assert va.is_uuid(value, any_case=any_case) is expected


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (va.is_request_id, f"req-{UUID}", [f"req-{UUID}\n", f"req-{UUID.upper()}", UUID]),
        (va.is_instance_name, "web-1.a_b", ["-web", "a..b", "x" * 64, "web\n", ""]),
        (va.is_simple_name, "m1.tiny", ["x" * 65, "a..b", "a b", "net\n"]),
        (va.is_host_name, "node1.lab", ["x" * 254, "a..b", "node1\n", ".node"]),
    ],
)
def test_name_patterns_fully_matched(check, good, bad):
    assert check(good)
    for value in bad:
        assert not check(value), value


def test_a_holder_that_records_its_pid_is_named_by_a_run_that_times_out(tmp_path):
    path = str(tmp_path / "lab.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_WITH_PID, path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(fi.LockTimeout) as info:
            with fi.file_lock(path, 0.3, "lab vcx", holder=True):
                pass
        assert str(info.value).startswith(f"lab vcx is being changed by another run (pid {holder.pid}): wait for it to finish, then try again")
    finally:
        holder.kill()
        holder.wait()
    with fi.file_lock(path, 2, holder=True):
        with open(path, encoding="ascii") as f:
            assert f.read() == f"{os.getpid()}\n"  # the new holder's pid replaced the old one's
