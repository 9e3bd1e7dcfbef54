"""The torch-free image query path: the exported ONNX image tower answers like open_clip (issue 22)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import shapes
import torch
from conftest import run_cli_without_model
from open_clip.transform import image_transform
from PIL import Image

from clipsearch import Library
from clipsearch.ingest import images
from clipsearch.model import image_export, image_tower
from clipsearch.model.embedder import Embedder
from clipsearch.model.text_export import fp32_model


@pytest.fixture
def exported(image_tower_index: Path) -> Path:
    """The shared index with the tiny model's image tower exported (conftest: made once a session)."""
    return image_tower_index


@pytest.fixture
def outside_photos(tmp_path: Path) -> list[Path]:
    """Photos that are not in the index: held-out shapes of another seed, as JPEG and PNG, odd sizes."""
    made = shapes.write_heldout(tmp_path / "outside", per_class=1, seed=4242)
    out = []
    for i, (path, _, _) in enumerate(made[:6]):
        img = Image.open(path).convert("RGB").resize((97 + 31 * i, 64 + 17 * i))
        target = path.with_suffix(".jpg" if i % 2 else ".png")
        img.save(target)
        out.append(target)
    return out


def _open_clip_vector(embedder: Embedder, path: Path) -> np.ndarray:
    """open_clip's own eval transform and fp32 model on the file: the reference a query is held to."""
    pre = embedder.preprocess
    tf = image_transform(pre.size, is_train=False, mean=pre.mean, std=pre.std)
    with torch.no_grad():
        x = tf(Image.open(path).convert("RGB"))[None]
        v = fp32_model(embedder, "image").encode_image(x)
    return torch.nn.functional.normalize(v, dim=-1)[0].numpy()


def test_numpy_normalisation_is_the_embedders_bit_for_bit(tiny_embedder: Embedder, outside_photos: list[Path]) -> None:
    pre = tiny_embedder.preprocess
    pixels = np.stack([images.decode(str(p), pre).pixels for p in outside_photos])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
    want = (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    np.testing.assert_array_equal(image_tower.normalise(pixels, pre), want.numpy())
    # ... and open_clip's own transform of the same files gives the same tensor.
    tf = image_transform(pre.size, is_train=False, mean=pre.mean, std=pre.std)
    ref = torch.stack([tf(Image.open(p).convert("RGB")) for p in outside_photos]).numpy()
    np.testing.assert_allclose(image_tower.normalise(pixels, pre), ref, rtol=0, atol=1e-5)


def test_export_records_what_a_query_needs(exported: Path, tiny_embedder: Embedder) -> None:
    meta = json.loads((exported / image_tower.FOLDER / "meta.json").read_text())
    assert meta["weights_sha256"] == tiny_embedder.identity.weights_sha256
    assert meta["verified_min_cosine"] >= image_tower.MIN_COSINE and meta["reference"] == "open_clip fp32"
    assert image_tower.preprocess_of(meta) == tiny_embedder.preprocess
    assert image_tower.available(exported, tiny_embedder.identity.weights_sha256)
    assert not image_tower.available(exported, "0" * 64)
    # open_clip's vectors of the check pictures, which another runtime is held to (openvino_tower.py).
    recorded = np.load(exported / image_tower.FOLDER / meta["check_vectors"])
    want = tiny_embedder.embed_images(image_export.check_pixels(tiny_embedder.preprocess))
    assert recorded.shape == want.shape and float(np.min(np.sum(recorded * want, axis=1))) >= 0.999


def test_onnx_vectors_match_open_clip_fp32(exported: Path, tiny_embedder: Embedder,
                                           outside_photos: list[Path]) -> None:
    encoder = image_tower.OnnxImageEncoder(exported / image_tower.FOLDER)
    for path in outside_photos:
        got = encoder.embed_images(images.decode(str(path), encoder.preprocess).pixels[None])[0]
        assert float(got @ _open_clip_vector(tiny_embedder, path)) >= 0.999, path.name


def test_a_new_photo_query_needs_no_torch(exported: Path, isolated: Path, tiny_embedder: Embedder,
                                          outside_photos: list[Path]) -> None:
    shutil.copytree(exported, isolated / "index")
    photo = outside_photos[1]
    run = run_cli_without_model(["query", "--image", str(photo), "--json", "--top", "5", "--min-score", "-1"],
                                isolated)
    got = [r["id"] for r in json.loads(run.stdout)["results"]]
    # The same ranking as open_clip's fp32 vector gives over the stored vectors.
    with Library(index=isolated / "index")._open() as store:
        ids, vecs = store.all_vectors()
    order = np.argsort(-(vecs @ _open_clip_vector(tiny_embedder, photo)))[:5]
    assert got == [int(ids[i]) for i in order]


def test_a_text_and_image_query_stays_torch_free(exported: Path, isolated: Path, tiny_embedder: Embedder,
                                                 outside_photos: list[Path]) -> None:
    from clipsearch.model import text_export

    shutil.copytree(exported, isolated / "index")
    assert text_export.export(tiny_embedder, isolated / "index")
    run_cli_without_model(["query", f"a red circle + {outside_photos[0]}", "--top", "3"], isolated)


def test_without_an_export_torch_answers_and_the_export_starts(shared_index: Path, isolated: Path,
                                                               tiny_embedder: Embedder,
                                                               outside_photos: list[Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "on")
    index = isolated / "index"
    shutil.copytree(shared_index, index)
    lib = Library(index=index)
    first = [r.path for r in lib.search(image=outside_photos[0], top=5, min_score=-1)]
    assert lib._model.loaded is not None  # the torch path answered
    deadline = time.monotonic() + 240
    while not image_tower.available(index, tiny_embedder.identity.weights_sha256):
        assert time.monotonic() < deadline, "the background export never finished"
        time.sleep(0.5)
    assert not (index / image_export.MARKER).exists()
    again = Library(index=index)
    assert [r.path for r in again.search(image=outside_photos[0], top=5, min_score=-1)] == first
    assert again._model.loaded is None  # answered by the exported tower


def test_off_switch_and_a_broken_export_keep_the_torch_path(exported: Path, isolated: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            tiny_embedder: Embedder,
                                                            outside_photos: list[Path]) -> None:
    index = isolated / "index"
    shutil.copytree(exported, index)
    meta = json.loads((index / image_tower.FOLDER / "meta.json").read_text())
    with open(index / image_tower.FOLDER / f"{meta['file']}.data", "r+b") as f:
        f.truncate(100)  # a half-copied folder
    assert not image_tower.available(index, tiny_embedder.identity.weights_sha256)
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "off")
    lib = Library(index=index)
    assert lib.search(image=outside_photos[0], top=3, min_score=-1)
    assert lib._model.loaded is not None and not (index / image_export.MARKER).exists()


# --- which runtime runs the tower (image_tower.load) -------------------------------------------------------


def _cpu(monkeypatch: pytest.MonkeyPatch, bf16: bool, runtime: str | None) -> None:
    monkeypatch.setattr(image_tower.cpu, "has_native_bf16", lambda cpuinfo=None: bf16)
    if runtime is None:
        monkeypatch.delenv(image_tower.RUNTIME_ENV, raising=False)
    else:
        monkeypatch.setenv(image_tower.RUNTIME_ENV, runtime)


def _own_copy(exported: Path, isolated: Path) -> Path:
    """The shared export copied into this test's index, to be altered there."""
    folder = isolated / "index" / image_tower.FOLDER
    shutil.copytree(exported / image_tower.FOLDER, folder)
    return folder


@pytest.mark.parametrize(("bf16", "runtime", "many"), [(False, None, True), (False, "auto", True), (True, None, False),
                                                       (True, "auto", False), (True, "onnxruntime", True),
                                                       (True, "OnnxRuntime ", True), (True, "tensorrt", True)])
def test_onnx_runtime_runs_the_tower_without_native_bf16_for_one_photo_or_when_asked(
        exported: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch, bf16: bool, runtime: str | None,
        many: bool) -> None:
    _cpu(monkeypatch, bf16, runtime)
    assert isinstance(image_tower.load(exported / image_tower.FOLDER, many=many), image_tower.OnnxImageEncoder)


def test_without_openvino_installed_onnx_runtime_runs_it(exported: Path, isolated: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, True, "openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    monkeypatch.delitem(sys.modules, "clipsearch.model.openvino_tower", raising=False)
    monkeypatch.delattr("clipsearch.model.openvino_tower", raising=False)  # and the package attribute
    assert isinstance(image_tower.load(exported / image_tower.FOLDER), image_tower.OnnxImageEncoder)


@pytest.mark.parametrize(("bf16", "runtime", "many", "precision"),
                         [(True, None, True, "bf16"), (True, "auto", True, "bf16"), (True, "openvino", False, "bf16"),
                          (False, "openvino", False, "fp32")])
def test_openvino_runs_the_tower_for_many_photos_where_the_cpu_has_bf16_or_when_asked(
        exported: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch, bf16: bool, runtime: str | None,
        many: bool, precision: str) -> None:
    pytest.importorskip("openvino")
    from clipsearch.model import openvino_tower

    _cpu(monkeypatch, bf16, runtime)
    encoder = image_tower.load(exported / image_tower.FOLDER, threads=1, many=many)
    assert isinstance(encoder, openvino_tower.OpenVinoImageEncoder) and encoder.precision == precision
    assert encoder.check_cosine is not None and encoder.check_cosine >= image_tower.MIN_COSINE
    assert encoder.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    # The verdict is cached beside OpenVINO's compiled blob: the next load skips the check.
    cache = openvino_tower.cache_dir()
    assert list(cache.glob("check-*.json")) and [p for p in cache.iterdir() if p.suffix == ".blob"]
    monkeypatch.setattr(openvino_tower, "self_check", lambda encoder: pytest.fail("checked again"))
    again = image_tower.load(exported / image_tower.FOLDER, threads=1, many=many)
    assert isinstance(again, openvino_tower.OpenVinoImageEncoder)


def test_openvino_bf16_compiles_an_fp16_copy_made_once_and_the_onnx_file_where_it_cannot(
        exported: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    from clipsearch.model import openvino_tower

    _cpu(monkeypatch, True, "auto")
    folder = exported / image_tower.FOLDER
    encoder = image_tower.load(folder, many=True)
    assert isinstance(encoder, openvino_tower.OpenVinoImageEncoder) and encoder.graph.suffix == ".xml"
    (ir,) = (openvino_tower.cache_dir() / "ir").iterdir()  # one copy, whole: no temporary left behind
    assert sorted(p.name for p in ir.iterdir()) == ["model.bin", "model.xml"] and encoder.graph.parent == ir
    # Its weights are fp16: about half the export's fp32 file.
    assert (ir / "model.bin").stat().st_size < 0.6 * sum(encoder.meta["sizes"].values())
    monkeypatch.setattr(openvino_tower.ov, "save_model", lambda *a, **k: pytest.fail("converted again"))
    assert image_tower.load(folder, many=True).graph == encoder.graph  # type: ignore[attr-defined]
    # A copy that cannot be written (here: the conversion fails): the ONNX file is compiled, still checked.
    shutil.rmtree(ir)
    monkeypatch.setattr(openvino_tower.ov, "save_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    again = image_tower.load(folder, many=True)
    assert isinstance(again, openvino_tower.OpenVinoImageEncoder) and again.graph.suffix == ".onnx"
    assert again.check_cosine is not None and again.check_cosine >= image_tower.MIN_COSINE
    assert not list((openvino_tower.cache_dir() / "ir").iterdir())


def test_an_openvino_tower_that_fails_its_check_is_not_used(exported: Path, isolated: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    _cpu(monkeypatch, True, "auto")
    folder = _own_copy(exported, isolated)
    ref = np.load(folder / image_tower.CHECK_VECTORS)
    np.save(folder / image_tower.CHECK_VECTORS, np.roll(ref, 1, axis=1))  # what a wrong compile would give
    assert isinstance(image_tower.load(folder, many=True), image_tower.OnnxImageEncoder)
    assert isinstance(image_tower.load(folder, many=True), image_tower.OnnxImageEncoder)  # the cached verdict


def test_an_export_without_recorded_vectors_is_checked_against_onnx_runtime(exported: Path, isolated: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    from clipsearch.model import openvino_tower

    _cpu(monkeypatch, True, "auto")
    folder = _own_copy(exported, isolated)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["check_vectors"]
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / image_tower.CHECK_VECTORS).unlink()
    asked = []
    real = image_tower.OnnxImageEncoder.embed_images
    monkeypatch.setattr(image_tower.OnnxImageEncoder, "embed_images", lambda s, px: asked.append(1) or real(s, px))
    encoder = image_tower.load(folder, many=True)
    assert isinstance(encoder, openvino_tower.OpenVinoImageEncoder) and asked


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_openvino_vectors_match_onnx_runtime_and_open_clip(exported: Path, isolated: Path, tiny_embedder: Embedder,
                                                           outside_photos: list[Path], precision: str) -> None:
    pytest.importorskip("openvino")
    from clipsearch.model import openvino_tower

    folder = exported / image_tower.FOLDER
    ov_encoder = openvino_tower.OpenVinoImageEncoder(folder, precision, threads=2)
    ort_encoder = image_tower.OnnxImageEncoder(folder)
    pixels = np.stack([images.decode(str(p), ov_encoder.preprocess).pixels for p in outside_photos])
    got, want = ov_encoder.embed_images(pixels), ort_encoder.embed_images(pixels)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert float(np.min(np.sum(got * want, axis=1))) >= 0.999
    for path, vector in zip(outside_photos, got, strict=True):
        assert float(vector @ _open_clip_vector(tiny_embedder, path)) >= 0.999, path.name
    assert float(ov_encoder.embed_images(pixels[:1])[0] @ got[0]) >= 0.999  # batch 1 answers as batch N


def test_a_new_photo_query_on_openvino_needs_no_torch(exported: Path, isolated: Path, tiny_embedder: Embedder,
                                                      outside_photos: list[Path]) -> None:
    pytest.importorskip("openvino")
    shutil.copytree(exported, isolated / "index")
    photo = outside_photos[1]
    code = ("import sys; from clipsearch.cli import main; sys.argv = ['clipsearch', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'the model was loaded'\n"
            "assert 'openvino' in sys.modules and 'clipsearch.model.openvino_tower' in sys.modules, 'no OpenVINO'\n"
            # openvino.tools.ovc starts OpenVINO's telemetry (a usage event unless opted out): blocked.
            "assert not [m for m in sys.modules if m.startswith('openvino_telemetry')], 'telemetry loaded'")
    env = {**os.environ, "CLIPSEARCH_HOME": str(isolated), image_tower.RUNTIME_ENV: "openvino"}
    run = subprocess.run([sys.executable, "-c", code, "query", "--image", str(photo), "--json", "--top", "5",
                          "--min-score", "-1"], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    got = [r["id"] for r in json.loads(run.stdout)["results"]]
    with Library(index=isolated / "index")._open() as store:
        ids, vecs = store.all_vectors()
    order = np.argsort(-(vecs @ _open_clip_vector(tiny_embedder, photo)))[:5]
    assert got == [int(ids[i]) for i in order]
