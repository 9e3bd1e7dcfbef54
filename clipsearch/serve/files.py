"""Reading an indexed photo's file for the gallery: only by index id, only the file the index knows.

A request never names a path. The route looks a row up by its integer id, and the file at the
row's path is used only while it is still the file that was indexed: same size and modification
time, checked on the opened file descriptor (no window between the check and the read). A file
swapped for a symlink to something else, or rewritten since, is refused until it is re-indexed.
Previews are written into the index folder, never beside the photos.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from PIL import Image

from clipsearch.index.records import ImageRecord

VIEW_SIZE = 1600
CHUNK = 256 * 1024

MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
               "bmp": "image/bmp", "tiff": "image/tiff", "heif": "image/heif", "avif": "image/avif",
               # Videos (docs/video.md): a browser's <video> plays these from a moment (#t=SECONDS).
               "mp4": "video/mp4", "m4v": "video/mp4", "mov": "video/quicktime", "webm": "video/webm",
               "mkv": "video/x-matroska", "3gp": "video/3gpp", "mts": "video/mp2t", "avi": "video/x-msvideo"}


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
    from clipsearch.ingest import thumbnails

    target = f"{row.id}-{row.mtime_ns}-{VIEW_SIZE}.jpg"
    if (cache_dir / target).exists():
        return cache_dir / target
    f = open_indexed(row)
    if f is None:
        return None
    with f:
        return thumbnails.preview(cache_dir, target, f"{row.id}-*-{VIEW_SIZE}.jpg", f, VIEW_SIZE, 88)


def camera(row: ImageRecord) -> str | None:
    """"Make Model" as the index recorded it, else from the file's EXIF (photos indexed before cameras
    were recorded)."""
    if row.camera:
        return row.camera
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
