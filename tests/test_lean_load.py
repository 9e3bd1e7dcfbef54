"""Loading only the image tower (model/lean_load.py) answers exactly as open_clip's whole-model load,
and the text-tower export is shared between indexes of the same weights."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL
from test_text_model import exported  # noqa: F401 - the session fixture this file shares

from clipsearch import Library
from clipsearch.model import embedder as embedder_mod
from clipsearch.model import lean_load, names, text_export, text_tower
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


def test_a_second_index_of_the_same_weights_takes_the_cached_text_tower(
        exported: tuple[Path, Path, subprocess.CompletedProcess[str]],  # noqa: F811
        isolated: Path, photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_home = exported[1].parent
    cached = list((first_home / "cache" / "text-models").iterdir())
    assert len(cached) == 1 and text_tower.available(cached[0], cached[0].name)
    shutil.copytree(first_home / "cache", isolated / "cache")
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "on")

    def no_export(*args: object) -> None:
        raise AssertionError("exported again although the cache has these weights")

    monkeypatch.setattr(text_export, "_write_fp32", no_export)
    notes: list[str] = []
    lib = Library(index=isolated / "second", notify=notes.append)
    lib.index([photo_dir])
    assert text_tower.available(lib.path, cached[0].name)
    assert not [n for n in notes if n.startswith("preparing the text encoder")]  # nothing slow to announce
    meta = (lib.path / text_tower.FOLDER / "meta.json")
    assert os.stat(meta).st_ino == os.stat(isolated / "cache" / "text-models" / cached[0].name / "text-model"
                                           / "meta.json").st_ino  # hard-linked, not a second copy
    assert not list(lib.path.glob(".text-model*"))
    hits = lib.search("a photo of a purple ring", top=1)
    assert Path(hits[0].path).name == "purple-ring-0.png"


def test_a_damaged_cache_is_not_used(exported: tuple[Path, Path, subprocess.CompletedProcess[str]],  # noqa: F811
                                     isolated: Path, photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(exported[1].parent / "cache", isolated / "cache")
    (sha_dir,) = (isolated / "cache" / "text-models").iterdir()
    table = sha_dir / "text-model" / text_tower.TABLE_NAME
    table.write_bytes(table.read_bytes()[:100])  # truncated
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "on")
    lib = Library(index=isolated / "second")
    lib.index([photo_dir])
    assert text_tower.available(lib.path, sha_dir.name)  # exported anew, and the cache repaired
    assert text_tower.available(sha_dir, sha_dir.name)


def test_an_index_run_that_embeds_nothing_loads_no_model(photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "on")
    lib = Library()
    lib.index([photo_dir])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Embedder, "__init__", refuse)
    summary = Library().index([photo_dir])
    assert summary.embedded == 0
