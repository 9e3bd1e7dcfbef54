"""The relevance decision's guarantees: right matches shown, unrelated queries empty, near-copies always
returned, no cutoff above 1.0, the closest few for a person, nothing for pipes, `query --tag` alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapes
from click.testing import CliRunner

from clipsearch import Library
from clipsearch.cli import app
from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex
from clipsearch.model.embedder import Embedder
from clipsearch.search import duplicates, ranking, relevance
from clipsearch.tags import zero_shot

runner = CliRunner()


def _name(path: str) -> str:
    return Path(path).stem.rsplit("-", 1)[0]


@pytest.fixture(scope="module")
def shapes_240(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str, str]]:
    return shapes.write_heldout(tmp_path_factory.mktemp("relevance"), per_class=5, seed=77)


def _burst_store(lib: Library, emb: Embedder, sources: int = 13, total: int = 2000,
                 noise: float = 0.012) -> tuple[Store, np.ndarray, np.ndarray]:
    """`total` photos that are near-copies (cosine ~0.97) of `sources` pictures: bursts, crops, re-encodes."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(sources, 64)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    group = np.arange(total) % sources
    vecs = centres[group] + rng.normal(scale=noise, size=(total, 64)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = Store.open(lib.path, create=True)
    store.bind_model(emb.identity)
    rows = [ImageRecord(f"/photos/{i:05d}.jpg", 1, 0, str(i), 64, 64, "jpeg") for i in range(total)]
    store.write_batch(rows, vecs)
    return store, vecs, group


def test_no_cutoff_exceeds_one_or_a_near_copy(tiny_embedder: Embedder) -> None:
    # A backdrop of near-copies has a tiny spread: median + Z * sigma used to land at 1.5.
    lib = Library()
    store, vecs, group = _burst_store(lib, tiny_embedder)
    try:
        robust, _ = relevance.adaptive_cutoff(vecs[0], vecs, 3.0, len(vecs))
        assert robust is not None and robust <= 1.0
        index = VectorIndex.build(store)
        ids = [int(r[0]) for r in store.db.execute("SELECT id FROM images ORDER BY path")]
        for k in (0, 7, 12):
            found = ranking.rank(store, index, vecs[k], top=20, exclude_ids=frozenset({ids[k]}))
            assert found.cutoff is not None and found.cutoff <= relevance.NEAR_COPY <= 1.0
            assert len(found.results) == 20  # `similar`: its near-copies, all of them relevant
            assert {int(group[ids.index(r.id)]) for r in found.results} == {int(group[k])}
        # A user's --min-score above any cosine is clamped too: an identical vector still counts.
        assert ranking.rank(store, index, vecs[3], top=5, min_score=7.0).cutoff == 1.0
        # Tag thresholds share the statistics: none above 1.0 either, on the same degenerate library.
        labels = vecs[[0, 1, 2]] + 0.0
        assert float(zero_shot.thresholds(vecs, labels).values.max()) <= 1.0
    finally:
        store.close()
    assert relevance.NEAR_COPY == duplicates.NEAR_COSINE  # one notion of "a copy of the same picture"


def test_query_share_is_clips_softmax_and_paraphrases_do_not_outvote() -> None:
    rng = np.random.default_rng(1)
    background = rng.normal(size=(50, 16)).astype(np.float32)
    background /= np.linalg.norm(background, axis=1, keepdims=True)
    query = background[7].copy()  # the query is, word for word, one of the vocabulary's labels
    kept = background[relevance.alternative_mask(query, background)]
    assert len(kept) == 49 and not np.any(np.all(np.isclose(kept, query), axis=1))
    # Two alternatives at equal score with the query: a third each. A clear winner takes nearly all.
    share = relevance.query_share(np.array([0.3, 0.5]), np.array([[0.3, 0.3], [0.2, 0.1]]), 100.0)
    assert share[0] == pytest.approx(1 / 3) and share[1] > 0.999
    assert relevance.logit_scale_of(None) == relevance.logit_scale_of("garbage") == 100.0
    assert relevance.logit_scale_of("25.375") == 25.375


def test_a_tag_must_be_as_likely_as_an_average_alternative() -> None:
    # Two photos, one label, three alternatives (the last a paraphrase of the label, left out).
    labels = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    background = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.99, 0.141, 0.0]], dtype=np.float32)
    keep = relevance.paraphrase_mask(labels, background, z=0.5)
    assert keep.tolist() == [[True, True, False]]
    scores = np.array([[0.30], [0.20]])  # photo 0: above both alternatives' mean; photo 1: below it
    alt = np.array([[0.25, 0.25, 0.31], [0.25, 0.25, 0.19]])
    likely = relevance.beats_average_alternative(scores, alt, keep, 100.0)
    assert likely[:, 0].tolist() == [True, False]


def test_the_tag_check_equals_its_definition_in_float64_without_warnings() -> None:
    # The check runs in the scores' dtype, in place, without a log per pair: it must still decide as
    # the softmax's definition does, in float64, for every pair not within rounding of the line,
    # including labels far above every alternative (their weight overflows float32) and a label left
    # with no alternatives (which passes).
    rng = np.random.default_rng(7)
    scores = rng.uniform(-0.2, 0.5, size=(300, 40)).astype(np.float32)
    scores[:5, 3] = 1.0
    alt = rng.uniform(-0.5, 0.4, size=(300, 25)).astype(np.float32)
    alt[:5] = -1.0  # the photos where label 3 sits 2.0 above the best alternative: exp(200) > float32's max
    keep = rng.random((40, 25)) < 0.8
    keep[7] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = relevance.beats_average_alternative(scores, alt, keep, 100.0)
    s64, a64 = scores.astype(np.float64), alt.astype(np.float64)
    top = a64.max(axis=1, keepdims=True)
    mean = (np.exp(100.0 * (a64 - top)) @ keep.T) / np.maximum(keep.sum(axis=1), 1)
    with np.errstate(divide="ignore"):
        margin = 100.0 * (s64 - top) - np.log(mean)
    clear = np.abs(margin) > 1e-4
    assert clear.mean() > 0.99
    assert (got[clear] == (margin[clear] >= 0)).all()
    assert got[:5, 3].all() and got[:, 7].all()


def test_right_matches_are_shown_first_and_unrelated_queries_get_nothing(shapes_240: list) -> None:
    # 240 held-out pictures, 5 per colour+shape: the old cutoff hid 7 of 8 of these queries.
    lib = Library()
    lib.index([shapes_240[0][0].parent])
    classes = [("red", "circle"), ("blue", "star"), ("white", "ring"), ("green", "cross"),
               ("yellow", "triangle"), ("purple", "square"), ("orange", "ring"), ("pink", "star")]
    for color, shape in classes:
        found = lib.query(f"a photo of a {color} {shape}", top=20)
        names = [_name(r.path) for r in found.results]
        assert names and names[0] == f"{color}-{shape}", (color, shape, names)
        assert names.count(f"{color}-{shape}") >= 4 and len(names) <= 8, names
    for text in ("a photo of a giraffe", "a birthday party", "snowy mountains at dawn", "dog"):
        found = lib.query(text, top=20)
        assert found.results == [] and found.ranking.closest, text


def test_a_warm_process_answers_as_a_cold_one(shapes_240: list, monkeypatch: pytest.MonkeyPatch) -> None:
    # From its second text query a process decides from a table of the photos' background scores
    # (background_scores.py) and scans a float16 copy of the flat index (half_scan.py): each query
    # here must get exactly what a first query in a new process gets.
    from clipsearch.index import vectors
    from clipsearch.search import background_scores

    Library().index([shapes_240[0][0].parent])
    queries = ["a photo of a red circle", "blue star", "ring", "green", "a yellow triangle on white",
               "purple squares", "a photo of a giraffe", "dog", "orange ring - white", "pink"]
    warm = Library()
    tables = []
    real_table = background_scores.table_for
    monkeypatch.setattr(background_scores, "table_for", lambda *a: tables.append(t := real_table(*a)) or t)
    halves = []
    real_half = vectors.VectorIndex._half_scan
    monkeypatch.setattr(vectors.VectorIndex, "_half_scan", lambda self: halves.append(h := real_half(self)) or h)
    for text in queries * 2:
        got, cold = warm.query(text, top=8), Library().query(text, top=8)
        assert [(r.id, r.relevant) for r in got.results] == [(r.id, r.relevant) for r in cold.results], text
        assert [r.id for r in got.ranking.closest] == [r.id for r in cold.ranking.closest], text
        assert got.ranking.cut == cold.ranking.cut, text
        np.testing.assert_allclose([r.score for r in got.results], [r.score for r in cold.results], atol=1e-6)
    assert any(t is not None for t in tables) and any(h is not None for h in halves)  # the warm paths ran
    # Each query's alternatives, kept by the warm process, are the ones a fresh computation chooses.
    entry = warm._index.derived[background_scores.KEY]
    assert len(entry.masks) >= len(queries) - 2  # (the tiny model embeds some unknown words alike)
    for key, mask in entry.masks.items():
        query = np.frombuffer(key, dtype=np.float32)
        assert np.array_equal(mask, relevance.alternative_mask(query, entry.background))


def test_hits_decided_as_the_walk_needs_them_answer_as_all_decided_at_once(
        shapes_240: list, monkeypatch: pytest.MonkeyPatch) -> None:
    # hits.collect decides the first DECIDED_FIRST hits, and the rest only when the walk goes past
    # them: the answer must be the one deciding every hit at once gives.
    from clipsearch.search import hits

    Library().index([shapes_240[0][0].parent])
    queries = ["a photo of a red circle", "blue star", "ring", "green", "purple squares", "a photo of a giraffe",
               "orange ring - white", "pink", "a photo of a white cross"]
    calls: list[int] = []
    real = hits._Searched.decide_upto
    monkeypatch.setattr(hits._Searched, "decide_upto", lambda self, n: calls.append(n - self.decided) or real(self, n))

    def answers(first: int) -> list[object]:
        monkeypatch.setattr(hits, "DECIDED_FIRST", first)
        monkeypatch.setattr(hits, "DECIDED_PER_TOP", 0)
        lib, out = Library(), []
        for text in queries:
            for top in (1, 3, 12):
                for min_score in (None, 0.1):
                    got = lib.query(text, top=top, min_score=min_score)
                    out.append(([(r.id, r.score, r.relevant) for r in got.results], got.ranking.cut,
                                [r.id for r in got.ranking.closest]))
        return out

    lazily = answers(1)
    walked_past = sum(1 for n in calls if n > 0) > len(queries) * 6  # some walks decided the rest
    calls.clear()
    assert lazily == answers(10_000) and walked_past


def _copies(src: Path, folder: Path, n: int, rng: np.random.Generator) -> list[Path]:
    """Crops (85-95 % of each side), resizes and JPEG re-encodes of one picture."""
    from PIL import Image

    img = Image.open(src).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC)
    out = []
    for k in range(n):
        fw, fh = rng.uniform(0.85, 0.95, size=2)
        w, h = int(256 * fw), int(256 * fh)
        left, top = int(rng.integers(0, 256 - w + 1)), int(rng.integers(0, 256 - h + 1))
        side = int(rng.integers(120, 400))
        copy = img.crop((left, top, left + w, top + h)).resize((side, round(side * h / w)))
        path = folder / f"{src.stem}-copy{k}.jpg"
        copy.save(path, "JPEG", quality=int(rng.integers(50, 90)))
        out.append(path)
    return out


def test_image_queries_and_similar_return_their_near_copies(shapes_240: list, tmp_path: Path) -> None:
    library = shapes_240[0][0].parent
    copies = tmp_path / "copies"
    copies.mkdir()
    rng = np.random.default_rng(8)
    sources = [p for p, _, _ in shapes_240][3::47][:4]  # 4 classes, 4 near-copies of each
    made = {src: _copies(src, copies, 4, rng) for src in sources}
    lib = Library()
    lib.index([library, copies])
    for src, its in made.items():
        want = {str(p) for p in its} | {str(src)}
        by_image = {r.path for r in lib.query(images=[src], top=20).results}
        assert want <= by_image, (src.name, sorted(Path(p).name for p in want - by_image))
        like = {r.path for r in lib.query(similar_to=its[0], top=20).results}
        assert want - {str(its[0])} <= like, (src.name, sorted(Path(p).name for p in want - like))


def test_nothing_relevant_keeps_stdout_empty_for_scripts(photo_dir: Path) -> None:
    Library().index([photo_dir])
    for extra in ([], ["-f", "paths"], ["-0"], ["-f", "jsonl"]):
        result = runner.invoke(app, ["query", "a photo of a giraffe", *extra])
        assert result.exit_code == 1 and result.stdout == "", extra
        assert "nothing stands out" in result.stderr
    listed = runner.invoke(app, ["query", "a photo of a giraffe", "--json", "--min-score", "-1", "-n", "4"])
    assert listed.exit_code == 0
    results = json.loads(listed.stdout)["results"]
    assert len(results) == 4 and all(r["relevant"] is False for r in results)
    plain = json.loads(runner.invoke(app, ["query", "a photo of a red circle", "--json"]).stdout)["results"]
    assert plain and "relevant" not in plain[0]  # only marked when more than the relevant ones were asked for


def test_a_terminal_sees_the_closest_few_dimmed(photo_dir: Path, isolated: Path) -> None:
    Library().index([photo_dir])
    main, child = os.openpty()
    env = {**os.environ, "CLIPSEARCH_HOME": str(isolated), "COLUMNS": "200", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.run([sys.executable, "-m", "clipsearch", "query", "a photo of a giraffe"], stdout=child,
                          stderr=subprocess.PIPE, env=env, timeout=120)
    os.close(child)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    text = shown.decode("utf-8", "replace")
    assert proc.returncode == 1
    rows = [line for line in text.splitlines() if "KB" in line]  # one per photo, with its size
    assert "None of these stand out" in text and len(rows) == 5
    assert "\x1b[2m" in text  # the results are dimmed


def test_query_tag_alone_lists_tagged_photos_best_first(shapes_240: list) -> None:
    lib = Library()
    lib.index([shapes_240[0][0].parent])
    lib.tag(labels=zero_shot.parse_labels("\n".join(shapes.COLORS)), top=2)
    result = runner.invoke(app, ["query", "--tag", "red", "--json", "-n", "100"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    scores = [r["score"] for r in payload["results"]]
    assert len(scores) >= 25 and scores == sorted(scores, reverse=True)
    assert all(Path(r["path"]).name.startswith("red-") for r in payload["results"])
    by_date = runner.invoke(app, ["query", "--tag", "red", "--sort", "date", "-f", "paths", "-n", "100"])
    assert by_date.exit_code == 0 and len(by_date.stdout.splitlines()) == len(scores)
    assert runner.invoke(app, ["query", "--tag", "no-such-tag"]).exit_code == 1
