"""Indexing on Ray against local indexing: the same photos, the same model, in the same run.

    python bench/bench_ray.py [--quick] [--address ADDR] [--workers N] [--cpus C] [--gpus G]

Both sides are `Library.index` into a new index: local indexing, then with `ray=` (a local Ray
runtime on this machine unless --address names a cluster). Each side runs twice, interleaved, and
the better run counts (these machines are shared and noisy). Two figures per side:

- steady img/s: results committed per second after the first ones, once everything is running;
  what decides the time for a large library;
- first result s: from the call to the first committed result: loading the model, and for Ray
  starting the runtime and its workers (which load the model too); paid once per run.

On a cluster: run this from a checkout every node can read at the same path (the photos and the
random-weight model are generated under bench/.cache), with clipsearch[ray] installed on every
node, e.g. `python bench/bench_ray.py --address auto --gpus 1 --cpus 8`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common

from clipsearch import Library
from clipsearch.ingest.ray_executor import RayOptions


class Clock:
    """An indexer Progress that notes when each result is committed-to-be."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[float, int]] = []

    def found(self, total: int) -> None:
        pass

    def advance(self, done: int, skipped: int) -> None:
        self.marks.append((time.perf_counter(), done))

    def steady_rate(self) -> float:
        """Results a second from the end of the first burst of results to the last result.

        Results arrive in bursts (a model batch locally, a block or a few from Ray); timing from one
        burst to the last counts exactly the results produced in between, and leaves out start-up.
        """
        first_t = self.marks[0][0]
        first_done = max(d for t, d in self.marks if t <= first_t + 1e-3)
        last_t, last_done = self.marks[-1]
        return (last_done - first_done) / (last_t - first_t)


def index_once(folder: Path, model_dir: Path, ray: RayOptions | None) -> dict[str, float]:
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        summary = Library(index=tmp, model=f"local-dir:{model_dir}").index([folder], progress=clock, ray=ray)
        wall = time.perf_counter() - clock.start
    return {"wall_s": wall, "first_result_s": clock.marks[0][0] - clock.start, "steady_img_s": clock.steady_rate(),
            "embedded": summary.embedded, "model_load_s": summary.model_load_seconds}


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's best run: the noise on a shared machine only ever slows a run down."""
    return {"steady_img_s": max(r["steady_img_s"] for r in runs),
            "first_result_s": min(r["first_result_s"] for r in runs), "wall_s": min(r["wall_s"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    ap.add_argument("--address", help="a Ray cluster (e.g. auto, ray://head:10001) instead of a local runtime")
    ap.add_argument("--workers", type=int, help="--ray-workers for the Ray side")
    ap.add_argument("--cpus", type=float, help="--ray-cpus for the Ray side")
    ap.add_argument("--gpus", type=float, default=0.0, help="--ray-gpus for the Ray side")
    args = ap.parse_args()
    os.environ.setdefault("CLIPSEARCH_TEXT_MODEL", "off")  # both sides: no text-tower export
    os.environ.setdefault("CLIPSEARCH_IMAGE_MODEL", "off")  # nor a background image-tower one
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    count = 48 if args.quick else 240
    options = RayOptions(args.address, args.workers, args.cpus, args.gpus)
    model_dir = common.random_model("ViT-B-32")
    folder = common.CACHE / "photos" / f"{common.PHONE[0]}x{common.PHONE[1]}-{count}"
    common.make_photos(folder, count, common.PHONE)
    local_runs: list[dict[str, float]] = []
    ray_runs: list[dict[str, float]] = []
    for _ in range(1 if args.quick else 2):
        local_runs.append(index_once(folder, model_dir, None))
        ray_runs.append(index_once(folder, model_dir, options))
    local, ray = best(local_runs), best(ray_runs)
    row: dict[str, Any] = {
        "model": "ViT-B-32", "set": "phone 1600x1200", "images": count,
        "ray": args.address or "local runtime", "ray_options": options.__dict__,
        "local_steady_img_s": local["steady_img_s"], "ray_steady_img_s": ray["steady_img_s"],
        "ratio_ray_to_local": ray["steady_img_s"] / local["steady_img_s"],
        "local_first_result_s": local["first_result_s"], "ray_first_result_s": ray["first_result_s"],
        "local_wall_s": local["wall_s"], "ray_wall_s": ray["wall_s"],
        "runs": {"local": local_runs, "ray": ray_runs}}
    print(f"{count} phone photos, ViT-B-32: local {row['local_steady_img_s']:.1f} img/s (first result "
          f"{row['local_first_result_s']:.1f} s), Ray ({row['ray']}) {row['ray_steady_img_s']:.1f} img/s (first "
          f"result {row['ray_first_result_s']:.1f} s): x{row['ratio_ray_to_local']:.2f}", flush=True)
    print(f"results: {common.save('ray' + ('-quick' if args.quick else ''), {'rows': [row]})}")


if __name__ == "__main__":
    main()
