"""`Library`: the public facade that wires scan, decode, embed, store and search together.

    from clipsearch import Library
    lib = Library()                       # the default index, its recorded model
    lib.index(["~/Photos"])
    for hit in lib.search("my cute dog", top=5):
        print(hit.score, hit.path)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsearch import config, indexer, models, scan
from clipsearch import search as search_mod
from clipsearch.embedder import Embedder, ModelIdentity
from clipsearch.errors import IndexLockedError, IndexMissingError, ModelMismatchError, UsageError
from clipsearch.images import DEFAULT_MAX_PIXELS
from clipsearch.store import Store, check_same_model, now
from clipsearch.vectors import VectorIndex, remove_orphan_temps

LOCK_NAME = "index.lock"
LOCK_OWNER = "index.lock.owner"


@dataclass(frozen=True)
class Status:
    path: Path
    model: ModelIdentity | None
    images: int
    skipped: dict[str, int]
    bytes_on_disk: int
    last_run_at: str | None
    last_run: dict[str, object] | None
    vector_cache: str

    def as_dict(self) -> dict[str, object]:
        return {
            "index": str(self.path),
            "model": None if self.model is None else {
                "name": self.model.name, "embed_dim": self.model.embed_dim,
                "weights_sha256": self.model.weights_sha256},
            "images": self.images, "skipped": self.skipped, "bytes_on_disk": self.bytes_on_disk,
            "last_run_at": self.last_run_at, "last_run": self.last_run, "vector_cache": self.vector_cache,
        }


class Library:
    """One index folder and the model that goes with it.

    `model` is a name as `clipsearch models list` shows (None: the model the index was built with,
    or the default for a new index). Nothing heavy is loaded until it is needed. `notify` hears a
    line before anything slow that the caller did not ask for by name (a model download).
    """

    def __init__(self, index: str | os.PathLike[str] | None = None, model: str | None = None,
                 device: str | None = None, precision: str | None = None, download: bool = True,
                 notify: Callable[[str], None] | None = None) -> None:
        self.path = config.index_dir(index)
        self._model_name = config.model_name(model)
        self._device = config.device_name(device)
        self._precision = precision
        self._download = download
        self._notify = notify
        self._embedder: Embedder | None = None

    # --- model ----------------------------------------------------------------------------------

    def _recorded_model(self) -> ModelIdentity | None:
        try:
            store = Store.open(self.path)
        except Exception:  # noqa: BLE001 - no index (or no readable one) means nothing is recorded
            return None
        try:
            return store.model_identity()
        finally:
            store.close()

    def model_spec(self) -> models.ModelSpec:
        """The model this library uses: the one asked for, else the index's, else the default."""
        if self._model_name:
            return models.parse(self._model_name)
        recorded = self._recorded_model()
        return models.parse(recorded.name if recorded else config.DEFAULT_MODEL)

    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.model_spec(), self._device, self._precision, self._download,
                                      self._notify)
        return self._embedder

    # --- indexing -------------------------------------------------------------------------------

    def index(self, paths: Iterable[str | os.PathLike[str]], *, exclude: Iterable[str] = (),
              follow_symlinks: bool = False, include_hidden: bool = False, rebuild: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, wait: bool = False,
              progress: indexer.Progress | None = None) -> indexer.IndexSummary:
        """Add new and changed photos under `paths`, drop deleted ones, keep moved ones' vectors."""
        roots = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]
        if not roots:
            raise UsageError("name at least one folder or photo to index")
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
            return self._index_locked(roots, tuple(exclude), follow_symlinks, include_hidden, rebuild,
                                      max_pixels, progress)
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
                      rebuild: bool, max_pixels: int, progress: indexer.Progress | None) -> indexer.IndexSummary:
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
                return emb

            summary = indexer.run(store, get_embedder, roots, found, problems, max_pixels, progress)
            if store.model_identity() is None and self._embedder is not None:
                store.bind_model(self._embedder.identity)
            VectorIndex.load(self.path, store)  # refresh the FAISS cache now, not on the next query
            store.record_run(started, json.dumps(summary.as_dict()))
            return summary
        finally:
            store.close()

    # --- searching ------------------------------------------------------------------------------

    def _open_for_search(self) -> tuple[Store, VectorIndex]:
        store = Store.open(self.path)
        try:
            recorded = store.model_identity()
            if recorded is None:
                raise IndexMissingError(f"the index at {self.path} has no photos yet; add some with "
                                        "`clipsearch index FOLDER`")
            if self._model_name and models.parse(self._model_name).name != recorded.name:
                raise ModelMismatchError(f"this index was built with {recorded.name}, not "
                                         f"{models.parse(self._model_name).name}; omit --model to use it")
            return store, VectorIndex.load(self.path, store)
        except BaseException:
            store.close()
            raise

    def search(self, text: str | None = None, *, image: str | os.PathLike[str] | None = None, top: int = 20,
               within: Iterable[str | os.PathLike[str]] = ()) -> list[search_mod.SearchResult]:
        """Photos nearest to a text and/or an example image, best first."""
        if not (text and text.strip()) and image is None:
            raise UsageError("give a text query or --image PATH")
        if top < 1:
            raise UsageError("--top must be at least 1")
        store, index = self._open_for_search()
        try:
            query = self._query_vector(store, text, image)
            return search_mod.rank(store, index, query, top, tuple(os.fspath(w) for w in within))
        finally:
            store.close()

    def _query_vector(self, store: Store, text: str | None, image: str | os.PathLike[str] | None):

        from clipsearch import images

        emb = self.embedder()
        recorded = store.model_identity()
        assert recorded is not None
        check_same_model(recorded, emb.identity)
        parts = []
        if text and text.strip():
            parts.append(emb.embed_texts([text.strip()])[0])
        if image is not None:
            path = os.path.abspath(os.path.expanduser(os.fspath(image)))
            try:
                decoded = images.decode(path, emb.preprocess)
            except images.SkipFile as skip:
                raise UsageError(f"cannot use {scan.display_path(path)} as a query image: {skip}") from None
            parts.append(emb.embed_images(decoded.pixels[None])[0])
        vec = np.sum(parts, axis=0)
        return vec / (np.linalg.norm(vec) or 1.0)

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> Status:
        store = Store.open(self.path)
        try:
            size = sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
            last = store.last_run()
            faiss_files = list(self.path.glob("vectors.*.faiss"))
            current = self.path / f"vectors.{store.generation()}.faiss"
            cache = "current" if current.exists() else ("stale, rebuilt on next use" if faiss_files else
                                                        "missing, rebuilt on next use")
            return Status(self.path, store.model_identity(), store.count(), store.skipped_counts(), size,
                          last[0] if last else None, json.loads(last[1]) if last and last[1] else None, cache)
        finally:
            store.close()

    def skipped(self) -> list[tuple[str, str, str]]:
        store = Store.open(self.path)
        try:
            return list(store.iter_skipped())
        finally:
            store.close()

