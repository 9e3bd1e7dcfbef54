"""Shards: `embed --shard i/N` anywhere, `merge` into one index identical to local indexing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapes
from click.testing import CliRunner
from conftest import TINY_MODEL
from same_index import assert_same_index, index_locally

from clipsearch import Library, paths
from clipsearch.cli import app
from clipsearch.errors import ModelMismatchError, UsageError
from clipsearch.index.store import Store
from clipsearch.ingest import shards

N_PHOTOS = 280  # more than one commit (256), so a killed `embed` has something to resume from
runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pictures at three depths (files before subfolders in scan order), a non-UTF-8 name, a bad file."""
    folder = tmp_path_factory.mktemp("shard-photos")
    rng = np.random.default_rng(11)
    places = [folder, folder / "b", folder / "b" / "deeper", folder / "a"]
    for p in places:
        p.mkdir(exist_ok=True)
    for i in range(N_PHOTOS - 1):
        shapes.sample(rng).image.save(places[i % 4] / f"img{i:04d}.png")
    shapes.sample(rng).image.save(os.fsdecode(os.fsencode(str(folder / "b")) + b"/caf\xe9.png"))
    (folder / "a" / "notes.png").write_text("not a picture")
    return folder


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    index, summary = index_locally(photos, tmp_path_factory.mktemp("shard-reference"), TINY_MODEL)
    assert (summary.new, sum(summary.skipped.values())) == (N_PHOTOS, 1)
    return index


@pytest.fixture(scope="module")
def three_shards(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("shards")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_HOME", str(folder / "home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        written = [Library(model=TINY_MODEL).embed_shard([photos], (i, 3), folder / f"s{i}") for i in range(3)]
    assert sum(s.files for s in written) == N_PHOTOS + 1, "every file in exactly one shard"
    assert sum(s.images for s in written) == N_PHOTOS and all(s.images > 50 for s in written)
    assert sorted(p.name for p in folder.iterdir()) == ["home", "s0", "s1", "s2"]  # no .partial left
    return [s.out for s in written]


def test_shards_merged_in_any_order_give_the_index_local_indexing_gives(
        three_shards: list[Path], reference: Path, tmp_path: Path) -> None:
    desc = json.loads((three_shards[1] / shards.SHARD_FILE).read_text())
    assert desc["shard"] == {"index": 1, "count": 3} and desc["model"]["embed_dim"] == 64
    lib = Library(index=tmp_path / "index")
    summary = lib.merge([three_shards[2], three_shards[0], three_shards[1]])
    assert (summary.added, summary.duplicates, dict(summary.skipped)) == (N_PHOTOS, 0, {"not an image": 1})
    assert_same_index(tmp_path / "index", reference)
    # The model's logit scale travels with the shards: text queries' relevance decision needs it.
    assert desc["model"]["logit_scale"] == pytest.approx(25.375, abs=0.01)
    store = Store.open(tmp_path / "index")
    try:
        assert float(store.meta("logit_scale") or 0) == desc["model"]["logit_scale"]
    finally:
        store.close()

    again = lib.merge(three_shards)  # merging twice changes nothing
    assert (again.added, again.updated, again.unchanged) == (0, 0, N_PHOTOS + 1)
    assert_same_index(tmp_path / "index", reference)


def test_mixed_models_are_refused(three_shards: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(three_shards[0], other)
    desc = json.loads((other / shards.SHARD_FILE).read_text())
    desc["model"]["weights_sha256"] = "0" * 64
    (other / shards.SHARD_FILE).write_text(json.dumps(desc))
    lib = Library(index=tmp_path / "index")
    with pytest.raises(ModelMismatchError, match="different models"):
        lib.merge([three_shards[1], other])
    assert not (tmp_path / "index" / "clipsearch.db").exists()
    lib.merge([three_shards[1]])
    count = lib.status().images
    with pytest.raises(ModelMismatchError, match="this index was built with"):
        lib.merge([other])
    assert lib.status().images == count


def test_the_newest_copy_of_a_path_wins_and_keeps_its_id(photos: Path, tmp_path: Path) -> None:
    work = tmp_path / "photos"
    shutil.copytree(photos / "b" / "deeper", work)
    old = Library(model=TINY_MODEL).embed_shard([work], (0, 1), tmp_path / "old")
    victim = sorted(work.glob("*.png"))[3]
    shapes.sample(np.random.default_rng(99)).image.save(victim)  # new content, newer mtime
    os.utime(victim, ns=(victim.stat().st_mtime_ns + 10**9, victim.stat().st_mtime_ns + 10**9))
    new = Library(model=TINY_MODEL).embed_shard([work], (0, 1), tmp_path / "new")

    lib = Library(index=tmp_path / "index")
    lib.merge([old.out])
    store = Store.open(lib.path)
    vid, before = store.id_for_path(str(victim)), store.vectors_of_ids([store.id_for_path(str(victim))])
    store.close()
    summary = lib.merge([new.out])
    assert (summary.updated, summary.unchanged, summary.added) == (1, old.images - 1, 0)
    store = Store.open(lib.path)
    assert store.id_for_path(str(victim)) == vid
    assert not np.allclose(store.vectors_of_ids([vid]), before)
    after = store.vectors_of_ids([vid])
    store.close()
    assert lib.merge([old.out]).kept == 1  # an older copy does not undo the newer one

    both = Library(index=tmp_path / "both")  # the same path in two shards: one entry, the newest
    summary = both.merge([new.out, old.out])
    assert (summary.added, summary.duplicates, both.status().images) == (old.images, old.images, old.images)
    store = Store.open(both.path)
    np.testing.assert_allclose(store.vectors_of_ids([store.id_for_path(str(victim))]), after, atol=1e-6)
    store.close()


def test_merge_remaps_a_tree_mounted_elsewhere(three_shards: list[Path], photos: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    result = runner.invoke(app, ["merge", *map(str, three_shards), "--index", str(index),
                                 "--remap", f"{photos}=/mnt/archive", "--json"])
    assert result.exit_code == 0, result.output
    store = Store.open(index)
    paths = [p for (p,) in store.db.execute("SELECT path FROM images")]
    store.close()
    assert len(paths) == N_PHOTOS and all(p.startswith("/mnt/archive/") for p in paths)
    assert "/mnt/archive/b/deeper/img0002.png" in paths


def test_unfinished_and_damaged_shards_are_refused(three_shards: list[Path], tmp_path: Path) -> None:
    unfinished = tmp_path / "s.partial"
    shutil.copytree(three_shards[0], unfinished)
    (unfinished / shards.SHARD_FILE).unlink()
    with pytest.raises(UsageError, match="unfinished shard"):
        Library(index=tmp_path / "index").merge([unfinished])
    damaged = tmp_path / "damaged"
    shutil.copytree(three_shards[0], damaged)
    np.save(damaged / shards.VECTORS, np.load(damaged / shards.VECTORS)[:-1])
    with pytest.raises(UsageError, match="damaged"):
        Library(index=tmp_path / "index").merge([damaged])
    with pytest.raises(UsageError, match="already holds a finished shard"):
        Library(model=TINY_MODEL).embed_shard([tmp_path], (0, 1), three_shards[0])
    assert not (tmp_path / "index").exists()


def test_a_killed_embed_resumes_and_writes_the_same_shard(photos: Path, reference: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "shard"
    cmd = [sys.executable, "-m", "clipsearch", "embed", str(photos), "--shard", "0/1", "--out", str(out), "-q"]
    killed = subprocess.run(cmd, env={**os.environ, "CLIPSEARCH_FAILPOINT": "commit:2"}, capture_output=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and (tmp_path / "shard.partial").is_dir()  # never a half-written shard
    # Resuming is the same library code whoever calls it; in this process it costs no cold start.
    monkeypatch.setenv("CLIPSEARCH_HOME", str(tmp_path / "home"))
    done = Library(model=TINY_MODEL).embed_shard([photos], (0, 1), out)
    assert done.images == N_PHOTOS and 0 < done.embedded_now < N_PHOTOS
    assert not (tmp_path / "shard.partial").exists()
    # One shard of everything merges to the index that local indexing gives.
    Library(index=tmp_path / "one").merge([out])
    assert_same_index(tmp_path / "one", reference)


def test_shard_membership_ignores_where_the_tree_is_mounted() -> None:
    names = [f"x/{i}.jpg" for i in range(200)]
    here = [shards.shard_of(f"/data/photos/{n}", ["/data/photos"], 5) for n in names]
    there = [shards.shard_of(f"/mnt/nas/{n}", ["/mnt/nas"], 5) for n in names]
    assert here == there and set(here) == set(range(5))
    assert paths.under("/data/photos/x/1.jpg", ["/data/photos"])


def test_bad_shard_specs_are_usage_errors() -> None:
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(UsageError):
            shards.parse_shard(bad)
    assert shards.parse_shard("2/3") == (2, 3)
