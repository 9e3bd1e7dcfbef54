"""ONNX Runtime fp32 against OpenVINO (bf16 where the CPU has it) for the exported image tower (issue 22).

For a random-initialised ViT-B-32 (the tiny trained model with --quick), exported once as
`query --image` exports it (image_export.export): the load cost of each runtime (ONNX Runtime's
session; OpenVINO's compile without a cache, filling its CACHE_DIR, and from it), ms per image at
batch 1 (a query) and 16 (indexing's shape) in alternating rounds, fidelity to open_clip fp32 on
real photos and crops (bench_image_tower.agreement), and end to end `clipsearch query --image NEW`
in a new process on a small index of the same model, CLIPSEARCH_IMAGE_RUNTIME=onnxruntime against
=openvino, interleaved, with peak RSS. The machine's load average is recorded: on a shared machine
the ratios, measured in the same run, are what counts. Needs the `openvino` extra.

    python bench/bench_image_runtime.py [--quick] [--rounds 5] [--runs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_image_tower
import common


def _ms(embed: Any, pixels: np.ndarray, batch: int, calls: int) -> float:
    """Median ms per image over `calls` calls of `batch` images (after one warm-up call)."""
    embed(pixels[:batch])
    times = []
    for i in range(calls):
        start = (i * batch) % max(1, len(pixels) - batch)
        t = time.perf_counter()
        embed(pixels[start:start + batch])
        times.append((time.perf_counter() - t) / batch)
    return 1000 * statistics.median(times)


def load_costs(folder: Path, cache: Path, precision: str, reps: int) -> dict[str, list[float]]:
    """Seconds to a ready encoder (ONNX Runtime's session; OpenVINO without a cache, filling it, from
    it) and then of its first call on one image (OpenVINO prepares kernels for a new shape then)."""
    from clipsearch.model import image_tower, openvino_tower

    out: dict[str, list[float]] = {}
    pixels = image_tower.check_pixels(image_tower.preprocess_of(json.loads((folder / "meta.json").read_text())))
    for _ in range(reps):
        shutil.rmtree(cache, ignore_errors=True)
        for key, kind in (("onnxruntime_session", "ort"), ("openvino_compile_nocache", None),
                          ("openvino_compile_fill_cache", cache), ("openvino_compile_cached", cache)):
            t = time.perf_counter()
            enc: Any = (image_tower.OnnxImageEncoder(folder) if kind == "ort"
                        else openvino_tower.OpenVinoImageEncoder(folder, precision, cache=kind))
            loaded = time.perf_counter()
            enc.embed_images(pixels[:1])
            out.setdefault(f"{key}_s", []).append(loaded - t)
            out.setdefault(f"{key}_first_call_s", []).append(time.perf_counter() - loaded)
    return out


def end_to_end(model_dir: Path, tmp: Path, export_dir: Path, new_photo: Path, runs: int) -> dict[str, Any]:
    env, index = bench_image_tower.small_index(model_dir, tmp)
    shutil.copytree(export_dir, index / "image-model")
    args = ["query", "--image", str(new_photo), "--top", "5", "--json"]
    # The very first OpenVINO query of these weights: it compiles, fills the cache and self-checks.
    first, proc = common.run_cli(args, {**env, "CLIPSEARCH_IMAGE_RUNTIME": "openvino"}, peak_rss=True)
    first_rss = common.peak_rss_mb(proc)
    out: dict[str, list[float]] = {f"{k}_{m}": [] for k in ("onnxruntime", "openvino") for m in ("s", "rss_mb")}
    answers: dict[str, list[int]] = {}
    for i in range(runs):
        for kind in (("onnxruntime", "openvino") if i % 2 == 0 else ("openvino", "onnxruntime")):
            wall, proc = common.run_cli(args, {**env, "CLIPSEARCH_IMAGE_RUNTIME": kind}, peak_rss=True)
            out[f"{kind}_s"].append(wall)
            out[f"{kind}_rss_mb"].append(common.peak_rss_mb(proc))
            answers[kind] = [r["id"] for r in json.loads(proc.stdout)["results"]]
    med = {k: statistics.median(v) for k, v in out.items()}
    return {**med, "runs": out, "openvino_first_query_s": first, "openvino_first_query_rss_mb": first_rss,
            "openvino_over_onnxruntime_s": med["openvino_s"] / med["onnxruntime_s"],
            "openvino_over_onnxruntime_rss": med["openvino_rss_mb"] / med["onnxruntime_rss_mb"],
            "same_top5": answers["onnxruntime"] == answers["openvino"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args()
    from clipsearch.ingest import images
    from clipsearch.model import cpu, image_export, image_tower, names, openvino_tower
    from clipsearch.model.embedder import Embedder

    load_before = os.getloadavg()
    precision = "bf16" if cpu.has_native_bf16() else "fp32"
    model_dir = common.TINY if args.quick else common.random_model("ViT-B-32")
    rounds, runs = (1, 1) if args.quick else (args.rounds, args.runs)
    with tempfile.TemporaryDirectory(prefix="bench-image-runtime-") as t:
        tmp = Path(t)
        files = bench_image_tower.photos(tmp / "photos", 1 if args.quick else 2)
        fp32 = Embedder(names.parse(f"local-dir:{model_dir}"), "cpu", "fp32", download=False)
        pixels = np.stack([images.decode(str(p), fp32.preprocess).pixels for p in files])
        ref = np.concatenate([fp32.embed_images(pixels[i:i + 16]) for i in range(0, len(pixels), 16)])
        assert image_export.export(fp32, tmp / "idx")
        del fp32
        folder = tmp / "idx" / image_tower.FOLDER
        loads = load_costs(folder, tmp / "ov-cache", precision, 1 if args.quick else 3)
        encoders: dict[str, Any] = {"onnxruntime fp32": image_tower.OnnxImageEncoder(folder),
                                    f"openvino {precision}": openvino_tower.OpenVinoImageEncoder(folder, precision)}
        rows: dict[str, dict[str, Any]] = {
            name: {**bench_image_tower.agreement(enc.embed_images(pixels), ref), "ms_b1": [], "ms_b16": []}
            for name, enc in encoders.items()}
        for r in range(rounds):  # alternating, so a burst of load from the other jobs hits both
            for name in (list(encoders) if r % 2 == 0 else list(encoders)[::-1]):
                rows[name]["ms_b1"].append(_ms(encoders[name].embed_images, pixels, 1, 3 if args.quick else 8))
                rows[name]["ms_b16"].append(_ms(encoders[name].embed_images, pixels, 16, 1 if args.quick else 2))
        for row in rows.values():
            row["ms_b1_median"] = statistics.median(row["ms_b1"])
            row["ms_b16_median"] = statistics.median(row["ms_b16"])
        base, ov_row = rows["onnxruntime fp32"], rows[f"openvino {precision}"]
        ratios = {"openvino_over_onnxruntime_ms_b1": ov_row["ms_b1_median"] / base["ms_b1_median"],
                  "openvino_over_onnxruntime_ms_b16": ov_row["ms_b16_median"] / base["ms_b16_median"]}
        del encoders
        e2e = end_to_end(model_dir, tmp, folder, files[1], runs)
    payload = {"model": "tiny" if args.quick else "ViT-B-32 (random weights)", "photos": len(files),
               "precision": precision, "threads": os.cpu_count(), "load_costs": loads,
               "load_costs_median": {k: statistics.median(v) for k, v in loads.items()}, "candidates": rows,
               "ratios": ratios, "query_image_new_photo": e2e,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    print(json.dumps(payload, indent=2))
    common.save("image-runtime-quick" if args.quick else "image-runtime", payload)


if __name__ == "__main__":
    main()
