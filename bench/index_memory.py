"""Where the memory of an index run's embedder goes: a child of bench_lean_index.py --large.

    PYTHONPATH=TREE python bench/index_memory.py MODEL

In this fresh process, for the tree on PYTHONPATH: resident memory after importing torch (as the
Embedder imports it), after loading what that tree's index run embeds with above the ONNX Runtime
crossover (vit_torch's rebuilt tower where the tree has it, else the Embedder), and after 4
batches of 32 random pictures; each by kind of mapping (CUDA's libraries, torch's own, other
files, the malloc heap, other anonymous memory) with malloc's bytes in use and free-but-kept
(mallinfo2). Prints one JSON line.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from typing import Any

import numpy as np


def status() -> dict[str, float]:
    keys = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    with open("/proc/self/status") as f:
        rows = [line.partition(":") for line in f]
    return {k: int(v.split()[0]) / 1024 for k, _, v in rows if k in keys}


def kinds() -> dict[str, float]:
    """Resident MB by kind of mapping, from /proc/self/smaps."""
    out: dict[str, float] = {}
    kind = ""
    with open("/proc/self/smaps") as f:
        for line in f:
            p = line.split()
            if not p[0].endswith(":"):  # a mapping's first line: address range, ..., its file
                name = p[5] if len(p) > 5 else ""
                kind = ("cuda libraries" if "/nvidia/" in name or "cuda" in name or "triton" in name
                        else "torch libraries" if "/torch/" in name else "heap" if name == "[heap]"
                        else "other files" if name.startswith("/") else "other anonymous")
            elif p[0] == "Rss:":
                out[kind] = out.get(kind, 0.0) + int(p[1]) / 1024
    return out


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def stage() -> dict[str, Any]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    m = libc.mallinfo2()
    return {**status(), "kinds": kinds(), "malloc_in_use_mb": (m.uordblks + m.hblkhd) / 2**20,
            "malloc_free_kept_mb": m.fordblks / 2**20}


def main() -> None:
    t0 = time.perf_counter()
    from clipsearch.model import embedder, names

    embedder._load_torch()
    t1 = time.perf_counter()
    after_torch = stage()
    spec = names.parse(sys.argv[1])
    emb: Any = None
    try:
        from clipsearch.model import vit_config, vit_torch

        tower = vit_config.tower(spec)
        if tower is not None:  # what encoders._torch_tower takes
            emb = vit_torch.TorchVitEmbedder(tower, embedder.pick_precision(None, "cpu"))
    except ImportError:  # a tree before vit_torch: its index runs load the Embedder
        pass
    emb = emb or embedder.Embedder(spec, "cpu")
    t2 = time.perf_counter()
    loaded = stage()
    size = emb.preprocess.size
    px = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    ms = []
    for _ in range(4):
        t = time.perf_counter()
        emb.embed_images(px)
        ms.append(1000 * (time.perf_counter() - t) / 32)
    heavy = [m for m in ("open_clip", "torchvision", "timm", "torch._dynamo", "triton", "sympy", "transformers")
             if m in sys.modules]
    print(json.dumps({"import_torch_s": t1 - t0, "load_s": t2 - t1, "ms_per_photo": min(ms[1:]),
                      "embedder": type(emb).__name__, "runtime": emb.runtime, "imported": heavy,
                      "torch": after_torch, "loaded": loaded, "embedded": stage()}))


if __name__ == "__main__":
    main()
