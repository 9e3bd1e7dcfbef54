"""Tagging 100k indexed photos with 1,000 labels: the one-time label cache, then re-tagging.

    python bench/bench_tagging.py [--quick]

Uses the 100k synthetic index of bench_query.py (random-weight ViT-B-32, its int8 text tower). The
baseline, measured in the same run, is the bare matrix product of all photo vectors with all label
vectors in numpy: the floor any tagger pays.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_query
import common

from clipsearch import Library
from clipsearch.index.store import Store
from clipsearch.tags import zero_shot

MODIFIERS = ["", "a small ", "a big ", "an old ", "a colourful "]


def labels(n: int) -> list[zero_shot.Label]:
    base = zero_shot.default_labels()
    out = [zero_shot.Label(f"{m}{lab.name}".strip()) for m in MODIFIERS for lab in base]
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 photos, 50 labels, the tiny model")
    args = ap.parse_args()
    n, k = (2_000, 50) if args.quick else (100_000, 1000)
    folder = bench_query.index_folder(n, args.quick)
    bench_query.build_index(folder, n, common.TINY if args.quick else common.random_model("ViT-B-32"))
    lib = Library(folder)
    chosen = labels(k)
    store = Store.open(folder)
    store.db.execute("DELETE FROM label_vectors")  # measure the one-time cost honestly
    _, mat = store.all_vectors()
    store.close()
    t = time.perf_counter()
    first = lib.tag(labels=chosen, top=5)
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    again = lib.tag(labels=chosen, top=5)
    again_s = time.perf_counter() - t
    label_mat = np.random.default_rng(0).normal(size=(k, mat.shape[1])).astype(np.float32)
    t = time.perf_counter()
    _ = mat @ label_mat.T
    matmul_s = time.perf_counter() - t
    row = {"photos": n, "labels": k, "first_tag_s": first_s, "retag_s": again_s, "matmul_s": matmul_s,
           "label_cache_s": first_s - again_s, "retag_ratio_to_matmul": again_s / matmul_s,
           "tagged": again.tagged, "same_result": first.counts == again.counts}
    print(f"{n} photos x {k} labels: first run {first_s:.1f} s (label cache {row['label_cache_s']:.1f} s), "
          f"re-tag {again_s:.1f} s, bare matmul {matmul_s:.2f} s ({row['retag_ratio_to_matmul']:.0f}x)")
    print(f"results: {common.save('tagging' + ('-quick' if args.quick else ''), {'rows': [row]})}")


if __name__ == "__main__":
    main()
