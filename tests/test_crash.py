"""An indexer killed with SIGKILL at any moment leaves an index the next run completes consistently."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import shapes

from clipsearch import Library
from clipsearch.store import Store
from clipsearch.vectors import VectorIndex


def _make_library(folder: Path, n: int) -> None:
    rng = np.random.default_rng(5)
    for i in range(n):
        s = shapes.sample(rng)
        sub = folder / f"roll{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        s.image.save(sub / f"img{i:04d}.png")


def _committed(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sigkill_mid_run_then_rerun_is_consistent(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _make_library(photos, 700)
    index = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clipsearch", "index", str(photos), "--index", str(index), "-q"]
    rng = random.Random(1234)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = _committed(index / "clipsearch.db")
        deadline = time.monotonic() + 120
        # Wait for this run to commit something new, then kill it a random moment later.
        while proc.poll() is None and _committed(index / "clipsearch.db") <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the runs finished before they could be killed: make the library larger"
    print(f"killed {kills} of 3 runs")
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr

    clean = Library(index=tmp_path / "clean")
    clean.index([photos])
    killed_store, clean_store = Store.open(index), Store.open(clean.path)
    try:
        paths = [r[0] for r in killed_store.db.execute("SELECT path FROM images")]
        assert len(paths) == len(set(paths)) == 700  # every file exactly once
        ids, _ = killed_store.all_vectors()
        faiss_index = VectorIndex.load(index, killed_store, save=False)
        assert faiss_index.size == len(ids) == 700
        assert sorted(faiss_index.index.id_map.at(i) for i in range(faiss_index.size)) == sorted(ids.tolist())
        by_path = {p: i for i, p in killed_store.db.execute("SELECT id, path FROM images")}
        clean_by_path = {p: i for i, p in clean_store.db.execute("SELECT id, path FROM images")}
        assert by_path.keys() == clean_by_path.keys()
        a = killed_store.vectors_for([by_path[p] for p in sorted(by_path)])
        b = clean_store.vectors_for([clean_by_path[p] for p in sorted(clean_by_path)])
        np.testing.assert_allclose(a, b, atol=1e-6)
        orphans = killed_store.db.execute(
            "SELECT count(*) FROM vectors WHERE image_id NOT IN (SELECT id FROM images)").fetchone()[0]
        assert orphans == 0
    finally:
        killed_store.close()
        clean_store.close()
    (index / ".vectors.7.faiss.999999.tmp").write_bytes(b"half-written by a process that died")
    Library(index=index).index([photos])
    leftovers = [p.name for p in index.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".vectors")]
    assert leftovers == []
