"""The hits a ranking keeps: the vector search widened until enough pass the filters and the
relevance decision, each hit decided and its row read once, and only where the answer needs it."""

from __future__ import annotations

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
    relevant_of: dict[int, bool] = {}
    rows: dict[int, ImageRecord | None] = {}  # None: the hit has no row (FAISS ahead of SQLite)
    widest: tuple[list[float], list[int]] | None = None  # the widest search so far
    while True:
        # Filters remove hits after the vector search: widen it until enough survive, the scores
        # fall under the floor, relevance runs out, or the whole index has been seen.
        fetch = min(index.size, k)
        if widest is None or len(widest[1]) < fetch:
            # The first widening's hits come with the first search (as cheap at 256 as at 10): the
            # narrower step then reads its prefix.
            scores, ids = index.search(query.reshape(1, -1), min(index.size, max(fetch, FIRST_WIDENING)))
            widest = scores[0].tolist(), ids[0].tolist()  # Python numbers: the walk reads them one by one
            # Every hit of the widest search is decided now, in one call: a hit's relevance is its
            # own (its vector against the query and the alternatives), so deciding ahead of the
            # step that walks it changes nothing, and one product of 256 rows costs less than two.
            found = [(s, i) for s, i in zip(widest[0], widest[1], strict=True) if i >= 0 and i not in exclude_ids]
            new = [(s, i) for s, i in found if i not in relevant_of]
            if new:
                ok_new = decide([i for _, i in new], np.asarray([s for s, _ in new], dtype=np.float32))
                relevant_of.update(zip([i for _, i in new], np.asarray(ok_new, dtype=bool).tolist(), strict=True))
        hits = [(s, i) for s, i in zip(widest[0][:fetch], widest[1][:fetch], strict=True)
                if i >= 0 and i not in exclude_ids]
        relevant = np.fromiter((relevant_of[i] for _, i in hits), dtype=bool, count=len(hits))
        kept, allowed, near = walk(store, hits, relevant, rows, top, accepts, floor, by_floor, closest, grouper)
        # Scores only fall from here: once a widening finds nothing relevant in its new part, or
        # the scores drop under the floor, looking further cannot find more.
        ran_out = not by_floor and seen > 0 and not bool(relevant[seen:].any())
        exhausted = (fetch >= index.size or ran_out
                     or (floor is not None and bool(hits) and hits[-1][0] < floor))
        if len(kept) >= top or exhausted:
            return kept, max(0, min(top, allowed) - len(kept)), near
        seen = len(hits)
        k = max(fetch * 4, FIRST_WIDENING)


FIRST_WIDENING = 256


def walk(store: Store, hits: list[tuple[float, int]], relevant: np.ndarray, rows: dict[int, ImageRecord | None],
          top: int, accepts: Callable[[ImageRecord], bool], floor: float | None, by_floor: bool, closest: int,
          grouper: Grouper) -> tuple[list[Hit], int, list[Hit]]:
    """(the first `top` hits kept, how many hits the filters allow (exact up to `top`), the first
    `closest` allowed), in score order; `rows` caches what SQLite gave.

    A hit's row is needed only when it could be kept (relevant, or over the floor with --min-score),
    or while fewer than max(top, closest) allowed hits are known (the cut count and the closest
    few); the rest are skipped unread. Rows are read in batches of what the walk
    needs next, at least.
    """
    need = max(top, closest)
    if by_floor:  # with --min-score, what scores at least the floor is kept, relevant or not
        candidate = (np.zeros(len(hits), bool) if floor is None
                     else np.asarray([s for s, _ in hits], dtype=np.float64) >= floor)
    else:
        candidate = relevant
    kept: list[Hit] = []
    near: list[Hit] = []
    grouper.start()
    allowed = batches = 0
    for pos, (score, image_id) in enumerate(hits):
        if len(kept) >= top and allowed >= need:
            break
        wanted = bool(candidate[pos]) and len(kept) < top
        if not wanted and allowed >= need:
            continue
        if image_id not in rows:
            # What the walk needs at least from here (filters may reject some: then another,
            # larger batch), read in one statement.
            batches += 1
            count_left, keep_left = (need - allowed) << batches, (top - len(kept)) << batches
            batch: list[int] = []
            for p in range(pos, len(hits)):
                i = hits[p][1]
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
