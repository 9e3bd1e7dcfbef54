"""Query latency and recall at 10k, 100k and 1M indexed photos (synthetic clustered vectors).

    python bench/bench_query.py [--quick] [--sizes 10000,100000,1000000]

Vectors are inserted straight into a real index (SQLite + FAISS, as `clipsearch index` leaves it),
drawn around 2,000 cluster centres like photos of recurring subjects; uniformly random vectors would
be an unrealistically hard case for approximate search. The model is ViT-B-32 with random weights.

Baselines measured in the same run: exact search by numpy over the whole matrix (for warm search and
recall), and a bare `python -c pass` (for cold start).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common


def index_folder(n: int, quick: bool) -> Path:
    return common.CACHE / ("query-index-quick" if quick else "query-index") / str(n)


def build_index(folder: Path, n: int, model_dir: Path) -> None:
    from clipsearch.index.records import ImageRecord
    from clipsearch.index.store import Store
    from clipsearch.index.vectors import VectorIndex
    from clipsearch.model import names
    from clipsearch.model.identity import ModelIdentity

    if (folder / "done").exists():
        _export_text_model(folder, model_dir)
        return
    rng = np.random.default_rng(n)
    dim = common.embed_dim(model_dir)
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spec = names.parse(f"local-dir:{model_dir}")
    weights = names.resolve_weights(spec)
    store = Store.open(folder, create=True)
    store.bind_model(ModelIdentity(spec.name, dim, names.sha256_of(weights)))
    for start in range(0, n, 20_000):
        m = min(20_000, n - start)
        vecs = centres[rng.integers(0, len(centres), size=m)] + rng.normal(scale=0.035, size=(m, dim)).astype(
            np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        rows = [ImageRecord(f"/photos/{(start + i) // 1000:04d}/{start + i:07d}.jpg", 2_000_000,
                            1_600_000_000_000_000_000 + start + i, str(start + i), 4000, 3000, "jpeg")
                for i in range(m)]
        store.write_batch(rows, vecs)
    VectorIndex.load(folder, store)  # builds and saves the FAISS file, as an indexing run does
    store.close()
    _export_text_model(folder, model_dir)
    (folder / "done").write_text("")


def _export_text_model(folder: Path, model_dir: Path) -> None:
    """What an indexing run leaves for queries: the torch-free text encoder."""
    from clipsearch.model import names, text_export, text_tower
    from clipsearch.model.embedder import Embedder

    spec = names.parse(f"local-dir:{model_dir}")
    if text_tower.available(folder, names.sha256_of(names.resolve_weights(spec))):
        return  # already there: no need to load torch and the model
    assert text_export.export(Embedder(spec), folder), "text model export failed"


def warm(folder: Path, queries: np.ndarray) -> dict[str, float]:
    from clipsearch.index.store import Store
    from clipsearch.index.vectors import VectorIndex
    from clipsearch.search import ranking

    store = Store.open(folder)
    index = VectorIndex.load(folder, store)
    ids_all, mat = store.all_vectors()
    times, exact_times, recalls = [], [], []
    for q in queries:  # one untimed pass: the lists these queries probe are in memory, as in a running process
        ranking.rank(store, index, q, top=10, min_score=-1)
    got_ids = []
    # All clipsearch searches first, then all exact ones: interleaved, the BLAS threads of each big
    # numpy product still spin during the next search and slow it down.
    for q in queries:
        t = time.perf_counter()
        got = ranking.rank(store, index, q, top=10, min_score=-1)
        times.append(time.perf_counter() - t)
        got_ids.append({r.id for r in got.results})
    for q, found in zip(queries, got_ids, strict=True):
        t = time.perf_counter()
        scores = mat @ q
        top = np.argpartition(-scores, 10)[:10]
        exact_times.append(time.perf_counter() - t)
        recalls.append(len(set(ids_all[top].tolist()) & found) / 10)
    kind = index.kind
    store.close()
    # The public call end to end, in a process that keeps its Library: open SQLite, the text's cached
    # vector, the FAISS index kept from the previous call, the cutoff, the rows.
    from clipsearch import Library

    lib = Library(folder)
    lib.search("a dog on the beach", top=10)
    api_times = []
    for _ in range(50):
        t = time.perf_counter()
        lib.search("a dog on the beach", top=10)
        api_times.append(time.perf_counter() - t)
    return {"kind": kind, "search_ms_p50": statistics.median(times) * 1000,
            "library_search_ms_p50": statistics.median(api_times) * 1000,
            "exact_numpy_ms_p50": statistics.median(exact_times) * 1000, "recall_at_10": float(np.mean(recalls)),
            "faiss_mb": sum(p.stat().st_size for p in folder.glob("vectors.*.faiss")) / 1e6}


def _query_process(folder: Path, text: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one `clipsearch query` process."""
    # As users run it: with the relevance cutoff (exit 1 when nothing passes it is an answer too).
    cmd = [sys.executable, "-m", "clipsearch", "query", text, "--format", "paths", "--index", str(folder), "-n", "20"]
    timed = ["/usr/bin/time", "-f", "%M"] if Path("/usr/bin/time").exists() else []
    t = time.perf_counter()
    proc = subprocess.run(timed + cmd, capture_output=True, text=True, env=INSTALLED_ENV)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr[-2000:])
    peak = float(proc.stderr.strip().splitlines()[-1]) / 1024 if timed else float("nan")
    return wall, peak


# As an installed clipsearch runs: Python may cache bytecode. (CI and some shells set
# PYTHONDONTWRITEBYTECODE, which would have every cold query compile clipsearch's modules anew.)
INSTALLED_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def cold(folder: Path, repeats: int, quick: bool = False) -> dict[str, float]:
    stamp = time.time_ns()
    _query_process(folder, f"warm-up {stamp}")  # bytecode written, files in the page cache, as on a used machine
    new = [_query_process(folder, f"a dog on the beach, take {stamp}-{i}") for i in range(repeats)]
    seen = [_query_process(folder, f"a dog on the beach, take {stamp}-0") for _ in range(repeats)]
    walls, cached = [w for w, _ in new], [w for w, _ in seen]
    rss = max(p for _, p in new + seen)
    bare = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t)
    if quick:  # the smoke run checks the path works; the breakdown and the open_clip path cost ~15 s
        return {"cold_s_p50": statistics.median(walls), "cold_cached_text_s_p50": statistics.median(cached),
                "python_start_s": statistics.median(bare), "cold_peak_rss_mb": rss}
    stages = json.loads(subprocess.run(
        [sys.executable, str(Path(__file__).parent / "cold_breakdown.py"), str(folder), f"a red bus {stamp}"],
        capture_output=True, text=True, check=True, env=INSTALLED_ENV).stdout)
    # The path without the exported text tower (torch and open_clip imported, model loaded), once.
    hidden = folder / "text-model.hidden"
    (folder / "text-model").rename(hidden)
    try:
        open_clip_path, _ = _query_process(folder, f"a red bus, open_clip path {stamp}")
    finally:
        hidden.rename(folder / "text-model")
    return {"cold_s_p50": statistics.median(walls), "cold_cached_text_s_p50": statistics.median(cached),
            "python_start_s": statistics.median(bare), "cold_peak_rss_mb": rss,
            "cold_stages_s": stages, "cold_open_clip_path_s": open_clip_path}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 photos, the tiny model, few repeats: checks the "
                    "script runs")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    args = ap.parse_args()
    sizes = [2_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    model_dir = common.TINY if args.quick else common.random_model("ViT-B-32")
    rng = np.random.default_rng(1)
    rows = []
    for n in sizes:
        folder = index_folder(n, args.quick)
        t = time.perf_counter()
        build_index(folder, n, model_dir)
        build_s = time.perf_counter() - t
        from clipsearch.index.store import Store

        store = Store.open(folder)
        _, mat = store.all_vectors()
        store.close()
        picks = mat[rng.integers(0, len(mat), size=20 if args.quick else 200)]
        queries = picks + rng.normal(scale=0.03, size=picks.shape).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        w = warm(folder, queries)
        c = cold(folder, 2 if args.quick else 9, quick=args.quick)
        disk = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        row = {"photos": n, **w, **c, "index_bytes_per_photo": disk / n, "prepare_s": build_s,
               "warm_ratio_to_exact": w["search_ms_p50"] / w["exact_numpy_ms_p50"],
               "cold_ratio_to_python_start": c["cold_s_p50"] / c["python_start_s"]}
        rows.append(row)
        print(f"{n:>8} photos  {w['kind']:8} warm {w['search_ms_p50']:6.2f} ms (exact numpy "
              f"{w['exact_numpy_ms_p50']:6.2f} ms)  recall@10 {w['recall_at_10']:.3f}  cold {c['cold_s_p50']:.2f} s "
              f"(text seen before {c['cold_cached_text_s_p50']:.2f} s, bare python {c['python_start_s']:.2f} s, "
              f"peak {c['cold_peak_rss_mb']:.0f} MB)  "
              f"{disk / n:.0f} B/photo on disk", flush=True)
    saved = common.save("query" + ("-quick" if args.quick else ""), {"rows": rows, "cpu_count": os.cpu_count()})
    print(f"results: {saved}")


if __name__ == "__main__":
    main()
