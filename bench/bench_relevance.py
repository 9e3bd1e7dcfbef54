"""Relevance on held-out pictures: does the default output show the right photos, and nothing else?

    python bench/bench_relevance.py [--label before|after] [--fresh]

Libraries come from the tiny model's own generator (tests/fixtures/shapes.py) with seeds no test uses
(the tests use 2024, 99, 77, 5, 12345, 7, 10-12; training 0; bench_fewshot 101): mixed shapes at 240
and 2,016 pictures, a harder rendering (96 px, one to three objects, any size), one dominant subject
(80 % red things), and bursts (crops, resizes and JPEG re-encodes of a few pictures, alone and inside
a mixed library). Each library is embedded once with the tiny model and written into a real index;
every query then goes through `ranking.rank`, as `clipsearch query` and `similar` do, with the
default `--top 20` and no `--min-score`. Tags go through `zero_shot.thresholds` and `zero_shot.assign`,
as `clipsearch tag` does. Results land in bench/results/relevance-LABEL.json and as a markdown table
on stdout. A few minutes on two cores; pictures and vectors are cached in bench/.cache/relevance.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "fixtures"))
import shapes  # noqa: E402

from clipsearch.index.records import ImageRecord  # noqa: E402
from clipsearch.index.store import Store  # noqa: E402
from clipsearch.index.vectors import VectorIndex  # noqa: E402
from clipsearch.ingest import images  # noqa: E402
from clipsearch.model import names  # noqa: E402
from clipsearch.model.embedder import Embedder  # noqa: E402
from clipsearch.search import ranking, relevance  # noqa: E402
from clipsearch.tags import zero_shot  # noqa: E402

CACHE = ROOT / ".cache" / "relevance"
TINY = ROOT.parent / "tests" / "fixtures" / "tiny-clip"
TOP = 20
CEILING = "model's top photo right"

# Queries about nothing in these libraries: the tiny model knows only colours and shapes.
UNRELATED = ["a photo of a giraffe", "a birthday party", "snowy mountains at dawn", "giraffe", "dog",
             "a cat sleeping on a sofa", "my passport", "sunset at the beach", "a bowl of soup", "car"]
# Phrasings of a class query: the one the tiny model's captions use most, and two it sees less.
PHRASINGS = {"a photo of a {c} {s}": lambda c, s: f"a photo of {shapes._article(c)} {c} {s}",
             "{c} {s}": lambda c, s: f"{c} {s}",
             "a picture of {c} {s}s": lambda c, s: f"a picture of {c} {shapes.PLURALS[s]}"}


@dataclass
class Lib:
    name: str
    vectors: np.ndarray
    color: list[str]
    shape: list[str]
    group: list[int]  # bursts: which source picture a photo was made from (-1: none)


# --- pictures ----------------------------------------------------------------------------------

def _mixed(per_class: int, seed: int) -> list[tuple[Image.Image, str, str, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for color in shapes.COLORS:
        for shape in shapes.SHAPES:
            for _ in range(per_class):
                size = "small" if rng.random() < 0.3 else "large"
                out.append((shapes.render(rng, color, shape, 1, size), color, shape, -1))
    return out


def _harder(seed: int, per_class: int) -> list[tuple[Image.Image, str, str, int]]:
    """96 px, one to three objects of any size: the shapes are relatively smaller after the model's resize."""
    rng = np.random.default_rng(seed)
    out = []
    saved = shapes.SIZE
    shapes.SIZE = 96
    try:
        for color in shapes.COLORS:
            for shape in shapes.SHAPES:
                for _ in range(per_class):
                    count = int(rng.choice([1, 1, 2, 3]))
                    size = "small" if rng.random() < 0.5 else "large"
                    out.append((shapes.render(rng, color, shape, count, size), color, shape, -1))
    finally:
        shapes.SIZE = saved
    return out


def _dominant(seed: int) -> list[tuple[Image.Image, str, str, int]]:
    """80 % red things (54 of each shape), then 2 of every other colour and shape."""
    rng = np.random.default_rng(seed)
    out = []
    for color in shapes.COLORS:
        for shape in shapes.SHAPES:
            for _ in range(54 if color == "red" else 2):
                size = "small" if rng.random() < 0.3 else "large"
                out.append((shapes.render(rng, color, shape, 1, size), color, shape, -1))
    return out


def _variant(rng: np.random.Generator, src: Image.Image) -> Image.Image:
    """A crop (60-95 % of each side), a resize and a JPEG re-encode, as phones and editors make them."""
    w, h = src.size
    fw, fh = rng.uniform(0.6, 0.95, size=2)
    cw, ch = int(w * fw), int(h * fh)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = src.crop((left, top, left + cw, top + ch))
    side = int(rng.integers(96, 320))
    img = img.resize((side, max(1, round(side * ch / cw))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(40, 95)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _sources(seed: int, n: int) -> list[tuple[Image.Image, str, str]]:
    rng = np.random.default_rng(seed)
    classes = [(c, s) for c in shapes.COLORS for s in shapes.SHAPES]
    picks = rng.choice(len(classes), size=n, replace=False)
    return [(shapes.render(rng, *classes[k], 2, "large").resize((256, 256), Image.Resampling.BICUBIC),
             *classes[k]) for k in picks]


def _bursts(seed: int, sources: int, total: int) -> list[tuple[Image.Image, str, str, int]]:
    rng = np.random.default_rng(seed)
    src = _sources(seed, sources)
    return [(_variant(rng, src[i % sources][0]), src[i % sources][1], src[i % sources][2], i % sources)
            for i in range(total)]


# --- embedding ---------------------------------------------------------------------------------

def _embed(emb: Embedder, name: str, folder: Path, pictures: list[tuple[Image.Image, str, str, int]]) -> Lib:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pixels = []
    for n, (img, *_rest) in enumerate(pictures):
        path = folder / f"{n:05d}.png"
        img.save(path)
        pixels.append(images.decode(str(path), emb.preprocess).pixels)  # as indexing decodes it
    vecs = np.concatenate([emb.embed_images(np.stack(pixels[i:i + 256])) for i in range(0, len(pixels), 256)])
    return Lib(name, vecs, [p[1] for p in pictures], [p[2] for p in pictures], [p[3] for p in pictures])


def libraries(emb: Embedder, fresh: bool) -> dict[str, Lib]:
    cached = CACHE / "libraries.npz"
    specs = {
        "mixed 240": lambda: _mixed(5, seed=31),
        "mixed 2,016": lambda: _mixed(42, seed=32),
        "harder 240 (96 px, 1-3 objects)": lambda: _harder(33, 5),
        "dominant red 408": lambda: _dominant(34),
        "bursts 2,000 of 13": lambda: _bursts(35, 13, 2000),
        "mixed 240 + 10 bursts of 8": lambda: _mixed(5, seed=36) + _bursts(37, 10, 80),
    }
    if cached.exists() and not fresh:
        data = np.load(cached, allow_pickle=True)
        meta = json.loads(str(data["meta"]))
        if list(meta) == list(specs):
            return {k: Lib(k, data[f"v{n}"], *meta[k]) for n, k in enumerate(specs)}
    out = {k: _embed(emb, k, CACHE / f"lib{n}", make()) for n, (k, make) in enumerate(specs.items())}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cached, meta=json.dumps({k: [v.color, v.shape, v.group] for k, v in out.items()}),
             **{f"v{n}": v.vectors for n, v in enumerate(out.values())})
    return out


# --- running queries as `clipsearch query` does -------------------------------------------------

class Index:
    """A real index (SQLite + FAISS) holding a library's vectors."""

    def __init__(self, lib: Lib, emb: Embedder, folder: Path) -> None:
        if folder.exists():
            shutil.rmtree(folder)
        self.store = Store.open(folder, create=True)
        self.store.bind_model(emb.identity)
        rows = [ImageRecord(f"/photos/{i:05d}.png", 1, 0, str(i), 64, 64, "png") for i in range(len(lib.vectors))]
        self.store.write_batch(rows, lib.vectors)
        self.ids = [i for i, _ in self.store.db.execute("SELECT id, path FROM images ORDER BY path")]
        self.pos = {i: n for n, i in enumerate(self.ids)}
        self.index = VectorIndex.build(self.store)

    def shown(self, q: np.ndarray, exclude: int | None = None, **extra: Any) -> list[int]:
        """Positions (in the library) of what the default output shows for query vector `q`."""
        kw = {k: v for k, v in extra.items() if k in inspect.signature(ranking.rank).parameters}
        ex = frozenset() if exclude is None else frozenset({self.ids[exclude]})
        found = ranking.rank(self.store, self.index, q, TOP, exclude_ids=ex, **kw)
        return [self.pos[r.id] for r in found.results if getattr(r, "relevant", True)]


_BACKGROUND: dict[str, Any] = {}


def _text_kind(emb: Embedder) -> dict[str, Any]:
    """What `clipsearch query TEXT` hands to rank besides the vector (when the measured code takes it)."""
    if not _BACKGROUND and "alternatives" in inspect.signature(ranking.rank).parameters:
        prompts = relevance.background_prompts([lab.name for lab in zero_shot.default_labels()])
        _BACKGROUND["alternatives"] = emb.embed_texts(prompts)
        _BACKGROUND["logit_scale"] = emb.logit_scale
    return dict(_BACKGROUND)


def eval_classes(lib: Lib, idx: Index, emb: Embedder, phrasing: str) -> dict[str, float]:
    first_right = nonempty = 0
    precisions, recalls = [], []
    classes = [(c, s) for c in shapes.COLORS for s in shapes.SHAPES]
    vecs = emb.embed_texts([PHRASINGS[phrasing](c, s) for c, s in classes])
    present = ceiling = 0
    for (c, s), q in zip(classes, vecs, strict=True):
        truth = {n for n in range(len(lib.color)) if lib.color[n] == c and lib.shape[n] == s}
        if not truth:
            continue
        present += 1
        ceiling += int(np.argmax(lib.vectors @ q)) in truth  # the model's own best photo, any cutoff aside
        got = idx.shown(q, **_text_kind(emb))
        if got:
            nonempty += 1
            first_right += got[0] in truth
            precisions.append(len(truth.intersection(got)) / len(got))
        recalls.append(len(truth.intersection(got)) / min(len(truth), TOP))
    return {"classes": present, CEILING: ceiling / present, "non-empty": nonempty / present,
            "first right": first_right / present,
            "precision": float(np.mean(precisions)) if precisions else float("nan"),
            "recall@20": float(np.mean(recalls))}


def eval_unrelated(idx: Index, emb: Embedder) -> dict[str, float]:
    vecs = emb.embed_texts(UNRELATED)
    counts = [len(idx.shown(q, **_text_kind(emb))) for q in vecs]
    return {"empty": float(np.mean([c == 0 for c in counts])), "mean shown": float(np.mean(counts))}


def eval_bursts(lib: Lib, idx: Index, emb: Embedder, seed: int) -> dict[str, float]:
    """`similar` on one stored copy, and `query --image` with a fresh crop nobody indexed."""
    groups = sorted({g for g in lib.group if g >= 0})
    rng = np.random.default_rng(seed)
    sim_rec, img_rec, sim_prec, img_prec, ranked = [], [], [], [], []

    def ranked_shown(q: np.ndarray, want: set[int], got: list[int], exclude: int | None = None) -> None:
        # The cutoff's own share of the blame: near-copies the model ranks in the top 20, all shown?
        order = [int(i) for i in np.argsort(-(lib.vectors @ q)) if i != exclude][:TOP]
        top_copies = want.intersection(order)
        ranked.append(len(top_copies.intersection(got)) / len(top_copies) if top_copies else 1.0)

    # The burst sources are regenerated (same seed as the library) to make fresh query crops.
    for g in groups:
        members = [n for n in range(len(lib.group)) if lib.group[n] == g]
        me = members[0]
        got = idx.shown(lib.vectors[me], exclude=me)
        want = set(members) - {me}
        sim_rec.append(len(want.intersection(got)) / min(len(want), TOP))
        sim_prec.append(len(want.intersection(got)) / len(got) if got else float("nan"))
        ranked_shown(lib.vectors[me], want, got, me)
        crop = _variant(rng, _SOURCE_CACHE[lib.name][g])
        path = CACHE / "query.png"
        crop.save(path)
        q = emb.embed_images(images.decode(str(path), emb.preprocess).pixels[None])[0]
        got = idx.shown(q)
        img_rec.append(len(set(members).intersection(got)) / min(len(members), TOP))
        img_prec.append(len(set(members).intersection(got)) / len(got) if got else float("nan"))
        ranked_shown(q, set(members), got)
    return {"similar: near-copies shown": float(np.mean(sim_rec)), "similar: all shown": float(np.mean(
            [r == 1.0 for r in sim_rec])), "similar precision": float(np.nanmean(sim_prec)),
            "image: near-copies shown": float(np.mean(img_rec)),
            "image: all shown": float(np.mean([r == 1.0 for r in img_rec])),
            "image precision": float(np.nanmean(img_prec)) if any(p == p for p in img_prec) else float("nan"),
            "ranked near-copies shown": float(np.mean(ranked))}


_SOURCE_CACHE: dict[str, list[Image.Image]] = {}

TAG_SETS = {
    "colours, bare words": ("color", "\n".join(shapes.COLORS)),
    "colours, with variants": ("color", "\n".join(f"{c}: something {c}; a {c} object" for c in shapes.COLORS)),
    "colours, 'X colour'": ("color", "\n".join(f"{c} colour" for c in shapes.COLORS)),
    "shapes, bare words": ("shape", "\n".join(shapes.SHAPES)),
    "shapes, 'X shape'": ("shape", "\n".join(f"{s} shape" for s in shapes.SHAPES)),
    "unrelated: dog, car, sunset, mountain, birthday party": (None, "dog\ncar\nsunset\nmountain\nbirthday party"),
    "unrelated: giraffe, kitchen, snowy mountains at dawn, passport, soup": (
        None, "giraffe\nkitchen\nsnowy mountains at dawn\npassport\na bowl of soup"),
}


def eval_tags(lib: Lib, emb: Embedder) -> dict[str, dict[str, float]]:
    out = {}
    for name, (axis, text) in TAG_SETS.items():
        labels = zero_shot.parse_labels(text)
        mat = zero_shot.label_vectors(labels, zero_shot.PHOTO_TEMPLATES, emb.embed_texts)
        extra = {}
        if "background" in inspect.signature(zero_shot.thresholds).parameters:  # as `clipsearch tag` passes it
            extra = {"background": _text_kind(emb)["alternatives"], "logit_scale": emb.logit_scale}
        cut = zero_shot.thresholds(lib.vectors, mat, **extra)
        assigned = zero_shot.assign(lib.vectors, mat, cut, top=2)
        tagged = sum(bool(a) for a in assigned)
        row: dict[str, float] = {"tagged": tagged / len(assigned)}
        if axis is not None:
            truth = lib.color if axis == "color" else lib.shape
            names = [lab.name.split()[0] for lab in labels]
            right = sum(truth[n] in {names[j] for j, _ in a} for n, a in enumerate(assigned))
            all_tags = sum(len(a) for a in assigned)
            correct_tags = sum(names[j] == truth[n] for n, a in enumerate(assigned) for j, _ in a)
            row |= {"recall": right / len(assigned), "precision": correct_tags / all_tags if all_tags else float("nan")}
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="current")
    ap.add_argument("--fresh", action="store_true", help="regenerate and re-embed the pictures")
    args = ap.parse_args()
    t0 = time.perf_counter()
    emb = Embedder(names.parse(f"local-dir:{TINY}"), device="cpu")
    libs = libraries(emb, args.fresh)
    _SOURCE_CACHE["bursts 2,000 of 13"] = [s[0] for s in _sources(35, 13)]
    _SOURCE_CACHE["mixed 240 + 10 bursts of 8"] = [s[0] for s in _sources(37, 10)]
    t_embed = time.perf_counter() - t0
    report: dict[str, Any] = {"label": args.label, "queries": {}, "tags": {}}
    for n, (name, lib) in enumerate(libs.items()):
        idx = Index(lib, emb, CACHE / f"index{n}")
        try:
            entry: dict[str, Any] = {"photos": len(lib.vectors)}
            if not name.startswith("bursts"):
                for phrasing in PHRASINGS:
                    entry[f"classes: {phrasing}"] = eval_classes(lib, idx, emb, phrasing)
            entry["unrelated"] = eval_unrelated(idx, emb)
            if any(g >= 0 for g in lib.group):
                entry["bursts"] = eval_bursts(lib, idx, emb, seed=38 + n)
            report["queries"][name] = entry
        finally:
            idx.store.close()
        if name in ("mixed 240", "harder 240 (96 px, 1-3 objects)", "mixed 2,016"):
            report["tags"][name] = eval_tags(lib, emb)
    report["seconds"] = {"embed": round(t_embed, 1), "total": round(time.perf_counter() - t0, 1)}
    out = ROOT / "results" / f"relevance-{args.label}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.0f} %"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### {report['label']}", "", "| library | query | model's top photo right | shown at all | "
             "first is right | precision | recall@20 |", "|---|---|---|---|---|---|---|"]
    for name, entry in report["queries"].items():
        for key, row in entry.items():
            if key.startswith("classes: "):
                lines.append(f"| {name} | {key[9:]} ({row['classes']} classes) | "
                             f"{_pct(row[CEILING])} | {_pct(row['non-empty'])} | "
                             f"{_pct(row['first right'])} | {_pct(row['precision'])} | {_pct(row['recall@20'])} |")
    lines += ["", "| library | unrelated queries with empty output | mean shown |", "|---|---|---|"]
    for name, entry in report["queries"].items():
        u = entry["unrelated"]
        lines.append(f"| {name} | {_pct(u['empty'])} | {u['mean shown']:.1f} |")
    lines += ["", "| library | similar: near-copies shown | similar: all shown | similar precision | image query: "
              "near-copies shown | image: all shown | image precision | near-copies in the model's top 20 "
              "that are shown |",
              "|---|---|---|---|---|---|---|---|"]
    for name, entry in report["queries"].items():
        if "bursts" in entry:
            b = entry["bursts"]
            lines.append(f"| {name} | {_pct(b['similar: near-copies shown'])} | {_pct(b['similar: all shown'])} | "
                         f"{_pct(b['similar precision'])} | {_pct(b['image: near-copies shown'])} | "
                         f"{_pct(b['image: all shown'])} | {_pct(b['image precision'])} | "
                         f"{_pct(b.get('ranked near-copies shown', float('nan')))} |")
    lines += ["", "| library | label set | photos tagged | recall | precision |", "|---|---|---|---|---|"]
    for name, sets in report["tags"].items():
        for label_set, row in sets.items():
            lines.append(f"| {name} | {label_set} | {_pct(row['tagged'])} | {_pct(row.get('recall', float('nan')))} "
                         f"| {_pct(row.get('precision', float('nan')))} |")
    lines.append(f"\n{report['seconds']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
