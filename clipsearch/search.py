"""Ranking indexed images against a query vector: filters, the relevance decision, typed results.

Relevance (docs/search.md, relevance.py): a text query is decided per photo the way CLIP's zero-shot
classifier decides, the query against alternative texts at the model's logit scale. Image queries
and `similar` use the robust cutoff: a query's scores against a sample of the whole index form its
own "unrelated photo" distribution, and a result counts when it stands Z robust standard deviations
out of it (median + Z * 1.4826 * MAD), capped at a near-copy's cosine and never above 1.0.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from clipsearch import relevance, scan
from clipsearch.store import ImageRow, Store
from clipsearch.vectors import VectorIndex

DEFAULT_Z = 3.0
# Below this many photos the backdrop is too small (and too likely to be all one subject) to say
# what "unrelated" scores: no cutoff, the top N are shown.
MIN_FOR_CUTOFF = 200


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
            "taken_at": self.taken_at, "width": self.width, "height": self.height, "format": self.format}
        if relevance:
            out["relevant"] = self.relevant
        return out


@dataclass(frozen=True)
class Filters:
    """What a result must be, besides relevant. Dates compare with the capture time, else mtime."""

    within: tuple[str, ...] = ()
    after: dt.datetime | None = None
    before: dt.datetime | None = None
    formats: frozenset[str] = frozenset()
    min_width: int = 0
    ids: frozenset[int] | None = None  # only these photos (e.g. those with a tag)

    def accepts(self, row: ImageRow) -> bool:
        if self.ids is not None and row.id not in self.ids:
            return False
        if self.within and not scan.under(row.path, self.within):
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


def row_date(row: ImageRow) -> dt.datetime:
    return _parse_taken(row.taken_at) or dt.datetime.fromtimestamp(row.mtime_ns / 1e9, tz=dt.timezone.utc)


def normal_quantile(p: float) -> float:
    """The standard normal's inverse CDF, by bisection on math.erfc (to 1e-12).

    statistics.NormalDist does the same but importing statistics (fractions, decimal, random)
    costs a cold query 10 ms.
    """
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def adaptive_cutoff(query: np.ndarray, sample: np.ndarray, z: float,
                    library_size: int | None = None) -> tuple[float | None, dict[str, float]]:
    """median + Z * robust sigma of the query's scores against a sample of the index.

    Z is at least `z`, and high enough that a library of `library_size` wholly unrelated photos
    would let through half a photo on average (a Gaussian tail of 0.5 / N): a fixed Z = 3 passes
    0.13 % of unrelated photos, which is 130 junk results at 100k photos.
    """
    return cutoff_from_scores(sample @ query, z, library_size)


def cutoff_from_scores(scores: np.ndarray, z: float,
                       library_size: int | None = None) -> tuple[float | None, dict[str, float]]:
    """adaptive_cutoff for scores already computed (tagging scores every label at once)."""
    n = library_size or len(scores)
    if len(scores) < MIN_FOR_CUTOFF or n < MIN_FOR_CUTOFF:
        return None, {}
    z_eff = max(z, normal_quantile(1 - 0.5 / n))
    median, sigma = robust_stats(scores)
    sigma = sigma or float(scores.std()) or 1e-6
    # No cosine exceeds 1.0: a cutoff above it (a backdrop of near-copies, a damaged index) would
    # only ever mean "nothing", never a judgement about the photos.
    return min(median + z_eff * sigma, 1.0), {"median": median, "sigma": sigma, "z": z_eff}


def robust_stats(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 * median absolute deviation: a Gaussian's (mean, sigma), outliers ignored."""
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


def rank(store: Store, index: VectorIndex, query: np.ndarray, top: int, filters: Filters = Filters(),
         min_score: float | None = None, z: float = DEFAULT_Z, exclude_ids: frozenset[int] = frozenset(),
         alternatives: np.ndarray | None = None, logit_scale: float = relevance.DEFAULT_LOGIT_SCALE,
         closest: int = 5) -> Ranking:
    """The `top` most relevant images for `query` (a normalised vector) that pass `filters`.

    `alternatives` (texts' vectors, relevance.background_prompts) makes it a text query, decided
    per photo by CLIP's zero-shot comparison; without them (image queries, `similar`) the robust
    cutoff decides, capped at a near-copy's score. `min_score` shows what scores at least that
    instead, each result still marked `relevant` by the default decision. When nothing is relevant,
    `Ranking.closest` holds the `closest` best-scoring photos the filters allow.
    """
    if top <= 0 or index.size == 0:
        return Ranking([], None, "none")
    decide: Callable[[np.ndarray, np.ndarray], np.ndarray]
    stats: dict[str, float]
    if alternatives is not None:
        alts = relevance.alternatives(query, alternatives)
        method, cutoff = "zero-shot", None
        stats = {"logit_scale": logit_scale, "alternatives": float(len(alts)), "min_share": relevance.MIN_SHARE}

        def decide(vecs: np.ndarray, scores: np.ndarray) -> np.ndarray:
            # Exact cosines from the stored vectors: an IVF index's scores are quantised.
            return relevance.query_share(vecs @ query, vecs @ alts.T, logit_scale) >= relevance.MIN_SHARE
    else:
        robust, stats = adaptive_cutoff(query, index.sample(store), z, index.size)
        cutoff = relevance.cap(robust)
        method = "robust-z" if cutoff is not None else f"none (under {MIN_FOR_CUTOFF} photos)"

        def decide(vecs: np.ndarray, scores: np.ndarray) -> np.ndarray:
            return np.ones(len(scores), bool) if cutoff is None else scores >= cutoff
    floor: float | None = cutoff
    if min_score is not None:
        floor = min(min_score, 1.0)
        method, cutoff = "min-score", floor
    kept, cut, near = _collect(store, index, query, top, filters.accepts, decide, floor, min_score is not None,
                               exclude_ids, closest, needs_vectors=alternatives is not None)
    results = [_result(n + 1, s, row, ok) for n, (s, row, ok) in enumerate(kept)]
    nearest = [] if results else [_result(n + 1, s, row, False) for n, (s, row, _) in enumerate(near)]
    return Ranking(results, cutoff, method, cut, stats, nearest)


def _collect(store: Store, index: VectorIndex, query: np.ndarray, top: int, accepts: Callable[[ImageRow], bool],
             decide: Callable[[np.ndarray, np.ndarray], np.ndarray], floor: float | None, by_floor: bool,
             exclude_ids: frozenset[int], closest: int, needs_vectors: bool = False
             ) -> tuple[list[tuple[float, ImageRow, bool]], int, list[tuple[float, ImageRow, bool]]]:
    """(kept, how many the decision removed, the closest few the filters allow).

    `decide(vectors, scores)` says which hits are relevant; the hits' stored vectors are read only
    when it `needs_vectors`.
    """
    k, seen = top + len(exclude_ids), 0
    while True:
        # Filters remove hits after the vector search: widen it until enough survive, the scores
        # fall under the floor, relevance runs out, or the whole index has been seen.
        fetch = min(index.size, k)
        scores, ids = index.search(query.reshape(1, -1), fetch)
        hits = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0 and i not in exclude_ids]
        vecs = (store.vectors_for([i for _, i in hits]) if hits and needs_vectors
                else np.zeros((len(hits), len(query)), np.float32))
        relevant = decide(vecs, np.asarray([s for s, _ in hits], dtype=np.float32)) if hits else np.zeros(0, bool)
        rows = store.images(i for _, i in hits)
        allowed = [(s, rows[i], bool(ok)) for (s, i), ok in zip(hits, relevant, strict=True)
                   if i in rows and accepts(rows[i])]
        kept = [(s, r, ok) for s, r, ok in allowed if (floor is not None and s >= floor if by_floor else ok)]
        # Scores only fall from here: once a widening finds nothing relevant in its new part, or
        # the scores drop under the floor, looking further cannot find more.
        ran_out = not by_floor and seen > 0 and not bool(relevant[seen:].any())
        exhausted = (fetch >= index.size or ran_out
                     or (floor is not None and bool(hits) and hits[-1][0] < floor))
        if len(kept) >= top or exhausted:
            return kept[:top], max(0, min(top, len(allowed)) - len(kept)), allowed[:closest]
        seen = len(hits)
        k = max(fetch * 4, 256)


def sort_by_date(results: list[SearchResult], newest_first: bool = True) -> list[SearchResult]:
    ordered = sorted(results, key=lambda r: r.when, reverse=newest_first)
    return [dataclasses.replace(r, rank=n + 1) for n, r in enumerate(ordered)]


def result_from_row(rank_: int, score: float, row: ImageRow, relevant: bool = True) -> SearchResult:
    """A result for a photo found some other way than by a vector (`query --tag`)."""
    return _result(rank_, score, row, relevant)


def _result(rank_: int, score: float, row: ImageRow, relevant: bool = True) -> SearchResult:
    modified = dt.datetime.fromtimestamp(row.mtime_ns / 1e9, tz=dt.timezone.utc).astimezone()
    return SearchResult(rank_, score, row.id, row.path, row.size, modified, row.taken_at, row.width, row.height,
                        row.format, relevant)
