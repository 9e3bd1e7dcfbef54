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
import heapq
import json
import os
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from clipsearch import __version__, config, indexer, models, scan
from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.embedder import Embedder, ModelIdentity
from clipsearch.errors import IndexLockedError, ModelMismatchError, UsageError
from clipsearch.store import Store, check_same_model, now

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
    root = next((r for r in roots if scan.under(path, [r])), "")
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


def embed(paths: list[str], shard: tuple[int, int], out: str | os.PathLike[str], *, model: str | None = None,
          device: str | None = None, precision: str | None = None, exclude: tuple[str, ...] = (),
          follow_symlinks: bool = False, include_hidden: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
          progress: indexer.Progress | None = None, notify: Callable[[str], None] | None = None) -> ShardSummary:
    """Embed shard `shard` of the images under `paths` into the shard folder `out` (see the module doc).

    The model is `model`, else $CLIPSEARCH_MODEL, else the default: never a local index's, which the
    machines that merge may not have.
    """
    import filelock

    start = time.perf_counter()
    roots = [os.path.abspath(os.path.expanduser(p)) for p in paths]
    for root, given in zip(roots, paths, strict=True):
        if not os.path.lexists(root):
            raise UsageError(f"no such file or folder: {given}")
    target = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    if (target / SHARD_FILE).exists():
        raise UsageError(f"{target} already holds a finished shard; merge it, or remove it to embed again")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} exists and is not an empty folder; choose another --out")
    embedder = Embedder(models.parse(config.model_name(model) or config.DEFAULT_MODEL), device, precision,
                        notify=notify)
    partial = target.with_name(target.name + PARTIAL)
    partial.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(partial / "lock"), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise IndexLockedError(f"another clipsearch is writing {partial}") from None
    try:
        job = {"roots": roots, "shard": list(shard), "weights_sha256": embedder.identity.weights_sha256}
        job_file = partial / _JOB
        if job_file.exists() and json.loads(job_file.read_text()) != job:
            raise UsageError(f"{partial} holds an unfinished shard of another job ({job_file.read_text()}); "
                             "rerun that command to finish it, or remove the folder")
        job_file.write_text(json.dumps(job))
        found = list(scan.walk(roots, exclude, follow_symlinks, include_hidden))
        mine = [f for f in found if shard_of(f.path, roots, shard[1]) == shard[0]]
        embedded = 0
        if not (partial / SHARD_FILE).exists():  # else it was finished, and killed just before the rename
            store = Store.open(partial / "index", create=True)
            try:
                store.bind_model(embedder.identity)
                store.set_meta("logit_scale", repr(embedder.logit_scale))  # text queries' relevance reads it
                summary = indexer.run(store, lambda: embedder, roots, mine, scan.ScanProblems(), max_pixels,
                                      progress)
                embedded = summary.embedded
                _export(store, partial, {f.path: k for k, f in enumerate(found)}, embedder.identity, roots, shard)
            finally:
                store.close()
        shutil.rmtree(partial / "index", ignore_errors=True)
        job_file.unlink()
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            (partial / "lock").unlink()
    desc = json.loads((partial / SHARD_FILE).read_text(encoding="utf-8"))
    _fsync_dir(partial)
    os.replace(partial, target)  # onto an empty folder, or none: the finished shard appears at once
    _fsync_dir(target.parent)
    return ShardSummary(target, shard, len(mine), int(desc["images"]), Counter(desc["skipped"]), embedded,
                        time.perf_counter() - start)


def _export(store: Store, folder: Path, seq: dict[str, int], identity: ModelIdentity, roots: list[str],
            shard: tuple[int, int]) -> None:
    """Write vectors.npy and meta.jsonl in scan order, then shard.json; each file synced before the next."""
    images = sorted((seq[path], image_id, path, row) for path, image_id, row in _image_rows(store))
    skips = [(seq[path], path, size, mtime, reason, detail) for path, size, mtime, reason, detail in _skip_rows(store)
             if path in seq]
    vectors = np.lib.format.open_memmap(folder / VECTORS, mode="w+", dtype=np.float32,
                                        shape=(len(images), identity.embed_dim))
    for start in range(0, len(images), _EXPORT_CHUNK):  # a chunk at a time: a big shard never sits in memory
        chunk = images[start:start + _EXPORT_CHUNK]
        vectors[start:start + len(chunk)] = store.vectors_for([image_id for _, image_id, _, _ in chunk])
    vectors.flush()
    del vectors
    records: list[tuple[int, dict[str, Any]]] = [
        (s, {"seq": s, "path": path, "row": k, **row}) for k, (s, _, path, row) in enumerate(images)]
    records += [(s, {"seq": s, "path": path, "size": size, "mtime_ns": mtime, "skip": reason, "detail": detail})
                for s, path, size, mtime, reason, detail in skips]
    with open(folder / META, "w", encoding="ascii") as f:  # json escapes non-UTF-8 names (\udcxx) exactly
        for _, record in sorted(records, key=lambda r: r[0]):
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    with open(folder / VECTORS, "rb+") as f:
        os.fsync(f.fileno())
    skipped = Counter(reason for *_, reason, _detail in skips)
    description = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "clipsearch": __version__,
        "model": {"name": identity.name, "embed_dim": identity.embed_dim, "weights_sha256": identity.weights_sha256,
                  **({"logit_scale": float(scale)} if (scale := store.meta("logit_scale")) else {})},
        "shard": {"index": shard[0], "count": shard[1]}, "roots": roots, "images": len(images),
        "skipped": dict(skipped), "created_at": now(), "host": socket.gethostname()}
    tmp = folder / f".{SHARD_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(description, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / SHARD_FILE)


def _image_rows(store: Store) -> Iterator[tuple[str, int, dict[str, Any]]]:
    cols = ("size", "mtime_ns", "fingerprint", "width", "height", "format", "taken_at", "lat", "lon")
    for path, raw, image_id, *values in store.db.execute(f"SELECT path, path_raw, id, {', '.join(cols)} FROM images"):
        yield (os.fsdecode(raw) if raw is not None else path), int(image_id), dict(zip(cols, values, strict=True))


def _skip_rows(store: Store) -> Iterator[tuple[str, int, int, str, str]]:
    for path, raw, size, mtime, reason, detail in store.db.execute(
            "SELECT path, path_raw, size, mtime_ns, reason, detail FROM skipped"):
        yield (os.fsdecode(raw) if raw is not None else path), int(size), int(mtime), reason, detail or ""


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- merging --------------------------------------------------------------------------------------


@dataclass
class Shard:
    """A finished shard folder, checked: its description, and its vectors mapped (not read)."""

    folder: Path
    description: dict[str, Any]
    identity: ModelIdentity
    vectors: np.ndarray

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> Shard:
        path = Path(os.path.abspath(os.path.expanduser(os.fspath(folder))))
        if not (path / SHARD_FILE).is_file():
            hint = " (an unfinished shard: rerun its `clipsearch embed` to finish it)" if path.name.endswith(
                PARTIAL) or path.with_name(path.name + PARTIAL).exists() else ""
            raise UsageError(f"{path} is not a finished shard: no {SHARD_FILE}{hint}")
        try:
            desc = json.loads((path / SHARD_FILE).read_text(encoding="utf-8"))
            if desc.get("format") != FORMAT:
                raise ValueError("not a clipsearch shard")
            if int(desc.get("format_version", 0)) > FORMAT_VERSION:
                raise UsageError(f"{path} was written by a newer clipsearch ({desc.get('clipsearch')}); upgrade")
            model = desc["model"]
            identity = ModelIdentity(str(model["name"]), int(model["embed_dim"]), str(model["weights_sha256"]))
            vectors = np.load(path / VECTORS, mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path} is not a readable shard ({exc})") from None
        if vectors.dtype != np.float32 or vectors.shape != (int(desc["images"]), identity.embed_dim):
            raise UsageError(f"{path} is damaged: {VECTORS} holds {vectors.shape}, {SHARD_FILE} says "
                             f"({desc['images']}, {identity.embed_dim})")
        return cls(path, desc, identity, vectors)

    def records(self) -> Iterator[dict[str, Any]]:
        with open(self.folder / META, encoding="ascii") as f:
            for line in f:
                yield json.loads(line)


@dataclass
class MergeSummary:
    """What `merge` did with the shards' files."""

    shards: int
    added: int = 0
    updated: int = 0  # already indexed, replaced by a newer copy from a shard
    unchanged: int = 0  # already indexed as the shard has it
    kept: int = 0  # already indexed from a newer file than the shard saw
    duplicates: int = 0  # the same path in several shards: all but the newest dropped
    skipped: Counter[str] = field(default_factory=Counter)
    total: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"shards": self.shards, "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
                "kept_newer_in_index": self.kept, "duplicates_dropped": self.duplicates,
                "skipped": dict(self.skipped), "total_indexed": self.total, "seconds": round(self.seconds, 3)}

    def line(self) -> str:
        return (f"Merged {self.shards} shards in {self.seconds:.1f}s: {self.added} added, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.kept} kept (newer in the index), {self.duplicates} duplicates "
                f"dropped, {sum(self.skipped.values())} skipped. {self.total} photos in the index.")


def parse_remap(items: list[str]) -> list[tuple[str, str]]:
    """['OLD=NEW', ...] -> [(OLD, NEW)], absolute, longest OLD first so nested mounts map right."""
    pairs = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--remap takes OLD=NEW (folders), not {item!r}")
        pairs.append((os.path.normpath(old), os.path.abspath(os.path.expanduser(new))))
    return sorted(pairs, key=lambda p: -len(p[0]))


def _remapped(path: str, remap: Sequence[tuple[str, str]]) -> str:
    for old, new in remap:
        if scan.under(path, [old]):
            return new + path[len(old):]
    return path


def check_models(shards: list[Shard]) -> ModelIdentity:
    """The shards' one model; mixing two would put incomparable vectors in one index."""
    first = shards[0]
    for other in shards[1:]:
        try:
            check_same_model(first.identity, other.identity)
        except ModelMismatchError:
            raise ModelMismatchError(
                f"the shards were embedded with different models: {first.folder} with {first.identity.describe()}, "
                f"{other.folder} with {other.identity.describe()}; merge only shards of one model") from None
    return first.identity


def merge(store: Store, shards: list[Shard], remap: Sequence[tuple[str, str]] = ()) -> MergeSummary:
    """Add the shards' files to the index in `store`, COMMIT_EVERY files per transaction.

    Each path is decided once, newest file first: among the shards the copy with the newest mtime
    wins (the first shard given on a tie); against the index a shard's copy replaces the indexed one
    only when it is newer (the image keeps its id, as a changed file does), and one the index has
    just so is left alone. New files get ids in scan order, so the shards of one `embed` job give
    the ids local indexing would have. Nothing is deleted: a shard cannot know what was removed.
    """
    start = time.perf_counter()
    summary = MergeSummary(len(shards))
    identity = check_models(shards)
    store.bind_model(identity)  # refuses an index built with another model
    scale = shards[0].description["model"].get("logit_scale")  # absent in shards of older versions
    if scale is not None and store.meta("logit_scale") is None:
        store.set_meta("logit_scale", repr(float(scale)))
    best: dict[str, tuple[int, int, int]] = {}  # path -> (mtime_ns, -shard, seq) of the copy to keep
    for n, shard in enumerate(shards):
        for rec in shard.records():
            key = (int(rec["mtime_ns"]), -n, int(rec["seq"]))
            path = _remapped(rec["path"], remap)
            if path in best:
                summary.duplicates += 1
                if key <= best[path]:
                    continue
            best[path] = key
    known = store.known_files()
    skipped_before = store.skipped_unchanged()
    rows: list[dict[str, Any]] = []
    vecs: list[np.ndarray] = []
    skips: list[tuple[str, int, int, str, str]] = []

    def commit() -> None:
        nonlocal rows, vecs, skips
        if rows or skips:
            store.write_batch(rows, np.stack(vecs) if vecs else None, skips)
        rows, vecs, skips = [], [], []

    for _seq, n, rec in heapq.merge(*(_keyed(n, shard) for n, shard in enumerate(shards))):
        path = _remapped(rec["path"], remap)
        if best.get(path) != (int(rec["mtime_ns"]), -n, int(rec["seq"])):
            continue  # a duplicate that lost
        old = known.get(path)
        size, mtime = int(rec["size"]), int(rec["mtime_ns"])
        before = skipped_before.get(path)
        if (old is not None and (old.size, old.mtime_ns) == (size, mtime)) or (
                old is None and "skip" in rec and before is not None and before[:2] == (size, mtime)):
            summary.unchanged += 1
            continue
        if old is not None and old.mtime_ns > mtime:
            summary.kept += 1
            continue
        if "skip" in rec:
            skips.append((path, size, mtime, rec["skip"], rec["detail"]))
            summary.skipped[rec["skip"]] += 1
        else:
            rows.append({k: rec[k] for k in ("size", "mtime_ns", "fingerprint", "width", "height", "format",
                                              "taken_at", "lat", "lon")} | {"path": path})
            vecs.append(np.asarray(shards[n].vectors[int(rec["row"])], dtype=np.float32))
            if old is None:
                summary.added += 1
            else:
                summary.updated += 1
        if len(rows) + len(skips) >= indexer.COMMIT_EVERY:
            commit()
    commit()
    summary.total = store.count()
    summary.seconds = time.perf_counter() - start
    return summary


def _keyed(n: int, shard: Shard) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """A shard's records as (seq, shard number, record): heapq.merge interleaves the shards in scan order."""
    for rec in shard.records():
        yield int(rec["seq"]), n, rec
