"""Photos embedded by an image graph that the background check rejects are embedded again.

An index run may embed through the ViT tower vit_graph.py builds without torch, before the
background exporter has checked it against open_clip. When that check fails, `status` says how many
photos wait and why, the next `index` embeds exactly those again (never with that graph), their
vectors are then open_clip's, and `status` is clean. A kill between the verdict and the graph's
replacement changes none of that; a check that passes sends nothing back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapes
import videos
from click.testing import CliRunner
from test_vit_graph import PREPROCESS, TEXT, VARIANTS, _save

from clipsearch.cli import app
from clipsearch.index import unchecked
from clipsearch.index.store import Store
from clipsearch.ingest import images
from clipsearch.ingest import videos as ingest_videos
from clipsearch.model import background_export, image_export, image_tower, names, onnx_indexing, vit_config, vit_graph
from clipsearch.model.embedder import Embedder

runner = CliRunner()


@pytest.fixture(scope="session")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random open_clip ViT saved as a user would have it (test_vit_graph's 'plain' kind)."""
    return _save(tmp_path_factory.mktemp("graph-check") / "vit", {"embed_dim": 24, "text_cfg": TEXT,
                                                                  **VARIANTS["plain"]}, PREPROCESS["plain"], 7)


@pytest.fixture(scope="session")
def reference(vit: Path, tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """open_clip's own fp32 model of `vit`: the vectors a photo must end up with."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_HOME", str(tmp_path_factory.mktemp("graph-check-home")))
        return Embedder(names.parse(f"local-dir:{vit}"), "cpu", "fp32")


@pytest.fixture
def model(vit: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """`vit` as the model of every command; index runs on the CPU may take the image towers."""
    name = f"local-dir:{vit}"
    monkeypatch.setenv("CLIPSEARCH_MODEL", name)
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "on")
    monkeypatch.setenv(image_tower.RUNTIME_ENV, "onnxruntime")
    monkeypatch.setattr(onnx_indexing, "gpu_possible", lambda: False)
    monkeypatch.setattr(os, "nice", lambda _: 0)  # the exporter's, run in this process: not the test's
    return name


def _photos(folder: Path, n: int, seed: int) -> list[str]:
    """`n` held-out shapes of different classes in `folder`."""
    every = folder.with_name(folder.name + "-all")
    made = shapes.write_heldout(every, per_class=1, seed=seed)
    folder.mkdir(parents=True)
    kept = [str(shutil.move(str(p), folder / p.name)) for p, _, _ in made[:n]]
    shutil.rmtree(every)
    return kept


def _cli(*args: str) -> dict[str, object]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _index(*args: str) -> dict[str, object]:
    return _cli("index", *args, "--device", "cpu")


def _vectors(index: Path) -> dict[str, tuple[np.ndarray, str | None]]:
    """Every row's vector and mark, by path (a video's frames with their `#t=` paths)."""
    with Store.open(index) as store:
        rows = store.db.execute("SELECT i.path, v.vector, v.unchecked_graph FROM images i "
                                "JOIN vectors v ON v.image_id = i.id").fetchall()
    return {p: (np.frombuffer(b, dtype="<f4"), mark) for p, b, mark in rows}


def _unlike_open_clip(model: str, index: Path) -> None:
    """The built graph as an index run would build it, its weights shuffled: whole, but wrong."""
    tower = vit_config.tower(names.parse(model))
    assert tower is not None
    data = vit_graph.build(tower, index) / "model.opt.onnx.data"
    raw = bytearray(data.read_bytes())
    np.random.default_rng(0).shuffle(np.frombuffer(raw, dtype=np.float32))
    data.write_bytes(bytes(raw))


def _check(index: Path, reference: Embedder) -> int:
    """The background exporter's run for the image tower, in this process."""
    return background_export._main(index, reference.spec.name, reference.identity.weights_sha256, ["image"])


def _cosines_to_open_clip(reference: Embedder, paths: list[str], index: Path) -> list[float]:
    """Each photo's stored vector against open_clip fp32's own of the same decoded pixels."""
    got = _vectors(index)
    want = reference.embed_images(np.stack([images.decode(p, reference.preprocess).pixels for p in paths]))
    return [float(got[p][0] @ w) for p, w in zip(paths, want, strict=True)]


def test_photos_a_rejected_graph_embedded_wait_in_status_and_the_next_index_embeds_exactly_them(
        model: str, reference: Embedder, isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index, photos = isolated / "index", tmp_path / "photos"
    _photos(photos / "first", 4, seed=11)
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "off")
    assert str(_index(str(photos))["embedded_with"]).startswith("torch")  # 4 photos open_clip embedded
    before = _vectors(index)
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "on")
    _unlike_open_clip(model, index)
    later = _photos(photos / "later", 3, seed=12)
    clip = str(videos.write_clip(photos / "later" / "clip.mp4", [("red", "circle", 1.0), ("blue", "square", 1.0)]))
    monkeypatch.setattr(ingest_videos, "KEEP_BELOW", 1.1)  # every sampled frame kept, however alike
    assert _index()["embedded_with"] == image_tower.ONNXRUNTIME  # the 3 photos and the video: the graph
    marked = {p for p, (_, mark) in _vectors(index).items() if mark}
    assert {p.split("#t=")[0] for p in marked} == {*later, clip} and len(marked) > 4  # the video's frames too
    assert _cli("status")["reembed"] == 0  # not checked yet
    assert max(_cosines_to_open_clip(reference, later, index)) < 0.99  # and wrong

    assert _check(index, reference) == 0  # the check fails; the torch export replaces the graph
    assert background_export.declined(index).get(vit_graph.BUILT) == reference.identity.weights_sha256
    st = _cli("status")
    assert st["reembed"] == 4 and "did not match open_clip" in str(st["reembed_reason"])
    text = runner.invoke(app, ["status"]).stdout
    assert "to re-embed:  4 photos: the image model clipsearch built without torch" in text
    hits = runner.invoke(app, ["query", "a red circle", "--json", "-n", "3", "--min-score", "-1"])
    assert hits.exit_code == 0 and len(json.loads(hits.stdout)["results"]) == 3  # queries work meanwhile

    # One of them moved meanwhile: its row follows it (same id, so its tags would stay) and is embedded again.
    (photos / "later" / "moved").mkdir()
    later[0] = str(shutil.move(later[0], photos / "later" / "moved" / Path(later[0]).name))
    with Store.open(index) as store:
        moved_id = store.id_for_path(str(Path(later[0]).parent.parent / Path(later[0]).name))
    done = _index()
    assert (done["reembedded"], done["new"], done["changed"], done["unchanged"], done["moved"]) == (4, 0, 0, 4, 1)
    assert done["embedded_with"] == image_tower.ONNXRUNTIME  # the verified torch export, not the graph
    with Store.open(index) as store:
        assert moved_id is not None and store.id_for_path(later[0]) == moved_id
    after = _vectors(index)
    assert not any(mark for _, mark in after.values())
    assert all(np.array_equal(after[p][0], v) for p, (v, _) in before.items())  # open_clip's rows untouched
    assert min(_cosines_to_open_clip(reference, later, index)) >= 0.999
    assert _cli("status")["reembed"] == 0 and "to re-embed" not in runner.invoke(app, ["status"]).stdout
    assert _index()["reembedded"] == 0


def test_a_kill_between_the_verdict_and_the_graphs_replacement_still_leads_to_embedding_again(
        model: str, reference: Embedder, isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index, photos = isolated / "index", tmp_path / "photos"
    made = _photos(photos, 3, seed=13)
    index.mkdir(parents=True)
    _unlike_open_clip(model, index)
    assert _index(str(photos))["embedded_with"] == image_tower.ONNXRUNTIME
    # The real exporter process, killed (SIGKILL) right after recording its verdict.
    env = {**os.environ, "CLIPSEARCH_FAILPOINT": "graph-rejected"}
    killed = subprocess.run([sys.executable, "-m", "clipsearch.model.background_export", str(index), model,
                             reference.identity.weights_sha256, "image"], env=env, timeout=300, capture_output=True)
    assert killed.returncode == -9, killed.stderr
    assert vit_graph.built(index, reference.identity.weights_sha256)  # still the rejected graph
    assert not image_tower.available(index, reference.identity.weights_sha256)
    assert _cli("status")["reembed"] == 3
    done = _index("--precision", "fp32")
    assert done["reembedded"] == 3 and str(done["embedded_with"]).startswith("torch")  # never that graph again
    assert min(_cosines_to_open_clip(reference, made, index)) >= 0.999
    assert _cli("status")["reembed"] == 0
    # The next exporter does not check that graph again (the verdict stands): it exports.
    calls: list[str] = []
    monkeypatch.setattr(image_export, "verify_built", lambda *_: calls.append("check") or True)
    monkeypatch.setattr(image_export, "export", lambda *_: calls.append("export") or True)
    assert _check(index, reference) == 0 and calls == ["export"]


def test_a_graph_that_passes_its_check_sends_nothing_back(model: str, reference: Embedder, isolated: Path,
                                                          tmp_path: Path) -> None:
    index, photos = isolated / "index", tmp_path / "photos"
    _photos(photos, 6, seed=14)
    first = _index(str(photos))
    assert first["embedded_with"] == image_tower.ONNXRUNTIME and first["embedded"] == 6
    sha = reference.identity.weights_sha256
    with Store.open(index) as store:  # the run did record where its vectors came from...
        assert unchecked.count(store.db, vit_graph.unchecked_mark(
            json.loads((index / image_tower.FOLDER / "meta.json").read_text()))) == 6
    assert _check(index, reference) == 0
    assert image_tower.available(index, sha) and vit_graph.built(index, sha)  # ...and the check vouched for it
    assert vit_graph.BUILT not in background_export.declined(index)
    assert _cli("status")["reembed"] == 0
    again = _index()
    assert (again["reembedded"], again["embedded"], again["unchanged"]) == (0, 0, 6)
