"""Videos among the results: each video once, at its best moment, with its other matching moments.

A video's kept frames are rows of their own (index/video_tables.py), so a vector search finds
frames; here they become the video's path and a time. Grouping happens before results are
counted against `--top`, so a video with 60 matching frames takes one place, not 60.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipsearch.index import video_tables
from clipsearch.index.records import ImageRecord, Moment
from clipsearch.index.store import Store


@dataclass
class Grouped:
    """Hits in score order, each video once (`all_moments` keeps every frame as its own hit)."""

    hits: list[tuple[float, ImageRecord, bool]] = field(default_factory=list)
    moment: dict[int, Moment] = field(default_factory=dict)  # by the kept hit's row id
    others: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # (time, score), by row id


def group(store: Store, allowed: list[tuple[float, ImageRecord, bool]], all_moments: bool = False) -> Grouped:
    """`allowed` (score, row, relevant) best first -> each video at its best relevant moment."""
    where = video_tables.moments(store.db, [row.id for _, row, _ in allowed])
    out = Grouped()
    first: dict[int, int] = {}  # video id -> the row id that stands for it
    for score, row, ok in allowed:
        m = where.get(row.id)
        if m is None:
            out.hits.append((score, row, ok))
            continue
        shown = ImageRecord(m.path, row.size, row.mtime_ns, row.fingerprint, row.width, row.height, row.format,
                            row.taken_at, row.lat, row.lon, row.camera, id=row.id)
        if all_moments or m.video_id not in first:
            first[m.video_id] = row.id
            out.hits.append((score, shown, ok))
            out.moment[row.id], out.others[row.id] = m, []
        elif ok:
            out.others[first[m.video_id]].append((m.time_s, score))
    return out
