"""Ranking indexed images against a query vector: filters, the relevance cutoff (relevance.py),
typed results."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from clipsearch import paths
from clipsearch.errors import UsageError
from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex
from clipsearch.search.query import Term
from clipsearch.search.relevance import DEFAULT_Z, MIN_FOR_CUTOFF, adaptive_cutoff


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
    def when(self) -> dt.datetime:
        """Capture time when known, else modification time, as an aware datetime."""
        return _parse_taken(self.taken_at) or self.modified

    @property
    def date(self) -> str:
        """The capture time when the camera recorded one, else the file's modification time."""
        return self.taken_at or self.modified.isoformat(timespec="seconds")

    def as_dict(self) -> dict[str, object]:
        return {"rank": self.rank, "score": round(self.score, 6), "id": self.id, "path": self.path,
                "size": self.size, "modified": self.modified.isoformat(timespec="seconds"),
                "taken_at": self.taken_at, "width": self.width, "height": self.height, "format": self.format}


# What users type for --type, as the formats the index records (Pillow's names, lower-cased).
FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff", "heic": "heif", "jp2": "jpeg2000",
                  "ppm": "ppm", "pgm": "ppm", "pbm": "ppm"}


@dataclass(frozen=True)
class Filters:
    """What a result must be, besides relevant. Dates compare with the capture time, else mtime."""

    within: tuple[str, ...] = ()
    after: dt.datetime | None = None
    before: dt.datetime | None = None
    formats: frozenset[str] = frozenset()
    min_width: int = 0
    ids: frozenset[int] | None = None  # only these photos (e.g. those with a tag)

    @classmethod
    def build(cls, within: Iterable[str | os.PathLike[str]] = (), after: dt.datetime | None = None,
              before: dt.datetime | None = None, formats: Iterable[str] = (), min_width: int = 0) -> Filters:
        """Filters from what a user gave: folders as typed, extensions or format names."""
        kinds = (f.lower().lstrip(".") for f in formats)
        return cls(paths.resolve_all(within), after, before, frozenset(FORMAT_ALIASES.get(k, k) for k in kinds),
                   min_width)

    def accepts(self, row: ImageRecord) -> bool:
        if self.ids is not None and row.id not in self.ids:
            return False
        if self.within and not paths.under(row.path, self.within):
            return False
        if self.formats and (row.format or "") not in self.formats:
            return False
        if self.min_width and (row.width or 0) < self.min_width:
            return False
        if self.after or self.before:
            when = row_date(row)
            if self.after and when < self.after:
                return False
            if self.before and when >= self.before:
                return False
        return True


@dataclass
class QueryResult:
    """What a query found, the query as parsed, and how the relevance cutoff treated it."""

    terms: list[Term]
    results: list[SearchResult]
    ranking: Ranking


@dataclass
class Ranking:
    """Results plus how the cutoff treated this query: what a user needs to trust an empty answer."""

    results: list[SearchResult]
    cutoff: float | None
    method: str
    cut: int = 0  # results that filters allowed but the cutoff removed (among those looked at)
    stats: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, "score": None if self.cutoff is None else round(self.cutoff, 6),
                "cut": self.cut, **{k: round(v, 6) for k, v in self.stats.items()}}


def _parse_taken(taken_at: str | None) -> dt.datetime | None:
    if not taken_at:
        return None
    try:
        when = dt.datetime.fromisoformat(taken_at)
    except ValueError:
        return None
    return when if when.tzinfo else when.astimezone()  # no offset recorded: camera local time, read as ours


def row_date(row: ImageRecord) -> dt.datetime:
    return _parse_taken(row.taken_at) or dt.datetime.fromtimestamp(row.mtime_ns / 1e9, tz=dt.timezone.utc)


def rank(store: Store, index: VectorIndex, query: np.ndarray, top: int, filters: Filters = Filters(),
         min_score: float | None = None, z: float = DEFAULT_Z,
         exclude_ids: frozenset[int] = frozenset()) -> Ranking:
    """The `top` most relevant images for `query` (a normalised vector) that pass `filters`."""
    if min_score is not None and not math.isfinite(min_score):  # NaN passes every comparison as False
        raise UsageError(f"--min-score must be a number (a cosine, -1 to 1), not {min_score}")
    if top <= 0 or index.size == 0:
        return Ranking([], None, "none")
    cutoff: float | None
    stats: dict[str, float]
    if min_score is not None:
        cutoff, method, stats = min_score, "min-score", {}
    else:
        cutoff, stats = adaptive_cutoff(query, index.sample(store), z, index.size)
        method = "robust-z" if cutoff is not None else f"none (under {MIN_FOR_CUTOFF} photos)"
    kept, cut = _collect(store, index, query, top, filters.accepts, cutoff, exclude_ids)
    results = [_result(n + 1, s, row) for n, (s, row) in enumerate(kept)]
    return Ranking(results, cutoff, method, cut, stats)


def _collect(store: Store, index: VectorIndex, query: np.ndarray, top: int, accepts: Callable[[ImageRecord], bool],
             cutoff: float | None, exclude_ids: frozenset[int]) -> tuple[list[tuple[float, ImageRecord]], int]:
    k = top + len(exclude_ids)
    while True:
        # Filters remove hits after the vector search: widen it until enough survive, the scores
        # fall under the cutoff, or the whole index has been seen.
        fetch = min(index.size, k)
        scores, ids = index.search(query.reshape(1, -1), fetch)
        hits = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0 and i not in exclude_ids]
        rows = store.images(i for _, i in hits)
        allowed = [(s, rows[i]) for s, i in hits if i in rows and accepts(rows[i])]
        kept = [(s, r) for s, r in allowed if cutoff is None or s >= cutoff]
        exhausted = fetch >= index.size or (cutoff is not None and bool(hits) and hits[-1][0] < cutoff)
        if len(kept) >= top or exhausted:
            return kept[:top], max(0, min(top, len(allowed)) - len(kept))
        k = max(fetch * 4, 256)


def sort_by_date(results: list[SearchResult], newest_first: bool = True) -> list[SearchResult]:
    ordered = sorted(results, key=lambda r: r.when, reverse=newest_first)
    return [dataclasses.replace(r, rank=n + 1) for n, r in enumerate(ordered)]


def _result(rank_: int, score: float, row: ImageRecord) -> SearchResult:
    modified = dt.datetime.fromtimestamp(row.mtime_ns / 1e9, tz=dt.timezone.utc).astimezone()
    return SearchResult(rank_, score, row.id, row.path, row.size, modified, row.taken_at, row.width, row.height,
                        row.format)
