"""`clipsearch repair`: a damaged database salvaged into a fresh one, the damaged file kept aside.

SQLite's own `.recover` lives in the sqlite3 shell, which may not be installed; this copies row by
row instead. Each table is read in rowid order; where a read fails (a damaged page), it seeks
further ahead, doubling the step, until rows can be read again. What is kept must be whole: a photo
without a readable vector is dropped (the next `clipsearch index` re-embeds it, since it is then a
new file), and without the model's identity no vector is kept (it could not be checked against a
model). docs/reliability.md says what each kind of damage costs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch.errors import IndexMissingError
from clipsearch.index import faults, schema
from clipsearch.index.lock import write_lock

DB_NAME = "clipsearch.db"
# Copied in this order, so that what refers to an image comes after the images.
TABLES = ["meta", "images", "vectors", "videos", "skipped", "runs", "query_cache", "label_vectors", "personal_tags",
          "tags"]
MODEL_KEYS = ("model_name", "embed_dim", "weights_sha256")
DERIVED_KEYS = ("image_count", "generation")  # recomputed in the new database
MAX_JUMPS = 48  # 2**48 rowids ahead: past anything SQLite ever assigned here


@dataclass
class RepairSummary:
    folder: Path
    damaged: bool
    problem: str = ""
    kept_aside: Path | None = None
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows kept
    unreadable: int = 0  # reads that failed on damaged pages
    dropped_images: int = 0  # photos whose vector was unreadable: re-embedded by the next index
    model_lost: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"index": str(self.folder), "damaged": self.damaged, "problem": self.problem,
                "kept_aside": None if self.kept_aside is None else str(self.kept_aside), "rows": self.rows,
                "unreadable_reads": self.unreadable, "dropped_images": self.dropped_images,
                "model_lost": self.model_lost}


def diagnose(path: Path) -> str:
    """What is wrong with the database at `path`, in words; "" when it passes SQLite's checks."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty (0 bytes)"
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
            applied = set(schema.applied(conn))
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows != ["ok"]:
        return "; ".join(rows)[:300]
    if {s.__name__ for s in schema.STEPS} - applied:
        return "its schema is incomplete"
    return ""


def repair(folder: Path, force: bool = False) -> RepairSummary:
    """Salvage the index at `folder` when it is damaged (or always, with `force`)."""
    path = folder / DB_NAME
    if not path.exists():
        raise IndexMissingError(f"no index at {folder}; nothing to repair")
    with write_lock(folder, wait=False):
        problem = diagnose(path)
        summary = RepairSummary(folder, bool(problem), problem)
        if not problem and not force:
            return summary
        tmp = folder / f".{DB_NAME}.repair.{os.getpid()}.tmp"
        try:
            faults.create_atomically(tmp, lambda conn: schema.ensure(conn, folder))
            _salvage(path, tmp, summary)
            summary.kept_aside = _set_aside(path)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        for stale in [*folder.glob("vectors.*.faiss"), *folder.glob("vectors.*.backdrop.npy")]:
            stale.unlink(missing_ok=True)  # they reflect the old database
        return summary


def _set_aside(path: Path) -> Path:
    """The damaged file (and its -wal, -shm) renamed beside the index, as evidence and a last resort."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"clipsearch.damaged-{stamp}.db")
    for suffix in ("-wal", "-shm", ""):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, aside.with_name(aside.name + suffix))
    return aside


def _salvage(source: Path, target: Path, summary: RepairSummary) -> None:
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(str(target), isolation_level=None)
    try:
        dst.execute("BEGIN")
        meta: dict[str, str] = {str(k): str(v) for k, v in _readable(src, "meta", ["key", "value"], summary)}
        model_known = all(meta.get(k) for k in MODEL_KEYS)
        summary.model_lost = not model_known
        dim = int(meta.get("embed_dim") or 0) if model_known else 0
        for key, value in meta.items():
            if key not in DERIVED_KEYS and (model_known or key not in MODEL_KEYS):
                dst.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [key, value])
        summary.rows["meta"] = len(meta)
        for table in TABLES[1:]:
            if table in ("images", "vectors", "videos", "tags", "label_vectors") and not model_known:
                summary.rows[table] = 0
                continue
            columns = [str(r[1]) for r in dst.execute(f"PRAGMA table_info({table})")]
            kept = 0
            insert = f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            for row in _readable(src, table, columns, summary):
                if table == "vectors" and (not isinstance(row[1], bytes) or len(row[1]) != 4 * dim):
                    continue  # a vector of the wrong size is damage, not data
                try:
                    kept += dst.execute(insert, row).rowcount
                except sqlite3.Error:
                    continue  # a row whose values broke (NOT NULL, types): lost
            summary.rows[table] = kept
        # Only whole photos stay: a row without its vector would never be embedded again.
        summary.dropped_images = dst.execute("DELETE FROM images WHERE id NOT IN (SELECT image_id FROM vectors)"
                                             ).rowcount
        # A video's later frames go with their video's row (no cascade here: foreign keys are off).
        summary.dropped_images += dst.execute("DELETE FROM images WHERE video_id IS NOT NULL AND video_id NOT IN "
                                              "(SELECT id FROM images)").rowcount
        dst.execute("DELETE FROM videos WHERE image_id NOT IN (SELECT id FROM images)")
        summary.rows["images"] = summary.rows.get("images", 0) - summary.dropped_images
        dst.execute("DELETE FROM vectors WHERE image_id NOT IN (SELECT id FROM images)")
        dst.execute("DELETE FROM tags WHERE image_id NOT IN (SELECT id FROM images)")
        generation = int(meta.get("generation") or 0) if str(meta.get("generation", "")).isdigit() else 0
        dst.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('generation', ?)", [str(generation + 1)])
        dst.execute("COMMIT")
    finally:
        src.close()
        dst.close()


def _readable(src: sqlite3.Connection, table: str, columns: list[str], summary: RepairSummary
              ) -> Iterator[tuple[object, ...]]:
    """The rows of `table` that can still be read, in rowid order, stepping over damaged pages."""
    wanted = ", ".join(columns)
    last = -(2 ** 63)
    while True:
        try:
            for row in src.execute(f"SELECT rowid, {wanted} FROM {table} WHERE rowid > ? ORDER BY rowid", [last]):
                last = int(row[0])
                yield tuple(row[1:])
            return
        except sqlite3.DatabaseError as exc:
            summary.unreadable += 1
            if "no such" in str(exc):  # the table (or column) itself is gone: nothing to seek
                return
            found = _next_readable(src, table, last)
            if found is None:
                return
            last = found - 1


def _next_readable(src: sqlite3.Connection, table: str, last: int) -> int | None:
    """The first rowid beyond a damaged stretch that reads; None at the end.

    A seek into the damaged stretch fails, one beyond it succeeds: steps doubling from `last` find a
    seek that succeeds, then halving finds the stretch's end, so only the damaged rows are lost.
    """
    def seek(after: int) -> tuple[bool, tuple[object, ...] | None]:
        try:
            return True, src.execute(f"SELECT rowid FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT 1",
                                     [after]).fetchone()
        except sqlite3.DatabaseError:
            return False, None

    low = max(last, 0)  # a seek from here failed
    for jump in range(MAX_JUMPS):
        high = low + 2 ** jump
        ok, row = seek(high)
        if ok:
            break
    else:
        return None
    low = high - 2 ** jump // 2 if jump else low  # the last step that failed (or `last` itself)
    while high - low > 1:
        middle = (low + high) // 2
        ok, found = seek(middle)
        if ok:
            high, row = middle, found
        else:
            low = middle
    return None if row is None else int(str(row[0]))
