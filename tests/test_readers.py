"""A warm Library keeps one read connection per thread (index/readers.py), and drops it when the
database file is replaced."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from clipsearch import Library
from clipsearch.index.store import Store


def test_kept_store_follows_a_replaced_index_and_threads_get_their_own(shared_index: Path, isolated: Path) -> None:
    shutil.copytree(shared_index, isolated / "index")
    lib = Library()
    first = lib.query("a photo of a red circle", top=50, min_score=-1).results
    assert len(first) == 48
    with lib._stores.reading() as store:  # the kept store itself is what is tested
        kept = store
    with lib._stores.reading() as store:
        assert store is kept  # reused, not reopened
    # Another index put in its place (a restore, a rebuild elsewhere): one photo fewer.
    other = isolated / "other"
    shutil.copytree(shared_index, other)
    with Store.open(other) as s:
        s.db.execute("DELETE FROM images WHERE id = (SELECT min(id) FROM images)")
    shutil.rmtree(isolated / "index")
    shutil.move(other, isolated / "index")
    assert len(lib.query("a photo of a red circle", top=50, min_score=-1).results) == 47
    seen: list[object] = []

    def search() -> None:
        with lib._stores.reading() as store:
            seen.append(store)
            assert store.count() == 47

    worker = threading.Thread(target=search)
    worker.start()
    worker.join()
    with lib._stores.reading() as store:
        assert seen and seen[0] is not store  # each thread its own connection
