"""A kept Store serves rows and meta values it read before until the database changes
(index/read_cache.py), and a flat index finds its rows by id through one array (index/id_rows.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsearch.index.id_rows import IdRows
from clipsearch.index.store import Store


@pytest.fixture()
def index(shared_index: Path, tmp_path: Path) -> Path:
    shutil.copytree(shared_index, tmp_path / "index")
    return tmp_path / "index"


def test_rows_and_meta_are_kept_until_another_connection_commits(index: Path) -> None:
    with Store.open(index) as kept, Store.open(index) as other:
        with kept.reads.held():
            ids = sorted(kept.images([1, 2, 3]))
            first = kept.images(ids)
            assert kept.images(ids)[ids[0]] is first[ids[0]]  # served again, not rebuilt
            assert kept.meta("generation") == other.meta("generation")
        with other.atomic():
            other.db.execute("UPDATE images SET width = 4321 WHERE id = ?", [ids[0]])
            other.set_meta("generation", "977")
        assert kept.images(ids)[ids[0]].width == 4321  # outside a held block: SQLite itself
        with kept.reads.held():
            assert kept.images(ids)[ids[0]].width == 4321
            assert kept.meta("generation") == "977"
            assert kept.images([ids[1]])[ids[1]] == first[ids[1]]  # unchanged rows read again are equal
            with other.atomic():
                other.set_meta("generation", "978")
            assert kept.meta("generation") == "977"  # a block reads what was current as it began
        with kept.reads.held():
            assert kept.meta("generation") == "978"


def test_a_library_sees_another_connections_change_in_its_next_search(index: Path) -> None:
    from clipsearch import Library

    lib = Library(index)
    first = lib.query("a photo of a red circle", top=5, min_score=-1).results[0]
    with Store.open(index) as other, other.atomic():
        other.db.execute("UPDATE images SET width = 4321 WHERE id = ?", [first.id])
    again = lib.query("a photo of a red circle", top=5, min_score=-1).results[0]
    assert again.id == first.id and again.width == 4321 != first.width


def test_own_writes_are_seen_and_rolled_back_ones_forgotten(index: Path) -> None:
    with Store.open(index) as store, store.reads.held():
        image_id = min(store.images(range(1, 100)))
        before = store.images([image_id])[image_id].width
        old = store.meta("generation")
        with store.atomic():
            store.set_meta("generation", "555")
            store.db.execute("UPDATE images SET width = 17 WHERE id = ?", [image_id])
            assert store.meta("generation") == "555"  # inside the transaction: read from SQLite
            assert store.images([image_id])[image_id].width == 17
        assert store.meta("generation") == "555" and store.images([image_id])[image_id].width == 17
        with pytest.raises(RuntimeError), store.atomic():
            store.set_meta("generation", "666")
            store.db.execute("UPDATE images SET width = 18 WHERE id = ?", [image_id])
            assert store.images([image_id])[image_id].width == 18
            raise RuntimeError("undo")
        assert store.meta("generation") == "555"
        assert store.images([image_id])[image_id].width == 17
        with store.atomic():
            store.set_meta("generation", old or "0")
            store.db.execute("UPDATE images SET width = ? WHERE id = ?", [before, image_id])
        assert store.images([image_id])[image_id].width == before


def test_missing_ids_are_left_out_and_a_removed_photo_is_forgotten(index: Path) -> None:
    with Store.open(index) as kept, Store.open(index) as other:
        with kept.reads.held():
            top = max(kept.images(range(1, 1000)))
            assert kept.images([top + 5]) == {}
            assert set(kept.images([top, top + 5])) == {top}
        with other.atomic():
            other.db.execute("DELETE FROM images WHERE id = ?", [top])
        with kept.reads.held():
            assert kept.images([top, top + 5]) == {}


@pytest.mark.parametrize("ids", [np.arange(1, 501), np.arange(1, 501) * 97, np.array([3, 0, 9, 4])],
                         ids=["dense", "sparse", "zero"])
def test_id_rows_match_a_search_of_the_id_map(ids: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    id_map = rng.permutation(ids).astype(np.int64)
    rows = IdRows(id_map)
    want = rng.choice(id_map, size=min(64, len(id_map)), replace=False)
    got = rows.rows(want)
    assert got is not None and (id_map[got] == want).all()
    assert rows.rows([]) is not None and len(rows.rows([])) == 0
    absent = int(id_map.max()) + 1
    assert rows.rows([int(want[0]), absent]) is None
    assert rows.rows([-1]) is None
    if len(ids) > 4:
        gap = int(np.setdiff1d(np.arange(int(ids.max())), ids)[-1])  # inside the range, not stored
        assert rows.rows([gap]) is None


def test_id_rows_of_an_empty_index() -> None:
    rows = IdRows(np.zeros(0, np.int64))
    assert rows.rows([1]) is None and len(rows.rows([])) == 0


def test_query_texts_vectors_are_kept_read_only_until_the_query_cache_changes(index: Path) -> None:
    with Store.open(index) as kept, Store.open(index) as other:
        sha = kept.meta("weights_sha256") or ""
        other.cache_text_vectors(sha, {"a kept text": np.ones(4, np.float32)})
        with kept.reads.held():
            first = kept.cached_text_vectors(sha, ["a kept text", "never asked"])
            assert list(first) == ["a kept text"]
            assert kept.cached_text_vectors(sha, ["a kept text"])["a kept text"] is first["a kept text"]
            with pytest.raises(ValueError):
                first["a kept text"][0] = 5.0  # shared by every search of that text
            assert kept.cached_text_vectors("other weights", ["a kept text"]) == {}
        other.cache_text_vectors(sha, {"a kept text": np.full(4, 2.0, np.float32)})
        with kept.reads.held():
            assert kept.cached_text_vectors(sha, ["a kept text"])["a kept text"].tolist() == [2.0] * 4
