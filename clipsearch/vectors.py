"""The FAISS index: a derived cache of the vectors in SQLite, rebuilt whenever it is missing or stale.

The file is named after the SQLite write generation it reflects (`vectors.<generation>.faiss`), so a
stale or half-written file is never mistaken for a current one. Writes go to a temp file that is
fsynced and then renamed over, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.store import Store

PREFIX = "vectors."
SUFFIX = ".faiss"


def _file_for(folder: Path, generation: int) -> Path:
    return folder / f"{PREFIX}{generation}{SUFFIX}"


class VectorIndex:
    """Inner-product search over normalised vectors; FAISS ids are SQLite image ids."""

    def __init__(self, index: Any, generation: int) -> None:
        self.index = index
        self.generation = generation

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, store: Store) -> VectorIndex:
        import faiss

        ids, mat = store.all_vectors()
        dim = mat.shape[1] if mat.size else int(store.meta("embed_dim") or 1)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(mat, dtype=np.float32), ids)
        return cls(index, store.generation())

    @classmethod
    def load(cls, folder: Path, store: Store, save: bool = True) -> VectorIndex:
        """The current index: read from disk when its generation matches SQLite, else rebuilt."""
        import faiss

        generation = store.generation()
        path = _file_for(folder, generation)
        if path.exists():
            try:
                index = faiss.read_index(str(path))
                if index.ntotal == store.count():
                    return cls(index, generation)
            except RuntimeError:
                pass  # truncated or foreign file: rebuilt below
        built = cls.build(store)
        if save:
            with contextlib.suppress(OSError):  # a read-only index folder still answers queries
                built.save(folder)
        return built

    def save(self, folder: Path) -> Path:
        import faiss

        target = _file_for(folder, self.generation)
        tmp = folder / f".{target.name}.{os.getpid()}.tmp"
        try:
            faiss.write_index(self.index, str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync_dir(folder)
        for old in folder.glob(f"{PREFIX}*{SUFFIX}"):
            if old != target:
                with contextlib.suppress(OSError):
                    old.unlink()
        remove_orphan_temps(folder)
        return target

    def sample(self, max_rows: int = 4096) -> np.ndarray:
        """Up to `max_rows` stored vectors, evenly spaced: the backdrop the relevance cutoff measures against."""
        import faiss

        inner = faiss.downcast_index(self.index.index)
        n, d = int(inner.ntotal), int(inner.d)
        if n == 0:
            return np.zeros((0, d), dtype=np.float32)
        # A zero-copy view of the flat index's storage.
        flat = faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d)  # type: ignore[attr-defined]
        return np.ascontiguousarray(flat[:: max(1, n // max_rows)][:max_rows])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(queries), k'); missing slots have id -1 and are cut."""
        k = min(k, self.size)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids


def remove_orphan_temps(folder: Path) -> None:
    """Delete temp files left by writers that were killed mid-write (their process is gone)."""
    for tmp in folder.glob(f".{PREFIX}*{SUFFIX}.*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except (ValueError, PermissionError, OSError):
            continue


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
