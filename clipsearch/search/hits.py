"""The hits a ranking keeps: the vector search widened until enough pass the filters and the
relevance decision, each hit decided and its row read once, and only where the answer needs it."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex
from clipsearch.search.moments import Grouper

Hit = tuple[float, ImageRecord, bool]  # (score, row, relevant)


def collect(store: Store, index: VectorIndex, query: np.ndarray, top: int, accepts: Callable[[ImageRecord], bool],
             decide: Callable[[list[int], np.ndarray], np.ndarray], floor: float | None, by_floor: bool,
             exclude_ids: frozenset[int], closest: int, grouper: Grouper) -> tuple[list[Hit], int, list[Hit]]:
    """(kept, how many the decision removed among the first `top` the filters allow, the closest few
    the filters allow).

    `decide(ids, scores)` says which hits are relevant, one hit at a time. Each hit is decided,
    and its row read, once: a widening reuses what the narrower search learnt, and rows are read
    only for hits that can be kept or that the count of allowed hits still needs (walk). A video's
    frames count as one hit (`grouper`, moments.py).
    """
    k, seen = top + len(exclude_ids), 0
    rows: dict[int, ImageRecord | None] = {}  # None: the hit has no row (FAISS ahead of SQLite)
    widest: _Searched | None = None  # the widest search so far
    while True:
        # Filters remove hits after the vector search: widen it until enough survive, the scores
        # fall under the floor, relevance runs out, or the whole index has been seen.
        fetch = min(index.size, k)
        if widest is None or widest.asked < fetch:
            # The first widening's hits come with the first search (as cheap at 256 as at 10): the
            # narrower step then reads its prefix.
            asked = min(index.size, max(fetch, FIRST_WIDENING))
            scores, ids = index.search(query.reshape(1, -1), asked)
            widest = _Searched(asked, scores[0], ids[0], exclude_ids, decide, widest)
        n = widest.within(fetch)
        # Most walks stop within the first few dozen hits: those are decided first, the rest only
        # when the walk reaches them.
        widest.decide_upto(max(DECIDED_FIRST, DECIDED_PER_TOP * top))
        kept, allowed, near = walk(store, widest.scores[:n], widest.ids[:n], widest.relevant[:n], rows, top, accepts,
                                   floor, by_floor, closest, grouper, min(n, widest.decided),
                                   functools.partial(widest.decided_through, n))
        # Scores only fall from here: once a widening finds nothing relevant in its new part, or
        # the scores drop under the floor, looking further cannot find more. (A walk that did not
        # keep `top` hits went through all of them: every one is decided.)
        ran_out = not by_floor and seen > 0 and not bool(widest.relevant[seen:n].any())
        exhausted = (fetch >= index.size or ran_out
                     or (floor is not None and n > 0 and widest.scores[n - 1] < floor))
        if len(kept) >= top or exhausted:
            return kept, max(0, min(top, allowed) - len(kept)), near
        seen = n
        k = max(fetch * 4, FIRST_WIDENING)


class _Searched:
    """One vector search's hits (missing slots and excluded photos left out), decided as the walk
    needs them.

    A hit's relevance is its own (its vector against the query and the alternatives), so deciding
    hits in several calls or ahead of the step that walks them changes nothing. A widening decides
    at once every hit the narrower search had not.
    """

    def __init__(self, asked: int, scores: np.ndarray, ids: np.ndarray, exclude_ids: frozenset[int],
                 decide: Callable[[list[int], np.ndarray], np.ndarray], narrower: _Searched | None) -> None:
        self.asked = asked
        found = ids >= 0
        if exclude_ids:
            found &= ~np.isin(ids, np.fromiter(exclude_ids, dtype=np.int64, count=len(exclude_ids)))
        self._positions = np.flatnonzero(found)  # where each hit sat among the search's results
        hit_ids, hit_scores = ids[found], np.asarray(scores[found], dtype=np.float32)
        # Python numbers: the walk reads them one by one.
        self.ids: list[int] = hit_ids.tolist()
        self.scores: list[float] = hit_scores.tolist()
        self._hit_scores, self._decide = hit_scores, decide
        self.relevant = np.zeros(len(self.ids), dtype=bool)
        self.decided = 0  # hits decided so far, from the first
        if narrower is None:
            return
        known = dict(zip(narrower.ids[:narrower.decided], narrower.relevant[:narrower.decided].tolist(), strict=True))
        new = [j for j, i in enumerate(self.ids) if i not in known]
        ok_new: np.ndarray | list[bool] = decide([self.ids[j] for j in new], hit_scores[new]) if new else []
        decided = dict(zip([self.ids[j] for j in new], np.asarray(ok_new, dtype=bool).tolist(), strict=True))
        self.relevant = np.fromiter((known[i] if i in known else decided[i] for i in self.ids), dtype=bool,
                                    count=len(self.ids))
        self.decided = len(self.ids)

    def decided_through(self, count: int) -> np.ndarray:
        """The first `count` hits' decisions, each decided."""
        self.decide_upto(count)
        return self.relevant[:count]

    def decide_upto(self, count: int) -> None:
        """Decide the first `count` hits (those not decided yet, in one call)."""
        start, count = self.decided, min(count, len(self.ids))
        if count > start:
            self.relevant[start:count] = np.asarray(self._decide(self.ids[start:count], self._hit_scores[start:count]),
                                                    dtype=bool)
            self.decided = count

    def within(self, fetch: int) -> int:
        """How many hits came among the search's first `fetch` results."""
        return int(np.searchsorted(self._positions, fetch))


FIRST_WIDENING = 256
# Hits decided before the first walk: at least DECIDED_FIRST, and DECIDED_PER_TOP per hit asked for.
DECIDED_FIRST, DECIDED_PER_TOP = 64, 4


def walk(store: Store, scores: list[float], ids: list[int], relevant: np.ndarray, rows: dict[int, ImageRecord | None],
         top: int, accepts: Callable[[ImageRecord], bool], floor: float | None, by_floor: bool, closest: int,
         grouper: Grouper, decided: int, decide_rest: Callable[[], np.ndarray]) -> tuple[list[Hit], int, list[Hit]]:
    """(the first `top` hits kept, how many hits the filters allow (exact up to `top`), the first
    `closest` allowed), in score order; `rows` caches what SQLite gave. `relevant` holds the
    decisions of the first `decided` hits; `decide_rest()` gives them all when the walk gets further.

    A hit's row is needed only when it could be kept (relevant, or over the floor with --min-score),
    or while fewer than max(top, closest) allowed hits are known (the cut count and the closest
    few); the rest are skipped unread. Rows are read in batches of what the walk
    needs next, at least.
    """
    need = max(top, closest)
    if by_floor:  # with --min-score, what scores at least the floor is kept, relevant or not
        candidate = (np.zeros(len(ids), bool) if floor is None
                     else np.asarray(scores, dtype=np.float64) >= floor)
    else:
        candidate = relevant
    kept: list[Hit] = []
    near: list[Hit] = []
    grouper.start()
    allowed = batches = 0
    for pos, (score, image_id) in enumerate(zip(scores, ids, strict=True)):
        if len(kept) >= top and allowed >= need:
            break
        if pos >= decided:
            relevant, decided = decide_rest(), len(ids)
            if not by_floor:
                candidate = relevant
        wanted = bool(candidate[pos]) and len(kept) < top
        if not wanted and allowed >= need:
            continue
        if image_id not in rows:
            # What the walk needs at least from here (filters may reject some: then another,
            # larger batch), read in one statement.
            batches += 1
            count_left, keep_left = (need - allowed) << batches, (top - len(kept)) << batches
            batch: list[int] = []
            for p in range(pos, len(ids)):
                i = ids[p]
                if count_left <= 0 and keep_left <= 0:
                    break
                if i in rows:
                    continue
                if count_left > 0:
                    count_left -= 1
                    keep_left -= bool(candidate[p])
                    batch.append(i)
                elif candidate[p]:
                    keep_left -= 1
                    batch.append(i)
            found = store.images(batch)
            rows.update((i, found.get(i)) for i in batch)
            grouper.read(batch)
        row = rows[image_id]
        if row is None or not accepts(row):
            continue
        shown, superseded = grouper.place(score, row, bool(relevant[pos]))
        if shown is None:  # a later moment of a video already placed: listed with it, not counted again
            continue
        if superseded is None:
            allowed += 1
        else:  # the video's first relevant moment takes its turned-down one's place: still one video
            near = [e for e in near if e[1].id != superseded]
        entry = (score, shown, bool(relevant[pos]))
        if len(near) < closest:
            near.append(entry)
        if wanted:
            kept.append(entry)
    return kept, allowed, near
