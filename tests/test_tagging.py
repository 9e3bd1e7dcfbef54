"""Zero-shot tagging on held-out pictures, "none of these", idempotence, query --tag, XMP sidecars."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import shapes
from click.testing import CliRunner

from clipsearch import Library
from clipsearch.cli import app
from clipsearch.errors import UsageError
from clipsearch.index.store import Store
from clipsearch.tags import xmp, zero_shot

runner = CliRunner()
COLOUR_LABELS = "\n".join(f"{c}: something {c}; a {c} object" for c in shapes.COLORS)


@pytest.fixture(scope="module")
def library_240(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str, str]]:
    return shapes.write_heldout(tmp_path_factory.mktemp("tagging"), per_class=5, seed=77)


def _tags_by_path(lib: Library) -> dict[str, set[str]]:
    store = Store.open(lib.path)
    try:
        ids = {p: i for i, p in store.db.execute("SELECT id, path FROM images")}
        tags = store.tags.tags_of(list(ids.values()))
        return {p: {lab for lab, _, _ in tags[i]} for p, i in ids.items()}
    finally:
        store.close()


def test_parse_label_files() -> None:
    labels = zero_shot.parse_labels("# comment\ndog: puppy; a dog\n\ncat\nDog\n")
    assert [(lab.name, lab.variants) for lab in labels] == [("dog", ("puppy", "a dog")), ("cat", ())]
    with pytest.raises(UsageError):
        zero_shot.parse_labels("# nothing\n")
    defaults = zero_shot.default_labels()
    assert len(defaults) >= 200 and {"dog", "beach", "receipt", "screenshot"} <= {lab.name for lab in defaults}
    banned = {"man", "woman", "asian", "black", "white person", "old", "criminal"}
    assert not banned & {lab.name for lab in defaults}


def test_colour_labels_are_right_and_nothing_fits_is_possible(library_240: list) -> None:
    folder = library_240[0][0].parent
    lib = Library()
    lib.index([folder])
    summary = lib.tag(labels=zero_shot.parse_labels(COLOUR_LABELS), top=2)  # the short photo templates
    assert summary.method.startswith("robust-z")
    tags = _tags_by_path(lib)
    right = sum(c in tags[str(p)] for p, c, _ in library_240)
    wrong = sum(bool(tags[str(p)] - {c}) for p, c, _ in library_240)
    assert right / len(library_240) >= 0.9 and wrong / len(library_240) <= 0.1, (right, wrong)
    unrelated = lib.tag(labels=zero_shot.parse_labels("dog\ncar\nsunset\nmountain\nbirthday party"))
    assert unrelated.tagged <= 2  # "none of these": labels that fit nothing tag (almost) nothing
    # Re-tagging replaced the colour tags: idempotent, no stale tags left behind.
    assert sum(bool(t) for t in _tags_by_path(lib).values()) == unrelated.tagged


def test_shape_labels_are_right_too(library_240: list) -> None:
    folder = library_240[0][0].parent
    lib = Library()
    lib.index([folder])
    summary = lib.tag(labels=zero_shot.parse_labels("\n".join(shapes.SHAPES)), top=2)
    # Each shape is a sixth of the pictures over a background of five other shapes: the robust
    # background alone tags none of them; the edge of each label's own cluster does.
    assert "cluster edge" in summary.method
    tags = _tags_by_path(lib)
    right = sum(s in tags[str(p)] for p, _, s in library_240)
    wrong = sum(bool(tags[str(p)] - {s}) for p, _, s in library_240)
    assert right / len(library_240) >= 0.9 and wrong / len(library_240) <= 0.1, (right, wrong)


def test_cluster_edge_needs_a_tight_separate_cluster() -> None:
    rng = np.random.default_rng(0)
    background = rng.normal(0.2, 0.05, 4000)
    # One population: whatever a label "wins" is just its top, not a cluster of its own.
    assert zero_shot.cluster_edge(background, background > np.quantile(background, 0.8)) is None
    # A sixth of the photos tight around 0.65 over a broad, lumpy background: an edge below them.
    lumpy = np.concatenate([rng.normal(m, 0.08, 700) for m in (-0.05, 0.1, 0.3, 0.4, 0.5)])
    scores = np.concatenate([lumpy, rng.normal(0.65, 0.015, 700)])
    wins = np.arange(len(scores)) >= len(lumpy)
    edge = zero_shot.cluster_edge(scores, wins)
    assert edge is not None and 0.55 < edge < 0.65
    assert float(np.mean(scores[wins] >= edge)) > 0.99


def test_retagging_is_idempotent_and_query_filters_by_tag(library_240: list) -> None:
    folder = library_240[0][0].parent
    lib = Library()
    lib.index([folder])
    labels = zero_shot.parse_labels(COLOUR_LABELS)
    first = lib.tag(labels=labels, template_set="none", top=2)
    again = lib.tag(labels=labels, template_set="none", top=2)
    assert first.counts == again.counts
    counts = {lab: n for lab, _, n in lib.tag_counts()}
    assert counts == first.counts
    hits = lib.search("a photo of a circle", top=10, min_score=-1, tags=["green"])
    assert hits and all(Path(h.path).name.startswith("green-") for h in hits)
    listed = runner.invoke(app, ["tags", "--json"])
    assert {row["label"] for row in json.loads(listed.stdout)} == set(first.counts)
    exported = runner.invoke(app, ["tags", "export", "--format", "csv"]).stdout.splitlines()
    assert exported[0] == "path,label,score,source" and len(exported) == 1 + sum(first.counts.values())


def test_small_libraries_need_a_fixed_threshold(photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = Library()
    lib.index([photo_dir])
    embedded: list[int] = []
    real = zero_shot.label_vectors
    monkeypatch.setattr(zero_shot, "label_vectors", lambda labels, *a, **k: embedded.append(len(labels)) or
                        real(labels, *a, **k))
    with pytest.raises(UsageError, match="--threshold"):
        lib.tag(labels=zero_shot.parse_labels("red"))
    assert embedded == []  # told before any label is embedded
    summary = lib.tag(labels=zero_shot.parse_labels(COLOUR_LABELS), template_set="none", threshold=0.3)
    assert summary.method == "fixed" and summary.tagged > 0


def test_xmp_sidecars_merge_round_trip_and_clear(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    items = shapes.write_heldout(folder, per_class=5, seed=5)
    photo = str(items[0][0])
    foreign = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
               '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
               'xmlns:foo="http://example.com/foo/" foo:rating="5"><dc:subject><rdf:Bag><rdf:li>holiday</rdf:li>'
               '</rdf:Bag></dc:subject><foo:note>keep me</foo:note></rdf:Description></rdf:RDF></x:xmpmeta>')
    Path(photo + ".xmp").write_text(foreign)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}
    lib = Library()
    empty = tmp_path / "empty.txt"
    empty.write_text("# no labels yet\n")
    result = runner.invoke(app, ["tag", str(folder), "--labels", str(empty)])
    assert result.exit_code == 2, result.output  # an empty label file is a usage error, nothing written
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text(COLOUR_LABELS)
    dry = runner.invoke(app, ["tag", str(folder), "--labels", str(labels_file), "--templates", "none",
                              "--write-xmp", "--dry-run"])
    assert dry.exit_code == 0 and "would change" in dry.stderr
    assert Path(photo + ".xmp").read_text() == foreign and not Path(str(items[1][0]) + ".xmp").exists()
    done = runner.invoke(app, ["tag", str(folder), "--labels", str(labels_file), "--templates", "none",
                               "--write-xmp", "--top", "2"])
    assert done.exit_code == 0, done.output
    text = Path(photo + ".xmp").read_text()
    assert "holiday" in text and "keep me" in text and 'foo:rating="5"' in text
    assert f"clipsearch|auto|{items[0][1]}" in text and f"clipsearch/auto/{items[0][1]}" in text
    again = lib.tag([folder], labels=zero_shot.parse_labels(COLOUR_LABELS), template_set="none", top=2,
                    write_xmp=True)
    assert again.sidecars_changed == 0  # idempotent
    lib.tag([folder], labels=zero_shot.parse_labels(COLOUR_LABELS), template_set="none", top=2, clear_xmp=True)
    cleared = Path(photo + ".xmp").read_text()
    assert "clipsearch" not in cleared and "holiday" in cleared and "keep me" in cleared
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}
    assert before == after  # originals never modified


def test_plain_xmp_name_is_used_when_it_exists(tmp_path: Path) -> None:
    photo = tmp_path / "IMG_1.jpg"
    photo.write_bytes(b"x")
    (tmp_path / "IMG_1.xmp").write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"/>')
    path, changed = xmp.update(str(photo), ["beach"])
    assert path == tmp_path / "IMG_1.xmp" and changed and "clipsearch|auto|beach" in path.read_text()
    broken = tmp_path / "b.jpg"
    broken.write_bytes(b"x")
    (tmp_path / "b.jpg.xmp").write_text("<not xml")
    with pytest.raises(ValueError, match="not valid XML"):
        xmp.update(str(broken), ["x"])


def _f1(predicted: set[str], truth: set[str]) -> float:
    return 2 * len(predicted & truth) / (len(predicted) + len(truth)) if predicted or truth else 1.0


def test_few_shot_beats_zero_shot_on_a_concept(library_240: list, tmp_path: Path) -> None:
    folder = library_240[0][0].parent
    lib = Library()
    lib.index([folder])
    truth = {str(p) for p, _, s in library_240 if s == "circle"}
    zero = lib.tag(labels=zero_shot.parse_labels("circle: a photo of a circle; a circle"))
    zero_tagged = {p for p, t in _tags_by_path(lib).items() if "circle" in t}
    examples = [str(p) for p, c, s in library_240 if s == "circle" and c in ("red", "blue", "yellow", "white")][::5]
    assert len(examples) == 4
    learned = runner.invoke(app, ["tag", "learn", "circle", *[arg for e in examples for arg in ("-e", e)]])
    assert learned.exit_code == 0 and "from 4 example" in learned.stderr
    lib.tag(labels=zero_shot.parse_labels(COLOUR_LABELS))
    tags = _tags_by_path(lib)
    few_tagged = {p for p, t in tags.items() if "circle" in t}
    assert _f1(few_tagged, truth) >= 0.8 > _f1(zero_tagged, truth), (_f1(few_tagged, truth), zero.counts)
    store = Store.open(lib.path)
    sources = {src for _, src, _ in store.tags.tag_counts()}
    store.close()
    assert sources == {"zero-shot", "few-shot"}
    assert runner.invoke(app, ["tag", "forget", "circle"]).exit_code == 0
    assert not any("circle" in t for t in _tags_by_path(lib).values())
    assert runner.invoke(app, ["tag", "forget", "circle"]).exit_code == 2
