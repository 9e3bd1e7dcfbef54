"""GPU JPEG decoding (gpu_decode.py), tested on the CPU: nvJPEG is mocked only at the device
boundary (decode_jpeg's device='cuda' runs torchvision's CPU decoder), everything else is real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapes
import torch
import torchvision.io
from open_clip.transform import image_transform
from PIL import Image
from torchvision.transforms import CenterCrop, Resize

from clipsearch.ingest import gpu_decode, images, local_executor, scan
from clipsearch.model.embedder import Embedder
from clipsearch.model.identity import Preprocess

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _noise(w: int, h: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


@pytest.mark.parametrize(("w", "h"), [(301, 200), (200, 301), (64, 64), (65, 64), (1000, 999), (33, 480),
                                      (224, 224), (225, 448)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_fit_tensor_is_open_clips_transform_on_a_tensor(w: int, h: int, interpolation: str) -> None:
    pre = Preprocess(224, MEAN, STD, interpolation)
    img = _noise(w, h, seed=w * h)
    tf = image_transform(224, is_train=False, mean=MEAN, std=STD, interpolation=interpolation)
    ref = img
    for t in tf.transforms:
        if isinstance(t, (Resize, CenterCrop)):
            ref = t(ref)
    assert torch.equal(gpu_decode.fit_tensor(img, pre), ref)


def test_fit_tensor_agrees_with_the_pil_path_on_photos() -> None:
    """Pillow's and torchvision's bicubic filters round differently: a pixel level apart at most
    on smooth pictures, nothing a vector notices."""
    pre = Preprocess(224, MEAN, STD)
    from skimage import data

    for arr in (data.astronaut(), data.coffee(), data.chelsea()):
        pil = images._fit(Image.fromarray(arr), pre).astype(np.int16)
        ours = gpu_decode.fit_tensor(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), pre)
        diff = np.abs(ours.permute(1, 2, 0).numpy().astype(np.int16) - pil)
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4


class _CudaLike:
    """The tiny embedder as if its device were CUDA: only the device name differs."""

    def __init__(self, emb: Embedder) -> None:
        self.emb, self.preprocess, self.device = emb, emb.preprocess, "cuda"

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        return self.emb.embed_images(pixels)


@pytest.fixture
def gpu_mocked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """decode_jpeg(device='cuda') runs on the CPU; returns the (batch size, device) of each call."""
    real = torchvision.io.decode_jpeg
    calls: list[tuple[int, str]] = []

    def fake(data: Any, mode: Any = torchvision.io.ImageReadMode.UNCHANGED, device: str = "cpu",
             apply_exif_orientation: bool = False) -> Any:
        calls.append((len(data) if isinstance(data, list) else 1, str(device)))
        return real(data, mode=mode, device="cpu", apply_exif_orientation=apply_exif_orientation)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake)
    return calls


def test_cuda_indexing_decodes_jpegs_on_the_gpu_and_the_rest_on_the_cpu(
        tmp_path: Path, tiny_embedder: Embedder, gpu_mocked: list[tuple[int, str]]) -> None:
    made = shapes.write_heldout(tmp_path / "src", per_class=1, seed=77)[:12]
    files = []
    for i, (path, _, _) in enumerate(made):
        img = Image.open(path).convert("RGB").resize((300 + 7 * i, 200 + 5 * i))
        target = tmp_path / f"p{i:02d}.{'png' if i % 4 == 3 else 'jpg'}"
        if i == 5:  # EXIF orientation 6: nvJPEG's result must be turned as Pillow's is
            exif = Image.Exif()
            exif[0x0112] = 6
            img.save(target, exif=exif.tobytes(), quality=95)
        else:
            img.save(target, quality=95)
        files.append(target)
    broken = tmp_path / "broken.jpg"  # a JPEG header, then garbage: neither decoder can read it
    broken.write_bytes(files[0].read_bytes()[:600] + b"\x00" * 4000)
    files.insert(4, broken)
    found = [scan.FoundFile(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    gpu = list(local_executor.embed_files(found, _CudaLike(tiny_embedder), images.DEFAULT_MAX_PIXELS))  # type: ignore[arg-type]
    cpu = list(local_executor.embed_files(found, tiny_embedder, images.DEFAULT_MAX_PIXELS))
    assert gpu_mocked and all(device == "cuda" for _, device in gpu_mocked)
    assert gpu_mocked[0][0] == 10  # one batch: the 10 readable-looking JPEGs of 13 files (3 PNGs)
    assert [r.file.path for r in gpu] == [str(p) for p in files]
    for g, c in zip(gpu, cpu, strict=True):
        assert (g.skip is None) == (c.skip is None), g.file.path
        if g.skip is not None:
            assert g.file.path == str(broken)
            continue
        assert g.record is not None and c.record is not None
        assert (g.record.width, g.record.height, g.record.taken_at) == (c.record.width, c.record.height,
                                                                        c.record.taken_at)
        assert g.vector is not None and c.vector is not None
        assert float(g.vector @ c.vector) >= 0.995, g.file.path


def test_not_used_off_cuda_or_for_other_resize_modes() -> None:
    assert not gpu_decode.usable("cpu", Preprocess(224, MEAN, STD))
    assert not gpu_decode.usable("mps", Preprocess(224, MEAN, STD))
    assert not gpu_decode.usable("cuda", Preprocess(224, MEAN, STD, resize_mode="longest"))
    assert gpu_decode.usable("cuda:0", Preprocess(224, MEAN, STD))
