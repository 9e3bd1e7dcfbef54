"""The torch-free image query path: the exported ONNX image tower answers like open_clip (issue 22)."""

from __future__ import annotations

import json
import shutil
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
