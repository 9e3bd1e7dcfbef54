"""Few-shot personal tags on the tiny model's data: F1 with 1, 2, 4 and 8 examples, with and without
the text prior, against zero-shot on the same concept. Negatives are a sample of the library, as in
`clipsearch tag learn` (unlabelled photos taken as "mostly not this").

    python bench/bench_fewshot.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "fixtures"))
import common
import shapes

from clipsearch.ingest import images
from clipsearch.model import names
from clipsearch.model.embedder import Embedder
from clipsearch.tags import probes, zero_shot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one draw per setting instead of ten: checks it runs")
    args = ap.parse_args()
    emb = Embedder(names.parse(f"local-dir:{common.TINY}"))
    library = shapes.write_heldout(common.CACHE / "fewshot" / "library", per_class=10, seed=101)
    heldout = shapes.write_heldout(common.CACHE / "fewshot" / "heldout", per_class=5, seed=77)

    def embed(items: list) -> np.ndarray:
        return emb.embed_images(np.stack([images.decode(str(p), emb.preprocess).pixels for p, _, _ in items]))

    lib_x, test_x = embed(library), embed(heldout)
    rng = np.random.default_rng(0)
    rows = []
    for concept in shapes.SHAPES:
        is_lib = np.array([s == concept for _, _, s in library])
        truth = np.array([s == concept for _, _, s in heldout])
        prior = emb.embed_texts([f"a photo of a {concept}"])[0]
        zero_mat = zero_shot.label_vectors([zero_shot.Label(concept)], zero_shot.PHOTO_TEMPLATES, emb.embed_texts)
        cut = zero_shot.thresholds(lib_x, zero_mat)
        zero_pred = (test_x @ zero_mat[0]) >= cut.values[0]
        row = {"concept": concept, "zero_shot_f1": _f1(zero_pred, truth)}
        for k in (1, 2, 4, 8):
            with_text, without = [], []
            for _ in range(1 if args.quick else 10):
                pos = rng.choice(np.flatnonzero(is_lib), k, replace=False)
                neg = np.setdiff1d(np.arange(len(library)), pos)  # unlabelled library, positives included
                for prior_vec, out in ((prior, with_text), (None, without)):
                    probe = probes.learn_probe(concept, lib_x[pos], lib_x[neg], prior_vec)
                    out.append(_f1(probe.probability(test_x) >= 0.5, truth))
            row[f"k{k}_text"], row[f"k{k}_no_text"] = float(np.mean(with_text)), float(np.mean(without))
        rows.append(row)
        print(concept, " ".join(f"{k}: {v:.2f}" for k, v in row.items() if k != "concept"), flush=True)
    print(f"results: {common.save('fewshot' + ('-quick' if args.quick else ''), {'rows': rows})}")


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred & truth).sum())
    return 2 * tp / (float(pred.sum()) + float(truth.sum())) if pred.sum() + truth.sum() else 1.0


if __name__ == "__main__":
    main()
