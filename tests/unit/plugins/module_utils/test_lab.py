# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lab's planning: names, addresses and the validation of its options."""

from __future__ import annotations

import errno
import ipaddress
import subprocess
import sys

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils import _lab
from ansible_collections.virtcloud.compute.plugins.module_utils._lab import (
    Lab,
    LabError,
    converge,
    lab_dirs,
    lab_network,
    os_error_message,
    plan,
    read_record,
    with_line,
)

HOLDER = (
    "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
    "os.write(fd, b'%d\\n' % os.getpid()); print('held', flush=True); time.sleep(30)"
)


def test_plan_names_and_addresses():
    lab = plan("vclab", "10.251.0.0/24", 3, ["node3"], "/var/lib/x", "/run/x")
    assert lab.bridge == "vclab-br0" and lab.bridge_address == "10.251.0.1"
    assert [(h.name, h.role, h.address, h.shared_storage, h.netns, h.veth) for h in lab.hosts] == [
        ("controller", "controller", "10.251.0.10", False, "vclab-controller", "vclab-ctl"),
        ("node1", "compute", "10.251.0.11", True, "vclab-node1", "vclab-node1"),
        ("node2", "compute", "10.251.0.12", True, "vclab-node2", "vclab-node2"),
        ("node3", "compute", "10.251.0.13", False, "vclab-node3", "vclab-node3"),
    ]
    assert lab.instances_path == "/var/lib/x/instances" and lab.shared_instances == "/var/lib/x/shared/instances"
    assert max(len(h.veth) for h in plan("abcdef", "10.0.0.0/24", 16, [], "/a/b", "/c/d").hosts) <= 15


@pytest.mark.parametrize(
    "args, message",
    [
        (("Lab", "10.251.0.0/24", 3, [], "/a/b", "/c/d"), "lab name 'Lab' is not valid"),
        (("toolongname", "10.251.0.0/24", 3, [], "/a/b", "/c/d"), "is not valid"),
        (("vc", "10.251.0.0/24", 0, [], "/a/b", "/c/d"), "lab_hosts must be a whole number from 1 to 16, got 0"),
        (("vc", "10.251.0.0/24", 17, [], "/a/b", "/c/d"), "from 1 to 16, got 17"),
        (("vc", "10.251.0.1/24", 3, [], "/a/b", "/c/d"), "is not an IPv4 network in CIDR form"),
        (("vc", "fd00::/64", 3, [], "/a/b", "/c/d"), "is not an IPv4 network"),
        (("vc", "192.0.2.0/24", 3, [], "/a/b", "/c/d"), "192.0.2.0/24 is not a private range"),
        (("vc", "8.8.8.0/24", 3, [], "/a/b", "/c/d"), "is not a private range"),
        (("vc", "10.9.9.0/28", 3, [], "/a/b", "/c/d"), "has room for 16 addresses, 3 hosts need at least 19"),
        (("vc", "10.9.9.0/24", 2, ["node3"], "/a/b", "/c/d"), "lab_non_shared names hosts that the lab does not have: node3"),
        (("vc", "10.9.9.0/24", 2, [], "relative", "/c/d"), "must be an absolute path"),
        (("vc", "10.9.9.0/24", 2, [], "/var/lib", "/c/d"), "must be an absolute path of a folder of its own"),
    ],
)
def test_plan_refuses_bad_options(args, message):
    with pytest.raises(LabError, match=None) as err:
        plan(*args)
    assert message in str(err.value)


# Recorded on a machine with a lab bridge vc-br0 (ip -j -4 addr show, ip -j -4 route show; iproute2 6.1).
ADDR = (
    '[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,'
    '"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295}]},'
    '{"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"192.0.2.2",'
    '"prefixlen":24,"broadcast":"192.0.2.255","scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295}]},'
    '{"ifindex":7,"ifname":"vc-br0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"10.9.9.1",'
    '"prefixlen":24,"scope":"global","label":"vc-br0","valid_life_time":4294967295,"preferred_life_time":4294967295}]}]'
)
ROUTES = (
    '[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},'
    '{"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},'
    '{"dst":"10.60.0.0/16","gateway":"192.0.2.7","dev":"eth0","flags":[]},'
    '{"dst":"10.9.9.0/24","dev":"vc-br0","protocol":"kernel","scope":"link","prefsrc":"10.9.9.1","flags":[]}]'
)


def fake_ip(argv, data=None):
    """Recorded output of `ip -j -4 addr show` and `ip -j -4 route show` on a machine."""
    if argv[1:] == ["-j", "-4", "addr", "show"]:
        return 0, ADDR, ""
    if argv[1:] == ["-j", "-4", "route", "show"]:
        return 0, ROUTES, ""
    raise AssertionError(f"unexpected command {argv}")


@pytest.mark.parametrize(
    "name, network, message",
    [
        ("vc", "10.9.9.0/24", None),  # the lab's own bridge holds it: that is no conflict
        ("other", "10.9.9.0/24", "already in use on this machine (vc-br0 has 10.9.9.1/24)"),
        ("vc", "192.168.0.0/16", None),
        ("vc", "10.60.4.0/24", "overlaps the route '10.60.0.0/16 via 192.0.2.7 dev eth0'"),
        ("vc", "10.0.0.0/8", "overlaps the route"),
    ],
)
def test_address_range_in_use(name, network, message):
    lab = Lab(plan(name, network, 2, [], "/a/b", "/c/d"), fake_ip)
    lab.ip = "ip"
    if message is None:
        lab._check_range_free()  # pylint: disable=protected-access
    else:
        with pytest.raises(LabError) as err:
            lab._check_range_free()  # pylint: disable=protected-access
        assert message in str(err.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "ssh-ed25519 AAAA lab\n"),
        ("ssh-ed25519 BBBB root@node2\n", "ssh-ed25519 BBBB root@node2\nssh-ed25519 AAAA lab\n"),
        ("ssh-ed25519 BBBB root@node2", "ssh-ed25519 BBBB root@node2\nssh-ed25519 AAAA lab\n"),
        ("ssh-ed25519 AAAA lab\nssh-ed25519 BBBB root@node2\n", "ssh-ed25519 AAAA lab\nssh-ed25519 BBBB root@node2\n"),
    ],
)
def test_the_lab_key_is_added_and_other_keys_stay(content, expected):
    assert with_line(content, "ssh-ed25519 AAAA lab\n") == expected


# --------------------------------------------------------------------------- one name makes a lab


@pytest.mark.parametrize(
    "name, state_dir, run_dir",
    [
        ("vclab", "/var/lib/virtcloud-lab", "/run/virtcloud-lab"),  # the default lab keeps its folders
        ("vch15a", "/var/lib/virtcloud-lab-vch15a", "/run/virtcloud-lab-vch15a"),
        ("demo2", "/var/lib/virtcloud-lab-demo2", "/run/virtcloud-lab-demo2"),
    ],
)
def test_the_folders_follow_the_name(name, state_dir, run_dir):
    assert lab_dirs(name) == (state_dir, run_dir)
    spec = plan(name)
    assert (spec.state_dir, spec.run_dir, spec.inventory) == (state_dir, run_dir, state_dir + "/inventory.yml")
    assert spec.bridge == f"{name}-br0" and {h.netns for h in spec.hosts} == {f"{name}-controller", f"{name}-node1", f"{name}-node2", f"{name}-node3"}
    # given folders still win
    assert (plan(name, state_dir="/srv/lab/", run_dir="/run/x").state_dir, plan(name, run_dir="/run/x").run_dir) == ("/srv/lab", "/run/x")


def test_the_range_follows_the_name():
    assert lab_network("vclab") == "10.251.0.0/24" and str(plan("vclab").network) == "10.251.0.0/24"
    names = ["vch15a", "vch15c", "demo2", "ab", "zz9999"]
    nets = [ipaddress.IPv4Network(lab_network(n)) for n in names]
    assert all(n.prefixlen == 24 and n.subnet_of(ipaddress.IPv4Network("10.200.0.0/13")) for n in nets), nets
    assert len(set(nets)) == len(nets)
    assert [lab_network(n) for n in names] == [str(n) for n in nets]  # the same name, the same range
    assert str(plan("demo2", "10.250.0.0/24").network) == "10.250.0.0/24"


def test_a_bad_name_makes_no_folder_name():
    for bad in ("", "Lab", "../x", "a", None):
        with pytest.raises(LabError, match="is not valid"):
            lab_dirs(bad)


def test_the_record_says_what_the_lab_is(tmp_path):
    spec = plan("vcx", "10.9.9.0/24", 2, ["node2"], str(tmp_path / "state"), "/run/vcx")
    assert spec.record == dict(
        name="vcx", network="10.9.9.0/24", hosts=["node1", "node2"], non_shared=["node2"], state_dir=str(tmp_path / "state"), run_dir="/run/vcx", kvm=False
    )
    assert spec.record_path == str(tmp_path / "state" / "lab.json")


def test_reading_a_record(tmp_path):
    assert read_record(str(tmp_path / "none")) is None
    assert read_record(str(tmp_path)) is None  # a folder without a record
    (tmp_path / "lab.json").write_text('{"name": "vclab", "network": "10.251.0.0/24"}')
    assert read_record(str(tmp_path))["name"] == "vclab"
    (tmp_path / "lab.json").write_text("{not json")
    with pytest.raises(LabError, match="lab.json cannot be read"):
        read_record(str(tmp_path))
    # a lab made before records: its SSH key names it
    legacy = tmp_path / "legacy"
    (legacy / "ssh").mkdir(parents=True)
    (legacy / "ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAA vclab-lab\n")
    assert read_record(str(legacy)) == dict(name="vclab", state_dir=str(legacy))


def no_lab_on_the_machine(argv, data=None):
    """`ip` of a machine with no lab: no namespaces, no links."""
    if argv[1:] == ["-j", "netns", "list"]:
        return 0, "", ""
    if argv[1:3] == ["link", "show"]:
        return 1, "", 'Device "x" does not exist.'
    raise AssertionError(f"unexpected command {argv}")


@pytest.fixture()
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(_lab, "LOCK_DIR", str(tmp_path / "lock"))
    return tmp_path / "lock"


def test_lab_down_of_a_lab_that_is_not_up_says_so_and_changes_nothing(tmp_path, lock_dir):
    result = converge(no_lab_on_the_machine, "vcx", "absent", state_dir=str(tmp_path / "vcx"))
    assert result == dict(changed=False, changes=[], msg=f"lab vcx is not up: {tmp_path / 'vcx'} holds no record of it (lab.json), so nothing was removed")
    assert not (tmp_path / "vcx").exists()


def test_lab_down_never_removes_another_labs_folder(tmp_path, lock_dir):
    other = tmp_path / "virtcloud-lab"
    other.mkdir()
    (other / "lab.json").write_text('{"name": "vclab"}')
    with pytest.raises(LabError) as err:
        converge(no_lab_on_the_machine, "vcx", "absent", state_dir=str(other))
    assert str(err.value).startswith(f"{other} is the state folder of lab 'vclab', not of lab 'vcx': nothing was removed")
    assert (other / "lab.json").exists()


def test_a_run_on_a_lab_that_another_run_changes_waits_then_names_it(tmp_path, lock_dir):
    lock_dir.mkdir()
    path = str(lock_dir / "virtcloud-lab-vcx.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LabError) as err:
            converge(no_lab_on_the_machine, "vcx", "absent", state_dir=str(tmp_path / "vcx"), lock_timeout=0.3)
        assert str(err.value).startswith(f"lab vcx is being changed by another run (pid {holder.pid}): wait for it to finish, then try again")
    finally:
        holder.kill()
        holder.wait()
    assert not converge(no_lab_on_the_machine, "vcx", "absent", state_dir=str(tmp_path / "vcx"), lock_timeout=0.3)["changed"]


@pytest.mark.parametrize(
    "error, message",
    [
        (
            OSError(errno.ENOENT, "No such file or directory", "/var/lib/virtcloud-lab-x/hosts"),
            "lab absent: No such file or directory: /var/lib/virtcloud-lab-x/hosts",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "/var/lib/x"),
            "lab absent: No space left on device: /var/lib/x (the machine is out of disk space: free some and run again)",
        ),
        (OSError(errno.EBUSY, "Device or resource busy", "/run/x"), "lab absent: Device or resource busy: /run/x (something still uses it"),
    ],
)
def test_only_a_full_disk_gets_the_disk_space_hint(error, message):
    assert os_error_message("absent", error).startswith(message)
    assert ("disk space" in os_error_message("absent", error)) == (error.errno == errno.ENOSPC)


def test_each_hosts_paths_on_the_machine():
    lab = Lab(plan("vcx", "10.9.9.0/24", 3, ["node3"], "/var/lib/virtcloud-lab-vcx", "/run/virtcloud-lab-vcx"), fake_ip)
    paths = {h.name: {inside: machine for machine, inside in lab.binds(h)} for h in lab.spec.hosts}
    state = "/var/lib/virtcloud-lab-vcx"
    assert paths["node1"][f"{state}/instances"] == f"{state}/shared/instances"
    assert paths["node3"][f"{state}/instances"] == f"{state}/hosts/node3/instances"
    assert paths["controller"][f"{state}/images"] == f"{state}/hosts/controller/images"
    assert paths["node2"]["/var/lib/virtcloud"] == f"{state}/hosts/node2/var-lib-virtcloud"
    assert paths["node2"]["/var/lib/libvirt"] == f"{state}/hosts/node2/var-lib-libvirt"
    assert f"{state}/instances" not in paths["controller"]


def machine_with_lab_vcx(argv, data=None):
    """`ip` of a machine where lab vcx is up: its namespaces and its bridge."""
    if argv[1:] == ["-j", "netns", "list"]:
        return 0, '[{"name":"vcx-controller","id":1},{"name":"vcx-node1","id":2},{"name":"other-node1","id":3}]', ""
    if argv[1:3] == ["link", "show"]:
        return (0, "7: vcx-br0: <BROADCAST,MULTICAST,UP,LOWER_UP>", "") if argv[3] == "vcx-br0" else (1, "", "does not exist")
    raise AssertionError(f"unexpected command {argv}")


@pytest.mark.parametrize(
    "record, run_owner, message",
    [
        (None, None, "lab vcx is up already (netns vcx-controller, netns vcx-node1, bridge vcx-br0), but {state} holds no record of it"),
        ('{"name": "vclab"}', None, "{state} is the state folder of lab 'vclab', not of lab 'vcx': nothing was changed"),
        ('{"name": "vcx", "network": "10.8.8.0/24"}', None, "lab vcx is up on 10.8.8.0/24 ({state}/lab.json): lab_down it before moving it to 10.9.9.0/24"),
        ('{"name": "vcx", "network": "10.9.9.0/24"}', "vclab", "{run} is the run folder of lab 'vclab', not of lab 'vcx': nothing was changed"),
    ],
)
def test_lab_up_refuses_folders_and_names_that_are_not_its_own(tmp_path, record, run_owner, message):
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    run.mkdir()
    if record:
        (state / "lab.json").write_text(record)
    if run_owner:
        (run / "lab-name").write_text(run_owner + "\n")
    lab = Lab(plan("vcx", "10.9.9.0/24", 1, [], str(state), str(run)), machine_with_lab_vcx)
    lab.ip = "ip"
    with pytest.raises(LabError) as err:
        lab._claim()  # pylint: disable=protected-access
    assert str(err.value).startswith(message.format(state=state, run=run)), str(err.value)
    assert sorted(p.name for p in state.iterdir()) == (["lab.json"] if record else [])  # nothing written
