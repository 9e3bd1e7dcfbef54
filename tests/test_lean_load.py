"""Loading only the image tower (model/lean_load.py) answers exactly as open_clip's whole-model load.

The text-tower export's cache is tested in test_text_model.py, beside the export it shares."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL

from clipsearch import Library
from clipsearch.model import embedder as embedder_mod
from clipsearch.model import lean_load, names
from clipsearch.model.embedder import Embedder


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_image_tower_alone_embeds_as_the_whole_open_clip_model(precision: str) -> None:
    import torch

    lean = Embedder(names.parse(TINY_MODEL), device="cpu", precision=precision)
    assert lean.lean and lean_load.loaded_towers(lean.model) == {lean_load.IMAGE}  # no text tower yet
    full, pre, _ = embedder_mod._load(lean.spec, lean.weights_path, "cpu")
    full.eval().to(lean.dtype)
    assert pre == lean.preprocess
    pixels = np.random.default_rng(3).integers(0, 255, size=(5, pre.size, pre.size, 3), dtype=np.uint8)
    got = lean.embed_images(pixels)
    reference = object.__new__(Embedder)
    reference.__dict__.update({**lean.__dict__, "model": full, "lean": False})
    want = reference.embed_images(pixels)
    assert float(np.min(np.sum(got * want, axis=1))) >= 0.9999
    np.testing.assert_array_equal(got, want)  # same weights, same graph: the same numbers
    texts = ["a photo of a red circle", "three purple crosses"]
    np.testing.assert_array_equal(lean.embed_texts(texts), reference.embed_texts(texts))
    assert lean_load.loaded_towers(lean.model) == {lean_load.IMAGE, lean_load.TEXT}
    assert lean.logit_scale == reference.logit_scale and next(lean.model.visual.parameters()).dtype == lean.dtype
    del torch


def test_a_checkpoint_that_is_not_plain_safetensors_loads_through_open_clip(tmp_path: Path) -> None:
    """A .bin checkpoint (or renamed keys) takes open_clip's own path: same model, not lean."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bin-model"
    folder.mkdir()
    src = Path(names.parse(TINY_MODEL).path)
    shutil.copy(src / "open_clip_config.json", folder)
    torch.save(load_file(str(src / "open_clip_model.safetensors")), folder / "open_clip_pytorch_model.bin")
    emb = Embedder(names.parse(f"local-dir:{folder}"), device="cpu", precision="fp32")
    lean = Embedder(names.parse(TINY_MODEL), device="cpu", precision="fp32")
    assert not emb.lean and lean.lean
    assert emb.identity.embed_dim == lean.identity.embed_dim


def test_an_index_run_that_embeds_nothing_loads_no_model(photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "on")
    lib = Library()
    lib.index([photo_dir])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Embedder, "__init__", refuse)
    summary = Library().index([photo_dir])
    assert summary.embedded == 0
