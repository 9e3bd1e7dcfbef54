"""The index database's schema: numbered steps, each applied once, in order, in a transaction.

The steps are sqlite-utils migrations (their `_sqlite_migrations` table records what ran), but
sqlite-utils is only imported when a step is pending: importing it costs a cold query 40 ms, and
half a second where pandas is installed, unless pandas is kept out of its import (`_sqlite_utils`).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from clipsearch.errors import IndexSchemaError

MIGRATION_SET = "clipsearch"


def m001_initial(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("""
        CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,      -- printable path; undecodable bytes as \\xNN
            path_raw BLOB,                  -- the exact OS bytes, only when path cannot hold them
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,      -- xxh64 of size + first and last 64 KiB: finds moved files
            width INTEGER, height INTEGER, format TEXT,
            taken_at TEXT,                  -- EXIF DateTimeOriginal, ISO 8601 (with offset if known)
            lat REAL, lon REAL,
            indexed_at TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX images_fingerprint ON images (fingerprint)")
    db.execute("""
        CREATE TABLE vectors (
            image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
            vector BLOB NOT NULL            -- little-endian float32, L2-normalised
        )""")
    db.execute("""
        CREATE TABLE skipped (
            path TEXT PRIMARY KEY, path_raw BLOB, size INTEGER, mtime_ns INTEGER,
            reason TEXT NOT NULL, detail TEXT, seen_at TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT, summary TEXT
        )""")


def m002_query_cache(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE query_cache (
            weights_sha256 TEXT NOT NULL,   -- the model that embedded the text
            text TEXT NOT NULL,
            vector BLOB NOT NULL,           -- little-endian float32, L2-normalised
            used_at TEXT NOT NULL,
            PRIMARY KEY (weights_sha256, text)
        )""")


def m003_tags(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE tags (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            label TEXT NOT NULL,
            score REAL NOT NULL,            -- cosine between the photo and the label's embedding
            source TEXT NOT NULL,           -- zero-shot, few-shot or manual
            label_set TEXT NOT NULL,        -- which label set and templates produced it
            PRIMARY KEY (image_id, label, source)
        )""")
    db.execute("CREATE INDEX tags_label ON tags (label)")
    db.execute("""
        CREATE TABLE label_vectors (
            weights_sha256 TEXT NOT NULL, label_set TEXT NOT NULL, label TEXT NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (weights_sha256, label_set, label)
        )""")


def m004_personal_tags(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE personal_tags (
            name TEXT NOT NULL,
            weights_sha256 TEXT NOT NULL,   -- a probe only means something for the model it was learnt on
            vector BLOB NOT NULL,           -- little-endian float32 weights of the linear probe
            bias REAL NOT NULL,
            examples INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (name, weights_sha256)
        )""")


def m005_image_count(db: sqlite3.Connection) -> None:
    # `SELECT count(*) FROM images` reads the whole table: 0.2 s at 1M photos, on every query that
    # checks its FAISS file. Triggers keep the count in the same transactions as the rows.
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('image_count', (SELECT count(*) FROM images))")
    db.execute("""CREATE TRIGGER images_counted_in AFTER INSERT ON images BEGIN
        UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'image_count'; END""")
    db.execute("""CREATE TRIGGER images_counted_out AFTER DELETE ON images BEGIN
        UPDATE meta SET value = CAST(value AS INTEGER) - 1 WHERE key = 'image_count'; END""")


def m006_roots(db: sqlite3.Connection) -> None:
    # The folders and photos named to `index`, so that `clipsearch index` alone re-scans them all.
    db.execute("""
        CREATE TABLE roots (
            path TEXT PRIMARY KEY,          -- absolute, printable; undecodable bytes as \\xNN
            path_raw BLOB,                  -- the exact OS bytes, only when path cannot hold them
            added_at TEXT NOT NULL
        )""")


def m007_camera(db: sqlite3.Connection) -> None:
    # EXIF make and model, for `--camera`; photos indexed before stay NULL until re-decoded.
    db.execute("ALTER TABLE images ADD COLUMN camera TEXT")


def m008_videos(db: sqlite3.Connection) -> None:
    # A video is one `images` row (its file: planned, moved, forgotten like a photo's) holding its first
    # kept frame; its later kept frames are rows of their own (FAISS ids stay row ids) that point at it
    # and go with it (ON DELETE CASCADE). docs/video.md.
    db.execute("ALTER TABLE images ADD COLUMN video_id INTEGER REFERENCES images(id) ON DELETE CASCADE")
    db.execute("ALTER TABLE images ADD COLUMN time_s REAL")  # a video frame's time; NULL for photos
    db.execute("CREATE INDEX images_video ON images (video_id) WHERE video_id IS NOT NULL")
    db.execute("""
        CREATE TABLE videos (
            image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
            duration_s REAL, fps REAL,
            rotation INTEGER NOT NULL,      -- degrees applied to the stored frames (display matrix)
            frames INTEGER NOT NULL,        -- frames kept, the video's own row included
            note TEXT                       -- why only part of it was decoded, when it was
        )""")


def m009_unchecked_vectors(db: sqlite3.Connection) -> None:
    # Which vectors an image graph built without torch (model/vit_graph.py) embedded before the background
    # exporter had checked it against open_clip: 'vit_graph:<weights sha256>', NULL for open_clip's and a
    # checked export's. When the check rejects that graph, exactly these rows are re-embedded
    # (index/unchecked.py). The partial index keeps finding them cheap: NULL rows are not in it.
    db.execute("ALTER TABLE vectors ADD COLUMN unchecked_graph TEXT")
    db.execute("CREATE INDEX vectors_unchecked ON vectors (unchecked_graph) WHERE unchecked_graph IS NOT NULL")


STEPS: list[Callable[[sqlite3.Connection], None]] = [m001_initial, m002_query_cache, m003_tags, m004_personal_tags,
                                                     m005_image_count, m006_roots, m007_camera, m008_videos,
                                                     m009_unchecked_vectors]


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the steps this database has had, oldest first."""
    try:
        rows = conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid",
                            [MIGRATION_SET]).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    return [r[0] for r in rows]


def ensure(conn: sqlite3.Connection, folder: Path, read_only: bool = False) -> None:
    """Refuse a newer schema untouched; bring an older (or new, empty) one up to date."""
    done = set(applied(conn))
    known = {step.__name__ for step in STEPS}
    if done - known:
        raise IndexSchemaError(
            f"the index at {folder} was written by a newer clipsearch "
            f"(schema steps {', '.join(sorted(done - known))}); upgrade clipsearch. Nothing was changed.")
    if known <= done:
        return
    if read_only:
        from clipsearch.index.faults import read_only_error

        raise read_only_error(folder, "bring its database up to this clipsearch's schema")
    sqlite_utils, migrations_class = _sqlite_utils()
    migrations = migrations_class(MIGRATION_SET)
    for step in STEPS:
        # A sqlite_utils.Database is what the steps receive; they only call its sqlite3-style execute().
        migrations()(cast(Any, step))
    conn.execute("PRAGMA journal_mode = WAL")
    migrations.apply(sqlite_utils.Database(conn))


def _sqlite_utils() -> tuple[Any, Any]:
    """sqlite_utils and its Migrations, imported without pandas.

    sqlite_utils imports pandas whenever it is installed, only to give pandas.Timestamp values a
    column type; no step writes one. Where pandas is installed (Ray's extra brings it) that import
    was 0.3-1 s of a new index's start and of the offline error for a model that is not cached.
    Where something imported pandas already, nothing is blocked.
    """
    blocked = "pandas" not in sys.modules
    if blocked:
        sys.modules["pandas"] = None  # type: ignore[assignment]  # makes `import pandas` fail: sqlite_utils copes
    try:
        import sqlite_utils
        from sqlite_utils.migrations import Migrations
    finally:
        if blocked and sys.modules.get("pandas", 0) is None:
            del sys.modules["pandas"]  # a later `import pandas` works as usual
    return sqlite_utils, Migrations
