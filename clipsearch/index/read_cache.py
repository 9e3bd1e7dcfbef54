"""What a Store has read, kept until the database changes: photos' rows, the meta table, query texts' vectors.

A warm search (the gallery, a script using `Library`) reads the same few rows again and again:
the model's identity, the generation and the photo count to check its FAISS index is current, and
the records of the photos it shows. Building an ImageRecord from its row costs ~10 µs, a meta
lookup ~5 µs; a 10k-photo search read ~25 records and ~12 meta values, about 0.4 ms of its budget
(docs/benchmarks.md, "Library.search").

SQLite says when to forget: `PRAGMA data_version` changes when any other connection (another
process's `index`, the background exporter) commits, and the connection's own `total_changes`
counts its own writes. The cache serves only inside `held()`, the block of a kept Store's reader
(index/readers.py), which checks the version once as it starts: a block reads what was current
when it began, or later, as reads outside a transaction always have. Inside a transaction nothing
is cached or served from the cache, so a snapshot's reads and a rollback's undone writes never mix
with what is kept; a Store used outside `held()` reads SQLite every time.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from clipsearch.index.records import ImageRecord

# Records kept at most; past it the cache starts over (a gallery pages through a few hundred).
MAX_RECORDS = 20_000


class ReadCache:
    """One connection's cache (a Store's `reads`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._version: tuple[int, int] | None = None
        self._held = 0  # blocks inside held() now
        self._records: dict[int, ImageRecord] = {}
        self._meta: dict[str, str] | None = None
        self._texts: dict[tuple[str, str], np.ndarray] = {}

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Serve from the cache in this block, forgetting first what changed since the last one."""
        if not self._held:
            self._check((int(self.db.execute("PRAGMA data_version").fetchone()[0]), self.db.total_changes))
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1

    def _check(self, version: tuple[int, int]) -> None:
        if version != self._version:
            self._version, self._meta = version, None
            self._records.clear()
            self._texts.clear()

    def _fresh(self) -> bool:
        """Whether the cache may be used now (its own writes make it forget)."""
        if not self._held or self.db.in_transaction or self._version is None:
            return False
        self._check((self._version[0], self.db.total_changes))
        return True

    def meta(self, key: str) -> str | None:
        if not self._fresh():
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
            return row[0] if row else None
        if self._meta is None:
            self._meta = {str(k): v for k, v in self.db.execute("SELECT key, value FROM meta")}
        return self._meta.get(key)

    def images(self, ids: list[int], read: Callable[[list[int]], Iterable[ImageRecord]]) -> dict[int, ImageRecord]:
        """The records of `ids` that exist, by id; `read` gives those not kept from SQLite."""
        if not self._fresh():
            return {record.id: record for record in read(ids)}
        kept = self._records
        out = {i: kept[i] for i in ids if i in kept}
        missing = [i for i in ids if i not in out]
        if missing:
            if len(kept) + len(missing) > MAX_RECORDS:
                kept.clear()
            for record in read(missing):
                out[record.id] = kept[record.id] = record
        return out

    def text_vectors(self, weights_sha256: str, texts: list[str],
                     read: Callable[[str, list[str]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The query cache's vectors of `texts` that it holds; `read` gives those not kept from SQLite."""
        if not self._fresh():
            return read(weights_sha256, texts)
        kept = self._texts
        out = {t: kept[(weights_sha256, t)] for t in texts if (weights_sha256, t) in kept}
        missing = [t for t in texts if t not in out]
        if missing:
            if len(kept) + len(missing) > MAX_RECORDS:
                kept.clear()
            for text, vector in read(weights_sha256, missing).items():
                vector.setflags(write=False)  # shared by every search of that text
                out[text] = kept[(weights_sha256, text)] = vector
        return out
