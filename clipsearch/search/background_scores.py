"""Every photo's cosines with the text queries' alternatives, kept by a process that searches again.

A text query decides each hit by CLIP's zero-shot comparison (relevance.py): the hit's cosine
with the query against its cosines with the background texts (~230). Those do not depend on the
query, so a process that searches more than once (the gallery, a script using `Library`) keeps them:
one product of a flat index's vectors with the background, made on the index's second text query
and read by every query after it. A query's decision then reads 256 rows of a table instead of
multiplying 256 × 512 by 512 × 230 (0.7 ms, most of a 10k search's arithmetic after FAISS's scan).
The first text query keeps the product, so a one-query CLI run never pays for the table
(about 15 ms and 9 MB per 10,000 photos, 46 MB at the flat limit). IVF indexes keep the product:
their vectors are quantised codes, and at their sizes the table would be large.

Each query's alternatives (relevance.alternative_mask: which background texts do not paraphrase
it) are kept beside the table, by query vector: robust statistics over ~230 similarities, 0.15 ms.

The table's cosines are the same float32 products the query's own product would make, in another
summation order: a decision could change only for a photo whose share sits within ~1e-6 of
relevance.MIN_SHARE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clipsearch.index.vectors import VectorIndex
from clipsearch.search import relevance

KEY = "background-scores"
# Text queries an index answers with the product before its table is made: a one-shot process
# (the CLI) stops at one.
PRODUCTS_BEFORE_TABLE = 1


# Queries whose alternatives (which background texts do not paraphrase them) are kept.
KEPT_MASKS = 1024


@dataclass
class _Entry:
    background: np.ndarray
    queries: int = 0
    table: np.ndarray | None = None
    masks: dict[bytes, np.ndarray] = field(default_factory=dict)


def _entry(index: VectorIndex, background: np.ndarray) -> _Entry:
    entry = index.derived.get(KEY)
    if not (isinstance(entry, _Entry) and _same(entry.background, background)):
        entry = index.derived[KEY] = _Entry(background)
    return entry


def alternative_mask(index: VectorIndex, query: np.ndarray, background: np.ndarray) -> np.ndarray:
    """relevance.alternative_mask, kept per query vector: a gallery asks the same texts again, and
    the robust statistics over ~230 similarities cost ~0.15 ms."""
    masks = _entry(index, background).masks
    key = np.ascontiguousarray(query, dtype=np.float32).tobytes()
    mask = masks.get(key)
    if mask is None:
        if len(masks) >= KEPT_MASKS:
            masks.clear()
        mask = masks[key] = relevance.alternative_mask(query, background)
    return mask


def table_for(index: VectorIndex, background: np.ndarray) -> np.ndarray | None:
    """(index size, len(background)) cosines, rows in `index.flat()` order; None while this process
    has answered fewer than PRODUCTS_BEFORE_TABLE text queries on this index with this background,
    and for IVF indexes."""
    flat = index.flat()
    if flat is None:
        return None
    entry = _entry(index, background)
    if entry.table is None:
        entry.queries += 1
        if entry.queries <= PRODUCTS_BEFORE_TABLE:
            return None
        entry.table = np.ascontiguousarray(flat @ background.T, dtype=np.float32)
    return entry.table


def _same(kept: np.ndarray, background: np.ndarray) -> bool:
    # A warm Library hands in the very array each time; another caller's copy is compared (0.05 ms).
    return kept is background or (kept.shape == background.shape and bool(np.array_equal(kept, background)))
