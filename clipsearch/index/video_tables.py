"""The SQL of videos (schema step m008): per-video metadata and the rows of their later frames.

A video is one `images` row for its file, holding its first kept frame, so planning, moves, skips
and `forget` treat it exactly as a photo. Each later kept frame is an `images` row of its own (so
FAISS ids stay row ids) whose `video_id` points at the video's row: deleting the video deletes its
frames, their vectors and tags (ON DELETE CASCADE). docs/video.md.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable

from clipsearch.index.records import Moment, VideoFrames, encode_vector, frame_path, os_path, path_columns

_FRAME = ("INSERT INTO images (path, size, mtime_ns, fingerprint, width, height, format, taken_at, lat, lon, camera, "
          "indexed_at, video_id, time_s) SELECT ?, size, mtime_ns, ?, width, height, format, taken_at, lat, lon, "
          "camera, indexed_at, id, ? FROM images WHERE id = ? RETURNING id")


def write(db: sqlite3.Connection, video_id: int, video_path: str, video: VideoFrames | None,
          unchecked: str | None = None) -> None:
    """Replace the frames of the row `video_id` (inside the caller's transaction); a photo has none.

    A file once a video and now a photo (or re-decoded without frames) keeps no frame rows either.
    `unchecked`: the mark of the unchecked graph that embedded the frames (index/unchecked.py).
    """
    db.execute("DELETE FROM images WHERE video_id = ?", [video_id])
    if video is None:
        db.execute("DELETE FROM videos WHERE image_id = ?", [video_id])
        return
    db.execute("UPDATE images SET time_s = ? WHERE id = ?", [video.times[0], video_id])
    db.execute("INSERT OR REPLACE INTO videos (image_id, duration_s, fps, rotation, frames, note) "
               "VALUES (?, ?, ?, ?, ?, ?)",
               [video_id, video.duration_s, video.fps, video.rotation, len(video.times), video.note or None])
    for t, vec in zip(video.times[1:], video.vectors[1:], strict=True):
        # The fingerprint is the frame's own: duplicates must not take a video's frames for copies of it.
        text = path_columns(frame_path(video_path, t))[0]
        frame_id = int(db.execute(_FRAME, [text, f"frame:{video_id}:{t:.3f}", t, video_id]).fetchone()[0])
        db.execute("INSERT INTO vectors (image_id, vector, unchecked_graph) VALUES (?, ?, ?)",
                   [frame_id, encode_vector(vec), unchecked])


def move(db: sqlite3.Connection, video_id: int, new_path: str, size: int, mtime_ns: int, stamp: str) -> None:
    """A moved video's frames follow it (their paths are the video's with a fragment)."""
    for frame_id, t in db.execute("SELECT id, time_s FROM images WHERE video_id = ?", [video_id]).fetchall():
        db.execute("UPDATE images SET path = ?, size = ?, mtime_ns = ?, indexed_at = ? WHERE id = ?",
                   [path_columns(frame_path(new_path, t))[0], size, mtime_ns, stamp, frame_id])


def has_videos(db: sqlite3.Connection) -> bool:
    """Whether the index holds any video (an index from before videos has no such table)."""
    try:
        return db.execute("SELECT 1 FROM videos LIMIT 1").fetchone() is not None
    except sqlite3.OperationalError:
        return False


def moments(db: sqlite3.Connection, ids: Iterable[int]) -> dict[int, Moment]:
    """For the ids that are videos or their frames: which video, and when."""
    ids = list(ids)
    out: dict[int, Moment] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        rows = db.execute(
            "SELECT i.id, v.id, v.path, v.path_raw, i.time_s FROM images i JOIN images v "
            "ON v.id = coalesce(i.video_id, i.id) JOIN videos ON videos.image_id = v.id "
            f"WHERE i.id IN ({marks})", chunk)
        for row_id, video_id, path, raw, t in rows:
            out[int(row_id)] = Moment(int(video_id), os_path(path, raw), float(t or 0.0))
    return out


def counts(db: sqlite3.Connection) -> tuple[int, int]:
    """(videos, rows that are frames of videos beyond each video's own)."""
    videos = int(db.execute("SELECT count(*) FROM videos").fetchone()[0])
    frames = int(db.execute("SELECT count(*) FROM images WHERE video_id IS NOT NULL").fetchone()[0])
    return videos, frames


def video_ids(db: sqlite3.Connection) -> set[int]:
    """Every row id that belongs to a video (its own row and its frames): the `--type` filter."""
    return {int(i) for (i,) in db.execute("SELECT image_id FROM videos UNION ALL "
                                          "SELECT id FROM images WHERE video_id IS NOT NULL")}


def frame_near(db: sqlite3.Connection, moment: str) -> int | None:
    """The row id of the kept frame nearest a moment written `VIDEO#t=SECONDS` (`similar`)."""
    video_path, _, at = moment.rpartition("#t=")
    try:
        time_s = float(at)
    except ValueError:
        return None
    if not video_path or not math.isfinite(time_s):
        return None
    row = db.execute("SELECT f.id FROM images v JOIN images f ON f.id = v.id OR f.video_id = v.id "
                     "WHERE v.path = ? AND v.video_id IS NULL ORDER BY abs(coalesce(f.time_s, 0) - ?) LIMIT 1",
                     [path_columns(video_path)[0], time_s]).fetchone()
    return int(row[0]) if row else None


def frame_owners(db: sqlite3.Connection) -> dict[int, int]:
    """Each later frame's row id -> its video's row id (tagging folds frames into their video)."""
    return {int(f): int(v) for f, v in db.execute("SELECT id, video_id FROM images WHERE video_id IS NOT NULL")}
