"""Fixed costs of `index`: model load, the one-time text-tower export, peak memory (issue 22).

    python bench/bench_lean_index.py --baseline /path/to/an/older/checkout [--rounds 2] [--quick]

Each scenario runs `clipsearch index` in a fresh process for this tree and for the baseline tree
(the same command with PYTHONPATH pointing at the other checkout), alternating, in the same run;
the report gives each figure as this tree / baseline. Peak RSS is the child's own maximum resident
set (getrusage RUSAGE_CHILDREN, read by a wrapper process that runs nothing else), not an estimate.
The model is ViT-B-32 with random weights in the local-dir layout (common.random_model); every
round starts with an empty CLIPSEARCH_HOME, so the text-tower cache starts empty too.

Scenarios, in order, in one home: the first index of 1 photo (loads the model and exports the
text tower), a second index of the same weights (the export cache's case), an index run with 1 new
photo (model load only), an index run with nothing new (no model at all).

Where a tree exports in the background (clipsearch/model/background_export.py), `clipsearch index`
returns first and leaves a detached exporter: after each command the script waits for it
(common.wait_for_exports: polls its marker, reads its VmHWM from /proc) and reports, apart, when
the text tower landed, when the exporter finished (text, then image tower) and its peak RSS, and
"until text queries are torch-free" = the command's wall + the wait for the text tower. A tree that
exports inline has all of it inside the command (0 s after it).

`--large N` (bench/results/lean-index-large.json) measures instead the first index of N phone
photos where OpenVINO is absent (`CLIPSEARCH_IMAGE_RUNTIME=onnxruntime`: the same choice as a
machine without the `openvino` extra), so a bf16 CPU takes torch above the ONNX Runtime crossover:
the baseline tree, this tree, and this tree with the exported tower forced onto ONNX Runtime fp32
(bench_onnx_index's wrapper, FORCE_TOWER=1: the crossover lifted), alternating in each round. Peak
RSS is the `clipsearch` process's own (the wrapper's RUSAGE_CHILDREN); the background exporter it
leaves is a detached process whose RSS that does not include: it is waited for and its own VmHWM
reported apart. Then, per tree, where the index embedder's memory goes (bench/index_memory.py, a
fresh process each): resident after importing torch, after loading what the tree's index run embeds
with, after 4 batches of 32, by kind of mapping (CUDA's libraries, torch's own, other files, the
malloc heap, other anonymous memory) and malloc's free-but-kept bytes.
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

sys.path.insert(0, str(Path(__file__).parent))
import common

HERE = Path(__file__).resolve().parent.parent
# Runs `clipsearch ARGS` as a child and prints the child's peak RSS (kB) last on stderr.
WRAPPER = ("import resource, subprocess, sys\n"
           "rc = subprocess.run([sys.executable, '-m', 'clipsearch', *sys.argv[1:]]).returncode\n"
           "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(rc)\n")
SCENARIOS = ("first index, 1 photo", "second index, same weights", "1 new photo", "nothing new")
KEYS = ("wall_s", "peak_rss_mb", "model_load_s", "text_ready_s", "exports_done_s", "exporter_peak_rss_mb",
        "text_ready_wall_s")


def run(tree: Path, args: list[str], home: Path, wrapper: str = WRAPPER,
        extra: dict[str, str] | None = None) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "CLIPSEARCH_HOME": str(home), "CLIPSEARCH_TEXT_MODEL": "on",
           "HF_HUB_OFFLINE": "1", **(extra or {})}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *args, "--json"], capture_output=True, text=True,
                          env=env, check=False, cwd=home)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: clipsearch {' '.join(args)} failed: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    index = Path(args[args.index("--index") + 1])
    # A tree that exports in the background (background_export.py) has left an exporter running:
    # timed apart, and waited for, so it never shares the cores with the next scenario.
    exports = common.wait_for_exports(index)
    return {"wall_s": wall, "peak_rss_mb": common.peak_rss_mb(proc),
            "model_load_s": float(summary.get("model_load_seconds", 0.0)), "embedded": summary["embedded"],
            "images_per_s": float(summary.get("images_per_second", 0.0)), "embedded_with": summary.get("embedded_with"),
            **exports, "text_ready_wall_s": wall + exports["text_ready_s"]}


# Where an Embedder's construction goes, in a fresh process: importing torch and open_clip, then
# the rest (building the model, reading and casting its weights; the sha256 is cached by then).
SPLIT = ("import json, sys, time\n"
         "t0 = time.perf_counter()\n"
         "from clipsearch.model import embedder, names\n"
         "embedder._load_torch(); import open_clip\n"
         "t1 = time.perf_counter()\n"
         "embedder.Embedder(names.parse(sys.argv[1]), 'cpu')\n"
         "t2 = time.perf_counter()\n"
         "import resource\n"
         "print(json.dumps({'imports_s': t1 - t0, 'weights_s': t2 - t1,\n"
         "                  'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")


def load_split(tree: Path, model: str, home: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "CLIPSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", SPLIT, model], capture_output=True, text=True, env=env, check=True,
                          cwd=home)  # not this folder: python -c would import the clipsearch here
    return {k: float(v) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


def breakdown(tree: Path, model: str, home: Path) -> dict[str, Any]:
    """Where the memory of `tree`'s index embedder goes (bench/index_memory.py, run on that tree)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "CLIPSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "bench" / "index_memory.py"), model], capture_output=True,
                          text=True, env=env, check=True, cwd=home)
    return dict(json.loads(proc.stdout.splitlines()[-1]))


LARGE_KEYS = ("wall_s", "peak_rss_mb", "model_load_s", "images_per_s", "exports_done_s", "exporter_peak_rss_mb")


def large(trees: dict[str, Path], model: str, count: int, rounds: int, quick: bool) -> None:
    """The first index of `count` photos without OpenVINO (module docstring, `--large`)."""
    import bench_onnx_index

    photos = common.make_photos(common.CACHE / "photos" / f"1600x1200-{count}", count, common.PHONE)
    hidden = {"CLIPSEARCH_IMAGE_RUNTIME": "onnxruntime"}  # OpenVINO absent, as without the extra
    paths = {"baseline": (trees["baseline"], hidden), "this": (trees["this"], hidden),
             "this, ONNX Runtime fp32 forced": (trees["this"], {**hidden, "FORCE_TOWER": "1"})}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in paths}
    for r in range(rounds):
        order = list(paths) if r % 2 == 0 else list(reversed(paths))  # who goes first alternates
        for name in order:
            tree, extra = paths[name]
            with tempfile.TemporaryDirectory() as tmp:
                home = Path(tmp)
                got = run(tree, ["index", str(photos[0].parent), "--index", str(home / "i"), "--model", model], home,
                          bench_onnx_index.WRAPPER, extra)
            runs[name].append(got)
            print(f"round {r + 1} {name:32} {got['embedded_with']:17} wall {got['wall_s']:6.1f} s  peak RSS "
                  f"{got['peak_rss_mb']:5.0f} MB  load {got['model_load_s']:4.1f} s  {got['images_per_s']:5.2f} "
                  f"img/s; exporter after it {got['exports_done_s']:5.1f} s, its peak RSS "
                  f"{got['exporter_peak_rss_mb']:5.0f} MB", flush=True)
    best = {name: {k: (min if k != "images_per_s" else max)(x[k] for x in rs) for k in LARGE_KEYS}
            for name, rs in runs.items()}
    per_round = {name: [x["wall_s"] / b["wall_s"] for x, b in zip(rs, runs["baseline"], strict=True)]
                 for name, rs in runs.items()}
    for name, b in best.items():
        print(f"{name:32} best wall {b['wall_s']:6.1f} s (x{b['wall_s'] / best['baseline']['wall_s']:.2f}; per round "
              f"{', '.join(f'{x:.2f}' for x in per_round[name])})  peak RSS {b['peak_rss_mb']:5.0f} MB "
              f"(x{b['peak_rss_mb'] / best['baseline']['peak_rss_mb']:.2f})", flush=True)
    splits: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(2):
            for name in splits:
                splits[name].append(breakdown(trees[name], model, Path(tmp)))
    for name, rs in splits.items():
        last = rs[-1]
        print(f"{name}: {last['embedder']} ({last['runtime']}), imports {last['imported']}; RSS MB after torch "
              f"{last['torch']['VmRSS']:.0f}, loaded {last['loaded']['VmRSS']:.0f}, embedding peak "
              f"{last['embedded']['VmHWM']:.0f}; load {min(r['load_s'] for r in rs):.2f} s, "
              f"{min(r['ms_per_photo'] for r in rs):.1f} ms/photo", flush=True)
        print(f"    by kind when loaded: {', '.join(f'{k} {v:.0f}' for k, v in last['loaded']['kinds'].items())}; "
              f"malloc free but kept after embedding {last['embedded']['malloc_free_kept_mb']:.0f} MB", flush=True)
    payload = {"model": model, "photos": count, "runs": runs, "best": best, "wall_ratio_per_round": per_round,
               "breakdown": splits}
    print(f"results: {common.save('lean-index-large' + ('-quick' if quick else ''), payload)}")


def round_for(tree: Path, model: str, photos: list[Path], work: Path) -> dict[str, dict[str, float]]:
    home = work / "home"
    folder = work / "photos"
    home.mkdir(parents=True)
    folder.mkdir(parents=True)
    shutil.copy(photos[0], folder / photos[0].name)
    out = {SCENARIOS[0]: run(tree, ["index", str(folder), "--index", str(home / "a"), "--model", model], home)}
    out[SCENARIOS[1]] = run(tree, ["index", str(folder), "--index", str(home / "b"), "--model", model], home)
    shutil.copy(photos[1], folder / photos[1].name)
    out[SCENARIOS[2]] = run(tree, ["index", str(folder), "--index", str(home / "a")], home)
    out[SCENARIOS[3]] = run(tree, ["index", str(folder), "--index", str(home / "a")], home)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare against")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="the tiny model, one round: checks the script runs")
    ap.add_argument("--only-load", action="store_true", help="only the model-load split (imports vs weights)")
    ap.add_argument("--no-load-split", action="store_true", help="skip the model-load split (the index runs only)")
    ap.add_argument("--large", type=int, default=0, metavar="N",
                    help="instead: the first index of N photos without OpenVINO, and where its memory goes")
    args = ap.parse_args()
    model_dir = common.TINY if args.quick else common.random_model("ViT-B-32")
    model = f"local-dir:{model_dir}"
    if args.large:
        large({"baseline": args.baseline.resolve(), "this": HERE}, model, args.large, args.rounds, args.quick)
        return
    photos = common.make_photos(common.CACHE / "photos" / "1600x1200-2", 2, common.PHONE)
    trees = {"baseline": args.baseline.resolve(), "this": HERE}
    splits: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(0 if args.no_load_split else 1 if args.quick else 3):
            for name, tree in trees.items():
                splits[name].append(load_split(tree, model, Path(tmp)))
    best_split = {name: {k: min(r[k] for r in rs) for k in rs[0]} for name, rs in splits.items() if rs}
    for key in ("imports_s", "weights_s", "rss_mb") if best_split else ():
        b, t = best_split["baseline"][key], best_split["this"][key]
        print(f"Embedder() {key:10} {b:7.2f} -> {t:7.2f} (x{t / b:.2f})", flush=True)
    if args.only_load:
        print(f"results: {common.save('lean-load', {'model': model_dir.name, 'split': best_split, 'runs': splits})}")
        return
    runs: dict[str, list[dict[str, dict[str, float]]]] = {k: [] for k in trees}
    for _ in range(1 if args.quick else args.rounds):
        for name, tree in trees.items():  # alternating: neighbours' load hits both alike
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(round_for(tree, model, photos, Path(tmp)))
    rows = []
    for scenario in SCENARIOS:
        best = {name: {k: min(r[scenario][k] for r in rs) for k in KEYS} for name, rs in runs.items()}
        row = {"scenario": scenario, **{f"{name}_{k}": v for name, b in best.items() for k, v in b.items()},
               "wall_ratio": best["this"]["wall_s"] / best["baseline"]["wall_s"],
               "rss_ratio": best["this"]["peak_rss_mb"] / best["baseline"]["peak_rss_mb"]}
        rows.append(row)
        print(f"{scenario:28} wall {best['baseline']['wall_s']:6.2f} -> {best['this']['wall_s']:6.2f} s "
              f"(x{row['wall_ratio']:.2f})  model load {best['baseline']['model_load_s']:5.2f} -> "
              f"{best['this']['model_load_s']:5.2f} s  peak RSS {best['baseline']['peak_rss_mb']:6.0f} -> "
              f"{best['this']['peak_rss_mb']:6.0f} MB (x{row['rss_ratio']:.2f})", flush=True)
        b, t = best["baseline"], best["this"]
        if max(b["exports_done_s"], t["exports_done_s"]) > 0.5:  # an exporter ran after the command
            row["text_ready_ratio"] = t["text_ready_wall_s"] / b["text_ready_wall_s"]
            print(f"{'':28} until text queries are torch-free {b['text_ready_wall_s']:6.2f} -> "
                  f"{t['text_ready_wall_s']:6.2f} s (x{row['text_ready_ratio']:.2f}); background exporter: "
                  f"text tower after {b['text_ready_s']:5.1f} -> {t['text_ready_s']:5.1f} s, all done after "
                  f"{b['exports_done_s']:5.1f} -> {t['exports_done_s']:5.1f} s, peak RSS "
                  f"{b['exporter_peak_rss_mb']:5.0f} -> {t['exporter_peak_rss_mb']:5.0f} MB", flush=True)
    name = "lean-index" + ("-quick" if args.quick else "")
    payload = {"model": "tiny" if args.quick else "ViT-B-32", "rows": rows, "runs": runs, "load_split": best_split}
    print(f"results: {common.save(name, payload)}")


if __name__ == "__main__":
    main()
