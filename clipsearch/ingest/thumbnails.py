"""Small JPEG previews of indexed photos, cached in the index folder (never beside the photos)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps

from clipsearch.ingest import images

SIZE = 256


def thumbnail(cache_dir: Path, image_id: int, path: str, mtime_ns: int) -> Path | None:
    """The cached preview of `path` (EXIF orientation applied), made when missing; None if unreadable."""
    return preview(cache_dir, f"{image_id}-{mtime_ns}.jpg", f"{image_id}-*.jpg", path, SIZE, 82)


def of_row(cache_dir: Path, image_id: int, path: str, mtime_ns: int, time_s: float | None = None) -> Path | None:
    """The preview of an indexed row: a photo's, or a video's frame at `time_s` (or at the moment a
    frame's path names, `VIDEO#t=SECONDS`, or its first frame)."""
    from clipsearch.formats import is_video

    video, mark, at = path.rpartition("#t=")
    if time_s is None and mark and is_video(video) and at.replace(".", "", 1).isdigit():
        path, time_s = video, float(at)
    if time_s is not None or is_video(path):
        return video_thumbnail(cache_dir, image_id, path, mtime_ns, time_s or 0.0)
    return thumbnail(cache_dir, image_id, path, mtime_ns)


def video_thumbnail(cache_dir: Path, row_id: int, path: str, mtime_ns: int, time_s: float) -> Path | None:
    """A video's frame at `time_s` as a cached preview: decoded again from the video (frames are not
    stored as images, docs/video.md); None when it cannot be read or PyAV is missing."""
    import io

    from clipsearch.ingest import videos

    name = f"{row_id}-{mtime_ns}.jpg"
    if (cache_dir / name).exists():
        return cache_dir / name
    frame = videos.frame_at(path, time_s, SIZE)
    if frame is None:
        return None
    data = io.BytesIO()
    frame.save(data, "JPEG", quality=90)
    data.seek(0)
    return preview(cache_dir, name, f"{row_id}-*.jpg", data, SIZE, 82)


def preview(cache_dir: Path, name: str, earlier: str, source: str | IO[bytes], size: int,
            quality: int) -> Path | None:
    """`source` as an upright JPEG of at most `size` px, cached as `name` in `cache_dir` and made
    when missing; older previews of the same photo (the glob `earlier`) are removed. None if unreadable."""
    target = cache_dir / name
    if target.exists():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)  # inside: a read-only index folder has no previews
        with Image.open(source) as img:
            if (img.format or "").upper() in ("JPEG", "MPO"):
                img.draft("RGB", (size, size))
            img.load()
            shown = ImageOps.exif_transpose(img) or img
            rgb = images.to_rgb(shown)
            rgb.thumbnail((size, size), Image.Resampling.LANCZOS)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            rgb.save(tmp, "JPEG", quality=quality)
            os.replace(tmp, target)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    for old in cache_dir.glob(earlier):  # previews of earlier versions of the file
        if old != target:
            with contextlib.suppress(OSError):
                old.unlink()
    return target
