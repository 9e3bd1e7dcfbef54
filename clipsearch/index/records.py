"""The index's one record type, and how its values are stored in SQLite.

An `ImageRecord` is a photo as the index knows it: what local indexing, Ray workers, shards and
merges produce, what the store writes, and what searches and filters read back (with its id).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One photo's row in the `images` table; `id` is 0 until the store has given it one."""

    path: str  # absolute, as the OS gives it (may hold surrogate escapes for non-UTF-8 names)
    size: int
    mtime_ns: int
    fingerprint: str
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: str | None = None
    lat: float | None = None
    lon: float | None = None
    camera: str | None = None  # EXIF make and model (schema step m007; none for photos indexed before)
    id: int = 0

    def fields(self) -> dict[str, Any]:
        """Every column but the path and the id: what travels with a vector (Ray, shard files)."""
        out = dataclasses.asdict(self)
        del out["path"], out["id"]
        return out

    @classmethod
    def from_fields(cls, path: str, fields: dict[str, Any]) -> ImageRecord:
        # Shards written before the camera was recorded have no "camera": it is then unknown.
        values: dict[str, Any] = {k: fields[k] if k != "camera" else fields.get(k) for k in FIELDS}
        return cls(path=path, **values)


# The columns of `fields()`, in table order.
FIELDS = ("size", "mtime_ns", "fingerprint", "width", "height", "format", "taken_at", "lat", "lon", "camera")
COLUMNS = ("path", *FIELDS)


@dataclass(frozen=True)
class KnownFile:
    """What planning needs of an indexed file to tell unchanged, changed and moved files apart."""

    id: int
    size: int
    mtime_ns: int
    fingerprint: str


@dataclass(frozen=True)
class SkipRecord:
    """A file that could not be indexed, and why: kept so an unchanged bad file is not decoded again."""

    path: str
    size: int
    mtime_ns: int
    reason: str
    detail: str = ""


def path_columns(path: str) -> tuple[str, bytes | None]:
    """(text key, raw bytes or None): text SQLite can store, and the exact name when it differs."""
    raw = os.fsencode(path)
    text = raw.decode("utf-8", "backslashreplace")
    return text, (raw if text.encode("utf-8", "surrogatepass") != raw else None)


def os_path(text: str, raw: bytes | None) -> str:
    return os.fsdecode(raw) if raw is not None else text


def encode_vector(vec: np.ndarray) -> bytes:
    """Vectors are stored as little-endian float32 blobs (docs/storage.md)."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def decode_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def now() -> str:
    """The timestamps the index records: UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class VideoFrames:
    """What a video adds to its `ImageRecord`: its metadata and its kept frames (schema step m008).

    `times[0]`/`vectors[0]` are the frame the video's own row holds; the others become frame rows.
    """

    times: tuple[float, ...]
    vectors: np.ndarray  # (frames, dim) float32, L2-normalised
    duration_s: float | None = None
    fps: float | None = None
    rotation: int = 0
    note: str = ""  # set when only part of the video could be decoded


@dataclass(frozen=True)
class Moment:
    """Where a row sits in a video: the video's row id and path, and the frame's time in seconds."""

    video_id: int
    path: str
    time_s: float


def frame_path(video_path: str, time_s: float) -> str:
    """A frame row's path: the video's with a media fragment, unique and readable (`clip.mp4#t=12.500`)."""
    return f"{video_path}#t={time_s:.3f}"
