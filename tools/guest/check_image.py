"""Boot the test guest images with plain QEMU (TCG, no libvirt) and check the
console protocol of docs/test-guest.md.

  tools/check-test-image [--dir build/guest] [--keep] [-v]

Runs, each on temporary qcow2 overlays so the built images stay pristine:

  1. normal image + config drive (vfat, label config-2) + virtio NIC (QEMU
     user networking, DHCP): BOOT count=1, DISKS vda vdb, METADATA equal to
     what was written, USERDATA, HOSTNAME, IP, READY, increasing TICKs; then
     ACPI power button over QMP: SHUTDOWN and QEMU exits within 5 s.
  2. the same overlay again, no config drive, NIC link down: BOOT count=2,
     METADATA none, IP none after ~20 s, then READY; link up: a late IP line;
     hot-plug of a virtio disk shows a new DISKS line, hot-unplug removes it;
     power button again.
  3. rescue image as vda + the used normal overlay as vdb:
     BOOT variant=rescue, RESCUE disk=vdb bootcount=2; power button.
  4. the normal overlay afterwards: bootcount 2, FAT clean (fsck.fat -n).
  5. only when genisoimage is on PATH: a fresh normal overlay with an ISO 9660
     config drive (made as Nova makes it) on an IDE cdrom: METADATA equal.

Prints the timings (QEMU start -> BOOT line, -> READY, power button -> exit)
and exits non-zero on any failure.  Python 3 standard library only.
"""

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 90  # s, QEMU start -> READY (TCG on a busy machine)
POWEROFF_LIMIT = 5  # s, power button -> QEMU exited
MAC = "52:54:00:7c:7e:01"

METADATA = {
    "uuid": "8c4a3f2e-1b7d-4e55-9a0c-5f3b2d1e0a77",
    "name": "vctest-check",
    "hostname": "vctest-check",
    "availability_zone": "nova",
    "launch_index": 0,
    "meta": {"role": "check", "purpose": "console protocol"},
    "public_keys": {},
    "project_id": "5a1d0c3e9b8f4a7d8e6c2b1a0f9e8d7c",
}
USERDATA = "#!/bin/sh\necho hello from user data\n"


class CheckError(Exception):
    pass


VERBOSE = False


def log(msg):
    print(f"check-test-image: {msg}", flush=True)


def run(cmd, **kw):
    res = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, **kw)
    if res.returncode != 0:
        raise CheckError(f"command failed (rc={res.returncode}): {' '.join(map(str, cmd))}\n{res.stdout.strip()}")
    return res.stdout


class Guest:
    """One QEMU process; serial console on a pipe, QMP on a unix socket."""

    def __init__(self, tmp, name, drives, nic=True, extra=(), link_down=False):
        self.name = name
        self.qmp_path = str(tmp / f"{name}.qmp")
        self.log_path = tmp / f"{name}.console.log"
        self.lines = []  # (seconds since start, text)
        self.cond = threading.Condition()
        cmd = [
            QEMU,
            "-accel",
            "tcg",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
            "-chardev",
            "stdio,id=ser0,signal=off",
            "-serial",
            "chardev:ser0",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        for path in drives:
            cmd += ["-drive", f"file={path},if=virtio,format=qcow2"]
        cmd += list(extra)
        if nic:
            cmd += ["-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={MAC},id=nic0"]
        if link_down:
            cmd += ["-S"]  # start paused, cut the link, then run
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log(f"[{name}] qemu pid {self.proc.pid}")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if link_down:
            self.qmp(("set_link", {"name": "nic0", "up": False}), ("cont", None))

    def _read(self):
        buf = b""
        with open(self.log_path, "wb") as logf:
            while True:
                chunk = self.proc.stdout.read1(4096)
                if not chunk:
                    break
                logf.write(chunk)
                logf.flush()
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    text = raw.decode("utf-8", "replace").rstrip("\r")
                    with self.cond:
                        self.lines.append((time.monotonic() - self.t0, text))
                        self.cond.notify_all()
                    if VERBOSE:
                        print(f"    [{self.name} {time.monotonic() - self.t0:6.2f}] {text}", flush=True)
        with self.cond:
            self.cond.notify_all()

    def proto(self):
        """Protocol lines so far: (t, 'KIND rest')."""
        with self.cond:
            return [(t, l[len("VCGUEST ") :]) for t, l in self.lines if l.startswith("VCGUEST ")]

    def wait_for(self, pattern, timeout, after=0):
        """First protocol line (index >= after) matching the regex; (index, t, match)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for i, (t, l) in enumerate(self.proto()):
                if i >= after:
                    m = rx.fullmatch(l)
                    if m:
                        return i, t, m
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise CheckError(f"[{self.name}] no line 'VCGUEST {pattern}' within {timeout} s" + (" (qemu exited)" if self.proc.poll() is not None else ""))
            with self.cond:
                self.cond.wait(min(left, 0.2))

    def qmp(self, *commands):
        """Run QMP commands (name, args) in one session; return their results."""
        deadline = time.monotonic() + 10
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.qmp_path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise CheckError(f"[{self.name}] cannot connect to QMP at {self.qmp_path}")
                time.sleep(0.1)
        f = s.makefile("rwb")

        def send(cmd, args=None):
            msg = {"execute": cmd}
            if args:
                msg["arguments"] = args
            f.write(json.dumps(msg).encode() + b"\n")
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    raise CheckError(f"[{self.name}] QMP closed during {cmd}")
                rep = json.loads(line)
                if "return" in rep:
                    return rep["return"]
                if "error" in rep:
                    raise CheckError(f"[{self.name}] QMP {cmd}: {rep['error']}")

        try:
            json.loads(f.readline())  # greeting
            send("qmp_capabilities")
            return [send(c, a) for c, a in commands]
        finally:
            f.close()
            s.close()

    def power_button(self):
        """ACPI power button; return seconds until QEMU exited."""
        t = time.monotonic()
        self.qmp(("system_powerdown", None))
        try:
            rc = self.proc.wait(timeout=POWEROFF_LIMIT)
        except subprocess.TimeoutExpired:
            raise CheckError(f"[{self.name}] QEMU still running {POWEROFF_LIMIT} s after system_powerdown") from None
        dt = time.monotonic() - t
        self.reader.join(5)
        if rc != 0:
            raise CheckError(f"[{self.name}] QEMU exited with {rc}")
        return dt

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its pid
            self.proc.wait()
        self.reader.join(5)

    def tail(self, n=40):
        with self.cond:
            return "\n".join(f"  {t:6.2f} {l}" for t, l in self.lines[-n:])


def expect(cond, msg):
    if not cond:
        raise CheckError(msg)


def check_ticks(g, upto):
    g.wait_for(rf"TICK {upto}", 15 + upto)[1]
    ticks = [(t, int(l.split()[1])) for t, l in g.proto() if l.startswith("TICK ")]
    nums = [n for _i, n in ticks]
    expect(nums[:upto] == list(range(1, upto + 1)), f"[{g.name}] TICK lines not 1..{upto} in order: {nums}")
    span = ticks[upto - 1][0] - ticks[0][0]
    expect(upto - 1 - 0.5 <= span <= (upto - 1) * 2 + 1, f"[{g.name}] {upto} ticks took {span:.1f} s")
    return span / max(upto - 1, 1)


def make_config_drive(tmp):
    raw = tmp / "config.raw"
    with open(raw, "wb") as f:
        f.truncate(4 * 1024 * 1024)
    run(["mkfs.vfat", "-n", "config-2", str(raw)])
    src = tmp / "cfgsrc"
    src.mkdir()
    (src / "meta_data.json").write_text(json.dumps(METADATA, indent=2) + "\n")
    (src / "user_data").write_text(USERDATA)
    run(["mmd", "-i", str(raw), "::/openstack", "::/openstack/latest"])
    run(["mcopy", "-i", str(raw), str(src / "meta_data.json"), str(src / "user_data"), "::/openstack/latest/"])
    qcow = tmp / "config.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)])
    return qcow, 4 * 1024 * 1024


def make_config_iso(tmp, genisoimage):
    """An ISO 9660 config drive with the options nova.virt.configdrive uses."""
    src = tmp / "isosrc"
    (src / "openstack" / "latest").mkdir(parents=True)
    (src / "openstack" / "latest" / "meta_data.json").write_text(json.dumps(METADATA) + "\n")
    (src / "openstack" / "latest" / "user_data").write_text(USERDATA)
    iso = tmp / "config.iso"
    run(
        [
            genisoimage,
            "-o",
            str(iso),
            "-ldots",
            "-allow-lowercase",
            "-allow-multidot",
            "-l",
            "-publisher",
            "virtcloud check-test-image",
            "-quiet",
            "-J",
            "-r",
            "-V",
            "config-2",
            str(src),
        ]
    )
    return iso


def overlay(tmp, base, name):
    path = tmp / name
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)])
    return path


def read_bootcount(tmp, qcow):
    raw = tmp / (qcow.stem + ".inspect.raw")
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow), str(raw)])
    try:
        count = run(["mtype", "-i", str(raw), "::/bootcount"]).strip()
        fsck = subprocess.run(["fsck.fat", "-n", str(raw)], text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    finally:
        raw.unlink()
    return count, fsck.returncode, fsck.stdout


def boot_checks(g, variant, count):
    _idx, t_boot, m = g.wait_for(r"BOOT count=(\d+) variant=(\S+) kernel=(\S+)", BOOT_TIMEOUT)
    expect(m.group(1) == str(count) and m.group(2) == variant, f"[{g.name}] expected BOOT count={count} variant={variant}, got: BOOT {m.group(0)}")
    t_ready = g.wait_for(r"READY", BOOT_TIMEOUT)[1]
    return t_boot, t_ready, m.group(3)


def main():
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--dir", default=str(REPO / "build" / "guest"), help="directory with vctest.qcow2 and vctest-rescue.qcow2")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo the consoles")
    args = ap.parse_args()
    VERBOSE = args.verbose
    img_dir = Path(args.dir).resolve()
    normal_img = img_dir / "vctest.qcow2"
    rescue_img = img_dir / "vctest-rescue.qcow2"
    for tool, pkg in (
        (QEMU, "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("mkfs.vfat", "dosfstools"),
        ("fsck.fat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mmd", "mtools"),
        ("mtype", "mtools"),
    ):
        if shutil.which(tool) is None:
            raise CheckError(f"missing tool {tool} (Debian package {pkg})")
    for img in (normal_img, rescue_img):
        if not img.is_file():
            raise CheckError(f"{img} not found: run tools/build-test-image first")

    tmp = Path(tempfile.mkdtemp(prefix="vctest-check."))
    guests = []
    timings = {}
    try:
        cfg, cfg_size = make_config_drive(tmp)
        disk = overlay(tmp, normal_img, "normal-overlay.qcow2")
        rdisk = overlay(tmp, rescue_img, "rescue-overlay.qcow2")

        # ---------------------------------------------------------- boot 1
        g = Guest(tmp, "normal-1", [disk, cfg])
        guests.append(g)
        t_boot, t_ready, kernel = boot_checks(g, "normal", 1)
        m = g.wait_for(r"DISKS (.*)", 1)[2]
        disks = dict(kv.split("=") for kv in m.group(1).split())
        expect(disks == {"vda": "67108864", "vdb": str(cfg_size)}, f"[{g.name}] DISKS: {m.group(1)}")
        m = g.wait_for(r"METADATA (.*)", 1)[2]
        expect(json.loads(m.group(1)) == METADATA, f"[{g.name}] METADATA differs from what was written: {m.group(1)}")
        m = g.wait_for(r"USERDATA (.*)", 1)[2]
        expect(m.group(1) == USERDATA.splitlines()[0], f"[{g.name}] USERDATA: {m.group(1)}")
        g.wait_for(rf"HOSTNAME {METADATA['hostname']} source=metadata", 1)
        m = g.wait_for(r"IP (\S+) (\S+) mac=(\S+)", 1)[2]
        expect(m.group(1) == "eth0" and m.group(2) == "10.0.2.15/24" and m.group(3) == MAC, f"[{g.name}] IP line: {m.group(0)}")
        order = [l.split(" ", 1)[0] for _i, l in g.proto()]
        expect(order.index("READY") > order.index("IP"), f"[{g.name}] READY before IP")
        tick = check_ticks(g, 5)
        dt_off = g.power_button()
        g.wait_for(r"SHUTDOWN", 0.5)
        timings["normal-1"] = (t_boot, t_ready, tick, dt_off)
        log(f"[{g.name}] ok: kernel {kernel}, BOOT at {t_boot:.2f} s, READY at {t_ready:.2f} s, tick period {tick:.2f} s, power button -> exit {dt_off:.2f} s")

        # ---------------------------------------------------------- boot 2
        g = Guest(tmp, "normal-2", [disk], link_down=True)
        guests.append(g)
        t_boot, t_ready, _kernel = boot_checks(g, "normal", 2)
        g.wait_for(r"METADATA none", 1)
        t_ipnone = g.wait_for(r"IP none", 1)[1]
        expect(15 <= t_ipnone - t_boot <= 30, f"[{g.name}] IP none {t_ipnone - t_boot:.1f} s after BOOT")
        i = g.wait_for(r"DISKS vda=67108864", 1)[0]
        t = time.monotonic()
        g.qmp(("set_link", {"name": "nic0", "up": True}))
        g.wait_for(r"IP eth0 10\.0\.2\.15/24 mac=" + MAC, 30)
        dt_lease = time.monotonic() - t
        # hot plug / unplug of a virtio disk (volume attach / detach)
        vol = tmp / "vol.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(vol), "1M"])
        t = time.monotonic()
        g.qmp(
            ("blockdev-add", {"driver": "qcow2", "node-name": "vol0", "file": {"driver": "file", "filename": str(vol)}}),
            ("device_add", {"driver": "virtio-blk-pci", "drive": "vol0", "id": "vol0dev"}),
        )
        i = g.wait_for(r"DISKS vda=67108864 vdb=1048576", 15, after=i + 1)[0]
        dt_plug = time.monotonic() - t
        t = time.monotonic()
        g.qmp(("device_del", {"id": "vol0dev"}))
        g.wait_for(r"DISKS vda=67108864", 20, after=i + 1)
        dt_unplug = time.monotonic() - t
        tick = check_ticks(g, 3)
        dt_off = g.power_button()
        g.wait_for(r"SHUTDOWN", 0.5)
        timings["normal-2"] = (t_boot, t_ready, tick, dt_off)
        log(
            f"[{g.name}] ok: BOOT count=2 at {t_boot:.2f} s, READY at {t_ready:.2f} s, "
            f"IP none {t_ipnone - t_boot:.1f} s after BOOT, lease {dt_lease:.1f} s after link up, "
            f"hot-plug seen after {dt_plug:.1f} s, unplug after {dt_unplug:.1f} s, "
            f"power button -> exit {dt_off:.2f} s"
        )

        # ---------------------------------------------------------- rescue
        g = Guest(tmp, "rescue", [rdisk, disk])
        guests.append(g)
        t_boot, t_ready, _kernel = boot_checks(g, "rescue", 1)
        g.wait_for(r"RESCUE disk=vdb bootcount=2", 1)
        g.wait_for(r"DISKS vda=67108864 vdb=67108864", 1)
        g.wait_for(r"IP eth0 10\.0\.2\.15/24 mac=" + MAC, 1)
        tick = check_ticks(g, 2)
        dt_off = g.power_button()
        g.wait_for(r"SHUTDOWN", 0.5)
        timings["rescue"] = (t_boot, t_ready, tick, dt_off)
        log(f"[{g.name}] ok: RESCUE disk=vdb bootcount=2, BOOT at {t_boot:.2f} s, READY at {t_ready:.2f} s, power button -> exit {dt_off:.2f} s")

        # ---------------------------------------------------------- disks afterwards
        for qcow, want in ((disk, "2"), (rdisk, "1")):
            count, rc, out = read_bootcount(tmp, qcow)
            expect(count == want, f"{qcow.name}: bootcount {count!r}, expected {want}")
            expect(rc == 0, f"{qcow.name}: fsck.fat -n reports problems:\n{out}")
        log("overlays: bootcount normal=2 rescue=1, both FAT filesystems clean")
        for img in (normal_img, rescue_img):
            run(["qemu-img", "check", "-q", "-f", "qcow2", str(img)])

        # ---------------------------------------------------------- iso config drive
        genisoimage = shutil.which("genisoimage")
        if genisoimage:
            iso = make_config_iso(tmp, genisoimage)
            disk3 = overlay(tmp, normal_img, "normal-iso-overlay.qcow2")
            g = Guest(tmp, "iso", [disk3], nic=False, extra=["-drive", f"file={iso},if=ide,media=cdrom,format=raw,readonly=on"])
            guests.append(g)
            t_boot, t_ready, _kernel = boot_checks(g, "normal", 1)
            m = g.wait_for(r"DISKS (.*)", 1)[2]
            expect(m.group(1).split()[0] == "sr0=" + str(iso.stat().st_size), f"[{g.name}] DISKS: {m.group(1)}")
            m = g.wait_for(r"METADATA (.*)", 1)[2]
            expect(json.loads(m.group(1)) == METADATA, f"[{g.name}] METADATA differs from what was written: {m.group(1)}")
            dt_off = g.power_button()
            g.wait_for(r"SHUTDOWN", 0.5)
            timings["iso"] = (t_boot, t_ready, 0.0, dt_off)
            log(f"[{g.name}] ok: iso9660 config drive on an IDE cdrom (sr0) read")
        else:
            log("genisoimage not found: iso9660 config drive boot skipped")

        log("timings (s since QEMU start; TCG):")
        for name, (tb, tr, tk, to) in timings.items():
            log(f"  {name:9s} BOOT {tb:5.2f}  READY {tr:5.2f}  tick {tk:4.2f}  poweroff {to:4.2f}")
        log("PASS")
        return 0
    except CheckError:
        for g in guests:
            if g.lines:
                print(f"--- console of {g.name} (last lines) ---\n{g.tail()}", file=sys.stderr)
        raise
    finally:
        for g in guests:
            g.kill()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckError as exc:
        print(f"check-test-image: FAIL: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
