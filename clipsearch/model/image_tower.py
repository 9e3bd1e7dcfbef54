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

Which runtime runs it: `load` picks. OpenVINO in bf16 (openvino_tower.py, the optional `openvino`
extra) embeds at 0.47-0.52x ONNX Runtime fp32's time per image at batch 1 and 0.53-0.64x at batch
16 on a CPU with AVX512-BF16 (cosine 0.99995 to open_clip fp32), but costs more to start: compile
0.45-0.8 s from its cache (ONNX Runtime's session: 0.03-0.3 s), a slower first call, and 1.8x the
peak RSS; a cold `query --image` of one new photo took 1.8-2.3x as long on it (1.4-2.2 s against
0.8-1.0 s; bench/bench_image_runtime.py, docs/benchmarks.md). So by default (`auto`) OpenVINO
runs it only for callers that embed many images in one process (`many=True`: an index run of at
least onnx_indexing.OPENVINO_FROM pictures; `query --image` and smaller runs go through ONNX
Runtime), where the CPU has native bf16 (AVX512-BF16 or AMX), and only after a self-check on the
export's check pictures; everything else, callers that hold their vectors to fp32 (`fp32=True`:
`index --precision fp32`), and CPUs without native bf16 (OpenVINO fp32 was not clearly faster
there), get ONNX Runtime fp32. $CLIPSEARCH_IMAGE_RUNTIME: `auto` (that rule, the default),
`onnxruntime` (always), `openvino` (for every caller, whenever installed, bf16 or fp32 as the CPU
has and the caller allows; still self-checked); any other value means `onnxruntime`. `choice`
tells which without importing either runtime (index runs weigh it against torch before loading).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clipsearch.model import cpu, text_tower
from clipsearch.model.identity import Preprocess

FOLDER = "image-model"
MIN_COSINE = 0.999  # issue 22: vectors within 0.999 of open_clip fp32
REFERENCE = "open_clip fp32"
CHECK_VECTORS = "check_vectors.npy"  # open_clip fp32's vectors of check_pixels, recorded at export
RUNTIME_ENV = "CLIPSEARCH_IMAGE_RUNTIME"
RUNTIMES = ("auto", "onnxruntime", "openvino")
ONNXRUNTIME = "onnxruntime fp32"  # how a run's summary names each runtime: "<runtime> <precision>"


class ImageEncoder(Protocol):
    """What callers use of an image tower, whichever runtime runs it."""

    meta: dict[str, Any]
    preprocess: Preprocess
    runtime: str  # "onnxruntime fp32", "openvino bf16": an index run's summary reports it

    def embed_images(self, pixels: np.ndarray) -> np.ndarray: ...


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


def check_pixels(pre: Preprocess) -> np.ndarray:
    """Eight uint8 pictures to verify an export on: smooth gradients and shapes, and noise (texture)."""
    rng = np.random.default_rng(22)
    s = pre.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / max(s - 1, 1)
    out = []
    for i in range(8):
        if i % 4 == 3:
            img = rng.integers(0, 256, (s, s, 3))
        else:
            a, b, c = rng.uniform(0, 1, 3)
            img = np.stack([255 * (a * xx + (1 - a) * yy), 255 * (b * (1 - xx) * yy + c * 0.3),
                            255 * (0.5 + 0.5 * np.sin(6.28 * (c + 1) * xx * (i + 1)))], axis=-1)
            r = ((xx - a) ** 2 + (yy - b) ** 2) < 0.05 * (i + 1)
            img[r] = rng.integers(0, 256, 3)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def runtime_asked() -> str:
    """$CLIPSEARCH_IMAGE_RUNTIME as one of RUNTIMES; an unknown value takes the runtime that always works."""
    value = os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto"
    return value if value in RUNTIMES else "onnxruntime"


def openvino_installed() -> bool:
    """Whether OpenVINO could be imported, told without importing it (a spec lookup)."""
    import importlib.util

    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def choice(many: bool = False, fp32: bool = False) -> str:
    """The runtime `load` tries for a caller, as its summary names it ("openvino bf16", "openvino
    fp32" or ONNXRUNTIME), told without importing either (module docstring): `many` where the
    caller embeds many images with it (indexing), so OpenVINO's start-up pays off; `fp32` where
    the caller holds its vectors to fp32 (`--precision fp32`), so no bf16 runtime."""
    asked = runtime_asked()
    bf16 = cpu.has_native_bf16() and not fp32
    if (asked == "openvino" or (asked == "auto" and bf16 and many)) and openvino_installed():
        return f"openvino {'bf16' if bf16 else 'fp32'}"
    return ONNXRUNTIME


def load(folder: Path, threads: int | None = None, many: bool = False, fp32: bool = False) -> ImageEncoder:
    """The exported tower in `folder` on the runtime that suits this CPU and caller (`choice`)."""
    return load_as(folder, choice(many, fp32), threads)


def load_as(folder: Path, runtime: str, threads: int | None = None) -> ImageEncoder:
    """The exported tower on `runtime` (a `choice`); its `runtime` attribute says what runs it.

    OpenVINO is taken only when it imports, compiles and passes its self-check; any failure there
    costs speed, not the answer: ONNX Runtime runs the same export.
    """
    if runtime.startswith("openvino "):
        try:
            from clipsearch.model import openvino_tower

            checked = openvino_tower.load_checked(folder, runtime.split()[1], threads)
        except Exception:  # noqa: BLE001 - not installed, or a runtime gap: ONNX Runtime answers
            checked = None
        if checked is not None:
            return checked
    return OnnxImageEncoder(folder, threads=threads)


class OnnxImageEncoder:
    """Decoded pixels -> normalised float32 vectors with ONNX Runtime; no torch anywhere."""

    runtime = ONNXRUNTIME

    def __init__(self, folder: Path, file: str | None = None, preoptimized: bool | None = None,
                 threads: int | None = None) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        self.meta = meta
        self.preprocess = preprocess_of(meta)
        model = folder / (file or meta.get("file", "model.onnx"))
        self.session = text_tower.session(model, bool(meta.get("preoptimized") if preoptimized is None
                                                      else preoptimized), threads)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, size, size, 3) from images.decode -> (N, dim) normalised float32."""
        (out,) = self.session.run(None, {"pixels": normalise(pixels, self.preprocess)})
        out = np.asarray(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def remove(index_dir: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(index_dir / FOLDER)
