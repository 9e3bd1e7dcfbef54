"""Two indexers, queries during indexing, damaged or foreign index files, a full disk."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import shapes
from click.testing import CliRunner

from clipsearch import Library
from clipsearch.cli import app
from clipsearch.errors import StorageError
from clipsearch.index.store import Store

runner = CliRunner()


def _photos(folder: Path, n: int, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shapes.sample(rng).image.save(folder / f"p{i:04d}.png")
    return folder


def _hold_lock(lock_path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the index's lock, as a running indexer would."""
    code = ("import filelock, sys, time\n"
            f"lock = filelock.FileLock({str(lock_path)!r}); lock.acquire()\n"
            f"print('held', flush=True); time.sleep({seconds})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_indexer_exits_3_or_waits(tmp_path: Path, photo_dir: Path) -> None:
    lib = Library()
    lib.index([photo_dir])
    holder = _hold_lock(lib.path / "index.lock", 30)
    busy = runner.invoke(app, ["index", str(photo_dir)])
    holder.kill()
    holder.wait()
    assert busy.exit_code == 3 and "is being updated by" in busy.stderr and "--wait" in busy.stderr
    holder = _hold_lock(lib.path / "index.lock", 1.5)
    start = time.monotonic()
    waited = runner.invoke(app, ["index", str(photo_dir), "--wait", "-q"])
    holder.wait()
    assert waited.exit_code == 0 and time.monotonic() - start >= 1.0


def test_queries_during_indexing_stay_consistent(tmp_path: Path, photo_dir: Path) -> None:
    lib = Library()
    lib.index([photo_dir])
    more = _photos(tmp_path / "more", 300)  # two commits: queries meet a batch landing mid-run
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "index", str(more), "--index", str(lib.path), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    answers = 0
    while proc.poll() is None:
        hits = Library().search("a photo of a red circle", top=5, min_score=-1)
        assert len(hits) == 5 and all(Path(h.path).exists() for h in hits)
        answers += 1
        time.sleep(0.1)  # a user's pace: the indexer, not the query loop, should have the cores
    assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    assert answers >= 3
    assert Library().status().images == 48 + 300


def test_faiss_file_from_another_generation_is_not_used(photo_dir: Path) -> None:
    lib = Library()
    lib.index([photo_dir])
    before = [(h.path, round(h.score, 5)) for h in lib.search("a photo of a yellow ring", top=5)]
    (current,) = lib.path.glob("vectors.*.faiss")
    # Another index's FAISS file dropped in under the current name: wrong size, so rebuilt.
    other = Library(index=lib.path.parent / "other")
    other.index([next(photo_dir.rglob("*.png"))])
    (other_file,) = other.path.glob("vectors.*.faiss")
    current.write_bytes(other_file.read_bytes())
    assert [(h.path, round(h.score, 5)) for h in lib.search("a photo of a yellow ring", top=5)] == before


def test_a_full_disk_is_a_clean_error_and_the_index_survives(photo_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    lib = Library()
    lib.index([photo_dir / "all"])
    before = [h.path for h in lib.search("a photo of a green star", top=3)]

    def full(self: Store, *args: object, **kwargs: object) -> list[int]:
        raise sqlite3.OperationalError("database or disk is full")

    _photos(tmp_path / "new", 5)
    with monkeypatch.context() as m:
        m.setattr(Store, "_write_batch", full)
        with pytest.raises(StorageError, match="disk is full"):
            lib.index([tmp_path / "new"])
        result = runner.invoke(app, ["index", str(tmp_path / "new")])
        assert result.exit_code == 3 and "intact" in result.stderr
    assert [h.path for h in Library().search("a photo of a green star", top=3)] == before
    assert Library().status().images == 48


def test_model_mismatch_is_refused_for_query_and_index(photo_dir: Path, tmp_path: Path) -> None:
    import shutil

    from conftest import TINY_MODEL_DIR

    Library().index([photo_dir])
    other = tmp_path / "other-model"
    shutil.copytree(TINY_MODEL_DIR, other)
    for args in (["query", "dog", "--model", f"local-dir:{other}"], ["index", str(photo_dir), "--model",
                                                                      f"local-dir:{other}"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 4 and "was built with" in result.stderr
