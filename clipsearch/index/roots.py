"""The folders (and single photos) an index was asked to index, and forgetting what lies under a path.

`clipsearch index` with no argument re-scans every root recorded here; `clipsearch forget PATH`
removes a folder's or a photo's rows (images, their vectors and tags by cascade, skips) and the
roots under it, in one transaction through the store. The photos themselves are never touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipsearch import paths
from clipsearch.errors import UsageError
from clipsearch.index.records import now, os_path, path_columns
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex


@dataclass
class Forgotten:
    """What `forget` removed from the index, by what the user named."""

    photos: int = 0
    skipped: int = 0
    roots: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # named paths with nothing under them in the index
    # (path, root): still on disk inside a root that stays, so the next `clipsearch index` brings it back
    still_under: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"photos": self.photos, "skipped": self.skipped, "roots": [paths.display(r) for r in self.roots],
                "unknown": [paths.display(u) for u in self.unknown],
                "still_under_roots": [paths.display(p) for p, _ in self.still_under]}


def known(store: Store) -> list[str]:
    """The recorded roots, sorted."""
    return sorted(os_path(p, raw) for p, raw in store.db.execute("SELECT path, path_raw FROM roots"))


def remember(store: Store, roots: Iterable[str]) -> None:
    """Record roots just indexed; one inside a recorded root adds nothing, one around others replaces them."""
    current = known(store)
    with store.atomic():
        for root in roots:
            if paths.under(root, current):
                continue
            for inner in [r for r in current if paths.under(r, [root])]:
                store.db.execute("DELETE FROM roots WHERE path = ?", [path_columns(inner)[0]])
                current.remove(inner)
            text, raw = path_columns(root)
            store.db.execute("INSERT OR IGNORE INTO roots (path, path_raw, added_at) VALUES (?, ?, ?)",
                             [text, raw, now()])
            current.append(root)


def rescan(store: Store) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(roots that still exist, roots that vanished) for `clipsearch index` with no argument.

    What lay under a vanished root is forgotten now: its photos would otherwise keep coming back.
    """
    roots = known(store)
    if not roots:
        raise UsageError("this index knows no folders yet (indexes made before clipsearch 0.x recorded them "
                         "have none); name them once: `clipsearch index FOLDER…`")
    present = tuple(r for r in roots if os.path.lexists(r))
    vanished = tuple(r for r in roots if r not in present)
    if vanished:
        forget(store, vanished, refresh=False)  # the run refreshes the FAISS file when it ends
    return present, vanished


def forget(store: Store, targets: Sequence[str], refresh: bool = True) -> Forgotten:
    """Remove every photo, skip and root at or under `targets` (absolute paths): one transaction.

    Vectors and tags go with their images (ON DELETE CASCADE); with `refresh` the FAISS file is
    rebuilt from SQLite now (it would be before the next search anyway: the generation moved on).
    """
    result = Forgotten()
    images, skips, roots = _rows(store, "images", "id"), _rows(store, "skipped", "path"), known(store)
    ids: dict[int, None] = {}  # dicts as ordered sets: a path named twice, or inside another, counts once
    skipped: dict[str, None] = {}
    for target in targets:
        mine = [i for i, p in images if paths.under(p, [target])]
        bad = [p for _, p in skips if paths.under(p, [target])]
        inner = [r for r in roots if paths.under(r, [target])]
        if not (mine or bad or inner):
            result.unknown.append(target)
        ids.update(dict.fromkeys(mine))
        skipped.update(dict.fromkeys(bad))
        result.roots += [r for r in inner if r not in result.roots]
    with store.atomic():
        for skip in skipped:
            store.db.execute("DELETE FROM skipped WHERE path = ?", [path_columns(skip)[0]])
        for root in result.roots:
            store.db.execute("DELETE FROM roots WHERE path = ?", [path_columns(root)[0]])
        # Nested in this transaction as a savepoint: images (vectors, tags by cascade) and the generation.
        store.write_batch([], None, delete_ids=[int(i) for i in ids])
    result.photos, result.skipped = len(ids), len(skipped)
    staying = [r for r in roots if r not in result.roots]
    for target in targets:
        keeper = next((r for r in staying if paths.under(target, [r])), None)
        if keeper is not None and os.path.lexists(target) and target not in result.unknown:
            result.still_under.append((target, keeper))
    if refresh:
        VectorIndex.load(store.path.parent, store)
    return result


def _rows(store: Store, table: str, key: str) -> list[tuple[Any, str]]:
    return [(k, os_path(p, raw)) for k, p, raw in store.db.execute(f"SELECT {key}, path, path_raw FROM {table}")]
