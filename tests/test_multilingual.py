"""A multilingual model end to end: the tiny XLM-RoBERTa-style CLIP (tests/fixtures/tiny-multilingual,
trained by train_tiny_multilingual.py on English and Korean captions), its torch-free tokenizer and
ONNX text tower, Korean queries and labels, the SigLIP probability, and the note for a query in a
script an English-only model cannot read."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import open_clip
import pytest
import shapes
from click.testing import CliRunner
from conftest import TINY_MODEL, index_heldout_through_cli, run_cli_without_model
from test_text_model import TEXTS
from train_tiny_multilingual import KO_COLORS, KO_SHAPES

from clipsearch import Library
from clipsearch.cli import app
from clipsearch.index.store import Store
from clipsearch.ingest import shards
from clipsearch.model import languages, names, text_tower
from clipsearch.model.embedder import Embedder
from clipsearch.model.hf_tokenizer import TOKENIZER_NAME, HFTokenizer
from clipsearch.tags import zero_shot

ML_DIR = Path(__file__).parent / "fixtures" / "tiny-multilingual"
ML_MODEL = f"local-dir:{ML_DIR}"
KOREAN = ["빨간 원", "귀여운 우리 강아지", "  파란   별\t사진 ", "日本の桜と東京", "Привет, мир", "مرحبا بالعالم",
          "빨간 circle 🍮 mixed", "가" * 200, "🐶🐱🎉"]
runner = CliRunner()


@pytest.mark.parametrize("context_length", [16, 6])
def test_token_ids_identical_to_open_clip(context_length: int) -> None:
    reference = open_clip.get_tokenizer(ML_MODEL, context_length=context_length)
    ours = HFTokenizer(ML_DIR / TOKENIZER_NAME, context_length, pad_id=1)
    texts = TEXTS + KOREAN
    np.testing.assert_array_equal(ours(texts), reference(texts).numpy())


@pytest.fixture(scope="module")
def ml_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """(photos, index home, the run): 240 held-out shapes (5 a class; tags want 200) indexed once
    through the CLI, text export on."""
    return index_heldout_through_cli(tmp_path_factory, "ml", ML_MODEL, per_class=5)


@pytest.fixture
def ml_here(ml_index: tuple[Path, Path, subprocess.CompletedProcess[str]], isolated: Path,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's copy of the multilingual index as its default index; the photos folder."""
    shutil.copytree(ml_index[1] / "index", isolated / "index")
    monkeypatch.setenv("CLIPSEARCH_MODEL", ML_MODEL)
    return ml_index[0]


def test_the_hf_text_tower_is_exported_and_matches_open_clip(ml_here: Path, isolated: Path) -> None:
    folder = isolated / "index" / text_tower.FOLDER
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["tokenizer"] == "hf" and meta["verified_min_cosine"] >= text_tower.MIN_COSINE
    emb = Embedder(names.parse(ML_MODEL), "cpu", "fp32", download=False)
    texts = [*KOREAN, "a photo of a red circle", "x"]
    ref, got = emb.embed_texts(texts), text_tower.OnnxTextEncoder(folder).embed_texts(texts)
    assert float(np.min(np.sum(ref * got, axis=1))) >= text_tower.MIN_COSINE


def test_korean_and_english_queries_rank_the_same_pictures_first(ml_here: Path) -> None:
    lib = Library()
    agree = right = 0
    for color, shape in [(c, s) for c in shapes.COLORS for s in shapes.SHAPES]:
        ko = lib.search(f"{KO_COLORS[color]} {KO_SHAPES[shape]}", top=1, min_score=-1)
        en = lib.search(f"a photo of a {color} {shape}", top=1, min_score=-1)
        ko_class, en_class = (Path(found[0].path).name.rsplit("-", 1)[0] for found in (ko, en))
        agree += ko_class == en_class
        right += ko_class == f"{color}-{shape}"
    assert agree >= 0.6 * 48 and right >= 0.6 * 48, (agree, right)


def test_a_korean_query_needs_no_torch(ml_here: Path, isolated: Path) -> None:
    result = run_cli_without_model(["query", "빨간 원", "-n", "1", "-f", "paths", "--min-score", "-1"], isolated)
    assert Path(result.stdout.strip()).name.startswith("red-circle-")
    assert "note:" not in result.stderr  # the model reads Korean


def test_tags_from_korean_labels(ml_here: Path) -> None:
    labels = "\n".join(f"{ko}: {ko} 것; {ko} 물체" for ko in KO_COLORS.values())
    lib = Library()
    lib.tag(labels=zero_shot.parse_labels(labels), top=2)
    from clipsearch.index.store import Store

    with Store.open(lib.path) as store:
        ids = {p: i for i, p in store.db.execute("SELECT id, path FROM images")}
        tags = store.tags.tags_of(list(ids.values()))
    given = {p: {lab for lab, _, _ in tags[i]} for p, i in ids.items()}
    right = sum(KO_COLORS[Path(p).name.split("-")[0]] in found for p, found in given.items())
    wrong = sum(bool(found - {KO_COLORS[Path(p).name.split("-")[0]]}) for p, found in given.items())
    # The tiny multilingual model is weaker than the English one (61 % 48-way against ~85 %).
    assert right >= 0.6 * len(ids) and wrong <= 0.25 * len(ids), (right, wrong)


def test_a_korean_query_against_an_english_model_says_which_model_reads_it(shared_index: Path,
                                                                             isolated: Path) -> None:
    shutil.copytree(shared_index, isolated / "index")
    found = Library().query("빨간 원", top=3, min_score=-1)
    assert found.results and len(found.notes) == 1 and languages.RECOMMENDED in found.notes[0]
    assert "Hangul" in found.notes[0]
    assert not Library().query("a red circle", top=3).notes
    result = runner.invoke(app, ["query", "빨간 원", "-n", "1", "-f", "paths", "--min-score", "-1"])
    assert result.exit_code == 0 and result.stdout.strip()  # still answers
    assert result.stderr.count("note:") == 1 and languages.RECOMMENDED in result.stderr
    assert languages.RECOMMENDED not in result.stdout


@pytest.mark.parametrize(("text", "scripts"), [
    ("귀여운 우리 강아지", ["Hangul"]), ("東京の桜", ["Han", "kana"]), ("Привет", ["Cyrillic"]),
    ("Café crème brûlée 🍮", []), ("naïve façade — “quotes”", []), ("مرحبا", ["Arabic"]), ("Ελλάδα", ["Greek"]),
])
def test_script_detection(text: str, scripts: list[str]) -> None:
    assert languages.scripts_of(text) == scripts


def test_which_models_read_other_languages() -> None:
    assert languages.is_multilingual(ML_MODEL) and not languages.is_multilingual(TINY_MODEL)
    assert all(languages.is_multilingual(e.name) == (e.languages != "English") for e in names.CATALOG)


def test_models_list_recommends_a_multilingual_model() -> None:
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    multi = [m for m in listed if m["languages"] != "English"]
    assert {m["name"].split(":")[0] for m in multi} >= {"xlm-roberta-base-ViT-B-32", "xlm-roberta-large-ViT-H-14",
                                                        "nllb-clip-base", "nllb-clip-large", "nllb-clip-base-siglip",
                                                        "nllb-clip-large-siglip", "ViT-B-16-SigLIP-i18n-256"}
    text = runner.invoke(app, ["models", "list"]).stdout
    assert f"For queries in other languages than English: {languages.RECOMMENDED}" in " ".join(text.split("\n"))


@pytest.mark.parametrize("entry", [e for e in names.CATALOG if e.languages != "English"], ids=lambda e: e.name)
def test_multilingual_weights_are_asked_of_their_hub_file(entry: names.CatalogEntry, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to the network boundary: the download asked for is open_clip's own file of that model."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(names, "hub_reachable", lambda timeout=1.5: True)
    asked: list[tuple[str, str]] = []

    def download(repo_id: str, filename: str, **_: object) -> str:
        asked.append((repo_id, filename))
        (tmp_path / filename).write_bytes(b"weights")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert names.resolve_weights(names.parse(entry.name)) == tmp_path / names.SAFETENSORS_NAME
    assert asked == [(entry.hf_hub.rstrip("/"), names.SAFETENSORS_NAME)]


def test_a_sigmoid_model_decides_by_its_own_probability(ml_here: Path) -> None:
    from clipsearch.search import relevance

    lib = Library()
    found = lib.query("빨간 원", top=5)
    assert found.ranking.method == "zero-shot or sigmoid" and found.ranking.stats["logit_bias"] < 0
    assert all(r.probability is not None for r in found.results)
    shown = json.loads(runner.invoke(app, ["query", "빨간 원", "--json", "--min-score", "-1", "-n", "3"]).stdout)
    assert all(0 <= r["probability"] <= 1 for r in shown["results"])
    # A photo the model itself gives probability >= 0.5 is admitted even where the alternatives outvote it.
    from clipsearch.index.store import Store
    from clipsearch.index.vectors import VectorIndex
    from clipsearch.search import ranking

    with Store.open(lib.path) as store:
        _, mat = store.all_vectors()
        query, index = mat[0], VectorIndex.load(lib.path, store)
        alternatives = np.stack([query] * 3)  # identical alternatives: the query can never take half
        plain = ranking.rank(store, index, query, 3, alternatives=alternatives, logit_scale=10.0)
        sure = ranking.rank(store, index, query, 3, alternatives=alternatives, logit_scale=10.0, logit_bias=0.0)
    assert not plain.results and sure.results and sure.results[0].probability >= relevance.MIN_PROBABILITY



def test_few_shot_tag_named_in_korean(ml_here: Path) -> None:
    """`tag learn` from four pictures under the multilingual model, a Hangul tag name round trip."""
    names_of = {str(p): p.name.rsplit("-", 1)[0] for p in (ml_here / "all").iterdir()}
    truth = {p for p, c in names_of.items() if c.endswith("-circle")}
    examples = [p for p in sorted(truth) if names_of[p].split("-")[0] in ("red", "blue", "yellow", "white")][::5]
    assert len(examples) == 4
    learned = runner.invoke(app, ["tag", "learn", "원", *[arg for e in examples for arg in ("-e", e)]])
    assert learned.exit_code == 0 and "from 4 example" in learned.stderr, learned.stderr
    lib = Library()
    lib.tag(labels=zero_shot.parse_labels("빨강: 빨간 것"))
    with Store.open(lib.path) as store:
        paths = dict(store.db.execute("SELECT id, path FROM images"))
        tags = store.tags.tags_of(list(paths))
    tagged = {paths[i] for i, found in tags.items() if any(lab == "원" and src == "few-shot" for lab, _, src in found)}
    f1 = 2 * len(tagged & truth) / (len(tagged) + len(truth))
    # 0.80 measured (36 of 40 circles, 14 others: the tiny multilingual model is weaker than the English one).
    assert f1 >= 0.7 and len(tagged & truth) >= 0.75 * len(truth), (len(tagged & truth), len(tagged), len(truth))
    assert runner.invoke(app, ["tag", "forget", "원"]).exit_code == 0


def test_duplicates_under_a_multilingual_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_duplicates import _library

    monkeypatch.setenv("CLIPSEARCH_MODEL", ML_MODEL)
    folder = _library(tmp_path)
    lib = Library()
    lib.index([folder])
    groups = lib.duplicates()
    by_tier = {g.tier: sorted(Path(m.path).name for m in g.members) for g in groups}
    assert by_tier == {"exact": ["star copy.png", "star.png"], "near": ["star-small.jpg", "star.png"]}
    similar = lib.duplicates(similar=True, similar_cosine=0.8)
    in_tiers = [Path(m.path).name for g in similar for m in g.members if m.id != g.keep.id]
    assert len(in_tiers) == len(set(in_tiers))  # no photo is a copy in two tiers


def test_shards_of_a_multilingual_model_merge_into_the_local_index(
        ml_index: tuple[Path, Path, subprocess.CompletedProcess[str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from same_index import assert_same_index

    photos, home, _ = ml_index
    monkeypatch.setenv("CLIPSEARCH_MODEL", ML_MODEL)
    written = [Library(model=ML_MODEL).embed_shard([photos], (i, 2), tmp_path / f"s{i}") for i in range(2)]
    desc = json.loads((written[0].out / shards.SHARD_FILE).read_text())
    assert desc["model"]["logit_bias"] < 0  # the sigmoid model's bias travels with the shard
    merged = Library(index=tmp_path / "index")
    summary = merged.merge([w.out for w in reversed(written)])
    assert summary.added == 240
    assert_same_index(tmp_path / "index", home / "index")
    with Store.open(tmp_path / "index") as store, Store.open(home / "index") as local:
        assert store.meta("logit_bias") == local.meta("logit_bias")
    found = merged.query("빨간 원", top=3)
    assert found.ranking.method == "zero-shot or sigmoid" and found.results
    assert Path(found.results[0].path).name.startswith("red-circle-")


@pytest.mark.heavy
def test_xlm_roberta_base_vit_b_32_true_architecture_loads_and_exports(tmp_path: Path) -> None:
    """Random weights of the real xlm-roberta-base-ViT-B-32 (366 M parameters) through the local-dir
    path, and its text tower exported and verified (about a minute and 3 GB on 2 cores)."""
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig

    from clipsearch.model import text_export

    folder = tmp_path / "xlmr-b32"
    folder.mkdir()
    # xlm-roberta-base's published config.json values, written here: nothing is downloaded.
    XLMRobertaConfig(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                     bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ML_DIR / name, folder / name)
    cfg = open_clip.get_model_config("xlm-roberta-base-ViT-B-32")
    cfg["text_cfg"].update({"hf_model_name": "xlm-roberta-base", "hf_model_pretrained": False})
    cfg_local = {**cfg, "text_cfg": {**cfg["text_cfg"], "hf_model_name": str(folder)}}
    torch.manual_seed(0)
    model = open_clip.model.CustomTextCLIP(**cfg_local)
    assert sum(p.numel() for p in model.parameters()) > 360e6
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / names.SAFETENSORS_NAME))
    del model
    # The config records the hub name, as a real export would: clipsearch points it at the folder.
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {"size": 224}}))
    emb = Embedder(names.parse(f"local-dir:{folder}"), "cpu", "fp32", download=False)
    assert emb.identity.embed_dim == 512 and emb.embed_texts(["귀여운 우리 강아지"]).shape == (1, 512)
    index = tmp_path / "index"
    index.mkdir()
    assert text_export.export(emb, index)
    meta = json.loads((index / text_tower.FOLDER / "meta.json").read_text())
    assert meta["tokenizer"] == "hf" and meta["verified_min_cosine"] >= text_tower.MIN_COSINE
