"""The torch-free query path: the BPE tokenizer and the exported ONNX text tower match open_clip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
from conftest import TINY_MODEL, index_heldout_through_cli, run_cli_without_model

from clipsearch import Library
from clipsearch.model import names, text_export, text_tower
from clipsearch.model.embedder import Embedder
from clipsearch.model.tokenizer import Tokenizer

TEXTS = [
    "a photo of a dog", "", "   spaces   everywhere   ", "Café crème brûlée", "naïve façade — “curly quotes”",
    "🐶🐱🎉 emoji dog!!", "HTML &amp; entities &lt;b&gt;bold&lt;/b&gt;", "日本語のテキストと漢字",
    "Ελληνικά και русский",
    "it's we'll I'd they've", "12345 numbers 3.14159 and 1st 2nd", "UPPER lower MiXeD", "tabs\tand\nnewlines",
    "x" * 300, " ".join(["word"] * 120), "<start_of_text> literal special tokens <end_of_text>", "a-b_c/d\\e",
]


@pytest.mark.parametrize("context_length", [77, 24])
def test_token_ids_identical_to_open_clip(context_length: int) -> None:
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    ours = Tokenizer(Path(open_clip.tokenizer.default_bpe()), context_length)
    np.testing.assert_array_equal(ours(TEXTS), reference(TEXTS).numpy())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """(photos, index, the run) indexed once through the CLI with the text export on: an export takes
    seconds, reading one none."""
    photos, home, run = index_heldout_through_cli(tmp_path_factory, "text", TINY_MODEL, per_class=1)
    return photos, home / "index", run


@pytest.fixture
def exported_here(exported: tuple[Path, Path, subprocess.CompletedProcess[str]], isolated: Path) -> Path:
    """This test's own copy of the exported index, as its default index; the photos folder."""
    shutil.copytree(exported[1], isolated / "index")
    return exported[0]


def test_indexing_exports_a_verified_text_model(exported_here: Path, tiny_embedder: Embedder) -> None:
    lib = Library()
    assert text_tower.available(lib.path, tiny_embedder.identity.weights_sha256)
    encoder = text_tower.OnnxTextEncoder(lib.path / text_tower.FOLDER)
    prompts = ["a photo of a red circle", "three small purple crosses", "ring", "Café 🐶 " * 10]
    got = encoder.embed_texts(prompts)
    want = tiny_embedder.embed_texts(prompts)  # the bf16 (or fp32) torch path used for indexing
    assert float(np.min(np.sum(got * want, axis=1))) > 0.995
    assert not text_tower.available(lib.path, "another-model-sha")
    meta = json.loads((lib.path / text_tower.FOLDER / "meta.json").read_text())
    # Verified against open_clip at fp32 (not the Embedder's bf16 model), and the cosine recorded is
    # that of the very files a query loads: the fp32 graph and its weights beside it.
    assert meta["reference"] == "open_clip fp32" and meta["precision"] == "fp32"
    assert meta["verified_min_cosine"] >= 0.9995
    folder = lib.path / text_tower.FOLDER
    # The query graph and the label cache's prefix graph (prefix_export.py), both optimised; nothing else.
    graphs = sorted([meta["file"], meta["prefix"]["file"]])
    assert sorted(p.name for p in folder.glob("*.onnx")) == graphs
    assert sorted(p.name for p in folder.glob("*.data")) == [g + ".data" for g in graphs]
    # An export from before issue 15 (int8, no reference recorded) is not used: the next index replaces it.
    old = {k: v for k, v in meta.items() if k != "reference"}
    (folder / "meta.json").write_text(json.dumps(old))
    assert not text_tower.available(lib.path, tiny_embedder.identity.weights_sha256)
    (folder / "meta.json").write_text(json.dumps(meta))
    # Saved with ONNX Runtime's optimisations applied, so a cold query's session skips that work.
    assert meta["preoptimized"] is True and meta["file"].endswith(".opt.onnx")
    # The token table is memory-mapped beside the graph, not inside it.
    assert meta["inputs"] == "embedded" and (lib.path / text_tower.FOLDER / text_tower.TABLE_NAME).exists()


def test_a_new_text_query_needs_no_torch(exported_here: Path, isolated: Path) -> None:
    result = run_cli_without_model(["query", "a photo of a purple ring", "-n", "1", "-f", "paths"], isolated)
    assert result.stdout.strip() == str(exported_here / "all" / "purple-ring-0.png")


def test_switching_it_off_keeps_the_torch_path(photo_dir: Path) -> None:
    lib = Library()
    lib.index([photo_dir])  # conftest turns the export off
    assert not (lib.path / text_tower.FOLDER).exists()
    assert Path(lib.search("a photo of a purple ring", top=1)[0].path).name == "purple-ring-0.png"


def test_an_image_query_still_uses_the_model(exported_here: Path) -> None:
    lib = Library()
    hits = lib.search(image=exported_here / "all" / "white-star-0.png", top=1)
    assert Path(hits[0].path).name == "white-star-0.png"


def test_the_export_prints_nothing(exported: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    result = exported[2]
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("preparing the text encoder") and lines[1].startswith("Indexed in"), lines
    assert len(lines) == 2 and result.stdout == ""


def test_ascii_fast_path_matches_ftfy() -> None:
    """Queries of printable ASCII skip ftfy; the ids must be the same as open_clip's anyway."""
    import random
    import string

    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + " .,;:!?'\"()-_/<>[]{}*+=#%$@^~`|\\"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    ours = Tokenizer(Path(open_clip.tokenizer.default_bpe()), 77)
    np.testing.assert_array_equal(ours(texts), reference(texts).numpy())


def test_cached_bpe_tables_give_the_same_ids(tmp_path: Path) -> None:
    import shutil

    vocab = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    shutil.copyfile(open_clip.tokenizer.default_bpe(), vocab)
    first = Tokenizer(vocab, 77, cache_tables=True)
    tables = tmp_path / "bpe_tables.sqlite"
    assert tables.exists()
    second = Tokenizer(vocab, 77, cache_tables=True)  # looked up in the file, entry by entry
    np.testing.assert_array_equal(first(TEXTS), second(TEXTS))
    np.testing.assert_array_equal(second(TEXTS), open_clip.tokenizer.SimpleTokenizer(context_length=77)(TEXTS).numpy())
    tables.write_bytes(b"garbage")
    np.testing.assert_array_equal(Tokenizer(vocab, 77, cache_tables=True)(TEXTS), first(TEXTS))  # rebuilt
    assert tables.read_bytes().startswith(b"SQLite format 3")
    tables.unlink()
    tables.mkdir()  # a file that can be neither read nor replaced: the tables are built in memory
    np.testing.assert_array_equal(Tokenizer(vocab, 77, cache_tables=True)(TEXTS), first(TEXTS))


def test_a_long_lived_library_loads_the_text_tower_once(exported_here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server or notebook asking many new texts reuses the loaded encoder, and it still answers right."""
    lib = Library()
    loads: list[Path] = []
    real = text_tower.load_in_background

    def counted(folder: Path) -> Any:
        loads.append(folder)
        return real(folder)

    monkeypatch.setattr(text_tower, "load_in_background", counted)
    first = [r.path for r in lib.search("a photo of a red circle", top=3)]
    second = [r.path for r in lib.search("a photo of a blue star", top=3)]
    assert len(loads) == 1
    assert Path(first[0]).name.startswith("red-circle") and Path(second[0]).name.startswith("blue-star")


def test_the_export_reference_is_fp32_even_for_a_bf16_embedder() -> None:
    """A bf16 Embedder has rounded its weights; the export and its check use the weights as stored."""
    import torch

    emb = Embedder(names.parse(TINY_MODEL), device="cpu", precision="bf16")
    fp32 = text_export.fp32_model(emb)
    stored = open_clip.create_model(TINY_MODEL, weights_only=True).state_dict()
    assert next(emb.model.visual.parameters()).dtype == torch.bfloat16
    for name, tensor in fp32.state_dict().items():
        assert tensor.dtype == stored[name].dtype
        torch.testing.assert_close(tensor, stored[name], rtol=0, atol=0)


def test_a_second_index_of_the_same_weights_takes_the_cached_text_tower(
        exported: tuple[Path, Path, subprocess.CompletedProcess[str]],
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


def test_a_damaged_cache_is_not_used(exported: tuple[Path, Path, subprocess.CompletedProcess[str]],
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
