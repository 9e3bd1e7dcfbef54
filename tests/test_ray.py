"""Indexing on a local Ray runtime: the same index as local indexing, through lost workers and a killed driver.

Each Ray run starts a small local runtime (2 CPUs, no dashboard) and stops it; the photos are a few
hundred small pictures, so the file stays around a minute.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapes
from conftest import TINY_MODEL
from same_index import assert_same_index, index_locally

from clipsearch import Library
from clipsearch.errors import ClusterError, ModelMismatchError, UsageError
from clipsearch.ingest import scan
from clipsearch.model.embedder import Embedder

ray = pytest.importorskip("ray")

from clipsearch.ingest import local_executor, pipeline, ray_executor  # noqa: E402 - only once Ray is known to be there
from clipsearch.ingest.ray_executor import RayOptions  # noqa: E402

N_PHOTOS = 300


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 pictures in three folders, plus one file that is not a picture (a skip travels too)."""
    folder = tmp_path_factory.mktemp("ray-photos")
    rng = np.random.default_rng(7)
    for i in range(N_PHOTOS):
        sub = folder / f"roll{i // 100}"
        sub.mkdir(exist_ok=True)
        shapes.sample(rng).image.save(sub / f"img{i:04d}.png")
    (folder / "roll1" / "notes.png").write_text("not a picture")
    return folder


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same photos indexed locally: what every Ray run must reproduce."""
    index, summary = index_locally(photos, tmp_path_factory.mktemp("ray-reference"), TINY_MODEL)
    assert (summary.new, sum(summary.skipped.values())) == (N_PHOTOS, 1)
    return index


def _cli(args: list[str], **env: str) -> subprocess.Popen[bytes]:
    # A new session: a driver killed with SIGKILL leaves two of Ray's helper processes behind,
    # which the test then ends by process group (its own, nobody else's).
    return subprocess.Popen([sys.executable, "-m", "clipsearch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **env}, start_new_session=True)


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err.decode(errors="replace")


def test_ray_builds_the_same_index_as_local_indexing_even_when_a_worker_dies(
        photos: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The runtime the run starts inherits these: the first worker to reach its second model batch is
    # SIGKILLed, once; Ray must restart it, redo its block, and the driver must not commit twice.
    marker = tmp_path / "worker-killed"
    monkeypatch.setenv("CLIPSEARCH_FAILPOINT", "ray-worker:2")
    monkeypatch.setenv("CLIPSEARCH_FAILPOINT_ONCE", str(marker))
    lib = Library(index=tmp_path / "index")
    summary = lib.index([photos], ray=RayOptions())
    assert marker.exists(), "no worker was killed: the test proved nothing"
    assert (summary.new, summary.embedded, summary.total) == (N_PHOTOS, N_PHOTOS, N_PHOTOS)
    assert dict(summary.skipped) == {"not an image": 1}
    assert_same_index(tmp_path / "index", reference)
    assert not ray.is_initialized(), "the runtime the run started was not stopped"

    def no_ray(*_a: object, **_k: object) -> None:
        raise AssertionError("Ray was started with nothing to do")

    monkeypatch.setattr(ray, "init", no_ray)
    again = lib.index([photos], ray=RayOptions())
    assert (again.embedded, again.unchanged) == (0, N_PHOTOS)


def test_a_killed_driver_loses_only_the_uncommitted_batch_and_a_rerun_resumes(
        photos: Path, reference: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    args = ["index", str(photos), "--ray", "--index", str(index), "-q"]
    code, err = _finish(_cli(args, CLIPSEARCH_FAILPOINT="commit:2"))  # SIGKILL inside the second commit
    assert code == -signal.SIGKILL, err
    with sqlite3.connect(index / "clipsearch.db") as conn:  # the first batch is in, the second lost
        done = conn.execute("SELECT (SELECT count(*) FROM images) + (SELECT count(*) FROM skipped)").fetchone()[0]
    assert done == pipeline.COMMIT_EVERY
    # Resuming is the plan's work, the same whichever executor reruns; a local rerun keeps this test short.
    rerun = Library(index=index).index([photos])
    assert rerun.embedded == N_PHOTOS - (pipeline.COMMIT_EVERY - 1)  # the first batch: 255 pictures + notes.png
    assert_same_index(index, reference)


def test_a_worker_with_other_weights_refuses_to_embed(photos: Path) -> None:
    settings = ray_executor.WorkerSettings(TINY_MODEL, "0" * 64, None, None, 10**8, 1)
    worker = ray_executor.EmbedWorker(settings)
    block = {"i": np.array([0]), "path": np.array([os.fsencode(next(photos.rglob("*.png")))], dtype=object),
             "size": np.array([1]), "mtime_ns": np.array([1])}
    with pytest.raises(ModelMismatchError, match="give every node the same weights"):
        next(iter(worker(block)))


def test_results_come_back_in_order_once_each(photos: Path, tiny_embedder: Embedder) -> None:
    files = list(scan.walk([photos / "roll1"]))  # 100 pictures, then notes.png
    results = list(local_executor.embed_files(files, tiny_embedder, 10**8))
    assert any(r.skip for r in results)
    dim = tiny_embedder.identity.embed_dim
    n = len(files)
    batches = [ray_executor.encode(results[s:s + 32], np.arange(s, min(s + 32, n)), dim) for s in (32, 0, 96, 64, 32)]
    back = list(ray_executor.in_order(iter(batches), files))  # out of order, and one block twice (a redone block)
    assert [r.file.path for r in back] == [f.path for f in files]
    assert [r.skip for r in back] == [r.skip for r in results]
    np.testing.assert_array_equal(np.stack([r.vector for r in back if r.vector is not None]),
                                  np.stack([r.vector for r in results if r.vector is not None]))
    with pytest.raises(ClusterError, match="rerun to finish"):
        list(ray_executor.in_order(iter(batches[:2]), files))


def test_without_ray_installed_the_option_says_how_to_get_it(photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(UsageError, match=r"clipsearch\[ray\]"):
        Library().index([photos / "roll0"], ray=RayOptions())
    assert not Library().path.exists(), "the index was touched before the missing extra was reported"


def test_the_core_install_never_imports_ray(photo_dir: Path, isolated: Path) -> None:
    Library().index([photo_dir])
    code = ("import sys\nfrom clipsearch.ingest import ray_executor\nfrom clipsearch.cli import main\n"
            "sys.argv = ['clipsearch', 'query', 'a photo of a purple ring', '-n', '1', '-f', 'paths']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'ray' not in sys.modules, 'ray was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CLIPSEARCH_HOME": str(isolated)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("purple-ring-0.png")


def test_worker_sizes_follow_the_options_and_the_cluster() -> None:
    from types import SimpleNamespace

    cluster = SimpleNamespace(
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
                       {"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64.0}}],
        cluster_resources=lambda: {"CPU": 18.0, "GPU": 2.0})

    def sizes(**options: float) -> tuple[float, float, int]:
        return ray_executor.RayExecutor(RayOptions(**options))._sizes(cluster)

    assert sizes() == (4.0, 0.0, 4)  # 4 CPUs each (the biggest live node has 16), 18 // 4 of them
    assert sizes(gpus_per_worker=1, cpus_per_worker=8) == (8.0, 1.0, 2)
    assert sizes(gpus_per_worker=0.5, cpus_per_worker=4) == (4.0, 0.5, 4)
    with pytest.raises(UsageError, match="room for no worker"):
        sizes(gpus_per_worker=3)
    assert sizes(workers=5, gpus_per_worker=3) == (4.0, 3.0, 5)  # taken as given: the cluster may grow
