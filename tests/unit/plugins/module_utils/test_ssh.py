# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SSH and scp towards another host: what may reach the command line (moved from test_image_store.py)."""

from __future__ import annotations

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils._ssh import ScpRemote, SshError, check_host

SNAP = "/var/lib/virtcloud/snapshots/web1.qcow2"


@pytest.mark.parametrize(
    "paths, dest, message",
    [
        (["/snap/a b.qcow2"], "/d/image", "remote path"),
        (["/snap/*"], "/d/image", "remote path"),
        (["relative"], "/d/image", "remote path"),
        ([SNAP], "relative", "destination"),
    ],
)
def test_scp_argv_refuses_unsafe_paths(paths, dest, message):
    with pytest.raises(SshError, match=message):
        ScpRemote("node1").argv(paths, dest)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(host="-oProxyCommand=x"), "src_host"),
        (dict(host="a b"), "src_host"),
        (dict(host="ok", user="-x"), "src_user"),
        (dict(host="ok", port=70000), "src_port"),
        (dict(host="ok", ssh_key="relative"), "ssh_key"),
        (dict(host="ok", known_hosts="/a/../b"), "known_hosts"),
        (dict(host="ok", connect_timeout=0), "connect_timeout"),
    ],
)
def test_remote_validates_what_reaches_the_command_line(kwargs, message):
    with pytest.raises(SshError, match=message):
        ScpRemote(option="src", **kwargs)


def test_hosts_and_addresses():
    assert check_host("node1.example.org") == "node1.example.org"
    assert check_host("fd00::11") == "fd00::11"
    assert ScpRemote("fd00::11", user="nova").target() == "nova@[fd00::11]"
    with pytest.raises(SshError, match="is not a host name"):
        check_host("node1;reboot")


def test_missing_key_files_are_named(tmp_path):
    with pytest.raises(SshError, match=f"ssh_key {tmp_path}/nokey is not a readable file"):
        ScpRemote("node1", ssh_key=str(tmp_path / "nokey")).check_files()
