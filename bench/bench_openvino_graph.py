"""OpenVINO bf16 compiling the export's ONNX file against its fp16-weight IR copy (issue 22).

    python bench/bench_openvino_graph.py [--quick] [--rounds 3]

openvino_tower.bf16_graph writes the exported image tower once as OpenVINO IR with fp16 weights;
bf16 compiles that instead of `model.opt.onnx`, whose fp32 weights stayed resident beside the
bf16 ones. Each variant runs in a fresh process, alternating, each from its own warm CACHE_DIR
(what every index run after the first sees): compile time, the first call, then four calls of 8
photos (an index run's tower calls, onnx_indexing.CHUNK); peak RSS is the process's VmHWM; the
minimum cosine of the check pictures to the vectors open_clip fp32 gave at export. ViT-B-32 with
random weights (the tiny model with --quick). Needs the `openvino` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_onnx_index
import common

CHILD = """
import json, sys, time
from pathlib import Path
import numpy as np
from clipsearch.model import image_tower, openvino_tower
hwm = lambda: int(next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1]) / 1024
kind, folder, cache = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
t0 = time.perf_counter()
graph = openvino_tower.bf16_graph(folder, cache) if kind == "fp16 IR" else None
enc = openvino_tower.OpenVinoImageEncoder(folder, "bf16", None, cache, graph)
t1 = time.perf_counter()
px = image_tower.check_pixels(enc.preprocess)
cos = float(np.min(np.sum(enc.embed_images(px[:1]) * np.load(folder / image_tower.CHECK_VECTORS)[:1], axis=1)))
t2 = time.perf_counter()
for _ in range(4):
    out = enc.embed_images(px)
t3 = time.perf_counter()
cos = min(cos, float(np.min(np.sum(out * np.load(folder / image_tower.CHECK_VECTORS), axis=1))))
print(json.dumps({"compile_s": t1 - t0, "first_call_s": t2 - t1, "ms_per_photo": 1000 * (t3 - t2) / 32,
                  "peak_rss_mb": hwm(), "min_cosine": cos}))
"""
KINDS = ("onnx file", "fp16 IR")


def run(kind: str, folder: Path, cache: Path, env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(folder), str(cache)], capture_output=True,
                          text=True, env=env, check=True)
    return {k: float(v) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    folder = bench_onnx_index.exported_tower(common.TINY if args.quick else common.random_model("ViT-B-32"))
    env = {**os.environ, "PYTHONPATH": str(bench_onnx_index.HERE)}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ov-graph-") as t:
        caches = {k: Path(t) / k.replace(" ", "-") for k in KINDS}
        first = {k: run(k, folder, caches[k], env) for k in KINDS}  # fills each cache (and writes the IR)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
        for r in range(1 if args.quick else args.rounds):
            for k in KINDS if r % 2 == 0 else tuple(reversed(KINDS)):
                runs[k].append(run(k, folder, caches[k], env))
    best = {k: {m: min(x[m] for x in v) for m in v[0]} for k, v in runs.items()}  # cosine: the worst
    for k in KINDS:
        b = best[k]
        print(f"{k:10} compile {b['compile_s']:.2f} s, first call {b['first_call_s']:.2f} s, "
              f"{b['ms_per_photo']:.1f} ms/photo, peak RSS {b['peak_rss_mb']:.0f} MB, min cosine {b['min_cosine']:.5f}"
              f" (first, cache filled: {first[k]['compile_s']:.2f} s, {first[k]['peak_rss_mb']:.0f} MB)")
    ratio = {m: best["fp16 IR"][m] / best["onnx file"][m] for m in ("compile_s", "ms_per_photo", "peak_rss_mb")}
    print("IR / ONNX file:", {m: round(v, 2) for m, v in ratio.items()})
    payload = {"model": "tiny" if args.quick else "ViT-B-32 (random weights)", "load_average_before": load_before,
               "load_average_after": os.getloadavg(), "first_with_empty_cache": first, "runs": runs, "best": best,
               "ir_over_onnx": ratio}
    print(f"results: {common.save('openvino-graph' + ('-quick' if args.quick else ''), payload)}")


if __name__ == "__main__":
    main()
