# Copyright: Contributors to the virtcloud.compute project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A plain text table for the readable part of a workflow's result (the data itself goes to set_stats)."""

from __future__ import annotations

import typing as t


def cell(value: t.Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def text_table(rows: t.Iterable[t.Mapping[str, t.Any]], columns: t.Sequence[tuple[str, str]]) -> list[str]:
    """Lines of a table: a header of the column titles, then one line per row; COLUMNS is (key, title) pairs."""
    grid = [[title for _key, title in columns]] + [[cell(row.get(key)) for key, _title in columns] for row in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    return ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in grid]
