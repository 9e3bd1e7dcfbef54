"""The exported image tower: export cost, precision candidates and `query --image` of a new photo (issue 22).

For a random-initialised ViT-B-32 (the tiny trained model with --quick): the image tower is
exported once (image_export.export, timed) and turned into candidates: fp32 (what ships) and int8
dynamic quantisation (ONNX Runtime); torch bf16 (what indexing runs where the CPU has bf16) is
measured beside them, since ONNX Runtime's x86 CPU provider has no bf16 matrix kernels. Per
candidate, on real photos (scikit-image's data images) and random crops of them, decoded as
indexing does: the cosine of each vector to open_clip fp32, overlap@10 of each photo's ranking
over the others' fp32 vectors (what a query sees: the index holds the stored vectors), and ms per
image at batch 1. Then end to end: `clipsearch query --image NEW` in a new process on a small
index of the same model, the torch path (no export) against the exported tower, interleaved runs,
with peak RSS.

    python bench/bench_image_tower.py [--quick] [--crops 6] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def photos(folder: Path, crops: int) -> list[Path]:
    """The data images and `crops` random crops of each, as JPEGs (quality 90)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(22)
    out = []
    for i, img in enumerate(common.source_photos()):
        for j in range(crops + 1):
            pic = img if j == 0 else common.random_crop(img, rng, 0.4)
            path = folder / f"p{i:02d}-{j}.jpg"
            pic.convert("RGB").save(path, quality=90)
            out.append(path)
    return out


def int8_variant(base: Path) -> Path:
    """int8 dynamic quantisation (per tensor) of the exported fp32 graph, in a folder of its own."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    d = base.parent / "int8"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    meta = json.loads((base / "meta.json").read_text())
    logging.disable(logging.WARNING)
    quantize_dynamic(str(base / meta["file"]), str(d / "model.onnx"), weight_type=QuantType.QInt8)
    logging.disable(logging.NOTSET)
    meta.update({"file": "model.onnx", "preoptimized": False})
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def ms_per_image(embed: Any, pixels: np.ndarray, reps: int) -> float:
    embed(pixels[:1])
    times = []
    for i in range(reps):
        t = time.perf_counter()
        embed(pixels[i % len(pixels):][:1])
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def agreement(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = np.sum(got * ref, axis=1)
    overlaps = []
    for i in range(len(ref)):
        want = [j for j in np.argsort(-(ref @ ref[i])) if j != i][:10]
        have = [j for j in np.argsort(-(ref @ got[i])) if j != i][:10]
        overlaps.append(len(set(want) & set(have)) / 10)
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "overlap10": float(np.mean(overlaps))}


def small_index(model_dir: Path, tmp: Path) -> tuple[dict[str, str], Path]:
    """An index of 12 phone photos with `model_dir`'s model and no exported towers, under `tmp`:
    the environment its commands run in, and its folder."""
    home = tmp / "home"
    common.make_photos(tmp / "indexed", 12, common.PHONE)
    env = {"CLIPSEARCH_HOME": str(home), "CLIPSEARCH_MODEL": f"local-dir:{model_dir}", "HF_HUB_OFFLINE": "1",
           "CLIPSEARCH_TEXT_MODEL": "off", "CLIPSEARCH_IMAGE_MODEL": "off"}
    common.run_cli(["index", str(tmp / "indexed")], env)
    return env, home / "index"


def end_to_end(model_dir: Path, tmp: Path, export_dir: Path, new_photo: Path, runs: int) -> dict[str, Any]:
    env, index = small_index(model_dir, tmp)
    args = ["query", "--image", str(new_photo), "--top", "5"]
    out: dict[str, list[float]] = {"torch_s": [], "onnx_s": [], "torch_rss_mb": [], "onnx_rss_mb": []}
    for _ in range(runs):
        for kind in ("torch", "onnx"):
            shutil.rmtree(index / "image-model", ignore_errors=True)
            if kind == "onnx":
                shutil.copytree(export_dir, index / "image-model")
            wall, proc = common.run_cli(args, env, peak_rss=True)
            out[f"{kind}_s"].append(wall)
            out[f"{kind}_rss_mb"].append(common.peak_rss_mb(proc))
    med = {k: statistics.median(v) for k, v in out.items()}
    return {**med, "runs": out, "onnx_over_torch": med["onnx_s"] / med["torch_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--crops", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import torch

    from clipsearch.ingest import images
    from clipsearch.model import image_export, image_tower, names
    from clipsearch.model.embedder import Embedder

    model_dir = common.TINY if args.quick else common.random_model("ViT-B-32")
    crops = 1 if args.quick else args.crops
    with tempfile.TemporaryDirectory(prefix="bench-image-tower-") as t:
        tmp = Path(t)
        files = photos(tmp / "photos", crops)
        spec = names.parse(f"local-dir:{model_dir}")
        fp32 = Embedder(spec, "cpu", "fp32", download=False)
        pre = fp32.preprocess
        pixels = np.stack([images.decode(str(p), pre).pixels for p in files])
        ref = np.concatenate([fp32.embed_images(pixels[i:i + 16]) for i in range(0, len(pixels), 16)])
        start = time.perf_counter()
        assert image_export.export(fp32, tmp / "idx")
        export_s = time.perf_counter() - start
        base = tmp / "idx" / image_tower.FOLDER
        reps = 5 if args.quick else 15
        rows: dict[str, dict[str, Any]] = {}
        torch_ms = ms_per_image(fp32.embed_images, pixels, reps)
        rows["torch fp32"] = {**agreement(ref, ref), "ms_per_image": torch_ms}
        for name, folder in (("onnx fp32", base), ("onnx int8 dynamic", int8_variant(base))):
            t0 = time.perf_counter()
            enc = image_tower.OnnxImageEncoder(folder)
            load = time.perf_counter() - t0
            got = enc.embed_images(pixels)
            rows[name] = {**agreement(got, ref), "ms_per_image": ms_per_image(enc.embed_images, pixels, reps),
                          "session_load_s": load}
        del fp32
        bf16 = Embedder(spec, "cpu", "bf16", download=False)
        got = np.concatenate([bf16.embed_images(pixels[i:i + 16]) for i in range(0, len(pixels), 16)])
        rows["torch bf16"] = {**agreement(got, ref), "ms_per_image": ms_per_image(bf16.embed_images, pixels, reps)}
        del bf16
        for row in rows.values():
            row["ms_over_torch_fp32"] = row["ms_per_image"] / torch_ms
        e2e = end_to_end(model_dir, tmp, base, files[1], 1 if args.quick else args.runs)
    payload = {"model": "tiny" if args.quick else "ViT-B-32 (random weights)", "photos": len(files),
               "torch_threads": torch.get_num_threads(), "export_s": export_s, "candidates": rows,
               "query_image_new_photo": e2e}
    print(json.dumps(payload, indent=2))
    common.save("image-tower-quick" if args.quick else "image-tower", payload)


if __name__ == "__main__":
    main()
