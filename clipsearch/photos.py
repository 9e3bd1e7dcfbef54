"""What a gallery needs of an index beyond searching: one photo by id, browsing, the roots, forgetting.

Functions over a `Library` rather than methods, so the facade stays small; `clipsearch serve`
(clipsearch/serve/) is their user. Each opens the index for the one call, as `Library` does; the
SQL they need lives in the store.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipsearch import paths
from clipsearch.formats import is_video
from clipsearch.index import roots as index_roots
from clipsearch.index import video_tables
from clipsearch.index.lock import write_lock
from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex

if TYPE_CHECKING:
    from clipsearch.library import Library


@dataclass(frozen=True)
class Photo:
    """One indexed photo as stored, with its tags (label, score, source), best first."""

    row: ImageRecord
    tags: list[tuple[str, float, str]]


def photo(lib: Library, image_id: int) -> Photo | None:
    """The indexed photo with this id, or None when there is none (never a path from the caller)."""
    with Store.open(lib.path) as store:
        row = store.images([image_id]).get(image_id)
        return None if row is None else Photo(row, store.tags.tags_of([image_id])[image_id])


def file_row(row: ImageRecord) -> ImageRecord:
    """The row of the file behind `row`: a video frame's (`VIDEO#t=SECONDS`) is its video's, with the
    same size and mtime, so the gallery's checks that a file is the one indexed still apply."""
    video, mark, _ = row.path.rpartition("#t=")
    return dataclasses.replace(row, path=video) if mark and is_video(video) else row


def browse(lib: Library, *, tag: str | None = None, offset: int = 0, limit: int = 60
           ) -> tuple[list[ImageRecord], int]:
    """A page of photos without a query, and how many there are in all.

    With `tag`: the photos carrying it (case-insensitive), most confident first; else the newest files first.
    """
    with Store.open(lib.path) as store:
        if tag:
            ids, total = store.tags.page_with_tag(tag, offset, limit)
        else:
            # Files: a video's later frames are rows, not files of their own (docs/video.md).
            ids, total = store.page_newest(offset, limit), store.count() - video_tables.counts(store.db)[1]
        rows = store.images(ids)
        return [rows[i] for i in ids if i in rows], total


def roots(lib: Library) -> list[str]:
    """The folders the index covers: the roots `index` was given (index/roots.py), else, for an index
    from before they were recorded, the topmost folders that directly hold indexed photos."""
    with Store.open(lib.path) as store:
        recorded = index_roots.known(store)
        if recorded:
            return recorded
        folders = {os.path.dirname(p) for p in store.known_files()}
    top: list[str] = []
    for folder in sorted(folders):  # a parent sorts before its children
        if not top or not paths.under(folder, [top[-1]]):
            top.append(folder)
    return top


def forget(lib: Library, image_ids: Iterable[int], *, wait: bool = True) -> int:
    """Remove photos from the index (their files are the caller's business), under the write lock.

    For photos the caller has just moved to the trash: the index is updated at once instead of at
    the next `index` run. Returns how many rows went.
    """
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        return 0
    with write_lock(lib.path, wait), Store.open(lib.path) as store:
        present = store.images(ids)
        store.write_batch([], None, delete_ids=list(present))
        VectorIndex.load(lib.path, store)  # refresh the FAISS cache now, as an indexing run does
        return len(present)
