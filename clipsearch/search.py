"""Ranking indexed images against a query vector, and shaping the hits into typed results."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import numpy as np

from clipsearch.store import ImageRow, Store
from clipsearch.vectors import VectorIndex


@dataclass(frozen=True)
class SearchResult:
    """One hit: cosine similarity to the query (higher is closer) and what the index knows of it."""

    rank: int
    score: float
    id: int
    path: str
    size: int
    modified: dt.datetime
    taken_at: str | None
    width: int | None
    height: int | None
    format: str | None

    @property
    def date(self) -> str:
        """The capture time when the camera recorded one, else the file's modification time."""
        return self.taken_at or self.modified.isoformat(timespec="seconds")

    def as_dict(self) -> dict[str, object]:
        return {"rank": self.rank, "score": round(self.score, 6), "id": self.id, "path": self.path,
                "size": self.size, "modified": self.modified.isoformat(timespec="seconds"),
                "taken_at": self.taken_at, "width": self.width, "height": self.height, "format": self.format}


def _in_scope(path: str, roots: tuple[str, ...]) -> bool:
    return not roots or any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def rank(store: Store, index: VectorIndex, query: np.ndarray, top: int,
         within: tuple[str, ...] = (), exclude_ids: frozenset[int] = frozenset()) -> list[SearchResult]:
    """The `top` nearest images to `query` (a normalised vector), limited to folders `within`."""
    if top <= 0 or index.size == 0:
        return []
    roots = tuple(os.path.abspath(r) for r in within)
    k = top + len(exclude_ids)
    while True:
        # A scope or exclusions can filter hits away: widen the search until enough survive.
        fetch = min(index.size, k if not roots else max(k * 8, 256))
        scores, ids = index.search(query.reshape(1, -1), fetch)
        hits = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0 and i not in exclude_ids]
        rows = store.images(i for _, i in hits)
        kept = [(s, rows[i]) for s, i in hits if i in rows and _in_scope(rows[i].path, roots)]
        if len(kept) >= top or fetch >= index.size:
            break
        k = fetch * 4
    return [_result(n + 1, s, row) for n, (s, row) in enumerate(kept[:top])]


def _result(rank_: int, score: float, row: ImageRow) -> SearchResult:
    modified = dt.datetime.fromtimestamp(row.mtime_ns / 1e9, tz=dt.timezone.utc).astimezone()
    return SearchResult(rank_, score, row.id, row.path, row.size, modified, row.taken_at, row.width, row.height,
                        row.format)
