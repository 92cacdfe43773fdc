# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Images: the image store and the compute-side image cache.

Private to this collection; the modules ``image``, ``image_info`` and ``image_cache``
are thin over it. Everything here takes plain arguments
and raises ``ImageStoreError`` (a ``VirtcloudError``), ``ImageUnsafe`` /
``ImageInspectError`` (from ``_image_inspect``) or ``QemuImgError``.

The image store (Glance's part, on the image host)
--------------------------------------------------
::

    <store>/<image id>/image        the image file, exactly the bytes imported
    <store>/<image id>/image.json   the record (below)
    <store>/.lock                   the lock held by every change of the store
    <store>/.import-*/              an import in progress (removed when it fails)
    <store>/.deleted-*/             a delete in progress

The record: ``id`` (uuid), ``name`` (unique in the store), ``status``
(``active``; ``queued`` while an import runs, ``deleted`` while a delete runs:
neither is ever seen in ``<store>/<id>/``), ``disk_format`` (qcow2, raw),
``container_format`` (bare), ``size`` (bytes of the file), ``virtual_size``,
``sha256``, ``properties`` (string to string: hw_architecture, img_hv_type,
min_ram, min_disk, os_type, ...), ``owner`` (project), ``visibility``,
``image_type`` (image or snapshot), ``instance_uuid`` (snapshots),
``created_at``, ``updated_at``.

An import copies (``src``) or downloads (``url``, http/https, with a size cap and
an optional expected sha256) the data into ``<store>/.import-<random>/image``
while hashing it, inspects that copy with ``inspect_image`` (the declared format
must be the real one; backing files, data files, VMDK descriptors, ambiguous
files are refused) and with qemu-img's view, writes the record beside it, and
renames the directory to ``<store>/<id>``: the image appears whole or not at
all. A refused or failed import removes its directory. A ``src`` on another
host (``src_host``: a compute host's snapshot) is pulled first with scp
(``_ssh.ScpRemote``, strict host keys, the file size bounded by ``prlimit --fsize`` at
the size cap) into that same ``.import-*/image``, then hashed and inspected
exactly as a local copy. Every change holds
``<store>/.lock``, so leftovers of an interrupted run (``.import-*``,
``.deleted-*``) found while holding it are stale and removed.

Image ids never change content: a second import under the same id must bring
the same sha256. Names are unique in the store (a playbook names an image and
gets exactly one); the same name with other content is refused. Name,
properties, owner and visibility of an existing image can be changed.

The image cache (nova-compute's ``_base``, on each compute host)
----------------------------------------------------------------
::

    <instances_path>/_base/<sha1 of image id>        the base file (qcow2, or raw)
    <instances_path>/_base/<sha1 of image id>.info   what was verified (JSON)
    <instances_path>/_base/<sha1 of image id>.lock   the lock of this base file
    <instances_path>/_base/.fetch-<sha1>-*/          a fetch in progress

``ImageCache.ensure`` takes the base file's lock (``_files.file_lock``, a ``flock``
that NFS carries as a POSIX lock, so hosts sharing ``instances_path`` fetch once), then:

- present and verified: use it (``fetched: false``). Verification on every use:
  the ``.info`` side file must name this image; the file's size, mtime, ctime and
  inode must be those recorded after its last hash, or it is hashed again and
  compared with the recorded sha256 (``verify=full`` always hashes). ctime
  changes with every write and cannot be set back by tools such as ``touch``,
  so an in-place change is caught without rehashing on every launch. The file
  is inspected again each time (it is untrusted data even in the cache).
- missing, without a side file, or failing verification: fetched again from
  the image store host *by the compute host itself*, with ``scp`` (SSH, strict
  host key checking, the given key): the data never passes through the Ansible
  controller. The record comes with it; the copy's size and sha256 must match
  the record (and the caller's expected values), it is inspected as the
  record's disk_format, optionally converted to raw (``force_raw``, Nova's
  ``force_raw_images``) and inspected again, then renamed into place. A corrupt
  base is replaced (``repaired`` says why); domains already running keep the
  old file open, new overlays get the good one.

An existing base keeps its format whatever ``force_raw`` says now, also when it
is replaced after failing verification: overlays already made on it name that
format. The result's ``format`` is the one to give
as backing format.

Instance disks are in ``_disks`` (``Disks``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import urllib.error
import uuid

from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError, ssh_argument_spec
from ansible_collections.virtcloud.compute.plugins.module_utils._files import file_lock, fsync_dir, write_json
from ansible_collections.virtcloud.compute.plugins.module_utils._validate import is_uuid, split_image_ref
from ansible_collections.virtcloud.compute.plugins.module_utils._image_inspect import (
    ImageInspectError,
    ImageUnsafe,
    inspect_image,
    sha256_file,
)
from ansible_collections.virtcloud.compute.plugins.module_utils._ssh import SAFE_PATH_RE, ScpRemote, SshError

IMAGE_FILE = "image"
RECORD_FILE = "image.json"
LOCK_FILE = ".lock"
IMPORT_PREFIX = ".import-"
DELETED_PREFIX = ".deleted-"
BASE_DIR = "_base"
FETCH_PREFIX = ".fetch-"

DEFAULT_STORE_PATH = "/var/lib/virtcloud/images"
# Glance's image_size_cap default: 1 TiB.
DEFAULT_SIZE_CAP = 1024**4
CHUNK = 1024 * 1024

DISK_FORMATS = ("qcow2", "raw")
CONTAINER_FORMAT = "bare"
STATUSES = ("queued", "active", "deleted")
IMAGE_TYPES = ("image", "snapshot")
VISIBILITIES = ("public", "private", "shared", "community")
VERIFY_MODES = ("quick", "full")
MAX_PROPERTIES = 128  # Glance's image_property_quota default
MAX_VALUE = 255

SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._+:@() -]{0,253}[A-Za-z0-9._+:@()-])?\Z")
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}\Z")
PROPERTY_KEY_RE = re.compile(r"^[a-z0-9_:]{1,255}\Z")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

RECORD_FIELDS = (
    "id",
    "name",
    "status",
    "disk_format",
    "container_format",
    "size",
    "virtual_size",
    "sha256",
    "properties",
    "owner",
    "visibility",
    "image_type",
    "instance_uuid",
    "created_at",
    "updated_at",
)
# Keys a property cannot have: the record's own fields and Glance's core attributes.
RESERVED_PROPERTIES = frozenset(
    RECORD_FIELDS + ("file", "checksum", "os_hash_algo", "os_hash_value", "location", "locations", "direct_url", "schema", "self", "tags", "protected")
)

# Nova's fields.Architecture, fields.HVType and fields.VMMode, with their canonicalize().
ARCHITECTURES = (
    "alpha",
    "armv6",
    "armv7l",
    "armv7b",
    "aarch64",
    "cris",
    "i686",
    "ia64",
    "lm32",
    "m68k",
    "microblaze",
    "microblazeel",
    "mips",
    "mipsel",
    "mips64",
    "mips64el",
    "openrisc",
    "parisc",
    "parisc64",
    "ppc",
    "ppcle",
    "ppc64",
    "ppc64le",
    "ppcemb",
    "s390",
    "s390x",
    "sh4",
    "sh4eb",
    "sparc",
    "sparc64",
    "unicore32",
    "x86_64",
    "xtensa",
    "xtensaeb",
)
ARCH_ALIASES = {"i386": "i686", "i486": "i686", "i586": "i686", "x86_32": "i686", "x86_32p": "i686", "amd64": "x86_64"}
HV_TYPES = (
    "baremetal",
    "bhyve",
    "docker",
    "fake",
    "hyperv",
    "ironic",
    "kqemu",
    "kvm",
    "lxc",
    "lxd",
    "openvz",
    "parallels",
    "virtuozzo",
    "phyp",
    "qemu",
    "test",
    "uml",
    "vbox",
    "vmware",
    "xen",
    "zvm",
    "ps",
)
HV_ALIASES = {"xapi": "xen"}
VM_MODES = ("hvm", "xen", "uml", "exe")
VM_MODE_ALIASES = {"baremetal": "hvm", "hv": "hvm", "pv": "xen"}
INT_PROPERTIES = ("min_ram", "min_disk")


class ImageStoreError(VirtcloudError):
    """An image, cache or disk operation was refused or failed; the message says what to do."""


class ImageConflict(ImageStoreError):
    """The wanted image contradicts one already in the store."""


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def now_iso(now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_image_id(value, what: str = "id") -> str:
    """A uuid in its canonical lowercase form."""
    if not isinstance(value, str):
        raise ImageStoreError(f"{what} {value!r} is not a uuid")
    try:
        canonical = str(uuid.UUID(value.strip()))
    except ValueError as exc:
        raise ImageStoreError(f"{what} {value!r} is not a uuid (like 0b4c6e44-1b1a-4f0e-9c1a-0e5e3f1b2c3d)") from exc
    return canonical


def check_name(value) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ImageStoreError(
            f"image name {value!r} is not valid: 1 to 255 characters, letters, digits and . _ + : @ ( ) - or inner spaces, starting with a letter or digit"
        )
    return value


def check_sha256(value, what: str = "checksum") -> str:
    if not isinstance(value, str):
        raise ImageStoreError(f"{what} {value!r} is not a sha256 (64 hex digits)")
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    if not SHA256_RE.match(text):
        raise ImageStoreError(f"{what} {value!r} is not a sha256 (64 hex digits, optionally prefixed sha256:)")
    return text


def check_path(value, what: str = "path", safe: bool = False) -> str:
    """An absolute, normalised path; ``safe`` also limits it to characters no shell or scp reads specially."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or "\n" in value:
        raise ImageStoreError(f"{what} {value!r} is not an absolute path")
    if os.path.normpath(value) != value and not (value.endswith("/") and os.path.normpath(value) == value.rstrip("/")):
        raise ImageStoreError(f"{what} {value!r} is not a normalised path (no //, . or .. parts)")
    value = os.path.normpath(value)
    if safe and not SAFE_PATH_RE.match(value):
        raise ImageStoreError(f"{what} {value!r} may only hold letters, digits and . _ + @ - between slashes")
    return value


def _canonical(key: str, value: str, allowed: tuple, aliases: dict) -> str:
    name = aliases.get(value.lower(), value.lower())
    if name not in allowed:
        raise ImageStoreError(f"property {key}={value!r} is not one of Nova's values: {', '.join(allowed)}")
    return name


def normalize_properties(props) -> dict:
    """Property dict to {key: string}; raises on a bad key or value.

    Keys: ``[a-z0-9_:]`` (1 to 255), not a record field. Values: strings of at
    most 255 characters; numbers become strings, booleans ``true``/``false``.
    min_ram and min_disk must be whole numbers >= 0; hw_architecture,
    img_hv_type and hw_vm_mode are canonicalised as Nova does (amd64 ->
    x86_64) and must be values Nova knows.
    """
    if props is None:
        return {}
    if not isinstance(props, dict):
        raise ImageStoreError(f"properties must be a dict of strings, not {type(props).__name__}")
    if len(props) > MAX_PROPERTIES:
        raise ImageStoreError(f"an image has at most {MAX_PROPERTIES} properties, {len(props)} given")
    out = {}
    for key, value in props.items():
        if not isinstance(key, str) or not PROPERTY_KEY_RE.match(key):
            raise ImageStoreError(f"property key {key!r} is not valid: 1 to 255 of lowercase letters, digits, _ and :")
        if key in RESERVED_PROPERTIES:
            raise ImageStoreError(f"property key {key!r} is a field of the image record, not a property; use the module's own option")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif not isinstance(value, str):
            raise ImageStoreError(f"property {key} must be a string (or number), not {type(value).__name__}")
        if len(value) > MAX_VALUE:
            raise ImageStoreError(f"property {key} is {len(value)} characters long, at most {MAX_VALUE} are allowed")
        if CONTROL_RE.search(value):
            raise ImageStoreError(f"property {key} holds control characters")
        if key in INT_PROPERTIES:
            if not value.isdigit():
                raise ImageStoreError(f"property {key}={value!r} must be a whole number >= 0 ({('MiB' if key == 'min_ram' else 'GiB')})")
            value = str(int(value))
        elif key == "hw_architecture":
            value = _canonical(key, value, ARCHITECTURES, ARCH_ALIASES)
        elif key == "img_hv_type":
            value = _canonical(key, value, HV_TYPES, HV_ALIASES)
        elif key == "hw_vm_mode":
            value = _canonical(key, value, VM_MODES, VM_MODE_ALIASES)
        out[key] = value
    return dict(sorted(out.items()))


def _int(record: dict, key: str, minimum: int = 0, optional: bool = False) -> None:
    value = record.get(key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ImageStoreError(f"field {key}={value!r} is not a whole number >= {minimum}")


def validate_record(data, image_id: str | None = None, where: str = "image record") -> dict:
    """Check a record read from a store (ours or a remote one); returns it with only the known fields."""
    if not isinstance(data, dict):
        raise ImageStoreError(f"{where} is not a JSON object")
    try:
        record = {k: data.get(k) for k in RECORD_FIELDS}
        if check_image_id(record["id"]) != record["id"]:
            raise ImageStoreError(f"id {record['id']!r} is not in canonical form")
        if image_id is not None and record["id"] != image_id:
            raise ImageStoreError(f"it holds id {record['id']}, expected {image_id}")
        check_name(record["name"])
        if record["status"] not in STATUSES:
            raise ImageStoreError(f"status {record['status']!r} is not one of {', '.join(STATUSES)}")
        if record["disk_format"] not in DISK_FORMATS:
            raise ImageStoreError(f"disk_format {record['disk_format']!r} is not one of {', '.join(DISK_FORMATS)}")
        if record["container_format"] != CONTAINER_FORMAT:
            raise ImageStoreError(f"container_format {record['container_format']!r} is not {CONTAINER_FORMAT}")
        _int(record, "size", 1)
        _int(record, "virtual_size", 1)
        if check_sha256(record["sha256"], "sha256") != record["sha256"]:
            raise ImageStoreError("sha256 is not lowercase hex")
        if normalize_properties(record["properties"]) != record["properties"]:
            raise ImageStoreError("properties are not in normal form")
        if record["owner"] is not None and not (isinstance(record["owner"], str) and OWNER_RE.match(record["owner"])):
            raise ImageStoreError(f"owner {record['owner']!r} is not valid")
        if record["visibility"] not in VISIBILITIES:
            raise ImageStoreError(f"visibility {record['visibility']!r} is not one of {', '.join(VISIBILITIES)}")
        if record["image_type"] not in IMAGE_TYPES:
            raise ImageStoreError(f"image_type {record['image_type']!r} is not one of {', '.join(IMAGE_TYPES)}")
        if record["image_type"] == "snapshot":
            check_image_id(record["instance_uuid"], "instance_uuid")
        elif record["instance_uuid"] is not None:
            raise ImageStoreError("instance_uuid is set on an image that is not a snapshot")
        for key in ("created_at", "updated_at"):
            if not isinstance(record[key], str):
                raise ImageStoreError(f"{key} is missing")
    except ImageStoreError as exc:
        raise ImageStoreError(f"{where} is not valid: {exc}") from exc
    return record


def _owner(value) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not OWNER_RE.match(value):
        raise ImageStoreError(f"owner {value!r} is not valid: a project name of letters, digits and . _ @ -")
    return value


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ImageStoreError(f"{what} {path} cannot be read: {exc}") from exc


def store_lock(path: str, timeout: float, what: str):
    """The lock file ``path`` beside what it protects (``_files.file_lock``); ImageStoreError after ``timeout`` seconds."""
    return file_lock(path, timeout, what, error=ImageStoreError)


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _copy_stream(read, out, digest, size_cap: int, what: str) -> int:
    total = 0
    while True:
        chunk = read(CHUNK)
        if not chunk:
            return total
        total += len(chunk)
        if total > size_cap:
            raise ImageStoreError(f"{what} is larger than the size cap of {size_cap} bytes; raise size_cap if it is wanted")
        digest.update(chunk)
        out.write(chunk)


def copy_file(src: str, out, size_cap: int) -> tuple[int, str]:
    """Copy the regular file ``src`` into the open file ``out``; returns (size, sha256)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        raise ImageStoreError(f"source file {src} cannot be opened: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ImageStoreError(f"source {src} is not a regular file")
        if st.st_size > size_cap:
            raise ImageStoreError(f"source {src} has {st.st_size} bytes, more than the size cap of {size_cap}; raise size_cap if it is wanted")
        digest = hashlib.sha256()
        size = _copy_stream(f.read, out, digest, size_cap, f"source {src}")
    return size, digest.hexdigest()


def check_url(url) -> str:
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+(/\S*)?\Z", url):
        raise ImageStoreError(f"url {url!r} is not an http:// or https:// address (for a file on the image host use src)")
    return url


def download(url: str, out, size_cap: int, timeout: int = 60, validate_certs: bool = True) -> tuple[int, str]:
    """Download ``url`` into the open file ``out``; returns (size, sha256)."""
    check_url(url)
    # imported here: ansible's urls (and the TLS libraries behind it) take tens of milliseconds
    # to import, and only a download needs them
    from ansible.module_utils.urls import ConnectionError as UrlConnectionError  # pylint: disable=import-outside-toplevel
    from ansible.module_utils.urls import SSLValidationError, open_url  # pylint: disable=import-outside-toplevel

    try:
        resp = open_url(url, timeout=timeout, validate_certs=validate_certs, follow_redirects="safe", http_agent="virtcloud.compute-image", use_netrc=False)
    except urllib.error.HTTPError as exc:
        raise ImageStoreError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, SSLValidationError, UrlConnectionError, http.client.HTTPException, socket.timeout, OSError, ValueError) as exc:
        raise ImageStoreError(f"download of {url} failed: {getattr(exc, 'reason', None) or exc}") from exc
    try:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > size_cap:
            raise ImageStoreError(f"{url} announces {length} bytes, more than the size cap of {size_cap}; raise size_cap if it is wanted")
        digest = hashlib.sha256()
        try:
            size = _copy_stream(resp.read, out, digest, size_cap, url)
        except (http.client.HTTPException, socket.timeout, OSError) as exc:
            raise ImageStoreError(f"download of {url} broke off: {exc}") from exc
        if length and length.isdigit() and int(length) != size:
            raise ImageStoreError(f"download of {url} broke off: {size} of {length} bytes")
    finally:
        resp.close()
    return size, digest.hexdigest()


# ---------------------------------------------------------------------------
# Files on other hosts, over scp (the command line is built in _ssh)
# ---------------------------------------------------------------------------


def remote_host(option: str, host: str, **ssh) -> ScpRemote:
    """The other host as ``_ssh.ScpRemote``; a value that cannot reach the command line is an ImageStoreError."""
    try:
        return ScpRemote(host, option=option, **ssh)
    except SshError as exc:
        raise ImageStoreError(str(exc)) from None


def pull(remote: ScpRemote, run, path: str, dest: str, size_cap: int) -> tuple[int, str]:
    """Copy the file ``path`` of the other host to the new local file ``dest``; returns (size, sha256).

    The copy is stopped at ``size_cap`` + 1 bytes; a failed copy leaves whatever
    scp wrote in ``dest`` (the caller removes its work directory).
    """
    path = check_path(path, "src", safe=True)
    source = remote.location(path)
    rc, err = remote.copy(run, remote.argv([path], dest, max_bytes=size_cap + 1))
    try:
        size = os.lstat(dest).st_size
    except FileNotFoundError:
        size = None
    if size is not None and size > size_cap:
        raise ImageStoreError(f"{source} is larger than the size cap of {size_cap} bytes; raise size_cap if it is wanted; nothing was imported")
    if rc != 0:
        raise ImageStoreError(f"fetching {source} to this host failed (scp rc {rc}): {err}. {remote.failure_hint(path)}; nothing was imported")
    if not os.path.isfile(dest) or os.path.islink(dest):
        raise ImageStoreError(f"scp of {source} made no regular file; nothing was imported")
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        return os.stat(dest).st_size, sha256_file(dest)
    except ImageInspectError as exc:
        raise ImageStoreError(str(exc)) from exc


# ---------------------------------------------------------------------------
# The image store
# ---------------------------------------------------------------------------


class ImageStore:
    """The image store directory on the image host."""

    def __init__(self, path: str, qemu_img=None, check_mode: bool = False, log=None, lock_timeout: float = 60, now=None, run=None) -> None:
        self.path = check_path(path, "store_path", safe=True)
        self.qemu_img = qemu_img
        self.run = run  # run(argv, data=None) -> (rc, out, err), for scp (src_host)
        self.check_mode = check_mode
        self.log = log
        self.lock_timeout = lock_timeout
        self._now = now or now_iso

    # -- reading -----------------------------------------------------------------

    def image_dir(self, image_id: str) -> str:
        return os.path.join(self.path, check_image_id(image_id))

    def image_file(self, image_id: str) -> str:
        return os.path.join(self.image_dir(image_id), IMAGE_FILE)

    def require(self) -> None:
        if not os.path.isdir(self.path):
            raise ImageStoreError(
                f"image store {self.path} does not exist on this host; make it with the role virtcloud.compute.image_store, or give the right store_path"
            )

    def get(self, image_id: str) -> dict | None:
        image_id = check_image_id(image_id)
        path = os.path.join(self.path, image_id, RECORD_FILE)
        data = read_json(path, "image record")
        if data is None:
            return None
        return validate_record(data, image_id, where=f"image record {path}")

    def records(self) -> list[dict]:
        """Every image in the store, oldest first."""
        if not os.path.isdir(self.path):
            return []
        out = []
        for entry in sorted(os.listdir(self.path)):
            if is_uuid(entry) and os.path.isdir(os.path.join(self.path, entry)):
                record = self.get(entry)
                if record is not None:
                    out.append(record)
        return sorted(out, key=lambda r: (r["created_at"], r["name"], r["id"]))

    def find(self, name: str) -> dict | None:
        name = check_name(name)
        found = [r for r in self.records() if r["name"] == name]
        if len(found) > 1:
            raise ImageStoreError(
                f"image name {name!r} is used by several images ({', '.join(r['id'] for r in found)}): names must be unique; delete or rename one by id"
            )
        return found[0] if found else None

    def lookup(self, image_id: str | None = None, name: str | None = None) -> dict | None:
        """The image with this id (and name, when both are given), or by name alone."""
        if image_id:
            record = self.get(image_id)
            if record is not None and name and record["name"] != name:
                other = self.find(name)
                if other is not None:
                    raise ImageConflict(f"image {record['id']} is named {record['name']!r}, and the name {name!r} belongs to image {other['id']}")
            return record
        if name:
            return self.find(name)
        raise ImageStoreError("give the image's id or name")

    def list(
        self,
        image_id: str | None = None,
        name: str | None = None,
        image_type: str | None = None,
        instance_uuid: str | None = None,
        ref: str | None = None,
    ) -> list[dict]:
        """The image records, filtered; ``ref`` is an id when it has an id's (uuid's) form, a name otherwise."""
        if ref:
            if image_id or name:
                raise ImageStoreError("image is either an id or a name: give image, or id or name, not both")
            image_id, name = split_image_ref(ref)
        self.require()
        images = self.records()
        if image_id:
            image_id = check_image_id(image_id)
            images = [r for r in images if r["id"] == image_id]
        if name:
            images = [r for r in images if r["name"] == check_name(name)]
        if image_type:
            images = [r for r in images if r["image_type"] == image_type]
        if instance_uuid:
            instance_uuid = check_image_id(instance_uuid, "instance_uuid")
            images = [r for r in images if r["instance_uuid"] == instance_uuid]
        return images

    # -- changing -----------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self):
        if self.check_mode:
            yield
            return
        os.makedirs(self.path, mode=0o755, exist_ok=True)
        with store_lock(os.path.join(self.path, LOCK_FILE), self.lock_timeout, f"image store {self.path}"):
            self._clean_stale()
            yield

    def _clean_stale(self) -> None:
        """Leftovers of interrupted runs; only called while holding the store lock."""
        for entry in os.listdir(self.path):
            if entry.startswith((IMPORT_PREFIX, DELETED_PREFIX)):
                _remove_tree(os.path.join(self.path, entry))
                self._log("warning", f"removed {entry}, left by an interrupted run")

    def _log(self, level: str, message: str) -> None:
        if self.log is not None:
            getattr(self.log, level)(message)

    def ensure(
        self,
        name: str | None = None,
        image_id: str | None = None,
        src: str | None = None,
        url: str | None = None,
        disk_format: str = "qcow2",
        properties=None,
        image_type: str = "image",
        instance_uuid: str | None = None,
        checksum: str | None = None,
        owner: str | None = None,
        visibility: str | None = None,
        size_cap: int = DEFAULT_SIZE_CAP,
        timeout: int = 60,
        validate_certs: bool = True,
        src_host: str | None = None,
        src_user: str = "root",
        src_port: int = 22,
        ssh_key: str | None = None,
        known_hosts: str | None = None,
        connect_timeout: int = 10,
    ) -> dict:
        """Make the image present; returns {changed, before, after, actions}.

        ``properties`` None leaves an existing image's properties as they are;
        a dict is the complete set wanted. ``visibility`` None means public for
        a new image and unchanged for an existing one.

        With ``src_host``, ``src`` is a file on that host, pulled with scp (as
        ``src_user``, strict host keys) into the import's work directory and then
        imported as a local file is. An existing image is then compared by
        ``checksum`` only: without it, the image of that name/id is taken as the
        one wanted and nothing is fetched. Check mode never contacts the host.
        """
        if name is not None:
            check_name(name)
        if image_id is not None:
            image_id = check_image_id(image_id)
        if name is None and image_id is None:
            raise ImageStoreError("give the image a name (and optionally an id)")
        if src is not None and url is not None:
            raise ImageStoreError("give src or url, not both")
        remote = None
        if src_host is not None:
            if src is None:
                raise ImageStoreError(f"src_host needs src, the path of the file on {src_host}")
            remote = remote_host("src", src_host, user=src_user, port=src_port, ssh_key=ssh_key, known_hosts=known_hosts, connect_timeout=connect_timeout)
            src = check_path(src, "src", safe=True)
        elif src is not None:
            src = check_path(src, "src")
        if url is not None:
            check_url(url)
        if disk_format not in DISK_FORMATS:
            raise ImageStoreError(f"disk_format {disk_format!r} is not one of {', '.join(DISK_FORMATS)}")
        if image_type not in IMAGE_TYPES:
            raise ImageStoreError(f"image_type {image_type!r} is not one of {', '.join(IMAGE_TYPES)}")
        if image_type == "snapshot":
            if not instance_uuid:
                raise ImageStoreError("a snapshot needs instance_uuid, the instance it was taken from")
            instance_uuid = check_image_id(instance_uuid, "instance_uuid")
        elif instance_uuid:
            raise ImageStoreError("instance_uuid is only for image_type snapshot")
        if checksum is not None:
            checksum = check_sha256(checksum)
        owner = _owner(owner)
        if visibility is not None and visibility not in VISIBILITIES:
            raise ImageStoreError(f"visibility {visibility!r} is not one of {', '.join(VISIBILITIES)}")
        wanted_props = None if properties is None else normalize_properties(properties)
        if isinstance(size_cap, bool) or not isinstance(size_cap, int) or size_cap <= 0:
            raise ImageStoreError(f"size_cap {size_cap!r} is not a positive number of bytes")

        if os.path.exists(self.path):
            self.require()
        with self.locked():
            existing = self.lookup(image_id, name)
            if image_id and existing is None and name:
                other = self.find(name)
                if other is not None:
                    raise ImageConflict(f"the name {name!r} belongs to image {other['id']}; pick another name for image {image_id}")
            if existing is not None:
                # a remote src is not read again: the given checksum, if any, is what is compared
                return self._update(
                    existing, name, src if remote is None else None, url, disk_format, wanted_props, image_type, instance_uuid, checksum, owner, visibility
                )
            if src is None and url is None:
                raise ImageStoreError(
                    f"image {name or image_id} is not in the store {self.path}: give src (a file on this host, or on src_host) or url to import it"
                )
            if remote is not None:
                try:
                    remote.check_files()
                except SshError as exc:
                    raise ImageStoreError(str(exc)) from None
            spec = dict(
                name=name,
                image_id=image_id,
                src=src,
                url=url,
                disk_format=disk_format,
                properties=wanted_props or {},
                image_type=image_type,
                instance_uuid=instance_uuid,
                checksum=checksum,
                owner=owner,
                visibility=visibility or "public",
                remote=remote,
                source=remote.location(src) if remote is not None else src or url,
            )
            if self.check_mode:
                return self._plan_import(spec, size_cap)
            return self._import(spec, size_cap, timeout, validate_certs)

    def _update(self, existing, name, src, url, disk_format, properties, image_type, instance_uuid, checksum, owner, visibility) -> dict:
        ident = f"image {existing['id']} ({existing['name']})"
        if disk_format != existing["disk_format"]:
            raise ImageConflict(
                f"{ident} has disk_format {existing['disk_format']}, not {disk_format}: the content of an image never changes; delete it first or import under "
                f"another name"
            )
        if image_type != existing["image_type"] or instance_uuid != existing["instance_uuid"]:
            raise ImageConflict(
                f"{ident} is of image_type {existing['image_type']} (instance_uuid {existing['instance_uuid']}), "
                f"not {image_type} (instance_uuid {instance_uuid}): "
                f"these never change"
            )
        if checksum is not None and checksum != existing["sha256"]:
            raise ImageConflict(
                f"{ident} has sha256 {existing['sha256']}, not the given checksum {checksum}: "
                "the content of an image id never changes; import the new content under another name"
            )
        if src is not None:
            same = False
            try:
                same_size = os.stat(src).st_size == existing["size"]
            except OSError as exc:
                raise ImageStoreError(f"source file {src} cannot be read: {exc.strerror or exc}") from exc
            if same_size:
                try:
                    same = sha256_file(src) == existing["sha256"]
                except ImageInspectError as exc:
                    raise ImageStoreError(str(exc)) from exc
            if not same:
                raise ImageConflict(
                    f"{ident} holds other content than {src} (sha256 {existing['sha256']}): "
                    "the content of an image never changes; import it under another name, or delete the image first"
                )
        # url or src_host without checksum: an image of that name/id is taken as it is (never fetched again).
        after = dict(existing)
        if name is not None:
            after["name"] = name
        if properties is not None:
            after["properties"] = properties
        if owner is not None:
            after["owner"] = owner
        if visibility is not None:
            after["visibility"] = visibility
        changed = after != existing
        actions = []
        if changed:
            fields = [k for k in RECORD_FIELDS if after[k] != existing[k]]
            actions.append(f"update {', '.join(fields)} of {ident}")
            after["updated_at"] = self._now()
            if not self.check_mode:
                write_json(os.path.join(self.image_dir(existing["id"]), RECORD_FILE), after)
                self._log("info", f"updated {', '.join(fields)} of {ident}")
        return dict(changed=changed, before=existing, after=after, actions=actions)

    def _new_record(self, spec: dict, image_id: str, size: int, virtual_size: int, sha256: str | None) -> dict:
        now = self._now()
        return dict(
            id=image_id,
            name=spec["name"] or image_id,
            status="active",
            disk_format=spec["disk_format"],
            container_format=CONTAINER_FORMAT,
            size=size,
            virtual_size=virtual_size,
            sha256=sha256,
            properties=spec["properties"],
            owner=spec["owner"],
            visibility=spec["visibility"],
            image_type=spec["image_type"],
            instance_uuid=spec["instance_uuid"],
            created_at=now,
            updated_at=now,
        )

    def _plan_import(self, spec: dict, size_cap: int) -> dict:
        """Check mode: inspect a local source as the real run would (reading only); a URL or remote file is not read."""
        image_id = spec["image_id"] or str(uuid.uuid4())
        size = virtual_size = sha = None
        if spec["src"] is not None and spec["remote"] is None:
            try:
                size = os.stat(spec["src"]).st_size
            except OSError as exc:
                raise ImageStoreError(f"source file {spec['src']} cannot be read: {exc.strerror or exc}") from exc
            if size > size_cap:
                raise ImageStoreError(f"source {spec['src']} has {size} bytes, more than the size cap of {size_cap}")
            virtual_size = inspect_image(spec["src"], spec["disk_format"], self.qemu_img)["virtual_size"]
            sha = sha256_file(spec["src"])
            if spec["checksum"] is not None and sha != spec["checksum"]:
                raise ImageStoreError(f"source {spec['src']} has sha256 {sha}, not the given checksum {spec['checksum']}")
        else:
            sha = spec["checksum"]
        record = self._new_record(spec, image_id, size, virtual_size, sha)
        return dict(changed=True, before=None, after=record, actions=[f"import {spec['source']} as image {record['name']} ({image_id})"])

    def _import(self, spec: dict, size_cap: int, timeout: int, validate_certs: bool) -> dict:
        image_id = spec["image_id"] or str(uuid.uuid4())
        source = spec["source"]
        if spec["remote"] is not None and self.run is None:
            raise ImageStoreError(f"no command runner given to the image store: cannot run scp for {source}")
        work = tempfile.mkdtemp(prefix=IMPORT_PREFIX, dir=self.path)
        try:
            os.chmod(work, 0o700)
            data = os.path.join(work, IMAGE_FILE)
            if spec["remote"] is not None:
                size, sha = pull(spec["remote"], self.run, spec["src"], data, size_cap)
            else:
                with open(data, "xb") as out:
                    if spec["src"] is not None:
                        size, sha = copy_file(spec["src"], out, size_cap)
                    else:
                        size, sha = download(spec["url"], out, size_cap, timeout, validate_certs)
                    out.flush()
                    os.fsync(out.fileno())
            if spec["checksum"] is not None and sha != spec["checksum"]:
                raise ImageStoreError(f"{source} has sha256 {sha}, not the given checksum {spec['checksum']}; nothing was imported")
            try:
                info = inspect_image(data, spec["disk_format"], self.qemu_img)
            except ImageUnsafe as exc:
                # name the source, not the temporary copy
                raise ImageUnsafe(source, exc.declared, exc.detected, exc.reason) from exc
            record = self._new_record(spec, image_id, size, info["virtual_size"], sha)
            os.chmod(data, 0o644)
            write_json(os.path.join(work, RECORD_FILE), record)
            os.chmod(work, 0o755)
            try:
                os.rename(work, os.path.join(self.path, image_id))
            except OSError as exc:
                raise ImageStoreError(f"image {image_id} cannot be put in place in {self.path}: {exc.strerror or exc}") from exc
            fsync_dir(self.path)
        except BaseException:
            _remove_tree(work)
            raise
        self._log("info", f"imported {source} as image {image_id} ({record['name']}, {record['disk_format']}, {size} bytes, sha256 {sha})")
        return dict(changed=True, before=None, after=record, actions=[f"import {source} as image {record['name']} ({image_id})"])

    def delete(self, image_id: str | None = None, name: str | None = None) -> dict:
        """Remove the image; returns {changed, before, after, actions}."""
        if not os.path.isdir(self.path):
            return dict(changed=False, before=None, after=None, actions=[])
        with self.locked():
            existing = self.lookup(image_id, name)
            if existing is None:
                return dict(changed=False, before=None, after=None, actions=[])
            if image_id and name and existing["name"] != name:
                raise ImageConflict(f"image {existing['id']} is named {existing['name']!r}, not {name!r}: nothing deleted")
            action = f"delete image {existing['id']} ({existing['name']})"
            if not self.check_mode:
                trash = os.path.join(self.path, f"{DELETED_PREFIX}{existing['id']}-{uuid.uuid4().hex[:8]}")
                os.rename(self.image_dir(existing["id"]), trash)
                fsync_dir(self.path)
                with contextlib.suppress(OSError):
                    write_json(os.path.join(trash, RECORD_FILE), dict(existing, status="deleted", updated_at=self._now()))
                _remove_tree(trash)
                self._log("info", f"deleted image {existing['id']} ({existing['name']})")
            return dict(changed=True, before=existing, after=None, actions=[action])


# ---------------------------------------------------------------------------
# The image cache on a compute host
# ---------------------------------------------------------------------------


def base_name(image_id: str) -> str:
    """Nova's cache file name: the SHA-1 of the image id."""
    return hashlib.sha1(check_image_id(image_id).encode("ascii")).hexdigest()  # nosec B324: a name, not security


def base_path(instances_path: str, image_id: str) -> str:
    """``<instances_path>/_base/<sha1 of the image id>``: where a compute host caches an image."""
    return os.path.join(instances_path, BASE_DIR, base_name(image_id))


class ScpSource:
    """The image store host, reached from the compute host with scp (SFTP protocol, strict host keys)."""

    transport = "scp"

    def __init__(
        self,
        host: str,
        store_path: str = DEFAULT_STORE_PATH,
        user: str = "root",
        port: int = 22,
        ssh_key: str | None = None,
        known_hosts: str | None = None,
        connect_timeout: int = 10,
        scp: str = "scp",
    ) -> None:
        self.remote = remote_host("source", host, user=user, port=port, ssh_key=ssh_key, known_hosts=known_hosts, connect_timeout=connect_timeout, scp=scp)
        self.store_path = check_path(store_path, "source_path", safe=True)

    def describe(self, image_id: str) -> str:
        return self.remote.location(f"{self.store_path}/{check_image_id(image_id)}")

    def argv(self, image_id: str, names: list[str], dest_dir: str) -> list[str]:
        image_dir = f"{self.store_path}/{check_image_id(image_id)}"
        return self.remote.argv([f"{image_dir}/{n}" for n in names], dest_dir.rstrip("/") + "/")

    def fetch(self, run, image_id: str, names: list[str], dest_dir: str) -> None:
        rc, err = self.remote.copy(run, self.argv(image_id, names, dest_dir))
        if rc != 0:
            raise ImageStoreError(
                f"fetching image {image_id} from {self.describe(image_id)} to this host failed (scp rc {rc}): {err}. "
                "Check that the image exists in the store, and the host, ssh_key and known_hosts (strict host key checking)"
            )


class ImageCache:
    """``<instances_path>/_base`` on a compute host."""

    def __init__(
        self, instances_path: str, qemu_img, run, source=None, check_mode: bool = False, log=None, lock_timeout: float = 600, hostname: str | None = None
    ) -> None:
        self.instances_path = check_path(instances_path, "instances_path")
        self.base_dir = os.path.join(self.instances_path, BASE_DIR)
        self.qemu_img = qemu_img
        self.run = run
        self.source = source
        self.check_mode = check_mode
        self.log = log
        self.lock_timeout = lock_timeout
        self.hostname = hostname or socket.gethostname()

    def base_path(self, image_id: str) -> str:
        return base_path(self.instances_path, image_id)

    def _log(self, level: str, message: str) -> None:
        if self.log is not None:
            getattr(self.log, level)(message)

    @staticmethod
    def _stat(path: str) -> dict:
        # no st_dev: it differs between the NFS clients of one shared instances folder
        st = os.stat(path)
        return dict(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino)

    def status(self, image_id: str, expected_sha256: str | None = None, verify: str = "quick") -> dict:
        """Is the base file there and good? {present, ok, reason, info, hashed}; changes nothing."""
        path = self.base_path(image_id)
        if not os.path.lexists(path):
            return dict(present=False, ok=False, reason="not cached", info=None, hashed=False)
        if os.path.islink(path) or not os.path.isfile(path):
            return dict(present=True, ok=False, reason=f"{path} is not a regular file", info=None, hashed=False)
        try:
            info = read_json(path + ".info", "cache record")
        except ImageStoreError as exc:
            return dict(present=True, ok=False, reason=str(exc), info=None, hashed=False)
        if (
            not isinstance(info, dict)
            or info.get("image_id") != image_id
            or info.get("format") not in DISK_FORMATS
            or not isinstance(info.get("sha256"), str)
            or not isinstance(info.get("image_sha256"), str)
        ):
            return dict(present=True, ok=False, reason=f"no valid {path}.info side file for image {image_id}", info=None, hashed=False)
        if expected_sha256 is not None and info["image_sha256"] != expected_sha256:
            return dict(
                present=True,
                ok=False,
                hashed=False,
                info=info,
                reason=f"cached from content with sha256 {info['image_sha256']}, expected {expected_sha256}",
            )
        hashed = False
        current = self._stat(path)
        if verify == "full" or info.get("stat") != current:
            hashed = True
            actual = sha256_file(path)
            if actual != info["sha256"]:
                return dict(
                    present=True,
                    ok=False,
                    hashed=True,
                    info=info,
                    reason=f"sha256 of {path} is {actual}, not {info['sha256']} as when it was fetched",
                )
        try:
            inspected = inspect_image(path, info["format"], self.qemu_img)
        except ImageUnsafe as exc:
            return dict(present=True, ok=False, hashed=hashed, info=info, reason=str(exc))
        return dict(present=True, ok=True, reason=None, info=info, hashed=hashed, stat=current, virtual_size=inspected["virtual_size"])

    def ensure(
        self,
        image_id: str,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        expected_format: str | None = None,
        force_raw: bool = False,
        verify: str = "quick",
    ) -> dict:
        image_id = check_image_id(image_id)
        if expected_sha256 is not None:
            expected_sha256 = check_sha256(expected_sha256, "sha256")
        if expected_format is not None and expected_format not in DISK_FORMATS:
            raise ImageStoreError(f"disk_format {expected_format!r} is not one of {', '.join(DISK_FORMATS)}")
        if verify not in VERIFY_MODES:
            raise ImageStoreError(f"verify {verify!r} is not one of {', '.join(VERIFY_MODES)}")
        path = self.base_path(image_id)
        result = dict(
            image_id=image_id, path=path, fetched=False, repaired=None, transport=None, source=None, fetched_on=None, bytes=0, seconds=0.0, hashed=False
        )
        if not os.path.isdir(self.instances_path):
            raise ImageStoreError(
                f"instances_path {self.instances_path} does not exist on this host; prepare the host with the role "
                "virtcloud.compute.compute_node, or give the right instances_path"
            )
        if self.check_mode:
            state = self.status(image_id, expected_sha256, verify)
            if state["ok"]:
                return self._result(result, state["info"], state["virtual_size"], hashed=state["hashed"])
            result.update(
                fetched=True,
                repaired=state["reason"] if state["present"] else None,
                transport=self.source.transport if self.source else None,
                source=self.source.describe(image_id) if self.source else None,
                fetched_on=self.hostname,
                format="raw" if force_raw else expected_format,
                disk_format=expected_format,
                sha256=expected_sha256,
                base_sha256=None,
                size=None,
                virtual_size=None,
            )
            return result
        os.makedirs(self.base_dir, mode=0o755, exist_ok=True)
        with store_lock(path + ".lock", self.lock_timeout, f"base file of image {image_id}"):
            for entry in os.listdir(self.base_dir):
                if entry.startswith(f"{FETCH_PREFIX}{os.path.basename(path)}-"):
                    _remove_tree(os.path.join(self.base_dir, entry))
            state = self.status(image_id, expected_sha256, verify)
            if state["ok"]:
                if state["hashed"] and state["info"].get("stat") != state["stat"]:
                    # the hash still matches: remember the new stat, so the next use does not hash again
                    write_json(path + ".info", dict(state["info"], stat=state["stat"], verified_at=now_iso()))
                return self._result(result, state["info"], state["virtual_size"], hashed=state["hashed"])
            if state["present"]:
                result["repaired"] = state["reason"]
                self._log("warning", f"base file {path} of image {image_id} is not usable ({state['reason']}): fetching it again")
                if state["info"] is not None:
                    # overlays on the old file name its format as their backing format: keep it
                    force_raw = state["info"]["format"] == "raw"
            info, virtual_size = self._fetch(image_id, expected_sha256, expected_size, expected_format, force_raw, result)
        return self._result(result, info, virtual_size, hashed=True)

    @staticmethod
    def _result(result: dict, info: dict, virtual_size: int, hashed: bool) -> dict:
        result.update(
            format=info["format"],
            sha256=info["image_sha256"],
            base_sha256=info["sha256"],
            size=info["size"],
            virtual_size=virtual_size,
            disk_format=info["disk_format"],
            hashed=hashed,
        )
        return result

    def _check_space(self, expected_size: int | None) -> None:
        if not expected_size:
            return
        st = os.statvfs(self.base_dir)
        free = st.f_bavail * st.f_frsize
        if free < expected_size:
            raise ImageStoreError(f"{self.base_dir} has {free} bytes free, the image needs {expected_size}")

    def _fetch(self, image_id, expected_sha256, expected_size, expected_format, force_raw, result) -> tuple[dict, int]:
        if self.source is None:
            raise ImageStoreError(f"image {image_id} is not cached in {self.base_dir} and no source host was given to fetch it from")
        self._check_space(expected_size)
        path = self.base_path(image_id)
        work = tempfile.mkdtemp(prefix=f"{FETCH_PREFIX}{os.path.basename(path)}-", dir=self.base_dir)
        started = time.monotonic()
        try:
            self.source.fetch(self.run, image_id, [RECORD_FILE, IMAGE_FILE], work)
            record = validate_record(
                read_json(os.path.join(work, RECORD_FILE), "fetched image record"),
                image_id,
                where=f"the record of image {image_id} on {self.source.describe(image_id)}",
            )
            if record["status"] != "active":
                raise ImageStoreError(f"image {image_id} is {record['status']} in the store, not active")
            for what, want, have in (
                ("sha256", expected_sha256, record["sha256"]),
                ("size", expected_size, record["size"]),
                ("disk_format", expected_format, record["disk_format"]),
            ):
                if want is not None and want != have:
                    raise ImageStoreError(f"image {image_id} has {what} {have} in the store, the caller expected {want}; nothing cached")
            data = os.path.join(work, IMAGE_FILE)
            size = os.stat(data).st_size
            result["bytes"] = size
            result["seconds"] = round(time.monotonic() - started, 3)
            if size != record["size"]:
                raise ImageStoreError(f"the copy of image {image_id} has {size} bytes, the record says {record['size']}; nothing cached")
            sha = sha256_file(data)
            if sha != record["sha256"]:
                raise ImageStoreError(f"the copy of image {image_id} has sha256 {sha}, the record says {record['sha256']}; nothing cached")
            try:
                info = inspect_image(data, record["disk_format"], self.qemu_img)
            except ImageUnsafe as exc:
                raise ImageUnsafe(f"{self.source.describe(image_id)}/{IMAGE_FILE}", exc.declared, exc.detected, exc.reason) from exc
            base, base_format, base_sha = data, record["disk_format"], sha
            if force_raw and record["disk_format"] != "raw":
                base = os.path.join(work, "image.raw")
                self.qemu_img.convert(data, info["qemu_format"], base, "raw")
                info = inspect_image(base, "raw", self.qemu_img)
                base_format, base_sha = "raw", sha256_file(base)
                os.unlink(data)
            os.chmod(base, 0o644)
            side = dict(
                image_id=image_id,
                image_sha256=record["sha256"],
                image_size=record["size"],
                disk_format=record["disk_format"],
                format=base_format,
                sha256=base_sha,
                size=os.stat(base).st_size,
                virtual_size=info["virtual_size"],
                source=self.source.describe(image_id),
                fetched_at=now_iso(),
            )
            # the side file first, without stat: a crash before the rename leaves a side file that
            # nothing matches; a crash after it, one that makes the next use hash and then record the stat
            write_json(path + ".info", side)
            os.replace(base, path)
            fsync_dir(self.base_dir)
            side["stat"] = self._stat(path)
            side["verified_at"] = now_iso()
            write_json(path + ".info", side)
        finally:
            _remove_tree(work)
        result.update(
            fetched=True,
            transport=self.source.transport,
            source=self.source.describe(image_id),
            fetched_on=self.hostname,
            seconds=round(time.monotonic() - started, 3),
        )
        self._log(
            "info",
            f"fetched image {image_id} from {self.source.describe(image_id)} into {path} "
            f"({side['format']}, {result['bytes']} bytes, {result['seconds']:.1f} s)",
        )
        return side, info["virtual_size"]


def image_source_argument_spec() -> dict:
    """The image store host a compute host fills its cache from, without ``source_host`` (each
    module says whether it is required); doc fragments virtcloud.compute.image_source and
    virtcloud.compute.connection.ssh."""
    return dict(
        source_path=dict(type="path", default=DEFAULT_STORE_PATH),
        source_user=dict(type="str", default="root"),
        source_port=dict(type="int", default=22),
        force_raw=dict(type="bool", default=False),
        verify=dict(type="str", choices=list(VERIFY_MODES), default="quick"),
        **ssh_argument_spec(),
    )


def fill_cache(params: dict, image: dict, run, qemu_img, check_mode: bool = False, log=None, lock_timeout: float = 600) -> dict:
    """Make this host's cache hold IMAGE (a record: id, and sha256, size, disk_format when known),
    fetched from the image store host of ``params`` (a module's image_source_argument_spec options,
    ``source_host`` and ``instances_path``); returns :meth:`ImageCache.ensure`'s result."""
    source = ScpSource(
        params["source_host"],
        store_path=params["source_path"],
        user=params["source_user"],
        port=params["source_port"],
        ssh_key=params["ssh_key"],
        known_hosts=params["known_hosts"],
        connect_timeout=params["connect_timeout"],
    )
    cache = ImageCache(params["instances_path"], qemu_img, run, source=source, check_mode=check_mode, log=log, lock_timeout=lock_timeout)
    try:
        return cache.ensure(
            image["id"],
            expected_sha256=image.get("sha256"),
            expected_size=image.get("size"),
            expected_format=image.get("disk_format"),
            force_raw=params["force_raw"],
            verify=params["verify"],
        )
    except OSError as exc:
        raise ImageStoreError(f"image cache in {params['instances_path']}: {exc} (is the disk full, or the directory not writable?)") from exc
