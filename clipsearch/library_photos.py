"""What a gallery needs of an index beyond searching: one photo by id, browsing, the roots, forgetting.

Functions over a `Library` rather than methods, so the facade stays as it is; `clipsearch serve`
(clipsearch/serve/) is their user. Each opens the index for the one call, as `Library` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipsearch.store import ImageRow, Store

if TYPE_CHECKING:
    from clipsearch.library import Library


@dataclass(frozen=True)
class Photo:
    """One indexed photo as stored, with its tags (label, score, source), best first."""

    row: ImageRow
    tags: list[tuple[str, float, str]]


def photo(lib: Library, image_id: int) -> Photo | None:
    """The indexed photo with this id, or None when there is none (never a path from the caller)."""
    store = Store.open(lib.path)
    try:
        row = store.images([image_id]).get(image_id)
        if row is None:
            return None
        return Photo(row, store.tags_of([image_id])[image_id])
    finally:
        store.close()


def browse(lib: Library, *, tag: str | None = None, offset: int = 0, limit: int = 60) -> tuple[list[ImageRow], int]:
    """A page of photos without a query, and how many there are in all.

    With `tag`: the photos carrying it (case-insensitive), most confident first; else the newest files first.
    """
    store = Store.open(lib.path)
    try:
        if tag:
            total = int(store.db.execute("SELECT count(DISTINCT image_id) FROM tags WHERE lower(label) = lower(?)",
                                         [tag]).fetchone()[0])
            ids = [int(r[0]) for r in store.db.execute(
                "SELECT image_id FROM tags WHERE lower(label) = lower(?) GROUP BY image_id ORDER BY max(score) DESC, "
                "image_id LIMIT ? OFFSET ?", [tag, limit, offset])]
        else:
            total = store.count()
            ids = [int(r[0]) for r in store.db.execute(
                "SELECT id FROM images ORDER BY mtime_ns DESC, id DESC LIMIT ? OFFSET ?", [limit, offset])]
        rows = store.images(ids)
        return [rows[i] for i in ids if i in rows], total
    finally:
        store.close()


def roots(lib: Library) -> list[str]:
    """The folders the index covers: the topmost folders that directly hold indexed photos.

    The index does not record the folders `index` was given, so they are read back from the photos;
    a root that holds photos only in subfolders comes back as those subfolders.
    """
    store = Store.open(lib.path)
    try:
        folders = {os.path.dirname(p) for p in store.known_files()}
    finally:
        store.close()
    top: list[str] = []
    for folder in sorted(folders):  # a parent sorts before its children
        if not top or not (folder == top[-1] or folder.startswith(top[-1].rstrip(os.sep) + os.sep)):
            top.append(folder)
    return top


def forget(lib: Library, image_ids: Iterable[int], *, wait: bool = True) -> int:
    """Remove photos from the index (their files are the caller's business), under the write lock.

    For photos the caller has just moved to the trash: the index is updated at once instead of at
    the next `index` run. Returns how many rows went.
    """
    from clipsearch.vectors import VectorIndex

    ids = sorted({int(i) for i in image_ids})
    if not ids:
        return 0
    with lib._write_lock(wait):
        store = Store.open(lib.path)
        try:
            present = store.images(ids)
            store.write_batch([], None, delete_ids=list(present))
            VectorIndex.load(lib.path, store)  # refresh the FAISS cache now, as an indexing run does
            return len(present)
        finally:
            store.close()
