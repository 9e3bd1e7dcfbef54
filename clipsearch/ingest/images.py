"""Decoding one photo into the model's input and the metadata the index keeps.

Large JPEGs are decoded with `Image.draft`, which scales in the DCT domain while at least 3x the
model's input size is left (DRAFT_MARGIN): a 12 MP photo decodes about 2x faster, and the image
vector stays within cosine 0.998 of a full decode even for textures. EXIF orientation is applied before
anything else sees the pixels. Any failure becomes a `SkipFile` with a reason a user understands.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.formats import HEIF_EXTENSIONS, PILLOW_EXTENSIONS, RAW_EXTENSIONS
from clipsearch.ingest import sanity
from clipsearch.model.identity import Preprocess

__all__ = ["DEFAULT_MAX_PIXELS", "PILLOW_EXTENSIONS"]

# Pillow warns about corrupt EXIF, odd palettes and large images on stderr; a skipped file's reason
# or our own pixel limit says what matters, so the warnings would only be noise in the user's terminal.
# (Module-level filters: catch_warnings() is not thread-safe and decoding runs in threads.)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)



# JPEG draft decoding may reduce only while the decoded image keeps DRAFT_MARGIN x the model's input
# size on both sides. The DCT-domain downscale acts like a box filter, and what it lets through
# folds back into the picture when the bicubic resize after it shrinks by exactly 2x (or not at
# all): textures fell to cosine 0.71-0.96 of a full decode. With 3x left to shrink, the worst case
# measured is 0.9984 (docs/fidelity.md, bench/bench_draft.py).
DRAFT_MARGIN = 3.0

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011
_DATETIME = 0x0132


class SkipFile(Exception):  # noqa: N818 - a signal, caught by the indexer, not a user-facing error
    """This file cannot be indexed; `reason` is a short stable phrase, `detail` the specifics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8 (size, size, 3), ready for the model
    width: int  # after EXIF orientation
    height: int
    format: str
    taken_at: str | None = None  # ISO 8601, with offset when the camera recorded one
    gps: tuple[float, float] | None = None
    camera: str | None = None  # EXIF Make and Model, e.g. "Apple iPhone 13"
    # decode(pixels=False) of a JPEG: pixels left to the GPU (gpu_decode.py), the file's bytes here.
    jpeg_data: bytes | None = None


def heif_available() -> bool:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def raw_available() -> bool:
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def _register_heif() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()


def _open_raw(path: str) -> Image.Image:
    """A RAW file's embedded JPEG preview, or a half-size demosaic when it has none."""
    import io

    import rawpy

    with rawpy.imread(path) as raw:
        try:
            thumb = raw.extract_thumb()
        except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
            thumb = None
        if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
            return Image.open(io.BytesIO(bytes(thumb.data)))
        if thumb is not None and thumb.format == rawpy.ThumbFormat.BITMAP:
            return Image.fromarray(np.asarray(thumb.data))
        return Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True))


def _exif_time(exif: Image.Exif) -> str | None:
    sub = exif.get_ifd(_EXIF_IFD)
    raw = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    if not isinstance(raw, str):
        return None
    try:
        when = dt.datetime.strptime(raw.strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    offset = sub.get(_OFFSET_TIME_ORIGINAL)
    if isinstance(offset, str):
        with contextlib.suppress(ValueError):
            when = when.replace(tzinfo=dt.datetime.strptime(offset.strip().rstrip("\x00"), "%z").tzinfo)
    return when.isoformat()


def _exif_gps(exif: Image.Exif) -> tuple[float, float] | None:
    gps = exif.get_ifd(_GPS_IFD)
    try:
        lat_ref, lat, lon_ref, lon = gps[1], gps[2], gps[3], gps[4]

        def deg(v: Any) -> float:
            return float(v[0]) + float(v[1]) / 60 + float(v[2]) / 3600

        la, lo = deg(lat), deg(lon)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
        return None
    la = -la if str(lat_ref).upper().startswith("S") else la
    lo = -lo if str(lon_ref).upper().startswith("W") else lo
    if not (-90 <= la <= 90 and -180 <= lo <= 180):
        return None
    return (round(la, 7), round(lo, 7))


def _camera(exif: Image.Exif) -> str | None:
    """"Make Model" from EXIF, without the make twice ("Canon Canon EOS R5") or padding NULs."""
    try:
        make, model = (str(exif.get(tag) or "").replace("\0", " ").strip() for tag in (0x010F, 0x0110))
    except Exception:  # noqa: BLE001 - metadata is optional, the pixels are not
        return None
    if make and model.lower().startswith(make.split()[0].lower()):
        make = ""
    return " ".join(p for p in (make, model) if p)[:120] or None


def _metadata(exif: Image.Exif) -> tuple[str | None, tuple[float, float] | None]:
    try:
        return _exif_time(exif), _exif_gps(exif)
    except Exception:  # noqa: BLE001 - metadata is optional, the pixels are not
        return None, None


def _fit(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """open_clip's eval transform (resize, crop or pad) to a uint8 square, pixel for pixel.

    The sizes and offsets follow torchvision's `Resize`/`CenterCrop` and open_clip's
    `ResizeKeepRatio`/`CenterCropOrPad` to the letter: the resized long side is truncated
    (`int(size * long / short)`), "longest" rounds both sides half to even (Python's `round`), and
    crop offsets are `int(round(excess / 2))`. Rounding anything else shifts or rescales about half
    of all photos by a pixel, which costs texture-heavy photos up to 0.02 of cosine (issue 15).
    An image already at the target size is not resampled, as in torchvision.
    """
    size = pre.size
    # open_clip maps every name but "bilinear" to bicubic (its "random" means bicubic at eval time).
    resample = _RESAMPLE.get(pre.interpolation, Image.Resampling.BICUBIC)
    w, h = img.size
    if pre.resize_mode == "squash":
        if (w, h) != (size, size):
            img = img.resize((size, size), resample)
        return np.array(img, dtype=np.uint8)
    if pre.resize_mode == "longest":
        # ResizeKeepRatio(longest=1): ratio = max * 1 + min * 0, each side round(side * 1.0 / ratio).
        ratio_h, ratio_w = h / size, w / size
        ratio = max(ratio_h, ratio_w) * 1.0 + min(ratio_h, ratio_w) * (1.0 - 1.0)
        # A side that rounds to 0 (a 1000:1 strip) makes open_clip fail; one pixel keeps the file.
        nh, nw = max(1, round(h * 1.0 / ratio)), max(1, round(w * 1.0 / ratio))
    else:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    if nw < size or nh < size:
        # CenterCropOrPad (CenterCrop pads the same way, with 0): the smaller half of the excess
        # goes left/top.
        left, top = max(0, (size - nw) // 2), max(0, (size - nh) // 2)
        canvas = Image.new("RGB", (max(size, nw), max(size, nh)), (pre.fill_color,) * 3)
        canvas.paste(img, (left, top))
        img = canvas
        nw, nh = img.size
        if (nw, nh) == (size, size):
            return np.array(img, dtype=np.uint8)
    top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)  # half to even, as torchvision
    img = img.crop((left, top, left + size, top + size))
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become white, as a viewer would show them, not black.
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        return Image.fromarray((arr * (255.0 / hi)).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def decode(path: str, pre: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS, pixels: bool = True) -> Decoded:
    """Read `path` into model-ready pixels and metadata, or raise SkipFile saying why not.

    With `pixels=False` a JPEG's pixels are not decoded: `jpeg_data` holds the file for the GPU
    (every other check and the metadata are as usual); other formats decode as always."""
    ext = os.path.splitext(path)[1].lower()
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise SkipFile("empty file")
        with open(path, "rb") as f:  # 16 bytes and the size, before any decoder scans the file
            found = sanity.problem(f.read(16), ext, size, max_pixels)
        if found is not None:
            raise SkipFile(*found)
        # Pillow refuses images above twice its own limit (179 MP by default) before ours applies:
        # ours decides (a value every decoding thread sets alike).
        Image.MAX_IMAGE_PIXELS = max(max_pixels, 1)
        if ext in RAW_EXTENSIONS:
            if not raw_available():
                raise SkipFile("needs the raw extra", "pip install 'clipsearch[raw]'")
            img = _open_raw(path)
        else:
            if ext in HEIF_EXTENSIONS:
                if not heif_available():
                    raise SkipFile("needs the heif extra", "pip install 'clipsearch[heif]'")
                _register_heif()
            img = Image.open(path)
        with img:
            decoded = _decode_open(img, pre, max_pixels, pixels)
        if decoded.jpeg_data is not None:
            with open(path, "rb") as f:
                decoded.jpeg_data = f.read()
        return decoded
    except SkipFile:
        raise
    except FileNotFoundError as exc:
        raise SkipFile("vanished", "deleted or moved while indexing") from exc
    except PermissionError as exc:
        raise SkipFile("unreadable", "permission denied") from exc
    except IsADirectoryError as exc:
        raise SkipFile("not a file", "a folder with an image-like name") from exc
    except Image.DecompressionBombError as exc:
        # Pillow's own words ("Image size (N pixels) exceeds limit of 178956970 pixels, could be…")
        # are not for users: the size, and that it is past what is opened at all.
        count = re.search(r"\((\d+) pixels\)", str(exc))
        megapixels = f"{int(count.group(1)) / 1e6:.0f} MP" if count else "the image"
        raise SkipFile("too many pixels", f"{megapixels}, past the size any image is opened at: a decompression-bomb "
                       "guard") from exc
    except UnidentifiedImageError as exc:
        raise SkipFile("not an image", "no image format recognised the contents") from exc
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise SkipFile("unreadable", "permission denied") from exc
        raise SkipFile("corrupt or truncated", str(exc)[:160]) from exc
    except (ValueError, SyntaxError, EOFError, IndexError, struct.error, MemoryError) as exc:
        raise SkipFile("corrupt or truncated", f"{type(exc).__name__}: {str(exc)[:140]}") from exc


def _decode_open(img: Image.Image, pre: Preprocess, max_pixels: int, pixels: bool = True) -> Decoded:
    fmt = (img.format or "").upper()
    if fmt == "MPO":  # phones' multi-picture JPEGs: a JPEG to every user, and draft() works on them
        fmt = "JPEG"
    width, height = img.size  # from the header, before draft() shrinks the decode
    if width * height > max_pixels:
        raise SkipFile("too many pixels", f"{width}x{height} is over the {max_pixels // 1_000_000} MP limit")
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not cost the picture
        exif = Image.Exif()
    try:
        orientation = int(exif.get(0x0112, 1) or 1)
    except (TypeError, ValueError):
        orientation = 1
    taken_at, gps = _metadata(exif)
    if fmt == "JPEG" and not pixels:
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        return Decoded(np.zeros((0, 0, 3), np.uint8), width, height, "jpeg", taken_at, gps, _camera(exif), b"")
    if fmt == "JPEG":
        # Draft picks the largest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least the size
        # asked for: DRAFT_MARGIN x the model size, so the final resize still shrinks by that much.
        req = math.ceil(pre.size * DRAFT_MARGIN)
        img.draft("RGB", (req, req))
    img.load()  # animated formats load their first frame
    if orientation != 1:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - a broken orientation tag leaves the image as stored
            orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return Decoded(_fit(to_rgb(img), pre), width, height, fmt.lower() or "unknown", taken_at, gps, _camera(exif))
