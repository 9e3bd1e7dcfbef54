"""The first `tag` run's label cache: 1,000 labels x 8 templates through the exported text tower.

    python bench/bench_label_cache.py [--quick] [--labels 1000] [--rounds 3] [--photos 240] [--baseline TREE]
                                      [--prepared]

The label vectors of the same label set, embedded the ways to compare, each in its own process,
interleaved round by round (the machine's load moves; read the per-round ratios):
prefix bf16 = each template's prefix computed once (prefix_tower.py) and the rest in bf16 on
OpenVINO (only where the CPU has native bf16 and the `openvino` extra is installed), prefix fp32 =
the same on ONNX Runtime. With --baseline, a checkout of the code to compare with (main) runs the
same paths on its own export. Each process starts with an empty cache (what a first `tag` run on
a machine pays: loading, compiling, the bf16 self-check), then runs the path a second time in the
same process (a later run: OpenVINO's compiled model and the self-check's verdict cached).
--prepared adds a first run in a process whose cache the background exporter's last step
(prefix_tower.prepare) filled first: what a `tag` right after `index` pays.
Fidelity: each prompt's cosine to the plain tower, each label's to the fp32 path's, and whether tags
change: photos (scikit-image's data photos and random crops, embedded by open_clip fp32) tagged as
`Library.tag` does (calibrated thresholds, the search vocabulary as background, top 5).
Floors: the text tower's matrix FLOPs for the tokens each path runs, over a large product's rate
on every core in fp32 (numpy) and bf16 (torch), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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

HERE = Path(__file__).resolve().parent.parent


def exported(model_dir: Path, arch: str, tree: Path = HERE, name: str = "label-cache") -> Path:
    """The model's text tower exported (prefix graph included) into the bench cache, once, by the
    code in `tree` (in a process of its own when that is not this checkout)."""
    folder = common.CACHE / name / arch
    meta = folder / FOLDER / "meta.json"
    if tree != HERE:
        if not _current(meta, None):
            code = (f"import sys; sys.path.insert(0, {str(HERE / 'bench')!r}); import bench_label_cache as b; "
                    f"from pathlib import Path; b.exported(Path({str(model_dir)!r}), {arch!r}, name={name!r})")
            subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
        return folder / FOLDER
    from clipsearch.model import names, prefix_export, text_export
    from clipsearch.model.embedder import Embedder

    graph = getattr(prefix_export, "GRAPH", None)  # a baseline checkout's export may predate it
    if _current(meta, graph):
        return folder / FOLDER
    # The export's shared cache goes to the bench cache, not the user's (and never hands back an
    # export of an older graph); restored after (quick.py runs every script in this process).
    home = common.CACHE / name / "home"
    import shutil

    shutil.rmtree(home, ignore_errors=True)
    before = os.environ.get("CLIPSEARCH_HOME")
    os.environ["CLIPSEARCH_HOME"] = str(home)
    try:
        assert text_export.export(Embedder(names.parse(f"local-dir:{model_dir}"), "cpu", "fp32"), folder)
    finally:
        if before is None:
            del os.environ["CLIPSEARCH_HOME"]
        else:
            os.environ["CLIPSEARCH_HOME"] = before
    assert _current(meta, graph), "the prefix graph was not kept"
    return folder / FOLDER


def _current(meta: Path, graph: int | None) -> bool:
    prefix = json.loads(meta.read_text()).get("prefix") if meta.exists() else None
    return bool(prefix) and (graph is None or prefix.get("graph") == graph)


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


def _labels(n: int) -> list[zero_shot.Label]:
    return bench_tagging.labels(1000)[:: max(1, 1000 // n)][:n]


def _sample(flat: list[str]) -> list[str]:
    return flat[:: max(1, len(flat) // 512)]  # prompts of every template, for the per-prompt check


def child(spec: dict[str, Any]) -> None:
    """One path in this process (PYTHONPATH: the tree it measures): a first run, then a second."""
    folder, labels = Path(spec["folder"]), _labels(int(spec["labels"]))
    plain = OnnxTextEncoder(folder)
    got: dict[str, Any] = {}
    for run in ("first", "again") if spec["precision"] == "bf16" else ("first",):  # fp32 caches nothing
        start = time.perf_counter()
        enc = prefix_tower.PrefixEncoder(folder, plain, plain.meta["prefix"])
        if spec["precision"] == "bf16":
            got["check_cosine"] = enc.use_bf16(folder, plain.meta["prefix"])
            assert enc.precision == "bf16", "bf16 failed its self-check"
        mat = zero_shot.label_vectors(labels, zero_shot.PHOTO_TEMPLATES, plain.embed_texts, plain.token_lengths,
                                      enc.embed_shared)
        got[f"{run}_s"] = time.perf_counter() - start
    flat = [p for lab in labels for p in zero_shot.prompts_for(lab, zero_shot.PHOTO_TEMPLATES)]
    np.save(spec["out"], mat)
    prefixes = prefix_tower.prefixes_of(zero_shot.PHOTO_TEMPLATES)
    np.save(spec["out"] + ".sample.npy", enc.embed_shared(_sample(flat), prefixes))
    print(json.dumps({**got, "load": os.getloadavg()[0]}), flush=True)


def run_child(tree: Path, folder: Path, precision: str, labels: int, out: Path) -> dict[str, Any]:
    prepared = precision == "bf16-prepared"  # the bf16 path, on what the background exporter leaves
    spec = json.dumps({"folder": str(folder), "precision": "bf16" if prepared else precision, "labels": labels,
                       "out": str(out)})
    with tempfile.TemporaryDirectory() as home:  # an empty cache: no compiled model, no verdict
        env = {**os.environ, "PYTHONPATH": str(tree), "CLIPSEARCH_HOME": home}
        if prepared:
            code = ("from pathlib import Path; from clipsearch.model import prefix_tower; "
                    f"prefix_tower.prepare(Path({str(folder)!r}))")
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec], env=env,
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree} {precision}: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny model, 50 labels, 1 round")
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--photos", type=int, default=240)
    ap.add_argument("--baseline", type=Path, help="a checkout to compare with (its own export, same paths)")
    ap.add_argument("--prepared", action="store_true",
                    help="also a first run after the background exporter prepared bf16 (compiled, checked)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    arch, model_dir = ("tiny", common.TINY) if args.quick else ("ViT-B-32", common.random_model("ViT-B-32"))
    n, rounds = (50, 1) if args.quick else (args.labels, args.rounds)
    trees = {"now": HERE} | ({"before": args.baseline.resolve()} if args.baseline else {})
    folders = {k: exported(model_dir, arch, tree, "label-cache" if k == "now" else "label-cache-baseline")
               for k, tree in trees.items()}
    bf16 = cpu.has_native_bf16() and _has_openvino()
    paths = [f"{k} {p}" for p in (["bf16"] if bf16 else []) + ["fp32"] for k in sorted(trees)]
    if bf16 and args.prepared:
        paths.insert(paths.index("now bf16") + 1, "now bf16-prepared")
    work = Path(tempfile.mkdtemp())
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in paths}
    out = {k: work / f"{k.replace(' ', '_')}.npy" for k in paths}
    for r in range(rounds):
        for name in paths:
            tree, precision = name.split()
            runs[name].append(run_child(trees[tree], folders[tree], precision, n, out[name]))
            print(f"round {r + 1} {name}: {runs[name][-1]}", flush=True)
    mats = {k: np.load(out[k]) for k in paths}
    ref_name = "before fp32" if "before" in trees else "now fp32"  # exact: the plain tower's vectors
    labels = _labels(n)
    flat = [p for lab in labels for p in zero_shot.prompts_for(lab, zero_shot.PHOTO_TEMPLATES)]
    plain = OnnxTextEncoder(folders["now"])
    sample = _sample(flat)
    ref = np.concatenate([plain.embed_texts(sample[i:i + 64]) for i in range(0, len(sample), 64)])
    got_rates = rates()
    from clipsearch.search import relevance

    vecs = photo_vectors(model_dir, max(args.photos, relevance.MIN_FOR_CUTOFF))
    background = plain.embed_texts(relevance.background_prompts([lab.name for lab in zero_shot.default_labels()]))
    base_tags = tags_of(vecs, mats[ref_name], background)
    # For scale: how much the photos' own bf16 vectors (what indexing stores on a CPU with native
    # bf16) move the same tags, with the fp32 labels.
    photos_bf16 = (agreement(base_tags, tags_of(photo_vectors(model_dir, len(vecs), "bf16"), mats[ref_name],
                                                background), len(vecs)) if bf16 else None)
    rows: dict[str, Any] = {}
    for name in paths:
        first = [x["first_s"] for x in runs[name]]
        rows[name] = {"first_s": first, "again_s": [x.get("again_s") for x in runs[name]],
                      "load": [x["load"] for x in runs[name]], "median_first_s": float(np.median(first)),
                      "check_cosine": runs[name][0].get("check_cosine"),
                      "label_min_cosine": float(np.min(np.sum(mats[name] * mats[ref_name], axis=1))),
                      "prompt_min_cosine": float(np.min(np.sum(np.load(f"{out[name]}.sample.npy") * ref, axis=1))),
                      "tags": agreement(base_tags, tags_of(vecs, mats[name], background), len(vecs))}
        print(f"{name}: first {rows[name]['first_s']}, again {rows[name]['again_s']}, label cos "
              f"{rows[name]['label_min_cosine']:.6f}, prompt cos {rows[name]['prompt_min_cosine']:.6f}, "
              f"tags {rows[name]['tags']}", flush=True)
    # Each pair's per-round ratio, slower path over faster: the baseline over now, and the empty
    # cache over the prepared one.
    pairs = [(f"before {p}", f"now {p}") for p in ("bf16", "fp32")] + [("now bf16", "now bf16-prepared")]
    for slow, fast in pairs:
        if slow in rows and fast in rows:
            ratios = [b / a for b, a in zip(rows[slow]["first_s"], rows[fast]["first_s"], strict=True)]
            rows[fast]["per_round_ratio"] = ratios
            print(f"{slow} / {fast}, per round: {[round(x, 2) for x in ratios]}", flush=True)
    floors = _floors(plain, flat, model_dir, got_rates)
    print(f"photos embedded in bf16, fp32 labels: tags {photos_bf16}; rates {got_rates}; {floors}", flush=True)
    common.save("label-cache" + ("-quick" if args.quick else ""),
                {"labels": n, "prompts": len(flat), "rounds": rounds, "photos": len(vecs), "paths": rows,
                 "reference": ref_name, "photos_bf16_tags": photos_bf16, **got_rates, **floors,
                 "machine": common.machine()})


def _floors(plain: OnnxTextEncoder, flat: list[str], model_dir: Path, got: dict[str, float]) -> dict[str, Any]:
    """Each path's matrix FLOPs over the measured rates. Graph 1 runs every suffix token through every
    layer; graph 2 runs the last layer's queries, output projection and MLP for the end token alone."""
    prefixes = prefix_tower.prefixes_of(zero_shot.PHOTO_TEMPLATES)
    enc = prefix_tower.PrefixEncoder(plain.folder, plain, plain.meta["prefix"])
    shared = {p: len(enc._prefix_tokens(p)) for p in prefixes}  # "" is the start token alone
    lengths = plain.token_lengths(flat)
    suffixes = np.asarray([int(t) - shared[_prefix_of(q, prefixes)] for q, t in zip(flat, lengths, strict=True)])
    width, layers = _text_size(model_dir)
    per_token = 2.0 * 12 * width * width  # QKV 3w^2, output w^2, MLP 8w^2 multiply-adds per layer
    graph1 = float(per_token * layers * suffixes.sum())
    # The last layer: every token's keys and values (2w^2), the end token's query, output and MLP (10w^2).
    last = 2.0 * width * width * (2 * suffixes.sum() + 10 * len(flat))
    graph2 = float(per_token * (layers - 1) * suffixes.sum() + last)
    tokens = int(lengths.sum())
    return {"tokens": tokens, "suffix_tokens": int(suffixes.sum()),
            "fp32_all_tokens_s": per_token * layers * tokens / (got["fp32_gflops"] * 1e9),
            "fp32_suffix_tokens_s": graph1 / (got["fp32_gflops"] * 1e9),
            "bf16_suffix_tokens_s": graph1 / (got["bf16_gflops"] * 1e9),
            "bf16_graph2_s": graph2 / (got["bf16_gflops"] * 1e9),
            "fp32_graph2_s": graph2 / (got["fp32_gflops"] * 1e9)}


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
