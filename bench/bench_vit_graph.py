"""The first `index` of a ViT model: torch against the graph built without it (issue 22).

    PYTHONPATH=. python bench/bench_vit_graph.py --baseline /path/to/main [--photos 120] [--rounds 2] [--force]

The first `clipsearch index` of N phone photos (1600x1200) with ViT-B-32 and random weights
(common.random_model, local-dir layout) into a new index, with an empty CLIPSEARCH_HOME: no text or
image tower exported anywhere yet. **Before** is the baseline tree (main: torch, bf16 on a CPU with
native bf16), **after** this tree (model/vit_graph.py builds the image tower as ONNX from the
weights, ONNX Runtime fp32 embeds). The trees alternate, every figure is also a ratio to the
same round's baseline, and the best of the rounds is reported. Peak RSS is the command's own
(getrusage RUSAGE_CHILDREN in a wrapper that runs nothing else); the background exporter that the
command leaves (text tower, then the image tower: exported by the baseline, verified against
open_clip here) is waited for and reported apart, so it never shares the cores with the next run.

--force runs the tower at any N (onnx_indexing.CROSSOVER lifted in the child, as
bench_onnx_index's FORCE_TOWER): where torch bf16 would otherwise keep a large first index.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_onnx_index
import common

HERE = Path(__file__).resolve().parent.parent
# Where the fixed cost goes, in a fresh process: torch's Embedder (imports, skeleton, image tower in
# the run's precision) against the graph (config and header, the build, the ONNX Runtime session).
SPLIT = ("import json, resource, sys, tempfile, time\n"
         "from pathlib import Path\n"
         "from clipsearch.model import names\n"
         "spec = names.parse(sys.argv[2])\n"
         "t0 = time.perf_counter()\n"
         "if sys.argv[1] == 'torch':\n"
         "    from clipsearch.model.embedder import Embedder\n"
         "    Embedder(spec, 'cpu')\n"
         "    built = time.perf_counter()\n"
         "else:\n"
         "    from clipsearch.model import onnx_indexing, vit_config, vit_graph\n"
         "    tower = vit_config.tower(spec)\n"
         "    folder = vit_graph.build(tower, Path(tempfile.mkdtemp(dir=sys.argv[3])))\n"
         "    built = time.perf_counter()\n"
         "    onnx_indexing.TowerEmbedder(folder, tower.identity(), tower.logit_scale(), None)\n"
         "print(json.dumps({'build_s': built - t0, 'ready_s': time.perf_counter() - t0,\n"
         "                  'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
KEYS = ("wall_s", "peak_rss_mb", "exports_done_s", "exporter_peak_rss_mb")


def first_index(tree: Path, model: str, folder: Path, work: Path, force: bool) -> dict[str, Any]:
    home = work / "home"
    home.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "CLIPSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "FORCE_TOWER": "1" if force else "0"}
    index = home / "index"
    args = ["index", str(folder), "--index", str(index), "--model", model, "--json"]
    start = time.perf_counter()
    # FORCE_TOWER=1 in env lifts the crossover in the child (only this tree reads it: the baseline's
    # torch path ignores it); cwd is not the repository: `python -c` would import its clipsearch.
    proc = subprocess.run([sys.executable, "-c", bench_onnx_index.WRAPPER, *args], capture_output=True, text=True,
                          env=env, check=False, cwd=work)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: clipsearch {' '.join(args)} failed: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    exports = common.wait_for_exports(index)
    meta = index / "image-model" / "meta.json"
    image = json.loads(meta.read_text()) if meta.exists() else {}
    return {"wall_s": wall, "peak_rss_mb": common.peak_rss_mb(proc), "embedded": summary["embedded"],
            "embedded_with": summary.get("embedded_with", ""), "exports_done_s": exports["exports_done_s"],
            "exporter_peak_rss_mb": exports["exporter_peak_rss_mb"], "image_tower_built": image.get("built", "export"),
            "image_tower_verified": image.get("verified_min_cosine")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare against")
    ap.add_argument("--photos", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="the tower at any N (the crossover lifted)")
    ap.add_argument("--quick", action="store_true", help="a random ViT-B-32 on 4 photos, one round")
    ap.add_argument("--split-only", action="store_true", help="only where the fixed cost goes")
    args = ap.parse_args()
    count = 4 if args.quick else args.photos
    model = f"local-dir:{common.random_model('ViT-B-32')}"
    photos = common.make_photos(common.CACHE / "photos" / f"1600x1200-{count}", count, common.PHONE)
    folder = photos[0].parent
    trees = {"baseline": args.baseline.resolve(), "this": HERE}
    splits: dict[str, list[dict[str, float]]] = {"torch": [], "graph": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(1 if args.quick else 3):
            for kind in splits:  # alternating
                proc = subprocess.run([sys.executable, "-c", SPLIT, kind, model, tmp], capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(HERE), "CLIPSEARCH_HOME": tmp}, check=True,
                                      cwd=tmp)
                splits[kind].append(json.loads(proc.stdout.splitlines()[-1]))
    for kind, rs in splits.items():
        print(f"fixed cost, {kind:5}: built after {min(r['build_s'] for r in rs):5.2f} s, ready after "
              f"{min(r['ready_s'] for r in rs):5.2f} s, peak RSS {min(r['rss_mb'] for r in rs):5.0f} MB", flush=True)
    if args.split_only:
        print(f"results: {common.save('vit-graph-split', {'split': splits})}")
        return
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    for _ in range(1 if args.quick else args.rounds):
        for name, tree in trees.items():  # alternating: a neighbour's load hits both alike
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(first_index(tree, model, folder, Path(tmp), args.force))
                print(name, json.dumps(runs[name][-1]), flush=True)
    best = {name: {k: min(float(r[k]) for r in rs) for k in KEYS} for name, rs in runs.items()}
    b, t = best["baseline"], best["this"]
    # Each round's own ratio too: on a shared machine the best-of pairs may come from different rounds.
    pairs = list(zip(runs["baseline"], runs["this"], strict=True))
    ratios: dict[str, Any] = {
        "wall_ratio": t["wall_s"] / b["wall_s"], "rss_ratio": t["peak_rss_mb"] / b["peak_rss_mb"],
        "wall_ratio_per_round": [float(r["wall_s"]) / float(base["wall_s"]) for base, r in pairs],
        "rss_ratio_per_round": [float(r["peak_rss_mb"]) / float(base["peak_rss_mb"]) for base, r in pairs]}
    print(f"first index, {count} photos: wall {b['wall_s']:6.2f} -> {t['wall_s']:6.2f} s (x{ratios['wall_ratio']:.2f})"
          f"  peak RSS {b['peak_rss_mb']:6.0f} -> {t['peak_rss_mb']:6.0f} MB (x{ratios['rss_ratio']:.2f})  "
          f"embedded with {runs['baseline'][0]['embedded_with']} -> {runs['this'][0]['embedded_with']}; background "
          f"exporter after it {b['exports_done_s']:5.1f} -> {t['exports_done_s']:5.1f} s, peak RSS "
          f"{b['exporter_peak_rss_mb']:5.0f} -> {t['exporter_peak_rss_mb']:5.0f} MB; wall ratio by round "
          f"{', '.join(f'{p:.2f}' for p in ratios['wall_ratio_per_round'])}")
    name = "vit-graph" + ("-force" if args.force else "") + ("-quick" if args.quick else "")
    payload = {"photos": count, "force": args.force, "best": best, **ratios, "runs": runs, "split": splits}
    print(f"results: {common.save(name, payload)}")


if __name__ == "__main__":
    main()
