"""The file extensions clipsearch indexes, kept apart from images.py so that walking folders and
parsing queries do not import Pillow."""

from __future__ import annotations

# Extensions Pillow reads natively. HEIC and RAW need the optional extras.
PILLOW_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp", ".avif",
    ".jp2", ".j2k", ".jpf", ".jpx", ".pbm", ".pgm", ".ppm", ".pnm",
})
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".orf", ".rw2", ".raf", ".pef",
                            ".srw", ".x3f", ".3fr", ".iiq", ".rwl", ".erf", ".kdc", ".mrw"})
IMAGE_EXTENSIONS = PILLOW_EXTENSIONS | HEIF_EXTENSIONS | RAW_EXTENSIONS
# Videos (docs/video.md): decoded by PyAV, the `video` extra.
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".3gp", ".mts"})
INDEXED_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
# The skip reason of a video met without PyAV, and what to do about it (said once in the summary).
NO_DECODER = "video decoder missing"
NO_DECODER_DETAIL = "install the video extra: pip install 'clipsearch[video]' (PyAV)"


def is_video(path: str) -> bool:
    dot = path.rfind(".")
    return dot >= 0 and path[dot:].lower() in VIDEO_EXTENSIONS
