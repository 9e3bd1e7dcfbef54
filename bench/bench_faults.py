"""What the fault checks of issue #16 cost: the FAISS identity check on load, and quick_check.

    python bench/bench_faults.py [--sizes 20000,100000]

Synthetic unit vectors (64 dimensions) written straight into a real index. Baselines measured in
the same run: the whole `VectorIndex.load` of a current file (which includes the identity check),
and reading every vector blob back from SQLite (what quick_check's full pass is compared with).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(n: int) -> dict[str, float]:
    from clipsearch.index.records import ImageRecord
    from clipsearch.index.store import Store
    from clipsearch.index.vectors import VectorIndex, _file_for, _read, reflects
    from clipsearch.model.identity import ModelIdentity

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(n)
        with Store.open(folder, create=True) as store:
            store.bind_model(ModelIdentity("bench", 64, "sha"))
            for start in range(0, n, 20_000):
                m = min(20_000, n - start)
                vecs = rng.normal(size=(m, 64)).astype(np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                store.write_batch([ImageRecord(f"/p/{start + i:07d}.jpg", 1, 1 + start + i, str(start + i), 10, 10,
                                               "jpeg") for i in range(m)], vecs)
            VectorIndex.load(folder, store)
            mapped = _read(_file_for(folder, store.generation()))
            check = _timed(lambda: reflects(mapped, store), 30)
            load = _timed(lambda: VectorIndex.load(folder, store), 10)
        db = folder / "clipsearch.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            quick = _timed(lambda: conn.execute("PRAGMA quick_check").fetchall(), 3)
            scan = _timed(lambda: sum(len(b) for (b,) in conn.execute("SELECT vector FROM vectors")), 3)
        return {"photos": n, "db_mb": round(db.stat().st_size / 1e6, 1), "identity_check_ms": round(check * 1e3, 3),
                "load_ms": round(load * 1e3, 3), "identity_share_of_load": round(check / load, 3),
                "quick_check_ms": round(quick * 1e3, 1), "vector_scan_ms": round(scan * 1e3, 1),
                "quick_check_vs_scan": round(quick / scan, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,100000")
    args = ap.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        print(json.dumps(measure(n)))


if __name__ == "__main__":
    main()
