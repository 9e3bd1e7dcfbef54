"""The FAISS index: a derived cache of the vectors in SQLite, rebuilt whenever it is missing or stale.

The file is named after the SQLite write generation it reflects (`vectors.<generation>.faiss`), so a
stale or half-written file is never mistaken for a current one. Writes go to a temp file that is
fsynced and then renamed over, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch import failpoints
from clipsearch.index.half_scan import HalfScan
from clipsearch.index.id_rows import IdRows
from clipsearch.index.store import Store
from clipsearch.paths import fsync_dir, replace_atomically

PREFIX = "vectors."
SUFFIX = ".faiss"

# Exact search while it is fast: a flat scan of 50k x 512 floats takes ~8 ms on 2 cores. Above that,
# IVF with 8-bit scalar quantisation: measured at 1M clustered vectors, 0.8 ms a query at recall@20
# 0.986 in 528 MB, loading in 0.17 s (docs/benchmarks.md has this machine's figures).
FLAT_LIMIT = 50_000
NPROBE = 16
ADD_CHUNK = 65_536  # vectors read from SQLite and added at a time: 128 MB of float32 at 512 dimensions


BACKDROP_SUFFIX = ".backdrop.npy"
BACKDROP_ROWS = 4096


def cache_state(folder: Path, store: Store) -> str:
    """How the FAISS file stands against SQLite (its generation, then its contents), in words for `status`."""
    path = _file_for(folder, store.generation())
    if path.exists():
        try:
            index = _read(path)
        except RuntimeError:
            return "damaged, rebuilt on next use"
        if index.ntotal == store.count() and reflects(index, store):
            return "current"
        return "from another index, rebuilt on next use"
    if store.read_only:
        return "not saved: built in memory by each command (the index folder is read-only)"
    return "stale, rebuilt on next use" if any(folder.glob(f"{PREFIX}*{SUFFIX}")) else "missing, rebuilt on next use"


def _file_for(folder: Path, generation: int) -> Path:
    return folder / f"{PREFIX}{generation}{SUFFIX}"


def _backdrop_for(folder: Path, generation: int) -> Path:
    return folder / f"{PREFIX}{generation}{BACKDROP_SUFFIX}"


class VectorIndex:
    """Inner-product search over normalised vectors; FAISS ids are SQLite image ids."""

    def __init__(self, index: Any, generation: int, backdrop: np.ndarray | None = None,
                 folder: Path | None = None) -> None:
        self.index = index
        self.generation = generation
        # The relevance cutoff's sample of the library. An IVF index cannot hand its vectors out
        # cheaply, so the sample is kept beside it: reading 4096 vectors back from SQLite costs a
        # cold query 40 ms at 100k photos, the .npy file 2 ms.
        self._backdrop = backdrop
        self._folder = folder
        self._mapped: tuple[Path, tuple[int, int, int]] | None = None  # the file it maps, as it was then
        self._positions: _FlatMap | None = None  # a flat index's rows by id, its storage, ids by row
        # What the search layer derives from this generation's vectors (background_scores.py): it
        # lives and dies with them.
        self.derived: dict[str, Any] = {}
        self._half: HalfScan | None = None
        self._searches = 0

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return "flat" if _ivf(self.index) is None else "ivf-sq8"

    @classmethod
    def build(cls, store: Store, flat_limit: int = FLAT_LIMIT, chunk: int = ADD_CHUNK) -> VectorIndex:
        """Build from SQLite without a second copy of the vectors in memory (docs/storage.md, "At scale").

        IVF is trained on a sample and filled `chunk` vectors at a time, so the peak is the index
        itself (dim + 8 bytes a photo in IVF-SQ8) plus the sample and one chunk; the flat index, below
        `flat_limit`, holds its floats anyway. All reads are one SQLite snapshot, so the generation
        the file is named after is the one the vectors come from.
        """
        import faiss

        with store.atomic():
            generation = store.generation()
            ids = store.vector_ids()
            dim = int(store.meta("embed_dim") or 1)
            index: Any
            if len(ids) < flat_limit:
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            else:
                nlist = int(4 * np.sqrt(len(ids)))
                index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist,
                                                      faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
                # 64 points per list train the centroids well; a fixed seed keeps rebuilds identical.
                rows = np.random.default_rng(0).choice(len(ids), size=min(len(ids), 64 * nlist), replace=False)
                index.train(store.vectors_of_ids(ids[np.sort(rows)]))
                index.nprobe = NPROBE
            for chunk_ids, mat in store.iter_vectors(chunk):
                index.add_with_ids(np.ascontiguousarray(mat, dtype=np.float32), chunk_ids)
            backdrop = None if len(ids) < flat_limit else store.sample_vectors(BACKDROP_ROWS)
        return cls(index, generation, backdrop)

    @classmethod
    def load(cls, folder: Path, store: Store, save: bool = True,
             notify: Callable[[str], None] | None = None) -> VectorIndex:
        """The current index: read from disk when its generation matches SQLite, else rebuilt.

        A rebuilt index that cannot be saved (a read-only folder, a full disk: faiss raises
        RuntimeError, not OSError) is searched from memory, and `notify` hears it once.
        """
        generation = store.generation()
        path = _file_for(folder, generation)
        if path.exists():
            try:
                index = _read(path)
                if index.ntotal == store.count() and reflects(index, store):
                    ivf = _ivf(index)
                    if ivf is not None:
                        ivf.nprobe = NPROBE
                    loaded = cls(index, generation, folder=folder)
                    loaded._mapped = (path, _identity(path))
                    return loaded
            except RuntimeError:
                pass  # truncated or foreign file: rebuilt below
        built = cls.build(store)
        built._folder = folder
        if save and store.read_only:
            if notify is not None:
                notify(f"the index folder {folder} is read-only: searching a vector index built in memory from "
                       "the database (slower; nothing is saved)")
        elif save:
            try:
                built.save(folder)
            except (OSError, RuntimeError) as exc:
                if notify is not None:
                    # faiss says only "write error" (a RuntimeError): the usual cause is named instead
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the disk may be full"
                    notify(f"could not save the vector cache in {folder} ({reason}); searching a vector index "
                           "built in memory from the database (nothing is lost; it is saved once there is room)")
        return built

    def still_current(self, store: Store) -> bool:
        """Whether a process may keep searching this index: SQLite has not moved on, and the file it
        maps is the one it mapped (a file rewritten in place under a mapping must not be read)."""
        if self.generation != store.generation() or self.size != store.count():
            return False
        if self._mapped is None:
            return True
        path, identity = self._mapped
        try:
            return _identity(path) == identity
        except OSError:
            return False

    def save(self, folder: Path) -> Path:
        import faiss

        def write(tmp: Path) -> None:
            faiss.write_index(self.index, str(tmp))
            failpoints.hit("faiss-write")  # the new file half-made: not yet synced or in place

        target = _file_for(folder, self.generation)
        replace_atomically(target, write)
        if self._backdrop is not None:
            self._save_backdrop(folder, self._backdrop)
        fsync_dir(folder)
        keep = {target, _backdrop_for(folder, self.generation)}
        for old in [*folder.glob(f"{PREFIX}*{SUFFIX}"), *folder.glob(f"{PREFIX}*{BACKDROP_SUFFIX}")]:
            if old not in keep:
                with contextlib.suppress(OSError):
                    old.unlink()
        remove_orphan_temps(folder)
        return target

    def _save_backdrop(self, folder: Path, backdrop: np.ndarray) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, backdrop)

        replace_atomically(_backdrop_for(folder, self.generation), write)

    def sample(self, store: Store, max_rows: int = 4096) -> np.ndarray:
        """Up to `max_rows` stored vectors, evenly spaced: the backdrop the relevance cutoff measures against."""
        import faiss

        if _ivf(self.index) is not None:
            if self._backdrop is None and self._folder is not None:
                with contextlib.suppress(OSError, ValueError):  # missing or damaged: read SQLite instead
                    loaded = np.load(_backdrop_for(self._folder, self.generation), allow_pickle=False)
                    if loaded.ndim == 2 and loaded.shape[1] == self.index.d and loaded.dtype == np.float32:
                        self._backdrop = loaded
            if self._backdrop is None:
                self._backdrop = store.sample_vectors(max_rows)
                if self._folder is not None:
                    with contextlib.suppress(OSError):
                        self._save_backdrop(self._folder, self._backdrop)
            return self._backdrop[:max_rows]
        if self._backdrop is None:
            inner = faiss.downcast_index(self.index.index)
            n, d = int(inner.ntotal), int(inner.d)
            if n == 0:
                return np.zeros((0, d), dtype=np.float32)
            # A zero-copy view of the flat index's storage; the sample is copied out once per index.
            flat = faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d)  # type: ignore[attr-defined]
            self._backdrop = np.ascontiguousarray(flat[:: max(1, n // BACKDROP_ROWS)][:BACKDROP_ROWS])
        return self._backdrop[:max_rows]

    def vectors_of(self, store: Store, ids: list[int]) -> np.ndarray:
        """The stored vectors of `ids` (hits of this index), exactly as SQLite holds them.

        A flat index holds those very floats: they are taken from its storage through its id map
        (sorted once per index, i.e. per generation), which saves a text query's SQLite read of
        every hit's vector. An IVF index holds 8-bit codes, so SQLite is read.
        """
        rows = self.rows_of(ids)
        if rows is None or (flat := self.flat()) is None:
            return store.vectors_of_ids(ids)  # IVF codes, or not this index's ids: SQLite says what they are
        return np.array(flat[rows], dtype=np.float32)

    def flat(self) -> np.ndarray | None:
        """(size, dim) float32: a flat index's own storage, not a copy (None for IVF)."""
        mapped = self._flat_map()
        return None if mapped is None else mapped[1]

    def rows_of(self, ids: list[int] | np.ndarray) -> np.ndarray | None:
        """Where `ids` sit in `flat()`; None for IVF, or when one of them is not in this index."""
        mapped = self._flat_map()
        return None if mapped is None else mapped[0].rows(ids)

    def _flat_map(self) -> _FlatMap | None:
        import faiss

        if self._positions is None:
            # (Asking FAISS whether a flat index is IVF throws inside it: ~45 µs, asked once.)
            if _ivf(self.index) is not None:
                return None
            inner = faiss.downcast_index(self.index.index)
            n, d = int(inner.ntotal), int(inner.d)
            id_map = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            flat = faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d)  # type: ignore[attr-defined]
            self._positions = (IdRows(id_map), flat, id_map)
        return self._positions

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(queries), k'); missing slots have id -1 and are cut."""
        k = min(k, self.size)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        import faiss

        # A few queries on one thread: FAISS's OpenMP pool costs more than it saves there, and on a
        # busy machine its spinning threads made one 10k flat search take 23 ms instead of 0.5 ms.
        # The setting is the calling thread's own (OpenMP keeps it per thread); it is put back.
        threads = faiss.omp_get_max_threads()
        if len(queries) <= FEW_QUERIES:
            faiss.omp_set_num_threads(1)
        try:
            half = self._half_scan() if len(queries) == 1 else None
            got = None if half is None else half.search(queries[0], k)
            if got is not None:
                return got
            scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        finally:
            faiss.omp_set_num_threads(threads)
        return scores, ids

    def _half_scan(self) -> HalfScan | None:
        """A flat index's float16 copy (half_scan.py), made on its second single search: a process
        that searches once (a CLI query) never pays for it."""
        self._searches += 1
        if self._half is None and self._searches >= 2 and (mapped := self._flat_map()) is not None:
            self._half = HalfScan(mapped[1], mapped[2])
        return self._half


FEW_QUERIES = 4
# (the row of each id, the (rows, dim) float32 storage, the id of each row)
_FlatMap = tuple[IdRows, np.ndarray, np.ndarray]


PROBES = 8
IVF_SELF_SCORE = 0.97  # a stored vector against its own 8-bit code: measured >= 0.999 at 64 and 512 dims


def reflects(index: Any, store: Store) -> bool:
    """Whether a FAISS index holds this database's vectors, not another index's of the same generation
    and count (a copied or restored file): a few stored vectors, spread over the ids, must come back
    under their ids. Reconstructed exactly from a flat index; found by a search in an IVF one (its
    8-bit codes are approximate). A few seeks and one small search: well under a millisecond."""
    ids, probes = _probe_vectors(store, PROBES)
    if len(ids) == 0:
        return int(index.ntotal) == 0
    if _ivf(index) is None:
        try:
            got = np.stack([index.reconstruct(int(i)) for i in ids])
        except RuntimeError:  # an id it does not hold
            return False
        return bool(np.allclose(got, probes, atol=1e-5))
    k = min(64, int(index.ntotal))
    for j, image_id in enumerate(ids):
        # One probe at a time: a batch of 8 wakes FAISS's thread pool, 2-7 ms here against 0.1 ms a probe.
        scores, found = index.search(probes[j:j + 1], k)
        hits = np.flatnonzero(found[0] == image_id)
        # Its own vector under its id, as near as 8-bit codes allow (another index's photo is not it).
        if len(hits) == 0 or scores[0][hits[0]] < IVF_SELF_SCORE:
            return False
    return True


def _probe_vectors(store: Store, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, matrix) of up to `count` stored vectors spread over the ids, by seeks (no full read)."""
    dim = int(store.meta("embed_dim") or 0)
    # Two statements: SQLite reads min() or max() alone from the index, both at once by a full scan.
    first = store.db.execute("SELECT min(image_id) FROM vectors").fetchone()[0]
    last = store.db.execute("SELECT max(image_id) FROM vectors").fetchone()[0]
    found: dict[int, bytes] = {}
    if first is not None:
        for target in sorted({int(x) for x in np.linspace(first, last, count)}):
            row = store.db.execute("SELECT image_id, vector FROM vectors WHERE image_id >= ? ORDER BY image_id "
                                   "LIMIT 1", [target]).fetchone()
            found[int(row[0])] = row[1]
    mat = np.frombuffer(b"".join(found.values()), dtype="<f4").reshape(len(found), dim).astype(np.float32)
    return np.fromiter(found, dtype=np.int64, count=len(found)), mat


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read(path: Path) -> Any:
    """The index memory-mapped, not read: 2 ms instead of 0.13 s at 100k photos, 0.02 s instead of 0.74 s
    at 1M. A search touches only the lists it probes, and the file is never changed in place (a new
    generation is a new file, renamed over), so the mapping stays valid while a query runs.
    """
    import faiss

    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)  # faiss >= 1.10
    if flag:
        try:
            return faiss.read_index(str(path), flag)
        except RuntimeError:
            pass  # an index type this faiss cannot map: read it instead
    return faiss.read_index(str(path))


def _ivf(index: Any) -> Any:
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def remove_orphan_temps(folder: Path) -> None:
    """Delete temp files and folders left by writers killed mid-write (their process is gone): FAISS
    files, text- and image-model exports (`.text-model.<pid>.tmp`), new or repaired databases."""
    import shutil

    patterns = (f".{PREFIX}*.tmp", ".text-model.*.tmp", ".image-model.*.tmp", ".clipsearch.db.*.tmp*")
    for tmp in [found for pattern in patterns for found in folder.glob(pattern)]:
        try:
            pid = int(tmp.name.rsplit(".", 2)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
        except (ValueError, PermissionError, OSError):
            continue
