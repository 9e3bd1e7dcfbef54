"""The exported image tower on OpenVINO, in bf16 where the CPU has native bf16 (optional extra).

On an AMD EPYC with AVX512-BF16 and no AMX, OpenVINO bf16 ran ViT-B-32's image tower at 1.06-1.24x
the core's ideal GEMM rate, ONNX Runtime fp32 at 1.3-1.5x and torch eager bf16 at 2.0x for one
image (docs/benchmarks.md, "Image tower backends on a CPU without AMX"), at cosine 0.99996 to
open_clip fp32. In fp32 it reads image_export's `model.opt.onnx` as it is; in bf16 it compiles a
copy with fp16 weights that it makes once in the cache (`bf16_graph`: the ONNX file's fp32
weights stayed resident beside the bf16 ones, 1.7x the peak RSS). On two cores it embeds in about
half ONNX Runtime fp32's time, but starts slower (image_tower.py says when `load` takes it; index
runs of many photos do, onnx_indexing.py).

Held to the same bar as the export (image_tower.MIN_COSINE against open_clip fp32): before a
compiled tower answers anything, its vectors of the export's check pictures are compared with the
ones the export recorded (older exports: ONNX Runtime's of the same pictures). The verdict is kept in
the cache, keyed by everything that could change it (OpenVINO's version, the precision, the CPU's
flags, the export, the graph compiled), so later loads skip the check; OpenVINO's own compiled-model cache
(CACHE_DIR) sits beside it: a compile from it took 0.6x an uncached one (0.45 vs 0.73 s, ViT-B-32).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch import config
from clipsearch.model import cpu
from clipsearch.model.image_tower import (
    CHECK_VECTORS,
    MIN_COSINE,
    OnnxImageEncoder,
    check_pixels,
    normalise,
    preprocess_of,
)

PRECISIONS = {"bf16": "bf16", "fp32": "f32"}
OVC = "openvino.tools.ovc"


def _import_runtime() -> Any:
    """OpenVINO's runtime without its model converter.

    `import openvino` also imports openvino.tools.ovc when it can (it catches the ImportError), and
    that costs 0.2-0.5 s of a cold query and starts openvino_telemetry, which ovc sets up without a
    consent dialog: a usage event to Google Analytics on every import unless the user opted out. A
    local photo tool has no business doing that, and it only compiles ONNX files, which the runtime
    reads itself. Blocked for this import only: a later `import openvino.tools.ovc` still works.
    """
    if sys.modules.get("openvino") is not None:
        return sys.modules["openvino"]
    blocked = OVC not in sys.modules
    if blocked:
        sys.modules[OVC] = None  # type: ignore[assignment]
    try:
        import openvino
    finally:
        if blocked and OVC in sys.modules and sys.modules[OVC] is None:
            del sys.modules[OVC]
    return openvino


ov = _import_runtime()


def cache_dir() -> Path:
    """Compiled blobs and check verdicts: rebuildable, shared by indexes of the same weights."""
    return config.cache_home() / "openvino"


class OpenVinoImageEncoder:
    """Decoded pixels -> normalised float32 vectors with OpenVINO on the CPU; no torch anywhere."""

    def __init__(self, folder: Path, precision: str = "bf16", threads: int | None = None,
                 cache: Path | None = None, graph: Path | None = None) -> None:
        """`graph`: what to compile instead of the export's ONNX file (bf16_graph's fp16 copy)."""
        meta = json.loads((folder / "meta.json").read_text())
        self.meta = meta
        self.folder = folder
        self.preprocess = preprocess_of(meta)
        self.precision = precision
        self.runtime = f"openvino {precision}"
        self.check_cosine: float | None = None  # set by load_checked
        props: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            # One stream, latency first: a query embeds one photo, indexing one batch at a time; more
            # streams would split the cores between requests nobody sends in parallel.
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
        }
        if threads:
            props["INFERENCE_NUM_THREADS"] = int(threads)
        if cache is not None:
            props["CACHE_DIR"] = str(cache)
        # From the path, not a read model: with CACHE_DIR a cached blob then loads without parsing the
        # graph, and no Python-held copy of the weights outlives the compile.
        self.graph = graph or folder / meta.get("file", "model.onnx")
        self.compiled = ov.Core().compile_model(str(self.graph), "CPU", props)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, size, size, 3) from images.decode -> (N, dim) normalised float32."""
        out = np.array(self.compiled(normalise(pixels, self.preprocess))[0], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _reference(folder: Path, meta: dict[str, Any], pixels: np.ndarray) -> np.ndarray:
    """open_clip fp32's vectors of the check pictures as the export recorded them, else ONNX Runtime's
    (exports from before they were recorded; ONNX Runtime fp32 was verified against open_clip)."""
    name = meta.get("check_vectors")
    if name:
        with contextlib.suppress(OSError, ValueError):
            ref = np.load(folder / str(name))
            if ref.shape[0] == len(pixels):
                return np.asarray(ref, dtype=np.float32)
    return OnnxImageEncoder(folder).embed_images(pixels)


def bf16_graph(folder: Path, cache: Path) -> Path | None:
    """The export as OpenVINO IR with its weights stored in fp16, made once per export in `cache`.

    Compiled for bf16 from the export's ONNX file, the CPU plugin kept its fp32 weights (352 MB for
    ViT-B-32) beside the bf16 ones it runs: an index run peaked at 770-870 MB. From this copy
    (weights memory-mapped, half the size) the same run peaks at ~450 MB and compiles in about half
    the time; fp16 keeps more of each weight than the bf16 the CPU computes in, and the vectors are
    self-checked as before (cosine 0.99995 to open_clip fp32 on ViT-B-32, as from the ONNX file).
    None where it cannot be written: the ONNX file is compiled instead.
    """
    h = hashlib.sha256(f"{ov.__version__}|fp16-ir|".encode())
    h.update((folder / "meta.json").read_bytes())
    final = cache / "ir" / h.hexdigest()[:32]
    if (final / "model.xml").is_file() and (final / "model.bin").is_file():
        return final / "model.xml"
    meta = json.loads((folder / "meta.json").read_text())
    tmp = final.with_name(f".{final.name}.{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        model = ov.Core().read_model(str(folder / meta.get("file", "model.onnx")))
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=True)
        del model  # the fp32 weights read from the ONNX file: gone before anything compiles
        with contextlib.suppress(OSError):  # another process may have put its copy there first
            os.replace(tmp, final)
    except Exception:  # noqa: BLE001 - a full disk, a graph OpenVINO cannot convert: compile the ONNX file
        return None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "model.xml" if (final / "model.bin").is_file() else None


def _verdict_key(folder: Path, precision: str, graph: Path) -> str:
    h = hashlib.sha256()
    h.update(f"{ov.__version__}|{precision}|{graph.suffix}|{' '.join(sorted(cpu.flags()))}|".encode())
    h.update((folder / "meta.json").read_bytes())
    with contextlib.suppress(OSError):
        h.update((folder / CHECK_VECTORS).read_bytes())
    return h.hexdigest()[:32]


def self_check(encoder: OpenVinoImageEncoder) -> float:
    """The minimum cosine of the encoder's vectors of the check pictures to the reference ones."""
    pixels = check_pixels(encoder.preprocess)
    ref = _reference(encoder.folder, encoder.meta, pixels)
    return float(np.min(np.sum(encoder.embed_images(pixels) * ref, axis=1)))


def load_checked(folder: Path, precision: str, threads: int | None = None) -> OpenVinoImageEncoder | None:
    """The tower compiled (cached) in `precision`, or None when it does not answer like open_clip fp32."""
    cache: Path | None = cache_dir()
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = None  # a read-only home: compile every time, check every time
    graph = bf16_graph(folder, cache) if cache is not None and precision == "bf16" else None
    encoder = OpenVinoImageEncoder(folder, precision, threads, cache, graph)
    verdict = cache / f"check-{_verdict_key(folder, precision, encoder.graph)}.json" if cache else None
    cosine: float | None = None
    if verdict is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            cosine = float(json.loads(verdict.read_text())["min_cosine"])
    if cosine is None:
        cosine = self_check(encoder)
        if verdict is not None:
            tmp = verdict.with_name(f".{verdict.name}.{os.getpid()}")
            with contextlib.suppress(OSError):
                tmp.write_text(json.dumps({"min_cosine": cosine, "precision": precision, "openvino": ov.__version__}))
                os.replace(tmp, verdict)
    encoder.check_cosine = cosine
    return encoder if cosine >= MIN_COSINE else None
