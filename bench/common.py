"""Shared pieces of the benchmarks: reproducible photos, random-weight models, machine facts, results.

Nothing here downloads anything: photos are real photographs that ship inside installed packages
(scikit-image's data images), scaled to camera and phone sizes; models are open_clip architectures
with random weights (speed does not depend on weight values) saved in the local-dir layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"  # generated photos and models; ignored by git
RESULTS = ROOT / "results"

# The project's tiny trained CLIP: `--quick` runs use it, so a smoke run loads no large model.
TINY = ROOT.parent / "tests" / "fixtures" / "tiny-clip"

CAMERA = (4000, 3000)  # 12 MP
PHONE = (1600, 1200)


def source_photos() -> list[Image.Image]:
    """The colour photographs shipped with scikit-image (astronaut, coffee, chelsea, rocket, ...)."""
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "retina", "immunohistochemistry",
             "hubble_deep_field", "colorwheel", "logo"]
    out = []
    for name in names:
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            arr = fn()
        except Exception:  # noqa: BLE001 - a data image that needs a download is simply left out
            continue
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        out.append(Image.fromarray(np.asarray(arr)[..., :3].astype(np.uint8)))
    return out


def random_crop(img: Image.Image, rng: np.random.Generator, smallest: float) -> Image.Image:
    """A crop of `img` keeping between `smallest` and all of each side, placed at random."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(smallest, 1.0)), int(h * rng.uniform(smallest, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def make_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """`count` JPEGs (quality 90) at `size`, from the real photos with crops, flips and EXIF rotation."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) == count:
        return existing
    for p in existing:
        p.unlink()
    rng = np.random.default_rng(seed)
    sources = source_photos()
    paths = []
    for i in range(count):
        img = random_crop(sources[i % len(sources)], rng, 0.7).resize(size, Image.Resampling.BICUBIC)
        # Sensor-like noise: upscaled smooth pictures would compress (and decode) unrealistically fast.
        noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 4, size=(size[1], size[0], 1)).astype(np.int16)
        img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        exif = Image.Exif()
        if i % 5 == 0:  # some photos stored sideways with an orientation tag, as phones do
            img = img.transpose(Image.Transpose.ROTATE_90)
            exif[0x0112] = 6
        path = folder / f"photo{i:05d}.jpg"
        img.save(path, quality=90, exif=exif)
        paths.append(path)
    return paths


def random_model(arch: str) -> Path:
    """An open_clip `arch` with random weights in the local-dir layout (cached between runs)."""
    folder = CACHE / "models" / arch
    if (folder / "open_clip_model.safetensors").exists():
        return folder
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    cfg = open_clip.get_model_config(arch)
    pre = {"size": model.visual.image_size[0] if isinstance(model.visual.image_size, tuple)
           else model.visual.image_size}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))
    return folder


def embed_dim(model_dir: Path) -> int:
    return int(json.loads((model_dir / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"])


def machine() -> dict[str, Any]:
    import torch

    from clipsearch import __version__
    from clipsearch.model.embedder import cpu_has_native_bf16

    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")),
               platform.processor())
    return {
        "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "cpu": cpu,
        "amx_bf16": " amx_bf16" in flags, "avx512_bf16": " avx512_bf16" in flags,
        "native_bf16": cpu_has_native_bf16(), "python": platform.python_version(), "torch": torch.__version__,
        "clipsearch": __version__, "pillow": Image.__version__,
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_cli(args: list[str], env: dict[str, str] | None = None,
            peak_rss: bool = False) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run `clipsearch ARGS` in a new process; with `peak_rss`, under /usr/bin/time (see peak_rss_mb)."""
    timed = ["/usr/bin/time", "-f", "peak-rss-kb %M"] if peak_rss and Path("/usr/bin/time").exists() else []
    start = time.perf_counter()
    proc = subprocess.run([*timed, sys.executable, "-m", "clipsearch", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"clipsearch {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc


EXPORT_MARKER = ".model-export.running"  # clipsearch/model/background_export.py


def wait_for_exports(index: Path, timeout_s: float = 1800.0) -> dict[str, float]:
    """Wait for the background exporter `clipsearch index` left for this index (none: returns at once).

    So that it neither shares the cores with the next measurement nor writes into a deleted folder.
    Returns the seconds until the text tower was in place and until the exporter was done, and the
    exporter's own peak RSS (VmHWM, read from /proc while it runs; 0 where that cannot be read).
    """
    start = time.perf_counter()
    marker = index / EXPORT_MARKER
    text_s = 0.0 if (index / "text-model" / "meta.json").exists() else float("nan")
    peak_kb = 0
    while marker.exists() and time.perf_counter() - start < timeout_s:
        if text_s != text_s and (index / "text-model" / "meta.json").exists():  # nan: not yet
            text_s = time.perf_counter() - start
        with contextlib.suppress(OSError, ValueError):
            pid = int(json.loads(marker.read_text())["pid"])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        time.sleep(0.1)
    done_s = time.perf_counter() - start
    if text_s != text_s and (index / "text-model" / "meta.json").exists():
        text_s = done_s
    return {"text_ready_s": text_s, "exports_done_s": done_s, "exporter_peak_rss_mb": peak_kb / 1024}


def peak_rss_mb(proc: subprocess.CompletedProcess[str]) -> float:
    for line in reversed(proc.stderr.splitlines()):
        if line.startswith("peak-rss-kb "):
            return int(line.split()[1]) / 1024
    return float("nan")


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
