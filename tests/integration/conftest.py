# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the lab tests: one lab for the whole session, torn down at the end."""

from __future__ import annotations

import os

import pytest

from harness import GUEST_IMAGE, named_lab, run_playbook

# VIRTCLOUD_TEST_LAB and VIRTCLOUD_TEST_LAB_NETWORK let several test runs use labs of their own;
# VIRTCLOUD_TEST_LAB2 and VIRTCLOUD_TEST_LAB2_NETWORK name the second lab that the teardown tests
# bring up beside it (one at a time, each removed again).
LAB = named_lab(os.environ.get("VIRTCLOUD_TEST_LAB", "vctest"), os.environ.get("VIRTCLOUD_TEST_LAB_NETWORK", "10.252.0.0/24"), hosts=3, non_shared=["node3"])
LAB2 = named_lab(os.environ.get("VIRTCLOUD_TEST_LAB2", "vchalf"), os.environ.get("VIRTCLOUD_TEST_LAB2_NETWORK", "10.253.0.0/24"), hosts=2, non_shared=[])


@pytest.fixture(scope="session")
def lab():
    """The test lab: up once per session, always removed at the end."""
    if not os.path.exists(GUEST_IMAGE):
        pytest.fail(f"the test guest image {GUEST_IMAGE} is missing: run tools/build-test-image (make image)")
    result = run_playbook("lab_up.yml", LAB.vars)
    try:
        assert result.rc == 0, f"lab_up failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
        yield LAB
    finally:
        run_playbook("lab_down.yml", LAB.vars)


@pytest.fixture(scope="session")
def cloud(lab):
    """The lab prepared as a cloud: image store, compute nodes, instance network, the test image."""
    prep = run_playbook("compute_node.yml", inventory=lab.inventory)
    assert prep.rc == 0, prep.stdout[-4000:]
    again = run_playbook("compute_node.yml", inventory=lab.inventory)
    assert again.rc == 0 and again.changed == 0, again.stdout[-4000:]
    image = run_playbook(
        "image_import.yml",
        dict(image_name="vctest", image_src=GUEST_IMAGE, image_properties={"hw_architecture": "x86_64", "min_ram": "128"}),
        inventory=lab.inventory,
    )
    assert image.rc == 0, image.stdout[-3000:]
    yield lab


def pytest_collection_modifyitems(items):
    """The teardown tests remove the lab: they run after every other lab test."""
    items.sort(key=lambda item: item.fspath.basename == "test_lab_teardown.py")
