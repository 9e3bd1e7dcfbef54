"""JPEG batches decoded on the GPU (nvJPEG through torchvision) when the model runs on CUDA.

With a GPU the model eats thousands of photos a second and the CPU's decoders become the whole
bottleneck. When the embedder's device is CUDA the local executor reads JPEG files' headers and
bytes in its threads (images.decode with `pixels=False`: the same checks, EXIF and metadata) and
hands each batch's bytes to `decode_batch`: one `torchvision.io.decode_jpeg(device='cuda')` call,
then the resize and centre crop of open_clip's eval transform on the GPU tensors (`fit_tensor`).
Anything else (other formats, a "longest"/"squash" model, a batch or a file nvJPEG refuses) is
decoded by the CPU path as before. Unmeasured here (no GPU on the build machines): see
docs/benchmarks.md.

`fit_tensor` is torchvision's Resize (bicubic, antialias) and CenterCrop, which is what open_clip's
transform does to a tensor; on a PIL image the CPU path gives the same up to Pillow's and
torchvision's rounding of the bicubic filter (tests/test_gpu_decode.py measures both).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from clipsearch.ingest import images
from clipsearch.model.identity import Preprocess


def usable(device: str, pre: Preprocess) -> bool:
    """Whether JPEGs go to the GPU: a CUDA model, the "shortest" resize, and torchvision's decoder."""
    if not device.startswith("cuda") or pre.resize_mode != "shortest":
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def fit_tensor(img: Any, pre: Preprocess) -> Any:
    """uint8 (3, H, W) -> uint8 (3, size, size): open_clip's eval Resize + CenterCrop on a tensor.

    torchvision's own functions, so the sizes follow Resize(size) (short side to `size`, the long
    side truncated) and CenterCrop's half-to-even offsets exactly as open_clip applies them.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tf

    mode = InterpolationMode.BILINEAR if pre.interpolation == "bilinear" else InterpolationMode.BICUBIC
    if tuple(img.shape[-2:]) != (pre.size, pre.size):
        img = tf.resize(img, pre.size, interpolation=mode, antialias=True)
    return tf.center_crop(img, [pre.size, pre.size])


def decode_batch(data: list[bytes], pre: Preprocess, device: str) -> list[np.ndarray | None]:
    """JPEG bytes -> uint8 (size, size, 3) pixels, decoded and fitted on `device`; None where nvJPEG
    failed (the caller decodes those on the CPU). One batched call, then one by one if it fails."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    # torchvision 0.29 deprecates its decoders in favour of TorchCodec, warning on every call; the
    # warning is for us, not for the user's terminal (module-level: decoding threads run meanwhile).
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
    try:
        decoded: list[Any | None] = list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device,
                                                     apply_exif_orientation=True))
    except RuntimeError:  # one bad file fails the batch: find it
        decoded = []
        for t in tensors:
            try:
                decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except RuntimeError:
                decoded.append(None)
    out: list[np.ndarray | None] = []
    for img in decoded:
        if img is None:
            out.append(None)
            continue
        out.append(np.ascontiguousarray(fit_tensor(img, pre).permute(1, 2, 0).cpu().numpy()))
    return out


def fill(paths: list[str], waiting: list[images.Decoded], pre: Preprocess, device: str,
         max_pixels: int) -> list[np.ndarray | images.SkipFile]:
    """Pixels for decodes that left them to the GPU (`jpeg_data`), in one batch; what nvJPEG could not
    decode goes through the CPU path (images.decode), whose SkipFile says why a file is unusable."""
    got = decode_batch([d.jpeg_data or b"" for d in waiting], pre, device)
    out: list[np.ndarray | images.SkipFile] = []
    for path, pixels in zip(paths, got, strict=True):
        if pixels is None:
            try:
                pixels = images.decode(path, pre, max_pixels).pixels
            except images.SkipFile as skip:
                out.append(skip)
                continue
        out.append(pixels)
    return out
