"""Index runs that embed a few photos with the exported image tower: no torch in the process.

An `index` run that embeds anything paid ~5 s before its first photo (importing torch and
open_clip ~4.5 s, the image tower's weights ~0.5 s) and ~1.1 GB; ONNX Runtime and the exported
tower (image_tower.py) load in 0.1 s and ~60 MB, then run a photo at about half torch bf16's speed
on a CPU with bf16 instructions, faster than torch fp32 elsewhere (docs/benchmarks.md, "Fixed
costs of `index`"). So a run that adds a few photos to an index whose tower is exported embeds
them here, and a large one keeps torch: `tower_pays` applies the crossover measured by
bench/bench_onnx_index.py. Any doubt keeps torch (a GPU that might be used, a
precision asked for, a session that will not load): the choice costs speed, never vectors, which
stay within cosine 0.999 of open_clip fp32 on this path (the export is verified to that).

`ImageEmbedder` is what indexing needs from whatever embeds (the torch `Embedder` is one).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from clipsearch.model import image_tower
from clipsearch.model.identity import ModelIdentity, Preprocess

# Photos (or video frames) up to which the tower beats torch, by the precision torch would run
# in; None: the tower is faster per photo too. Measured on 2 cores (AMD EPYC with avx512_bf16,
# bench/bench_onnx_index.py): torch's fixed cost 4.96 s against the tower's 0.09 s, 27.8 ms a
# photo in bf16 against the tower's 58.5 (158 photos; fp32 torch 75.6 ms). More cores shorten both
# paths' per-photo times but not torch's import, so the true crossover grows with cores: these
# are conservative there.
CROSSOVER: dict[str, int | None] = {"bf16": 150, "fp32": None}
# Photos per ONNX Runtime call: its arena keeps the largest batch's activations, and at 8 rather
# than the pipeline's 32 a 100-photo run peaked at 571 MB instead of 874 MB, at the same speed
# within noise (bench/bench_onnx_index.py's machine, docs/benchmarks.md).
CHUNK = 8


class ImageEmbedder(Protocol):
    """What an index run needs from its embedder: who it is, how pixels are prepared, and vectors."""

    identity: ModelIdentity
    preprocess: Preprocess
    device: str  # "cpu", "cuda", ...: the decode pool and the GPU decoder read it
    logit_scale: float  # the model's own temperature, recorded for relevance decisions
    logit_bias: float | None
    runtime: str  # what ran the model, for the run's summary ("torch bf16", "onnx fp32")

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, size, size, 3) from images.decode -> (N, dim) normalised float32."""
        ...


class TowerEmbedder:
    """The exported image tower standing in for the model during an index run (ONNX Runtime, fp32).

    Its identity is the index's recorded one, and only where the tower was exported from exactly
    those weights (meta.json's sha256, checked again here) and gives vectors of the recorded size.
    """

    def __init__(self, folder: Path, recorded: ModelIdentity, logit_scale: float,
                 logit_bias: float | None) -> None:
        encoder = image_tower.OnnxImageEncoder(folder)
        if encoder.meta.get("weights_sha256") != recorded.weights_sha256:
            raise ValueError("the exported image tower belongs to other weights")
        dim = encoder.session.get_outputs()[0].shape[-1]
        if isinstance(dim, int) and dim != recorded.embed_dim:
            raise ValueError(f"the exported image tower gives {dim}-d vectors, the index holds {recorded.embed_dim}")
        self.encoder = encoder
        self.identity = recorded
        self.preprocess = encoder.preprocess
        self.device = "cpu"
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias
        self.runtime = "onnx fp32"

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.identity.embed_dim), dtype=np.float32)
        out = np.concatenate([self.encoder.embed_images(pixels[i:i + CHUNK]) for i in range(0, len(pixels), CHUNK)])
        if out.shape[1] != self.identity.embed_dim:
            raise ValueError(f"the exported image tower gave {out.shape[1]}-d vectors")
        return out


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


def torch_precision(device: str | None, precision: str | None) -> str | None:
    """The precision torch would run this index in when it would run on the CPU with the precision
    it picks itself (or fp32, which is the tower's own); None where torch must keep the run: a GPU
    is or may be in play, or bf16/fp16 (or something unknown) was asked for."""
    dev = (device or "auto").lower()
    if dev not in ("auto", "cpu") or (dev == "auto" and gpu_possible()):
        return None
    req = (precision or "auto").lower()
    if req not in ("auto", "fp32"):
        return None
    from clipsearch.model.embedder import pick_precision  # the Embedder's own rule; /proc/cpuinfo only: no torch

    return pick_precision(req, "cpu")


def tower_pays(images: int, device: str | None, precision: str | None) -> bool:
    """Whether embedding `images` photos or frames with the tower beats loading torch (CROSSOVER)."""
    prec = torch_precision(device, precision)
    if prec is None or images <= 0:
        return False
    limit = CROSSOVER.get(prec)
    return limit is None or images <= limit
