"""Building the FAISS index from SQLite in chunks, never from a full copy of the vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex
from clipsearch.model.identity import ModelIdentity


def _store(folder: Path, n: int, dim: int = 32) -> Store:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(20, dim)).astype(np.float32)
    vecs = centres[rng.integers(0, 20, size=n)] + rng.normal(scale=0.1, size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = Store.open(folder, create=True)
    store.bind_model(ModelIdentity("synthetic", dim, "0" * 64))
    rows = [ImageRecord(f"/p/{i:05d}.jpg", 1, i, str(i), 1, 1, "jpeg") for i in range(n)]
    store.write_batch(rows, vecs)
    with store.atomic():  # holes in the ids, as deletions leave them
        store.db.execute("DELETE FROM images WHERE id % 7 = 3")
    return store


@pytest.mark.parametrize("flat_limit", [10**6, 100], ids=["flat", "ivf-sq8"])
def test_a_chunked_build_is_the_one_shot_build(tmp_path: Path, flat_limit: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    store = _store(tmp_path, 1500)
    try:
        ids, mat = store.all_vectors()
        one_shot = VectorIndex.build(store, flat_limit=flat_limit, chunk=10**6)

        def whole_matrix(*_a: object) -> None:
            raise AssertionError("the build read every vector at once")

        monkeypatch.setattr(Store, "snapshot_vectors", whole_matrix)
        chunked = VectorIndex.build(store, flat_limit=flat_limit, chunk=37)
        assert chunked.kind == ("flat" if flat_limit > 1500 else "ivf-sq8") and chunked.size == len(ids)
        assert chunked.generation == store.generation()
        assert bytes(faiss.serialize_index(chunked.index)) == bytes(faiss.serialize_index(one_shot.index))
        _, found = chunked.search(mat[:20], 5)
        assert (found[:, 0] == ids[:20]).mean() >= 0.95 and np.all(np.isin(found, ids))
    finally:
        store.close()
