"""The float16 scan a warm process searches a flat index with gives the float32 flat search's answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.index.half_scan import HalfScan
from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex
from clipsearch.model.identity import ModelIdentity


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _library(kind: str, n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "spread":
        return _unit(rng.normal(size=(n, dim)))
    if kind == "subjects":  # a few subjects, many photos each
        centres = rng.normal(size=(12, dim))
        return _unit(centres[rng.integers(0, 12, n)] + rng.normal(scale=0.15, size=(n, dim)))
    if kind == "bursts":  # runs of 40 near-copies
        base = rng.normal(size=(n // 40 + 1, dim))
        return _unit(np.repeat(base, 40, axis=0)[:n] + rng.normal(scale=2e-4, size=(n, dim)))
    # one photo copied 400 times with edits so slight that float16 rounding reorders the copies
    centre = rng.normal(size=dim)
    copies = centre + 5e-4 * np.linalg.norm(centre) * rng.normal(size=(400, dim))
    return _unit(np.concatenate([copies, rng.normal(size=(n - 400, dim))]))


def _flat(vecs: np.ndarray, ids: np.ndarray) -> object:
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vecs.shape[1]))
    index.add_with_ids(vecs, ids)
    return index


@pytest.mark.parametrize("kind", ["spread", "subjects", "bursts", "copies"])
@pytest.mark.parametrize("dim", [64, 512])
def test_the_half_scan_ranks_as_the_flat_search(kind: str, dim: int) -> None:
    n = 2000
    vecs = _library(kind, n, dim, seed=dim)
    ids = np.arange(n, dtype=np.int64) * 3 + 7  # ids are not rows
    flat = _flat(vecs, ids)
    half = HalfScan(vecs, ids)
    rng = np.random.default_rng(1)
    near = vecs[:400] if kind == "copies" else vecs
    queries = np.concatenate([_unit(rng.normal(size=(10, dim))),  # text-like: far from every photo
                              near[rng.integers(0, len(near), 10)],  # an indexed photo itself
                              _unit(near[rng.integers(0, len(near), 10)] + rng.normal(scale=5e-4, size=(10, dim)))])
    answered = 0
    for q in queries:
        exact = vecs @ q
        for k in (10, 256):
            want_s, want_i = flat.search(q[None, :], k)  # type: ignore[attr-defined]
            got = half.search(q, k)
            if got is None:
                continue
            answered += 1
            got_s, got_i = got
            assert got_s.shape == want_s.shape and got_i.shape == want_i.shape
            np.testing.assert_allclose(got_s[0], want_s[0], rtol=0, atol=1e-6)
            # Best first, and nothing left out scores above the last one kept: the flat search's
            # answer, up to float32 rounding (FAISS and numpy sum in different orders).
            rows = (got_i[0] - 7) // 3
            np.testing.assert_allclose(got_s[0], exact[rows], rtol=0, atol=1e-6)
            assert np.all(np.diff(got_s[0]) <= 0)
            left_out = np.ones(n, bool)
            left_out[rows] = False
            assert exact[left_out].max() <= got_s[0, -1] + 1e-6
            assert len(set(got_i[0]) ^ set(want_i[0])) <= 2 * int(np.sum(np.abs(exact - got_s[0, -1]) <= 1e-6))
    assert answered >= len(queries)  # most searches never needed the float32 scan


def test_half_the_index_or_more_is_left_to_the_float32_scan() -> None:
    vecs = _library("spread", 300, 32, seed=0)
    half = HalfScan(vecs, np.arange(300, dtype=np.int64))
    assert half.search(vecs[0], 150) is None
    got = half.search(vecs[0], 5)
    assert got is not None and int(got[1][0, 0]) == 0


def _store(folder: Path, vecs: np.ndarray) -> Store:
    store = Store.open(folder, create=True)
    store.bind_model(ModelIdentity("synthetic", vecs.shape[1], "0" * 64))
    store.write_batch([ImageRecord(f"/p/{i:05d}.jpg", 1, i, str(i), 1, 1, "jpeg") for i in range(len(vecs))], vecs)
    return store


def test_a_warm_index_searches_its_half_copy_with_the_same_answers(tmp_path: Path) -> None:
    vecs = _library("subjects", 2000, 64, seed=5)
    store = _store(tmp_path, vecs)
    try:
        index = VectorIndex.load(tmp_path, store)
        queries = _unit(np.random.default_rng(2).normal(size=(8, 64)))
        first = [index.search(q[None, :], 40) for q in queries]  # the first search makes no copy
        assert index._half is not None  # the second one did
        again = [index.search(q[None, :], 40) for q in queries]
        for (s1, i1), (s2, i2) in zip(first[1:], again[1:], strict=True):
            assert list(i1[0]) == list(i2[0])
            np.testing.assert_allclose(s1, s2, atol=2e-6)
        _, many_i = index.search(queries, 40)  # several queries: FAISS's own batched scan
        assert list(many_i[3]) == list(again[3][1][0])
    finally:
        store.close()
