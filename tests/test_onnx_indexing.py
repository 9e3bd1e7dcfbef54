"""Index runs of a few photos embed with the exported image tower: no torch, the same vectors (issue 22)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapes
from conftest import run_cli_without_model
from PIL import Image

from clipsearch import Library
from clipsearch.index.store import Store
from clipsearch.model import image_tower, onnx_indexing


@pytest.fixture
def exported(image_tower_index: Path) -> Path:
    """The shared index with the tiny model's image tower exported (conftest: made once a session)."""
    return image_tower_index


@pytest.fixture
def tower_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "on")  # conftest turns it off for every other test
    # A CI machine with a GPU device node would keep torch on "auto" (the subprocesses pass --device cpu).
    monkeypatch.setattr(onnx_indexing, "gpu_possible", lambda: False)


@pytest.fixture
def new_photos(tmp_path: Path) -> Path:
    """Photos the index has not seen: held-out shapes of another seed, JPEG and PNG, odd sizes."""
    folder = tmp_path / "new"
    made = shapes.write_heldout(tmp_path / "made", per_class=1, seed=777)
    folder.mkdir()
    for i, (path, _, _) in enumerate(made[:5]):
        img = Image.open(path).convert("RGB").resize((90 + 37 * i, 70 + 23 * i))
        img.save(folder / f"new{i}{'.jpg' if i % 2 else '.png'}")
    return folder


def _copy(index: Path, to: Path) -> Path:
    shutil.copytree(index, to)
    return to


def _vectors(index: Path, folder: Path) -> dict[str, np.ndarray]:
    with Store.open(index) as store:
        out = {}
        for p in sorted(folder.iterdir()):
            image_id = store.id_for_path(str(p))
            assert image_id is not None, p
            out[p.name] = store.vectors_of_ids([image_id])[0]
        return out


def test_a_few_new_photos_are_indexed_without_torch_as_torch_would(exported: Path, isolated: Path, tower_on: None,
                                                                   new_photos: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    index = _copy(exported, isolated / "index")
    run = run_cli_without_model(["index", str(new_photos), "--json", "--device", "cpu"], isolated)
    summary = json.loads(run.stdout)
    assert summary["embedded"] == 5 and summary["embedded_with"] == "onnx fp32"
    # The torch path on the same photos (the image tower switched off): the precision this machine
    # picks, and fp32.
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "off")
    onnx = _vectors(index, new_photos)
    for precision in (None, "fp32"):
        other = _copy(exported, tmp_path / f"torch-{precision}")
        done = Library(index=other, device="cpu", precision=precision).index([new_photos])
        assert done.embedded == 5 and done.embedded_with.startswith("torch")
        torch_vectors = _vectors(other, new_photos)
        for name, v in onnx.items():
            assert float(v @ torch_vectors[name]) >= 0.999, (precision, name)
    # Searching finds the new photos as it finds photos torch embedded; status says the tower is there.
    lib = Library(index=index)
    assert lib.status().as_dict()["image_model"] is True
    first = next(iter(onnx.values()))
    assert lib.query("", images=[str(sorted(new_photos.iterdir())[0])], top=1, min_score=-1).results[0].path \
        == str(sorted(new_photos.iterdir())[0])
    assert np.isclose(float(np.linalg.norm(first)), 1.0, atol=1e-5)


def test_many_photos_a_loaded_model_a_gpu_or_bf16_asked_for_keep_torch(exported: Path, isolated: Path,
                                                                      tower_on: None, new_photos: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runs = iter(range(100))

    def embedded_with(**kw: str) -> str:
        index = _copy(exported, isolated / f"index-{next(runs)}")
        return Library(index=index, **kw).index([new_photos]).embedded_with

    monkeypatch.setattr(onnx_indexing, "CROSSOVER", {"bf16": 4, "fp32": 4})
    assert embedded_with().startswith("torch")  # 5 photos: past the crossover
    monkeypatch.setattr(onnx_indexing, "CROSSOVER", {"bf16": 5, "fp32": 5})
    assert embedded_with() == "onnx fp32"
    assert embedded_with(precision="fp32") == "onnx fp32"
    assert embedded_with(precision="bf16") == "torch bf16"  # asked for by name: torch's
    monkeypatch.setattr(onnx_indexing, "gpu_possible", lambda: True)
    assert embedded_with().startswith("torch")  # torch might pick the GPU
    assert embedded_with(device="cpu") == "onnx fp32"
    monkeypatch.setattr(onnx_indexing, "gpu_possible", lambda: False)
    lib = Library(index=_copy(exported, isolated / "served"))
    lib.embedder()  # a long-lived process with the model loaded already: torch costs nothing more
    assert lib.index([new_photos]).embedded_with.startswith("torch")


def test_a_tower_that_will_not_load_leaves_the_run_to_torch(exported: Path, isolated: Path, tower_on: None,
                                                            new_photos: Path) -> None:
    index = _copy(exported, isolated / "index")
    meta = json.loads((index / image_tower.FOLDER / "meta.json").read_text())
    graph = index / image_tower.FOLDER / meta["file"]
    graph.write_bytes(b"\0" * graph.stat().st_size)  # whole by its size, but no graph
    assert image_tower.available(index, meta["weights_sha256"])
    summary = Library(index=index).index([new_photos])
    assert summary.embedded == 5 and summary.embedded_with.startswith("torch")


def test_the_tower_embeds_videos_too(exported: Path, isolated: Path, tower_on: None, tmp_path: Path) -> None:
    pytest.importorskip("av")
    import videos

    folder = tmp_path / "clips"
    folder.mkdir()
    videos.write_clip(folder / "clip.mp4", [("red", "circle", 2.0), ("blue", "square", 2.0)], seed=5)
    _copy(exported, isolated / "index")
    summary = json.loads(run_cli_without_model(["index", str(folder), "--json", "--device", "cpu"], isolated).stdout)
    assert summary["videos"] == 1 and summary["video_frames"] >= 2 and summary["embedded_with"] == "onnx fp32"


def test_which_runs_the_tower_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipsearch.model import embedder

    assert onnx_indexing.torch_precision("cuda", None) is None
    assert onnx_indexing.torch_precision("mps", None) is None
    assert onnx_indexing.torch_precision("cpu", "fp16") is None
    assert onnx_indexing.torch_precision("cpu", "fp32") == "fp32"
    monkeypatch.setattr(embedder, "cpu_has_native_bf16", lambda: True)  # torch would run bf16: a crossover
    limit = onnx_indexing.CROSSOVER["bf16"]
    assert limit is not None and onnx_indexing.torch_precision("cpu", "auto") == "bf16"
    assert onnx_indexing.tower_pays(limit, "cpu", None) and not onnx_indexing.tower_pays(limit + 1, "cpu", None)
    assert onnx_indexing.tower_pays(10**6, "cpu", "fp32")  # the tower outruns torch fp32 per photo too
    monkeypatch.setattr(embedder, "cpu_has_native_bf16", lambda: False)
    assert onnx_indexing.tower_pays(10**6, "cpu", None)
    assert not onnx_indexing.tower_pays(0, "cpu", "fp32")


def test_a_video_counts_as_the_frames_its_size_suggests(tmp_path: Path) -> None:
    from clipsearch.ingest import pipeline, scan

    todo = [scan.FoundFile(str(tmp_path / "a.jpg"), 3_000_000, 0),
            scan.FoundFile(str(tmp_path / "b.mp4"), 60 * pipeline.VIDEO_BYTES_PER_S, 0)]  # a minute of video
    assert pipeline.images_to_embed(todo) == 1 + 120
