"""The image tower in ONNX, so `query --image` of a photo that is not indexed needs no torch, nor
an index run of a few new photos (onnx_indexing.py).

Importing torch and open_clip and loading the whole model costs 4.5-6 s of such a query; the
exported image tower answers in about a second (bench/bench_image_tower.py). image_export.py writes
`image-model/` (the graph, its fp32 weights in a file ONNX Runtime memory-maps, and meta.json with
the preprocessing and the verified cosine against open_clip at fp32); this module runs it.

Preprocessing stays what indexing does: images.decode gives open_clip's resized and cropped uint8
pixels (tests/test_preprocess_fidelity.py), and `normalise` repeats the embedder's float32 ops
((x / 255 - mean) / std) in numpy, bit for bit.

The weights stay fp32: it ranks exactly like open_clip fp32, dynamic int8 did not quite (cosine
0.9998 on ViT-B-32, 0.9983 on the tiny model; its speed could not be measured cleanly yet), and
ONNX Runtime's x86 CPU provider has no bf16 matrix kernels (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.model import text_tower
from clipsearch.model.identity import Preprocess

FOLDER = "image-model"
MIN_COSINE = 0.999  # issue 22: vectors within 0.999 of open_clip fp32
REFERENCE = "open_clip fp32"


def available(index_dir: Path, weights_sha256: str) -> bool:
    """True when index_dir holds a verified image tower of exactly these weights, whole (a few stats)."""
    try:
        meta = json.loads((index_dir / FOLDER / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if not (meta.get("weights_sha256") == weights_sha256 and meta.get("reference") == REFERENCE
            and float(meta.get("verified_min_cosine") or 0) >= MIN_COSINE):
        return False
    try:
        for name, size in (meta.get("sizes") or {}).items():
            if (index_dir / FOLDER / name).stat().st_size != size:
                return False
    except OSError:
        return False
    return bool(meta.get("sizes"))


def preprocess_of(meta: dict[str, Any]) -> Preprocess:
    p = meta["preprocess"]
    return Preprocess(int(p["size"]), tuple(p["mean"]), tuple(p["std"]),
                      str(p["interpolation"]), str(p["resize_mode"]), int(p["fill_color"]))


def preprocess_record(pre: Preprocess) -> dict[str, Any]:
    return {"size": pre.size, "mean": list(pre.mean), "std": list(pre.std), "interpolation": pre.interpolation,
            "resize_mode": pre.resize_mode, "fill_color": pre.fill_color}


def normalise(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 (N, size, size, 3) -> float32 (N, 3, size, size): Embedder.embed_images' ops in numpy.

    The same float32 operations in the same order (x / 255, minus the mean, over the std), so the
    tower sees exactly the tensor the torch path builds (tests/test_image_tower.py).
    """
    x = np.ascontiguousarray(pixels).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)


class OnnxImageEncoder:
    """Decoded pixels -> normalised float32 vectors with ONNX Runtime; no torch anywhere."""

    def __init__(self, folder: Path, file: str | None = None, preoptimized: bool | None = None) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        self.meta = meta
        self.preprocess = preprocess_of(meta)
        model = folder / (file or meta.get("file", "model.onnx"))
        self.session = text_tower.session(model, bool(meta.get("preoptimized") if preoptimized is None
                                                      else preoptimized))

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, size, size, 3) from images.decode -> (N, dim) normalised float32."""
        (out,) = self.session.run(None, {"pixels": normalise(pixels, self.preprocess)})
        out = np.asarray(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def remove(index_dir: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(index_dir / FOLDER)
