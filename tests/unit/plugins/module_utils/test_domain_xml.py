# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Domain XML: what the builder writes, what the readers return, and what the comparison ignores."""

from __future__ import annotations

import copy
import json
import os

import pytest
from lxml import etree

from ansible_collections.virtcloud.compute.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import Instance, InstanceError

UUID = "3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b"
IDIR = f"/var/lib/virtcloud/instances/{UUID}"
CACHE = "/var/lib/virtcloud/instances/_base"
NETS = {"net1": {"bridge": "vcbr0", "mtu": 1450}}
NS = {"vc": "https://virtcloud.invalid/xmlns/compute/1"}
LIBVIRT_RNG = "/usr/share/libvirt/schemas/domain.rng"


def record(**overrides):
    flavor = {"name": "m1.small", "vcpus": 2, "ram_mb": 512, "disk_gb": 1, "ephemeral_gb": 0, "swap_mb": 0}
    flavor.update(overrides.pop("flavor", {}))
    data = {
        "uuid": UUID,
        "name": "web-1",
        "project": "demo",
        "flavor": flavor,
        "image": {"id": "vctest", "properties": {"os_distro": "debian", "note": "<x/> & 'q' \"d\""}},
        "ports": [{"network": "net1", "mac": "fa:16:3e:00:00:01", "ip": "10.0.0.5"}],
        "vm_state": "active",
        "task_state": None,
        "power_state": 1,
        "host": "node1",
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
        "launched_at": "2024-05-01T12:00:00Z",
    }
    data.update(overrides)
    return Instance.from_dict(data)


def build(rec=None, **kwargs):
    kwargs.setdefault("instance_dir", IDIR)
    kwargs.setdefault("networks", NETS)
    return dx.build_domain(record() if rec is None else rec, **kwargs)


def parse(xml):
    return etree.fromstring(xml.encode())


def disks_of(root):
    return [(d.find("target").get("dev"), d.find("source").get("file").rsplit("/", 1)[1], d.find("driver").get("type")) for d in root.iterfind("devices/disk")]


# --------------------------------------------------------------------------- build


def test_domain_elements():
    root = parse(build())
    assert root.tag == "domain" and root.get("type") == "kvm"
    assert root.findtext("name") == f"instance-{UUID}" == dx.domain_name(UUID)
    assert root.findtext("uuid") == UUID
    assert root.findtext("title") == "web-1"
    assert root.find("memory").get("unit") == "KiB" and root.findtext("memory") == str(512 * 1024)
    assert root.find("currentMemory").get("unit") == "KiB" and root.findtext("currentMemory") == "524288"
    assert root.findtext("vcpu") == "2" and root.find("vcpu").get("placement") == "static"
    os_type = root.find("os/type")
    assert (os_type.text, os_type.get("arch"), os_type.get("machine")) == ("hvm", "x86_64", "pc")
    assert [b.get("dev") for b in root.iterfind("os/boot")] == ["hd"]
    assert [f.tag for f in root.find("features")] == ["acpi", "apic"]
    assert root.find("cpu").attrib == {"mode": "host-model"}
    assert root.find("clock").get("offset") == "utc"
    assert [(t.get("name"), t.get("tickpolicy"), t.get("present")) for t in root.iterfind("clock/timer")] == [
        ("pit", "delay", None),
        ("rtc", "catchup", None),
        ("hpet", None, "no"),
    ]
    assert (root.findtext("on_poweroff"), root.findtext("on_reboot"), root.findtext("on_crash")) == ("destroy", "restart", "destroy")


def test_disks_of_a_plain_flavor():
    root = parse(build())
    assert disks_of(root) == [("vda", "disk", "qcow2"), ("vdb", "disk.config", "raw")]
    for disk in root.iterfind("devices/disk"):
        assert (disk.get("type"), disk.get("device")) == ("file", "disk")
        assert disk.find("target").get("bus") == "virtio"
        assert disk.find("driver").get("name") == "qemu"
        assert disk.find("driver").get("cache") == "none"
        assert disk.find("source").get("file").startswith(IDIR + "/")
        assert disk.find("readonly") is None  # a read-only disk would not be copied by a block migration
    root_disk, config = root.findall("devices/disk")
    assert root_disk.find("driver").get("discard") == "unmap"
    assert config.find("driver").get("discard") is None


@pytest.mark.parametrize(
    "ephemeral_gb, swap_mb, config_drive, expected",
    [
        (0, 0, True, [("vda", "disk", "qcow2"), ("vdb", "disk.config", "raw")]),
        (0, 0, False, [("vda", "disk", "qcow2")]),
        (5, 0, True, [("vda", "disk", "qcow2"), ("vdb", "disk.eph0", "qcow2"), ("vdc", "disk.config", "raw")]),
        (0, 256, True, [("vda", "disk", "qcow2"), ("vdb", "disk.swap", "qcow2"), ("vdc", "disk.config", "raw")]),
        (5, 256, True, [("vda", "disk", "qcow2"), ("vdb", "disk.eph0", "qcow2"), ("vdc", "disk.swap", "qcow2"), ("vdd", "disk.config", "raw")]),
        (5, 256, False, [("vda", "disk", "qcow2"), ("vdb", "disk.eph0", "qcow2"), ("vdc", "disk.swap", "qcow2")]),
    ],
)
def test_ephemeral_swap_and_config_drive_presence(ephemeral_gb, swap_mb, config_drive, expected):
    rec = record(flavor={"ephemeral_gb": ephemeral_gb, "swap_mb": swap_mb}, config_drive=config_drive)
    assert disks_of(parse(build(rec))) == expected


def test_instance_disks_sizes():
    rec = record(flavor={"disk_gb": 0, "ephemeral_gb": 2, "swap_mb": 256})
    assert [(d["role"], d["target"], d["size_bytes"]) for d in dx.instance_disks(rec, instance_dir=IDIR)] == [
        ("root", "vda", None),
        ("ephemeral", "vdb", 2 * 1024**3),
        ("swap", "vdc", 256 * 1024**2),
        ("config", "vdd", None),
    ]
    assert dx.instance_disks(record(), instance_dir=IDIR)[0]["size_bytes"] == 1024**3


def test_rescue_layout():
    rec = record(flavor={"ephemeral_gb": 5, "swap_mb": 256})
    xml = build(rec, rescue=True)
    root = parse(xml)
    assert disks_of(root) == [("vda", "disk.rescue", "qcow2"), ("vdb", "disk", "qcow2"), ("vdc", "disk.config", "raw")]
    assert [b.get("dev") for b in root.iterfind("os/boot")] == ["hd"]
    assert root.find("metadata/vc:instance", NS).get("rescue") == "yes"
    assert dx.is_rescue(xml) is True
    assert dx.is_rescue(build(rec)) is False
    # a record in vm_state rescued gets the rescue layout unless told otherwise
    rescued = record(vm_state="rescued")
    assert disks_of(parse(build(rescued)))[0] == ("vda", "disk.rescue", "qcow2")
    assert disks_of(parse(build(rescued, rescue=False)))[0] == ("vda", "disk", "qcow2")


def test_rescue_disk_from_the_image_cache():
    root = parse(build(rescue=True, rescue_disk=f"{CACHE}/abc", image_cache=CACHE))
    assert root.find("devices/disk/source").get("file") == f"{CACHE}/abc"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rescue": True, "rescue_disk": "/etc/shadow"}, "outside"),
        ({"rescue": True, "rescue_disk": f"{CACHE}/abc"}, "outside"),  # no image_cache given
        ({"rescue": True, "rescue_disk": f"{IDIR}/../other/disk"}, "not valid"),
        ({"rescue": True, "rescue_disk": f"{IDIR}/disk.rescue\n"}, "not valid"),
        ({"rescue": True, "rescue_disk": "disk.rescue"}, "not valid"),
        ({"rescue": True, "rescue_disk": IDIR}, "outside"),
        ({"rescue": False, "rescue_disk": f"{IDIR}/disk.rescue"}, "only used with rescue=true"),
        ({"rescue": "yes"}, "rescue must be true, false or null"),
        ({"rescue": True, "rescue_disk": f"{IDIR}/x", "image_cache": "relative/_base"}, "image_cache"),
    ],
)
def test_rescue_disk_paths_are_checked(kwargs, message):
    with pytest.raises(dx.DomainXmlError, match=message):
        build(**kwargs)


def test_nic():
    root = parse(build())
    (nic,) = root.findall("devices/interface")
    assert nic.get("type") == "bridge"
    assert nic.find("mac").get("address") == "fa:16:3e:00:00:01"
    assert nic.find("source").attrib == {"bridge": "vcbr0"}
    assert nic.find("model").get("type") == "virtio"
    assert nic.find("mtu").get("size") == "1450"
    assert nic.find("target") is None  # the tap name is libvirt's choice


def test_several_nics_in_port_order_on_bridges_and_networks():
    rec = record(ports=[{"network": "net1", "mac": "fa:16:3e:00:00:01"}, {"network": "lab", "mac": "FA:16:3E:00:00:02"}])
    root = parse(build(rec, networks={"net1": {"bridge": "vcbr0"}, "lab": {"libvirt_network": "default"}}))
    nics = root.findall("devices/interface")
    assert [(n.get("type"), n.find("mac").get("address"), dict(n.find("source").attrib)) for n in nics] == [
        ("bridge", "fa:16:3e:00:00:01", {"bridge": "vcbr0"}),
        ("network", "fa:16:3e:00:00:02", {"network": "default"}),
    ]
    assert all(n.find("mtu") is None for n in nics)


def test_no_ports_no_nic():
    assert parse(build(record(ports=[]), networks=None)).find("devices/interface") is None


@pytest.mark.parametrize(
    "networks, message",
    [
        ({}, "on network net1, which networks does not map"),
        (None, "on network net1"),
        ({"net1": {"bridge": "vcbr0-this-is-too-long"}}, "bridge name"),
        ({"net1": {"bridge": "br'><x/>"}}, "bridge name"),
        ({"net1": {"bridge": "br;rm -rf"}}, "bridge name"),
        ({"net1": {"bridge": "../br"}}, "bridge name"),
        ({"net1": {"bridge": "br0\n"}}, "bridge name"),
        ({"net1": {"bridge": "br0", "libvirt_network": "default"}}, "exactly one of"),
        ({"net1": {}}, "exactly one of"),
        ({"net1": {"bridge": "br0", "mtu": 20}}, "mtu must be a whole number from 68 to 65535"),
        ({"net1": {"bridge": "br0", "mtu": "1500"}}, "mtu"),
        ({"net1": {"bridge": "br0", "vlan": 5}}, "unknown keys vlan"),
        ({"net1": {"libvirt_network": "n'><x/>"}}, "libvirt network name"),
        ({"net1": "vcbr0"}, "must be a mapping"),
        (["net1"], "networks must be a mapping"),
    ],
)
def test_bad_networks(networks, message):
    with pytest.raises(InstanceError, match=message):
        build(networks=networks)


def test_bridge_name_limit():
    dx.validate_bridge("a" * 15)
    with pytest.raises(dx.DomainXmlError, match="1 to 15 characters"):
        dx.validate_bridge("a" * 16)


def test_serial_console_devices():
    root = parse(build())
    (serial,) = root.findall("devices/serial")
    assert serial.get("type") == "pty"
    assert serial.find("log").attrib == {"file": f"{IDIR}/console.log", "append": "on"}
    (console,) = root.findall("devices/console")
    assert console.get("type") == "pty"
    assert console.find("target").attrib == {"type": "serial", "port": "0"}
    assert root.find("devices/memballoon").get("model") == "virtio"
    assert root.find("devices/memballoon/stats").get("period") == "10"
    rng = root.find("devices/rng")
    assert rng.get("model") == "virtio" and rng.find("backend").get("model") == "random" and rng.findtext("backend") == "/dev/urandom"
    assert [d.tag for d in root.find("devices")] == ["disk", "disk", "interface", "serial", "console", "memballoon", "rng"]


@pytest.mark.parametrize(
    "domain_type, kwargs, expected",
    [
        ("kvm", {}, ("host-model", None, None)),
        ("qemu", {}, ("custom", "exact", "qemu64")),
        ("qemu", {"cpu_model": "Haswell-noTSX"}, ("custom", "exact", "Haswell-noTSX")),
        ("kvm", {"cpu_mode": "host-passthrough"}, ("host-passthrough", None, None)),
    ],
)
def test_cpu(domain_type, kwargs, expected):
    root = parse(build(domain_type=domain_type, **kwargs))
    cpu = root.find("cpu")
    assert root.get("type") == domain_type
    assert (cpu.get("mode"), cpu.get("match"), cpu.findtext("model")) == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"domain_type": "xen"}, "domain_type 'xen'"),
        ({"machine": "pc'/><x"}, "machine"),
        ({"machine": "PC"}, "machine"),
        ({"arch": "sparc"}, "arch 'sparc'"),
        ({"cpu_mode": "weird"}, "cpu_mode"),
        ({"cpu_mode": "host-model", "cpu_model": "qemu64"}, "cpu_model is only used with cpu_mode custom"),
        ({"cpu_mode": "custom", "cpu_model": "q<x>"}, "cpu_model"),
        ({"instance_dir": "var/lib/x/" + UUID}, "instance_dir"),
        ({"instance_dir": f"/var/lib/virtcloud/instances/../{UUID}"}, "instance_dir"),
        ({"instance_dir": f"/var/lib/virtcloud//instances/{UUID}"}, "instance_dir"),
        ({"instance_dir": f"/var/lib/virtcloud/instances/{UUID}/"}, "instance_dir"),
        ({"instance_dir": "/var/lib/virtcloud/instances/other"}, "must be <instances_path>/" + UUID),
        ({"instance_dir": f"/var/lib/a'><x/>/{UUID}"}, "instance_dir"),
        ({"instance_dir": f"/var/lib/a b/{UUID}"}, "instance_dir"),
        ({"instance_dir": f"/var/lib/$(id)/{UUID}"}, "instance_dir"),
        ({"instance_dir": None}, "instance_dir"),
    ],
)
def test_bad_build_options(kwargs, message):
    with pytest.raises(dx.DomainXmlError, match=None) as err:
        build(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": "a'><x/>"}, "instance name"),
        ({"name": "a;rm -rf"}, "instance name"),
        ({"name": "../x"}, "instance name"),
        ({"ports": [{"network": "net1", "mac": "fa:16:3e:00:00:01'/>"}]}, "MAC address"),
        ({"ports": [{"network": "net1", "mac": "01:00:5e:00:00:01"}]}, "multicast"),
        ({"flavor": {"vcpus": 0}}, "vcpus"),
    ],
)
def test_bad_records_never_reach_xml(change, message):
    rec = record().to_dict()
    flavor = change.pop("flavor", None)
    rec.update(change)
    if flavor:
        rec["flavor"].update(flavor)
    with pytest.raises(InstanceError, match=message):
        build(rec)


def test_changed_record_object_is_checked_again():
    rec = record()
    rec.name = "x'><y/>"
    with pytest.raises(InstanceError, match="instance name"):
        build(rec)


def test_record_dict_is_accepted():
    assert build(record().to_dict()) == build(record())


def test_special_characters_are_escaped_not_interpolated():
    rec = record(meta={"k": "</vc:instance><evil/>"})
    xml = build(rec)
    root = parse(xml)
    assert root.find(".//evil") is None
    assert dx.read_record(xml)["meta"] == {"k": "</vc:instance><evil/>"}
    assert dx.read_record(xml)["image"]["properties"]["note"] == "<x/> & 'q' \"d\""


@pytest.mark.skipif(not os.path.exists(LIBVIRT_RNG), reason="libvirt's RelaxNG schema is not installed")
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"domain_type": "qemu", "rescue": True},
        {
            "rec": record(
                flavor={"ephemeral_gb": 1, "swap_mb": 64},
                ports=[{"network": "net1", "mac": "fa:16:3e:00:00:01"}, {"network": "lab", "mac": "fa:16:3e:00:00:02"}],
            ),
            "networks": {"net1": {"bridge": "vcbr0", "mtu": 1450}, "lab": {"libvirt_network": "default"}},
        },
    ],
)
def test_valid_against_libvirts_schema(kwargs):
    schema = etree.RelaxNG(etree.parse(LIBVIRT_RNG))
    doc = etree.fromstring(build(**kwargs).encode())
    assert schema.validate(doc), schema.error_log


# --------------------------------------------------------------------------- read


def test_metadata_round_trip():
    rec = record(
        meta={"a": "b"},
        actions=[
            {
                "action": "create",
                "request_id": "req-0b0e4c83-2a3f-4c52-9d3f-2b8e2f0d4c11",
                "start_time": "2024-05-01T12:00:00Z",
                "finish_time": "2024-05-01T12:00:09Z",
                "result": "Success",
            }
        ],
    )
    xml = build(rec)
    element = parse(xml).find("metadata/vc:instance", NS)
    assert element.attrib == {"uuid": UUID, "name": "web-1", "vm_state": "active", "task_state": "", "rescue": "no"}
    assert json.loads(element.text) == rec.to_dict()
    assert dx.read_record(xml) == rec.to_dict()
    assert dx.read_instance(xml).to_dict() == rec.to_dict()


def test_read_record_without_metadata_and_with_foreign_metadata():
    root = parse(build())
    metadata = root.find("metadata")
    foreign = etree.SubElement(metadata, "{http://libosinfo.org/xmlns/libvirt/domain/1.0}libosinfo")
    etree.SubElement(foreign, "{http://libosinfo.org/xmlns/libvirt/domain/1.0}os", id="http://debian.org/debian/12")
    assert dx.read_record(etree.tostring(root, encoding="unicode")) == record().to_dict()
    metadata.remove(metadata.find("vc:instance", NS))
    assert dx.read_record(etree.tostring(root)) is None
    root.remove(metadata)
    assert dx.read_record(etree.tostring(root)) is None
    assert dx.is_rescue(etree.tostring(root)) is False


def test_read_record_rejects_a_bad_record():
    root = parse(build())
    element = root.find("metadata/vc:instance", NS)
    data = json.loads(element.text)
    data["name"] = "a'><x/>"
    element.text = json.dumps(data)
    with pytest.raises(dx.DomainXmlError, match="the instance record in the domain metadata is not valid: instance name"):
        dx.read_record(etree.tostring(root))
    element.text = "{not json"
    with pytest.raises(dx.DomainXmlError, match="not valid JSON"):
        dx.read_record(etree.tostring(root))


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<domain><name>x</name>", "does not parse"),
        ("<network/>", "must have <domain> as its root element"),
        (b"\xff\xfe", "does not parse"),
        (42, "must be a string"),
    ],
)
def test_unparseable_xml(xml, message):
    with pytest.raises(dx.DomainXmlError, match=message):
        dx.read_record(xml)


def test_entities_are_not_resolved():
    xml = (
        '<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        '<domain><devices><interface><mac address="&e;"/></interface></devices></domain>'
    )
    with pytest.raises(dx.DomainXmlError, match="does not parse: Attribute references external entity"):
        dx.domain_macs(xml)
    xml = xml.replace('<domain><devices><interface><mac address="&e;"/>', '<domain><title>&e;</title><devices><interface><mac address="fa:16:3e:00:00:01"/>')
    assert dx.domain_macs(xml) == ["fa:16:3e:00:00:01"]
    assert "root:" not in dx.normalise(xml)


def test_domain_disks_and_macs():
    rec = record(flavor={"swap_mb": 128}, ports=[{"network": "net1", "mac": "fa:16:3e:00:00:01"}, {"network": "net1", "mac": "fa:16:3e:00:00:09"}])
    xml = build(rec)
    assert dx.domain_disks(xml) == [
        {"target": "vda", "bus": "virtio", "source": f"{IDIR}/disk", "format": "qcow2", "device": "disk", "type": "file"},
        {"target": "vdb", "bus": "virtio", "source": f"{IDIR}/disk.swap", "format": "qcow2", "device": "disk", "type": "file"},
        {"target": "vdc", "bus": "virtio", "source": f"{IDIR}/disk.config", "format": "raw", "device": "disk", "type": "file"},
    ]
    assert dx.domain_macs(xml) == ["fa:16:3e:00:00:01", "fa:16:3e:00:00:09"]


def test_domain_disks_of_a_network_volume():
    root = parse(build())
    vol = etree.SubElement(root.find("devices"), "disk", type="network", device="disk")
    etree.SubElement(vol, "driver", name="qemu", type="raw", cache="none")
    src = etree.SubElement(vol, "source", protocol="iscsi", name="iqn.2010-10.org.openstack:volume-1/1")
    etree.SubElement(src, "host", name="10.0.0.2", port="3260")
    etree.SubElement(vol, "target", dev="vdc", bus="virtio")
    assert dx.domain_disks(etree.tostring(root))[-1] == {
        "target": "vdc",
        "bus": "virtio",
        "source": "iqn.2010-10.org.openstack:volume-1/1",
        "format": "raw",
        "device": "disk",
        "type": "network",
    }


# --------------------------------------------------------------------------- normalise / differs


def libvirt_nic(nic, running):
    if running:
        nic.find("source").addnext(etree.Element("target", dev="vnet0"))
        etree.SubElement(nic, "alias", name="net0")
    etree.SubElement(nic, "address", type="pci", domain="0x0000", bus="0x00", slot="0x03", function="0x0")


def libvirt_view(xml, *, running=True):
    """The built XML as libvirt 9 shows it after define (and, running, after start)."""
    root = parse(xml)
    if running:
        root.set("id", "7")
    root.find("os/type").set("machine", "pc-i440fx-7.2")
    root.find("cpu").set("check", "partial")
    resource = etree.Element("resource")
    etree.SubElement(resource, "partition").text = "/machine"
    root.find("vcpu").addnext(resource)
    devices = root.find("devices")
    emulator = etree.Element("emulator")
    emulator.text = "/usr/bin/qemu-system-x86_64"
    devices.insert(0, emulator)
    for slot, disk in enumerate(root.iterfind("devices/disk"), start=4):
        etree.SubElement(disk, "address", type="pci", domain="0x0000", bus="0x00", slot=f"0x{slot:02x}", function="0x0")
        if running:
            disk.find("source").set("index", str(slot))
            backing = etree.SubElement(disk, "backingStore", type="file", index="9")
            etree.SubElement(backing, "format", type="raw")
            etree.SubElement(backing, "source", file=f"{CACHE}/0123abcd")
            etree.SubElement(disk, "alias", name=f"virtio-disk{slot - 4}")
    for index, model in enumerate(("piix3-uhci", "pci-root", "piix3")):
        ctrl = etree.Element("controller", type="usb" if index == 0 else "pci" if index == 1 else "ide", index="0", model=model)
        devices.find("serial").addprevious(ctrl)
    for nic in devices.iterfind("interface"):
        libvirt_nic(nic, running)
    serial = devices.find("serial")
    target = etree.SubElement(serial, "target", type="isa-serial", port="0")
    etree.SubElement(target, "model", name="isa-serial")
    console = devices.find("console")
    console.insert(0, copy.deepcopy(serial.find("log")))
    if running:
        serial.insert(0, etree.Element("source", path="/dev/pts/3"))
        console.set("tty", "/dev/pts/3")
        console.insert(0, etree.Element("source", path="/dev/pts/3"))
    for kind in ("mouse", "keyboard"):
        devices.find("memballoon").addprevious(etree.Element("input", type=kind, bus="ps2"))
    devices.find("memballoon").addprevious(etree.Element("audio", id="1", type="none"))
    etree.SubElement(devices.find("memballoon"), "address", type="pci", domain="0x0000", bus="0x00", slot="0x06", function="0x0")
    etree.SubElement(devices.find("rng"), "address", type="pci", domain="0x0000", bus="0x00", slot="0x07", function="0x0")
    seclabel = etree.SubElement(root, "seclabel", type="dynamic", model="dac", relabel="yes")
    etree.SubElement(seclabel, "label").text = "+64055:+64055"
    # libvirt writes with its own attribute order and indentation
    text = etree.tostring(root, encoding="unicode")
    return text.replace('cache="none" discard="unmap" name="qemu" type="qcow2"', 'type="qcow2" name="qemu" discard="unmap" cache="none"')


@pytest.mark.parametrize("running", [False, True])
def test_libvirt_additions_do_not_count(running):
    wanted = build()
    current = libvirt_view(wanted, running=running)
    assert dx.normalise(current) != dx.normalise(wanted)  # the machine expansion shows in a plain normalise
    assert not dx.differs(current, wanted)
    before, after = dx.normalised_pair(current, wanted)
    assert before == after
    for runtime_only in ("seclabel", "alias", "<address", "vnet0", "index=", "backingStore", "/dev/pts", "emulator", "controller", "check=", 'id="7"'):
        assert runtime_only not in before


def test_machine_alias_matching_is_exact():
    wanted = build()
    current = libvirt_view(wanted).replace("pc-i440fx-7.2", "pc-q35-7.2")
    assert dx.differs(current, wanted)
    q35 = build(machine="q35")
    assert not dx.differs(libvirt_view(q35).replace("pc-i440fx-7.2", "pc-q35-7.2"), q35)


def test_normalise_is_canonical():
    wanted = build()
    once = dx.normalise(wanted)
    assert dx.normalise(once) == once
    root = parse(wanted)
    clock = root.find("clock")
    timers = list(clock)
    for timer in timers:
        clock.remove(timer)
    for timer in reversed(timers):
        clock.append(timer)
    devices = root.find("devices")
    devices.append(devices.find("interface"))  # libvirt's device order differs from ours
    spaced = etree.tostring(root, pretty_print=True, encoding="unicode").replace("<devices>", "<devices>\n\n   ")
    assert dx.normalise(spaced) == once
    record_json = json.loads(root.find("metadata/vc:instance", NS).text)
    root.find("metadata/vc:instance", NS).text = json.dumps(record_json, indent=3)
    assert dx.normalise(etree.tostring(root)) == once
    assert 'cache="none" discard="unmap" name="qemu" type="qcow2"' in once


def _edit(xml, fn):
    root = parse(libvirt_view(xml))
    fn(root)
    return etree.tostring(root, encoding="unicode")


def _set(path, attr, value):
    def change(root):
        root.find(path).set(attr, value)

    return change


def _text(path, value):
    def change(root):
        root.find(path).text = value

    return change


def _remove(path):
    def change(root):
        element = root.find(path)
        element.getparent().remove(element)

    return change


def _add(path, tag, **attrs):
    def change(root):
        etree.SubElement(root.find(path), tag, **attrs)

    return change


def _extra_disk(root):
    disk = copy.deepcopy(root.find("devices/disk"))
    disk.find("source").set("file", f"{IDIR}/disk.local")
    disk.find("target").set("dev", "vdz")
    root.find("devices/disk").addnext(disk)


def _swap_disk_order(root):
    first, second = root.findall("devices/disk")[:2]
    first.addprevious(second)


@pytest.mark.parametrize(
    "change",
    [
        _text("memory", "1048576"),
        _text("currentMemory", "262144"),
        _text("vcpu", "4"),
        _set("vcpu", "current", "1"),
        _text("name", "instance-other"),
        _text("title", "web-2"),
        _set(".", "type", "qemu"),
        _set("os/type", "arch", "aarch64"),
        _set("os/boot", "dev", "network"),
        _remove("features/acpi"),
        _set("cpu", "mode", "host-passthrough"),
        _set("clock", "offset", "localtime"),
        _text("on_crash", "restart"),
        _set("devices/disk/driver", "cache", "writeback"),
        _set("devices/disk/driver", "type", "raw"),
        _set("devices/disk/source", "file", "/var/lib/other/disk"),
        _set("devices/disk/target", "dev", "vdq"),
        _set("devices/disk/target", "bus", "scsi"),
        _add("devices/disk", "readonly"),
        _remove("devices/disk[2]"),
        _extra_disk,
        _swap_disk_order,
        _set("devices/interface/mac", "address", "fa:16:3e:00:00:02"),
        _set("devices/interface/source", "bridge", "vcbr1"),
        _set("devices/interface/model", "type", "e1000"),
        _remove("devices/interface/mtu"),
        _remove("devices/interface"),
        _set("devices/serial/log", "file", "/tmp/console.log"),
        _remove("devices/serial/log"),
        _remove("devices/console"),
        _remove("devices/rng"),
        _set("devices/memballoon", "model", "none"),
    ],
)
def test_real_changes_are_detected(change):
    wanted = build()
    assert not dx.differs(libvirt_view(wanted), wanted)
    assert dx.differs(_edit(wanted, change), wanted)


def test_mac_case_does_not_count():
    wanted = build()
    assert not dx.differs(_edit(wanted, _set("devices/interface/mac", "address", "FA:16:3E:00:00:01")), wanted)


def test_record_changes_count_unless_excluded():
    wanted = build()
    rec = record()
    rec.vm_state = "stopped"
    current = libvirt_view(build(rec))
    assert dx.differs(current, wanted)
    assert not dx.differs(current, wanted, include_record=False)
    assert dx.differs(libvirt_view(build(record(ports=[]), networks=None)), wanted, include_record=False)


def test_network_interface_bridge_picked_by_libvirt_does_not_count():
    rec = record(ports=[{"network": "lab", "mac": "fa:16:3e:00:00:01"}])
    wanted = build(rec, networks={"lab": {"libvirt_network": "default"}})
    root = parse(wanted)
    source = root.find("devices/interface/source")
    source.set("bridge", "virbr0")
    source.set("portid", "5b0c5a6e-0000-4000-8000-000000000001")
    assert not dx.differs(etree.tostring(root), wanted)
    source.set("network", "other")
    assert dx.differs(etree.tostring(root), wanted)


def test_without_lxml(monkeypatch):
    monkeypatch.setattr(dx, "HAS_LXML", False)
    with pytest.raises(dx.DomainXmlError, match="install python3-lxml"):
        build()
    with pytest.raises(dx.DomainXmlError, match="install python3-lxml"):
        dx.read_record("<domain/>")
