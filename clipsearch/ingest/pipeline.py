"""The indexing pipeline: scan -> plan -> decode and embed (an executor) -> commit in batches.

The plan (plan.py) and every commit run here; decoding and embedding run in an *executor*: in this
process (local_executor.py) or on Ray workers (ray_executor.py), which run the very same
`embed_files` on their share of the files and stream the results back in order. Results are
committed by one `BatchWriter`, which merging shards uses too: a kill at any instant loses at most
the batch in flight, and the next run resumes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clipsearch import paths
from clipsearch.formats import is_video
from clipsearch.index import unchecked, video_tables
from clipsearch.index.records import ImageRecord, SkipRecord, VideoFrames
from clipsearch.index.store import Store
from clipsearch.ingest import scan
from clipsearch.ingest.plan import Plan, plan
from clipsearch.model import vit_graph
from clipsearch.model.onnx_indexing import ImageEmbedder

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
    reembedded: int = 0  # unchanged files embedded again: a rejected image graph had embedded them (unchecked.py)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    model_load_seconds: float = 0.0
    embedded_with: str = ""  # what ran the model: "torch bf16", "onnxruntime fp32", "openvino bf16" (the towers)
    total: int = 0
    vanished_roots: list[str] = field(default_factory=list)  # recorded roots gone, forgotten (index/roots.py)
    videos: int = 0  # videos indexed by this run
    video_frames: int = 0  # frames they kept
    video_notes: list[tuple[str, str]] = field(default_factory=list)  # (path, what was only partly decoded)

    @property
    def images_per_second(self) -> float:
        """Pipeline throughput: embedded images per second once the model was loaded."""
        busy = self.seconds - self.model_load_seconds
        return self.embedded / busy if busy > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "new": self.new, "changed": self.changed, "moved": self.moved, "removed": self.removed,
            "unchanged": self.unchanged, "skipped": dict(self.skipped), "embedded": self.embedded,
            "reembedded": self.reembedded,
            "total_indexed": self.total, "seconds": round(self.seconds, 3),
            "model_load_seconds": round(self.model_load_seconds, 3), "embedded_with": self.embedded_with,
            "images_per_second": round(self.images_per_second, 2),
            "skipped_files": [{"path": paths.display(p), "reason": r, "detail": d}
                              for p, r, d in self.skipped_files],
            "vanished_roots": [paths.display(r) for r in self.vanished_roots],
            "videos": self.videos, "video_frames": self.video_frames,
            "video_notes": [{"path": paths.display(p), "note": n} for p, n in self.video_notes],
        }

    def skip(self, path: str, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        self.skipped_files.append((path, reason, detail))


@dataclass
class Result:
    """What indexing one file produced: its record and vector, or why it was skipped."""

    file: scan.FoundFile
    record: ImageRecord | None = None
    vector: np.ndarray | None = None
    skip: SkipRecord | None = None
    video: VideoFrames | None = None  # a video's kept frames; `vector` is the first of them


class Executor(Protocol):
    """Turns the files to index into their results, in the order given (ids follow that order).

    Two implementations share everything but where the work runs: `LocalExecutor` (threads here) and
    `ray_executor.RayExecutor` (Ray actors, each running `embed_files` on its share).
    """

    embed_seconds: float

    def results(self, files: list[scan.FoundFile], embedder: ImageEmbedder,
                max_pixels: int) -> Generator[Result, None, None]: ...


class BatchWriter:
    """Commits records, vectors and skips to the store, `every` files per transaction.

    The one way results reach SQLite, whoever produced them (an executor, a shard being merged).
    Deletions and moves go in with the last batch: until then a kill leaves them for the next run.
    """

    def __init__(self, store: Store, every: int = COMMIT_EVERY) -> None:
        self.store = store
        self.every = every
        self.records: list[ImageRecord] = []
        self.vectors: list[np.ndarray] = []
        self.skips: list[SkipRecord] = []
        self.videos: list[VideoFrames | None] = []
        self.unchecked: str | None = None  # the mark of the unchecked graph embedding what is added (unchecked.py)

    def add(self, record: ImageRecord, vector: np.ndarray, video: VideoFrames | None = None) -> None:
        self.records.append(record)
        self.vectors.append(vector)
        self.videos.append(video)
        self._maybe_commit()

    def add_skip(self, skip: SkipRecord) -> None:
        self.skips.append(skip)
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if len(self.records) + len(self.skips) >= self.every:
            self.commit()

    def commit(self, delete_ids: list[int] | tuple[()] = (),
               moves: list[tuple[int, str, int, int]] | tuple[()] = (),
               forget_skips: list[str] | tuple[()] = ()) -> None:
        if self.records or self.skips or delete_ids or moves or forget_skips:
            self.store.write_batch(self.records, np.stack(self.vectors) if self.vectors else None, self.skips,
                                   delete_ids=delete_ids, moves=moves, forget_skips=forget_skips,
                                   videos=self.videos, unchecked=self.unchecked)
        self.records, self.vectors, self.skips, self.videos = [], [], [], []


@dataclass(frozen=True)
class ScanOptions:
    """How to walk the folders: what to leave out, whether to follow links and see hidden files."""

    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = False
    include_hidden: bool = False


# Given how many pictures a run will embed (`images_to_embed`), what embeds them: loaded only when
# the plan found something to embed, and chosen by that count (onnx_indexing.py).
GetEmbedder = Callable[[int], ImageEmbedder]


def index_roots(store: Store, roots: list[str], options: ScanOptions, get_embedder: GetEmbedder,
                max_pixels: int, progress: Progress | None = None, executor: Executor | None = None) -> IndexSummary:
    """One indexing run: scan `roots`, then plan, embed and commit what the scan found."""
    problems = scan.ScanProblems()
    found = list(scan.walk(roots, options.exclude, options.follow_symlinks, options.include_hidden, problems))
    return run(store, get_embedder, roots, found, problems, max_pixels, progress, executor)


def run(store: Store, get_embedder: GetEmbedder, roots: list[str], found: list[scan.FoundFile],
        scan_problems: scan.ScanProblems, max_pixels: int, progress: Progress | None = None,
        executor: Executor | None = None) -> IndexSummary:
    """Plan, then commit the executor's results in order, COMMIT_EVERY files per transaction.

    Whatever runs the model (threads here, or Ray workers), the results are committed here, the same
    way: a kill at any instant loses at most the uncommitted batch, and the next run resumes.
    """
    start = time.perf_counter()
    summary = IndexSummary()
    # Files whose vectors an image graph embedded that the background check then rejected: embedded
    # again now, whatever this run embeds with (never that graph: encoders.py declines it).
    redo = unchecked.files(store.db, vit_graph.rejected_mark(store.path.parent))
    p = plan(store, roots, found, frozenset(path for path, _, _ in scan_problems.skipped), frozenset(redo))
    summary.unchanged, summary.moved = p.unchanged, len(p.moves) + len(p.redo_moves)
    writer = BatchWriter(store)
    if p.redo_moves:  # before their new paths are embedded (plan.py)
        writer.commit(moves=p.redo_moves)
    for path, reason, detail in scan_problems.skipped:
        summary.skip(path, reason, detail)
        # Remembered like decoding failures, so that `status` counts what this summary counts.
        writer.add_skip(SkipRecord(path, *_size_and_mtime(path), reason, detail))
    for s in p.skips:
        summary.skip(s.path, s.reason, s.detail)
    if progress:
        progress.found(len(p.todo))
    if p.todo:
        t_load = time.perf_counter()
        embedder = get_embedder(images_to_embed(p.todo))
        summary.model_load_seconds = time.perf_counter() - t_load
        summary.embedded_with = embedder.runtime
        writer.unchecked = embedder.unchecked
        if executor is None:
            from clipsearch.ingest.local_executor import LocalExecutor

            executor = LocalExecutor()
        _commit_results(executor, p, embedder, max_pixels, writer, summary, progress)
        summary.embed_seconds = executor.embed_seconds
    # A bad file since deleted is forgotten with its skip record, so it is no longer counted.
    writer.commit(delete_ids=p.removed_ids, moves=p.moves, forget_skips=p.gone_skips)
    summary.removed = len(p.removed_ids)
    summary.total = store.count() - video_tables.counts(store.db)[1]  # files: a video's later frames are rows
    summary.seconds = time.perf_counter() - start
    return summary


def _size_and_mtime(path: str) -> tuple[int, int]:
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    return st.st_size, st.st_mtime_ns


# A video's bytes per second, to guess its length from its size: 8 Mbit/s, a phone's 1080p HEVC
# (H.264 is about twice that, so its frames are overestimated, which only keeps more runs on torch).
VIDEO_BYTES_PER_S = 1_000_000


def images_to_embed(todo: list[scan.FoundFile]) -> int:
    """About how many pictures the model will see: one a photo; a video's frames at the sampling
    rate over a duration guessed from its size, without opening it."""
    from clipsearch.ingest.videos import SAMPLE_FPS

    return sum(max(1, round(SAMPLE_FPS * f.size / VIDEO_BYTES_PER_S)) if is_video(f.path) else 1 for f in todo)


def _commit_results(executor: Executor, p: Plan, embedder: ImageEmbedder, max_pixels: int, writer: BatchWriter,
                    summary: IndexSummary, progress: Progress | None) -> None:
    # closing(): an error while committing stops the executor's workers (and a Ray runtime) now.
    with contextlib.closing(executor.results(p.todo, embedder, max_pixels)) as results:
        for done, r in enumerate(results, start=1):
            if r.skip is not None:
                writer.add_skip(r.skip)
                summary.skip(r.file.path, r.skip.reason, r.skip.detail)
            else:
                assert r.record is not None and r.vector is not None
                if r.file.path in p.changed:
                    summary.changed += 1
                elif r.file.path in p.redo:
                    summary.reembedded += 1
                else:
                    summary.new += 1
                writer.add(r.record, r.vector, r.video)
                summary.embedded += 1
                if r.video is not None:
                    summary.videos += 1
                    summary.video_frames += len(r.video.times)
                    if r.video.note:
                        summary.video_notes.append((r.file.path, r.video.note))
            if progress:
                progress.advance(done, sum(summary.skipped.values()))
