"""A file's first bytes and its size checked before a decoder reads it, so one junk file cannot stall a run.

Pillow identifies a file by trying each format's parser; on a large file of junk named `.jpg` the
JPEG parser skips bytes one at a time looking for a marker (measured: 499 s for 2 GB, growing with
the size). Two checks cost a stat and a 16-byte read instead:

- the contents must start like some image format (not necessarily the one the extension names: a
  PNG saved as .jpg is common and decodes fine);
- the file must not be larger than any image within the pixel limit could be in its format: bytes
  per pixel at worst (16-bit RGBA, uncompressed where the format allows it), plus room for metadata.
"""

from __future__ import annotations

from clipsearch.formats import RAW_EXTENSIONS

# Leading bytes of the formats clipsearch reads (offset, bytes). ISO base media files (HEIF, AVIF)
# and JPEG 2000 boxes carry their tag at offset 4.
SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG, MPO
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"GIF87a"), (0, b"GIF89a"),
    (0, b"II*\x00"), (0, b"MM\x00*"), (0, b"II+\x00"), (0, b"MM\x00+"),  # TIFF, BigTIFF
    (0, b"BM"),
    (0, b"\xff\x4f\xff\x51"),  # JPEG 2000 codestream
    (4, b"jP  "), (4, b"ftyp"),  # JPEG 2000, HEIF/AVIF
    (0, b"P1"), (0, b"P2"), (0, b"P3"), (0, b"P4"), (0, b"P5"), (0, b"P6"), (0, b"P7"),  # netpbm
)
# RIFF....WEBP
_WEBP = (b"RIFF", b"WEBP")

# Worst-case bytes per pixel: 16-bit RGBA is 8; formats that may be stored uncompressed with layers
# or extra channels (TIFF from editors, netpbm, BMP) get twice that. Metadata and thumbnails on top.
BYTES_PER_PIXEL = {".tif": 16, ".tiff": 16, ".bmp": 16, ".pbm": 16, ".pgm": 16, ".ppm": 16, ".pnm": 16}
DEFAULT_BYTES_PER_PIXEL = 8
METADATA_BYTES = 64 * 1024 * 1024


def problem(head: bytes, ext: str, size: int, max_pixels: int) -> tuple[str, str] | None:
    """(reason, detail) when a file of this size starting with `head` cannot be a photo worth decoding."""
    # RAWs have many layouts (rawpy reads them and does not scan for markers); their previews and
    # sensor data make them larger.
    if ext not in RAW_EXTENSIONS and not looks_like_an_image(head):
        return ("not an image", "its first bytes match no image format")
    if ext in RAW_EXTENSIONS:
        limit = max_pixels * 2 * BYTES_PER_PIXEL[".tif"] + METADATA_BYTES
    else:
        limit = max_pixels * BYTES_PER_PIXEL.get(ext, DEFAULT_BYTES_PER_PIXEL) + METADATA_BYTES
    if size > limit:
        return ("too large", f"{size / 1e9:.1f} GB is more than any {ext or 'image'} within the "
                f"{max_pixels // 1_000_000} MP limit can be")
    return None


def looks_like_an_image(head: bytes) -> bool:
    if head[:4] == _WEBP[0] and head[8:12] == _WEBP[1]:
        return True
    return any(head[offset:offset + len(magic)] == magic for offset, magic in SIGNATURES)
