"""Queries: arithmetic, filters, scope, sorting, the relevance cutoff, outputs and exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch import Library
from clipsearch.cli import app
from clipsearch.errors import UsageError
from clipsearch.formats import IMAGE_EXTENSIONS
from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex
from clipsearch.model.embedder import Embedder
from clipsearch.search import query, ranking, relevance

runner = CliRunner()


def _name(path: str) -> str:
    return Path(path).stem.rsplit("-", 1)[0]  # "red-circle-0" -> "red-circle"


@pytest.fixture
def photo_dir(shared_photos: Path) -> Path:
    """The session's 48 held-out pictures: these tests only read them."""
    return shared_photos


@pytest.fixture
def indexed(shared_index: Path, isolated: Path) -> Library:
    """This test's own copy of the session's index of `photo_dir`, as its default index."""
    shutil.copytree(shared_index, isolated / "index")
    return Library()


def test_parse_arithmetic_and_weights(tmp_path: Path) -> None:
    terms = query.parse("beach + 2:sunset - people", IMAGE_EXTENSIONS)
    assert [(t.kind, t.value, t.weight) for t in terms] == [
        ("text", "beach", 1.0), ("text", "sunset", 2.0), ("text", "people", -1.0)]
    assert [t.value for t in query.parse("black-and-white t-shirt", IMAGE_EXTENSIONS)] == ["black-and-white t-shirt"]
    img = tmp_path / "ref.png"
    Image.new("RGB", (8, 8)).save(img)
    mixed = query.parse(None, IMAGE_EXTENSIONS, images=(str(img),), add=("at night",), sub=("blurry",))
    assert [(t.kind, t.weight) for t in mixed] == [("image", 1.0), ("text", 1.0), ("text", -1.0)]
    assert query.parse(str(img), IMAGE_EXTENSIONS)[0].kind == "image"


@pytest.mark.parametrize("bad", ["", "   ", "2:", "a + ", "- dog", "0.5: + cat"])
def test_bad_queries_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        query.parse(bad, IMAGE_EXTENSIONS)


def test_parse_dates() -> None:
    assert query.parse_date("2023").year == 2023
    assert query.parse_date("2023-12", end=True).month == 1 and query.parse_date("2023-12", end=True).year == 2024
    assert query.parse_date("2023-06-14", end=True).day == 15
    with pytest.raises(UsageError, match="cannot read"):
        query.parse_date("last tuesday")


def test_weights_and_arithmetic_move_results(indexed: Library) -> None:
    assert _name(indexed.search("2:a photo of a blue star + a photo of a red circle", top=1)[0].path) == "blue-star"
    analogy = "a photo of a blue star - a photo of a blue triangle + a photo of a yellow triangle"
    assert _name(indexed.search(analogy, top=1)[0].path) == "yellow-star"
    # The ranking under the arithmetic, not the relevance decision: the top 5 whatever they score.
    plain = [_name(r.path) for r in indexed.search("a photo of a red circle", top=5, min_score=-1)]
    minus = [_name(r.path) for r in indexed.search("a photo of a red circle - a photo of a red square", top=5)]
    assert plain[0] == "red-circle"
    assert sum(n.startswith("red-") for n in minus) < sum(n.startswith("red-") for n in plain)
    assert all(n.endswith(("-circle", "-ring")) for n in minus)


def test_image_plus_text(indexed: Library, photo_dir: Path) -> None:
    ref = photo_dir / "all" / "green-square-0.png"
    hits = indexed.query(images=[ref], add=["a photo of a yellow square"], sub=["a photo of a green square"], top=3)
    assert [t.kind for t in hits.terms] == ["image", "text", "text"]
    assert _name(hits.results[0].path).endswith("square") and not _name(hits.results[0].path).startswith("green")


def _clustered_store(lib: Library, tiny_embedder: Embedder) -> tuple[Store, np.ndarray]:
    """2,000 synthetic photos in 40 clusters of 50, written straight into a real index."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, 64)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vecs = np.repeat(centres, 50, axis=0) + rng.normal(scale=0.06, size=(2000, 64)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = Store.open(lib.path, create=True)
    store.bind_model(tiny_embedder.identity)
    rows = [ImageRecord(f"/photos/c{i // 50:02d}/{i:04d}.jpg", 1, 0, str(i), 64, 64, "jpeg") for i in range(2000)]
    store.write_batch(rows, vecs)
    return store, centres


def test_cutoff_keeps_the_queried_cluster_and_nothing_else(tiny_embedder: Embedder) -> None:
    lib = Library()
    store, centres = _clustered_store(lib, tiny_embedder)
    try:
        index = VectorIndex.build(store)
        found = ranking.rank(store, index, centres[3], top=100)
        assert found.method == "robust-z" and found.cutoff is not None
        assert {Path(r.path).parent.name for r in found.results} == {"c03"}
        assert len(found.results) == 50 and found.cut == 50
        # Concepts absent from the library: directions orthogonal to every cluster. The cutoff is set
        # so that on average half an unrelated photo passes, whatever the library's size (a fixed
        # Z = 3 would let through 2.7 of these 2,000 photos per query).
        basis, _ = np.linalg.qr(centres.T)
        rng = np.random.default_rng(99)
        passed = []
        for _ in range(30):
            stray = rng.normal(size=64).astype(np.float32)
            stray -= basis @ (basis.T @ stray)
            passed.append(len(ranking.rank(store, index, stray / np.linalg.norm(stray), top=20).results))
        assert np.mean(passed) <= 1.0 and passed.count(0) >= 10, passed
        everything = ranking.rank(store, index, centres[3], top=60, min_score=-1)
        assert len(everything.results) == 60 and everything.method == "min-score"
    finally:
        store.close()


def test_text_queries_are_decided_per_photo_even_in_small_indexes(indexed: Library) -> None:
    # 48 photos, one per class: the zero-shot decision needs no library backdrop, so it applies here.
    found = indexed.query("a photo of a red circle", top=20)
    assert found.ranking.method == "zero-shot" and found.ranking.cutoff is None
    assert [_name(r.path) for r in found.results] == ["red-circle"]
    assert found.ranking.stats["logit_scale"] == pytest.approx(25.375, abs=0.01)  # the model's own, recorded
    nothing = indexed.query("a photo of a giraffe", top=20)
    assert nothing.results == [] and len(nothing.ranking.closest) == 5
    assert all(not r.relevant for r in nothing.ranking.closest)
    everything = indexed.query("a photo of a red circle", top=20, min_score=-1)
    assert len(everything.results) == 20 and [r.relevant for r in everything.results] == [True] + [False] * 19
    # Image queries have no texts to compare with: under 200 photos they keep no cutoff at all.
    image = indexed.query(images=[found.results[0].path], top=20)
    assert image.ranking.method.startswith("none") and len(image.results) == 20


def test_adaptive_cutoff_on_a_known_distribution() -> None:
    rng = np.random.default_rng(0)
    background = rng.normal(size=(2000, 64)).astype(np.float32)
    background /= np.linalg.norm(background, axis=1, keepdims=True)
    q = background[0] + 0.0
    cutoff, stats = relevance.adaptive_cutoff(q, background[1:], z=3.0)
    assert cutoff is not None and stats["median"] == pytest.approx(0.0, abs=0.02)
    scores = background[1:] @ q
    assert (scores >= cutoff).mean() < 0.01  # unrelated photos almost never pass
    assert relevance.adaptive_cutoff(q, background[:150], z=3.0) == (None, {})  # too few to judge


def test_filters_type_width_dates_and_sort(tmp_path: Path, heldout: list) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    src = {(c, s): p for p, c, s in heldout}
    Image.open(src[("red", "circle")]).convert("RGB").resize((300, 300)).save(folder / "old.jpg", quality=95)
    Image.open(src[("red", "circle")]).save(folder / "small.png")
    shutil.copy(src[("red", "ring")], folder / "ring.png")
    os.utime(folder / "old.jpg", (1_300_000_000, 1_300_000_000))  # 2011
    lib = Library()
    lib.index([folder])
    q = "a photo of a red circle"
    assert [Path(r.path).name for r in lib.search(q, min_score=-1, formats=["jpg"])] == ["old.jpg"]
    assert [Path(r.path).name for r in lib.search(q, min_score=-1, min_width=200)] == ["old.jpg"]
    before = lib.search(q, min_score=-1, before=query.parse_date("2012"))
    after = lib.search(q, min_score=-1, after=query.parse_date("2012"))
    assert [Path(r.path).name for r in before] == ["old.jpg"]
    assert sorted(Path(r.path).name for r in after) == ["ring.png", "small.png"]
    by_date = lib.search(q, min_score=-1, sort="date")
    assert Path(by_date[-1].path).name == "old.jpg" and [r.rank for r in by_date] == [1, 2, 3]


def test_similar_uses_the_stored_vector(indexed: Library, photo_dir: Path) -> None:
    target = photo_dir / "all" / "orange-cross-0.png"
    found = indexed.query(similar_to=target, top=3, min_score=-1)
    assert str(target) not in [r.path for r in found.results]
    assert all(_name(r.path).endswith("cross") or _name(r.path).startswith("orange") for r in found.results[:2])
    result = runner.invoke(app, ["similar", str(photo_dir / "nope.png")])
    assert result.exit_code == 2 and "not in the index" in result.stderr


def test_cli_json_carries_terms_and_cutoff(indexed: Library) -> None:
    result = runner.invoke(app, ["query", "2:a photo of a red circle - red", "--json", "--min-score", "-1", "-n", "3"])
    payload = json.loads(result.stdout)
    assert payload["query"]["terms"] == [
        {"kind": "text", "value": "a photo of a red circle", "weight": 2.0},
        {"kind": "text", "value": "red", "weight": -1.0}]
    assert payload["cutoff"]["method"] == "min-score" and len(payload["results"]) == 3


def test_nothing_relevant_exits_1(indexed: Library) -> None:
    result = runner.invoke(app, ["query", "a photo of a red circle", "--min-score", "0.9999"])
    assert result.exit_code == 1 and result.stdout == ""
    assert "nothing passed" in result.stderr


def test_malformed_query_exits_2(indexed: Library) -> None:
    for args in (["query", "2:"], ["query", "--image", "/no/such.jpg"], ["query", "dog", "--after", "soon"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args


def test_html_contact_sheet(indexed: Library, tmp_path: Path) -> None:
    out = tmp_path / "sheet.html"
    result = runner.invoke(app, ["query", "a photo of a green ring", "-n", "5", "--min-score", "-1",
                                 "--html", str(out), "-f", "paths"])
    assert result.exit_code == 0
    page = out.read_text()
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', page)) == 5
    assert "green-ring-0.png" in page
    assert len(list((indexed.path / "thumbs").glob("*.jpg"))) == 5


def test_large_libraries_switch_to_ivf_with_high_recall(tiny_embedder: Embedder) -> None:
    lib = Library()
    store, centres = _clustered_store(lib, tiny_embedder)
    try:
        flat = VectorIndex.build(store)
        ivf = VectorIndex.build(store, flat_limit=1000)  # as if 2,000 photos were "large"
        assert (flat.kind, ivf.kind) == ("flat", "ivf-sq8")
        ivf.save(lib.path)
        reloaded = VectorIndex.load(lib.path, store)
        assert reloaded.kind == "ivf-sq8" and reloaded.size == 2000
        rng = np.random.default_rng(3)
        queries = centres[rng.integers(0, 40, size=50)] + rng.normal(scale=0.05, size=(50, 64)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        _, exact = flat.search(queries, 10)
        _, approx = reloaded.search(queries, 10)
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
        assert recall >= 0.95, recall
        found = ranking.rank(store, reloaded, centres[5], top=100)
        assert {Path(r.path).parent.name for r in found.results} == {"c05"} and len(found.results) == 50
    finally:
        store.close()


def test_ivf_keeps_its_cutoff_sample_beside_it_and_survives_losing_it(tiny_embedder: Embedder) -> None:
    lib = Library()
    store, _ = _clustered_store(lib, tiny_embedder)
    try:
        VectorIndex.build(store, flat_limit=1000).save(lib.path)
        backdrops = list(lib.path.glob("vectors.*.backdrop.npy"))
        assert len(backdrops) == 1
        from_file = VectorIndex.load(lib.path, store).sample(store)
        assert from_file.shape == (2000, 64)  # under 4096 photos the sample is all of them
        backdrops[0].write_bytes(b"damaged")  # a bad sample file is rebuilt from SQLite, never trusted
        from_sqlite = VectorIndex.load(lib.path, store).sample(store)
        assert from_sqlite.shape == from_file.shape
        # Both are evenly spread samples of the same library: their score distributions agree.
        q = from_file[0]
        assert abs(float(np.median(from_file @ q)) - float(np.median(from_sqlite @ q))) < 0.05
        assert np.load(backdrops[0]).shape == from_file.shape  # and the file was repaired
    finally:
        store.close()


@pytest.mark.parametrize("keep", [0.3, 0.99])
def test_a_truncated_ivf_file_is_rebuilt_not_mapped(tiny_embedder: Embedder, keep: float) -> None:
    lib = Library()
    store, centres = _clustered_store(lib, tiny_embedder)
    try:
        path = VectorIndex.build(store, flat_limit=1000).save(lib.path)
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
        index = VectorIndex.load(lib.path, store)  # memory-mapped when whole; a damaged file is rebuilt
        assert index.size == 2000
        found = ranking.rank(store, index, centres[7], top=100)
        assert {Path(r.path).parent.name for r in found.results} == {"c07"}
    finally:
        store.close()


@pytest.mark.parametrize("p", [1e-6, 0.1, 0.5, 0.9, 0.9975, 1 - 0.5 / 1e6])
def test_normal_quantile_matches_the_standard_library(p: float) -> None:
    from statistics import NormalDist

    assert relevance.normal_quantile(p) == pytest.approx(NormalDist().inv_cdf(p), abs=1e-6)


def test_a_library_reuses_its_faiss_index_until_the_index_changes(indexed: Library, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    real_load = VectorIndex.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls: type[VectorIndex], *args: object, **kwargs: object) -> VectorIndex:
        loads.append(1)
        return real_load(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(VectorIndex, "load", classmethod(counting_load))
    first = [r.path for r in indexed.search("a photo of a red circle", top=3, min_score=-1)]
    assert [r.path for r in indexed.search("a photo of a red circle", top=3, min_score=-1)] == first
    assert len(loads) == 1  # the second search reused the loaded index
    from PIL import Image

    Image.new("RGB", (64, 64), (250, 10, 10)).save(tmp_path / "new-red.png")
    indexed.index([tmp_path / "new-red.png"])  # a new generation: the next search must see it
    loads.clear()
    found = {Path(r.path).name for r in indexed.search("a photo of a red circle", top=500, min_score=-1)}
    assert "new-red.png" in found and len(loads) == 1


@pytest.mark.parametrize("text", ["12:30 lunch with friends", "3:2 photo", "1:1", "a 16:9 screenshot",
                                  "16:9 wallpaper", "10:45pm train", "3 : 2 print", "2024: our trip to Rome",
                                  "score 2:1", "1:1.5 scale model"])
def test_times_ratios_and_years_are_not_weights(text: str) -> None:
    """Lookalikes of `N:part` people type in captions stay one text part, weight 1, unchanged."""
    (term,) = query.parse(text, IMAGE_EXTENSIONS)
    assert (term.kind, term.value, term.weight) == ("text", text, 1.0)


@pytest.mark.parametrize(("text", "value", "weight"), [
    ("2:dog", "dog", 2.0), ("2: dog", "dog", 2.0), ("0.5:sunset", "sunset", 0.5), (".5 : sunset", "sunset", 0.5),
    ("10:cats", "cats", 10.0), ("2:dog: the movie", "dog: the movie", 2.0), ("1.5:rain", "rain", 1.5)])
def test_weights_are_a_small_number_a_colon_and_no_digit(text: str, value: str, weight: float) -> None:
    (term,) = query.parse(text, IMAGE_EXTENSIONS)
    assert (term.value, term.weight) == (value, weight)
    both = query.parse(f"{text} + cat", IMAGE_EXTENSIONS)
    assert [(t.value, t.weight) for t in both] == [(value, weight), ("cat", 1.0)]
