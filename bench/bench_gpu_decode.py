"""GPU JPEG decoding (nvJPEG, gpu_decode.py) against the CPU draft path, photos per second (issue 22).

Runs only where torch sees a CUDA GPU; elsewhere it says so and records nothing. Camera (12 MP)
and phone photos from common.make_photos: the CPU path as indexing runs it (images.decode in a
pool of one thread per core), the GPU path as a CUDA run does (headers and bytes read in the same
pool, pixels decoded and fitted in batches of 32 on the GPU), both over the same files, after one
warm-up pass; the ratio is what the row reports.

    python bench/bench_gpu_decode.py [--photos 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def cpu_pass(pool: ThreadPoolExecutor, files: list[str], pre: Any) -> None:
    from clipsearch.ingest import images

    list(pool.map(lambda p: images.decode(p, pre), files))


def gpu_pass(pool: ThreadPoolExecutor, files: list[str], pre: Any) -> None:
    import torch

    from clipsearch.ingest import gpu_decode, images

    heads = list(pool.map(lambda p: images.decode(p, pre, pixels=False), files))
    for i in range(0, len(files), 32):
        gpu_decode.fill(files[i:i + 32], heads[i:i + 32], pre, "cuda", images.DEFAULT_MAX_PIXELS)
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=256)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu_decode: no CUDA GPU here; nothing measured", file=sys.stderr)
        return
    from clipsearch.model.identity import Preprocess

    pre = Preprocess(224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    n = 32 if args.quick else args.photos
    cores = os.cpu_count() or 1
    out = {}
    for label, size in (("camera", common.CAMERA), ("phone", common.PHONE)):
        files = [str(p) for p in common.make_photos(common.CACHE / "photos" / f"gpu-{label}-{n}", n, size)]
        with ThreadPoolExecutor(cores) as pool:
            rates = {}
            for name, fn in (("cpu", cpu_pass), ("gpu", gpu_pass)):
                fn(pool, files, pre)  # warm-up: file cache, nvJPEG handles, CUDA context
                t = time.perf_counter()
                fn(pool, files, pre)
                rates[name] = len(files) / (time.perf_counter() - t)
        out[label] = {"cpu_photos_per_s": rates["cpu"], "gpu_photos_per_s": rates["gpu"],
                      "gpu_over_cpu": rates["gpu"] / rates["cpu"], "cpu_threads": cores}
        print(label, out[label], flush=True)
    common.save("gpu-decode-quick" if args.quick else "gpu-decode", {"photos": n, "rows": out,
                                                                      "gpu": torch.cuda.get_device_name()})


if __name__ == "__main__":
    main()
