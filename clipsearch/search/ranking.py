"""Ranking indexed images against a query vector: filters, the relevance decision (relevance.py:
CLIP's zero-shot comparison for text queries, the capped robust cutoff for image queries), typed
results."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import math
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from clipsearch import blas_threads, paths
from clipsearch.errors import UsageError
from clipsearch.formats import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex
from clipsearch.search import background_scores, hits, moments, relevance
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
    relevant: bool = True  # what the default decision says, also when --min-score shows more
    probability: float | None = None  # a sigmoid-loss (SigLIP) model's probability that the text matches
    time: float | None = None  # a video's moment, in seconds; None for photos
    moments: tuple[tuple[float, float], ...] = ()  # the video's other relevant moments: (time, score)

    @property
    def kind(self) -> str:
        return "photo" if self.time is None else "video"

    @property
    def link(self) -> str:
        """The path, with a media fragment at a video's moment (`clip.mp4#t=12.5`)."""
        return self.path if self.time is None else f"{self.path}#t={self.time:g}"

    @property
    def when(self) -> dt.datetime:
        """Capture time when known, else modification time, as an aware datetime."""
        return _parse_taken(self.taken_at) or self.modified

    @property
    def date(self) -> str:
        """The capture time when the camera recorded one, else the file's modification time."""
        return self.taken_at or self.modified.isoformat(timespec="seconds")

    def as_dict(self, relevance: bool = False) -> dict[str, object]:
        """`relevance`: add `relevant`, for output that shows more than the relevant results."""
        out: dict[str, object] = {
            "rank": self.rank, "score": round(self.score, 6), "id": self.id, "path": self.path,
            "size": self.size, "modified": self.modified.isoformat(timespec="seconds"),
            "taken_at": self.taken_at, "width": self.width, "height": self.height, "format": self.format,
            "type": self.kind}
        if self.time is not None:
            out["time"] = round(self.time, 3)
            out["moments"] = [{"time": round(t, 3), "score": round(s, 6)} for t, s in self.moments]
        if relevance:
            out["relevant"] = self.relevant
        if self.probability is not None:
            out["probability"] = round(self.probability, 6)
        return out


# What users type for --type, as the formats the index records (Pillow's names, lower-cased).
FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff", "heic": "heif", "jp2": "jpeg2000",
                  "ppm": "ppm", "pgm": "ppm", "pbm": "ppm"}


VIDEO_FORMATS = frozenset(e.lstrip(".") for e in VIDEO_EXTENSIONS)  # a video's row records its extension


def _format_wanted(fmt: str, wanted: frozenset[str]) -> bool:
    video = fmt in VIDEO_FORMATS
    return fmt in wanted or ("video" in wanted and video) or ("photo" in wanted and not video)


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
        known = ({e.lstrip(".") for e in IMAGE_EXTENSIONS} | set(FORMAT_ALIASES.values()) | {"mpo"}
                 | VIDEO_FORMATS | {"video", "photo"})
        if unknown := [k for k in kinds if k not in known]:
            raise UsageError(f"unknown --type {', '.join(unknown)}: use video, photo, extensions or format names "
                             "such as jpg, png, heic, webp, tiff, gif, mp4")
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
        if self.formats and not _format_wanted(row.format or "", self.formats):
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
    # Things the user should hear about this query (the CLI prints them on stderr): e.g. a query in a
    # script the index's model cannot read (model/languages.py).
    notes: list[str] = field(default_factory=list)


@dataclass
class Ranking:
    """Results plus how the cutoff treated this query: what a user needs to trust an empty answer."""

    results: list[SearchResult]
    cutoff: float | None
    method: str
    cut: int = 0  # results that filters allowed but the cutoff removed (among those looked at)
    stats: dict[str, float] = field(default_factory=dict)
    # When nothing is relevant: the closest few anyway, for a person to look at (never for pipes).
    closest: list[SearchResult] = field(default_factory=list)

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
         min_score: float | None = None, z: float = DEFAULT_Z, exclude_ids: frozenset[int] = frozenset(),
         alternatives: np.ndarray | None = None, logit_scale: float = relevance.DEFAULT_LOGIT_SCALE,
         closest: int = 5, logit_bias: float | None = None, all_moments: bool = False) -> Ranking:
    """The `top` most relevant images for `query` (a normalised vector) that pass `filters`.

    `alternatives` (texts' vectors, relevance.background_prompts) makes it a text query, decided
    per photo by CLIP's zero-shot comparison; without them (image queries, `similar`) the robust
    cutoff decides, capped at a near-copy's score. `min_score` shows what scores at least that
    instead, each result still marked `relevant` by the default decision. When nothing is relevant,
    `Ranking.closest` holds the `closest` best-scoring photos the filters allow. With a sigmoid-loss
    model's `logit_bias` a text query also admits every photo the model itself gives probability >= 0.5.
    A video appears once, at its best moment, unless `all_moments` lists each of its matching
    moments (moments.py).
    """
    if min_score is not None and not math.isfinite(min_score):  # NaN passes every comparison as False
        raise UsageError(f"--min-score must be a number (a cosine, -1 to 1), not {min_score}")
    if top <= 0 or index.size == 0:
        return Ranking([], None, "none")
    with blas_threads.single():  # one query's products are small: BLAS's threads only fight (blas_threads.py)
        return _rank(store, index, query, top, filters, min_score, z, exclude_ids, alternatives, logit_scale,
                     closest, logit_bias, all_moments)


def _rank(store: Store, index: VectorIndex, query: np.ndarray, top: int, filters: Filters, min_score: float | None,
          z: float, exclude_ids: frozenset[int], alternatives: np.ndarray | None, logit_scale: float, closest: int,
          logit_bias: float | None, all_moments: bool) -> Ranking:
    decide: Callable[[list[int], np.ndarray], np.ndarray]
    stats: dict[str, float]
    sigmoid = alternatives is not None and logit_bias is not None
    if alternatives is not None:
        keep = background_scores.alternative_mask(index, query, alternatives)
        alts = alternatives[keep]
        table = background_scores.table_for(index, alternatives)
        method, cutoff = "zero-shot" + (" or sigmoid" if sigmoid else ""), None
        stats = {"logit_scale": logit_scale, "alternatives": float(len(alts)), "min_share": relevance.MIN_SHARE}
        if sigmoid:
            stats.update({"logit_bias": float(logit_bias or 0.0), "min_probability": relevance.MIN_PROBABILITY})

        def decide(ids: list[int], scores: np.ndarray) -> np.ndarray:
            rows = None if table is None else index.rows_of(ids)
            if table is not None and rows is not None:
                # A flat index's scores are exact cosines, and the table holds the alternatives' ones.
                exact, alt_scores = scores, table[rows][:, keep]
            else:
                # Exact cosines from the stored vectors: an IVF index's scores are quantised.
                vecs = index.vectors_of(store, ids)
                exact, alt_scores = vecs @ query, vecs @ alts.T
            ok = relevance.query_share(exact, alt_scores, logit_scale) >= relevance.MIN_SHARE
            if sigmoid:  # the model's own probability admits a photo; it cannot veto one (relevance.py)
                ok |= relevance.pair_probability(exact, logit_scale, float(logit_bias or 0.0)) >= \
                    relevance.MIN_PROBABILITY
            return np.asarray(ok)
    else:
        robust, stats = adaptive_cutoff(query, index.sample(store), z, index.size)
        cutoff = relevance.cap(robust)
        method = "robust-z" if cutoff is not None else f"none (under {MIN_FOR_CUTOFF} photos)"

        def decide(ids: list[int], scores: np.ndarray) -> np.ndarray:
            return np.ones(len(scores), bool) if cutoff is None else scores >= cutoff
    floor: float | None = cutoff
    if min_score is not None:
        floor = min(min_score, 1.0)
        method, cutoff = "min-score", floor
    grouper = moments.Grouper(store, all_moments, prefer_relevant=min_score is None)
    kept, cut, near = hits.collect(store, index, query, top, filters.accepts, decide, floor, min_score is not None,
                                   exclude_ids, closest, grouper)

    def result(n: int, s: float, row: ImageRecord, ok: bool) -> SearchResult:
        out = _result(n + 1, s, row, ok)
        m = grouper.moment.get(row.id)
        if m is not None:
            out = dataclasses.replace(out, time=m.time_s, moments=tuple(grouper.others.get(row.id, ())))
        if sigmoid:  # shown with each result (JSON `probability`): what the decision read
            p = relevance.pair_probability(np.asarray([s]), logit_scale, float(logit_bias or 0.0))
            out = dataclasses.replace(out, probability=float(p[0]))
        return out

    results = [result(n, s, row, ok) for n, (s, row, ok) in enumerate(kept)]
    nearest = [] if results else [result(n, s, row, False) for n, (s, row, _) in enumerate(near)]
    return Ranking(results, cutoff, method, cut, stats, nearest)


def tagged(store: Store, tags: list[str], top: int, filters: Filters, sort: str) -> QueryResult:
    """`query --tag NAME` with nothing to search for: the photos with every tag, best tag score first.

    A photo's score is its weakest score among the tags asked for: how surely it carries all of them.
    """
    ids = sorted(store.tags.ids_with_tags(tags))
    wanted = {t.lower() for t in tags}
    scores = {i: min((sc for lab, sc, _ in marks if lab.lower() in wanted), default=0.0)
              for i, marks in store.tags.tags_of(ids).items()}
    rows = store.images(ids)
    allowed = sorted(((scores[i], rows[i]) for i in ids if i in rows and filters.accepts(rows[i])),
                     key=lambda sr: (-sr[0], sr[1].path))
    results = [_result(n + 1, sc, row) for n, (sc, row) in enumerate(allowed[:top])]
    if sort == "date":
        results = sort_by_date(results)
    return QueryResult([Term("tag", t, 1.0) for t in tags], results, Ranking(results, None, "tag"))


@dataclass
class Alternatives:
    """The alternative texts a one-text query competes with (relevance.py), for one model.

    Their vectors are kept per model in SQLite, so only an index's first text query embeds them:
    `to_embed` then lists them for the query's own encoder, and `vectors` saves what it gave.
    """

    weights_sha256: str
    prompts: list[str]
    kept: np.ndarray | None
    used: bool

    @classmethod
    def for_query(cls, store: Store, weights_sha256: str, terms: list[Term], vocabulary: Callable[[], list[str]],
                  earlier: Alternatives | None = None) -> Alternatives:
        """`earlier`: what a previous query of this process found, reused when it is this model's."""
        # Only a query that is one text is a description to compare with others; arithmetic and
        # example photos keep the robust cutoff (docs/search.md).
        if not (len(terms) == 1 and terms[0].kind == "text" and terms[0].weight > 0):
            return cls(weights_sha256, [], None, False)
        if earlier is not None and earlier.weights_sha256 == weights_sha256 and earlier.kept is not None:
            return earlier  # a warm process (the gallery) reads neither the vocabulary nor SQLite again
        prompts = relevance.background_prompts(vocabulary())
        kept = store.tags.label_vectors(weights_sha256, relevance.background_set_id(prompts), prompts)
        return cls(weights_sha256, prompts, kept, True)

    @property
    def to_embed(self) -> list[str]:
        return self.prompts if self.used and self.kept is None else []

    def vectors(self, store: Store, embedded: dict[str, np.ndarray]) -> np.ndarray | None:
        if not self.used or self.kept is not None:
            return self.kept
        mat = self.kept = np.stack([embedded[p] for p in self.prompts]).astype(np.float32)
        # A read-only or busy index still answers; it embeds the alternatives again next time.
        with contextlib.suppress(sqlite3.OperationalError):
            store.tags.save_label_vectors(self.weights_sha256, relevance.background_set_id(self.prompts),
                                          self.prompts, mat)
        return mat


def sort_by_date(results: list[SearchResult], newest_first: bool = True) -> list[SearchResult]:
    ordered = sorted(results, key=lambda r: r.when, reverse=newest_first)
    return [dataclasses.replace(r, rank=n + 1) for n, r in enumerate(ordered)]


def _result(rank_: int, score: float, row: ImageRecord, relevant: bool = True) -> SearchResult:
    """A result for a photo, found by its vector or another way (`query --tag`)."""
    return SearchResult(rank_, score, row.id, row.path, row.size, _local_time(row.mtime_ns), row.taken_at, row.width,
                        row.height, row.format, relevant)


@functools.lru_cache(maxsize=4096)
def _local_time(mtime_ns: int) -> dt.datetime:
    # The local time zone's offset at that instant (its daylight saving), which astimezone() looks up in
    # the C library each time: ~8 us a result, a warm search shows the same photos again.
    return dt.datetime.fromtimestamp(mtime_ns / 1e9, tz=dt.timezone.utc).astimezone()
