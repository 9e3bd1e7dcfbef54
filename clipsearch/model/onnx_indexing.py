"""Index runs that embed with the exported image tower: no torch in the process.

An `index` run that embeds anything paid ~5 s before its first photo (importing torch and
open_clip ~4.5 s, the image tower's weights ~0.5 s) and ~1.1 GB; ONNX Runtime and the exported
tower (image_tower.py) load in 0.1 s and ~60 MB, then run a photo at about half torch bf16's speed
on a CPU with bf16 instructions, faster than torch fp32 elsewhere. OpenVINO bf16 (the optional
`openvino` extra, openvino_tower.py) runs the same export at about torch bf16's speed per photo or
better, but starts ~0.3-0.4 s later than ONNX Runtime (compile, a slower first call). So
(`tower_runtimes`, bench/bench_onnx_index.py, docs/benchmarks.md "Index runs ... the exported
image tower"): a run of a few pictures takes ONNX Runtime; from OPENVINO_FROM pictures, on a CPU
with native bf16 where OpenVINO is installed, OpenVINO bf16, at any size (it beat torch bf16 per
photo); without OpenVINO (or `CLIPSEARCH_IMAGE_RUNTIME=onnxruntime`) ONNX Runtime up to its
crossover and torch above, as before (torch running vit_torch.py's rebuild of a ViT's image tower,
~0.9 GB at its peak rather than the Embedder's ~1.2 GB); on CPUs without native bf16 (AVX2 only) everything is fp32
and ONNX Runtime outruns torch fp32 per photo, so it takes every run. Any doubt keeps torch (a GPU
that might be used, a precision asked for, a session that will not load, OpenVINO failing its
self-check where ONNX Runtime would be slower than torch): the choice costs speed, never vectors,
which stay within cosine 0.999 of open_clip fp32 on every runtime (the export is verified to that,
OpenVINO self-checked against it).

Threads: each runtime takes every core for its calls, as torch does, and the decode pool shares
them (ingest/pool_size.py); the pool is sized from the measured model rate, so a faster tower
gets more decodes at once without a setting here.

`ImageEmbedder` is what indexing needs from whatever embeds (the torch `Embedder` is one).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from clipsearch.model import image_tower, vit_graph
from clipsearch.model.identity import ModelIdentity, Preprocess

ORT = image_tower.ONNXRUNTIME
# Photos (or video frames) up to which the tower on each runtime beats torch, by the precision
# torch would run in; None: the tower is faster per photo too. A runtime missing here takes ONNX
# Runtime's row. Measured on 2 shared cores (AMD EPYC with avx512_bf16, bench/bench_onnx_index.py,
# docs/benchmarks.md "OpenVINO bf16 for index runs"): ONNX Runtime against torch bf16 crossed at 158
# photos on a quieter machine and at 106-114 in two loaded runs' fits (kept: 150, the rule without
# OpenVINO); OpenVINO bf16 ran a photo at 0.48-0.70x torch bf16's time in run 1 and the backends
# benchmark, 1.02-1.18x in the most loaded run (whose fit crossed at 546 photos; at 300 it still
# ended first, at 0.46x torch's peak RSS), so no limit; ONNX Runtime fp32 took 0.83-0.86x torch
# fp32's time per photo in both runs' fits (so no limit there either, as before; its split rates:
# 0.45x, and 1.10x under the heaviest load).
CROSSOVER: dict[str, dict[str, int | None]] = {
    ORT: {"bf16": 150, "fp32": None},
    "openvino bf16": {"bf16": None, "fp32": None},
    "openvino fp32": {"bf16": 150, "fp32": None},  # as fast as ONNX Runtime fp32 per photo here
}
# Photos from which OpenVINO bf16's start-up (compile from its cache, a slower first call) is paid
# back by its faster photos against ONNX Runtime fp32: the fits crossed at 8 (compiling the ONNX
# file) and 0-2.4 (the fp16 IR it compiles now); 1 photo still ran 1.4-1.6x slower on it.
OPENVINO_FROM = 8
# Photos per tower call: ONNX Runtime's arena keeps the largest batch's activations, and at 8
# rather than the pipeline's 32 a 100-photo run peaked at 571 MB instead of 874 MB, at the same
# speed within noise (bench/bench_onnx_index.py's machine, docs/benchmarks.md).
CHUNK = 8


class ImageEmbedder(Protocol):
    """What an index run needs from its embedder: who it is, how pixels are prepared, and vectors."""

    identity: ModelIdentity
    preprocess: Preprocess
    device: str  # "cpu", "cuda", ...: the decode pool and the GPU decoder read it
    logit_scale: float  # the model's own temperature, recorded for relevance decisions
    logit_bias: float | None
    runtime: str  # what ran the model, for the run's summary: "torch bf16", "onnxruntime fp32", "openvino bf16"
    # The mark its vectors are stored with when a graph not yet checked against open_clip computes
    # them (vit_graph.unchecked_mark, index/unchecked.py); None otherwise.
    unchecked: str | None

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, size, size, 3) from images.decode -> (N, dim) normalised float32."""
        ...


class TowerEmbedder:
    """The exported image tower standing in for the model during an index run.

    Its identity is the index's recorded one, and only where the tower was exported from exactly
    those weights (meta.json's sha256, checked again here) and gives vectors of the recorded size.
    `runtimes` are the ones that beat torch for this run, best first (`tower_runtimes`): the first
    is loaded, and where it falls back (OpenVINO failing its self-check runs ONNX Runtime) to one
    not among them, this refuses, so the run takes torch rather than a slower path.
    """

    def __init__(self, folder: Path, recorded: ModelIdentity, logit_scale: float,
                 logit_bias: float | None, runtimes: tuple[str, ...] = (ORT,)) -> None:
        encoder = image_tower.load_as(folder, runtimes[0])
        if encoder.runtime not in runtimes:
            raise ValueError(f"{runtimes[0]} did not load, and {encoder.runtime} is slower than torch here")
        if encoder.meta.get("weights_sha256") != recorded.weights_sha256:
            raise ValueError("the exported image tower belongs to other weights")
        dim = _output_dim(encoder)
        if isinstance(dim, int) and dim != recorded.embed_dim:
            raise ValueError(f"the exported image tower gives {dim}-d vectors, the index holds {recorded.embed_dim}")
        self.encoder = encoder
        self.identity = recorded
        self.preprocess = encoder.preprocess
        self.device = "cpu"
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias
        self.runtime = encoder.runtime
        # From the meta.json of the graph actually loaded: a check that passes or fails later, while
        # this run embeds, is then matched against exactly this run's vectors.
        self.unchecked = vit_graph.unchecked_mark(encoder.meta)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.identity.embed_dim), dtype=np.float32)
        out = np.concatenate([self.encoder.embed_images(pixels[i:i + CHUNK]) for i in range(0, len(pixels), CHUNK)])
        if out.shape[1] != self.identity.embed_dim:
            raise ValueError(f"the exported image tower gave {out.shape[1]}-d vectors")
        return out


def _output_dim(encoder: image_tower.ImageEncoder) -> object:
    """The vector size the loaded graph declares (an int, or a symbolic name where it does not)."""
    session = getattr(encoder, "session", None)
    if session is not None:  # ONNX Runtime
        return session.get_outputs()[0].shape[-1]
    shape = encoder.compiled.outputs[0].get_partial_shape()  # type: ignore[attr-defined]  # OpenVINO
    last = shape[len(shape) - 1]
    return last.get_length() if last.is_static else None


def gpu_possible() -> bool:
    """Whether torch's automatic choice might take a GPU here, told without importing torch.

    An NVIDIA or AMD (ROCm) device node, WSL's GPU bridge, NVIDIA's driver on Windows, or a Mac
    with Apple silicon (MPS). A GPU that torch cannot use in the end (a CPU-only build) only costs
    the run the tower's speed.
    """
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    if sys.platform == "win32":
        return os.path.exists(os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32", "nvcuda.dll"))
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))


def on_cpu(device: str | None) -> bool:
    """Whether a run asked for `device` runs on the CPU, told without importing torch: `cpu`, or
    `auto` where no GPU might be taken (gpu_possible)."""
    dev = (device or "auto").lower()
    return dev == "cpu" or (dev == "auto" and not gpu_possible())


def torch_precision(device: str | None, precision: str | None) -> str | None:
    """The precision torch would run this index in when it would run on the CPU with the precision
    it picks itself (or fp32, which is the tower's own); None where torch must keep the run: a GPU
    is or may be in play, or bf16/fp16 (or something unknown) was asked for."""
    if not on_cpu(device):
        return None
    req = (precision or "auto").lower()
    if req not in ("auto", "fp32"):
        return None
    from clipsearch.model.embedder import pick_precision  # the Embedder's own rule; /proc/cpuinfo only: no torch

    return pick_precision(req, "cpu")


def tower_runtimes(images: int, device: str | None, precision: str | None) -> tuple[str, ...]:
    """The tower's runtimes that beat loading torch for `images` photos or frames (CROSSOVER),
    best first; () where torch should run it. Which runtime the tower would run on is the image
    tower's own choice (image_tower.choice, $CLIPSEARCH_IMAGE_RUNTIME): OpenVINO for a run of at
    least OPENVINO_FROM pictures where the CPU has native bf16 and it is installed, else ONNX
    Runtime; ONNX Runtime stays as the fallback where it beats torch too."""
    prec = torch_precision(device, precision)
    if prec is None or images <= 0:
        return ()
    fp32 = (precision or "auto").lower() == "fp32"  # asked for by name: no bf16 runtime either
    out = []
    for runtime in dict.fromkeys((image_tower.choice(images >= OPENVINO_FROM, fp32), ORT)):
        limit = CROSSOVER.get(runtime, CROSSOVER[ORT]).get(prec)
        if limit is None or images <= limit:
            out.append(runtime)
    return tuple(out)


def tower_pays(images: int, device: str | None, precision: str | None) -> bool:
    """Whether embedding `images` photos or frames with the tower beats loading torch (CROSSOVER)."""
    return bool(tower_runtimes(images, device, precision))
