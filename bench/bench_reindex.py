"""Re-indexing an unchanged library: seconds, and the ratio to the first full index of it.

    python bench/bench_reindex.py [--quick]

The library is 10,000 small generated pictures in 100 folders (tiny images are fine: this measures
the bookkeeping, not decoding), indexed with the tiny test model through the real CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "fixtures"))
import common
import shapes

TINY = Path(__file__).parents[1] / "tests" / "fixtures" / "tiny-clip"


def make_library(folder: Path, n: int) -> None:
    if len(list(folder.glob("*/*.png"))) == n:
        return
    rng = np.random.default_rng(11)
    for i in range(n):
        sub = folder / f"album{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        shapes.sample(rng).image.save(sub / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 pictures, no text-model export: checks it runs")
    args = ap.parse_args()
    n = 100 if args.quick else 10_000
    folder = common.CACHE / "reindex" / str(n)
    make_library(folder, n)
    with tempfile.TemporaryDirectory() as tmp:
        index = ["--index", tmp, "--model", f"local-dir:{TINY}", "--json"]
        env = {"CLIPSEARCH_TEXT_MODEL": "off", "CLIPSEARCH_IMAGE_MODEL": "off"} if args.quick else None
        first_s, first = common.run_cli(["index", str(folder), *index], env=env)
        common.wait_for_exports(Path(tmp))  # the background export: not during the re-index
        again_s, again = common.run_cli(["index", str(folder), *index], env=env)
    s1, s2 = json.loads(first.stdout), json.loads(again.stdout)
    assert s2["unchanged"] == n and s2["embedded"] == 0, s2
    row = {"photos": n, "first_index_s": first_s, "reindex_unchanged_s": again_s,
           "ratio_to_first": again_s / first_s, "first_embedded": s1["embedded"]}
    print(f"{n} photos: first index {first_s:.1f} s, unchanged re-index {again_s:.2f} s "
          f"({row['ratio_to_first']:.3f} of the first)")
    print(f"results: {common.save('reindex' + ('-quick' if args.quick else ''), {'rows': [row]})}")


if __name__ == "__main__":
    main()
