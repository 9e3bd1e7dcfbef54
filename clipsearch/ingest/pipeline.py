"""The indexing pipeline: scan -> compare with the index -> decode (threads) -> embed (batches) -> store.

Decoding runs in a thread pool (Pillow releases the GIL while it decodes and resizes) and overlaps
with model inference on the calling thread, so both cores stay busy. Results are committed to SQLite
in batches: a kill at any instant loses at most the batch in flight, and the next run resumes.

One code path, two executors: the plan and the commits always run here; decoding and embedding run
either in this process (`LocalExecutor`) or on Ray workers (`ray_executor.py`), which run the very
same `embed_files` on their share of the files and stream the results back in order.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import xxhash

from clipsearch.index.store import KnownFile, Store
from clipsearch.ingest import images, scan
from clipsearch.model.embedder import Embedder

BATCH = 32
COMMIT_EVERY = 256


class Progress(Protocol):
    """What the indexer reports while it runs; the CLI draws it, the library stays silent."""

    def found(self, total: int) -> None: ...
    def advance(self, done: int, skipped: int) -> None: ...


@dataclass
class IndexSummary:
    new: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_files: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail)
    embedded: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    model_load_seconds: float = 0.0
    total: int = 0

    @property
    def images_per_second(self) -> float:
        """Pipeline throughput: embedded images per second once the model was loaded."""
        busy = self.seconds - self.model_load_seconds
        return self.embedded / busy if busy > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "new": self.new, "changed": self.changed, "moved": self.moved, "removed": self.removed,
            "unchanged": self.unchanged, "skipped": dict(self.skipped), "embedded": self.embedded,
            "total_indexed": self.total, "seconds": round(self.seconds, 3),
            "model_load_seconds": round(self.model_load_seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "skipped_files": [{"path": scan.display_path(p), "reason": r, "detail": d}
                              for p, r, d in self.skipped_files],
        }


def fingerprint(path: str, size: int) -> str:
    """xxh64 of the size and the first and last 64 KiB: recognises a moved file without reading it all."""
    h = xxhash.xxh64(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        h.update(f.read(65536))
        if size > 131072:
            f.seek(-65536, os.SEEK_END)
            h.update(f.read(65536))
    return h.hexdigest()


@dataclass
class _Plan:
    todo: list[tuple[scan.FoundFile, bool]]  # (file, is_change)
    moves: list[tuple[int, str, int, int]]
    removed_ids: list[int]
    skips: list[tuple[str, int, int, str, str]]  # known-bad files, unchanged since they were skipped


def plan(store: Store, roots: list[str], found: list[scan.FoundFile], summary: IndexSummary) -> _Plan:
    """Decide what each found file needs, from size and mtime alone (no decoding, no hashing)."""
    known = {p: k for p, k in store.known_files().items() if scan.under(p, roots)}
    skipped_before = store.skipped_unchanged()
    found_paths = {f.path for f in found}
    missing: dict[str, KnownFile] = {p: k for p, k in known.items() if p not in found_paths}
    todo: list[tuple[scan.FoundFile, bool]] = []
    skips: list[tuple[str, int, int, str, str]] = []
    new_files: list[scan.FoundFile] = []
    for f in found:
        k = known.get(f.path)
        if k is not None:
            if k.size == f.size and k.mtime_ns == f.mtime_ns:
                summary.unchanged += 1
            else:
                todo.append((f, True))
            continue
        before = skipped_before.get(f.path)
        if before is not None and before[0] == f.size and before[1] == f.mtime_ns:
            skips.append((f.path, f.size, f.mtime_ns, before[2], before[3]))
            continue
        new_files.append(f)
    moves: list[tuple[int, str, int, int]] = []
    if missing:
        by_print = {(k.size, k.fingerprint): (p, k) for p, k in missing.items()}
        sizes = {k.size for k in missing.values()}
        for f in new_files:
            if f.size not in sizes:
                todo.append((f, False))
                continue
            try:
                hit = by_print.pop((f.size, fingerprint(f.path, f.size)), None)
            except OSError:
                hit = None
            if hit is None:
                todo.append((f, False))
            else:
                moves.append((hit[1].id, f.path, f.size, f.mtime_ns))
                del missing[hit[0]]
        summary.moved = len(moves)
    else:
        todo.extend((f, False) for f in new_files)
    return _Plan(todo, moves, [k.id for k in missing.values()], skips)


_Decoded = tuple[scan.FoundFile, images.Decoded | images.SkipFile, str]


def _decode_one(f: scan.FoundFile, pre: images.Preprocess, max_pixels: int) -> _Decoded:
    """Decode and fingerprint one file (in a worker thread)."""
    try:
        decoded = images.decode(f.path, pre, max_pixels)
        return f, decoded, fingerprint(f.path, f.size)
    except images.SkipFile as skip:
        return f, skip, ""
    except OSError as exc:  # vanished between decode and fingerprint, and the like
        reason = "vanished" if isinstance(exc, FileNotFoundError) else "unreadable"
        return f, images.SkipFile(reason, str(exc)), ""


def _row(f: scan.FoundFile, out: images.Decoded, fp: str) -> dict[str, object]:
    return {"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns, "fingerprint": fp, "width": out.width,
            "height": out.height, "format": out.format, "taken_at": out.taken_at,
            "lat": out.gps[0] if out.gps else None, "lon": out.gps[1] if out.gps else None}


@dataclass
class Result:
    """What indexing one file produced: its images-table row and vector, or why it was skipped."""

    file: scan.FoundFile
    row: dict[str, object] | None = None
    vector: np.ndarray | None = None
    skip: tuple[str, str] | None = None  # (reason, detail)


class Executor(Protocol):
    """Turns the files to index into their results, in the order given (ids follow that order).

    Two implementations share everything but where the work runs: `LocalExecutor` (threads here) and
    `ray_executor.RayExecutor` (Ray actors, each running `embed_files` on its share).
    """

    embed_seconds: float

    def results(self, files: list[scan.FoundFile], embedder: Embedder,
                max_pixels: int) -> Generator[Result, None, None]: ...


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


def embed_files(files: list[scan.FoundFile], embedder: Embedder, max_pixels: int, workers: int | None = None,
                timing: list[float] | None = None) -> Iterator[Result]:
    """Decode in a thread pool and embed in batches of BATCH; one Result per file, in order.

    Decoding runs ahead of the model (bounded look-ahead) so both overlap. `timing`, when given,
    collects the seconds spent in the model.
    """
    pre = embedder.preprocess
    n_workers = workers or max(1, min(8, os.cpu_count() or 1))
    waiting: list[Result] = []  # in file order; embedded ones get their vector when their batch runs
    pixels: list[np.ndarray] = []
    to_fill: list[Result] = []

    def embed_waiting() -> Iterator[Result]:
        nonlocal waiting, pixels, to_fill
        if pixels:
            t = time.perf_counter()
            vecs = embedder.embed_images(np.stack(pixels))
            if timing is not None:
                timing.append(time.perf_counter() - t)
            for r, v in zip(to_fill, vecs, strict=True):
                r.vector = v
        yield from waiting
        waiting, pixels, to_fill = [], [], []

    with ThreadPoolExecutor(n_workers, thread_name_prefix="clipsearch-decode") as pool:
        decoded = _ordered(pool, lambda f: _decode_one(f, pre, max_pixels), files,
                           window=max(4 * BATCH, 8 * n_workers))
        for f, out, fp in decoded:
            if isinstance(out, images.SkipFile):
                waiting.append(Result(f, skip=(out.reason, out.detail)))
                continue
            result = Result(f, row=_row(f, out, fp))
            waiting.append(result)
            to_fill.append(result)
            pixels.append(out.pixels)
            if len(pixels) >= BATCH:
                yield from embed_waiting()
        yield from embed_waiting()


@dataclass
class LocalExecutor:
    """Decoding threads and the model, in this process."""

    workers: int | None = None
    embed_seconds: float = 0.0

    def results(self, files: list[scan.FoundFile], embedder: Embedder,
                max_pixels: int) -> Generator[Result, None, None]:
        timing: list[float] = []
        try:
            yield from embed_files(files, embedder, max_pixels, self.workers, timing)
        finally:
            self.embed_seconds += sum(timing)


def run(store: Store, get_embedder: Callable[[], Embedder], roots: list[str], found: list[scan.FoundFile],
        scan_problems: scan.ScanProblems, max_pixels: int, progress: Progress | None = None,
        workers: int | None = None, executor: Executor | None = None) -> IndexSummary:
    """Plan, then commit the executor's results in order, COMMIT_EVERY files per transaction.

    Whatever runs the model (threads here, or Ray workers), the results are committed here, the same
    way: a kill at any instant loses at most the uncommitted batch, and the next run resumes.
    """
    start = time.perf_counter()
    summary = IndexSummary()
    p = plan(store, roots, found, summary)
    for path, reason, detail in scan_problems.skipped:
        summary.skipped[reason] += 1
        summary.skipped_files.append((path, reason, detail))
    for path, _s, _m, reason, detail in p.skips:
        summary.skipped[reason] += 1
        summary.skipped_files.append((path, reason, detail))
    if progress:
        progress.found(len(p.todo))
    rows: list[dict[str, object]] = []
    vecs: list[np.ndarray] = []
    skips: list[tuple[str, int, int, str, str]] = []

    def commit(final: bool = False) -> None:
        nonlocal rows, vecs, skips
        if rows or skips or (final and (p.removed_ids or p.moves)):
            store.write_batch(rows, np.stack(vecs) if vecs else None, skips,
                              delete_ids=p.removed_ids if final else (), moves=p.moves if final else ())
        rows, vecs, skips = [], [], []

    if p.todo:
        t_load = time.perf_counter()
        embedder = get_embedder()
        summary.model_load_seconds = time.perf_counter() - t_load
        ex = executor if executor is not None else LocalExecutor(workers)
        changed = {f.path for f, is_change in p.todo if is_change}
        # closing(): an error while committing stops the executor's workers (and a Ray runtime) now.
        with contextlib.closing(ex.results([f for f, _ in p.todo], embedder, max_pixels)) as results:
            for done, r in enumerate(results, start=1):
                f = r.file
                if r.skip is not None:
                    skips.append((f.path, f.size, f.mtime_ns, *r.skip))
                    summary.skipped[r.skip[0]] += 1
                    summary.skipped_files.append((f.path, *r.skip))
                else:
                    assert r.row is not None and r.vector is not None
                    if f.path in changed:
                        summary.changed += 1
                    else:
                        summary.new += 1
                    rows.append(r.row)
                    vecs.append(r.vector)
                    summary.embedded += 1
                if len(rows) + len(skips) >= COMMIT_EVERY:
                    commit()
                if progress:
                    progress.advance(done, sum(summary.skipped.values()))
        summary.embed_seconds = ex.embed_seconds
    commit(final=True)
    summary.removed = len(p.removed_ids)
    summary.total = store.count()
    summary.seconds = time.perf_counter() - start
    return summary
