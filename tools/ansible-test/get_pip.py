# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Offline stand-in for the pip bootstrap script that ansible-test downloads.

ansible-test creates an empty virtual environment for each sanity test and runs
``python get_pip_<version>.py [pip options] pip==<version> [--no-setuptools] [--no-wheel]``
from ``~/.ansible/test/cache/``; when that file is missing it downloads it from a
host that these machines cannot reach. ``tools/ansible-test/setup`` puts this script
there instead. It does what get-pip.py does, with the official pip wheel fetched
from PyPI beforehand: it runs pip straight from the wheel (a wheel is a zip archive
that Python can import from) and lets it install the requested packages.

The wheel directory comes from VIRTCLOUD_PIP_WHEELS (set by the setup script when
it writes this file), so nothing here reaches the network by itself.
"""

import glob
import os
import runpy
import sys

WHEEL_DIR = os.environ.get("VIRTCLOUD_PIP_WHEELS", "@WHEEL_DIR@")
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def main():
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    wheels = sorted(glob.glob(os.path.join(WHEEL_DIR, "pip-*.whl")))
    if not wheels:
        sys.exit(f"no pip wheel in {WHEEL_DIR}: run tools/ansible-test/setup first")
    sys.path.insert(0, wheels[-1])
    sys.argv = ["pip", "install", "--find-links", WHEEL_DIR] + args
    runpy.run_module("pip", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
