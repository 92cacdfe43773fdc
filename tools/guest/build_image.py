"""Build the virtcloud.compute test guest images from Debian packages only.

Outputs (default directory: build/guest under the repository root):

  vctest.qcow2          normal variant
  vctest-rescue.qcow2   rescue variant
  manifest.json         input versions/hashes, cache key, sha256 of each output
  cache/                downloaded kernel .deb (apt-get download)

Each image is a whole-disk FAT filesystem (label VCTEST, no partition table)
with syslinux installed on it, holding the Debian cloud kernel, a busybox
initramfs whose /init is tools/test-guest-init.sh, syslinux.cfg, a `variant`
file and a `bootcount` file.  SeaBIOS boots it from a virtio disk.

The build is cached: the key is a hash of the exact Debian versions of the
kernel package and of busybox-static plus the content of this script and of
the guest init script.  When manifest.json carries the same key and the
outputs are intact, nothing is done.  See docs/test-guest.md.

Python 3 standard library only; needs apt-get/apt-cache/dpkg-deb, busybox-static,
dosfstools (mkfs.vfat), mtools (mcopy), syslinux and qemu-utils (qemu-img).
"""

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve()
INIT = REPO / "tools" / "test-guest-init.sh"
DEFAULT_OUT = REPO / "build" / "guest"

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX_PKG = "busybox-static"
BUSYBOX = Path("/bin/busybox")

VARIANTS = {"normal": "vctest.qcow2", "rescue": "vctest-rescue.qcow2"}
DISK_MIB = 64

# Kernel modules the guest loads (their dependencies are added from
# modules.dep).  Built-in ones (modules.builtin) are skipped.
#   virtio_pci/virtio_blk/virtio_net: the paravirtual PCI disk and NIC
#   virtio_scsi/sd_mod: disks on a virtio-scsi controller (hw_disk_bus=scsi)
#   fat/vfat + nls_cp437 + nls_ascii: mounting vfat with the kernel's default
#     codepage (437) and iocharset (ascii)
#   isofs + nls_utf8 + ata_piix/sr_mod: an iso9660 config drive on an IDE cdrom
#   button + evdev: the ACPI power button as /dev/input/event* for acpid
WANTED_MODULES = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "sd_mod",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "isofs",
    "ata_piix",
    "sr_mod",
    "button",
    "evdev",
]

# tool -> Debian package that provides it
TOOLS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg": "dpkg",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
    "qemu-img": "qemu-utils",
}


class BuildError(Exception):
    pass


def log(msg):
    print(f"build-test-image: {msg}", flush=True)


def run(cmd, cwd=None, capture=True):
    """Run a command; raise BuildError with its output when it fails."""
    try:
        res = subprocess.run(cmd, cwd=cwd, check=False, text=True, stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    except FileNotFoundError as exc:
        raise BuildError(f"cannot run {cmd[0]}: {exc}") from exc
    if res.returncode != 0:
        out = (res.stdout or "").strip()
        raise BuildError(f"command failed (rc={res.returncode}): {' '.join(map(str, cmd))}\n{out}")
    return res.stdout or ""


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_tools():
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not BUSYBOX.is_file():
        missing.append(f"{BUSYBOX} (Debian package {BUSYBOX_PKG})")
    if missing:
        pkgs = sorted({TOOLS.get(m.split()[0], BUSYBOX_PKG) for m in missing})
        raise BuildError("missing: " + ", ".join(missing) + f"\n  install with: apt-get install {' '.join(pkgs)}")
    if not INIT.is_file():
        raise BuildError(f"guest init script not found: {INIT}")


def apt_field(stanza, field):
    m = re.search(rf"^{field}: *(.*)$", stanza, re.M)
    return m.group(1).strip() if m else None


def resolve_kernel():
    """The concrete linux-image-<abi>-cloud-amd64 package and its candidate version."""
    out = run(["apt-cache", "depends", KERNEL_META])
    deps = re.findall(r"^\s*Depends:\s*(linux-image-\S+)", out, re.M)
    if not deps:
        raise BuildError(f"apt-cache: cannot resolve {KERNEL_META} to a kernel package (is the Debian package index there? run apt-get update)\n{out}")
    pkg = deps[0]
    stanza = run(["apt-cache", "show", "--no-all-versions", pkg])
    version = apt_field(stanza, "Version")
    deb_sha = apt_field(stanza, "SHA256")
    if not version:
        raise BuildError(f"apt-cache show {pkg}: no candidate version")
    return pkg, version, deb_sha


def resolve_busybox():
    try:
        owner = run(["dpkg-query", "-S", str(BUSYBOX)]).split(":")[0].strip()
    except BuildError as exc:
        raise BuildError(f"{BUSYBOX} belongs to no package; install {BUSYBOX_PKG}") from exc
    if owner != BUSYBOX_PKG:
        raise BuildError(f"{BUSYBOX} comes from {owner}, not {BUSYBOX_PKG}; install {BUSYBOX_PKG} (a static busybox is needed)")
    version = run(["dpkg-query", "-W", "-f", "${Version}", BUSYBOX_PKG]).strip()
    return version


def cache_key(kpkg, kver, bbver):
    material = {
        "kernel_package": kpkg,
        "kernel_version": kver,
        "busybox_package": BUSYBOX_PKG,
        "busybox_version": bbver,
        "build_script_sha256": sha256_file(SCRIPT),
        "init_script_sha256": sha256_file(INIT),
    }
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), material


def up_to_date(out, key):
    manifest = out / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if data.get("cache_key") != key:
        return False
    for name, rec in data.get("outputs", {}).items():
        path = out / name
        if not path.is_file() or path.stat().st_size != rec.get("size"):
            return False
        if sha256_file(path) != rec.get("sha256"):
            return False
    return set(data.get("outputs", {})) == set(VARIANTS.values())


def download_kernel(cache, pkg, version, deb_sha):
    cache.mkdir(parents=True, exist_ok=True)
    arch = run(["dpkg", "--print-architecture"]).strip()
    # apt-get download names the file <pkg>_<version with ':' as %3a>_<arch>.deb
    deb = cache / f"{pkg}_{version.replace(':', '%3a')}_{arch}.deb"
    if deb.is_file() and (deb_sha is None or sha256_file(deb) == deb_sha):
        log(f"kernel package in cache: {deb.name}")
        return deb
    log(f"apt-get download {pkg}={version}")
    run(["apt-get", "download", "-q", f"{pkg}={version}"], cwd=cache)
    if not deb.is_file():
        cands = sorted(cache.glob(f"{pkg}_*.deb"))
        raise BuildError(f"apt-get download left no {deb.name} in {cache} (found: {cands})")
    if deb_sha and sha256_file(deb) != deb_sha:
        raise BuildError(f"{deb}: sha256 does not match the package index")
    for old in cache.glob("linux-image-*.deb"):
        if old != deb:
            old.unlink()
    return deb


def resolve_modules(moddir):
    """Load order (dependencies first) of WANTED_MODULES from modules.dep."""
    deps = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod.strip()] = rest.split()
    by_name = {}
    for path in deps:
        name = os.path.basename(path).split(".ko")[0].replace("-", "_")
        by_name[name] = path
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.is_file():
        for line in bfile.read_text().splitlines():
            builtin.add(os.path.basename(line).split(".ko")[0].replace("-", "_"))

    order, seen, skipped = [], set(), []

    def visit(path, chain):
        if path in seen:
            return
        if path in chain:
            raise BuildError(f"module dependency loop: {' -> '.join(chain + [path])}")
        for dep in deps.get(path, []):
            visit(dep, chain + [path])
        seen.add(path)
        order.append(path)

    for name in WANTED_MODULES:
        if name in by_name:
            visit(by_name[name], [])
        elif name in builtin:
            skipped.append(name)
        else:
            raise BuildError(f"kernel module {name} is neither a module nor built in")
    return order, skipped


class Cpio:
    """Minimal writer for the newc cpio format the kernel unpacks."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * ((4 - len(data) % 4) % 4))

    def dir(self, name, perm=0o755):
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, perm=0o600):
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initramfs(moddir, order):
    cpio = Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "etc", "lib", "lib/modules", "mnt", "root", "var", "var/log"):
        cpio.dir(d, 0o1777 if d == "tmp" else 0o755)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    applets = run([str(BUSYBOX), "--list-full"]).split()
    for path in sorted(set(applets)):
        if path == "bin/busybox":
            continue
        cpio.symlink(path, "/bin/busybox")
    cpio.file("init", INIT.read_bytes(), 0o755)
    names = []
    for rel in order:
        name = os.path.basename(rel)
        cpio.file(f"lib/modules/{name}", (moddir / rel).read_bytes())
        names.append(name)
    cpio.file("etc/modules.order", ("\n".join(names) + "\n").encode())
    cpio.file("etc/hostname", b"vctest\n")
    return gzip.compress(cpio.finish(), compresslevel=9, mtime=0)


SYSLINUX_CFG = """\
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT vctest
LABEL vctest
  LINUX /vmlinuz
  INITRD /initrd
  APPEND console=ttyS0,115200 quiet vcvariant={variant}
"""


def build_disk(tmp, variant, vmlinuz, initrd, out_path):
    raw = tmp / f"{variant}.raw"
    with open(raw, "wb") as f:
        f.truncate(DISK_MIB * 1024 * 1024)
    volid = "7c7e0001" if variant == "normal" else "7c7e0002"
    run(["mkfs.vfat", "-n", "VCTEST", "-i", volid, str(raw)])
    run(["syslinux", "--install", str(raw)])
    files = tmp / f"files-{variant}"
    files.mkdir()
    shutil.copy(vmlinuz, files / "vmlinuz")
    (files / "initrd").write_bytes(initrd)
    (files / "syslinux.cfg").write_text(SYSLINUX_CFG.format(variant=variant))
    (files / "variant").write_text(variant + "\n")
    (files / "bootcount").write_text("0\n")
    run(["mcopy", "-o", "-i", str(raw)] + [str(files / n) for n in ("vmlinuz", "initrd", "syslinux.cfg", "variant", "bootcount")] + ["::/"])
    qcow = tmp / out_path.name
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(raw), str(qcow)])
    raw.unlink()
    return qcow


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: build/guest in the repository)")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args()
    out = Path(args.out).resolve()

    check_tools()
    kpkg, kver, deb_sha = resolve_kernel()
    bbver = resolve_busybox()
    key, material = cache_key(kpkg, kver, bbver)

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if not args.force and up_to_date(out, key):
            print(f"build-test-image: up to date ({out}, key {key[:12]})")
            return 0
        t0 = time.monotonic()
        deb = download_kernel(out / "cache", kpkg, kver, deb_sha)
        tmp = Path(tempfile.mkdtemp(prefix="vctest-build."))
        try:
            root = tmp / "kernel"
            log(f"dpkg-deb -x {deb.name}")
            run(["dpkg-deb", "-x", str(deb), str(root)])
            vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
            if len(vmlinuz) != 1:
                raise BuildError(f"{deb.name}: expected one boot/vmlinuz-*, found {vmlinuz}")
            vmlinuz = vmlinuz[0]
            krel = vmlinuz.name[len("vmlinuz-") :]
            moddir = None
            for base in ("lib/modules", "usr/lib/modules"):
                if (root / base / krel).is_dir():
                    moddir, modbase = root / base / krel, base
            if moddir is None:
                raise BuildError(f"{deb.name}: no modules directory for {krel}")
            if not (moddir / "modules.dep").is_file():
                # the package leaves modules.dep to depmod at install time
                log(f"depmod for {krel} (busybox depmod on the extracted tree)")
                if modbase != "lib/modules":
                    (root / "lib").mkdir(exist_ok=True)
                    os.symlink(root / modbase, root / "lib" / "modules")
                run([str(BUSYBOX), "depmod", "-b", str(root), krel])
            order, builtin = resolve_modules(moddir)
            log(f"modules ({len(order)}): {' '.join(os.path.basename(m)[:-3] for m in order)}")
            if builtin:
                log(f"built in, skipped: {' '.join(builtin)}")
            initrd = build_initramfs(moddir, order)
            log(f"initramfs: {len(initrd)} bytes")

            outputs = {}
            for variant, name in VARIANTS.items():
                log(f"disk {name} ({variant})")
                qcow = build_disk(tmp, variant, vmlinuz, initrd, out / name)
                info = json.loads(run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(qcow)]))
                outputs[name] = {
                    "variant": variant,
                    "sha256": sha256_file(qcow),
                    "size": qcow.stat().st_size,
                    "virtual_size": info["virtual-size"],
                    "format": "qcow2",
                }
            for name in VARIANTS.values():
                os.replace(tmp / name, out / name)
            manifest = {
                "cache_key": key,
                "inputs": dict(
                    material,
                    **{
                        "kernel_deb_sha256": sha256_file(deb),
                        "kernel_release": krel,
                        "busybox_sha256": sha256_file(BUSYBOX),
                        "modules": [os.path.basename(m) for m in order],
                        "modules_builtin": builtin,
                    },
                ),
                "kernel_cmdline": SYSLINUX_CFG.split("APPEND ", 1)[1].strip(),
                "initrd_size": len(initrd),
                "vmlinuz_size": vmlinuz.stat().st_size,
                "fat_size_mib": DISK_MIB,
                "outputs": outputs,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            tmpm = out / "manifest.json.tmp"
            tmpm.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.replace(tmpm, out / "manifest.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for name, rec in outputs.items():
            log(f"{out / name}: {rec['size']} bytes, sha256 {rec['sha256']}")
        log(f"done in {time.monotonic() - t0:.1f} s (key {key[:12]})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as exc:
        print(f"build-test-image: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
