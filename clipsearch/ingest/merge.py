"""Merging shards (written by `clipsearch embed`, shards.py) into an index.

A shard folder is checked before anything is written (format, version, model, vector shapes); the
shards' files then go through the indexer's own batch writer, newest copy of each path first.
"""

from __future__ import annotations

import heapq
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch import paths
from clipsearch.errors import ModelMismatchError, UsageError
from clipsearch.index.records import ImageRecord, SkipRecord
from clipsearch.index.store import Store
from clipsearch.ingest.pipeline import BatchWriter
from clipsearch.ingest.shards import FORMAT, FORMAT_VERSION, META, PARTIAL, SHARD_FILE, VECTORS
from clipsearch.model.identity import ModelIdentity, check_same_model


@dataclass
class Shard:
    """A finished shard folder, checked: its description, and its vectors mapped (not read)."""

    folder: Path
    description: dict[str, Any]
    identity: ModelIdentity
    vectors: np.ndarray

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> Shard:
        path = Path(paths.resolve(folder))
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
        pairs.append((os.path.normpath(old), paths.resolve(new)))
    return sorted(pairs, key=lambda p: -len(p[0]))


def _remapped(path: str, remap: Sequence[tuple[str, str]]) -> str:
    for old, new in remap:
        if paths.under(path, [old]):
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
    """Add the shards' files to the index in `store`, through the indexer's batch writer.

    Each path is decided once, newest file first: among the shards the copy with the newest mtime
    wins (the first shard given on a tie); against the index a shard's copy replaces the indexed one
    only when it is newer (the image keeps its id, as a changed file does), and one the index has
    just so is left alone. New files get ids in scan order, so the shards of one `embed` job give
    the ids local indexing would have. Nothing is deleted: a shard cannot know what was removed.
    """
    start = time.perf_counter()
    summary = MergeSummary(len(shards))
    store.bind_model(check_models(shards))  # refuses an index built with another model
    scale = shards[0].description["model"].get("logit_scale")  # absent in shards of older versions
    if scale is not None and store.meta("logit_scale") is None:
        store.set_meta("logit_scale", repr(float(scale)))
    bias = shards[0].description["model"].get("logit_bias")  # sigmoid-loss (SigLIP) models only
    if bias is not None and store.meta("logit_bias") is None:
        store.set_meta("logit_bias", repr(float(bias)))
    best = _newest_copies(shards, remap, summary)
    known = store.known_files()
    skipped_before = store.skipped_unchanged()
    writer = BatchWriter(store)
    for _seq, n, rec in heapq.merge(*(_keyed(n, shard) for n, shard in enumerate(shards))):
        path = _remapped(rec["path"], remap)
        if best.get(path) != (int(rec["mtime_ns"]), -n, int(rec["seq"])):
            continue  # a duplicate that lost
        old = known.get(path)
        size, mtime = int(rec["size"]), int(rec["mtime_ns"])
        before = skipped_before.get(path)
        same_skip = before is not None and (before.size, before.mtime_ns) == (size, mtime)
        if (old is not None and (old.size, old.mtime_ns) == (size, mtime)) or (old is None and "skip" in rec
                                                                              and same_skip):
            summary.unchanged += 1
        elif old is not None and old.mtime_ns > mtime:
            summary.kept += 1
        elif "skip" in rec:
            writer.add_skip(SkipRecord(path, size, mtime, rec["skip"], rec["detail"]))
            summary.skipped[rec["skip"]] += 1
        else:
            writer.add(ImageRecord.from_fields(path, rec), np.asarray(shards[n].vectors[int(rec["row"])], np.float32))
            if old is None:
                summary.added += 1
            else:
                summary.updated += 1
    writer.commit()
    summary.total = store.count()
    summary.seconds = time.perf_counter() - start
    return summary


def _newest_copies(shards: list[Shard], remap: Sequence[tuple[str, str]],
                   summary: MergeSummary) -> dict[str, tuple[int, int, int]]:
    """path -> (mtime_ns, -shard, seq) of the copy to keep; counts the duplicates dropped."""
    best: dict[str, tuple[int, int, int]] = {}
    for n, shard in enumerate(shards):
        for rec in shard.records():
            key = (int(rec["mtime_ns"]), -n, int(rec["seq"]))
            path = _remapped(rec["path"], remap)
            if path in best:
                summary.duplicates += 1
                if key <= best[path]:
                    continue
            best[path] = key
    return best


def _keyed(n: int, shard: Shard) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """A shard's records as (seq, shard number, record): heapq.merge interleaves the shards in scan order."""
    for rec in shard.records():
        yield int(rec["seq"]), n, rec
