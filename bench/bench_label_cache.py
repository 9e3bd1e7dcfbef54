"""The first `tag` run's label cache: 1,000 labels x 8 templates through the exported text tower.

    python bench/bench_label_cache.py [--quick] [--labels 1000] [--rounds 3] [--photos 240]

Three ways to embed the same label set, timed in the same run, interleaved, each round from a
fresh encoder (what a first `tag` run pays: loading, compiling, the bf16 self-check):
baseline = main's path (every prompt whole, batches sorted by token length), prefix fp32 = each
template's prefix computed once (prefix_tower.py, ONNX Runtime), prefix bf16 = the same graph on
OpenVINO in bf16 (only where the CPU has native bf16 and the `openvino` extra is installed).
Fidelity: each prompt's cosine to the baseline, each label's, and whether tags change: photos
(scikit-image's data photos and random crops, embedded by open_clip fp32) tagged as `Library.tag`
does (calibrated thresholds, the search vocabulary as background, top 5) with each label matrix.
Floors: the text tower's matrix FLOPs for the tokens each path runs, over a large product's rate
on every core in fp32 (numpy) and bf16 (torch), measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_image_tower
import bench_tagging
import common

from clipsearch.model import cpu, prefix_tower
from clipsearch.model.text_tower import FOLDER, OnnxTextEncoder
from clipsearch.tags import zero_shot


def exported(model_dir: Path, arch: str) -> Path:
    """The model's text tower exported (prefix graph included) into the bench cache, once."""
    import json

    from clipsearch.model import names, text_export
    from clipsearch.model.embedder import Embedder

    folder = common.CACHE / "label-cache" / arch
    meta = folder / FOLDER / "meta.json"
    if meta.exists() and json.loads(meta.read_text()).get("prefix"):
        return folder / FOLDER
    # The export's shared cache goes to the bench cache, not the user's; restored after (quick.py
    # runs every script in this process).
    before = os.environ.get("CLIPSEARCH_HOME")
    os.environ["CLIPSEARCH_HOME"] = str(common.CACHE / "label-cache" / "home")
    try:
        assert text_export.export(Embedder(names.parse(f"local-dir:{model_dir}"), "cpu", "fp32"), folder)
    finally:
        if before is None:
            del os.environ["CLIPSEARCH_HOME"]
        else:
            os.environ["CLIPSEARCH_HOME"] = before
    assert json.loads(meta.read_text()).get("prefix"), "the prefix graph was not kept"
    return folder / FOLDER


def rates() -> dict[str, float]:
    """GFLOP/s of a 2048^3 product on every core: fp32 (numpy) and bf16 (torch, oneDNN)."""
    import torch

    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    b = torch.from_numpy(a).bfloat16()
    out = {}
    for name, fn in (("fp32", lambda: a @ a), ("bf16", lambda: b @ b)):
        fn()
        best = min(_timed(fn) for _ in range(5))
        out[f"{name}_gflops"] = 2.0 * 2048 ** 3 / best / 1e9
    return out


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def photo_vectors(model_dir: Path, count: int, precision: str = "fp32") -> np.ndarray:
    """open_clip's vectors (in `precision`) of real photos and crops of them, decoded as indexing does."""
    from clipsearch.ingest import images
    from clipsearch.model import names
    from clipsearch.model.embedder import Embedder

    emb = Embedder(names.parse(f"local-dir:{model_dir}"), "cpu", precision)
    files = bench_image_tower.photos(common.CACHE / "label-cache" / "photos", max(1, count // 10))[:count]
    pixels = np.stack([images.decode(str(p), emb.preprocess).pixels for p in files])
    return np.concatenate([emb.embed_images(pixels[i:i + 32]) for i in range(0, len(pixels), 32)])


def tags_of(mat: np.ndarray, labels_mat: np.ndarray, background: np.ndarray) -> set[tuple[int, int]]:
    """(photo, label) pairs as `Library.tag` assigns them (workflow.tag: calibrated, top 5)."""
    cut = zero_shot.thresholds(mat, labels_mat, background=background)
    return {(row, k) for row, found in enumerate(zero_shot.assign(mat, labels_mat, cut, 5)) for k, _ in found}


def agreement(ref: set[tuple[int, int]], got: set[tuple[int, int]], photos: int) -> dict[str, float]:
    by_photo = [({k for r, k in ref if r == p}, {k for r, k in got if r == p}) for p in range(photos)]
    return {"pairs_ref": len(ref), "pairs_jaccard": len(ref & got) / max(1, len(ref | got)),
            "photos_identical": sum(a == b for a, b in by_photo) / photos}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny model, 50 labels, 1 round")
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--photos", type=int, default=240)
    args = ap.parse_args()
    arch, model_dir = ("tiny", common.TINY) if args.quick else ("ViT-B-32", common.random_model("ViT-B-32"))
    n, rounds = (50, 1) if args.quick else (args.labels, args.rounds)
    folder = exported(model_dir, arch)
    labels = bench_tagging.labels(1000)[:: max(1, 1000 // n)][:n]
    flat = [p for lab in labels for p in zero_shot.prompts_for(lab, zero_shot.PHOTO_TEMPLATES)]
    prefixes = prefix_tower.prefixes_of(zero_shot.PHOTO_TEMPLATES)
    plain = OnnxTextEncoder(folder)
    bf16 = cpu.has_native_bf16() and _has_openvino()
    paths = ["baseline", "prefix_fp32"] + (["prefix_bf16"] if bf16 else [])
    times: dict[str, list[float]] = {k: [] for k in paths}
    mats: dict[str, np.ndarray] = {}
    check: dict[str, float] = {}
    for _ in range(rounds):
        for name in paths:
            t = time.perf_counter()
            if name == "baseline":
                mats[name] = zero_shot.label_vectors(labels, zero_shot.PHOTO_TEMPLATES, plain.embed_texts,
                                                     plain.token_lengths)
            else:
                enc = prefix_tower.PrefixEncoder(folder, plain, plain.meta["prefix"])
                if name == "prefix_bf16":
                    check["bf16_self_check_cosine"] = enc.use_bf16(folder, plain.meta["prefix"])
                    assert enc.precision == "bf16", "bf16 failed its self-check"
                mats[name] = zero_shot.label_vectors(labels, zero_shot.PHOTO_TEMPLATES, plain.embed_texts,
                                                     plain.token_lengths, enc.embed_shared)
            times[name].append(time.perf_counter() - t)
            print(f"{name}: {times[name][-1]:.2f} s", flush=True)
    # Per prompt, on a sample of every template: each path's vectors against the plain tower's.
    sample = flat[:: max(1, len(flat) // 512)]
    ref = np.concatenate([plain.embed_texts(sample[i:i + 64]) for i in range(0, len(sample), 64)])
    prompt_cos: dict[str, float] = {}
    for name in paths[1:]:
        enc = prefix_tower.PrefixEncoder(folder, plain, plain.meta["prefix"])
        if name == "prefix_bf16":
            enc.use_bf16(folder, plain.meta["prefix"])
        prompt_cos[name] = float(np.min(np.sum(enc.embed_shared(sample, prefixes) * ref, axis=1)))
    tokens = int(plain.token_lengths(flat).sum())
    shared = {p: len(enc._prefix_tokens(p)) for p in prefixes}  # "" is the start token alone
    suffix = tokens - sum(shared[_prefix_of(q, prefixes)] for q in flat)
    width, layers = _text_size(model_dir)
    flop = 2.0 * 12 * width * width * layers
    got_rates = rates()
    from clipsearch.search import relevance

    vecs = photo_vectors(model_dir, max(args.photos, relevance.MIN_FOR_CUTOFF))

    background = plain.embed_texts(relevance.background_prompts([lab.name for lab in zero_shot.default_labels()]))
    base_tags = tags_of(vecs, mats["baseline"], background)
    # For scale: how much the photos' own bf16 vectors (what indexing stores on a CPU with native
    # bf16) move the same tags, with the fp32 labels.
    photos_bf16 = (agreement(base_tags, tags_of(photo_vectors(model_dir, len(vecs), "bf16"), mats["baseline"],
                                                background), len(vecs)) if bf16 else None)
    print(f"photos embedded in bf16, fp32 labels: tags {photos_bf16}", flush=True)
    rows: dict[str, Any] = {}
    for name in paths:
        med = float(np.median(times[name]))
        row: dict[str, Any] = {"median_s": med, "runs_s": times[name], "speedup": np.median(times["baseline"]) / med,
                               "label_min_cosine": float(np.min(np.sum(mats[name] * mats["baseline"], axis=1)))}
        if name != "baseline":
            row["prompt_min_cosine"] = prompt_cos[name]
            row["tags"] = agreement(base_tags, tags_of(vecs, mats[name], background), len(vecs))
        rows[name] = row
        print(f"{name}: {med:.2f} s median ({row['speedup']:.2f}x baseline), label cos {row['label_min_cosine']:.6f}"
              + (f", prompt cos {row['prompt_min_cosine']:.6f}, tags {row['tags']}" if "tags" in row else ""),
              flush=True)
    floors = {"fp32_all_tokens_s": flop * tokens / (got_rates["fp32_gflops"] * 1e9),
              "fp32_suffix_tokens_s": flop * suffix / (got_rates["fp32_gflops"] * 1e9),
              "bf16_suffix_tokens_s": flop * suffix / (got_rates["bf16_gflops"] * 1e9)}
    print(f"{len(flat)} prompts, {tokens} tokens, {suffix} after shared prefixes; rates {got_rates}; floors {floors}",
          flush=True)
    common.save("label-cache" + ("-quick" if args.quick else ""),
                {"labels": n, "prompts": len(flat), "tokens": tokens, "suffix_tokens": suffix, "rounds": rounds,
                 "photos": len(vecs), "paths": rows, "photos_bf16_tags": photos_bf16, **got_rates, **floors, **check,
                 "load": os.getloadavg()[0], "machine": common.machine()})


def _prefix_of(prompt: str, prefixes: list[str]) -> str:
    """The longest prefix string a prompt starts with (for counting tokens; the encoder checks tokens)."""
    return max((p for p in prefixes if prompt.startswith(p)), key=len, default="")


def _text_size(model_dir: Path) -> tuple[int, int]:
    import json

    cfg = json.loads((model_dir / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    return int(cfg["width"]), int(cfg["layers"])


def _has_openvino() -> bool:
    try:
        import clipsearch.model.openvino_tower  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
