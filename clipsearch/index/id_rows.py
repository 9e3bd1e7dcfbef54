"""Where photo ids sit in a flat FAISS index's storage: a lookup a warm search makes per hit.

A text query's decision reads 256 hits' rows of the background table (search/background_scores.py)
and the vectors of its hits; a sorted search over the ids cost ~0.1 ms of a 10k search. Photo ids
are SQLite rowids, dense unless many photos were removed, so an array indexed by id answers in
microseconds; a library with sparse ids (more than four slots per photo) keeps the sorted search.
"""

from __future__ import annotations

import numpy as np

SLOTS_PER_ROW = 4  # the dense array's size at most, per stored row (plus a few thousand)


class IdRows:
    """The row of each id of `id_map` (the id stored at each row)."""

    def __init__(self, id_map: np.ndarray) -> None:
        ids = np.asarray(id_map, dtype=np.int64)
        self._dense: np.ndarray | None = None
        top = int(ids.max()) + 1 if len(ids) else 0
        if len(ids) and int(ids.min()) >= 0 and top <= SLOTS_PER_ROW * len(ids) + 4096:
            self._dense = np.full(top, -1, dtype=np.int64)
            self._dense[ids] = np.arange(len(ids), dtype=np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def rows(self, ids: list[int] | np.ndarray) -> np.ndarray | None:
        """Where `ids` sit; None when one of them is not stored."""
        want = np.asarray(ids, dtype=np.int64)
        if len(want) == 0:
            return np.zeros(0, np.int64)
        if self._dense is not None:
            if int(want.min()) < 0 or int(want.max()) >= len(self._dense):
                return None
            rows = self._dense[want]
            return None if bool((rows < 0).any()) else rows
        if len(self._sorted) == 0:
            return None
        at = np.minimum(np.searchsorted(self._sorted, want), len(self._sorted) - 1)
        return self._order[at] if bool((self._sorted[at] == want).all()) else None
