"""Every benchmark's --quick mode in one process: the CI smoke run that checks the scripts still run.

    python bench/quick.py

torch and open_clip are imported once here instead of once per script (~4 s each on 2 cores); the
scripts still start `clipsearch` in new processes where they measure it. Results go to
bench/results/*-quick.json, which the docs never use.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SCRIPTS = ["bench_index", "bench_reindex", "bench_query", "bench_tagging", "bench_label_cache", "bench_fewshot",
           "bench_serve", "bench_video"]


def main() -> None:
    for name in SCRIPTS:
        start = time.perf_counter()
        sys.argv = [f"{name}.py", "--quick"]
        importlib.import_module(name).main()
        print(f"== {name} --quick: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
