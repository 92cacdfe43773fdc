# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The compute host's claim: the claims file under its lock (the fit test is in test_capacity.py)."""

from __future__ import annotations

import pytest

from ansible_collections.virtcloud.compute.plugins.module_utils._claim import ClaimError, claim, pending, read_claims, release
from test_capacity import figures, flavor  # the host figures of the capacity table (pytest puts this folder on sys.path)


def test_claims_count_until_the_domain_exists_and_the_lock_file_records_them(tmp_path):
    path = str(tmp_path / "claims.json")
    domains = []

    def read_host(extra):
        return figures(list(domains) + list(extra)), {d["uuid"] for d in domains}

    big = flavor(ram_mb=2000)
    assert claim(path, "u1", big, "node", read_host)["changed"] is True
    assert claim(path, "u1", big, "node", read_host)["changed"] is False  # idempotent
    with pytest.raises(ClaimError, match=r"claim for instance u2 on node failed: RAM short by 416 MB: node has 1584 MB usable, 2000 MB requested"):
        claim(path, "u2", big, "node", read_host)  # u1's pending claim counts
    assert sorted(read_claims(path)) == ["u1"]
    # check mode reports the claim and writes nothing
    assert claim(path, "u3", flavor(ram_mb=100), "node", read_host, check_mode=True)["changed"] is True
    assert sorted(read_claims(path)) == ["u1"]
    # once u1 is a domain its claim is not counted twice
    domains.append(dict(uuid="u1", flavor=big, vm_state="building", task_state="spawning"))
    assert pending(read_claims(path), {"u1"}) == []
    assert release(path, "u1") is True and release(path, "u1") is False
    assert claim(path, "u2", flavor(ram_mb=1500), "node", read_host)["changed"] is True


def test_a_broken_claims_file_is_reported(tmp_path):
    path = tmp_path / "claims.json"
    path.write_text("[1, 2]")
    with pytest.raises(ClaimError, match="does not hold a mapping"):
        read_claims(str(path))
    path.write_text("{not json")
    with pytest.raises(ClaimError, match="cannot be read"):
        read_claims(str(path))
