# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The test guest itself, under bare QEMU: its console protocol and its boot counter."""

from __future__ import annotations

import os
import subprocess

from harness import GUEST_IMAGE, TOP, Console, start_bare_qemu


def test_console_protocol():
    """tools/check-test-image boots both variants and checks every line of docs/test-guest.md."""
    proc = subprocess.run([os.path.join(TOP, "tools", "check-test-image")], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_boot_count_survives_a_hard_kill(tmp_path):
    """A VM killed right after its boot line (a host crash) keeps the new count on its disk."""
    disk = str(tmp_path / "disk")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", GUEST_IMAGE, disk], check=True)
    for count in (1, 2):
        log = str(tmp_path / (f"console-{count}.log"))
        proc = start_bare_qemu(disk, log)
        try:
            _i, boot = Console(log).wait("BOOT", timeout=120)
        finally:
            proc.kill()
            proc.wait()
        assert boot.startswith(f"count={count} "), boot
