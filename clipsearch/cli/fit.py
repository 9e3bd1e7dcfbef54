"""Tables that keep paths whole: other columns give way first, then paths are shortened from the left.

A path folded over five lines cannot be copied, and one broken at 80 columns in a pipe cannot be
opened. So on a terminal the optional columns are dropped, least useful first, until the table
fits; only when the paths still cannot fit are they shortened, keeping their end (the file name).
In a pipe there is no width at all: the table is as wide as its widest row.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.paths import display

if TYPE_CHECKING:
    from rich.table import Table

Build = Callable[[frozenset[str], Callable[[str], str]], "Table"]  # (columns left out, path text) -> table
MIN_PATH = 12


def shown_path(path: str, cwd: str | None = None) -> str:
    """A path as people read it: relative under the current folder, else with ~ for home."""
    shown = display(path)
    here = display(os.getcwd() if cwd is None else cwd).rstrip(os.sep)
    if here and shown.startswith(here + os.sep):
        return shown[len(here) + 1:]
    home = display(str(Path.home()))
    return "~" + shown[len(home):] if shown.startswith(home + os.sep) else shown


def shorten(text: str, width: int) -> str:
    """`text` in at most `width` cells, cut from the left at a folder boundary when one is near."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    tail = text
    while tail and cell_len(tail) > width - 1:
        tail = tail[1:]
    cut = tail.find(os.sep)
    if 0 < cut < len(tail) // 2:
        tail = tail[cut:]
    return "…" + tail


def width_of(table: Table) -> int:
    """The cells the table takes when nothing limits it."""
    from rich.console import Console
    from rich.measure import Measurement

    scratch = Console(width=100_000, file=io.StringIO(), color_system=None)
    return Measurement.get(scratch, scratch.options, table).maximum


def fit(build: Build, optional: Sequence[str], width: int | None) -> Table:
    """The fullest table that fits in `width` cells (None: no limit, for pipes).

    `optional` names the columns that may go, in the order they go.
    """
    dropped: frozenset[str] = frozenset()
    table = build(dropped, shown_path)
    if width is None:
        return table
    for column in optional:
        if width_of(table) <= width:
            return table
        dropped |= {column}
        table = build(dropped, shown_path)
    if width_of(table) <= width:
        return table
    budget = max(MIN_PATH, width - width_of(build(dropped, lambda _: "")))
    return build(dropped, lambda p: shorten(shown_path(p), budget))
