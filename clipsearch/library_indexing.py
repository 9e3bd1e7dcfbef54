"""The indexing half of `Library`: scanning folders into the index (locally or on Ray), merging
shards, and exporting the text encoder that keeps queries torch-free.

`Library` inherits these methods; they live here to keep library.py about one job (searching).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from clipsearch import config, models, scan, text_model
from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.embedder import Embedder
from clipsearch.errors import ClipsearchError, IndexLockedError, ModelMismatchError, UsageError
from clipsearch.store import Store, check_same_model, now
from clipsearch.vectors import VectorIndex, remove_orphan_temps

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from clipsearch import indexer, shards
    from clipsearch.ray_executor import RayOptions

LOCK_NAME = "index.lock"
LOCK_OWNER = "index.lock.owner"


class Indexing:
    """Library's indexing methods; the write lock makes one writer per index at a time."""

    if TYPE_CHECKING:  # what these methods use of Library, for the type checker
        path: Path
        _model_name: str | None
        _device: str | None
        _precision: str | None
        _notify: Callable[[str], None] | None
        _embedder: Embedder | None

        def embedder(self) -> Embedder: ...

    def index(self, paths: Iterable[str | os.PathLike[str]], *, exclude: Iterable[str] = (),
              follow_symlinks: bool = False, include_hidden: bool = False, rebuild: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, wait: bool = False,
              progress: indexer.Progress | None = None, ray: RayOptions | None = None) -> indexer.IndexSummary:
        """Add new and changed photos under `paths`, drop deleted ones, keep moved ones' vectors.

        With `ray`, decoding and embedding run on a Ray cluster (ray_executor.py); the scan, the plan
        and every commit stay here, so the index ends up the same either way.
        """
        given = [os.fspath(p) for p in paths]
        roots = [os.path.abspath(os.path.expanduser(p)) for p in given]
        if not roots:
            raise UsageError("name at least one folder or photo to index")
        for root, name in zip(roots, given, strict=True):
            if not os.path.lexists(root):  # before anything is created: a typo leaves no empty index
                raise UsageError(f"no such file or folder: {name}")
        executor = None
        if ray is not None:
            from clipsearch.ray_executor import RayExecutor

            executor = RayExecutor(ray, self._device, self._precision)
        with self._write_lock(wait):
            return self._index_locked(roots, tuple(exclude), follow_symlinks, include_hidden, rebuild,
                                      max_pixels, progress, executor)

    @contextlib.contextmanager
    def _write_lock(self, wait: bool) -> Iterator[None]:
        """The index's single-writer lock, with a note of who holds it for the error others get."""
        import socket

        import filelock

        self.path.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.path / LOCK_NAME), timeout=-1 if wait else 0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise IndexLockedError(f"the index at {self.path} is being updated by {self._lock_owner()}; "
                                   "wait for it, or pass --wait") from None
        try:
            (self.path / LOCK_OWNER).write_text(json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}))
            yield
        finally:
            with contextlib.suppress(OSError):
                (self.path / LOCK_OWNER).unlink()
            lock.release()

    def _lock_owner(self) -> str:
        try:
            info = json.loads((self.path / LOCK_OWNER).read_text())
            return f"process {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "another clipsearch process"

    def _index_locked(self, roots: list[str], exclude: tuple[str, ...], follow: bool, hidden: bool,
                      rebuild: bool, max_pixels: int, progress: indexer.Progress | None,
                      executor: indexer.Executor | None) -> indexer.IndexSummary:
        started = now()
        remove_orphan_temps(self.path)
        store = Store.open(self.path, create=True)
        try:
            recorded = store.model_identity()
            if recorded is not None and self._model_name and not rebuild:
                wanted = models.parse(self._model_name).name
                if wanted != recorded.name:
                    raise ModelMismatchError(
                        f"this index was built with {recorded.name}, not {wanted}; pass --rebuild to re-embed "
                        "every photo with the new model, or use another --index")
            if rebuild:
                store.reset()
            problems = scan.ScanProblems()
            found = list(scan.walk(roots, exclude, follow, hidden, problems))

            def get_embedder() -> Embedder:
                emb = self.embedder()
                store.bind_model(emb.identity)
                if store.meta("logit_scale") is None:  # text queries' relevance decision reads it
                    store.set_meta("logit_scale", repr(emb.logit_scale))
                return emb

            from clipsearch import indexer  # decoding and the pipeline: not needed by queries

            summary = indexer.run(store, get_embedder, roots, found, problems, max_pixels, progress,
                                  executor=executor)
            if store.model_identity() is None and self._embedder is not None:
                store.bind_model(self._embedder.identity)
            if rebuild:
                text_model.remove(self.path)
            emb = self._embedder
            if (emb is not None and config.text_model_enabled()
                    and not text_model.available(self.path, emb.identity.weights_sha256)):
                self._export_text_model(emb, store.sample_vectors(20_000))
            VectorIndex.load(self.path, store)  # refresh the FAISS cache now, not on the next query
            store.record_run(started, json.dumps(summary.as_dict()))
            return summary
        finally:
            store.close()

    def merge(self, shard_folders: Iterable[str | os.PathLike[str]], *, remap: Iterable[str] = (),
              wait: bool = False) -> shards.MergeSummary:
        """Fold shards written by `clipsearch embed` into this index (shards.py: model check, dedup, order).

        `remap` entries are "OLD=NEW": shard paths under OLD are indexed under NEW, for a filesystem
        mounted elsewhere here than on the machines that embedded it.
        """
        from clipsearch import shards

        opened = [shards.Shard.open(f) for f in shard_folders]
        if not opened:
            raise UsageError("name at least one shard folder to merge")
        pairs = shards.parse_remap(list(remap))
        shards.check_models(opened)  # before anything is created: a refused merge leaves no trace
        with self._write_lock(wait):
            started = now()
            remove_orphan_temps(self.path)
            store = Store.open(self.path, create=True)
            try:
                summary = shards.merge(store, opened, pairs)
                VectorIndex.load(self.path, store)
                self._export_text_model_if_cached(store)
                store.record_run(started, json.dumps({"merge": summary.as_dict()}))
                return summary
            finally:
                store.close()

    def _export_text_model_if_cached(self, store: Store) -> None:
        """After a merge: the torch-free text encoder, when the model's weights are on this machine.

        Merging needs no model, so one that is not here is not fetched; queries then use the torch path.
        """
        recorded = store.model_identity()
        if recorded is None or not config.text_model_enabled() or text_model.available(
                self.path, recorded.weights_sha256):
            return
        try:
            emb = Embedder(models.parse(recorded.name), self._device, self._precision, download=False)
            check_same_model(recorded, emb.identity)
        except ClipsearchError:
            return
        self._export_text_model(emb, store.sample_vectors(20_000))

    def _export_text_model(self, emb: Embedder, backdrop: np.ndarray) -> None:
        """Give queries a torch-free text encoder (text_model.py); optional, so failures only cost speed."""
        if self._notify is not None:
            self._notify("preparing the text encoder that makes queries fast (once per index)")
        try:
            text_model.export(emb, self.path, backdrop)
        except Exception:  # noqa: BLE001 - an exporter or runtime gap must never fail an indexing run
            text_model.remove(self.path)
