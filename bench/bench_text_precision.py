"""Text tower precision on the query path: agreement with fp32 open_clip and cold-query cost (issue 15).

For a random-initialised ViT-B-32 (random weights rank as crowdedly as any: a hard case for
agreement) and the tiny trained model, the text tower is exported once at fp32 (text_model's own
export) and turned into each candidate: fp32, int8 dynamic per-tensor (what shipped before),
int8 dynamic per-channel, weight-only int8 and int4 (MatMulNBits, activations stay fp32), and
fp16-stored weights (a Cast to fp32 at load: ONNX Runtime has no fp16 CPU kernels for this graph).
Every candidate is saved pre-optimised with its weights in a memory-mapped file beside the graph,
as a query loads it; fp32 and int8 per-tensor also with the weights inside the graph (the layout
before issue 15), to show what the layout alone costs.

Per candidate: the cosine of each query's vector to plain open_clip fp32 `encode_text`, overlap@10
and top-1 agreement of the ranking over image vectors from the same model (real photos, crops and
flips), batch dependence (a query alone vs in batches of 50), file size, and the cold cost: a new
process that loads the encoder and embeds one new text, median of interleaved runs, as a ratio to
fp32 measured in the same run.

    python bench/bench_text_precision.py [--quick] [--images 300] [--cold-runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SUBJECTS = ["a dog", "my cat", "two kids", "a red car", "an old man", "a bride", "a birthday cake", "a horse",
            "a bicycle", "our tent", "a sailboat", "grandma", "a plate of pasta", "a snowman", "a coffee cup",
            "a black and white cat", "the eiffel tower", "a golden retriever puppy", "fireworks", "a laptop"]
PLACES = ["on the beach", "in the snow", "at night", "in the kitchen", "at sunset", "in the forest", "in the rain",
          "on a mountain", "at the park", "in a city street"]
FREE = ["receipts", "screenshot of a chat", "blurry photo", "a selfie", "whiteboard with notes", "passport",
        "my cute dog sleeping on the sofa", "lunch with friends at 12:30", "a 16:9 screenshot of a game",
        "Weihnachtsmarkt in München", "cerezos en flor", "東京タワー", "a menu in a restaurant", "sheet music",
        "a wedding group photo outside a church", "close-up of a flower with a bee", "aurora borealis",
        "a crowded train station", "handwritten letter", "x-ray of a hand", "a photo of a photo",
        "documents on a desk", "a rainbow over the hills", "kids playing football in the garden",
        "a long exposure of car lights on a highway at night with the city skyline behind", "IMG_0042",
        "a cat 🐈 on a windowsill", "sunrise", "a map", "graduation day"]


def queries(n: int) -> list[str]:
    """Realistic query texts: free-form ones, then subject + place combinations, `n` in all."""
    combos = [f"{s} {p}" for p in PLACES for s in SUBJECTS]
    rng = np.random.default_rng(15)
    out = FREE + [combos[i] for i in rng.permutation(len(combos))]
    return out[:n]


def build(arch: str, tmp: Path, n_images: int) -> tuple[Any, Any, np.ndarray]:
    """(fp32 model, tokenizer, normalised image vectors) for a random ViT-B-32 or the tiny model."""
    import open_clip
    import torch
    from PIL import Image, ImageOps

    from clipsearch.ingest import images
    from clipsearch.model.embedder import _preprocess_from

    torch.manual_seed(0)
    if arch == "tiny":
        name = f"local-dir:{common.TINY}"
        model = open_clip.create_model(name, weights_only=True)
        tok = open_clip.get_tokenizer(name)
    else:
        model = open_clip.create_model(arch)
        tok = open_clip.get_tokenizer(arch)
    model.eval()
    pre = _preprocess_from(model)
    rng = np.random.default_rng(1)
    photos = common.source_photos()
    if arch == "tiny":
        import shapes  # tests/fixtures: the tiny model knows coloured shapes

        photos += [Image.open(p).convert("RGB") for p, *_ in shapes.write_heldout(tmp / "shapes", 2, seed=7)]
    pix = []
    for i in range(n_images):
        crop = common.random_crop(photos[i % len(photos)], rng, 0.4)
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        pix.append(images._fit(crop, pre))
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    vecs = []
    with torch.inference_mode():
        for i in range(0, len(pix), 32):
            x = torch.from_numpy(np.stack(pix[i:i + 32])).permute(0, 3, 1, 2).float().div_(255)
            vecs.append(torch.nn.functional.normalize(model.encode_image((x - mean) / std), dim=-1).numpy())
    return model, tok, np.concatenate(vecs)


def variants(base: Path) -> dict[str, Path]:
    """A folder per candidate next to `base` (the fp32 export), each pre-optimised as export does."""
    import logging

    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from clipsearch.model import text_export

    logging.disable(logging.WARNING)
    out: dict[str, Path] = {}

    def folder(name: str) -> Path:
        d = base.parent / name
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(base, d)
        (d / "model.onnx").unlink()
        return d

    src = str(base / "model.onnx")
    for name, make in [
        ("fp32", lambda d: shutil.copyfile(src, d / "model.onnx")),
        ("int8-dynamic-tensor", lambda d: quantize_dynamic(src, str(d / "model.onnx"), weight_type=QuantType.QInt8)),
        ("int8-dynamic-channel", lambda d: quantize_dynamic(src, str(d / "model.onnx"), weight_type=QuantType.QInt8,
                                                            per_channel=True)),
        ("int8-weight-only-b32", lambda d: _nbits(src, d, 8, 32, MatMulNBitsQuantizer, DefaultWeightOnlyQuantConfig)),
        ("int8-weight-only-b128", lambda d: _nbits(src, d, 8, 128, MatMulNBitsQuantizer,
                                                   DefaultWeightOnlyQuantConfig)),
        ("int4-weight-only-b32", lambda d: _nbits(src, d, 4, 32, MatMulNBitsQuantizer, DefaultWeightOnlyQuantConfig)),
        ("fp16-weights", lambda d: _fp16_weights(src, d, onnx, helper, numpy_helper)),
    ]:
        d = folder(name)
        try:
            make(d)
            meta = json.loads((d / "meta.json").read_text())
            meta.update({"file": "model.onnx"})
            (d / "meta.json").write_text(json.dumps(meta))
            opt = text_export._preoptimize(d, "model.onnx")
            if opt:  # the same answers pre-optimised: that is what a query loads
                meta.update(opt)
                (d / "meta.json").write_text(json.dumps(meta))
            out[name] = d
            if name in ("fp32", "int8-dynamic-tensor"):
                out[name + "-inline"] = _inline(d, onnx)  # the weights inside the graph, as before issue 15
        except Exception as exc:  # noqa: BLE001 - a candidate ORT cannot run is reported, not fatal
            print(f"  {name}: not possible here ({type(exc).__name__}: {str(exc)[:160]})", flush=True)
    logging.disable(logging.NOTSET)
    return out


def _inline(d: Path, onnx: Any) -> Path:
    """A copy of candidate folder d with the weights inside the graph file (parsed and copied on load)."""
    inline = d.parent / (d.name + "-inline")
    shutil.rmtree(inline, ignore_errors=True)
    shutil.copytree(d, inline)
    meta = json.loads((inline / "meta.json").read_text())
    model = onnx.load(str(inline / meta["file"]))  # reads the external weights in
    (inline / (meta["file"] + ".data")).unlink(missing_ok=True)
    onnx.save_model(model, str(inline / meta["file"]), save_as_external_data=False)
    return inline


def _nbits(src: str, d: Path, bits: int, block: int, quantizer: Any, config: Any) -> None:
    q = quantizer(src, algo_config=config(block_size=block, is_symmetric=True, bits=bits))
    q.process()
    q.model.save_model_to_file(str(d / "model.onnx"), use_external_data_format=False)


def _fp16_weights(src: str, d: Path, onnx: Any, helper: Any, numpy_helper: Any) -> None:
    """Large fp32 initialisers stored as fp16 with a Cast back: half the bytes, fp32 arithmetic."""
    m = onnx.load(src)
    g = m.graph
    casts = []
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and np.prod(init.dims) >= 4096:
            arr = numpy_helper.to_array(init).astype(np.float16)
            name = init.name
            init.CopyFrom(numpy_helper.from_array(arr, name + "__fp16"))
            casts.append(helper.make_node("Cast", [name + "__fp16"], [name], to=onnx.TensorProto.FLOAT))
    for node in reversed(casts):
        g.node.insert(0, node)
    onnx.save(m, str(d / "model.onnx"))


def agreement(folder: Path, ref: np.ndarray, texts: list[str], imgs: np.ndarray) -> dict[str, float]:
    from clipsearch.model.text_tower import OnnxTextEncoder

    enc = OnnxTextEncoder(folder)
    alone = np.concatenate([enc.embed_texts([t]) for t in texts])
    batched = np.concatenate([enc.embed_texts(texts[i:i + 50]) for i in range(0, len(texts), 50)])
    cos = np.sum(alone * ref, axis=1)
    k = 10
    top_ref = np.argsort(-(imgs @ ref.T), axis=0)[:k].T
    top_got = np.argsort(-(imgs @ alone.T), axis=0)[:k].T
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_got, strict=True)]
    return {"cos_min": float(cos.min()), "cos_p1": float(np.percentile(cos, 1)), "cos_median": float(np.median(cos)),
            "overlap10_mean": float(np.mean(overlap)), "overlap10_min": float(np.min(overlap)),
            "top1": float(np.mean(top_ref[:, 0] == top_got[:, 0])),
            "batch_min_cos": float(np.min(np.sum(alone * batched, axis=1)))}


COLD = """
import sys, time
t0 = time.perf_counter()
from pathlib import Path
from clipsearch.model.text_tower import OnnxTextEncoder
enc = OnnxTextEncoder(Path(sys.argv[1]))
enc.embed_texts([sys.argv[2]])
print(time.perf_counter() - t0)
"""


def cold(folders: dict[str, Path], runs: int) -> dict[str, float]:
    """Median seconds from a fresh interpreter's first line to one encoded text, runs interleaved."""
    times: dict[str, list[float]] = {k: [] for k in folders}
    env = dict(os.environ)
    for r in range(runs):
        for name, d in folders.items():
            out = subprocess.run([sys.executable, "-c", COLD, str(d), f"a new query number {r}"], env=env,
                                 capture_output=True, text=True, check=True)
            times[name].append(float(out.stdout.strip().splitlines()[-1]))
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the tiny model only, fewer images and runs")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--cold-runs", type=int, default=7)
    args = ap.parse_args()
    sys.path.insert(0, str(common.ROOT.parent / "tests" / "fixtures"))
    import torch

    from clipsearch.model import text_export

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    texts = queries(args.queries)
    results: dict[str, Any] = {"queries": len(texts), "images": args.images, "machine": common.machine()}
    archs = ["tiny"] if args.quick else ["tiny", "ViT-B-32"]
    for arch in archs:
        tmp = Path(tempfile.mkdtemp(prefix=f"textprec-{arch}-"))
        try:
            t0 = time.perf_counter()
            model, tok, imgs = build(arch, tmp, args.images if not args.quick else 120)
            with torch.no_grad():
                ref = torch.nn.functional.normalize(model.encode_text(tok(texts)).float(), dim=-1).numpy()
            base = tmp / "export"
            base.mkdir()
            text_export._write_fp32(model, tok, base, {"weights_sha256": "bench", "model": arch})
            found = variants(base)
            print(f"{arch}: built and exported in {time.perf_counter() - t0:.0f} s", flush=True)
            rows = {}
            for name, d in found.items():
                row = agreement(d, ref, texts, imgs)
                meta = json.loads((d / "meta.json").read_text())
                row["graph_mb"] = sum(f.stat().st_size for f in d.glob(meta["file"] + "*")) / 1e6  # with .data
                rows[name] = row
            for name, sec in cold(found, 3 if args.quick else args.cold_runs).items():
                rows[name]["cold_s"] = sec
            base_cold = rows["fp32"]["cold_s"]
            for name, row in rows.items():
                row["cold_vs_fp32"] = row["cold_s"] / base_cold
                print(f"  {name:24s} cos min {row['cos_min']:.5f} p1 {row['cos_p1']:.5f} "
                      f"overlap@10 {row['overlap10_mean']:.3f} (min {row['overlap10_min']:.1f}) "
                      f"top1 {row['top1']:.3f} batch {row['batch_min_cos']:.5f} "
                      f"{row['graph_mb']:.0f} MB cold {row['cold_s']:.3f} s ({row['cold_vs_fp32']:.2f}x fp32)",
                      flush=True)
            results[arch] = rows
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    common.RESULTS.mkdir(exist_ok=True)
    out = common.RESULTS / ("text-precision-quick.json" if args.quick else "text-precision.json")
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
