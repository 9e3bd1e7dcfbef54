"""A whole cold text query at 100k photos with the fp32 text tower vs the int8 one it replaced (issue 15).

    python bench/cold_text_precision.py [--photos 100000] [--runs 9]

The index is bench_query.py's (synthetic clustered vectors, random ViT-B-32, its text tower
exported as an indexing run does: fp32, weights memory-mapped). The int8 variant is made from the
same export the way clipsearch made it before issue 15 (dynamic int8 quantisation, pre-optimised,
weights inside the graph). Each run is a new `clipsearch query` process for a text it has not
seen; the two text-model folders are renamed in turn before each run, interleaved, after one warm-up
each (bytecode and files in the page cache, as on a machine in use). Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_query
import common


def make_int8(fp32: Path, out: Path) -> None:
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(fp32, out)
    meta = json.loads((out / "meta.json").read_text())
    for f in out.glob("model*"):
        f.unlink()
    logging.disable(logging.WARNING)
    quantize_dynamic(str(fp32 / meta["file"]), str(out / "model.int8.onnx"), weight_type=QuantType.QInt8)
    logging.disable(logging.NOTSET)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out / "model.int8.opt.onnx")
    ort.InferenceSession(str(out / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
    (out / "model.int8.onnx").unlink()
    meta.update({"file": "model.int8.opt.onnx", "preoptimized": True})
    (out / "meta.json").write_text(json.dumps(meta))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    folder = bench_query.index_folder(args.photos, quick=False)
    bench_query.build_index(folder, args.photos, common.random_model("ViT-B-32"))
    live = folder / "text-model"
    variants = {"fp32-mmap": folder / "text-model.fp32", "int8-inline": folder / "text-model.int8"}
    if not variants["fp32-mmap"].exists():
        shutil.copytree(live, variants["fp32-mmap"])
    make_int8(variants["fp32-mmap"], variants["int8-inline"])
    stamp = time.time_ns()
    walls: dict[str, list[float]] = {k: [] for k in variants}
    shutil.rmtree(live)
    for r in range(-1, args.runs):  # run -1 is each variant's warm-up
        for name, src in variants.items():
            src.rename(live)  # a rename: the files stay in the page cache
            try:
                wall, _ = bench_query._query_process(folder, f"a dog on the beach, {name} {stamp}-{r}")
            finally:
                live.rename(src)
            if r >= 0:
                walls[name].append(wall)
    shutil.copytree(variants["fp32-mmap"], live)
    med = {k: statistics.median(v) for k, v in walls.items()}
    for k, v in med.items():
        print(f"{k:12s} cold new-text query p50 {v:.3f} s (runs {', '.join(f'{w:.2f}' for w in walls[k])})")
    print(f"fp32-mmap / int8-inline = {med['fp32-mmap'] / med['int8-inline']:.2f}")
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "cold-text-precision.json").write_text(json.dumps(
        {"machine": common.machine(), "photos": args.photos, "runs": walls, "p50": med}, indent=1))


if __name__ == "__main__":
    main()
