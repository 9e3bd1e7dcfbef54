"""The SQLite database that is the index's source of truth: images, their vectors, the model, skips.

Vectors are stored here too (little-endian float32 blobs), so the FAISS file is only a cache that
can always be rebuilt. Every write happens in a transaction; WAL lets queries read while an indexer
writes. All of the index's SQL lives in this package: here, in schema.py, and in tag_tables.py
(`store.tags`). docs/storage.md documents the tables.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from clipsearch import failpoints
from clipsearch.errors import IndexMissingError, StorageError
from clipsearch.index import faults, schema, video_tables
from clipsearch.index.read_cache import ReadCache
from clipsearch.index.records import (
    COLUMNS,
    FIELDS,
    ImageRecord,
    KnownFile,
    SkipRecord,
    VideoFrames,
    decode_vector,
    encode_vector,
    now,
    os_path,
    path_columns,
)
from clipsearch.index.tag_tables import TagTables
from clipsearch.model.identity import ModelIdentity, check_same_model

DB_NAME = "clipsearch.db"
QUERY_CACHE_SIZE = 5000
_UPSERT = (f"INSERT INTO images ({', '.join(COLUMNS)}, path_raw, indexed_at) VALUES "
           f"({', '.join(':' + c for c in COLUMNS)}, :path_raw, :indexed_at) ON CONFLICT(path) DO UPDATE SET "
           + ", ".join(f"{c}=excluded.{c}" for c in (*FIELDS, "indexed_at")) + " RETURNING id")


class Store:
    """The index database: `with Store.open(folder) as store: ...` closes it however the block ends."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        self._savepoints = 0
        self.read_only = False  # opened without write access (faults.py): queries only
        self._created = False  # made by this open: removed again if the first run fails before any write
        self.tags = TagTables(db, self.atomic)
        self.reads = ReadCache(db)  # rows read again by a kept Store (read_cache.py)

    @classmethod
    def open(cls, folder: Path, create: bool = False) -> Store:
        """The index's database; read-only (nothing created beside it) when the folder cannot be written."""
        path = folder / DB_NAME
        created = not path.exists()
        if created:
            if not create:
                raise IndexMissingError(f"no index at {folder}; build one with `clipsearch index FOLDER`")
            faults.create_atomically(path, lambda conn: schema.ensure(conn, folder))
        faults.check_not_empty(path)
        read_only = not faults.writable(folder)
        conn = faults.connect(path, read_only)
        store = cls(conn, path)
        store.read_only = read_only
        store._created = created
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            schema.ensure(conn, folder, read_only)
            if create:  # a writer checks the pages before adding to them (faults.py: where cheap)
                faults.check_intact(conn, path)
            if not read_only:
                # NORMAL is durable across application crashes in WAL mode (only power loss can cost
                # the last commits), and it keeps batched commits cheap.
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise faults.translate(exc, folder) or exc from exc
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

    def __enter__(self) -> Store:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A new index whose first run failed before recording anything (say `--model garbage`) would
        # be left as an empty database, a model-less index nobody asked for: it goes again.
        forget = exc is not None and self._created and self._is_blank()
        self.close()
        if forget:
            for leftover in (self.path, self.path.with_name(self.path.name + "-wal"),
                             self.path.with_name(self.path.name + "-shm")):
                leftover.unlink(missing_ok=True)

    def _is_blank(self) -> bool:
        try:
            return self.model_identity() is None and self.count() == 0
        except sqlite3.Error:
            return False

    # --- model identity -------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        return self.reads.meta(key)

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
        rows = self.db.execute("SELECT path, path_raw, id, size, mtime_ns, fingerprint FROM images "
                               "WHERE video_id IS NULL")  # a video's later frames are not files
        return {os_path(p, raw): KnownFile(i, s, m, f) for p, raw, i, s, m, f in rows}

    def skipped_unchanged(self) -> dict[str, SkipRecord]:
        """Every recorded skip by path: a file unchanged since it was skipped is not decoded again."""
        return {skip.path: skip for skip in self.iter_skip_records()}

    def iter_skip_records(self) -> Iterator[SkipRecord]:
        for p, raw, s, m, r, d in self.db.execute("SELECT path, path_raw, size, mtime_ns, reason, detail "
                                                  "FROM skipped"):
            yield SkipRecord(os_path(p, raw), int(s), int(m), r, d or "")

    def write_batch(self, records: Sequence[ImageRecord], vectors: np.ndarray | None,
                    skips: Iterable[SkipRecord] = (), delete_ids: Iterable[int] = (),
                    moves: Iterable[tuple[int, str, int, int]] = (), forget_skips: Iterable[str] = (),
                    videos: Sequence[VideoFrames | None] = (), unchecked: str | None = None) -> list[int]:
        """One transaction: upsert images with their vectors (and videos' frames, `videos[i]` for `records[i]`;
        `unchecked`: the mark of the graph that embedded them, index/unchecked.py), record skips, delete,
        move, forget the skips of files that are gone. Returns ids."""
        try:
            return self._write_batch(records, vectors, skips, delete_ids, moves, forget_skips, videos, unchecked)
        except sqlite3.OperationalError as exc:
            # The transaction was rolled back: the index holds exactly what it held before.
            raise StorageError(f"could not write the index at {self.path.parent} ({exc}); nothing from this "
                               "batch was saved, what was indexed before is intact") from exc

    def _write_batch(self, records: Sequence[ImageRecord], vectors: np.ndarray | None,
                     skips: Iterable[SkipRecord], delete_ids: Iterable[int],
                     moves: Iterable[tuple[int, str, int, int]], forget_skips: Iterable[str],
                     videos: Sequence[VideoFrames | None], unchecked: str | None) -> list[int]:
        ids: list[int] = []
        stamp = now()
        with self.atomic():
            for i, record in enumerate(records):
                text, raw = path_columns(record.path)
                values = {**record.fields(), "path": text, "path_raw": raw, "indexed_at": stamp}
                image_id = int(self.db.execute(_UPSERT, values).fetchone()[0])
                ids.append(image_id)
                assert vectors is not None
                self.db.execute("INSERT OR REPLACE INTO vectors (image_id, vector, unchecked_graph) VALUES (?, ?, ?)",
                                [image_id, encode_vector(vectors[i]), unchecked])
                self.db.execute("DELETE FROM skipped WHERE path = ?", [text])
                video_tables.write(self.db, image_id, text, videos[i] if i < len(videos) else None, unchecked)
            for skip in skips:
                text, raw = path_columns(skip.path)
                self.db.execute("INSERT OR REPLACE INTO skipped (path, path_raw, size, mtime_ns, reason, detail, "
                                "seen_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                [text, raw, skip.size, skip.mtime_ns, skip.reason, skip.detail, stamp])
                self.db.execute("DELETE FROM images WHERE path = ?", [text])
            for image_id, new_path, size, mtime_ns in moves:
                text, raw = path_columns(new_path)
                self.db.execute("UPDATE images SET path = ?, path_raw = ?, size = ?, mtime_ns = ?, indexed_at = ? "
                                "WHERE id = ?", [text, raw, size, mtime_ns, stamp, image_id])
                video_tables.move(self.db, image_id, text, size, mtime_ns, stamp)
            for image_id in delete_ids:
                self.db.execute("DELETE FROM images WHERE id = ?", [image_id])
            for gone in forget_skips:
                self.db.execute("DELETE FROM skipped WHERE path = ?", [path_columns(gone)[0]])
            self._bump_generation()
            failpoints.hit("commit")  # everything written, nothing committed yet
        return ids

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

    def vectors_of_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The vectors of `ids` (each must have one), in the order given; 500 ids per query."""
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

    def images(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        """The records of `ids` that exist, by id."""
        return self.reads.images(list(ids), self._read_images)

    def _read_images(self, ids: list[int]) -> Iterator[ImageRecord]:
        for chunk in (ids[start:start + 500] for start in range(0, len(ids), 500)):
            yield from self._records(f"WHERE id IN ({','.join('?' * len(chunk))})", chunk)

    def page_newest(self, offset: int, limit: int) -> list[int]:
        """Ids of a page of photos, newest file first (browsing without a query)."""
        return [int(r[0]) for r in self.db.execute("SELECT id FROM images WHERE video_id IS NULL "
                                                   "ORDER BY mtime_ns DESC, id DESC "
                                                   "LIMIT ? OFFSET ?", [limit, offset])]

    def iter_images(self) -> Iterator[ImageRecord]:
        """Every indexed photo, in id order (shards export them; duplicates read fingerprints)."""
        yield from self._records("WHERE video_id IS NULL ORDER BY id", [])  # files: no video's later frames

    def _records(self, where: str, params: Sequence[object]) -> Iterator[ImageRecord]:
        for image_id, raw, *values in self.db.execute(f"SELECT id, path_raw, {', '.join(COLUMNS)} FROM images "
                                                      f"{where}", params):
            fields = dict(zip(COLUMNS, values, strict=True))
            fields["path"] = os_path(fields["path"], raw)
            yield ImageRecord(**fields, id=int(image_id))

    def id_for_path(self, path: str) -> int | None:
        row = self.db.execute("SELECT id FROM images WHERE path = ?", [path_columns(path)[0]]).fetchone()
        return int(row[0]) if row else None

    def ids_with_content(self, size: int, fingerprint: str) -> list[int]:
        """Photos of this size and fingerprint (ingest/plan.py): the same file, moved or copied."""
        return [int(r[0]) for r in self.db.execute("SELECT id FROM images WHERE fingerprint = ? AND size = ? "
                                                   "ORDER BY id", [fingerprint, size])]

    def iter_skipped(self) -> Iterator[tuple[str, str, str]]:
        for path, raw, reason, detail in self.db.execute(
                "SELECT path, path_raw, reason, detail FROM skipped ORDER BY reason, path"):
            yield os_path(path, raw), reason, detail or ""

    def skipped_counts(self) -> dict[str, int]:
        return {r: int(n) for r, n in self.db.execute(
            "SELECT reason, count(*) FROM skipped GROUP BY reason ORDER BY count(*) DESC")}

    # --- query texts seen before ----------------------------------------------------------------

    def cached_text_vectors(self, weights_sha256: str, texts: list[str]) -> dict[str, np.ndarray]:
        """Embeddings of query texts seen before with this model: a repeated query needs no model."""
        return self.reads.text_vectors(weights_sha256, texts, self._read_text_vectors)

    def _read_text_vectors(self, weights_sha256: str, texts: list[str]) -> dict[str, np.ndarray]:
        sql = "SELECT vector FROM query_cache WHERE weights_sha256 = ? AND text = ?"
        return {t: decode_vector(r[0]) for t in texts if (r := self.db.execute(sql, [weights_sha256, t]).fetchone())}

    def cache_text_vectors(self, weights_sha256: str, vectors: dict[str, np.ndarray]) -> None:
        """Remember query embeddings (the oldest beyond QUERY_CACHE_SIZE are forgotten)."""
        try:
            with self.atomic():
                for text, vec in vectors.items():
                    self.db.execute("INSERT OR REPLACE INTO query_cache VALUES (?, ?, ?, ?)",
                                    [weights_sha256, text, encode_vector(vec), now()])
                self.db.execute("DELETE FROM query_cache WHERE rowid NOT IN (SELECT rowid FROM query_cache "
                                "ORDER BY used_at DESC LIMIT ?)", [QUERY_CACHE_SIZE])
        except sqlite3.OperationalError:
            pass  # a read-only or busy index still answers; the cache is only a shortcut

    # --- runs -----------------------------------------------------------------------------------

    def record_run(self, started_at: str, summary_json: str) -> None:
        with self.atomic():
            self.db.execute("INSERT INTO runs (started_at, finished_at, summary) VALUES (?, ?, ?)",
                            [started_at, now(), summary_json])

    def last_run(self) -> tuple[str, str] | None:
        row = self.db.execute("SELECT finished_at, summary FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

