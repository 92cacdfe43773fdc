# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Images and disks on the lab.

The controller is the image store host (role image_store, its venv in the lab's
state folder); the compute hosts fill their ``_base`` cache from it over scp
themselves; an instance disk is an overlay on the cached image, and the test guest
boots from it under plain virsh. The tests run in file order and build on each
other (one store, one cache, one instance directory).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import uuid

import pytest

from harness import GUEST_IMAGE, TOP, VENV_BIN, Console, domain_xml, run_module, run_playbook

PLAYBOOKS = os.path.join(TOP, "tests", "integration", "playbooks")
CONSTRAINTS = os.path.join(TOP, "constraints.txt")
MIB = 1024 * 1024
GUEST_VIRTUAL_SIZE = 64 * MIB
PROPERTIES = {"hw_architecture": "amd64", "img_hv_type": "qemu", "min_ram": 128, "min_disk": 1, "os_type": "linux"}
NET_XML = (
    "<network><name>imgtest</name><bridge name='vcimgt0'/><ip address='192.168.151.1' netmask='255.255.255.0'>"
    "<dhcp><range start='192.168.151.10' end='192.168.151.50'/></dhcp></ip></network>"
)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Images:
    """What the tests share: the lab, the venv, where files are, and a module runner."""

    def __init__(self, lab, own_store=True):
        self.lab = lab
        self.venv = os.path.join(lab.state_dir, "venv")
        self.wheels = os.path.join(lab.state_dir, "wheels")
        self.incoming = os.path.join(lab.state_dir, "incoming")  # seen by the controller (the machine's file system)
        # a store of these tests' own (not the lab's, which the cloud tests fill): a folder of the lab's
        # state folder, which the controller sees at the same path as the machine (removed by lab_down)
        self.store = os.path.join(lab.state_dir, "images-test")
        self.store_on_machine = self.store
        if not own_store:  # the lab's store, as the controller sees it and where it lies on the machine
            self.store = os.path.join(lab.state_dir, "images")
            self.store_on_machine = os.path.join(lab.state_dir, "hosts", "controller", "images")
        self.key = lab.spec.key_file
        self.known_hosts = lab.spec.known_hosts
        self.controller = lab.address("controller")
        self.image = None  # the record of the test image, once imported
        self.instance = str(uuid.uuid4())

    def module(self, host, module, args, check=False, diff=False, venv=True, hosts=None):
        """Run virtcloud.compute.MODULE on HOST (or the pattern HOSTS) ad hoc; returns ({host: result}, stdout)."""
        extra = {"ansible_python_interpreter": f"{self.venv}/bin/python"} if venv else None
        run = run_module(self.lab, hosts or host, module, args, check=check, diff=diff, extra_vars=extra, timeout=600)
        results = run.results
        assert results, f"no result from {module} on {hosts or host}: {run!r}"
        return (results if hosts else results[host]), run.stdout

    def ok(self, host, module, args, **kwargs):
        result, _out = self.module(host, module, args, **kwargs)
        assert not result.get("failed"), result.get("msg", result)
        return result

    def fails(self, host, module, args, **kwargs):
        result, _out = self.module(host, module, args, **kwargs)
        assert result.get("failed"), result
        return result["msg"]

    def image_args(self, **extra):
        args = dict(store_path=self.store)
        args.update(extra)
        return args

    def cache_args(self, **extra):
        args = dict(
            image_id=self.image["id"],
            sha256=self.image["sha256"],
            size=self.image["size"],
            disk_format="qcow2",
            instances_path=self.lab.instances_path,
            source_host=self.controller,
            source_path=self.store,
            ssh_key=self.key,
            known_hosts=self.known_hosts,
        )
        args.update(extra)
        return args

    def store_entries(self):
        return sorted(os.listdir(self.store_on_machine))

    def base_on_machine(self, host):
        return os.path.join(self.lab.instances_dir(host), "_base", hashlib.sha1(self.image["id"].encode()).hexdigest())


@pytest.fixture(scope="module")
def images(lab):
    """The image store host made with the role (twice: the second run changes nothing)."""
    env = Images(lab)
    os.makedirs(env.incoming, exist_ok=True)
    # lab hosts reach no package index: fill a wheel folder from the machine, pip installs offline from it
    proc = subprocess.run(
        [os.path.join(VENV_BIN, "python"), "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", env.wheels, "oslo.utils==10.2.0", "-c", CONSTRAINTS],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    extra = dict(images_venv=env.venv, images_wheels=env.wheels, images_store_path=env.store)
    first = run_playbook(os.path.join(PLAYBOOKS, "images_store.yml"), extra, inventory=lab.inventory)
    assert first.rc == 0, first.stdout[-3000:] + first.stderr[-2000:]
    env.role_runs = (first, run_playbook(os.path.join(PLAYBOOKS, "images_store.yml"), extra, inventory=lab.inventory))
    return env


def test_role_makes_the_store_and_the_venv(images):
    first, second = images.role_runs
    assert first.recap["controller"]["failed"] == 0
    assert second.rc == 0 and second.changed == 0, second.stdout[-3000:]
    assert os.path.isdir(images.store_on_machine)
    assert images.lab.ssh("controller", f"stat -c %a {images.store}").strip() == "755"
    out = images.lab.ssh(
        "controller",
        f"{images.venv}/bin/python -c 'import oslo_utils.version as v, libvirt, lxml; from oslo_utils.imageutils "
        "import format_inspector; print(v.version_info.version_string())'",
    )
    assert out.strip() == "10.2.0"


def test_import_with_properties(images):
    src = os.path.join(images.incoming, "vctest.qcow2")
    shutil.copy(GUEST_IMAGE, src)
    args = images.image_args(name="vctest", src=src, disk_format="qcow2", properties=PROPERTIES, request_id=f"req-{uuid.uuid4()}")

    planned = images.ok("controller", "image", args, check=True)
    assert planned["changed"] and planned["image"]["sha256"] == sha256(GUEST_IMAGE)
    assert images.ok("controller", "image_info", images.image_args())["images"] == []
    assert [e for e in images.store_entries() if not e.startswith(".")] == []

    made, out = images.module("controller", "image", args, diff=True)
    assert made["changed"], made
    rec = made["image"]
    assert "+++ after" in out and '"name": "vctest"' in out
    assert rec == dict(
        rec,
        name="vctest",
        status="active",
        disk_format="qcow2",
        container_format="bare",
        size=os.path.getsize(GUEST_IMAGE),
        virtual_size=GUEST_VIRTUAL_SIZE,
        sha256=sha256(GUEST_IMAGE),
        visibility="public",
        image_type="image",
        instance_uuid=None,
        owner=None,
        properties={"hw_architecture": "x86_64", "img_hv_type": "qemu", "min_disk": "1", "min_ram": "128", "os_type": "linux"},
    )
    assert made["path"] == os.path.join(images.store, rec["id"], "image")
    assert sha256(os.path.join(images.store_on_machine, rec["id"], "image")) == sha256(GUEST_IMAGE)
    images.image = rec

    again = images.ok("controller", "image", args)
    assert not again["changed"] and again["image"] == rec
    assert not images.ok("controller", "image", args, check=True)["changed"]
    # by id, the same content: no change either
    assert not images.ok("controller", "image", images.image_args(id=rec["id"], src=src))["changed"]

    listed = images.ok("controller", "image_info", images.image_args())["images"]
    assert listed == [rec]
    assert images.ok("controller", "image_info", images.image_args(name="vctest"), venv=False)["images"] == [rec]
    assert images.ok("controller", "image_info", images.image_args(id=rec["id"]), venv=False)["images"] == [rec]
    assert images.ok("controller", "image_info", images.image_args(name="nothing"), venv=False)["images"] == []


def test_properties_update(images):
    wanted = dict(PROPERTIES, os_distro="busybox")
    args = images.image_args(name="vctest", properties=wanted)
    planned = images.ok("controller", "image", args, check=True)
    assert planned["changed"] and planned["image"]["properties"]["os_distro"] == "busybox"
    assert "os_distro" not in images.ok("controller", "image_info", images.image_args(name="vctest"))["images"][0]["properties"]
    done = images.ok("controller", "image", args)
    assert done["changed"] and done["changes"] == [f"update properties of image {images.image['id']} (vctest)"]
    assert not images.ok("controller", "image", args)["changed"]
    assert not images.ok("controller", "image", args, check=True)["changed"]
    images.image = done["image"]


def test_other_content_under_the_same_name_is_refused(images):
    other = os.path.join(images.incoming, "other.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", other, "1M"], check=True)
    msg = images.fails("controller", "image", images.image_args(name="vctest", src=other))
    assert "holds other content" in msg and images.image["id"] in msg
    assert images.ok("controller", "image_info", images.image_args())["images"] == [images.image]


def unsafe_sources(incoming):
    backing = os.path.join(incoming, "backing.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", "/etc/shadow", backing, "64M"], check=True)
    descriptor = os.path.join(incoming, "descriptor.vmdk")
    text = (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        '# Extent description\nRW 2048 FLAT "/etc/shadow" 0\n\n# The Disk Data Base\n#DDB\n'
    )
    with open(descriptor, "w", encoding="ascii") as f:
        f.write(text + "\n" * (MIB - len(text)))
    return [
        (backing, "qcow2", "backing"),
        (os.path.join(incoming, "vctest.qcow2"), "raw", "the content is qcow2, not the declared raw"),
        (descriptor, "raw", "vmdk"),
    ]


@pytest.mark.parametrize("check", [True, False])
def test_unsafe_imports_are_rejected_and_leave_nothing(images, check):
    before = images.store_entries()
    for src, declared, reason in unsafe_sources(images.incoming):
        msg = images.fails("controller", "image", images.image_args(name="unsafe", src=src, disk_format=declared), check=check)
        assert "rejected" in msg and reason in msg and src in msg, msg
        assert images.store_entries() == before
        assert not [e for e in images.store_entries() if e.startswith(".import-")]
    assert images.ok("controller", "image_info", images.image_args())["images"] == [images.image]


def test_import_from_a_url_checks_the_checksum(images):
    """A web server on node2, the download made by the controller."""
    www = os.path.join(images.incoming, "www")
    os.makedirs(www, exist_ok=True)
    shutil.copy(GUEST_IMAGE, os.path.join(www, "guest.qcow2"))
    address = images.lab.address("node2")
    server = subprocess.Popen(
        ["ip", "netns", "exec", f"{images.lab.name}-node2", "python3", "-m", "http.server", "--bind", address, "--directory", www, "8099"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://{address}:8099/guest.qcow2"
        deadline = time.monotonic() + 20
        while (
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    f"{images.lab.name}-controller",
                    "python3",
                    "-c",
                    f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2)",
                ],
                capture_output=True,
                check=False,
            ).returncode
            != 0
        ):
            assert time.monotonic() < deadline, "the web server on node2 did not answer"
            time.sleep(0.2)
        msg = images.fails("controller", "image", images.image_args(name="from-url", url=url, checksum="0" * 64))
        assert "not the given checksum" in msg
        assert not [e for e in images.store_entries() if e.startswith(".import-")]
        made = images.ok("controller", "image", images.image_args(name="from-url", url=url, checksum="sha256:" + sha256(GUEST_IMAGE)))
        assert made["changed"] and made["image"]["sha256"] == sha256(GUEST_IMAGE) and made["image"]["id"] != images.image["id"]
    finally:
        server.kill()
        server.wait()
    # the URL is not fetched again (the server is gone): the checksum says it is the same
    assert not images.ok("controller", "image", images.image_args(name="from-url", url=url, checksum=sha256(GUEST_IMAGE)))["changed"]
    gone = images.ok("controller", "image", images.image_args(name="from-url", state="absent"))
    assert gone["changed"] and gone["image"] is None


def test_cache_fills_base_from_the_image_host_directly(images):
    args = images.cache_args(request_id=f"req-{uuid.uuid4()}")
    base = images.base_on_machine("node1")
    planned = images.ok("node1", "image_cache", args, check=True)
    assert planned["changed"] and planned["fetched"] and not os.path.exists(base)

    fetched = images.ok("node1", "image_cache", args)
    assert fetched["changed"] and fetched["fetched"]
    # the compute host ran the transfer itself, from the image host, over SSH
    assert fetched["transport"] == "scp"
    assert fetched["source"] == f"root@{images.controller}:{images.store}/{images.image['id']}"
    assert fetched["fetched_on"] == "node1"
    assert fetched["bytes"] == images.image["size"]
    assert fetched["path"] == os.path.join(images.lab.instances_path, "_base", os.path.basename(base))
    assert (fetched["format"], fetched["sha256"], fetched["virtual_size"]) == ("qcow2", images.image["sha256"], GUEST_VIRTUAL_SIZE)
    assert sha256(base) == images.image["sha256"]
    print(f"fetch of {fetched['bytes']} bytes from the controller to node1: {fetched['seconds']:.3f} s")

    again = images.ok("node1", "image_cache", args)
    assert not again["changed"] and not again["fetched"] and not again["hashed"] and again["transport"] is None
    assert not images.ok("node1", "image_cache", args, check=True)["changed"]


def test_cache_transfer_checks_the_image_host_key(images):
    """scp runs on the compute host with strict host key checking: an unknown host key stops it."""
    empty = os.path.join(images.incoming, "empty_known_hosts")
    open(empty, "w", encoding="ascii").close()
    msg = images.fails("node3", "image_cache", images.cache_args(known_hosts=empty))
    assert "Host key verification failed" in msg and f"root@{images.controller}" in msg
    assert not os.path.exists(images.base_on_machine("node3"))
    assert not [e for e in os.listdir(os.path.dirname(images.base_on_machine("node3"))) if e.startswith(".fetch-")]


def test_cache_hosts_sharing_storage_fetch_once(images):
    base = images.base_on_machine("node1")
    assert base == images.base_on_machine("node2")  # node1 and node2 share the instances folder
    os.unlink(base)
    results, _out = images.module(None, "image_cache", images.cache_args(), hosts="node1:node2")
    assert not [r for r in results.values() if r.get("failed")], results
    assert sorted(r["fetched"] for r in results.values()) == [False, True], results
    assert sha256(base) == images.image["sha256"]


def test_cache_reverifies_and_repairs_a_corrupted_base(images):
    base = images.base_on_machine("node1")
    st = os.stat(base)
    with open(base, "r+b") as f:
        f.seek(st.st_size // 2)
        f.write(b"\xde\xad\xbe\xef" * 1024)
    os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: the ctime still tells
    planned = images.ok("node1", "image_cache", images.cache_args(), check=True)
    assert planned["changed"] and "sha256 of" in planned["repaired"]
    assert sha256(base) != images.image["sha256"]
    repaired = images.ok("node1", "image_cache", images.cache_args())
    assert repaired["changed"] and repaired["fetched"] and f"sha256 of {repaired['path']}" in repaired["repaired"]
    assert sha256(base) == images.image["sha256"]
    assert not images.ok("node1", "image_cache", images.cache_args())["changed"]


def test_cache_force_raw(images):
    """node3 has its own instances folder: its base is made raw."""
    args = images.cache_args(force_raw=True)
    assert images.ok("node3", "image_cache", args, check=True)["changed"]
    raw = images.ok("node3", "image_cache", args)
    assert raw["changed"] and raw["format"] == "raw" and raw["disk_format"] == "qcow2" and raw["fetched_on"] == "node3"
    assert raw["size"] == GUEST_VIRTUAL_SIZE and os.path.getsize(images.base_on_machine("node3")) == GUEST_VIRTUAL_SIZE
    assert raw["base_sha256"] == sha256(images.base_on_machine("node3")) != images.image["sha256"]
    assert not images.ok("node3", "image_cache", args)["changed"]
    info = images.ok("node3", "disk_info", dict(path=raw["path"], format="raw"), venv=False)
    assert info["exists"] and info["disk"]["format"] == "raw" and info["disk"]["virtual_size"] == GUEST_VIRTUAL_SIZE


def file_state(images, host, path):
    """(size, sha256) of a file in a lab host's instances folder, read from the machine; None when missing."""
    local = os.path.join(images.lab.instances_dir(host), os.path.relpath(path, images.lab.instances_path))
    return (os.path.getsize(local), sha256(local)) if os.path.exists(local) else None


def disk_steps(images, host, args, expect_changed=True):
    """Check mode reports the change and changes nothing, the real run changes, both again change nothing."""
    before = file_state(images, host, args["path"])
    planned, out = images.module(host, "disk", args, check=True, diff=True, venv=False)
    assert not planned.get("failed") and planned["changed"] == expect_changed, planned
    assert file_state(images, host, args["path"]) == before
    done, out = images.module(host, "disk", args, diff=True, venv=False)
    assert not done.get("failed") and done["changed"] == expect_changed, done
    if expect_changed:
        assert "+++ after" in out
    assert not images.ok(host, "disk", args, venv=False)["changed"]
    assert not images.ok(host, "disk", args, check=True, venv=False)["changed"]
    return done


def test_disk_overlay_grow_shrink_info(images):
    inst = os.path.join(images.lab.instances_path, images.instance)
    images.lab.ssh("node1", f"mkdir -p {inst}")
    disk = inst + "/disk"
    base = os.path.join(images.lab.instances_path, "_base", os.path.basename(images.base_on_machine("node1")))

    made = disk_steps(images, "node1", dict(path=disk, backing=base, backing_format="qcow2"))
    assert made["disk"] == dict(path=disk, format="qcow2", virtual_size=GUEST_VIRTUAL_SIZE, backing_file=base, backing_format="qcow2")

    grown = disk_steps(images, "node1", dict(path=disk, state="resized", size="96M"))
    assert grown["disk"]["virtual_size"] == 96 * MIB

    msg = images.fails("node1", "disk", dict(path=disk, state="resized", size="32M"), venv=False)
    assert "cannot shrink" in msg and str(96 * MIB) in msg
    msg = images.fails("node1", "disk", dict(path=disk, state="resized", size="32M"), check=True, venv=False)
    assert "cannot shrink" in msg

    info = images.ok("node1", "disk_info", dict(path=disk), venv=False)
    assert info["exists"] and info["disk"]["virtual_size"] == 96 * MIB and info["disk"]["backing_filename"] == base
    assert [(b["filename"], b["format"], b["virtual_size"]) for b in info["disk"]["backing_chain"]] == [(base, "qcow2", GUEST_VIRTUAL_SIZE)]
    assert images.ok("node1", "disk_info", dict(path=inst + "/none"), venv=False) == dict(
        images.ok("node1", "disk_info", dict(path=inst + "/none"), venv=False), exists=False, disk={}
    )

    # a flat copy (what a snapshot does), and an ephemeral disk that is then removed
    flat = disk_steps(images, "node1", dict(path=inst + "/flat.qcow2", state="converted", src=disk, src_format="qcow2", compress=True))
    assert flat["disk"]["backing_file"] is None and flat["disk"]["virtual_size"] == 96 * MIB
    disk_steps(images, "node1", dict(path=inst + "/disk.eph0", size="16M"))
    disk_steps(images, "node1", dict(path=inst + "/disk.eph0", state="absent"))
    disk_steps(images, "node1", dict(path=inst + "/flat.qcow2", state="absent"))


def test_guest_boots_from_the_overlay_on_the_cached_images(images):
    """Proof that the cached image is good: the test guest boots from an overlay on it (qcow2 base on node1, raw on node3)."""
    raw_base = os.path.join(images.lab.instances_path, "_base", os.path.basename(images.base_on_machine("node3")))
    inst3 = os.path.join(images.lab.instances_path, images.instance + "-raw")
    images.lab.ssh("node3", f"mkdir -p {inst3}")
    images.ok("node3", "disk", dict(path=inst3 + "/disk", backing=raw_base, backing_format="raw", size="80M"), venv=False)

    guests = [("node1", os.path.join(images.lab.instances_path, images.instance), 96 * MIB), ("node3", inst3, 80 * MIB)]
    names = {}
    try:
        for host, inst, _size in guests:
            name = f"img-{host}-{images.instance[:8]}"
            names[host] = name
            images.lab.ssh(host, "virsh net-info imgtest >/dev/null 2>&1 || virsh net-create /dev/stdin", data=NET_XML)
            images.lab.ssh(host, "virsh define /dev/stdin", data=domain_xml(name, inst + "/disk", inst + "/console.log", "imgtest"))
            images.lab.ssh(host, f"virsh start {name}")
        for host, inst, size in guests:
            console = Console(os.path.join(images.lab.instances_dir(host), os.path.basename(inst), "console.log"))
            _i, boot = console.wait("BOOT", timeout=120)
            assert boot.startswith("count=1 variant=normal"), (host, boot)
            _i, disks = console.wait("DISKS", timeout=30)
            assert disks == f"vda={size}", (host, disks)
    finally:
        for host, name in names.items():
            images.lab.ssh(host, f"virsh destroy {name}; virsh undefine {name}; virsh net-destroy imgtest", check=False)
    # the base files are untouched by the guests: still what was verified
    assert not images.ok("node1", "image_cache", images.cache_args(verify="full"))["changed"]
    assert not images.ok("node3", "image_cache", images.cache_args(force_raw=True, verify="full"))["changed"]


def test_delete_keeps_the_cached_bases(images):
    args = images.image_args(name="vctest", state="absent")
    planned = images.ok("controller", "image", args, check=True)
    assert planned["changed"] and images.ok("controller", "image_info", images.image_args(name="vctest"))["images"] == [images.image]
    gone = images.ok("controller", "image", args)
    assert gone["changed"] and gone["changes"] == [f"delete image {images.image['id']} (vctest)"]
    assert images.ok("controller", "image_info", images.image_args())["images"] == []
    assert [e for e in images.store_entries() if not e.startswith(".")] == []
    assert not images.ok("controller", "image", args)["changed"]
    assert not images.ok("controller", "image", args, check=True)["changed"]
    # as Nova: instances keep running on their base file, which the cache keeps and still verifies
    assert not images.ok("node1", "image_cache", images.cache_args())["changed"]
    # an image that is neither cached nor in the store fails clearly
    msg = images.fails("node2", "image_cache", images.cache_args(instances_path=images.lab.instances_path, image_id=str(uuid.uuid4())))
    assert "fetching image" in msg and "failed" in msg


def test_bad_input_fails_clearly(images):
    cases = [
        ("controller", "image", images.image_args(name="bad/name", src="/x"), "image name 'bad/name' is not valid"),
        ("controller", "image", images.image_args(name="x", src="/x", properties={"Bad Key": "v"}), "property key 'Bad Key' is not valid"),
        ("controller", "image", images.image_args(name="x", src="/x", properties={"hw_architecture": "pdp11"}), "not one of Nova's values"),
        ("controller", "image", images.image_args(name="x", id="nope", src="/x"), "is not a uuid"),
        ("controller", "image", images.image_args(name="x", src="/nonexistent.qcow2"), "cannot be opened"),
        ("node1", "image_cache", images.cache_args(source_host="-oProxyCommand=sh"), "source_host"),
        ("node1", "disk", dict(path="relative/disk", size="1M"), "absolute path"),
        ("node1", "disk", dict(path="/tmp/vcimg-none/disk", backing="/nope", backing_format="qcow2"), "does not exist"),
    ]
    for host, module, args, message in cases:
        msg = images.fails(host, module, args, venv=module != "disk")
        assert message in msg, (module, args, msg)
