"""An indexer killed (SIGKILL) at random instants and inside commits and FAISS writes loses nothing.

After every kill the next run completes, and then: every file is in the index exactly once, the
vectors equal a clean run's, FAISS ids equal SQLite ids, no temp files are left, status is healthy.
The default variant kills 4 runs of 600 photos (each kind of kill at least once) and recovers each
in this process (a cold start costs seconds, and the recovery is the same library code either
way); `pytest -m heavy` kills 20 runs of 2,000 and recovers through the command line, as a user would.
"""

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
import pytest
import shapes
import videos

from clipsearch import Library
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex


def _make_library(folder: Path, n: int) -> None:
    rng = np.random.default_rng(5)
    for i in range(n):
        sub = folder / f"roll{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        shapes.sample(rng).image.save(sub / f"img{i:04d}.png")
    # A video among them: its frames are rows committed with it, and must be all there or not at all.
    videos.write_clip(folder / "roll00" / "clip.mp4", [("red", "circle", 2.0), ("blue", "square", 2.0)])


def _committed(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.Error:
        return 0


def _kill_plan(kills: int, seed: int) -> list[str]:
    """Mostly random instants, and some exactly inside a commit or a FAISS write."""
    rng = random.Random(seed)
    plan = []
    for k in range(kills):
        if k % 4 == 1:
            plan.append(f"commit:{rng.randint(1, 2)}")
        elif k % 4 == 3:
            plan.append("faiss-write")
        else:
            plan.append(f"random:{rng.uniform(0.0, 0.8):.3f}")
    return plan


def _run_killed(cmd: list[str], index: Path, how: str) -> bool:
    """One indexing run, killed as planned; True when the kill landed before the run finished."""
    env = {**os.environ, "CLIPSEARCH_FAILPOINT": how} if not how.startswith("random") else dict(os.environ)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if not how.startswith("random"):
        return proc.wait(timeout=300) == -signal.SIGKILL
    before = _committed(index / "clipsearch.db")
    deadline = time.monotonic() + 120
    while proc.poll() is None and _committed(index / "clipsearch.db") <= before and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(float(how.split(":")[1]))
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def _check_consistent(index: Path, clean: Path, n: int) -> None:
    killed_store, clean_store = Store.open(index), Store.open(clean)
    try:
        paths = [r[0] for r in killed_store.db.execute("SELECT path FROM images WHERE video_id IS NULL")]
        assert len(paths) == len(set(paths)) == n, "a file is missing or indexed twice"
        ids, _ = killed_store.all_vectors()
        faiss_index = VectorIndex.load(index, killed_store, save=False)
        assert faiss_index.size == len(ids) == clean_store.count() > n  # the video's later frames are rows too
        assert sorted(faiss_index.index.id_map.at(i) for i in range(faiss_index.size)) == sorted(ids.tolist())
        by_path = {p: i for i, p in killed_store.db.execute("SELECT id, path FROM images")}
        clean_by_path = {p: i for i, p in clean_store.db.execute("SELECT id, path FROM images")}
        assert by_path.keys() == clean_by_path.keys()
        a = killed_store.vectors_of_ids([by_path[p] for p in sorted(by_path)])
        b = clean_store.vectors_of_ids([clean_by_path[p] for p in sorted(clean_by_path)])
        np.testing.assert_allclose(a, b, atol=1e-6)
        orphans = killed_store.db.execute(
            "SELECT count(*) FROM vectors WHERE image_id NOT IN (SELECT id FROM images)").fetchone()[0]
        assert orphans == 0
        assert killed_store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        killed_store.close()
        clean_store.close()
    assert [p.name for p in index.iterdir() if p.name.endswith(".tmp")] == []
    status = Library(index=index).status()
    assert status.images == n and status.vector_cache == "current"


def _kill_and_recover(tmp_path: Path, n: int, kills: int, seed: int, recover_in_process: bool) -> None:
    photos = tmp_path / "photos"
    _make_library(photos, n)
    clean = Library(index=tmp_path / "clean")
    clean.index([photos])
    index = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clipsearch", "index", str(photos), "--index", str(index), "-q"]
    landed, consistent = 0, 0
    rng = random.Random(seed)
    for k, how in enumerate(_kill_plan(kills, seed)):
        # Give every run real work: half the photos look changed (same bytes, new mtime) and are re-embedded.
        for p in rng.sample(sorted(photos.rglob("*.png")), n // 2):
            os.utime(p, ns=(time.time_ns(), time.time_ns() + k))
        if k % 3 == 2:
            # Some kills hit a run that has work again: new, changed and deleted files.
            victim = next((photos / "roll00").glob("*.png"))
            victim.unlink()
            shapes.sample(np.random.default_rng(k)).image.save(photos / "roll00" / f"new{k}.png")
            clean.index([photos])
        landed += _run_killed(cmd, index, how)
        if recover_in_process:
            Library(index=index).index([photos])
        else:
            final = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert final.returncode == 0, final.stderr
        expected = len(list(photos.rglob("*.png"))) + 1  # and the video
        _check_consistent(index, clean.path, expected)
        consistent += 1
    print(f"\n{consistent}/{kills} consistent after {landed} kills that landed mid-run, 0 lost, 0 duplicated")
    assert landed >= kills // 2, "most kills came too late to test anything: make the library larger"


def test_killed_indexer_recovers(tmp_path: Path) -> None:
    _kill_and_recover(tmp_path, n=600, kills=4, seed=1234, recover_in_process=True)


@pytest.mark.heavy
def test_killed_indexer_recovers_heavy(tmp_path: Path) -> None:
    _kill_and_recover(tmp_path, n=2000, kills=20, seed=99, recover_in_process=False)


def test_temp_files_of_dead_writers_are_cleaned(tmp_path: Path, photo_dir: Path) -> None:
    lib = Library(index=tmp_path / "idx")
    lib.index([photo_dir])
    (lib.path / ".vectors.7.faiss.999999.tmp").write_bytes(b"half-written by a process that died")
    lib.index([photo_dir])
    assert not (lib.path / ".vectors.7.faiss.999999.tmp").exists()
