"""Property: any sequence of add / modify / delete / move / re-index leaves the index equal to a
fresh index of the final folder (same paths, same vectors)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import shapes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipsearch import Library
from clipsearch.index.store import Store

OPS = st.lists(st.tuples(st.sampled_from(["add", "modify", "delete", "move", "reindex"]),
                         st.integers(0, 10_000)), min_size=1, max_size=10)


def _contents(index: Path) -> dict[str, np.ndarray]:
    store = Store.open(index)
    try:
        rows = dict(store.db.execute("SELECT path, id FROM images").fetchall())
        assert store.count() == len(rows)  # the trigger-kept counter never drifts from the rows
        return dict(zip(rows, store.vectors_of_ids(list(rows.values())), strict=True))
    finally:
        store.close()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_incremental_index_equals_a_fresh_one(ops: list[tuple[str, int]], tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    photos = root / "photos"
    photos.mkdir()
    lib = Library(index=root / "incremental")
    lib.index([photos])
    counter = 0
    for op, seed in ops:
        files = sorted(photos.rglob("*.png"))
        rng = np.random.default_rng(seed)
        if op == "add" or (op in ("modify", "delete", "move") and not files):
            counter += 1
            sub = photos / f"d{seed % 3}"
            sub.mkdir(exist_ok=True)
            shapes.sample(rng).image.save(sub / f"f{counter}.png")
        elif op == "modify":
            target = files[seed % len(files)]
            shapes.sample(rng).image.save(target)
            os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 1_000_000_000))
        elif op == "delete":
            files[seed % len(files)].unlink()
        elif op == "move":
            counter += 1
            dest = photos / f"moved{seed % 2}"
            dest.mkdir(exist_ok=True)
            shutil.move(files[seed % len(files)], dest / f"m{counter}.png")
        else:
            lib.index([photos])
    lib.index([photos])
    fresh = Library(index=root / "fresh")
    fresh.index([photos])
    got, want = _contents(lib.path), _contents(fresh.path)
    assert got.keys() == want.keys() == {str(p) for p in photos.rglob("*.png")}
    for path, vec in want.items():
        np.testing.assert_allclose(got[path], vec, atol=1e-6)
