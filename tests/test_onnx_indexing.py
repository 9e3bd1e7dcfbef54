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

ORT = image_tower.ONNXRUNTIME  # "onnxruntime fp32", as the run's summary says


@pytest.fixture
def exported(image_tower_index: Path) -> Path:
    """The shared index with the tiny model's image tower exported (conftest: made once a session)."""
    return image_tower_index


@pytest.fixture
def tower_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "on")  # conftest turns it off for every other test
    # ONNX Runtime unless a test asks for OpenVINO: which one runs depends on the CPU and what is installed.
    monkeypatch.setenv(image_tower.RUNTIME_ENV, "onnxruntime")
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
    assert summary["embedded"] == 5 and summary["embedded_with"] == ORT
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

    monkeypatch.setattr(onnx_indexing, "CROSSOVER", {ORT: {"bf16": 4, "fp32": 4}})
    assert embedded_with().startswith("torch")  # 5 photos: past the crossover
    monkeypatch.setattr(onnx_indexing, "CROSSOVER", {ORT: {"bf16": 5, "fp32": 5}})
    assert embedded_with() == ORT
    assert embedded_with(precision="fp32") == ORT
    assert embedded_with(precision="bf16") == "torch bf16"  # asked for by name: torch's
    monkeypatch.setattr(onnx_indexing, "gpu_possible", lambda: True)
    assert embedded_with().startswith("torch")  # torch might pick the GPU
    assert embedded_with(device="cpu") == ORT
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
    assert summary["videos"] == 1 and summary["video_frames"] >= 2 and summary["embedded_with"] == ORT


def _cpu(monkeypatch: pytest.MonkeyPatch, bf16: bool, openvino: bool, runtime: str = "auto") -> None:
    """The CPU facts both sides read (torch's precision, the tower's runtime) and what is installed."""
    from clipsearch.model import embedder

    monkeypatch.setattr(embedder, "cpu_has_native_bf16", lambda: bf16)
    monkeypatch.setattr(image_tower.cpu, "has_native_bf16", lambda cpuinfo=None: bf16)
    monkeypatch.setattr(image_tower, "openvino_installed", lambda: openvino)
    monkeypatch.setenv(image_tower.RUNTIME_ENV, runtime)


def test_which_runs_the_tower_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert onnx_indexing.torch_precision("cuda", None) is None
    assert onnx_indexing.torch_precision("mps", None) is None
    assert onnx_indexing.torch_precision("cpu", "fp16") is None
    assert onnx_indexing.torch_precision("cpu", "fp32") == "fp32"
    _cpu(monkeypatch, bf16=True, openvino=False)  # torch would run bf16: ONNX Runtime's crossover
    limit = onnx_indexing.CROSSOVER[ORT]["bf16"]
    assert limit is not None and onnx_indexing.torch_precision("cpu", "auto") == "bf16"
    assert onnx_indexing.tower_runtimes(limit, "cpu", None) == (ORT,)
    assert not onnx_indexing.tower_pays(limit + 1, "cpu", None)
    assert onnx_indexing.tower_pays(10**6, "cpu", "fp32")  # the tower outruns torch fp32 per photo too
    _cpu(monkeypatch, bf16=False, openvino=True)  # AVX2 only: fp32 everywhere, ONNX Runtime at any size
    assert onnx_indexing.tower_runtimes(10**6, "cpu", None) == (ORT,)
    assert onnx_indexing.tower_runtimes(1, "cpu", None) == (ORT,)
    assert not onnx_indexing.tower_pays(0, "cpu", "fp32")


def test_a_large_run_takes_openvino_where_the_cpu_has_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, bf16=True, openvino=True)
    few, many = onnx_indexing.OPENVINO_FROM - 1, onnx_indexing.OPENVINO_FROM
    assert few >= 1 and onnx_indexing.tower_runtimes(few, "cpu", None) == (ORT,)  # its start-up does not pay yet
    ov_limit = onnx_indexing.CROSSOVER["openvino bf16"]["bf16"]
    assert onnx_indexing.tower_runtimes(many, "cpu", None) == ("openvino bf16", ORT)  # ONNX Runtime: the fallback
    big = 10**6 if ov_limit is None else ov_limit
    assert onnx_indexing.tower_runtimes(big, "cpu", None) == ("openvino bf16",)  # past ONNX Runtime's crossover
    if ov_limit is not None:
        assert onnx_indexing.tower_runtimes(ov_limit + 1, "cpu", None) == ()
    assert onnx_indexing.tower_runtimes(big, "cuda", None) == ()
    # --precision fp32 by name: no bf16 runtime, and fp32 torch is slower per photo than ONNX Runtime.
    assert onnx_indexing.tower_runtimes(big, "cpu", "fp32") == (ORT,)
    _cpu(monkeypatch, bf16=True, openvino=True, runtime="onnxruntime")  # today's rule, whatever is installed
    assert onnx_indexing.tower_runtimes(big, "cpu", None) == ()
    assert onnx_indexing.tower_runtimes(many, "cpu", None) == (ORT,)
    _cpu(monkeypatch, bf16=True, openvino=True, runtime="openvino")  # every run that takes the tower
    assert onnx_indexing.tower_runtimes(1, "cpu", None) == ("openvino bf16", ORT)
    assert onnx_indexing.tower_runtimes(1, "cpu", "fp32") == ("openvino fp32", ORT)
    _cpu(monkeypatch, bf16=True, openvino=False)  # not installed: today's rule
    assert onnx_indexing.tower_runtimes(big, "cpu", None) == ()


def test_an_index_run_through_openvino_gives_torchs_vectors(exported: Path, isolated: Path, tower_on: None,
                                                            new_photos: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    _cpu(monkeypatch, bf16=True, openvino=True)
    monkeypatch.setattr(onnx_indexing, "OPENVINO_FROM", 5)  # the 5 new photos count as a large run
    index = _copy(exported, isolated / "index")
    summary = Library(index=index, device="cpu").index([new_photos])
    assert summary.embedded == 5 and summary.embedded_with == "openvino bf16"
    assert summary.as_dict()["embedded_with"] == "openvino bf16"
    got = _vectors(index, new_photos)
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "off")
    other = _copy(exported, tmp_path / "torch")
    done = Library(index=other, device="cpu", precision="fp32").index([new_photos])
    assert done.embedded_with == "torch fp32"
    want = _vectors(other, new_photos)
    for name, v in got.items():
        assert float(v @ want[name]) >= 0.999, name
        assert np.isclose(float(np.linalg.norm(v)), 1.0, atol=1e-5)


@pytest.mark.parametrize(("ort_limit", "expected"), [(5, ORT), (4, "torch")])
def test_openvino_failing_its_check_falls_back_only_where_that_still_beats_torch(
        exported: Path, isolated: Path, tower_on: None, new_photos: Path, monkeypatch: pytest.MonkeyPatch,
        ort_limit: int, expected: str) -> None:
    pytest.importorskip("openvino")
    from clipsearch.model import openvino_tower

    _cpu(monkeypatch, bf16=True, openvino=True)
    monkeypatch.setattr(onnx_indexing, "OPENVINO_FROM", 5)
    monkeypatch.setattr(onnx_indexing, "CROSSOVER", {ORT: {"bf16": ort_limit, "fp32": None},
                                                     "openvino bf16": {"bf16": None, "fp32": None}})
    monkeypatch.setattr(openvino_tower, "load_checked", lambda *a, **k: None)  # vectors off: not used
    summary = Library(index=_copy(exported, isolated / "index"), device="cpu").index([new_photos])
    assert summary.embedded == 5 and summary.embedded_with.startswith(expected)


def test_a_video_counts_as_the_frames_its_size_suggests(tmp_path: Path) -> None:
    from clipsearch.ingest import pipeline, scan

    todo = [scan.FoundFile(str(tmp_path / "a.jpg"), 3_000_000, 0),
            scan.FoundFile(str(tmp_path / "b.mp4"), 60 * pipeline.VIDEO_BYTES_PER_S, 0)]  # a minute of video
    assert pipeline.images_to_embed(todo) == 1 + 120
