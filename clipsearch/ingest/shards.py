"""Shards: embed part of a library on any machine, then fold the parts into one index.

For machines that cannot reach each other or a Ray cluster (air-gapped scanners, batch queues):
`clipsearch embed --shard i/N PATH --out DIR` embeds every file whose path relative to PATH hashes
to i (mod N), so N machines that see the same tree, mounted anywhere, split it without talking;
`clipsearch merge DIR…` then adds the shards to an index. docs/storage.md describes the format:

    DIR/shard.json    format, clipsearch version, model identity, shard i/N, roots, counts
    DIR/vectors.npy   float32 (images, dim), L2-normalised
    DIR/meta.jsonl    one line per file in scan order: its row in vectors.npy, or why it was skipped

Writing a shard is crash-safe and resumable: the work happens in `DIR.partial/`, a private index
committed in batches by the same indexer as `clipsearch index`; the shard files are written there,
`shard.json` last, and the folder is renamed to DIR. A DIR therefore always holds a finished shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from clipsearch import paths
from clipsearch._version import __version__
from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.errors import IndexLockedError, UsageError
from clipsearch.index.records import now
from clipsearch.index.store import Store
from clipsearch.ingest import pipeline, scan
from clipsearch.model.embedder import Embedder
from clipsearch.model.identity import ModelIdentity

FORMAT = "clipsearch-shard"
FORMAT_VERSION = 1
SHARD_FILE = "shard.json"
VECTORS = "vectors.npy"
META = "meta.jsonl"
PARTIAL = ".partial"
_JOB = "job.json"  # in DIR.partial: what is being embedded there, so a resume cannot mix two jobs
_EXPORT_CHUNK = 4096


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' -> (i, N), with 0 <= i < N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes i/N, e.g. 0/4 for the first of four, not {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text}: need 0 <= i < N")
    return i, n


def shard_of(path: str, roots: list[str], n: int) -> int:
    """The shard a file belongs to: a stable hash of its path relative to the root it was found under.

    Relative, so machines that mount the tree in different places still agree; a root that is a
    file counts by its name.
    """
    root = next((r for r in roots if paths.under(path, [r])), "")
    rel = path[len(root):].lstrip(os.sep) or os.path.basename(path)
    return int(xxhash.xxh64_intdigest(os.fsencode(rel)) % n)


@dataclass
class ShardSummary:
    """What `embed` wrote."""

    out: Path
    shard: tuple[int, int]
    files: int  # this shard's share of the scan
    images: int
    skipped: Counter[str]
    embedded_now: int  # this run; less than `images` when it resumed an interrupted one
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {"out": str(self.out), "shard": f"{self.shard[0]}/{self.shard[1]}", "files": self.files,
                "images": self.images, "skipped": dict(self.skipped), "embedded_now": self.embedded_now,
                "seconds": round(self.seconds, 3)}

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        return (f"Shard {self.shard[0]}/{self.shard[1]}: {self.images} images, {skipped} skipped, of {self.files} "
                f"files ({self.embedded_now} embedded in {self.seconds:.1f}s) -> {self.out}")


def embed(folders: list[str], shard: tuple[int, int], out: str | os.PathLike[str],
          get_embedder: Callable[[], Embedder], *,
          exclude: tuple[str, ...] = (), follow_symlinks: bool = False, include_hidden: bool = False,
          max_pixels: int = DEFAULT_MAX_PIXELS, progress: pipeline.Progress | None = None) -> ShardSummary:
    """Embed shard `shard` of the images under `folders` into the shard folder `out` (see the module doc).

    The model is loaded (`get_embedder`) once the arguments are known to be good.
    """
    start = time.perf_counter()
    roots = list(paths.resolve_all(folders))
    for root, given in zip(roots, folders, strict=True):
        if not os.path.lexists(root):
            raise UsageError(f"no such file or folder: {given}")
    target = Path(paths.resolve(out))
    if (target / SHARD_FILE).exists():
        raise UsageError(f"{target} already holds a finished shard; merge it, or remove it to embed again")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} exists and is not an empty folder; choose another --out")
    embedder = get_embedder()
    partial = target.with_name(target.name + PARTIAL)
    partial.mkdir(parents=True, exist_ok=True)
    job = {"roots": roots, "shard": list(shard), "weights_sha256": embedder.identity.weights_sha256}
    with _partial_lock(partial):
        _claim(partial, job)
        found = list(scan.walk(roots, exclude, follow_symlinks, include_hidden))
        mine = [f for f in found if shard_of(f.path, roots, shard[1]) == shard[0]]
        embedded = 0
        if not (partial / SHARD_FILE).exists():  # else it was finished, and killed just before the rename
            with Store.open(partial / "index", create=True) as store:
                store.bind_model(embedder.identity)
                store.set_meta("logit_scale", repr(embedder.logit_scale))  # text queries' relevance reads it
                if getattr(embedder, "logit_bias", None) is not None:  # sigmoid-loss (SigLIP) models
                    store.set_meta("logit_bias", repr(embedder.logit_bias))
                summary = pipeline.run(store, lambda _images: embedder, roots, mine, scan.ScanProblems(), max_pixels,
                                       progress)
                embedded = summary.embedded
                _export(store, partial, {f.path: k for k, f in enumerate(found)}, embedder.identity, roots, shard)
        shutil.rmtree(partial / "index", ignore_errors=True)
        (partial / _JOB).unlink()
    desc = json.loads((partial / SHARD_FILE).read_text(encoding="utf-8"))
    paths.fsync_dir(partial)
    os.replace(partial, target)  # onto an empty folder, or none: the finished shard appears at once
    paths.fsync_dir(target.parent)
    return ShardSummary(target, shard, len(mine), int(desc["images"]), Counter(desc["skipped"]), embedded,
                        time.perf_counter() - start)


@contextlib.contextmanager
def _partial_lock(partial: Path) -> Iterator[None]:
    """One writer per unfinished shard folder."""
    import filelock

    lock = filelock.FileLock(str(partial / "lock"), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise IndexLockedError(f"another clipsearch is writing {partial}") from None
    try:
        yield
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            (partial / "lock").unlink()


def _claim(partial: Path, job: dict[str, Any]) -> None:
    """Record the job an unfinished shard folder holds; refuse to resume a different one in it."""
    job_file = partial / _JOB
    if job_file.exists() and json.loads(job_file.read_text()) != job:
        raise UsageError(f"{partial} holds an unfinished shard of another job ({job_file.read_text()}); "
                         "rerun that command to finish it, or remove the folder")
    job_file.write_text(json.dumps(job))


def _export(store: Store, folder: Path, seq: dict[str, int], identity: ModelIdentity, roots: list[str],
            shard: tuple[int, int]) -> None:
    """Write vectors.npy and meta.jsonl in scan order, then shard.json; each file synced before the next."""
    records = sorted((seq[r.path], r) for r in store.iter_images())
    skips = sorted((seq[s.path], s) for s in store.iter_skip_records() if s.path in seq)
    vectors = np.lib.format.open_memmap(folder / VECTORS, mode="w+", dtype=np.float32,
                                        shape=(len(records), identity.embed_dim))
    for start in range(0, len(records), _EXPORT_CHUNK):  # a chunk at a time: a big shard never sits in memory
        chunk = records[start:start + _EXPORT_CHUNK]
        vectors[start:start + len(chunk)] = store.vectors_of_ids([r.id for _, r in chunk])
    vectors.flush()
    del vectors
    lines: list[tuple[int, dict[str, Any]]] = [
        (s, {"seq": s, "path": r.path, "row": k, **r.fields()}) for k, (s, r) in enumerate(records)]
    lines += [(s, {"seq": s, "path": sk.path, "size": sk.size, "mtime_ns": sk.mtime_ns, "skip": sk.reason,
                   "detail": sk.detail}) for s, sk in skips]
    with open(folder / META, "w", encoding="ascii") as f:  # json escapes non-UTF-8 names (\udcxx) exactly
        for _, line in sorted(lines, key=lambda item: item[0]):
            f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
    with open(folder / VECTORS, "rb+") as raw:
        os.fsync(raw.fileno())
    description = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "clipsearch": __version__,
        "model": {"name": identity.name, "embed_dim": identity.embed_dim, "weights_sha256": identity.weights_sha256,
                  **({"logit_scale": float(scale)} if (scale := store.meta("logit_scale")) else {}),
                  **({"logit_bias": float(bias)} if (bias := store.meta("logit_bias")) else {})},
        "shard": {"index": shard[0], "count": shard[1]}, "roots": roots, "images": len(records),
        "skipped": dict(Counter(sk.reason for _, sk in skips)), "created_at": now(), "host": socket.gethostname()}
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(description, indent=1), encoding="utf-8")

    paths.replace_atomically(folder / SHARD_FILE, write)
