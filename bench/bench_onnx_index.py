"""`index` runs into an existing index: torch against the exported image tower on ONNX Runtime
fp32 and on OpenVINO bf16 (issue 22).

    python bench/bench_onnx_index.py [--rounds 2] [--quick] [--only-split]

An existing index of ViT-B-32 with random weights (common.random_model), its text tower exported
(so no run loads torch for it) and its image tower exported (image_export.export, cached under
bench/.cache/exports), gets N new phone photos (1600x1200) in a new process, `clipsearch index
NEW --json`, each run on a fresh copy of the index. Every N runs on each path in turn, alternating
within a round so a neighbour's load hits them alike: **torch** (`CLIPSEARCH_IMAGE_MODEL=off`),
the tower forced onto **onnxruntime** and onto **openvino** (`CLIPSEARCH_IMAGE_RUNTIME`, every
crossover lifted), and **auto**, what ships (onnx_indexing.tower_runtimes picks; its
`embedded_with` is checked against the rule). **Before** is main's rule (the ONNX Runtime tower up
to 150 pictures, torch above), taken from the same round's forced runs. Peak RSS is the child's own
ru_maxrss (bench_lean_index's wrapper).

Also measured: the fixed costs apart (imports, then loading the model, the session or OpenVINO's
compile from its cache, then the first photo), in fresh processes, alternating; OpenVINO's first
compile of these weights (filling the cache) once; and the crossovers: a line fitted to each path's
wall time over N, and where the lines cross (onnx_indexing.CROSSOVER and OPENVINO_FROM hold the
results), and the same from the model's rates in the split.
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
# bench_vit_graph runs it on older trees too: their CROSSOVER is flat (precision -> photos), and
# they have no OPENVINO_FROM.
WRAPPER = ("import os, resource, subprocess, sys\n"
           "inner = ('import sys; from clipsearch.model import onnx_indexing\\n'\n"
           "         'if sys.argv[1] == \"1\":\\n'\n"
           "         '    c = onnx_indexing.CROSSOVER\\n'\n"
           "         '    onnx_indexing.CROSSOVER = {k: dict.fromkeys(v) if isinstance(v, dict) else None\\n'\n"
           "         '                               for k, v in c.items()}\\n'\n"
           "         '    onnx_indexing.OPENVINO_FROM = 1\\n'\n"
           "         'sys.argv = [\"clipsearch\", *sys.argv[2:]]\\n'\n"
           "         'from clipsearch.cli import main; main()')\n"
           "force = os.environ.get('FORCE_TOWER', '0')\n"
           "rc = subprocess.run([sys.executable, '-c', inner, force, *sys.argv[1:]]).returncode\n"
           "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(rc)\n")

# Where a fresh process's first vector goes: imports, then the model (torch), the session (ONNX
# Runtime) or the compile from its cache and the self-check's verdict (OpenVINO), then 1 photo;
# then the model's rate on batches of 32 in the tower's own calls (CHUNK).
SPLIT = ("import json, sys, time\n"
         "import numpy as np\n"
         "kind, model, folder = sys.argv[1:4]\n"
         # VmHWM, not ru_maxrss: that one keeps the forking parent's RSS across exec.
         "rss = lambda: int(next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1]) / 1024\n"
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
         "    if kind.startswith('openvino'):\n"
         "        from clipsearch.model import openvino_tower\n"
         "    t1 = time.perf_counter()\n"
         "    with Store.open(Path(folder)) as store:\n"
         "        recorded = store.model_identity()\n"
         "    runtime = kind.replace('-cold', '').replace('-', ' ')\n"
         "    emb = onnx_indexing.TowerEmbedder(Path(folder) / 'image-model', recorded, 100.0, None, (runtime,))\n"
         "t2 = time.perf_counter()\n"
         "rss_loaded = rss()\n"
         "px = np.random.default_rng(0).integers(0, 256, (1, emb.preprocess.size, emb.preprocess.size, 3), "
         "dtype=np.uint8)\n"
         "emb.embed_images(px)\n"
         "t3 = time.perf_counter()\n"
         "batch = np.repeat(px, 32, axis=0)\n"
         "steady = []\n"
         "for _ in range(3):\n"
         "    t = time.perf_counter(); emb.embed_images(batch); steady.append((time.perf_counter() - t) / 32)\n"
         "print(json.dumps({'imports_s': t1 - t0, 'load_s': t2 - t1, 'first_photo_s': t3 - t2,\n"
         "                  'ms_per_photo_batch32': 1000 * min(steady), 'rss_loaded_mb': rss_loaded,\n"
         "                  'rss_mb': rss(), 'runtime': emb.runtime,\n"
         "                  'torch_imported': 'torch' in sys.modules}))\n")
SPLIT_KINDS = ("torch", "torch-fp32", "onnxruntime-fp32", "openvino-bf16", "openvino-fp32")
# The forced paths of the curve (and their environment), then what ships.
PATHS = {"torch": {"CLIPSEARCH_IMAGE_MODEL": "off"},
         "onnxruntime": {"CLIPSEARCH_IMAGE_RUNTIME": "onnxruntime", "FORCE_TOWER": "1"},
         "openvino": {"CLIPSEARCH_IMAGE_RUNTIME": "openvino", "FORCE_TOWER": "1"},
         "auto": {"CLIPSEARCH_IMAGE_RUNTIME": "auto"}}
# The split's kinds as the curve's paths are named (crossovers() pairs them).
LINE_NAMES = {"torch": "torch", "torch-fp32": "torch fp32", "onnxruntime-fp32": "onnxruntime",
              "openvino-bf16": "openvino", "openvino-fp32": "openvino fp32"}
MAIN_CROSSOVER = 150  # main's rule, the before: the ONNX Runtime tower up to 150 pictures on a bf16 CPU


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


def index_run(env: dict[str, str], base: Path, work: Path, folder: Path, path: str,
              precision: str | None = None) -> dict[str, Any]:
    index = work / "index"
    copy_index(base, index)
    args = ["index", str(folder), "--index", str(index), "--json"] + (["--precision", precision] if precision else [])
    start = time.perf_counter()
    child = {**env, "CLIPSEARCH_IMAGE_MODEL": "on", "FORCE_TOWER": "0", **PATHS[path]}
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, check=False,
                          env=child, cwd=work)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"clipsearch {' '.join(args)} failed: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    want = len(list(folder.iterdir()))
    assert summary["embedded"] == want, summary
    if path != "auto":
        assert summary["embedded_with"].startswith(path), (path, summary["embedded_with"])
    return {"wall_s": wall, "peak_rss_mb": common.peak_rss_mb(proc), "model_load_s": summary["model_load_seconds"],
            "embedded_with": summary["embedded_with"]}


def split(env: dict[str, str], kind: str, model: str, index: Path, work: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", SPLIT, kind, model, str(index)], capture_output=True, text=True,
                          env=env, check=True, cwd=work)
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out.pop("torch_imported") == kind.startswith("torch")
    runtime = out.pop("runtime")
    assert kind.startswith("torch") or runtime == kind.replace("-cold", "").replace("-", " "), (kind, runtime)
    return {k: float(v) for k, v in out.items()}


def crossing(small: tuple[float, float], big: tuple[float, float]) -> float | None:
    """Photos up to which the path with the smaller fixed cost, `small` (fixed s, per-photo s),
    ends first against `big`; None: it is faster per photo too, so at every N."""
    (sf, sp), (bf, bp) = small, big
    return None if sp <= bp else max(0.0, (bf - sf) / (sp - bp))


def split_line(s: dict[str, float]) -> tuple[float, float]:
    """A split's (fixed s, per-photo s): imports + load, and the rate at batch 32."""
    return s["imports_s"] + s["load_s"], s["ms_per_photo_batch32"] / 1000


def print_split(best: dict[str, dict[str, float]]) -> None:
    for k, s in best.items():
        print(f"{k:16} imports {s['imports_s']:.2f} s, load {s['load_s']:.2f} s, first photo "
              f"{s['first_photo_s']:.2f} s, {s['ms_per_photo_batch32']:.1f} ms/photo, RSS loaded "
              f"{s['rss_loaded_mb']:.0f} MB, peak {s['rss_mb']:.0f} MB", flush=True)


def fit(points: dict[int, float]) -> tuple[float, float]:
    """wall = fixed + per_photo * N, least squares over the measured N."""
    n = np.array(sorted(points), dtype=float)
    per, fixed = np.polyfit(n, [points[int(k)] for k in n], 1)
    return float(fixed), float(per)


def crossovers(lines: dict[str, tuple[float, float]]) -> dict[str, float | None]:
    """What onnx_indexing holds: each tower against torch (bf16, and fp32 as a CPU without bf16 runs
    it), and ONNX Runtime against OpenVINO (OPENVINO_FROM: where OpenVINO's start-up is paid back)."""
    pairs = {"onnxruntime vs torch": ("onnxruntime", "torch"), "openvino vs torch": ("openvino", "torch"),
             "onnxruntime vs torch fp32": ("onnxruntime", "torch fp32"),
             "openvino fp32 vs torch fp32": ("openvino fp32", "torch fp32"),
             "onnxruntime vs openvino": ("onnxruntime", "openvino")}
    return {name: crossing(lines[a], lines[b]) for name, (a, b) in pairs.items() if a in lines and b in lines}


def best_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {m: min(r[m] for r in runs) for m in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="the tiny model, one round, small N: checks the script runs")
    ap.add_argument("--only-split", action="store_true",
                    help="only the fixed costs and the model's rates in fresh processes (and the crossovers from them)")
    args = ap.parse_args()
    from clipsearch.model import onnx_indexing

    model_dir = common.TINY if args.quick else common.random_model("ViT-B-32")
    model = f"local-dir:{model_dir}"
    curve = (1, 4, 10) if args.quick else (1, 10, 50, 150, 300)
    fp32_curve = (1, 10) if args.quick else (10, 150)
    rounds = 1 if args.quick else args.rounds
    load_before = os.getloadavg()
    photos = common.make_photos(common.CACHE / "photos" / "1600x1200-onnx-index", max(curve), common.PHONE, seed=22)
    tower = exported_tower(model_dir)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-index-") as t:
        tmp = Path(t)
        # The text tower's export cache and OpenVINO's compiled blobs live in the home: a fresh one per
        # run of this script, so OpenVINO's first compile of these weights is measured once, here.
        home = tmp / "home"
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
        for n in curve:
            folders[n] = tmp / f"new-{n}"
            folders[n].mkdir()
            for p in photos[:n]:
                os.link(p, folders[n] / p.name)
        cold = {k: split(env, f"{k}-cold", model, base, tmp) for k in ("openvino-bf16", "openvino-fp32")}
        splits: dict[str, list[dict[str, float]]] = {k: [] for k in SPLIT_KINDS}
        for _ in range(rounds if args.quick else rounds + 1):
            for kind in splits:
                splits[kind].append(split(env, kind, model, base, tmp))
        best_split = {k: best_of(rs) for k, rs in splits.items()}
        print_split({**{f"{k} cold": v for k, v in cold.items()}, **best_split})
        split_lines = {LINE_NAMES[k]: split_line(v) for k, v in best_split.items()}
        model_crossover = crossovers(split_lines)
        print("crossovers from the model's rates:", model_crossover, flush=True)
        payload: dict[str, Any] = {
            "model": "tiny" if args.quick else "ViT-B-32 (random weights)", "rounds": rounds,
            "load_average_before": load_before, "fixed_cost_split": best_split, "split_runs": splits,
            "openvino_first_compile": cold, "model_crossover_photos": model_crossover,
            "shipped": {"CROSSOVER": onnx_indexing.CROSSOVER, "OPENVINO_FROM": onnx_indexing.OPENVINO_FROM}}
        if args.only_split:
            payload["load_average_after"] = os.getloadavg()
            print(f"results: {common.save('onnx-index-split' + ('-quick' if args.quick else ''), payload)}")
            return
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {k: {n: [] for n in curve} for k in (*PATHS, "torch fp32")}
        for r in range(rounds):
            for n in curve:
                for path in (list(PATHS) if r % 2 == 0 else list(reversed(PATHS))):
                    runs[path][n].append(index_run(env, base, tmp / "run", folders[n], path))
                if n in fp32_curve:
                    runs["torch fp32"][n].append(index_run(env, base, tmp / "run", folders[n], "torch", "fp32"))
                print(n, {k: round(v[n][-1]["wall_s"], 2) for k, v in runs.items() if v[n]}, flush=True)
    rows = []
    for n in curve:
        best = {k: best_of([{m: x[m] for m in ("wall_s", "peak_rss_mb")} for x in v[n]]) for k, v in runs.items()
                if v[n]}
        before = "onnxruntime" if n <= MAIN_CROSSOVER else "torch"
        shipped = {x["embedded_with"] for x in runs["auto"][n]}
        rule = onnx_indexing.tower_runtimes(n, "cpu", None)
        assert len(shipped) == 1 and (not rule or rule[0] in shipped), (n, shipped, rule)
        rows.append({"new_photos": n, "best": best, "before_path": before, "after_embedded_with": shipped.pop(),
                     "wall_ratio": best["auto"]["wall_s"] / best[before]["wall_s"],
                     "rss_ratio": best["auto"]["peak_rss_mb"] / best[before]["peak_rss_mb"]})
    walls = {k: {n: min(x["wall_s"] for x in v[n]) for n in curve if v[n]} for k, v in runs.items() if k != "auto"}
    lines = {k: fit(w) for k, w in walls.items() if len(w) > 1}
    crossover = crossovers(lines)
    payload.update({"load_average_after": os.getloadavg(), "rows": rows,
                    "runs": {k: {str(n): v for n, v in w.items()} for k, w in runs.items()},
                    "lines": {k: {"fixed_s": f, "per_photo_s": p} for k, (f, p) in lines.items()},
                    "crossover_photos": crossover})
    for row in rows:
        b = row["best"]
        print(f"{row['new_photos']:3} new: " + ", ".join(f"{k} {v['wall_s']:.2f} s {v['peak_rss_mb']:.0f} MB"
                                                       for k, v in b.items())
              + f"; auto took {row['after_embedded_with']}: x{row['wall_ratio']:.2f} wall, "
                f"x{row['rss_ratio']:.2f} RSS against main's {row['before_path']}")
    for k, (f, p) in lines.items():
        print(f"{k:12} wall = {f:.2f} s + {1000 * p:.1f} ms x N")
    print("crossovers:", crossover)
    print(f"results: {common.save('onnx-index' + ('-quick' if args.quick else ''), payload)}")


if __name__ == "__main__":
    main()
