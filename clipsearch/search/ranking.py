"""Ranking indexed images against a query vector: filters, the relevance cutoff (relevance.py),
typed results."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from clipsearch import paths
from clipsearch.errors import UsageError
from clipsearch.formats import IMAGE_EXTENSIONS
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


def parse_near(text: str) -> tuple[float, float, float]:
    """"LAT,LON,KM" (decimal degrees, as maps give them) -> (lat, lon, km), or a usage error."""
    try:
        lat, lon, km = (float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--near {text!r}: give LAT,LON,KM in decimal degrees, e.g. 48.858,2.294,5") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and km > 0):
        raise UsageError(f"--near {text!r}: latitude -90..90, longitude -180..180, a radius above 0 km")
    return lat, lon, km


def km_between(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    import math

    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class Filters:
    """What a result must be, besides relevant. Dates compare with the capture time, else mtime."""

    within: tuple[str, ...] = ()
    after: dt.datetime | None = None
    before: dt.datetime | None = None
    formats: frozenset[str] = frozenset()
    min_width: int = 0
    ids: frozenset[int] | None = None  # only these photos (e.g. those with a tag)
    near: tuple[float, float, float] | None = None  # (lat, lon, km): taken within km of there (EXIF GPS)
    camera: str = ""  # lower case; the EXIF make and model must contain it

    @classmethod
    def build(cls, within: Iterable[str | os.PathLike[str]] = (), after: dt.datetime | None = None,
              before: dt.datetime | None = None, formats: Iterable[str] = (), min_width: int = 0,
              near: str | None = None, camera: str | None = None) -> Filters:
        """Filters from what a user gave: folders as typed, extensions or format names.

        A value that can match nothing is a usage error, not "no photos match".
        """
        kinds = [f.strip().lower().lstrip(".") for f in formats if f.strip()]
        known = {e.lstrip(".") for e in IMAGE_EXTENSIONS} | set(FORMAT_ALIASES.values()) | {"mpo"}
        if unknown := [k for k in kinds if k not in known]:
            raise UsageError(f"unknown --type {', '.join(unknown)}: use extensions or format names such as "
                             "jpg, png, heic, webp, tiff, gif")
        for folder in within:
            if not os.path.lexists(paths.resolve(folder)):
                raise UsageError(f"--in {os.fspath(folder)}: no such folder")
        if after is not None and before is not None and after >= before:
            raise UsageError(f"--after {after.date()} is not before --before {before.date()}: nothing can match")
        return cls(paths.resolve_all(within), after, before, frozenset(FORMAT_ALIASES.get(k, k) for k in kinds),
                   min_width, near=parse_near(near) if near else None, camera=(camera or "").strip().lower())

    def accepts(self, row: ImageRecord) -> bool:
        if self.ids is not None and row.id not in self.ids:
            return False
        if self.within and not paths.under(row.path, self.within):
            return False
        if self.formats and (row.format or "") not in self.formats:
            return False
        if self.min_width and (row.width or 0) < self.min_width:
            return False
        if self.camera and self.camera not in (row.camera or "").lower():
            return False
        if self.near and (row.lat is None or row.lon is None or km_between(row.lat, row.lon, *self.near[:2])
                          > self.near[2]):
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
