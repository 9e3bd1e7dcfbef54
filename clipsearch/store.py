"""The SQLite database that is the index's source of truth: images, their vectors, the model, skips.

Vectors are stored here too (little-endian float32 blobs), so the FAISS file is only a cache that
can always be rebuilt. Every write happens in a transaction; WAL lets queries read while an indexer
writes. The schema lives in schema.py; docs/storage.md documents it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch import failpoints, schema
from clipsearch.embedder import ModelIdentity
from clipsearch.errors import IndexMissingError, ModelMismatchError, StorageError
from clipsearch.store_tags import TextAndTagTables, encode_vector, now

DB_NAME = "clipsearch.db"


@dataclass(frozen=True)
class KnownFile:
    id: int
    size: int
    mtime_ns: int
    fingerprint: str


@dataclass(frozen=True)
class ImageRow:
    """One indexed image as stored: what search results and filters are made of."""

    id: int
    path: str
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    format: str | None
    taken_at: str | None
    lat: float | None
    lon: float | None


def path_columns(path: str) -> tuple[str, bytes | None]:
    """(text key, raw bytes or None): text SQLite can store, and the exact name when it differs."""
    raw = os.fsencode(path)
    text = raw.decode("utf-8", "backslashreplace")
    return text, (raw if text.encode("utf-8", "surrogatepass") != raw else None)


def os_path(text: str, raw: bytes | None) -> str:
    return os.fsdecode(raw) if raw is not None else text


class Store(TextAndTagTables):
    """The index database. Open with `Store.open(folder)`; close when done."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        self._savepoints = 0

    @classmethod
    def open(cls, folder: Path, create: bool = False) -> Store:
        path = folder / DB_NAME
        if not path.exists() and not create:
            raise IndexMissingError(f"no index at {folder}; build one with `clipsearch index FOLDER`")
        folder.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        store = cls(conn, path)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            schema.ensure(conn, folder)
            # NORMAL is durable across application crashes in WAL mode (only power loss can cost the
            # last commits), and it keeps batched commits cheap.
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return store

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """A transaction; nested blocks are savepoints, so an inner failure undoes only its own part."""
        if self.db.in_transaction:
            self._savepoints += 1
            name = f"clipsearch_{self._savepoints}"
            self.db.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:  # an error may already have ended the whole transaction
                    self.db.execute(f"ROLLBACK TO SAVEPOINT {name}")
                    self.db.execute(f"RELEASE SAVEPOINT {name}")
                raise
            else:
                self.db.execute(f"RELEASE SAVEPOINT {name}")
            return
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # --- model identity -------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value", [key, value])

    def model_identity(self) -> ModelIdentity | None:
        name = self.meta("model_name")
        if name is None:
            return None
        return ModelIdentity(name, int(self.meta("embed_dim") or 0), self.meta("weights_sha256") or "")

    def bind_model(self, identity: ModelIdentity) -> None:
        """Record the model on a new index, or refuse one that differs from the recorded model."""
        current = self.model_identity()
        if current is None:
            with self.atomic():
                self.set_meta("model_name", identity.name)
                self.set_meta("embed_dim", str(identity.embed_dim))
                self.set_meta("weights_sha256", identity.weights_sha256)
                self.set_meta("created_at", now())
            return
        check_same_model(current, identity)

    def reset(self) -> None:
        """Forget every image, vector, skip and the model: for `index --rebuild` with a new model."""
        with self.atomic():
            self.db.execute("DELETE FROM vectors")
            self.db.execute("DELETE FROM images")
            self.db.execute("DELETE FROM skipped")
            for key in ("model_name", "embed_dim", "weights_sha256", "logit_scale"):
                self.db.execute("DELETE FROM meta WHERE key = ?", [key])
            self._bump_generation()

    def generation(self) -> int:
        return int(self.meta("generation") or 0)

    def _bump_generation(self) -> None:
        self.set_meta("generation", str(self.generation() + 1))

    # --- images and vectors ---------------------------------------------------------------------

    def known_files(self) -> dict[str, KnownFile]:
        rows = self.db.execute("SELECT path, path_raw, id, size, mtime_ns, fingerprint FROM images")
        return {os_path(p, raw): KnownFile(i, s, m, f) for p, raw, i, s, m, f in rows}

    def skipped_unchanged(self) -> dict[str, tuple[int, int, str, str]]:
        rows = self.db.execute("SELECT path, path_raw, size, mtime_ns, reason, detail FROM skipped")
        return {os_path(p, raw): (s, m, r, d or "") for p, raw, s, m, r, d in rows}

    def write_batch(self, rows: list[dict[str, Any]], vectors: np.ndarray | None,
                    skips: Iterable[tuple[str, int, int, str, str]] = (),
                    delete_ids: Iterable[int] = (), moves: Iterable[tuple[int, str, int, int]] = ()) -> list[int]:
        """One transaction: upsert images with their vectors, record skips, delete, move. Returns ids."""
        try:
            return self._write_batch(rows, vectors, skips, delete_ids, moves)
        except sqlite3.OperationalError as exc:
            # The transaction was rolled back: the index holds exactly what it held before.
            raise StorageError(f"could not write the index at {self.path.parent} ({exc}); nothing from this "
                               "batch was saved, what was indexed before is intact") from exc

    def _write_batch(self, rows: list[dict[str, Any]], vectors: np.ndarray | None,
                     skips: Iterable[tuple[str, int, int, str, str]], delete_ids: Iterable[int],
                     moves: Iterable[tuple[int, str, int, int]]) -> list[int]:
        ids: list[int] = []
        stamp = now()
        with self.atomic():
            for i, row in enumerate(rows):
                text, raw = path_columns(row["path"])
                values = {**row, "path": text, "path_raw": raw, "indexed_at": stamp}
                cur = self.db.execute(
                    "INSERT INTO images (path, path_raw, size, mtime_ns, fingerprint, width, height, format, "
                    "taken_at, lat, lon, indexed_at) VALUES (:path, :path_raw, :size, :mtime_ns, :fingerprint, "
                    ":width, :height, :format, :taken_at, :lat, :lon, :indexed_at) "
                    "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                    "fingerprint=excluded.fingerprint, width=excluded.width, height=excluded.height, "
                    "format=excluded.format, taken_at=excluded.taken_at, lat=excluded.lat, lon=excluded.lon, "
                    "indexed_at=excluded.indexed_at RETURNING id", values)
                image_id = int(cur.fetchone()[0])
                ids.append(image_id)
                assert vectors is not None
                self.db.execute("INSERT OR REPLACE INTO vectors (image_id, vector) VALUES (?, ?)",
                                [image_id, encode_vector(vectors[i])])
                self.db.execute("DELETE FROM skipped WHERE path = ?", [text])
            for path, size, mtime_ns, reason, detail in skips:
                text, raw = path_columns(path)
                self.db.execute("INSERT OR REPLACE INTO skipped (path, path_raw, size, mtime_ns, reason, detail, "
                                "seen_at) VALUES (?, ?, ?, ?, ?, ?, ?)", [text, raw, size, mtime_ns, reason, detail,
                                                                         stamp])
                self.db.execute("DELETE FROM images WHERE path = ?", [text])
            for image_id, new_path, size, mtime_ns in moves:
                text, raw = path_columns(new_path)
                self.db.execute("UPDATE images SET path = ?, path_raw = ?, size = ?, mtime_ns = ?, indexed_at = ? "
                                "WHERE id = ?", [text, raw, size, mtime_ns, stamp, image_id])
            for image_id in delete_ids:
                self.db.execute("DELETE FROM images WHERE id = ?", [image_id])
            self._bump_generation()
            failpoints.hit("commit")  # everything written, nothing committed yet
        return ids

    def forget_skips(self, paths: Iterable[str]) -> None:
        with self.atomic():
            for path in paths:
                self.db.execute("DELETE FROM skipped WHERE path = ?", [path_columns(path)[0]])

    def count(self) -> int:
        """Indexed photos, from the counter the schema's triggers keep (counting rows reads them all)."""
        return int(self.meta("image_count") or 0)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, matrix float32 (n, dim)) in id order, straight from the blobs."""
        _, ids, mat = self.snapshot_vectors()
        return ids, mat

    def snapshot_vectors(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(generation, ids, matrix) read in one transaction, so the three always agree.

        Filled row by row into one preallocated matrix: at 1M photos the blobs alone are 2 GB.
        """
        dim = int(self.meta("embed_dim") or 0)
        with self.atomic():  # a read snapshot: a concurrent indexer's commits are not half-seen
            generation = self.generation()
            n = int(self.db.execute("SELECT count(*) FROM vectors").fetchone()[0])
            ids = np.empty(n, dtype=np.int64)
            mat = np.empty((n, dim), dtype=np.float32)
            cursor = self.db.execute("SELECT image_id, vector FROM vectors ORDER BY image_id")
            for i, (image_id, blob) in enumerate(cursor):
                ids[i] = image_id
                mat[i] = np.frombuffer(blob, dtype="<f4")
        return generation, ids, mat

    def vector_ids(self) -> np.ndarray:
        """Every image id that has a vector, ascending (8 bytes a photo: 80 MB at 10M)."""
        return np.fromiter((i for (i,) in self.db.execute("SELECT image_id FROM vectors ORDER BY image_id")),
                           dtype=np.int64)

    def iter_vectors(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, matrix) `chunk` rows at a time in id order: all vectors, never all in memory at once.

        Run inside one transaction (`with store.atomic():`) for a consistent snapshot.
        """
        dim = int(self.meta("embed_dim") or 0)
        after = -1
        while True:
            rows = self.db.execute("SELECT image_id, vector FROM vectors WHERE image_id > ? ORDER BY image_id "
                                   "LIMIT ?", [after, chunk]).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            mat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
            yield ids, mat.astype(np.float32, copy=False)
            after = int(ids[-1])

    def vectors_of_ids(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of `ids` (which must have one), in the order given; 500 ids per query."""
        out = np.empty((len(ids), int(self.meta("embed_dim") or 0)), dtype=np.float32)
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start:start + 500]]
            found = dict(self.db.execute(
                f"SELECT image_id, vector FROM vectors WHERE image_id IN ({','.join('?' * len(chunk))})", chunk))
            for k, image_id in enumerate(chunk):
                out[start + k] = np.frombuffer(found[image_id], dtype="<f4")
        return out

    def sample_vectors(self, max_rows: int) -> np.ndarray:
        """About `max_rows` vectors spread evenly over the ids (the backdrop of the relevance cutoff)."""
        # Seeks by id: a filter such as `image_id % k = 0` would read every vector in the table.
        first = self.db.execute("SELECT min(image_id) FROM vectors").fetchone()[0]
        last = self.db.execute("SELECT max(image_id) FROM vectors").fetchone()[0]
        dim = int(self.meta("embed_dim") or 0)
        if first is None:
            return np.zeros((0, dim), dtype=np.float32)
        targets = sorted({int(x) for x in np.linspace(first, last, max_rows)})
        blobs: dict[int, bytes] = {}
        for target in targets:
            row = self.db.execute("SELECT image_id, vector FROM vectors WHERE image_id >= ? ORDER BY image_id "
                                  "LIMIT 1", [target]).fetchone()
            blobs[row[0]] = row[1]
        return np.frombuffer(b"".join(blobs.values()), dtype="<f4").reshape(len(blobs), -1).astype(np.float32)

    def vectors_for(self, ids: list[int]) -> np.ndarray:
        out = []
        for image_id in ids:
            row = self.db.execute("SELECT vector FROM vectors WHERE image_id = ?", [image_id]).fetchone()
            out.append(np.frombuffer(row[0], dtype="<f4"))
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)

    def images(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        ids = list(ids)
        out: dict[int, ImageRow] = {}
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start:chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                    "SELECT id, path, path_raw, size, mtime_ns, width, height, format, taken_at, lat, lon "
                    f"FROM images WHERE id IN ({marks})", chunk):
                out[row[0]] = ImageRow(row[0], os_path(row[1], row[2]), *row[3:])
        return out

    def id_for_path(self, path: str) -> int | None:
        row = self.db.execute("SELECT id FROM images WHERE path = ?", [path_columns(path)[0]]).fetchone()
        return int(row[0]) if row else None

    def iter_skipped(self) -> Iterator[tuple[str, str, str]]:
        for path, raw, reason, detail in self.db.execute(
                "SELECT path, path_raw, reason, detail FROM skipped ORDER BY reason, path"):
            yield os_path(path, raw), reason, detail or ""

    def skipped_counts(self) -> dict[str, int]:
        return {r: int(n) for r, n in self.db.execute(
            "SELECT reason, count(*) FROM skipped GROUP BY reason ORDER BY count(*) DESC")}

    def record_run(self, started_at: str, summary_json: str) -> None:
        with self.atomic():
            self.db.execute("INSERT INTO runs (started_at, finished_at, summary) VALUES (?, ?, ?)",
                            [started_at, now(), summary_json])

    def last_run(self) -> tuple[str, str] | None:
        row = self.db.execute("SELECT finished_at, summary FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None


def check_same_model(recorded: ModelIdentity, wanted: ModelIdentity) -> None:
    if recorded.weights_sha256 != wanted.weights_sha256 or recorded.embed_dim != wanted.embed_dim:
        raise ModelMismatchError(
            f"this index was built with {recorded.describe()}, not {wanted.describe()}; "
            "use the index's model (omit --model), or rebuild with `clipsearch index --rebuild`")
