"""Indexing throughput: clipsearch against this machine's limit and against an rclip-style pipeline.

    python bench/bench_index.py [--quick]

The limit is computed in the same run: cores / (decode CPU-seconds per image + model CPU-seconds per
image), each measured alone on one thread. The rclip-style baseline reproduces the peer's pipeline:
a thread pool of min(16, cores) workers that hash each file (first 1 MB + last 1 KB), decode it at
full size with Pillow, resize bicubic and centre-crop, then an fp32 model at batch 8. Each pipeline
runs twice, interleaved, and its better run counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import common


def decode_cpu_per_image(paths: list[Path], pre: object) -> float:
    from clipsearch.ingest import images

    for p in paths[:2]:
        images.decode(str(p), pre)  # type: ignore[arg-type]
    start = time.process_time()
    for p in paths:
        images.decode(str(p), pre)  # type: ignore[arg-type]
    return (time.process_time() - start) / len(paths)


def model_cpu_per_image(model_dir: Path, n: int) -> tuple[float, str]:
    import torch

    from clipsearch.model import names
    from clipsearch.model.embedder import Embedder

    torch.set_num_threads(1)
    emb = Embedder(names.parse(f"local-dir:{model_dir}"), device="cpu")
    size = emb.preprocess.size
    batch = np.random.default_rng(0).integers(0, 255, size=(32, size, size, 3), dtype=np.uint8)
    emb.embed_images(batch)
    start = time.process_time()
    done = 0
    while done < n:
        emb.embed_images(batch)
        done += len(batch)
    torch.set_num_threads(os.cpu_count() or 1)
    return (time.process_time() - start) / done, emb.precision


def clipsearch_index(folder: Path, model_dir: Path, quick: bool) -> dict[str, float]:
    # A smoke run skips the one-time towers' export (seconds; it is not part of img/s anyway).
    env = {"CLIPSEARCH_TEXT_MODEL": "off", "CLIPSEARCH_IMAGE_MODEL": "off"} if quick else None
    with tempfile.TemporaryDirectory() as tmp:
        wall, proc = common.run_cli(["index", str(folder), "--index", tmp, "--model", f"local-dir:{model_dir}",
                                     "--json"], env=env, peak_rss=True)
        common.wait_for_exports(Path(tmp))  # the text tower's, in the background: not in this run's figures
    summary = json.loads(proc.stdout)
    return {"wall_s": wall, "images_per_second": summary["images_per_second"],
            "model_load_s": summary["model_load_seconds"], "embedded": summary["embedded"],
            "peak_rss_mb": common.peak_rss_mb(proc)}


def rclip_style(paths: list[Path], model_dir: Path) -> float:
    """The peer's pipeline, faithfully: full decode in a thread pool, fp32, batch 8."""
    import open_clip
    import torch

    model = open_clip.create_model(f"local-dir:{model_dir}")
    model.eval()
    size = model.visual.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    mean = np.asarray(open_clip.OPENAI_DATASET_MEAN, dtype=np.float32)
    std = np.asarray(open_clip.OPENAI_DATASET_STD, dtype=np.float32)

    def load(path: Path) -> np.ndarray:
        with open(path, "rb") as f:
            h = hashlib.sha256(f.read(1 << 20))
            f.seek(-1024, os.SEEK_END)
            h.update(f.read())
        img = Image.open(path).convert("RGB")  # full-size decode, EXIF orientation ignored
        w, h2 = img.size
        scale = size / min(w, h2)
        img = img.resize((max(size, round(w * scale)), max(size, round(h2 * scale))), Image.Resampling.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
        return ((arr - mean) / std).transpose(2, 0, 1)

    start = time.perf_counter()
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool, torch.inference_mode():
        batch: list[np.ndarray] = []
        for arr in pool.map(load, paths):
            batch.append(arr)
            if len(batch) == 8:
                model.encode_image(torch.from_numpy(np.stack(batch)))
                batch = []
        if batch:
            model.encode_image(torch.from_numpy(np.stack(batch)))
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and the tiny model: checks the script runs")
    args = ap.parse_args()
    n_camera, n_phone, n_baseline = (4, 8, 4) if args.quick else (240, 400, 96)
    sets = {"12 MP camera": (common.CAMERA, n_camera), "phone 1600x1200": (common.PHONE, n_phone)}
    if args.quick:  # one size exercises every code path; a second costs another model-loading process
        del sets["12 MP camera"]
    rows = []
    from clipsearch.model import names
    from clipsearch.model.embedder import Embedder

    for arch in (["tiny"] if args.quick else ["ViT-B-32", "ViT-B-32-256"]):
        model_dir = common.TINY if args.quick else common.random_model(arch)
        pre = Embedder(names.parse(f"local-dir:{model_dir}"), device="cpu").preprocess
        model_s, precision = model_cpu_per_image(model_dir, 32 if args.quick else 320)
        for label, (size, count) in sets.items():
            folder = common.CACHE / "photos" / f"{size[0]}x{size[1]}-{count}"
            paths = common.make_photos(folder, count, size)
            decode_s = decode_cpu_per_image(paths[: min(40, count)], pre)
            cores = os.cpu_count() or 1
            limit = cores / (decode_s + model_s)
            # Best of two for each pipeline, runs interleaved: on a shared machine one slow run says
            # more about the neighbours than about the code.
            tries = 1 if args.quick else 2
            ours_runs, base_runs = [], []
            for _ in range(tries):
                ours_runs.append(clipsearch_index(folder, model_dir, args.quick))
                base_runs.append(rclip_style(paths[:n_baseline], model_dir))
            ours = max(ours_runs, key=lambda r: r["images_per_second"])
            base = max(base_runs)
            row = {"model": arch, "set": label, "images": count, "precision": precision,
                   "decode_ms": decode_s * 1000, "model_ms": model_s * 1000, "limit_img_s": limit,
                   "clipsearch_img_s": ours["images_per_second"], "clipsearch_wall_s": ours["wall_s"],
                   "model_load_s": ours["model_load_s"], "peak_rss_mb": ours["peak_rss_mb"],
                   "rclip_style_img_s": base,
                   "ratio_to_limit": ours["images_per_second"] / limit,
                   "ratio_to_rclip_style": ours["images_per_second"] / base}
            rows.append(row)
            print(f"{arch:13} {label:16} decode {row['decode_ms']:6.1f} ms  model {row['model_ms']:5.1f} ms  "
                  f"limit {limit:6.1f}  clipsearch {row['clipsearch_img_s']:6.1f} img/s "
                  f"({row['ratio_to_limit']:.2f} of limit)  rclip-style {base:5.1f} img/s "
                  f"(x{row['ratio_to_rclip_style']:.1f})", flush=True)
    print(f"results: {common.save('index' + ('-quick' if args.quick else ''), {'rows': rows})}")


if __name__ == "__main__":
    main()
