"""`index` runs of a few new photos: torch against the exported image tower (issue 22).

    python bench/bench_onnx_index.py [--rounds 3] [--quick]

An existing index of ViT-B-32 with random weights (common.random_model), its text tower exported
(so no run loads torch for it) and its image tower exported (image_export.export, cached under
bench/.cache/exports), gets N new phone photos (1600x1200) in a new process, `clipsearch index
NEW --json`, each run on a fresh copy of the index. **Before** is the torch path of the same tree
(`CLIPSEARCH_IMAGE_MODEL=off`: what main does), **after** the tower (`on`); the two alternate, so
a neighbour's load hits both alike, and every figure is also a ratio to its same-run baseline.
Peak RSS is the child's own ru_maxrss (bench_lean_index's wrapper).

Also measured: the fixed costs apart (imports, then loading the model or the session, then the
first photo), in fresh processes, alternating; and the crossover: end-to-end wall time over N for
both paths (and torch fp32, as a CPU without bf16 runs it), a line fitted to each, and where the
lines cross (onnx_indexing.CROSSOVER holds the result).
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

HERE = Path(__file__).resolve().parent.parent
# `clipsearch ARGS` in a child whose peak RSS (kB) is printed last on stderr (as bench_lean_index);
# with FORCE_TOWER=1 the child takes the tower at any N (the crossover curve measures past it).
WRAPPER = ("import os, resource, subprocess, sys\n"
           "inner = ('import sys; from clipsearch.model import onnx_indexing\\n'\n"
           "         'if sys.argv[1] == \"1\": onnx_indexing.CROSSOVER = dict.fromkeys(onnx_indexing.CROSSOVER)\\n'\n"
           "         'sys.argv = [\"clipsearch\", *sys.argv[2:]]\\n'\n"
           "         'from clipsearch.cli import main; main()')\n"
           "force = os.environ.get('FORCE_TOWER', '0')\n"
           "rc = subprocess.run([sys.executable, '-c', inner, force, *sys.argv[1:]]).returncode\n"
           "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(rc)\n")

# Where a fresh process's first vector goes: imports, then the model (or the session), then 1 photo.
SPLIT = ("import json, sys, time, resource\n"
         "import numpy as np\n"
         "kind, model, folder = sys.argv[1:4]\n"
         "t0 = time.perf_counter()\n"
         "if kind.startswith('torch'):\n"
         "    from clipsearch.model import embedder, names\n"
         "    embedder._load_torch(); import open_clip\n"
         "    t1 = time.perf_counter()\n"
         "    emb = embedder.Embedder(names.parse(model), 'cpu', 'fp32' if kind.endswith('fp32') else None)\n"
         "else:\n"
         "    import onnxruntime\n"
         "    from pathlib import Path\n"
         "    from clipsearch.index.store import Store\n"
         "    from clipsearch.model import onnx_indexing\n"
         "    t1 = time.perf_counter()\n"
         "    with Store.open(Path(folder)) as store:\n"
         "        recorded = store.model_identity()\n"
         "    emb = onnx_indexing.TowerEmbedder(Path(folder) / 'image-model', recorded, 100.0, None)\n"
         "t2 = time.perf_counter()\n"
         "px = np.random.default_rng(0).integers(0, 256, (1, emb.preprocess.size, emb.preprocess.size, 3), "
         "dtype=np.uint8)\n"
         "emb.embed_images(px)\n"
         "t3 = time.perf_counter()\n"
         "batch = np.repeat(px, 32, axis=0)\n"
         "steady = []\n"
         "for _ in range(3):\n"
         "    t = time.perf_counter(); emb.embed_images(batch); steady.append((time.perf_counter() - t) / 32)\n"
         "print(json.dumps({'imports_s': t1 - t0, 'load_s': t2 - t1, 'first_photo_s': t3 - t2,\n"
         "                  'ms_per_photo_batch32': 1000 * min(steady),\n"
         "                  'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
         "                  'torch_imported': 'torch' in sys.modules}))\n")


def exported_tower(model_dir: Path) -> Path:
    """The image tower of `model_dir`, exported once and cached (an export takes 15-90 s here)."""
    from clipsearch.model import image_export, image_tower, names
    from clipsearch.model.embedder import Embedder

    sha = names.sha256_of(model_dir / "open_clip_model.safetensors")
    folder = common.CACHE / "exports" / model_dir.name
    if not image_tower.available(folder, sha):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        assert image_export.export(Embedder(names.parse(f"local-dir:{model_dir}"), "cpu", "fp32"), folder)
    return folder / image_tower.FOLDER


def copy_index(base: Path, to: Path) -> None:
    """A fresh copy of the index: SQLite and FAISS copied, the exported models hard-linked (read only)."""
    shutil.rmtree(to, ignore_errors=True)
    to.mkdir(parents=True)
    for src in sorted(base.rglob("*")):
        dst = to / src.relative_to(base)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif src.relative_to(base).parts[0] in ("text-model", "image-model"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)


def index_run(env: dict[str, str], base: Path, work: Path, folder: Path, tower: bool,
              precision: str | None = None, force: bool = False) -> dict[str, Any]:
    index = work / "index"
    copy_index(base, index)
    args = ["index", str(folder), "--index", str(index), "--json"] + (["--precision", precision] if precision else [])
    start = time.perf_counter()
    child = {**env, "CLIPSEARCH_IMAGE_MODEL": "on" if tower else "off", "FORCE_TOWER": "1" if force else "0"}
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, check=False,
                          env=child, cwd=work)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"clipsearch {' '.join(args)} failed: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    want = len(list(folder.iterdir()))
    assert summary["embedded"] == want, summary
    assert summary["embedded_with"].startswith("onnx" if tower else "torch"), summary["embedded_with"]
    return {"wall_s": wall, "peak_rss_mb": common.peak_rss_mb(proc), "model_load_s": summary["model_load_seconds"],
            "embedded_with": summary["embedded_with"]}


def split(env: dict[str, str], kind: str, model: str, index: Path, work: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", SPLIT, kind, model, str(index)], capture_output=True, text=True,
                          env=env, check=True, cwd=work)
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out.pop("torch_imported") == kind.startswith("torch")
    return {k: float(v) for k, v in out.items()}


def crossover_of(torch: dict[str, float], onnx: dict[str, float]) -> float | None:
    """Photos below which the tower's run ends first, from the fixed costs and the model's rates
    alone (decoding is the same on both paths); None: the tower is faster per photo too."""
    t_fixed = torch["imports_s"] + torch["load_s"]
    o_fixed = onnx["imports_s"] + onnx["load_s"]
    gap = (onnx["ms_per_photo_batch32"] - torch["ms_per_photo_batch32"]) / 1000
    return (t_fixed - o_fixed) / gap if gap > 0 else None


def print_split(best: dict[str, dict[str, float]], crossover: dict[str, float | None]) -> None:
    for k, s in best.items():
        print(f"{k:10} imports {s['imports_s']:.2f} s, load {s['load_s']:.2f} s, first photo "
              f"{s['first_photo_s']:.2f} s, {s['ms_per_photo_batch32']:.1f} ms/photo, RSS {s['rss_mb']:.0f} MB")
    print("crossover from the model's rates:", crossover, flush=True)


def fit(points: dict[int, float]) -> tuple[float, float]:
    """wall = fixed + per_photo * N, least squares over the measured N."""
    n = np.array(sorted(points), dtype=float)
    per, fixed = np.polyfit(n, [points[int(k)] for k in n], 1)
    return float(fixed), float(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the tiny model, one round, small N: checks the script runs")
    ap.add_argument("--no-curve", action="store_true", help="leave out the end-to-end crossover curve")
    ap.add_argument("--only-split", action="store_true",
                    help="only the fixed costs and the model's rates in fresh processes (and the crossover from them)")
    args = ap.parse_args()
    model_dir = common.TINY if args.quick else common.random_model("ViT-B-32")
    model = f"local-dir:{model_dir}"
    sizes = (1, 10)
    curve = (1, 4, 10) if args.quick else (1, 10, 40, 100, 200)
    fp32_curve = (10,) if args.quick else (10, 100)
    rounds = 1 if args.quick else args.rounds
    load_before = os.getloadavg()
    photos = common.make_photos(common.CACHE / "photos" / "1600x1200-onnx-index", max(curve), common.PHONE, seed=22)
    tower = exported_tower(model_dir)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-index-") as t:
        tmp = Path(t)
        # The text tower's export cache lives in the home: kept between runs of this script.
        home = common.CACHE / "onnx-index-home"
        # Exports inline: no run leaves a background exporter on the cores the next one is timed on.
        env = {**os.environ, "PYTHONPATH": str(HERE), "CLIPSEARCH_HOME": str(home), "CLIPSEARCH_TEXT_MODEL": "on",
               "CLIPSEARCH_EXPORT": "inline", "HF_HUB_OFFLINE": "1"}
        base = tmp / "base"
        common.make_photos(tmp / "base-photos", 2, common.PHONE, seed=7)
        subprocess.run([sys.executable, "-m", "clipsearch", "index", str(tmp / "base-photos"), "--index", str(base),
                        "--model", model], check=True, env={**env, "CLIPSEARCH_IMAGE_MODEL": "off"},
                       capture_output=True, cwd=tmp)
        shutil.copytree(tower, base / "image-model")
        folders = {}
        for n in sorted(set(sizes) | set(curve)):
            folders[n] = tmp / f"new-{n}"
            folders[n].mkdir()
            for p in photos[:n]:
                os.link(p, folders[n] / p.name)
        splits: dict[str, list[dict[str, float]]] = {"torch": [], "onnx": [], "torch-fp32": []}
        for _ in range(rounds):
            for kind in splits:
                splits[kind].append(split(env, kind, model, base, tmp))
        best_split = {k: {m: min(r[m] for r in rs) for m in rs[0]} for k, rs in splits.items()}
        model_crossover = {k: crossover_of(best_split[k], best_split["onnx"]) for k in ("torch", "torch-fp32")}
        print_split(best_split, model_crossover)
        if args.only_split:
            payload = {"model": "tiny" if args.quick else "ViT-B-32 (random weights)", "rounds": rounds,
                       "load_average_before": load_before, "load_average_after": os.getloadavg(),
                       "fixed_cost_split": best_split, "split_runs": splits, "model_crossover_photos": model_crossover}
            print(f"results: {common.save('onnx-index-split' + ('-quick' if args.quick else ''), payload)}")
            return
        table: dict[str, dict[int, list[dict[str, Any]]]] = {"torch": {n: [] for n in sizes},
                                                             "onnx": {n: [] for n in sizes}}
        for _ in range(rounds):
            for n in sizes:
                for kind in ("torch", "onnx"):
                    table[kind][n].append(index_run(env, base, tmp / "run", folders[n], kind == "onnx"))
        walls: dict[str, dict[int, list[float]]] = {"torch": {}, "onnx": {}, "torch fp32": {}}
        for _ in range(0 if args.no_curve else 1 if args.quick else 2):
            for n in curve:
                for kind in ("torch", "onnx"):
                    r = index_run(env, base, tmp / "run", folders[n], kind == "onnx", force=True)
                    walls[kind].setdefault(n, []).append(r["wall_s"])
                if n in fp32_curve:
                    r = index_run(env, base, tmp / "run", folders[n], False, "fp32")
                    walls["torch fp32"].setdefault(n, []).append(r["wall_s"])
    rows = []
    for n in sizes:
        best = {k: {m: min(r[m] for r in table[k][n]) for m in ("wall_s", "peak_rss_mb", "model_load_s")}
                for k in table}
        rows.append({"new_photos": n, "torch": best["torch"], "onnx": best["onnx"],
                     "embedded_with": {k: table[k][n][0]["embedded_with"] for k in table},
                     "wall_ratio": best["onnx"]["wall_s"] / best["torch"]["wall_s"],
                     "rss_ratio": best["onnx"]["peak_rss_mb"] / best["torch"]["peak_rss_mb"]})
    lines = {k: fit({n: min(v) for n, v in w.items()}) for k, w in walls.items() if len(w) > 1}
    crossover = {}
    for k in ("torch", "torch fp32"):
        if k not in lines or "onnx" not in lines:
            continue
        (tf, tp), (of, op) = lines[k], lines["onnx"]
        crossover[k] = (tf - of) / (op - tp) if op > tp else None  # None: the tower is faster per photo too
    payload = {"model": "tiny" if args.quick else "ViT-B-32 (random weights)", "rounds": rounds,
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "fixed_cost_split": best_split, "split_runs": splits, "model_crossover_photos": model_crossover,
               "rows": rows,
               "curve_walls": {k: {str(n): v for n, v in w.items()} for k, w in walls.items()},
               "lines": {k: {"fixed_s": f, "per_photo_s": p} for k, (f, p) in lines.items()},
               "crossover_photos": crossover}
    for row in rows:
        print(f"{row['new_photos']:3} new: wall {row['torch']['wall_s']:.2f} -> {row['onnx']['wall_s']:.2f} s "
              f"(x{row['wall_ratio']:.2f}), RSS {row['torch']['peak_rss_mb']:.0f} -> "
              f"{row['onnx']['peak_rss_mb']:.0f} MB (x{row['rss_ratio']:.2f})")
    for k, (f, p) in lines.items():
        print(f"{k:10} wall = {f:.2f} s + {1000 * p:.1f} ms x N")
    print("crossover:", crossover)
    name = "onnx-index" + ("-table" if args.no_curve else "") + ("-quick" if args.quick else "")
    print(f"results: {common.save(name, payload)}")


if __name__ == "__main__":
    main()
