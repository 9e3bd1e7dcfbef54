"""Indexing one video: frames sampled cheaply, embedded, and kept only where the content changes.

Frames are decoded at SAMPLE_FPS at most (every frame is decoded, as H.264 requires, but only the
sampled ones are converted, straight to the model's input size by FFmpeg's scaler), rotated as
the stream's display matrix says. A sample whose 8x8 colour means have not moved by GATE since the
last embedded one is not embedded at all (the model costs more than decoding); the others are
embedded in batches and kept when their cosine to the last kept frame falls below KEEP_BELOW, at
most MAX_PER_MINUTE a minute and always at least one per video. docs/video.md gives the
measurements behind the numbers. PyAV (`clipsearch[video]`) is imported only when a video is met;
without it videos are skipped with that reason.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.formats import NO_DECODER, NO_DECODER_DETAIL
from clipsearch.index.records import ImageRecord, VideoFrames
from clipsearch.ingest import scan
from clipsearch.ingest.images import SkipFile, _fit
from clipsearch.model.identity import Preprocess
from clipsearch.model.onnx_indexing import ImageEmbedder

SAMPLE_FPS = 2.0  # frames looked at per second of video
GATE = 8.0  # a sample is embedded only when its 8x8 colour means moved this much (of 255) since the last one
KEEP_BELOW = 0.92  # a frame is kept when its cosine to the last kept frame is below this
MAX_PER_MINUTE = 30  # kept frames per minute of video at most
BATCH = 8  # small: the model starts on a video's first changes while the rest decodes


def available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class _Meta:
    width: int = 0
    height: int = 0
    duration_s: float | None = None
    fps: float | None = None
    rotation: int = 0
    taken_at: str | None = None
    last_time: float = 0.0
    error: str = ""


def _creation_time(metadata: dict[str, str]) -> str | None:
    raw = metadata.get("creation_time") or metadata.get("com.apple.quicktime.creationdate")
    if not raw:
        return None
    try:
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).isoformat(timespec="seconds")
    except ValueError:
        return None


def _input_size(w: int, h: int, pre: Preprocess) -> tuple[int, int]:
    """The size FFmpeg scales to: the model's short side (or long side when it pads), aspect kept."""
    short, long = min(w, h), max(w, h)
    scale = pre.size / (long if pre.resize_mode == "longest" else short)
    return max(1, round(w * scale)), max(1, round(h * scale))


def sample(path: str, pre: Preprocess, meta: _Meta) -> Iterator[tuple[float, np.ndarray]]:
    """(time, model-ready uint8 pixels) at SAMPLE_FPS; decoding errors past the first frame end it
    quietly with `meta.error` set (the frames before are kept), before it they skip the file."""
    import av

    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise SkipFile("corrupt or truncated", f"not a readable video: {_said(exc)}") from exc
    with container:
        if not container.streams.video:
            raise SkipFile("no video stream", "the file holds no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads: both cores decode
        meta.width, meta.height = stream.codec_context.width, stream.codec_context.height
        meta.fps = float(stream.average_rate) if stream.average_rate else None
        if stream.duration is not None and stream.time_base is not None:
            meta.duration_s = float(stream.duration * stream.time_base)
        elif container.duration:
            meta.duration_s = container.duration / 1_000_000
        meta.taken_at = _creation_time({**container.metadata, **stream.metadata})
        # Times count from the stream's first frame (MPEG-TS starts at an arbitrary clock).
        start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        next_t = 0.0
        seen = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) - start if frame.time is not None else seen / (meta.fps or 30.0)
                seen += 1
                if t + 1e-6 < next_t:
                    continue
                next_t = t + 1.0 / SAMPLE_FPS
                yield t, _pixels(frame, pre, meta)
                meta.last_time = t
        except (av.error.FFmpegError, ValueError) as exc:
            if seen == 0:
                raise SkipFile("corrupt or truncated", f"no frame could be decoded: {_said(exc)}") from exc
            meta.error = _said(exc)
        if seen == 0:
            raise SkipFile("corrupt or truncated", "no frame could be decoded")


def _pixels(frame: Any, pre: Preprocess, meta: _Meta) -> np.ndarray:
    rotation = round(getattr(frame, "rotation", 0) or 0) % 360
    meta.rotation = rotation
    w, h = _input_size(frame.width, frame.height, pre)
    rgb = frame.to_ndarray(width=w, height=h, format="rgb24")
    if rotation:  # the display matrix turns the picture counter-clockwise by `rotation` degrees
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return _fit(Image.fromarray(rgb), pre)


def signature(pixels: np.ndarray) -> np.ndarray:
    """The 8x8 grid of mean colours of model-ready pixels: what the embedding gate compares."""
    s = pixels.shape[0] // 8 * 8
    return pixels[:s, :s].reshape(8, s // 8, 8, s // 8, 3).mean(axis=(1, 3))


def choose(times: list[float], vectors: np.ndarray) -> list[int]:
    """Indices of the frames kept: the first, then each that differs enough from the last kept one,
    MAX_PER_MINUTE per minute of video at most."""
    kept = [0]
    per_minute: dict[int, int] = {0: 1} if times else {}
    for i in range(1, len(times)):
        minute = int(times[i] // 60)
        if per_minute.get(minute, 0) >= MAX_PER_MINUTE:
            continue
        if float(vectors[i] @ vectors[kept[-1]]) < KEEP_BELOW:
            kept.append(i)
            per_minute[minute] = per_minute.get(minute, 0) + 1
    return kept


def index_video(f: scan.FoundFile, fp: str, embedder: ImageEmbedder,
                timing: list[float] | None = None) -> tuple[ImageRecord, VideoFrames]:
    """Decode, embed and choose the frames of one video; raises SkipFile when nothing is usable."""
    if not available():
        raise SkipFile(NO_DECODER, NO_DECODER_DETAIL)
    import time
    from concurrent.futures import Future, ThreadPoolExecutor

    meta = _Meta()
    times: list[float] = []
    pending: list[Future[np.ndarray]] = []
    batch: list[np.ndarray] = []

    def embed(pixels: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = embedder.embed_images(pixels)
        if timing is not None:
            timing.append(time.perf_counter() - t0)
        return out

    # The model runs on its own thread while decoding goes on (both release the GIL): on 2 cores
    # neither keeps both busy alone.
    with ThreadPoolExecutor(1, thread_name_prefix="clipsearch-video-embed") as pool:
        last_sig: np.ndarray | None = None
        for t, pixels in sample(f.path, embedder.preprocess, meta):
            sig = signature(pixels)
            if last_sig is not None and float(np.abs(sig - last_sig).mean()) < GATE:
                continue  # the picture has not changed enough for the model to see anything new
            last_sig = sig
            times.append(t)
            batch.append(pixels)
            if len(batch) >= BATCH:
                pending.append(pool.submit(embed, np.stack(batch)))
                batch = []
        if batch:
            pending.append(pool.submit(embed, np.stack(batch)))
        vecs = [v for future in pending for v in future.result()]
    matrix = np.stack(vecs).astype(np.float32)
    kept = choose(times, matrix)
    note = ""
    span = meta.duration_s or 0.0
    if meta.error or (span and meta.last_time + 2.0 / SAMPLE_FPS + 1.0 < span):
        note = f"decoded to {meta.last_time:.1f} s of {span:.1f} s" + (f": {meta.error}" if meta.error else "")
    width, height = (meta.height, meta.width) if meta.rotation in (90, 270) else (meta.width, meta.height)
    fmt = f.path.rsplit(".", 1)[-1].lower()
    record = ImageRecord(f.path, f.size, f.mtime_ns, fp, width, height, fmt, meta.taken_at)
    frames = VideoFrames(tuple(times[i] for i in kept), matrix[kept], meta.duration_s,
                         meta.fps if meta.fps and math.isfinite(meta.fps) else None, meta.rotation, note)
    return record, frames


def frame_at(path: str, time_s: float, size: int) -> Image.Image | None:
    """The upright frame shown at `time_s`, at most `size` px, for previews; None if unreadable."""
    if not available():
        return None
    import av

    try:
        img = _decode_at(path, time_s, seek=True) or _decode_at(path, time_s, seek=False)
    except (av.error.FFmpegError, IndexError, OSError, ValueError):
        return None
    if img is not None:
        img.thumbnail((size, size))
    return img


def _decode_at(path: str, time_s: float, seek: bool) -> Image.Image | None:
    """The first frame at or after `time_s` (from the stream's start), upright; a seek that finds
    nothing (some files' indexes) is retried by decoding from the start."""
    import av

    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        base = stream.time_base
        start = float(stream.start_time * base) if stream.start_time and base else 0.0
        if seek and base is not None and time_s > 0:
            container.seek(int((time_s + start) / base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is None or frame.time - start + 1e-3 >= time_s:
                img = frame.to_image()
                rotation = round(getattr(frame, "rotation", 0) or 0) % 360
                # PIL turns counter-clockwise, as the display matrix does.
                return img.rotate(rotation, expand=True) if rotation else img
    return None


def _said(exc: Exception) -> str:
    """FFmpeg's own words, without the errno and the path the skip line already shows."""
    words = getattr(exc, "strerror", None)
    return (words if isinstance(words, str) and words else str(exc))[:140]
