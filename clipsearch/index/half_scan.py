"""A flat index's search in half the memory traffic, with the flat search's exact answer.

A flat search reads every stored vector: at 10,000 photos 20 MB of float32, more than the caches
keep between two searches, so the scan is memory-bound (1.3-1.6 ms of a 10k `Library.search`,
docs/benchmarks.md). A process that searches an index again (the gallery, a script using `Library`)
keeps a float16 copy (FAISS's QT_fp16 scalar quantizer: half the bytes, 10 MB per 10,000 photos,
7-16 ms to make), scans that, and rescores a few more candidates than asked from the float32
vectors. Rounding to float16 moves a component by at most 2^-11 of itself, so a cosine moves by at
most |q|·|x|·2^-11 (plus float32 accumulation in both scans): a candidate whose exact score beats
the last candidate's float16 score by more than that beats every vector the scan left out. Only such
certain candidates are returned; when fewer than k are certain the scan widens, and past half the
index the float32 index answers itself. The answer is the flat search's: the same ids in the same
order, the same float32 cosines up to their last bit's rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Relative error of a float16 rounding (half an ulp of its 10-bit mantissa), and float32's unit
# roundoff: a d-term dot product accumulates at most d of them, in each of the two scans.
HALF_ROUNDING = 2.0 ** -11
SINGLE_ROUNDING = 2.0 ** -24


class HalfScan:
    """The float16 copy of one flat index's vectors (rows in `flat`'s order, ids from `id_map`)."""

    def __init__(self, flat: np.ndarray, id_map: np.ndarray) -> None:
        import faiss

        n, d = flat.shape
        self.flat, self.id_map = flat, id_map
        self.copy: Any = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        if n:
            self.copy.add(flat)
        self.max_norm = float(np.sqrt((flat.astype(np.float64) ** 2).sum(axis=1).max())) if n else 0.0

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(scores, ids) of the k best, as the flat index ranks them; None when only the float32
        scan can say (more than half the index would have to be rescored)."""
        n, d = self.flat.shape
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        slack = float(np.linalg.norm(q)) * self.max_norm * (HALF_ROUNDING + 2 * d * SINGLE_ROUNDING)
        take = k + max(32, k // 4)
        while 2 * take <= n:
            approx, rows = self.copy.search(q, take)
            exact = self.flat[rows[0]] @ q[0]
            order = np.argsort(-exact, kind="stable")
            certain = int(np.count_nonzero(exact > float(approx[0, -1]) + slack))
            if certain >= k:
                best = order[:k]
                return exact[best][None, :].astype(np.float32), self.id_map[rows[0][best]][None, :]
            take *= 4
        return None
