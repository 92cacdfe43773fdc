# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one fake libvirt of the unit tests: a connection, its domains, libvirt's error, a clock.

The behaviour of real libvirt/QEMU is tested in the lab (tests/integration); this fake
only lets the pure logic around libvirt run: lookups, domain states and their changes,
metadata, host information. Used by test_domain.py (the domain module and the actions)
and test_libvirt.py (lookups, waits, host facts).

* :class:`FakeConn`: ``lookupByUUIDString``, ``lookupByName``, ``defineXML``,
  ``listAllDomains`` and the host calls of ``gather_host_facts`` (capabilities, node
  info and memory, versions, hostname, domain capabilities).
* :class:`FakeDomain`: a guest made from domain XML. Its state changes as libvirt's
  does (create, suspend/resume, managed save, destroy, ACPI shutdown: ``acpi`` says what
  the guest does with the power button, 'off' after ``presses_needed`` presses,
  'ignore' or 'reboot'); ``fail[op] = (state or None, message)`` makes a call fail;
  ``script`` gives the states ``state()`` returns one after the other (None: the domain
  is gone, 'boom': libvirt fails); ``block`` the ``blockInfo`` answers.
* :class:`FakeLibvirtError`: what libvirt-python raises (``get_error_code``).
* :class:`Clock`: a clock whose ``sleep`` moves time on, and records the sleeps.
* :func:`record`: the record of the instance the tests put in a domain.
"""

from __future__ import annotations

from lxml import etree

from ansible_collections.virtcloud.compute.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtcloud.compute.plugins.module_utils import _libvirt as lv
from ansible_collections.virtcloud.compute.plugins.module_utils._instance import Instance

SHUTOFF, RUNNING, PAUSED = lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_PAUSED
NOT_FOUND = 42  # VIR_ERR_NO_DOMAIN
OPERATION_INVALID = 55  # VIR_ERR_OPERATION_INVALID

CAPS = None  # FakeConn's capabilities XML when none is given (test_libvirt gives its recorded one)
UUID = "3f2a6c1e-0b7d-4e55-9a43-1c2d3e4f5a6b"


def record(**overrides):
    """The record (a dict) of the instance the tests put in a fake domain; ``overrides`` change fields."""
    data = {
        "uuid": UUID,
        "name": "web-1",
        "project": "demo",
        "flavor": {"name": "m1.tiny", "vcpus": 1, "ram_mb": 256, "disk_gb": 1},
        "image": {"id": "vctest"},
        "ports": [{"network": "net1", "mac": "fa:16:3e:00:00:01", "ip": "10.0.0.5"}],
        "vm_state": "active",
        "task_state": None,
        "power_state": 1,
        "host": "node1",
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
        "launched_at": "2024-05-01T12:00:00Z",
        "config_drive": False,
    }
    data.update(overrides)
    return Instance.from_dict(data).to_dict()


class FakeLibvirtError(lv._LIBVIRT_ERROR):  # pylint: disable=protected-access
    """libvirt.libvirtError with an error code and message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def get_error_code(self):
        return self.code

    def get_error_message(self):
        return self.message

    def __str__(self):
        return self.message


class Clock:
    """``clock()`` and ``clock.sleep(s)``; a sleep moves time on by at least ``min_step``."""

    def __init__(self, start=0.0, min_step=0.0):
        self.now = start
        self.min_step = min_step
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += max(seconds, self.min_step)


class FakeDomain:
    """A guest of :class:`FakeConn` made from domain XML, or a bare one for lookups and waits."""

    def __init__(self, conn=None, xml=None, *, name=None, uuid=None, state=None, script=None, block=None):
        self.conn = conn
        self.xml = xml
        self.live_xml = self.saved_xml = None
        if xml is not None:
            root = etree.fromstring(xml.encode())
            name, uuid = root.findtext("name"), root.findtext("uuid")
        self._name = name
        self._uuid = uuid
        self.st, self.reason = (SHUTOFF, 0) if state is None else state
        if xml is not None and self.st != SHUTOFF:
            self.live_xml = xml
        self.script = None if script is None else list(script)
        self.block = block or {}
        self.saved = False
        self.dom_id = -1
        self.presses = 0
        self.acpi = "off"
        self.presses_needed = 1
        self.fail = {}
        self.calls = []

    def _check(self, op):
        self.calls.append(op)
        if self.conn is not None and self not in self.conn.domains.values():
            raise FakeLibvirtError(NOT_FOUND, "Domain not found")
        if op in self.fail:
            effect, message = self.fail[op]
            if effect is not None:
                self.st = effect
            raise FakeLibvirtError(1, message)

    def _run(self, state):
        self.st = state
        self.conn.next_id += 1
        self.dom_id = self.conn.next_id

    def name(self):
        return self._name

    def UUIDString(self):  # noqa: N802 (libvirt's name)
        return self._uuid

    def ID(self):  # noqa: N802
        return self.dom_id

    def state(self):
        if self.script is not None:
            state = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            if state is None:
                raise FakeLibvirtError(NOT_FOUND, "Domain not found")
            if state == "boom":
                raise FakeLibvirtError(1, "internal error: cannot talk")
            return state
        self._check("state")
        return [self.st, self.reason]

    def XMLDesc(self, flags=0):  # noqa: N802
        self._check("XMLDesc")
        return self.xml if flags & lv.VIR_DOMAIN_XML_INACTIVE or self.st == SHUTOFF else self.live_xml

    def blockInfo(self, target):  # noqa: N802
        if target not in self.block:
            raise FakeLibvirtError(38, "cannot access storage file")
        return self.block[target]

    def createWithFlags(self, flags=0):  # noqa: N802
        self._check("create")
        if self.st != SHUTOFF:
            raise FakeLibvirtError(OPERATION_INVALID, "domain is already running")
        # a managed save restores the state it was saved in (libvirt without SAVE_RUNNING),
        # with the live XML of the moment it was saved
        self._run(PAUSED if flags & 1 or self.saved == "paused" else RUNNING)
        self.live_xml = self.saved_xml if self.saved else self.xml
        self.saved = False

    def suspend(self):
        self._check("suspend")
        self.st = PAUSED

    def resume(self):
        self._check("resume")
        self.st = RUNNING

    def managedSave(self, flags=0):  # noqa: N802
        self._check("managedSave")
        self.saved = "paused" if self.st == PAUSED else "running"
        self.saved_xml = self.live_xml
        self.st, self.dom_id = SHUTOFF, -1

    def hasManagedSaveImage(self, flags=0):  # noqa: N802
        return int(bool(self.saved))

    def managedSaveRemove(self, flags=0):  # noqa: N802
        self._check("managedSaveRemove")
        self.saved = False

    def destroy(self):
        self._check("destroy")
        if self.st == SHUTOFF:
            raise FakeLibvirtError(OPERATION_INVALID, "domain is not running")
        self.st, self.dom_id = SHUTOFF, -1

    def shutdownFlags(self, flags=0):  # noqa: N802
        self._check("shutdown")
        assert flags == lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
        if self.st != RUNNING:
            raise FakeLibvirtError(OPERATION_INVALID, "domain is not running")
        self.presses += 1
        if self.presses >= self.presses_needed:
            if self.acpi == "off":
                self.st, self.dom_id = SHUTOFF, -1
            elif self.acpi == "reboot":
                self._run(RUNNING)

    def undefineFlags(self, flags=0):  # noqa: N802
        self._check("undefine")
        assert flags == lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_NVRAM
        del self.conn.domains[self._uuid]

    def setMetadata(self, kind, xml, key, uri, flags):  # noqa: N802
        self._check("setMetadata")
        assert (kind, key, uri) == (lv.VIR_DOMAIN_METADATA_ELEMENT, "vc", dx.NS)
        if flags & lv.VIR_DOMAIN_AFFECT_LIVE and self.st == SHUTOFF:
            raise FakeLibvirtError(OPERATION_INVALID, "domain is not running")
        if flags & lv.VIR_DOMAIN_AFFECT_LIVE:
            self.live_xml = self._with_metadata(self.live_xml, xml, key, uri)
        if flags & lv.VIR_DOMAIN_AFFECT_CONFIG:
            self.xml = self._with_metadata(self.xml, xml, key, uri)

    @staticmethod
    def _with_metadata(domain_xml, xml, key, uri):
        root = etree.fromstring(domain_xml.encode())
        metadata = root.find("metadata")
        for old in metadata.findall(f"{{{uri}}}instance"):
            metadata.remove(old)
        given = etree.fromstring(xml.encode())
        new = etree.SubElement(metadata, f"{{{uri}}}instance", nsmap={key: uri})
        for name, value in given.attrib.items():
            new.set(name, value)
        new.text = given.text
        return etree.tostring(root, encoding="unicode")


class FakeConn:
    """A libvirt connection: its domains (by uuid), lookups, define, and the host's own answers.

    ``broken`` names a domain whose lookup fails as a lost connection does (code 38).
    """

    def __init__(self, domains=None, caps=CAPS, broken=()):
        self.domains = {}
        for dom in domains or ():
            self.add(dom)
        self.caps = caps
        self.broken = set(broken)
        self.next_id = 0
        self.defines = 0
        self.calls = []

    def add(self, dom):
        dom.conn = dom.conn or self
        self.domains[dom.UUIDString() or dom.name()] = dom
        return dom

    def lookupByUUIDString(self, uuid):  # noqa: N802
        self.calls.append(("uuid", uuid))
        for dom in self.domains.values():
            if dom.UUIDString() == uuid:
                return dom
        raise FakeLibvirtError(NOT_FOUND, "Domain not found: no domain with matching uuid")

    def lookupByName(self, name):  # noqa: N802
        self.calls.append(("name", name))
        if name in self.broken:
            raise FakeLibvirtError(38, "cannot connect")
        for dom in self.domains.values():
            if dom.name() == name:
                return dom
        raise FakeLibvirtError(NOT_FOUND, "Domain not found")

    def defineXML(self, xml):  # noqa: N802
        self.defines += 1
        uuid = etree.fromstring(xml.encode()).findtext("uuid")
        dom = self.domains.get(uuid)
        if dom is None:
            dom = self.domains[uuid] = FakeDomain(self, xml)
        else:
            dom.xml = xml
        return dom

    def listAllDomains(self, flags=0):  # noqa: N802
        return list(self.domains.values())

    # -- the host, as gather_host_facts reads it

    def getCapabilities(self):  # noqa: N802
        return self.caps

    def getInfo(self):  # noqa: N802
        return ["x86_64", 4698, 2, 2596, 1, 1, 2, 1]

    def getMemoryStats(self, _cell):  # noqa: N802
        return {"total": 24684084, "free": 1}

    def getType(self):  # noqa: N802
        return "QEMU"

    def getVersion(self):  # noqa: N802
        return 7002022

    def getLibVersion(self):  # noqa: N802
        return 9000000

    def getHostname(self):  # noqa: N802
        return "node2"

    def getDomainCapabilities(self, *_args):  # noqa: N802
        raise FakeLibvirtError(1, "the accel 'kvm' is not supported")
