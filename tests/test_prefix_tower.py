"""The label cache's prefix graph: each template's prefix computed once, and the vectors still the
plain tower's (prefix_export.py, prefix_tower.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsearch.index.store import DB_NAME
from clipsearch.model import prefix_export, prefix_tower, text_export, text_tower
from clipsearch.model.embedder import Embedder
from clipsearch.model.text_tower import OnnxTextEncoder
from clipsearch.tags import zero_shot

LABELS = zero_shot.parse_labels(
    "dog\nx\nCafé crème brûlée 🍮\n日本の桜: 桜; cherry blossom\nred circle: a crimson ring; round red thing\n"
    + "an extremely long label that runs past the tiny model's context of twenty four tokens for sure\n"
    + "Übergrößenträger\n")


@pytest.fixture(autouse=True)
def fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactness is fp32's claim; bf16 has its own tests below."""
    monkeypatch.setenv(prefix_tower.PRECISION_ENV, "fp32")


@pytest.fixture(scope="module")
def exported(tiny_embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's text tower exported once, prefix graph included (seconds)."""
    folder = tmp_path_factory.mktemp("prefix") / "index"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_HOME", str(folder.parent / "home"))
        assert text_export.export(tiny_embedder, folder)
    return folder / text_tower.FOLDER


def _prompts() -> list[str]:
    return [p for lab in LABELS for p in zero_shot.prompts_for(lab, zero_shot.PHOTO_TEMPLATES)]


def test_export_keeps_a_verified_prefix_graph(exported: Path) -> None:
    meta = json.loads((exported / "meta.json").read_text())
    assert meta["prefix"]["verified_min_cosine"] >= prefix_tower.MIN_COSINE
    assert (exported / meta["prefix"]["file"]).stat().st_size > 0
    assert text_tower.available(exported.parent, meta["weights_sha256"])
    assert not (exported / prefix_export.FILE).exists() or meta["prefix"]["file"] == prefix_export.FILE


def test_every_prompt_matches_the_plain_tower(exported: Path) -> None:
    """Prompts of every template, variants, unicode and a label cut at the context length."""
    plain = OnnxTextEncoder(exported)
    prompts = _prompts()
    assert plain.token_lengths(prompts).max() == 24  # the long label reaches the context's end
    encoder = plain.prefix_encoder()
    assert encoder is not None
    got = encoder.embed_shared(prompts, prefix_tower.prefixes_of(zero_shot.PHOTO_TEMPLATES))
    want = np.concatenate([plain.embed_texts([p]) for p in prompts])
    assert np.min(np.sum(got * want, axis=1)) >= 0.9999
    # Each template's prefix was computed once, not per prompt ("{}"'s is the start token alone).
    assert len(encoder._states) == len(prefix_tower.prefixes_of(zero_shot.PHOTO_TEMPLATES)) == 8


def test_a_prefix_whose_tokens_differ_falls_back_to_the_start_token(exported: Path) -> None:
    """"a phot" is not a token prefix of "a photo of ..." (BPE): those prompts share only <start>."""
    plain = OnnxTextEncoder(exported)
    encoder = plain.prefix_encoder()
    assert encoder is not None
    prompts = ["a photo of a dog.", "a photograph of snow", "photo"]
    got = encoder.embed_shared(prompts, ["a phot", "a photo of a "])
    assert np.min(np.sum(got * plain.embed_texts(prompts), axis=1)) >= 0.9999


def test_label_vectors_are_the_same_either_way(exported: Path) -> None:
    plain = OnnxTextEncoder(exported)
    encoder = plain.prefix_encoder()
    assert encoder is not None
    before = zero_shot.label_vectors(LABELS, zero_shot.PHOTO_TEMPLATES, plain.embed_texts, plain.token_lengths)
    after = zero_shot.label_vectors(LABELS, zero_shot.PHOTO_TEMPLATES, plain.embed_texts, plain.token_lengths,
                                    encoder.embed_shared)
    assert np.min(np.sum(before * after, axis=1)) >= 0.9999


def test_an_export_without_the_prefix_graph_still_serves(exported: Path, tmp_path: Path) -> None:
    """Exports from before it (or where it failed) answer through the plain graph."""
    old = tmp_path / "text-model"
    shutil.copytree(exported, old)
    meta = json.loads((old / "meta.json").read_text())
    for name in (meta.pop("prefix")["file"],):
        (old / name).unlink()
        (old / (name + ".data")).unlink()
    (old / "meta.json").write_text(json.dumps(meta))
    assert OnnxTextEncoder(old).prefix_encoder() is None


def test_a_failing_prefix_export_keeps_the_plain_one(tiny_embedder: Embedder, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> bool:
        raise RuntimeError("exporter gap")

    monkeypatch.setattr(prefix_export, "write", broken)
    assert text_export.export(tiny_embedder, tmp_path / "index")
    meta = json.loads((tmp_path / "index" / text_tower.FOLDER / "meta.json").read_text())
    assert "prefix" not in meta
    assert not list((tmp_path / "index" / text_tower.FOLDER).glob("prefix*"))


def _bf16_runs() -> bool:
    from clipsearch.model import cpu

    try:
        import clipsearch.model.openvino_tower  # noqa: F401
    except ImportError:
        return False
    return cpu.has_native_bf16()


@pytest.mark.skipif(not _bf16_runs(), reason="needs native bf16 and the openvino extra")
def test_bf16_where_native_passes_its_self_check(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(prefix_tower.PRECISION_ENV, "auto")
    plain = OnnxTextEncoder(exported)
    encoder = plain.prefix_encoder()
    assert encoder is not None and encoder.precision == "bf16"
    prompts = _prompts()
    got = encoder.embed_shared(prompts, prefix_tower.prefixes_of(zero_shot.PHOTO_TEMPLATES))
    assert np.min(np.sum(got * plain.embed_texts(prompts), axis=1)) >= 0.999  # close, not exact


def test_bf16_that_fails_its_check_leaves_fp32(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 graph that answers unlike fp32 (here: a bar no bf16 passes), or no OpenVINO: fp32, exact."""
    monkeypatch.setenv(prefix_tower.PRECISION_ENV, "bf16")
    monkeypatch.setattr(prefix_tower, "BF16_MIN_COSINE", 1.01)
    plain = OnnxTextEncoder(exported)
    encoder = plain.prefix_encoder()
    assert encoder is not None and encoder.precision == "fp32"
    prompts = _prompts()
    got = encoder.embed_shared(prompts, prefix_tower.prefixes_of(zero_shot.PHOTO_TEMPLATES))
    assert np.min(np.sum(got * plain.embed_texts(prompts), axis=1)) >= 0.9999


@pytest.mark.heavy
def test_a_vit_b_32_sized_text_tower_is_exact_too(tmp_path: Path) -> None:
    """Random weights at ViT-B-32's text size (width 512, 12 layers, 77 tokens) against open_clip."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    model.visual = torch.nn.Identity()
    tok = open_clip.get_tokenizer("ViT-B-32")
    assert prefix_export.write(model, tmp_path)
    np.save(tmp_path / text_tower.TABLE_NAME, model.token_embedding.weight.detach().numpy().astype(np.float16))
    shutil.copyfile(Path(open_clip.tokenizer.default_bpe()), tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    prompts = _prompts()
    tokens = tok(prompts)
    with torch.no_grad():
        # The reference reads the same float16 token table the exported graphs do.
        table = torch.from_numpy(np.load(tmp_path / text_tower.TABLE_NAME).astype(np.float32))
        model.token_embedding.weight.copy_(table)
        want = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
    (tmp_path / "meta.json").write_text(json.dumps({"context_length": 77, "inputs": "embedded",
                                                    "file": prefix_export.FILE}))
    plain = OnnxTextEncoder.__new__(OnnxTextEncoder)
    plain.pad_id, plain.table = None, np.load(tmp_path / text_tower.TABLE_NAME, mmap_mode="r")
    from clipsearch.model.tokenizer import Tokenizer

    plain.tokenizer = Tokenizer(tmp_path / "bpe_simple_vocab_16e6.txt.gz", 77)
    got = prefix_tower.PrefixEncoder(tmp_path, plain, {"file": prefix_export.FILE}).embed_shared(
        prompts, prefix_tower.prefixes_of(zero_shot.PHOTO_TEMPLATES))
    assert np.min(np.sum(got * want, axis=1)) >= 0.9999


def test_tag_uses_the_prefix_graph_and_tags_the_same(photo_dir: Path, text_model_on: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`tag` on an index whose export has the prefix graph: it embeds the labels through it, and
    the photos get the tags the plain graph gives them (templates and variants both)."""
    import sqlite3

    from clipsearch import Library
    from tests.fixtures import shapes

    monkeypatch.setenv("CLIPSEARCH_EXPORT", "inline")
    lib = Library()
    lib.index([photo_dir])
    labels = zero_shot.parse_labels("\n".join(f"{c}: something {c}" for c in shapes.COLORS) + "\ncircle\nsquare")
    calls: list[int] = []
    real = prefix_tower.PrefixEncoder.embed_shared

    def counted(self: prefix_tower.PrefixEncoder, texts: list[str], prefixes: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return real(self, texts, prefixes)

    monkeypatch.setattr(prefix_tower.PrefixEncoder, "embed_shared", counted)

    first = lib.tag(labels=labels, top=3, threshold=0.1)
    assert calls == [len(labels) * (len(zero_shot.PHOTO_TEMPLATES) + 1) - 2]  # circle, square: no variants
    db = lib.path / DB_NAME
    with sqlite3.connect(db) as con:
        before = sorted(con.execute("SELECT image_id, label FROM tags").fetchall())
        con.execute("DELETE FROM label_vectors")
    monkeypatch.setattr(text_tower.OnnxTextEncoder, "prefix_encoder", lambda self: None)
    second = lib.tag(labels=labels, top=3, threshold=0.1)
    with sqlite3.connect(db) as con:
        after = sorted(con.execute("SELECT image_id, label FROM tags").fetchall())
    assert len(calls) == 1 and first.counts == second.counts and before == after and before


def test_the_export_records_the_check_prompts_plain_vectors(exported: Path) -> None:
    """What a bf16 run's self-check compares with, instead of computing it again in fp32."""
    meta = json.loads((exported / "meta.json").read_text())["prefix"]
    assert meta["graph"] == prefix_export.GRAPH and meta["check_vectors"] == prefix_tower.CHECK_VECTORS
    prompts, _ = prefix_tower.check_prompts()
    recorded = np.load(exported / meta["check_vectors"])
    assert np.min(np.sum(recorded * OnnxTextEncoder(exported).embed_texts(prompts), axis=1)) >= 0.9999


@pytest.mark.skipif(not _bf16_runs(), reason="needs native bf16 and the openvino extra")
def test_a_later_bf16_run_takes_the_cached_verdict(exported: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run checks and records its verdict; the next one (same graph, CPU, OpenVINO)
    checks nothing, and still embeds like fp32."""
    monkeypatch.setenv("CLIPSEARCH_HOME", str(tmp_path))
    plain = OnnxTextEncoder(exported)
    meta = plain.meta["prefix"]
    first = prefix_tower.PrefixEncoder(exported, plain, meta)
    cosine = first.use_bf16(exported, meta)
    assert first.precision == "bf16" and list((tmp_path / "cache" / "openvino").glob("check-prefix-*.json"))

    def no_check() -> None:
        raise AssertionError("checked again")

    monkeypatch.setattr(prefix_tower, "check_prompts", no_check)
    again = prefix_tower.PrefixEncoder(exported, plain, meta)
    assert again.use_bf16(exported, meta) == cosine and again.precision == "bf16"
    prompts = _prompts()
    got = again.embed_shared(prompts, prefix_tower.prefixes_of(zero_shot.PHOTO_TEMPLATES))
    assert np.min(np.sum(got * plain.embed_texts(prompts), axis=1)) >= 0.999


@pytest.mark.skipif(not _bf16_runs(), reason="needs native bf16 and the openvino extra")
def test_a_graph_that_failed_its_check_here_is_not_compiled_again(exported: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached verdict is read first: a tag run pays no compile (nor the compiled model's teardown)
    for bf16 it will not use."""
    from clipsearch.model import prefix_openvino

    monkeypatch.setenv("CLIPSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(prefix_tower.PRECISION_ENV, "bf16")
    meta = json.loads((exported / "meta.json").read_text())["prefix"]
    assert prefix_openvino.verdict(exported, meta) is None
    prefix_openvino.record(exported, meta, 0.98)
    assert prefix_openvino.verdict(exported, meta) == 0.98
    compiled: list[Path] = []
    monkeypatch.setattr(prefix_openvino, "Runner", lambda folder, _meta: compiled.append(folder))
    encoder = OnnxTextEncoder(exported).prefix_encoder()
    assert encoder is not None and encoder.precision == "fp32"
    assert compiled == []


@pytest.mark.skipif(not _bf16_runs(), reason="needs native bf16 and the openvino extra")
def test_prepared_graph_leaves_the_first_tag_run_nothing_to_check(exported: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What the background exporter does once the export lands (prefix_tower.prepare): the next
    run takes bf16 from the recorded verdict, without the self-check."""
    from clipsearch.model import prefix_openvino

    monkeypatch.setenv("CLIPSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(prefix_tower.PRECISION_ENV, "auto")
    meta = json.loads((exported / "meta.json").read_text())["prefix"]
    cosine = prefix_tower.prepare(exported)
    assert cosine is not None and cosine >= prefix_tower.BF16_MIN_COSINE
    assert prefix_openvino.verdict(exported, meta) == cosine
    assert list((tmp_path / "home" / "cache" / "openvino").glob("*.blob"))  # the compiled model, cached

    def no_check() -> None:
        raise AssertionError("the self-check ran again")

    monkeypatch.setattr(prefix_tower, "check_prompts", no_check)
    encoder = OnnxTextEncoder(exported).prefix_encoder()
    assert encoder is not None and encoder.precision == "bf16"


def test_prepare_does_nothing_where_tag_runs_take_fp32(exported: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_HOME", str(tmp_path / "home"))
    assert prefix_tower.prepare(exported) is None  # the module's fixture: fp32
    assert not (tmp_path / "home" / "cache" / "openvino").exists()
