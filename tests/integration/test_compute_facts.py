# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""compute_facts and compute_service on the lab: the host as Nova's HostState, checked against the host itself."""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid

import pytest

from harness import GUEST_IMAGE, TOP, run_module, run_playbook

from ansible_collections.virtcloud.compute.plugins.module_utils._domain_xml import build_domain, domain_name
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import Instance
from ansible_collections.virtcloud.compute.plugins.plugin_utils import _scheduler as sched

PLAYBOOKS = os.path.join(TOP, "tests", "integration", "playbooks")
# /run is a private tmpfs on every lab host: each host has its own record, gone with the lab
SERVICE_FILE = "/run/virtcloud/service.json"


def playbook(lab, name, extra, check=False, diff=False):
    result = run_playbook(os.path.join(PLAYBOOKS, name), extra, inventory=lab.inventory, check=check, diff=diff, timeout=300)
    return result.rc, result.stdout + result.stderr, result.recap


def gather(lab, host, **extra):
    with tempfile.TemporaryDirectory() as out:
        rc, output, _recap = playbook(lab, "compute_facts_gather.yml", dict(target=host, out_dir=out, service_file=SERVICE_FILE, **extra))
        assert rc == 0, output[-3000:]
        with open(os.path.join(out, host + ".json"), encoding="utf-8") as f:
            return json.load(f)


def set_service(lab, host, state, reason="", check=False, diff=False):
    rc, output, recap = playbook(
        lab, "compute_facts_service.yml", dict(target=host, service_state=state, service_reason=reason, service_file=SERVICE_FILE), check=check, diff=diff
    )
    assert rc == 0, output[-3000:]
    return recap[host]["changed"], output


def host_python(lab, host, code):
    """Run CODE with the host's own Python; returns its output."""
    return lab.ssh(host, "/usr/bin/python3 -", data=code)


def test_node1_facts_match_the_host(lab):
    facts = gather(lab, "node1")
    assert facts["host"] == "node1" and facts["hypervisor_hostname"] == "node1"
    assert facts["hypervisor_type"] == "QEMU"
    assert facts["virt_type"] == "qemu"  # /dev/kvm is hidden on lab hosts
    assert ["x86_64", "qemu", "hvm"] in facts["supported_instances"]
    assert all(hv == "qemu" for _arch, hv, _mode in facts["supported_instances"])
    # versions as Nova's integers, checked against virsh
    version = lab.ssh("node1", "virsh version")
    qemu = [int(x) for x in re.search(r"Running hypervisor: QEMU (\d+)\.(\d+)\.(\d+)", version).groups()]
    lib = [int(x) for x in re.search(r"Using library: libvirt (\d+)\.(\d+)\.(\d+)", version).groups()]
    assert facts["hypervisor_version"] == qemu[0] * 1000000 + qemu[1] * 1000 + qemu[2]
    assert facts["libvirt_version"] == lib[0] * 1000000 + lib[1] * 1000 + lib[2]
    # capacity against the host's own view
    assert facts["vcpus_total"] == int(lab.ssh("node1", "nproc").strip())
    mem_kib = int(re.search(r"^MemTotal:\s+(\d+) kB", lab.ssh("node1", "cat /proc/meminfo"), re.M).group(1))
    assert abs(facts["memory_mb_total"] - mem_kib / 1024) <= 1
    assert facts["total_usable_ram_mb"] == facts["memory_mb_total"] - 512
    code = "import os, json; s = os.statvfs(%r); print(json.dumps([s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize]))"
    stat = json.loads(host_python(lab, "node1", code % lab.instances_path))
    assert facts["total_usable_disk_gb"] == stat[0] // 1024**3
    assert abs(facts["disk_available_least"] - stat[1] // 1024**3) <= 1  # no qcow2 overcommit on an empty host
    assert facts["num_instances"] == 0 and facts["instances"] == [] and facts["vcpus_used"] == 0
    assert facts["free_ram_mb"] == facts["total_usable_ram_mb"]
    assert facts["free_disk_mb"] == facts["total_usable_disk_gb"] * 1024
    assert (facts["cpu_allocation_ratio"], facts["ram_allocation_ratio"], facts["disk_allocation_ratio"]) == (4.0, 1.0, 1.0)
    uuid_in_caps = re.search(r"<uuid>([^<]+)</uuid>", lab.ssh("node1", "virsh capabilities")).group(1)
    assert facts["uuid"] == uuid_in_caps
    assert facts["cpu_info"]["arch"] == "x86_64" and facts["cpu_info"]["topology"]["cores"] >= 1
    # zone and aggregates from the inventory (az1 group var, node1's ssd aggregate)
    assert facts["availability_zone"] == "az1"
    assert facts["aggregates"] == [{"name": "ssd", "metadata": {"ssd": "true"}}]
    assert facts["service"] == {
        "host": "node1",
        "binary": "nova-compute",
        "enabled": True,
        "disabled_reason": None,
        "updated_at": None,
        "forced_down": False,
        "up": True,
        "down_reason": None,
    }


def test_node3_zone_and_no_aggregates(lab):
    facts = gather(lab, "node3")
    assert (facts["availability_zone"], facts["aggregates"]) == ("az2", [])


def _record(vm_state="active", task_state=None, inst_uuid=None):
    return Instance.new(
        uuid=inst_uuid,
        name=f"facts-{uuid.uuid4().hex[:6]}",
        project="demo",
        flavor={"name": "m1.facts", "vcpus": 2, "ram_mb": 512, "disk_gb": 1},
        image={"id": "vctest"},
        vm_state=vm_state,
        task_state=task_state,
        host="node2",
        availability_zone="az1",
        server_group="facts-group",
    )


@pytest.fixture()
def node2_domains(lab):
    """An instance (record in its metadata, flavor 2 vCPUs / 512 MB, shut off) and a foreign domain on node2."""
    rec = _record()
    xml = build_domain(rec, instance_dir=f"{lab.instances_path}/{rec.uuid}", domain_type="qemu", networks={})
    foreign = f"facts-foreign-{uuid.uuid4().hex[:6]}"
    foreign_xml = f"<domain type='qemu'><name>{foreign}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
    yield rec, xml, foreign, foreign_xml
    for name in (domain_name(rec.uuid), foreign):
        lab.ssh("node2", f"virsh undefine {name}", check=False)


def test_node2_counts_instances_and_foreign_domains(lab, node2_domains):
    rec, xml, foreign, foreign_xml = node2_domains
    before = gather(lab, "node2")
    assert before["num_instances"] == 0 and before["vcpus_used"] == 0 and before["other_domains"] == []

    lab.ssh("node2", "virsh define /dev/stdin", data=xml)
    after = gather(lab, "node2")
    assert after["num_instances"] == 1
    assert after["vcpus_used"] == 2
    assert after["free_ram_mb"] == before["free_ram_mb"] - 512
    assert after["memory_mb_used"] == before["memory_mb_used"] + 512
    assert after["free_disk_mb"] == before["free_disk_mb"] - 1024
    assert after["num_io_ops"] == 0
    [inst] = after["instances"]
    assert inst == {
        "uuid": rec.uuid,
        "name": rec.name,
        "domain": domain_name(rec.uuid),
        "project": "demo",
        "flavor": {"name": "m1.facts", "vcpus": 2, "ram_mb": 512, "disk_gb": 1, "ephemeral_gb": 0, "swap_mb": 0, "extra_specs": {}},
        "vm_state": "active",
        "task_state": None,
        "power_state": 4,
        "domain_state": "shut off",
        "server_group": "facts-group",
        "availability_zone": "az1",
        "host": "node2",
    }
    # node1 has its own libvirtd: it does not see node2's instance
    assert gather(lab, "node1")["num_instances"] == 0

    # a foreign domain: listed apart, its vCPUs and memory taken as well
    lab.ssh("node2", "virsh define /dev/stdin", data=foreign_xml)
    with_foreign = gather(lab, "node2")
    assert with_foreign["num_instances"] == 1
    assert with_foreign["other_domains"] == [
        {
            "name": foreign,
            "uuid": with_foreign["other_domains"][0]["uuid"],
            "domain_state": "shut off",
            "vcpus": 1,
            "memory_mb": 128,
            "reason": "no virtcloud record in its metadata",
        }
    ]
    assert with_foreign["vcpus_used"] == 3
    assert with_foreign["free_ram_mb"] == before["free_ram_mb"] - 512 - 128

    # the same instance while it builds: one I/O-heavy operation (Nova's io_workload)
    building = Instance.from_dict(dict(rec.to_dict(), vm_state="building", task_state="spawning"))
    lab.ssh("node2", "virsh define /dev/stdin", data=build_domain(building, instance_dir=f"{lab.instances_path}/{rec.uuid}", domain_type="qemu", networks={}))
    io = gather(lab, "node2")
    assert io["num_io_ops"] == 1 and io["instances"][0]["vm_state"] == "building"
    assert io["instances"][0]["task_state"] == "spawning"


def test_disk_available_least_counts_qcow2_overcommit(lab):
    """Nova's disk_available_least: free space minus what the qcow2 disks may still grow into."""
    rec = Instance.new(
        name="facts-big",
        project="demo",
        flavor={"name": "m1.big", "vcpus": 1, "ram_mb": 256, "disk_gb": 10},
        image={"id": "vctest"},
        vm_state="active",
        task_state=None,
        host="node2",
        config_drive=False,
    )
    inst_dir = f"{lab.instances_path}/{rec.uuid}"
    before = gather(lab, "node2")
    lab.ssh("node2", f"mkdir -p {inst_dir} && qemu-img create -q -f qcow2 -F qcow2 -b {GUEST_IMAGE} {inst_dir}/disk 10G")
    try:
        lab.ssh("node2", "virsh define /dev/stdin", data=build_domain(rec, instance_dir=inst_dir, domain_type="qemu", networks={}))
        after = gather(lab, "node2")
        assert after["free_disk_mb"] == before["free_disk_mb"] - 10 * 1024
        # 10 GiB virtual, a few hundred KiB allocated: about 10 GiB less (+-1 for other writes on the filesystem)
        assert 9 <= before["disk_available_least"] - after["disk_available_least"] <= 11
    finally:
        lab.ssh("node2", f"virsh undefine {domain_name(rec.uuid)}", check=False)
        lab.ssh("node2", f"rm -rf {inst_dir}", check=False)


def test_claim_and_scheduler_refuse_the_same_overcommitted_disk(lab):
    """Issue 7: qcow2 over-commit leaves the filesystem ~10 GiB; DiskFilter refuses a 40 GB flavor and so does the claim."""
    host = "node3"
    disk = f"{lab.instances_path}/capacity-overcommit.qcow2"
    claims = "/run/virtcloud/claims-capacity-test.json"
    domain = "capacity-overcommit"
    before = gather(lab, host)
    # a foreign domain whose sparse overlay may grow into all but ~10 GiB of the free space
    virtual_gb = before["disk_available_least"] - 10
    assert virtual_gb > 40, before["disk_available_least"]
    lab.ssh(host, f"qemu-img create -q -f qcow2 {disk} {virtual_gb}G")
    xml = (
        f"<domain type='qemu'><name>{domain}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    big = {"name": "m1.disk40", "vcpus": 1, "ram_mb": 64, "disk_gb": 40}
    small = {"name": "m1.disk1", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}
    try:
        lab.ssh(host, "virsh define /dev/stdin", data=xml)
        facts = gather(lab, host)
        assert 5 <= facts["disk_available_least"] <= 15, facts["disk_available_least"]
        assert facts["free_disk_mb"] >= 40 * 1024  # by allocation alone the flavor would fit

        def claim_args(flavor):
            return f"uuid={uuid.uuid4()} flavor='{json.dumps(flavor)}' instances_path={lab.instances_path} claims_file={claims} host={host}"

        # the scheduler: NoValidHost, DiskFilter, naming disk_available_least
        with pytest.raises(sched.NoValidHost) as info:
            sched.schedule([facts], {"flavor": big})
        rejected = [r for step in info.value.trace["instances"][0]["filters"] for r in step["rejected"]]
        assert [r["filter"] for r in rejected] == ["DiskFilter"], rejected
        assert "disk_available_least" in rejected[0]["reason"]
        # the claim on the host itself refuses the same flavor, with the same figures
        refused = run_module(lab, host, "instance_claim", claim_args(big))
        msg = refused.one(host).msg
        assert refused.rc != 0 and refused.one(host).status == "FAILED!", refused
        assert "disk short by" in msg and "40960 MB requested" in msg and "disk_available_least" in msg, refused
        # and both accept a flavor that fits (the claim in check mode: nothing recorded)
        assert sched.schedule([facts], {"flavor": small})["selected"] == [host]
        planned = run_module(lab, host, "instance_claim", claim_args(small), check=True)
        assert planned.ok() and planned.one(host).changed, planned
        assert lab.ssh(host, f"test -e {claims} && cat {claims} || echo none").strip() in ("none", "{}")
    finally:
        lab.ssh(host, f"virsh undefine {domain}", check=False)
        lab.ssh(host, f"rm -f {disk} {claims} {claims}.lock", check=False)
    assert abs(gather(lab, host)["disk_available_least"] - before["disk_available_least"]) <= 2


def test_service_disable_and_enable(lab):
    lab.ssh("node2", f"rm -f {SERVICE_FILE}")
    try:
        reason = "maintenance: facts test"
        # check mode reports the change and writes nothing
        changed, _out = set_service(lab, "node2", "disabled", reason, check=True)
        assert changed == 1
        assert lab.ssh("node2", f"test -e {SERVICE_FILE} && echo yes || echo no").strip() == "no"
        assert gather(lab, "node2")["service"]["enabled"] is True
        # the real run, with its diff
        changed, out = set_service(lab, "node2", "disabled", reason, diff=True)
        assert changed == 1
        assert re.search(r'^\+\s+"disabled_reason": "maintenance: facts test"', out, re.M), out
        record = json.loads(lab.ssh("node2", f"cat {SERVICE_FILE}"))
        assert (record["enabled"], record["disabled_reason"], record["host"]) == (False, reason, "node2")
        assert set(record) == {"enabled", "disabled_reason", "updated_at", "host"}
        # both again: no change, record untouched
        assert set_service(lab, "node2", "disabled", reason, check=True)[0] == 0
        assert set_service(lab, "node2", "disabled", reason)[0] == 0
        assert json.loads(lab.ssh("node2", f"cat {SERVICE_FILE}")) == record
        facts = gather(lab, "node2")
        assert facts["service"]["enabled"] is False and facts["service"]["disabled_reason"] == reason
        assert facts["service"]["up"] is True and facts["service"]["updated_at"] == record["updated_at"]
        assert gather(lab, "node1")["service"]["enabled"] is True  # the other hosts are not touched

        # enable: check mode, real, both again
        assert set_service(lab, "node2", "enabled", check=True)[0] == 1
        assert json.loads(lab.ssh("node2", f"cat {SERVICE_FILE}"))["enabled"] is False
        assert set_service(lab, "node2", "enabled")[0] == 1
        assert set_service(lab, "node2", "enabled", check=True)[0] == 0
        assert set_service(lab, "node2", "enabled")[0] == 0
        facts = gather(lab, "node2")
        assert facts["service"]["enabled"] is True and facts["service"]["disabled_reason"] is None
    finally:
        lab.ssh("node2", f"rm -f {SERVICE_FILE}", check=False)


def test_libvirt_not_answering_marks_the_service_down(lab):
    facts = gather(lab, "node3", facts_uri="qemu:///system?socket=/run/virtcloud-no-such.sock")
    assert facts["service"]["up"] is False
    assert "cannot connect to libvirt" in facts["service"]["down_reason"]
    assert facts["vcpus_total"] == 0 and facts["supported_instances"] == []


@pytest.mark.parametrize(
    "host, module, args, message",
    [
        ("node1", "virtcloud.compute.compute_service", f"state=disabled service_file={SERVICE_FILE}", "disabled_reason is required with state=disabled"),
        (
            "node1",
            "virtcloud.compute.compute_service",
            f"state=enabled disabled_reason=why service_file={SERVICE_FILE}",
            "disabled_reason is only used with state=disabled",
        ),
        ("node1", "virtcloud.compute.compute_facts", "uri=qemu+tcp://node2/system instances_path=/tmp", "without authentication or encryption"),
        (
            "node1",
            "virtcloud.compute.compute_facts",
            f"instances_path=/nonexistent/instances service_file={SERVICE_FILE}",
            "instances_path /nonexistent/instances does not exist",
        ),
        ("node1", "virtcloud.compute.compute_facts", "instances_path=/tmp cpu_allocation_ratio=0", "cpu_allocation_ratio must be a number above 0"),
        ("node1", "virtcloud.compute.compute_facts", "instances_path=/tmp request_id=nope", "request_id 'nope' is not of the form req-<uuid>"),
    ],
)
def test_bad_input_fails_clearly(lab, host, module, args, message):
    run = run_module(lab, host, module, args)
    result = run.one(host)
    assert run.rc != 0 and result.status == "FAILED!" and message in result.msg, run
    assert "MODULE FAILURE" not in run.stdout, run
    assert lab.ssh(host, f"test -e {SERVICE_FILE} && echo yes || echo no").strip() == "no"
