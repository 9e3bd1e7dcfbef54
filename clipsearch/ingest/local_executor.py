"""The local executor: decoding in a thread pool, embedding in batches, in this process.

Pillow releases the GIL while it decodes and resizes, so decoding threads overlap with model
inference on the calling thread and both cores stay busy. Ray workers run the very same
`embed_files` on their share of the files (ray_executor.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from clipsearch.formats import is_video
from clipsearch.index.records import ImageRecord, SkipRecord
from clipsearch.ingest import gpu_decode, images, pool_size, scan, videos
from clipsearch.ingest.pipeline import Result
from clipsearch.ingest.plan import fingerprint
from clipsearch.model.identity import Preprocess
from clipsearch.model.onnx_indexing import ImageEmbedder

BATCH = 32

_Decoded = tuple[scan.FoundFile, images.Decoded | images.SkipFile, str]


_VIDEO = "\0video"  # a marker, not a skip: videos are decoded and embedded on the model's thread


def decode_one(f: scan.FoundFile, pre: Preprocess, max_pixels: int, pixels: bool = True) -> _Decoded:
    """Decode and fingerprint one file (in a worker thread); `pixels=False`: JPEGs' left to the GPU;
    a video is only fingerprinted here."""
    try:
        if is_video(f.path):
            return f, images.SkipFile(_VIDEO), fingerprint(f.path, f.size)
        decoded = images.decode(f.path, pre, max_pixels, pixels)
        return f, decoded, fingerprint(f.path, f.size)
    except images.SkipFile as skip:
        return f, skip, ""
    except OSError as exc:  # vanished between decode and fingerprint, and the like
        reason = "vanished" if isinstance(exc, FileNotFoundError) else "unreadable"
        return f, images.SkipFile(reason, str(exc)), ""


def record_of(f: scan.FoundFile, out: images.Decoded, fp: str) -> ImageRecord:
    lat, lon = out.gps if out.gps else (None, None)
    return ImageRecord(f.path, f.size, f.mtime_ns, fp, out.width, out.height, out.format, out.taken_at, lat, lon,
                       out.camera)


def _ordered(pool: ThreadPoolExecutor, fn: Callable[[scan.FoundFile], _Decoded], items: list[scan.FoundFile],
             window: int) -> Iterator[_Decoded]:
    """pool.map with a bounded look-ahead, so a 100k-file run never holds 100k decoded images."""
    pending: list[Future[_Decoded]] = []
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    while pending:
        result = pending.pop(0).result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))
        yield result


def embed_files(files: list[scan.FoundFile], embedder: ImageEmbedder, max_pixels: int, workers: int | None = None,
                timing: list[float] | None = None) -> Iterator[Result]:
    """Decode in a thread pool and embed in batches of BATCH; one Result per file, in order.

    Decoding runs ahead of the model (bounded look-ahead) so both overlap. How many decodes run at
    once is set from the first batches' measured rates (pool_size.py) unless `workers` fixes it.
    `timing`, when given, collects the seconds spent in the model.
    """
    pre = embedder.preprocess
    cores = os.cpu_count() or 1
    device = str(getattr(embedder, "device", "cpu"))
    n_workers = workers or pool_size.upper_bound(cores, device)
    gate = pool_size.Gate(workers or pool_size.start_workers(cores, device))
    on_gpu = gpu_decode.usable(device, pre)  # JPEG pixels decoded in batches by nvJPEG (gpu_decode.py)
    decode_s: list[float] = []  # per photo, in the workers (list.append is atomic)
    model_s: list[float] = []
    embedded = 0
    waiting: list[Result] = []  # in file order; embedded ones get their vector when their batch runs
    pixels: list[np.ndarray] = []
    to_fill: list[Result] = []

    def decode_gated(f: scan.FoundFile) -> _Decoded:
        with gate.slot():
            t = time.perf_counter()
            out = decode_one(f, pre, max_pixels, pixels=not on_gpu)
            if not (isinstance(out[1], images.SkipFile) and out[1].reason == _VIDEO):
                # A video is only fingerprinted here: its microseconds are no photo's decode rate.
                decode_s.append(time.perf_counter() - t)
            return out

    gpu_waiting: list[tuple[int, images.Decoded]] = []  # (index in pixels, header-only decode)

    def fill_from_gpu() -> None:
        nonlocal pixels, to_fill
        at = [i for i, _ in gpu_waiting]
        got = gpu_decode.fill([to_fill[i].file.path for i in at], [d for _, d in gpu_waiting], pre, device,
                              max_pixels)
        failed = set()
        for i, px in zip(at, got, strict=True):
            if isinstance(px, images.SkipFile):
                r = to_fill[i]
                r.record, r.skip = None, SkipRecord(r.file.path, r.file.size, r.file.mtime_ns, px.reason, px.detail)
                failed.add(i)
            else:
                pixels[i] = px
        gpu_waiting.clear()
        pixels = [p for i, p in enumerate(pixels) if i not in failed]
        to_fill = [r for i, r in enumerate(to_fill) if i not in failed]

    def embed_waiting() -> Iterator[Result]:
        nonlocal waiting, pixels, to_fill, embedded
        if gpu_waiting:
            fill_from_gpu()
        if pixels:
            t = time.perf_counter()
            vecs = embedder.embed_images(np.stack(pixels))
            model_s.append(time.perf_counter() - t)
            if timing is not None:
                timing.append(model_s[-1])
            before, embedded = embedded, embedded + len(pixels)
            if workers is None and before < pool_size.MEASURE_AFTER <= embedded:
                gate.set(pool_size.decode_workers(cores, device, sum(decode_s) / max(1, len(decode_s)),
                                                  sum(model_s) / embedded))
            for r, v in zip(to_fill, vecs, strict=True):
                r.vector = v
        yield from waiting
        waiting, pixels, to_fill = [], [], []

    with ThreadPoolExecutor(n_workers, thread_name_prefix="clipsearch-decode") as pool:
        decoded = _ordered(pool, decode_gated, files, window=max(4 * BATCH, 8 * n_workers))
        for f, out, fp in decoded:
            if isinstance(out, images.SkipFile) and out.reason == _VIDEO:
                yield from embed_waiting()  # results stay in file order
                waiting.append(_video_result(f, fp, embedder, timing))
                continue
            if isinstance(out, images.SkipFile):
                waiting.append(Result(f, skip=SkipRecord(f.path, f.size, f.mtime_ns, out.reason, out.detail)))
                continue
            result = Result(f, record=record_of(f, out, fp))
            waiting.append(result)
            if out.jpeg_data is not None:
                gpu_waiting.append((len(pixels), out))
            to_fill.append(result)
            pixels.append(out.pixels)
            if len(pixels) >= BATCH:
                yield from embed_waiting()
        yield from embed_waiting()


def _video_result(f: scan.FoundFile, fp: str, embedder: ImageEmbedder, timing: list[float] | None) -> Result:
    """A video's frames are sampled, embedded and chosen in one go (videos.py): its decoder uses
    FFmpeg's own threads, and its frame choice needs the vectors of the frames before."""
    try:
        record, video = videos.index_video(f, fp, embedder, timing)
    except images.SkipFile as skip:
        return Result(f, skip=SkipRecord(f.path, f.size, f.mtime_ns, skip.reason, skip.detail))
    except OSError as exc:
        return Result(f, skip=SkipRecord(f.path, f.size, f.mtime_ns, "unreadable", str(exc)[:160]))
    return Result(f, record=record, vector=video.vectors[0], video=video)


@dataclass
class LocalExecutor:
    """Decoding threads and the model, in this process."""

    workers: int | None = None
    embed_seconds: float = 0.0

    def results(self, files: list[scan.FoundFile], embedder: ImageEmbedder,
                max_pixels: int) -> Generator[Result, None, None]:
        timing: list[float] = []
        try:
            yield from embed_files(files, embedder, max_pixels, self.workers, timing)
        finally:
            self.embed_seconds += sum(timing)
