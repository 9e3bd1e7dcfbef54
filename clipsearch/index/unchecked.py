"""Vectors an unchecked image graph embedded (schema step m009): which files they belong to.

An index run may embed through an image tower that vit_graph.py built from the weights without
torch; the background exporter checks that graph against open_clip only later. Each vector such a
graph embedded carries its mark (`vectors.unchecked_graph`, written in the same transaction as the
vector, so it can never be missing), and a vector embedded again by anything else loses it. When the
check rejects the graph (background_export.py records that durably in `.model-export.declined`),
the files whose vectors carry its mark are the ones to re-embed: the next index run plans them
(ingest/plan.py) and `status` counts them. Nothing here is written by the exporter, which holds no
lock: the mark is derived from the rows and the recorded verdict alone, so a rejection that lands
while an index run is writing still names that run's rows.
"""

from __future__ import annotations

import sqlite3

# A video's frames carry their video's mark; the file to re-embed is the video's own row.
_FILES = ("SELECT DISTINCT coalesce(i.video_id, i.id) FROM vectors v JOIN images i ON i.id = v.image_id "
          "WHERE v.unchecked_graph = ?")


def files(db: sqlite3.Connection, mark: str | None) -> set[int]:
    """The ids of the file rows (photos, videos) with a vector that the graph `mark` embedded."""
    if mark is None:
        return set()
    return {int(i) for (i,) in db.execute(_FILES, [mark])}


def count(db: sqlite3.Connection, mark: str | None) -> int:
    """How many files (photos, videos) have a vector that the graph `mark` embedded."""
    if mark is None:
        return 0
    return int(db.execute(f"SELECT count(*) FROM ({_FILES})", [mark]).fetchone()[0])
