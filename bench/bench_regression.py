"""Query paths against an older checkout, in one run: did anything get slower?

    python bench/bench_regression.py --baseline /path/to/old/checkout [--sizes 10000,100000] [--rounds 3]

Each checkout builds bench_query.py's synthetic index with its own code (its own schema and text
tower, under its own bench/.cache; the random model is shared), then the two alternate:

- **cold**: `clipsearch query TEXT --format paths` processes, a new text each time and a text asked
  before, `--cold` of each, in turn;
- **warm**: one process per checkout per round that keeps its `Library` and calls `search` for six
  texts asked before (`--warm` each) and 30 new ones, at 10 and at 60 results (a gallery's page).

Both run on the same interpreter and packages; only the `clipsearch` package differs (PYTHONPATH).
Results go to bench/results/regression.json; docs/benchmarks.md quotes them by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_query
import common

TEXTS = ["a dog on the beach", "a red bus", "snowy mountains", "my cute dog", "birthday cake", "a city at night"]

WARM = """
import json, statistics, sys, time
from clipsearch import Library
folder, repeats, texts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
lib = Library(folder)
out = {}
for top in (10, 60):
    seen, new = [], []
    for text in texts:
        lib.search(text, top=top)
        for _ in range(repeats):
            t = time.perf_counter(); lib.search(text, top=top); seen.append(time.perf_counter() - t)
    stamp = time.time_ns()
    for i in range(30):
        t = time.perf_counter(); lib.search(f"{texts[i % len(texts)]} {stamp} {i}", top=top)
        new.append(time.perf_counter() - t)
    out[top] = {"seen_ms_p50": statistics.median(seen) * 1000, "new_ms_p50": statistics.median(new) * 1000}
print(json.dumps(out))
"""

def _env(tree: Path) -> dict[str, str]:
    return {**bench_query.INSTALLED_ENV, "PYTHONPATH": str(tree)}  # bytecode cached, as installed


def build(tree: Path, n: int) -> Path:
    """bench_query's index of n photos, built by `tree`'s own code into `tree`'s bench/.cache."""
    (tree / "bench" / ".cache").mkdir(parents=True, exist_ok=True)
    models = tree / "bench" / ".cache" / "models"
    if tree != common.ROOT.parent and not models.exists():
        models.symlink_to(common.CACHE / "models")  # the same random weights, generated once
    code = ("import sys; sys.path.insert(0, 'bench'); import bench_query, common; "
            f"f = bench_query.index_folder({n}, False); "
            f"bench_query.build_index(f, {n}, common.random_model('ViT-B-32')); print(f)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, env=_env(tree), capture_output=True, text=True,
                          check=True)
    return Path(proc.stdout.strip().splitlines()[-1])


def cold_query(tree: Path, folder: Path, text: str) -> float:
    cmd = [sys.executable, "-m", "clipsearch", "query", text, "--format", "paths", "--index", str(folder), "-n", "20"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{tree}: {proc.stderr[-2000:]}")
    return wall


def warm_search(tree: Path, folder: Path, repeats: int) -> dict[str, dict[str, float]]:
    proc = subprocess.run([sys.executable, "-c", WARM, str(folder), str(repeats), json.dumps(TEXTS)], cwd=tree,
                          env=_env(tree), capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="a checkout of the older code")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--cold", type=int, default=15, help="cold processes per checkout and kind of text")
    ap.add_argument("--warm", type=int, default=15, help="repeats of each seen text in a warm process")
    ap.add_argument("--rounds", type=int, default=3, help="warm processes per checkout")
    args = ap.parse_args()
    trees = {"after": common.ROOT.parent, "before": args.baseline.resolve()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=trees["before"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        folders = {k: build(tree, n) for k, tree in trees.items()}
        stamp = time.time_ns()
        for k, tree in trees.items():
            cold_query(tree, folders[k], f"warm-up {stamp}")  # bytecode written, files in the page cache
        new: dict[str, list[float]] = {k: [] for k in trees}
        seen: dict[str, list[float]] = {k: [] for k in trees}
        for i in range(args.cold):
            order = list(trees) if i % 2 == 0 else list(trees)[::-1]
            for k in order:
                new[k].append(cold_query(trees[k], folders[k], f"a dog on the beach, take {stamp}-{i}"))
            for k in order:
                seen[k].append(cold_query(trees[k], folders[k], f"a dog on the beach, take {stamp}-0"))
        warm: dict[str, list[dict[str, dict[str, float]]]] = {k: [] for k in trees}
        for i in range(args.rounds):
            for k in (list(trees) if i % 2 == 0 else list(trees)[::-1]):
                warm[k].append(warm_search(trees[k], folders[k], args.warm))
        row: dict[str, object] = {"photos": n}
        for k in trees:
            row[k] = {"cold_new_text_s_p50": statistics.median(new[k]),
                      "cold_seen_text_s_p50": statistics.median(seen[k]),
                      **{f"warm_top{top}_{kind}_ms": [w[top][f"{kind}_ms_p50"] for w in warm[k]]
                         for top in ("10", "60") for kind in ("seen", "new")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"results: {common.save('regression', {'baseline': commit, 'rows': rows})}")


if __name__ == "__main__":
    main()
