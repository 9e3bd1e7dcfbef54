"""Videos among the results: each video once, at its best moment, with its other matching moments.

A video's kept frames are rows of their own (index/video_tables.py), so a vector search finds
frames; here they become the video's path and a time. Grouping happens before results are
counted against `--top`, so a video with 60 matching frames takes one place, not 60.
"""

from __future__ import annotations

from clipsearch.index import video_tables
from clipsearch.index.records import ImageRecord, Moment
from clipsearch.index.store import Store


class Grouper:
    """Folds a video's frames into one hit as the ranking's walk meets them (search/hits.py): each
    video once, at the first (best-scoring) of its moments that the filters allow; its other
    relevant moments are listed with it. `all_moments` keeps every frame as a hit of its own."""

    def __init__(self, store: Store, all_moments: bool = False, prefer_relevant: bool = True) -> None:
        # prefer_relevant: off with --min-score, where a moment is kept by its score alone.
        self.store, self.all_moments, self.prefer_relevant = store, all_moments, prefer_relevant
        self.any = video_tables.has_videos(store.db)  # a library without videos costs no lookups
        self.where: dict[int, Moment] = {}  # by row id, for the rows read so far
        self.start()

    def start(self) -> None:
        """A walk starts over (the search widened): what it folded is forgotten, what it read is kept."""
        self.first: dict[int, int] = {}  # video id -> the row id that stands for it
        self.moment: dict[int, Moment] = {}  # by the standing hit's row id
        self.others: dict[int, list[tuple[float, float]]] = {}  # (time, score), by the standing row id
        self.standing_ok: dict[int, bool] = {}  # by row id: was the standing moment relevant

    def read(self, ids: list[int]) -> None:
        """Learn which of these rows are videos or their frames (one statement)."""
        if self.any:
            self.where.update(video_tables.moments(self.store.db, ids))

    def place(self, score: float, row: ImageRecord, ok: bool) -> tuple[ImageRecord | None, int | None]:
        """(the row to show for this hit, a frame shown as its video, or None when it is a later moment
        of a video already placed; the row id of the video's earlier, turned-down moment it replaces)."""
        m = self.where.get(row.id)
        if m is None:
            return row, None
        standing = self.first.get(m.video_id)
        # The video's first relevant moment stands for it: a better-scoring moment that the decision
        # turned down must not hide it (that one then stays among the closest only).
        if (self.all_moments or standing is None
                or (self.prefer_relevant and ok and not self.standing_ok[standing])):
            self.first[m.video_id] = row.id
            self.standing_ok[row.id] = ok
            self.moment[row.id], self.others[row.id] = m, []
            return (ImageRecord(m.path, row.size, row.mtime_ns, row.fingerprint, row.width, row.height, row.format,
                                row.taken_at, row.lat, row.lon, row.camera, id=row.id),
                    None if self.all_moments else standing)
        if ok:
            self.others[standing].append((m.time_s, score))
        return None, None
