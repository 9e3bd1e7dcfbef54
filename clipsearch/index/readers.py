"""Read connections a long-lived process keeps: one open Store per thread and index folder.

Opening the index (connect, pragmas, the schema check) costs a warm search about 0.5-1 ms, a
quarter of its budget at 10k photos. A `Library` that searches again (the gallery, a notebook)
reuses its thread's Store instead. Each thread has its own, since a Store's transactions are not
shared safely between threads (serve/ answers from a thread pool). A Store is reused only while the
database is the same file (device, inode, change time): an index replaced by a rebuild, a restore or a new
`index` after the folder was removed is opened anew; changes written to the same file are seen by
every new read anyway (SQLite, WAL). A thread that ends takes its connection with it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from clipsearch.index.store import DB_NAME, Store


class KeptStores:
    """Per thread, the index's Store, opened once and checked to be the same database file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._local = threading.local()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Store]:
        """This thread's Store for the length of the block; one that fails in it is dropped."""
        store, kept = self._get()
        try:
            with store.reads.held():  # what it read before serves again until SQLite changes (read_cache.py)
                yield store
        except BaseException:
            # A fault (damage, a vanished file) or a refusal: the next call opens the index anew,
            # so it sees a repaired or rebuilt database, and reports what is wrong as Store.open does.
            self.drop()
            raise
        finally:
            if not kept:
                store.close()

    def drop(self) -> None:
        kept = getattr(self._local, "kept", None)
        self._local.kept = None
        if kept is not None:
            with contextlib.suppress(Exception):
                kept[1].close()

    def _get(self) -> tuple[Store, bool]:
        try:
            st = os.stat(self.folder / DB_NAME)
            # The change time too: a file made after the old one was removed may reuse its inode.
            # (A checkpoint that writes the file changes it too and costs one reopen.)
            key: tuple[int, int, int] | None = (st.st_dev, st.st_ino, st.st_ctime_ns)
        except OSError:
            key = None  # no database: Store.open says so
        kept = getattr(self._local, "kept", None)
        if kept is not None and key is not None and kept[0] == key:
            return kept[1], True
        self.drop()
        store = Store.open(self.folder)
        if key is None or store.read_only:
            # Read-only folders may open a snapshot (faults.connect, immutable): not kept.
            return store, False
        self._local.kept = (key, store)
        return store, True
