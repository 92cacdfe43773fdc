# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The libvirt helpers: URI check, recorded XML parsers, HostState arithmetic, domain waits, service record."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtcloud.compute.plugins.module_utils import _libvirt as lv
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError
from ansible_collections.virtcloud.compute.tests.unit.plugins.module_utils.fake_libvirt import Clock, FakeConn, FakeDomain, FakeLibvirtError

# Recorded on lab host node1 (Debian 12, libvirt 9.0.0, QEMU 7.2.22, /dev/kvm hidden):
#   virsh capabilities > capabilities-node1.xml
#   virsh domcapabilities > domcapabilities-node1-qemu.xml
# and on node2 the `virsh dumpxml` of a domain defined from _domain_xml.build_domain
# (flavor vcpus 2, ram_mb 512, disk_gb 1; server group grp1).
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "libvirt")


def fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


CAPS = fixture("capabilities-node1.xml")
DOMCAPS = fixture("domcapabilities-node1-qemu.xml")
DOMAIN = fixture("domain-instance-node2.xml")
DOMAIN_UUID = "6c1f1b9e-2f4e-4c55-9a43-0d2d3e4f5a01"


def _with_kvm(caps, arch):
    """The capabilities as libvirt shows them with /dev/kvm usable: a kvm domain beside qemu for ARCH."""
    head, tail = caps.split(f"<arch name='{arch}'>", 1)
    return head + f"<arch name='{arch}'>" + tail.replace("<domain type='qemu'/>", "<domain type='qemu'/>\n      <domain type='kvm'/>", 1)


CAPS_KVM = _with_kvm(CAPS, "x86_64")
DOMCAPS_KVM = DOMCAPS.replace("<domain>qemu</domain>", "<domain>kvm</domain>")


# --------------------------------------------------------------------------- URI check


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu:///session",
        "qemu+unix:///system",
        "qemu+ssh://node2/system",
        "qemu+ssh://root@node2:2222/system?command=/var/lib/virtcloud-lab/bin/ssh",
        "qemu+ssh://node2/system?keyfile=/root/.ssh/id_ed25519&no_verify=0",
        "qemu+libssh2://node2/system",
        "qemu+tls://node2.example.org/system",
        "qemu+tls://node2/system?pkipath=/etc/pki/libvirt",
    ],
)
def test_uri_allowed(uri):
    assert lv.check_uri(uri) == uri


@pytest.mark.parametrize(
    "uri, words",
    [
        ("qemu+tcp://node2/system", ["qemu+tcp", "without authentication", "qemu+ssh"]),
        ("QEMU+TCP://node2/system", ["without authentication"]),
        ("qemu+ext:///system?command=/bin/evil", ["arbitrary command"]),
        ("xen:///system", ["not a QEMU driver URI"]),
        ("test:///default", ["not a QEMU driver URI"]),
        ("lxc:///", ["not a QEMU driver URI"]),
        ("qemu:///sytem", ["/system or /session", "'/sytem'"]),
        ("qemu://node2/system", ["local transport", "qemu+ssh://node2/system"]),
        ("qemu+ssh:///system", ["no host name"]),
        ("qemu+tls://node2/system?no_verify=1", ["certificate", "no_verify=1"]),
        ("qemu+ssh://node2/system?no_verify=1", ["host key"]),
        ("", ["not a libvirt URI"]),
        ("qemu:///system\n", ["not a libvirt URI"]),
        (None, ["not a libvirt URI"]),
    ],
)
def test_uri_refused_with_reason(uri, words):
    with pytest.raises(lv.UnsafeUriError) as err:
        lv.check_uri(uri)
    assert isinstance(err.value, VirtcloudError)
    for word in words:
        assert word in str(err.value)


def test_connect_checks_the_uri_before_anything():
    with pytest.raises(lv.UnsafeUriError, match="qemu\\+tcp"):
        lv.connect("qemu+tcp://node2/system")


# --------------------------------------------------------------------------- capabilities


def test_capabilities_host_and_cpu():
    caps = lv.parse_capabilities(CAPS)
    assert caps["uuid"] == "d0828ffe-6c7a-420e-ac9f-ed277f3a434a"
    cpu = caps["cpu"]
    assert (cpu["arch"], cpu["model"], cpu["vendor"]) == ("x86_64", "kvm64", "AMD")
    assert cpu["topology"] == {"cells": 1, "sockets": 1, "dies": 1, "cores": 2, "threads": 1}
    assert cpu["features"] == sorted(cpu["features"])
    assert {"avx2", "aes", "sse4.2", "x2apic", "avx512f"} <= set(cpu["features"])
    assert len(cpu["features"]) == 72  # every <feature> of <host><cpu>


def test_capabilities_guests():
    caps = lv.parse_capabilities(CAPS)
    assert [(g["os_type"], g["arch"], g["wordsize"], g["emulator"], g["domain_types"]) for g in caps["guests"]] == [
        ("hvm", "i686", 32, "/usr/bin/qemu-system-i386", ["qemu"]),
        ("hvm", "x86_64", 64, "/usr/bin/qemu-system-x86_64", ["qemu"]),
    ]


def test_cpu_info_is_novas_shape():
    info = lv.cpu_info(lv.parse_capabilities(CAPS))
    assert set(info) == {"arch", "model", "vendor", "topology", "features"}
    assert info["topology"] == {"cells": 1, "sockets": 1, "cores": 2, "threads": 1}
    assert json.loads(json.dumps(info)) == info  # JSON as Nova keeps it


def test_supported_instances_lab_host_is_tcg_only():
    assert lv.supported_instances(lv.parse_capabilities(CAPS)) == [["i686", "qemu", "hvm"], ["x86_64", "qemu", "hvm"]]


def test_supported_instances_with_kvm():
    assert lv.supported_instances(lv.parse_capabilities(CAPS_KVM)) == [["i686", "qemu", "hvm"], ["x86_64", "qemu", "hvm"], ["x86_64", "kvm", "hvm"]]


def test_supported_instances_canonicalised_and_unique():
    caps = {
        "guests": [
            {"os_type": "hvm", "arch": "i386", "domain_types": ["qemu", "QEMU"]},
            {"os_type": "HVM", "arch": "amd64", "domain_types": ["kvm"]},
            {"os_type": "hvm", "arch": "x86_64", "domain_types": ["kvm"]},
            {"os_type": None, "arch": "aarch64", "domain_types": ["qemu"]},
        ]
    }
    assert lv.supported_instances(caps) == [["i686", "qemu", "hvm"], ["x86_64", "kvm", "hvm"]]


def test_domain_capabilities():
    dc = lv.parse_domain_capabilities(DOMCAPS)
    assert dc == {"path": "/usr/bin/qemu-system-x86_64", "domain": "qemu", "machine": "pc-i440fx-7.2", "arch": "x86_64", "vcpu_max": 255, "host_model": "EPYC"}


@pytest.mark.parametrize(
    "caps_xml, domcaps_xml, dev_kvm, expected",
    [
        (CAPS, None, False, "qemu"),  # the lab: /dev/kvm hidden, no kvm domain offered
        (CAPS, DOMCAPS_KVM, True, "qemu"),  # capabilities do not offer kvm
        (CAPS_KVM, DOMCAPS_KVM, True, "kvm"),  # a real hypervisor
        (CAPS_KVM, None, True, "qemu"),  # domain capabilities for kvm failed
        (CAPS_KVM, DOMCAPS, True, "qemu"),  # they answered for qemu only
        (CAPS_KVM, DOMCAPS_KVM, False, "qemu"),  # /dev/kvm not usable by this user
    ],
)
def test_virt_type_detection(caps_xml, domcaps_xml, dev_kvm, expected):
    caps = lv.parse_capabilities(caps_xml)
    domcaps = lv.parse_domain_capabilities(domcaps_xml) if domcaps_xml else None
    assert lv.detect_virt_type(caps, domcaps, dev_kvm) == expected


def test_virt_type_needs_kvm_for_the_host_arch():
    caps = lv.parse_capabilities(_with_kvm(CAPS, "i686"))
    assert lv.supported_instances(caps) == [["i686", "qemu", "hvm"], ["i686", "kvm", "hvm"], ["x86_64", "qemu", "hvm"]]
    assert lv.detect_virt_type(caps, lv.parse_domain_capabilities(DOMCAPS_KVM), True) == "qemu"


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<capabilities><host>", "does not parse"),
        ("<domain/>", "not <capabilities>"),
        ("<capabilities/>", "no <host>"),
        ("<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><capabilities><host><uuid>&e;</uuid></host></capabilities>", ""),
    ],
)
def test_capabilities_bad_xml(xml, message):
    if not message:
        # external entities are never resolved
        assert lv.parse_capabilities(xml)["uuid"] is None
        return
    with pytest.raises(lv.HostFactsError, match=message):
        lv.parse_capabilities(xml)


# --------------------------------------------------------------------------- domain XML and the record


def test_parse_recorded_instance_domain():
    dom = lv.parse_domain(DOMAIN)
    assert dom["name"] == "instance-" + DOMAIN_UUID
    assert dom["uuid"] == DOMAIN_UUID
    assert (dom["type"], dom["vcpus"], dom["memory_mb"]) == ("qemu", 2, 512)
    assert dom["record_error"] is None
    record = dom["record"]
    assert record["uuid"] == DOMAIN_UUID and record["name"] == "rec-1"
    assert record["flavor"]["vcpus"] == 2 and record["flavor"]["ram_mb"] == 512
    assert (record["vm_state"], record["task_state"], record["server_group"]) == ("active", None, "grp1")
    assert [(d["target"], d["format"], d["device"]) for d in dom["disks"]] == [("vda", "qcow2", "disk"), ("vdb", "raw", "disk")]
    assert dom["disks"][0]["source"].endswith(f"/{DOMAIN_UUID}/disk")


def test_the_facts_read_the_record_with_the_one_reader():
    assert lv.read_record(DOMAIN) == dx.read_record(DOMAIN)


def test_record_broken():
    broken = DOMAIN.replace('"ram_mb":512', '"ram_mb":"lots"')
    dom = lv.parse_domain(broken)
    assert dom["record"] is None
    assert "virtcloud record in its metadata is not valid" in dom["record_error"]
    assert "ram_mb" in dom["record_error"]
    not_json = lv.parse_domain(DOMAIN.replace('{"actions"', '{{"actions"'))
    assert not_json["record"] is None and not_json["record_error"]


def test_foreign_domain_has_no_record():
    xml = (
        "<domain type='qemu'><name>other</name><uuid>11111111-2222-3333-4444-555555555555</uuid>"
        "<metadata><x:y xmlns:x='urn:other'>{}</x:y></metadata>"
        "<memory unit='GiB'>1</memory><vcpu placement='static'>3</vcpu><os><type>hvm</type></os></domain>"
    )
    dom = lv.parse_domain(xml)
    assert (dom["record"], dom["record_error"], dom["vcpus"], dom["memory_mb"]) == (None, None, 3, 1024)


@pytest.mark.parametrize(
    "memory, mb",
    [
        ("<memory>524288</memory>", 512),
        ("<memory unit='KiB'>1000</memory>", 1),
        ("<memory unit='MiB'>256</memory>", 256),
        ("<memory unit='b'>1048577</memory>", 2),
        ("", 0),
    ],
)
def test_domain_memory_units(memory, mb):
    xml = f"<domain type='qemu'><name>d</name>{memory}<vcpu>1</vcpu></domain>"
    assert lv.parse_domain(xml)["memory_mb"] == mb


# --------------------------------------------------------------------------- host state arithmetic

GIB = 1024**3


def inst(vcpus=1, ram=512, disk=1, eph=0, swap=0, vm_state="active", task_state=None):
    return {"flavor": {"vcpus": vcpus, "ram_mb": ram, "disk_gb": disk, "ephemeral_gb": eph, "swap_mb": swap}, "vm_state": vm_state, "task_state": task_state}


def hs(**kw):
    base = dict(vcpus_total=8, memory_mb_total=16384, disk_total_bytes=100 * GIB, disk_free_bytes=80 * GIB)
    base.update(kw)
    return lv.host_state(**base)


def test_empty_host_nova_defaults():
    s = hs()
    assert s == {
        "vcpus_total": 8,
        "vcpus_used": 0,
        "memory_mb_total": 16384,
        "memory_mb_reserved": 512,
        "memory_mb_used": 512,
        "total_usable_ram_mb": 15872,
        "free_ram_mb": 15872,
        "local_gb": 100,
        "disk_mb_reserved": 0,
        "disk_mb_used": 0,
        "total_usable_disk_gb": 100,
        "free_disk_mb": 102400,
        "disk_available_least": 80,
        "cpu_allocation_ratio": 4.0,
        "ram_allocation_ratio": 1.0,
        "disk_allocation_ratio": 1.0,
        "num_instances": 0,
        "num_io_ops": 0,
    }


@pytest.mark.parametrize(
    "reserved, total_usable, free",
    [
        (0, 16384, 16384 - 1024),
        (512, 15872, 15872 - 1024),
        (4096, 12288, 12288 - 1024),
        (20000, 0, -1024),  # more reserved than there is: nothing usable, free negative as in Nova
    ],
)
def test_reserved_memory(reserved, total_usable, free):
    s = hs(instances=[inst(ram=512), inst(ram=512)], reserved_host_memory_mb=reserved)
    assert (s["total_usable_ram_mb"], s["free_ram_mb"], s["memory_mb_used"]) == (total_usable, free, reserved + 1024)


@pytest.mark.parametrize(
    "n, ratio, free_ram, vcpus_used",
    [
        (10, 1.0, 15872 - 10 * 2048, 40),  # overcommitted: free goes negative (Nova: "free_ram_mb can be negative")
        (4, 1.5, 15872 - 4 * 2048, 16),
        (1, 1.0, 15872 - 2048, 4),
    ],
)
def test_overcommit_allocation_based(n, ratio, free_ram, vcpus_used):
    s = hs(instances=[inst(vcpus=4, ram=2048)] * n, ram_allocation_ratio=ratio, cpu_allocation_ratio=16.0)
    assert s["free_ram_mb"] == free_ram
    assert s["vcpus_used"] == vcpus_used
    assert (s["ram_allocation_ratio"], s["cpu_allocation_ratio"]) == (ratio, 16.0)
    # what the scheduler's RamFilter computes from these figures: placement's capacity
    usable = s["total_usable_ram_mb"] * ratio - (s["total_usable_ram_mb"] - s["free_ram_mb"])
    assert usable == (16384 - 512) * ratio - n * 2048


def test_shut_off_instances_claim_too_but_deleted_and_offloaded_do_not():
    s = hs(
        instances=[
            inst(vm_state="active"),
            inst(vm_state="stopped"),
            inst(vm_state="error"),
            inst(vm_state="deleted"),
            inst(vm_state="shelved_offloaded"),
            inst(vm_state="soft-delete"),
        ]
    )
    assert s["num_instances"] == 4
    assert s["vcpus_used"] == 4
    assert s["free_ram_mb"] == 15872 - 4 * 512


def test_foreign_domains_reduce_free_capacity():
    s = hs(instances=[inst(vcpus=2, ram=512)], other_domains=[{"vcpus": 3, "memory_mb": 1024}, {"vcpus": 1, "memory_mb": 64}])
    assert s["vcpus_used"] == 6
    assert s["free_ram_mb"] == 15872 - 512 - 1088
    assert s["memory_mb_used"] == 512 + 512 + 1088
    assert s["num_instances"] == 1  # foreign domains are no instances
    assert s["free_disk_mb"] == 102400 - 1024  # nor do they claim disk


@pytest.mark.parametrize(
    "flavors, free_disk_mb",
    [
        ([dict(disk=1)], 102400 - 1024),
        ([dict(disk=10, eph=5, swap=512)], 102400 - 10240 - 5120 - 512),
        ([dict(disk=0)], 102400),  # root disk from the image size: nothing claimed (Nova: root_gb 0)
        ([dict(disk=60), dict(disk=60)], 102400 - 122880),  # negative with disk overcommit
    ],
)
def test_disk_allocation(flavors, free_disk_mb):
    s = hs(instances=[inst(**f) for f in flavors])
    assert s["free_disk_mb"] == free_disk_mb
    assert s["disk_mb_used"] == 102400 - free_disk_mb


@pytest.mark.parametrize("reserved_mb, usable_gb", [(0, 100), (1, 99), (1024, 99), (1025, 98), (200 * 1024, 0)])
def test_reserved_disk_rounds_up_to_whole_gb(reserved_mb, usable_gb):
    s = hs(reserved_host_disk_mb=reserved_mb)
    assert s["total_usable_disk_gb"] == usable_gb
    assert s["free_disk_mb"] == usable_gb * 1024


@pytest.mark.parametrize(
    "total, free, over, local_gb, least",
    [
        (100 * GIB + 5, 80 * GIB + GIB // 2, 0, 100, 80),
        (100 * GIB, 80 * GIB, 10 * GIB, 100, 70),
        (100 * GIB, 80 * GIB, 10 * GIB + 1, 100, 69),  # Nova floors the result
        (100 * GIB, 1 * GIB, 5 * GIB, 100, -4),
    ],
)
def test_disk_available_least(total, free, over, local_gb, least):
    s = hs(disk_total_bytes=total, disk_free_bytes=free, disk_over_committed_bytes=over)
    assert (s["local_gb"], s["disk_available_least"]) == (local_gb, least)


@pytest.mark.parametrize(
    "vm_state, task_state, io",
    [
        ("building", None, 1),
        ("building", "spawning", 1),
        ("active", "rebuilding", 1),
        ("active", "resize_prep", 1),
        ("active", "resize_migrating", 1),
        ("active", "image_snapshot", 1),
        ("active", "image_backup", 1),
        ("active", "rescuing", 1),
        ("shelved_offloaded", "unshelving", 0),
        ("shelved", "unshelving", 1),
        ("active", None, 0),
        ("active", "powering-off", 0),
        ("active", "migrating", 0),
        ("stopped", "image_uploading", 0),
    ],
)
def test_num_io_ops_as_nova(vm_state, task_state, io):
    assert hs(instances=[inst(vm_state=vm_state, task_state=task_state)])["num_io_ops"] == io


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "4"])
def test_ratio_refused(value):
    with pytest.raises(lv.HostFactsError, match="cpu_allocation_ratio must be a number above 0"):
        lv.check_ratio(value, "cpu_allocation_ratio")


def test_aggregates_normalised():
    aggs = lv.normalise_aggregates([{"name": "ssd", "metadata": {"ssd": True, "ram_weight_multiplier": -1.0, "z": "a"}}, {"name": "gpu", "metadata": None}])
    assert aggs == [{"name": "ssd", "metadata": {"ram_weight_multiplier": "-1.0", "ssd": "true", "z": "a"}}, {"name": "gpu", "metadata": {}}]


@pytest.mark.parametrize(
    "aggs, message",
    [
        ("ssd", "must be a list"),
        ([["ssd"]], "aggregates\\[0\\] must be a dictionary"),
        ([{"name": ""}], "name must be a non-empty string"),
        ([{"name": "a", "hosts": []}], "unknown keys hosts"),
        ([{"name": "a", "metadata": {"k": [1]}}], "metadata.k must be a string"),
    ],
)
def test_aggregates_refused(aggs, message):
    with pytest.raises(lv.HostFactsError, match=message):
        lv.normalise_aggregates(aggs)


@pytest.mark.parametrize(
    "option, aggs, zone",
    [
        ("az1", [{"name": "a", "metadata": {"availability_zone": "az9"}}], "az1"),
        (None, [{"name": "a", "metadata": {"availability_zone": "az9"}}], "az9"),
        (None, [], "nova"),
    ],
)
def test_host_zone(option, aggs, zone):
    assert lv.host_zone(option, aggs) == zone


@pytest.mark.parametrize("value, result", [(None, None), ("", None), ("az1", "az1")])
def test_zone_ok(value, result):
    assert lv.check_zone(value) == result


@pytest.mark.parametrize("value", ["a z", "../x", "-az", "x" * 65, 3])
def test_zone_refused(value):
    with pytest.raises(lv.HostFactsError, match="availability_zone"):
        lv.check_zone(value)


# --------------------------------------------------------------------------- domains: lookup, state, wait


def test_lookup_domain():
    dom = FakeDomain(name="instance-x", uuid=DOMAIN_UUID, script=[(1, 1)])
    conn = FakeConn([dom], broken={"broken"})
    assert lv.lookup_domain(conn, "instance-x") is dom
    assert lv.lookup_domain(conn, DOMAIN_UUID.upper()) is dom
    assert conn.calls[-1] == ("uuid", DOMAIN_UUID)
    assert lv.lookup_domain(conn, "nope") is None
    assert lv.lookup_domain(conn, "11111111-2222-3333-4444-555555555555") is None
    with pytest.raises(lv.LibvirtError, match="looking up domain broken failed: cannot connect \\(libvirt error code 38\\)"):
        lv.lookup_domain(conn, "broken")
    with pytest.raises(lv.LibvirtError, match="not valid"):
        lv.lookup_domain(conn, "bad\nname")


def test_domain_state():
    assert lv.domain_state(FakeDomain(name="d", script=[(5, 1)])) == (5, 1, "shut off")
    assert lv.domain_state(FakeDomain(name="d", script=[(2, 0)])) == (2, 0, "idle")
    assert lv.domain_state(FakeDomain(name="d", script=[None])) == (lv.STATE_ABSENT, 0, "absent")
    assert lv.domain_state(None) == (lv.STATE_ABSENT, 0, "absent")
    with pytest.raises(lv.LibvirtError, match="reading the state of domain d failed: internal error"):
        lv.domain_state(FakeDomain(name="d", script=["boom"]))


def test_wait_reaches_state():
    clock = Clock()
    dom = FakeDomain(name="web", script=[(1, 1), (4, 1), (5, 1)])
    assert lv.wait_for_state(dom, lv.VIR_DOMAIN_SHUTOFF, 10, 1, clock=clock, sleep=clock.sleep) == (5, 1, "shut off")
    assert clock.sleeps == [1, 1]


def test_wait_timeout_names_domain_wanted_and_current():
    clock = Clock()
    dom = FakeDomain(name="instance-web", script=[(1, 1)])
    with pytest.raises(lv.WaitTimeout) as err:
        lv.wait_for_state(dom, (lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_CRASHED), 3, 1, clock=clock, sleep=clock.sleep)
    assert str(err.value) == "domain instance-web did not become shut off or crashed within 3 s: it is running (reason: booted)"
    assert err.value.current == (1, 1, "running")
    assert clock.now == 3


def test_wait_with_lookup_for_absent_and_defined():
    clock = Clock()
    found = iter([FakeDomain(name="x", script=[(5, 2)]), FakeDomain(name="x", script=[(5, 2)]), None])
    assert lv.wait_for_state(lambda: next(found), lv.STATE_ABSENT, 10, 0.5, clock=clock, sleep=clock.sleep)[2] == "absent"
    clock = Clock()
    with pytest.raises(lv.WaitTimeout, match="domain web did not become running within 2 s: it is absent$"):
        lv.wait_for_state(lambda: None, lv.VIR_DOMAIN_RUNNING, 2, 0.5, name="web", clock=clock, sleep=clock.sleep)


def test_wait_sleep_never_overshoots():
    clock = Clock()
    with pytest.raises(lv.WaitTimeout):
        lv.wait_for_state(FakeDomain(name="d", script=[(1, 1)]), 5, 2.5, 1, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [1, 1, 0.5]


@pytest.mark.parametrize("wanted", [9, (), ("running",), True])
def test_wait_wanted_checked(wanted):
    with pytest.raises(lv.LibvirtError, match="not libvirt states"):
        lv.wait_for_state(None, wanted, 1)


@pytest.mark.parametrize("timeout, interval, message", [(-1, 1, "timeout must be"), (1, 0, "interval must be"), ("5", 1, "timeout must be")])
def test_wait_timing_checked(timeout, interval, message):
    with pytest.raises(lv.LibvirtError, match=message):
        lv.wait_for_state(None, lv.VIR_DOMAIN_RUNNING, timeout, interval)


def test_libvirt_errors_context():
    with pytest.raises(lv.LibvirtError) as err:
        with lv.libvirt_errors("defining domain web"):
            raise FakeLibvirtError(27, "XML error: bad")
    assert str(err.value) == "defining domain web failed: XML error: bad (libvirt error code 27)"
    assert err.value.code == 27


# --------------------------------------------------------------------------- service record


def test_service_absent_is_enabled(tmp_path):
    path = str(tmp_path / "svc" / "service.json")
    assert lv.read_service_record(path, "node1") is None
    assert lv.service_state(None, "node1") == {"enabled": True, "disabled_reason": None, "updated_at": None, "host": "node1"}
    result = lv.set_service_state(path, "enabled", None, "node1")
    assert result["changed"] is False and not os.path.exists(path)


def test_service_disable_check_mode_then_real_then_idempotent(tmp_path):
    path = str(tmp_path / "svc" / "service.json")
    check = lv.set_service_state(path, "disabled", "maintenance", "node2", check_mode=True)
    assert check["changed"] is True and check["after"]["enabled"] is False
    assert not os.path.exists(path)
    real = lv.set_service_state(path, "disabled", "maintenance", "node2")
    assert real["changed"] is True
    with open(path, encoding="utf-8") as f:
        stored = json.load(f)
    assert stored == real["after"]
    assert set(stored) == {"enabled", "disabled_reason", "updated_at", "host"}
    assert (stored["enabled"], stored["disabled_reason"], stored["host"]) == (False, "maintenance", "node2")
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert os.listdir(os.path.dirname(path)) == ["service.json"]  # no temporary file left
    again = lv.set_service_state(path, "disabled", "maintenance", "node2")
    assert again["changed"] is False and again["after"]["updated_at"] == stored["updated_at"]
    other_reason = lv.set_service_state(path, "disabled", "hardware fault", "node2", check_mode=True)
    assert other_reason["changed"] is True and other_reason["before"]["disabled_reason"] == "maintenance"
    enable = lv.set_service_state(path, "enabled", None, "node2")
    assert enable["changed"] is True and enable["after"]["disabled_reason"] is None
    assert lv.read_service_record(path, "node2")["enabled"] is True


@pytest.mark.parametrize(
    "state, reason, message",
    [
        ("disabled", None, "disabled_reason is required with state=disabled"),
        ("disabled", "", "disabled_reason is required"),
        ("disabled", "   ", "1 to 255 printable characters"),
        ("disabled", "a\nb", "printable characters on one line"),
        ("disabled", "x" * 256, "1 to 255"),
        ("enabled", "why", "only used with state=disabled"),
        ("gone", None, "enabled or disabled"),
    ],
)
def test_service_bad_input(tmp_path, state, reason, message):
    with pytest.raises(lv.ServiceRecordError, match=message):
        lv.set_service_state(str(tmp_path / "s.json"), state, reason, "node1")


def test_service_record_of_another_host_is_refused(tmp_path):
    path = str(tmp_path / "s.json")
    lv.set_service_state(path, "disabled", "x", "node1")
    with pytest.raises(lv.ServiceRecordError, match="belongs to host node1, not node2: each compute host needs its own"):
        lv.set_service_state(path, "enabled", None, "node2")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ("[]", "no boolean 'enabled'"),
        ('{"enabled": "no"}', "no boolean 'enabled'"),
        ('{"enabled": false, "disabled_reason": 3}', "not a string"),
    ],
)
def test_service_record_broken(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(lv.ServiceRecordError, match=message):
        lv.read_service_record(str(path), "node1")


def test_service_read_error_is_clear(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(lv.ServiceRecordError, match="cannot read the service record .*/file/s.json: Not a directory"):
        lv.set_service_state(str(blocker / "s.json"), "disabled", "x", "node1")


def test_service_write_error_is_clear_and_leaves_nothing(tmp_path, monkeypatch):
    def refuse(_src, _dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lv.os, "replace", refuse)
    with pytest.raises(lv.ServiceRecordError, match="cannot write the service record .*s.json: No space left on device"):
        lv.set_service_state(str(tmp_path / "s.json"), "disabled", "x", "node1")
    assert os.listdir(str(tmp_path)) == []


# --------------------------------------------------------------------------- gathering with a fake libvirt


FOREIGN = (
    "<domain type='qemu'><name>foreign-1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>"
    "<memory unit='MiB'>300</memory><vcpu>1</vcpu><devices><disk type='file' device='disk'>"
    "<driver name='qemu' type='qcow2'/><source file='/x/f.qcow2'/><target dev='vda'/></disk></devices></domain>"
)


def test_gather_host_facts(tmp_path):
    inst_dom = FakeDomain(xml=DOMAIN, state=(5, 1), block={"vda": (GIB, GIB // 4, GIB // 4)})
    foreign = FakeDomain(xml=FOREIGN, state=(1, 1), block={"vda": (2 * GIB, 0, 0)})
    (tmp_path / "inst").mkdir()
    facts = lv.gather_host_facts(
        uri="qemu:///system",
        instances_path=str(tmp_path / "inst"),
        host="node2",
        availability_zone="az1",
        aggregates=[{"name": "ssd", "metadata": {"ssd": "true"}}],
        service_file=str(tmp_path / "none.json"),
        connector=lambda uri: FakeConn([inst_dom, foreign], caps=CAPS),
    )
    st = os.statvfs(str(tmp_path / "inst"))
    assert facts["host"] == "node2" and facts["hypervisor_hostname"] == "node2"
    assert (facts["hypervisor_type"], facts["virt_type"], facts["hypervisor_version"], facts["libvirt_version"]) == ("QEMU", "qemu", 7002022, 9000000)
    assert facts["uuid"] == "d0828ffe-6c7a-420e-ac9f-ed277f3a434a"
    assert facts["supported_instances"] == [["i686", "qemu", "hvm"], ["x86_64", "qemu", "hvm"]]
    assert facts["memory_mb_total"] == 24684084 // 1024  # node memory stats, not the NUMA cell sum (4698)
    assert facts["vcpus_total"] == 2
    assert facts["vcpus_used"] == 2 + 1
    assert facts["free_ram_mb"] == 24684084 // 1024 - 512 - 512 - 300
    assert facts["num_instances"] == 1
    assert facts["total_usable_disk_gb"] == st.f_blocks * st.f_frsize // GIB
    assert facts["free_disk_mb"] == facts["total_usable_disk_gb"] * 1024 - 1024
    over = (GIB - GIB // 4) + 2 * GIB
    assert facts["disk_available_least"] == ((st.f_bavail * st.f_frsize // GIB) * GIB - over) // GIB
    assert facts["instances"] == [
        {
            "uuid": DOMAIN_UUID,
            "name": "rec-1",
            "domain": "instance-" + DOMAIN_UUID,
            "project": "demo",
            "flavor": {"name": "m1.tiny", "vcpus": 2, "ram_mb": 512, "disk_gb": 1, "ephemeral_gb": 0, "swap_mb": 0, "extra_specs": {}},
            "vm_state": "active",
            "task_state": None,
            "power_state": 4,
            "domain_state": "shut off",
            "server_group": "grp1",
            "availability_zone": "az1",
            "host": "node2",
        }
    ]
    assert facts["other_domains"] == [
        {"name": "foreign-1", "uuid": "11111111-2222-3333-4444-555555555555", "domain_state": "running", "vcpus": 1, "memory_mb": 300, "reason": lv.NO_RECORD}
    ]
    assert facts["availability_zone"] == "az1"
    assert facts["aggregates"] == [{"name": "ssd", "metadata": {"ssd": "true"}}]
    assert facts["service"] == {
        "host": "node2",
        "binary": "nova-compute",
        "enabled": True,
        "disabled_reason": None,
        "updated_at": None,
        "forced_down": False,
        "up": True,
        "down_reason": None,
    }
    json.dumps(facts)  # plain JSON for Ansible


def test_gather_when_libvirt_does_not_answer(tmp_path):
    def refuse(uri):
        raise lv.LibvirtConnectionError(f"cannot connect to libvirt at {uri}: no socket")

    lv.set_service_state(str(tmp_path / "s.json"), "disabled", "maintenance", "node3")
    facts = lv.gather_host_facts(uri="qemu:///system", instances_path=str(tmp_path), host="node3", service_file=str(tmp_path / "s.json"), connector=refuse)
    assert facts["service"]["up"] is False and "no socket" in facts["service"]["down_reason"]
    assert (facts["service"]["enabled"], facts["service"]["disabled_reason"]) == (False, "maintenance")
    assert (facts["vcpus_total"], facts["total_usable_ram_mb"], facts["num_instances"], facts["supported_instances"]) == (0, 0, 0, [])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(uri="qemu+tcp://h/system"), "qemu\\+tcp"),
        (dict(instances_path="/nonexistent/virtcloud"), "instances_path /nonexistent/virtcloud does not exist"),
        (dict(instances_path="relative"), "absolute path"),
        (dict(host="bad host"), "not a valid host name"),
        (dict(reserved_host_memory_mb=-1), "reserved_host_memory_mb must be a whole number"),
        (dict(ram_allocation_ratio=0.0), "ram_allocation_ratio must be a number above 0"),
    ],
)
def test_gather_bad_options(tmp_path, kwargs, message):
    args = dict(
        uri="qemu:///system",
        instances_path=str(tmp_path),
        host="node1",
        service_file=str(tmp_path / "s.json"),
        connector=lambda uri: pytest.fail("must not connect"),
    )
    args.update(kwargs)
    with pytest.raises(VirtcloudError, match=message):
        lv.gather_host_facts(**args)


def test_host_figures_count_what_libvirt_saw_and_the_pending_claims(tmp_path):
    seen = {"vcpus_total": 8, "memory_mb_total": 16384, "disk_over_committed_bytes": 2 * GIB, "instances": [inst(vcpus=2, ram=1024)], "other_domains": []}
    options = lv.allocation_options(reserved_host_memory_mb=0)
    alone = lv.host_figures(seen, str(tmp_path), options)
    claimed = lv.host_figures(seen, str(tmp_path), options, [inst(vcpus=1, ram=512, task_state="spawning")])
    assert (alone["vcpus_used"], alone["memory_mb_used"], alone["num_instances"]) == (2, 1024, 1)
    assert (claimed["vcpus_used"], claimed["memory_mb_used"], claimed["num_instances"]) == (3, 1536, 2)
    assert claimed["disk_available_least"] == alone["disk_available_least"]  # over-commit counted in both
    assert len(seen["instances"]) == 1  # what libvirt saw is not changed
    with pytest.raises(VirtcloudError, match="cpu_allocation_ratio"):
        lv.allocation_options(cpu_allocation_ratio=0)
    with pytest.raises(VirtcloudError, match="does not exist"):
        lv.host_figures(seen, str(tmp_path / "missing"), options)


class _Conn:
    def __init__(self, log):
        self.log = log

    def close(self):
        self.log.append("closed")
        return 0


def test_connection_is_closed_when_the_outermost_block_ends(monkeypatch):
    log = []
    monkeypatch.setattr(lv, "connect", lambda uri: lv._CONNECTIONS.setdefault(uri, _Conn(log)))
    with lv.connection("qemu:///system") as conn:
        with lv.connection("qemu:///system") as again:
            assert again is conn
        assert log == []  # the inner block leaves it open for the outer one
    assert log == ["closed"] and lv._CONNECTIONS == {}
    with pytest.raises(RuntimeError), lv.connection("qemu:///system"):
        raise RuntimeError("boom")
    assert log == ["closed", "closed"] and lv._CONNECTIONS == {}
    with lv.connections():
        pass  # nothing opened, nothing to close
    assert log == ["closed", "closed"]
