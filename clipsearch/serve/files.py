"""Reading an indexed photo's file for the gallery: only by index id, only the file the index knows.

A request never names a path. The route looks a row up by its integer id, and the file at the
row's path is used only while it is still the file that was indexed: same size and modification
time, checked on the opened file descriptor (no window between the check and the read). A file
swapped for a symlink to something else, or rewritten since, is refused until it is re-indexed.
Previews are written into the index folder, never beside the photos.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps

from clipsearch.index.records import ImageRecord
from clipsearch.ingest import images

VIEW_SIZE = 1600
CHUNK = 256 * 1024

MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
               "bmp": "image/bmp", "tiff": "image/tiff", "heif": "image/heif", "avif": "image/avif"}


def open_indexed(row: ImageRecord) -> IO[bytes] | None:
    """The photo's file opened for reading, or None when it is gone or is not what was indexed."""
    try:
        f = open(row.path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    except OSError:
        return None
    try:
        st = os.fstat(f.fileno())
        import stat

        if not stat.S_ISREG(st.st_mode) or st.st_size != row.size or st.st_mtime_ns != row.mtime_ns:
            f.close()
            return None
        return f
    except OSError:
        f.close()
        return None


def iter_file(f: IO[bytes]) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def view(cache_dir: Path, row: ImageRecord) -> Path | None:
    """A JPEG of the photo at most VIEW_SIZE px, upright (EXIF orientation applied), made once."""
    target = cache_dir / f"{row.id}-{row.mtime_ns}-{VIEW_SIZE}.jpg"
    if target.exists():
        return target
    f = open_indexed(row)
    if f is None:
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with f, Image.open(f) as img:
            if (img.format or "").upper() in ("JPEG", "MPO"):
                img.draft("RGB", (VIEW_SIZE, VIEW_SIZE))
            img.load()
            shown = ImageOps.exif_transpose(img) or img
            rgb = images.to_rgb(shown)
            rgb.thumbnail((VIEW_SIZE, VIEW_SIZE), Image.Resampling.LANCZOS)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            rgb.save(tmp, "JPEG", quality=88)
            os.replace(tmp, target)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    for old in cache_dir.glob(f"{row.id}-*-{VIEW_SIZE}.jpg"):
        if old != target:
            with contextlib.suppress(OSError):
                old.unlink()
    return target


def camera(row: ImageRecord) -> str | None:
    """"Make Model" from the file's EXIF when it has one (the index does not store it)."""
    f = open_indexed(row)
    if f is None:
        return None
    try:
        with f, Image.open(f) as img:
            exif = img.getexif()
            make = str(exif.get(0x010F, "") or "").strip().strip("\x00")
            model = str(exif.get(0x0110, "") or "").strip().strip("\x00")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if model.lower().startswith(make.lower()):
        make = ""  # "Canon Canon EOS 5D" reads better as "Canon EOS 5D"
    return " ".join(p for p in (make, model) if p) or None
