# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One exception base: every error of the collection's own is a VirtcloudError, so a module has one except."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from ansible_collections.virtcloud.compute.plugins import module_utils, plugin_utils
from ansible_collections.virtcloud.compute.plugins.module_utils._common import VirtcloudError

# Stand-ins for a library's own error when the library is not installed: not ours.
LIBRARY_STAND_INS = {"_NoLibvirtError"}


def own_errors():
    for package in (module_utils, plugin_utils):
        for info in pkgutil.iter_modules(package.__path__):
            mod = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, obj in vars(mod).items():
                if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == mod.__name__ and obj.__name__ not in LIBRARY_STAND_INS:
                    yield f"{info.name}.{name}", obj


def test_every_collection_error_derives_from_virtcloud_error():
    errors = dict(own_errors())
    for name in ("_instance.InstanceError", "_qemu_img.QemuImgError", "_image_inspect.ImageInspectError", "_lab.LabError", "_scheduler.SchedulerError"):
        assert name in errors
    assert [name for name, cls in errors.items() if not issubclass(cls, VirtcloudError)] == []
