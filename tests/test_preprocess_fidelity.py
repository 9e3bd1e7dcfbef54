"""clipsearch's model input equals open_clip's own preprocess, pixel for pixel (issue 15).

No model: `images._fit` and `images.decode` against `open_clip.transform.image_transform` on noise
(a texture: every pixel of shift or scale shows) over sizes that catch rounding, for every resize
mode and interpolation open_clip offers, and through files with every EXIF orientation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image, ImageOps
from torchvision.transforms import Normalize

from clipsearch.ingest import images
from clipsearch.model.embedder import Preprocess

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# Odd sizes, exact halves (offset rounding), just over 2x and 4x (where resized sides truncate),
# tiny, and very wide or tall strips; (w, h).
SIZES = [(64, 64), (65, 64), (64, 65), (63, 97), (97, 63), (129, 128), (130, 257), (131, 131),
         (257, 129), (1, 1), (2, 3), (5, 1), (1, 7), (33, 48), (480, 7), (9, 600), (1000, 999),
         (640, 480), (480, 640), (301, 200), (200, 301), (127, 255), (255, 127), (66, 131)]
MODES = ["shortest", "longest", "squash"]


def _noise(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _reference_pixels(img: Image.Image, size: int, mode: str, interpolation: str, fill: int = 0) -> np.ndarray:
    """open_clip's eval transform up to the tensor conversion, as uint8 pixels."""
    tf = image_transform(size, is_train=False, mean=MEAN, std=STD, resize_mode=mode,
                         interpolation=interpolation, fill_color=fill)
    out = img
    for t in tf.transforms:
        if type(t).__name__ in ("MaybeToTensor", "ToTensor") or isinstance(t, Normalize):
            break
        out = t(out)
    return np.asarray(out)


def _longest_fails(w: int, h: int, size: int) -> bool:
    ratio = max(w, h) / size
    return round(min(w, h) / ratio) == 0  # open_clip asks Pillow for a 0-pixel side and raises


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [64, 224])
def test_fit_equals_open_clip_pixel_for_pixel(mode: str, interpolation: str, size: int) -> None:
    pre = Preprocess(size, MEAN, STD, interpolation, mode)
    checked = 0
    for i, (w, h) in enumerate(SIZES + [(w * size // 64, h * size // 64) for w, h in SIZES[:8]]):
        if mode == "longest" and _longest_fails(w, h, size):
            continue
        img = _noise(w, h, seed=i)
        ours = images._fit(img, pre)
        ref = _reference_pixels(img, size, mode, interpolation)
        assert ours.shape == (size, size, 3), (w, h)
        np.testing.assert_array_equal(ours, ref, err_msg=f"{w}x{h} {mode} {interpolation} {size}")
        checked += 1
    assert checked >= 25


def test_longest_pads_with_the_models_fill_colour() -> None:
    img = _noise(90, 40, seed=1)
    pre = Preprocess(64, MEAN, STD, "bicubic", "longest", fill_color=128)
    ours = images._fit(img, pre)
    np.testing.assert_array_equal(ours, _reference_pixels(img, 64, "longest", "bicubic", fill=128))
    assert (ours[0] == 128).all()  # the padding is there, and grey


def test_normalised_input_equals_open_clip_tensor() -> None:
    """The embedder's normalisation of our pixels gives open_clip's tensor (the same float ops)."""
    img = _noise(301, 200, seed=3)
    pre = Preprocess(224, MEAN, STD)
    x = torch.from_numpy(images._fit(img, pre)).permute(2, 0, 1).float().div_(255)
    ours = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    ref = image_transform(224, is_train=False, mean=MEAN, std=STD)(img)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_decode_with_every_exif_orientation_equals_open_clip(tmp_path: Path, fmt: str) -> None:
    """A file with an orientation tag: decode == open_clip on the full decode after exif_transpose.

    JPEGs under twice the model size, so draft decoding cannot reduce them (issue 15's draft rule
    is measured separately, docs/fidelity.md).
    """
    pre = Preprocess(64, MEAN, STD)
    for orientation in range(1, 9):
        for w, h in [(97, 63), (127, 64)]:
            path = tmp_path / f"o{orientation}-{w}x{h}.{fmt}"
            exif = Image.Exif()
            exif[0x0112] = orientation
            save: dict[str, Any] = {"quality": 95} if fmt != "png" else {}
            if fmt == "webp":
                save["lossless"] = True
            _noise(w, h, seed=orientation).save(path, exif=exif.tobytes(), **save)
            with Image.open(path) as opened:
                ref_img = ImageOps.exif_transpose(opened).convert("RGB")
            got = images.decode(str(path), pre)
            assert (got.width, got.height) == ref_img.size
            np.testing.assert_array_equal(got.pixels, _reference_pixels(ref_img, 64, "shortest", "bicubic"),
                                          err_msg=f"{fmt} orientation {orientation} {w}x{h}")
