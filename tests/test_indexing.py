"""Indexing real files in tmp_path: incremental runs, moves, bad input, orientation, the FAISS cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library
from clipsearch.errors import IndexLockedError
from clipsearch.index.store import Store


def _lib() -> Library:
    return Library()


def test_incremental_add_change_delete_move(photo_dir: Path) -> None:
    lib = _lib()
    first = lib.index([photo_dir])
    assert (first.new, first.embedded, first.total) == (48, 48, 48)

    again = lib.index([photo_dir])
    assert (again.new, again.changed, again.embedded, again.unchanged) == (0, 0, 0, 48)

    folder = photo_dir / "all"
    changed = folder / "red-circle-0.png"
    Image.open(folder / "blue-square-0.png").save(changed)  # new content under an old name
    os.utime(changed, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    (folder / "green-star-0.png").unlink()
    (photo_dir / "moved").mkdir()
    shutil.move(folder / "yellow-ring-0.png", photo_dir / "moved" / "renamed.png")
    store = Store.open(lib.path)
    old_id = store.id_for_path(str(folder / "yellow-ring-0.png"))
    old_vec = store.vectors_of_ids([old_id])
    store.close()

    third = lib.index([photo_dir])
    assert (third.changed, third.removed, third.moved, third.new, third.embedded) == (1, 1, 1, 0, 1)
    assert third.total == 47
    store = Store.open(lib.path)
    assert store.id_for_path(str(photo_dir / "moved" / "renamed.png")) == old_id
    np.testing.assert_array_equal(store.vectors_of_ids([old_id]), old_vec)
    store.close()
    hit = lib.search("a photo of a blue square", top=2)
    assert {Path(h.path).name for h in hit} == {"blue-square-0.png", "red-circle-0.png"}


def test_indexing_one_folder_leaves_other_folders_alone(tmp_path: Path, photo_dir: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photo_dir / "all" / "red-star-0.png", other / "x.png")
    lib = _lib()
    lib.index([photo_dir])
    summary = lib.index([other])
    assert summary.removed == 0 and summary.total == 49


def _bad_inputs(folder: Path) -> dict[str, str]:
    folder.mkdir()
    good = Image.new("RGB", (80, 60), (200, 30, 30))
    good.save(folder / "good.jpg", quality=90)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture\n")
    (folder / "page.png").write_text("<html><body>hi</body></html>")
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "folder.jpg").mkdir()
    (folder / ".hidden.jpg").write_bytes(data)
    (folder / "._resource.jpg").write_bytes(b"\0\5\26\7")
    return {"empty.jpg": "empty file", "text.jpg": "not an image", "page.png": "not an image",
            "truncated.jpg": "corrupt or truncated"}


def test_bad_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    expected = _bad_inputs(folder)
    lib = _lib()
    summary = lib.index([folder])
    reasons = {Path(p).name: r for p, r, _ in summary.skipped_files}
    assert reasons == expected
    assert summary.new == 1 and summary.total == 1
    assert sum(summary.skipped.values()) == len(expected)
    # Known-bad files are not decoded again while unchanged, and are still reported.
    again = lib.index([folder])
    assert again.embedded == 0 and {Path(p).name: r for p, r, _ in again.skipped_files} == expected
    assert {Path(p).name for p, _, _ in lib.skipped()} == set(expected)


def test_decompression_bomb_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "bomb"
    folder.mkdir()
    Image.new("RGB", (3000, 2000)).save(folder / "big.png")
    summary = _lib().index([folder], max_pixels=1_000_000)
    assert [r for _, r, _ in summary.skipped_files] == ["too many pixels"]


def test_exif_orientation_is_applied(tmp_path: Path, heldout: list) -> None:
    src = next(p for p, c, s in heldout if (c, s) == ("orange", "triangle"))
    upright = Image.open(src).convert("RGB").resize((256, 256))
    folder = tmp_path / "rot"
    folder.mkdir()
    upright.save(folder / "upright.jpg", quality=95)
    # Stored rotated, with the EXIF tag that tells viewers to turn it back (orientation 6 = 90° CW).
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "tagged.jpg", quality=95, exif=exif)
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "untagged.jpg", quality=95)
    lib = _lib()
    lib.index([folder])
    store = Store.open(lib.path)
    ids = {Path(p).name: store.id_for_path(str(folder / p)) for p in ("upright.jpg", "tagged.jpg", "untagged.jpg")}
    vec = dict(zip(ids, store.vectors_of_ids(list(ids.values())), strict=True))
    rows = store.images(ids.values())
    store.close()
    assert float(vec["upright.jpg"] @ vec["tagged.jpg"]) > 0.995
    assert float(vec["upright.jpg"] @ vec["tagged.jpg"]) > float(vec["upright.jpg"] @ vec["untagged.jpg"])
    assert (rows[ids["tagged.jpg"]].width, rows[ids["tagged.jpg"]].height) == (256, 256)


def test_faiss_cache_rebuilt_when_deleted_or_corrupt(photo_dir: Path) -> None:
    lib = _lib()
    lib.index([photo_dir])
    before = [(h.path, round(h.score, 5)) for h in lib.search("a photo of a pink cross", top=5)]
    (cache,) = lib.path.glob("vectors.*.faiss")
    cache.unlink()
    assert [(h.path, round(h.score, 5)) for h in lib.search("a photo of a pink cross", top=5)] == before
    assert cache.exists()
    cache.write_bytes(cache.read_bytes()[:100])
    assert [(h.path, round(h.score, 5)) for h in lib.search("a photo of a pink cross", top=5)] == before


def test_second_indexer_is_refused_while_one_runs(photo_dir: Path) -> None:
    import filelock

    lib = _lib()
    lib.path.mkdir(parents=True)
    holder = filelock.FileLock(str(lib.path / "index.lock"))
    (lib.path / "index.lock.owner").write_text('{"pid": 4242, "host": "laptop", "since": "now"}')
    with holder, pytest.raises(IndexLockedError, match="process 4242 on laptop"):
        lib.index([photo_dir])


def test_search_scope_limits_to_a_folder(photo_dir: Path) -> None:
    (photo_dir / "sub").mkdir()
    shutil.copy(photo_dir / "all" / "white-cross-0.png", photo_dir / "sub" / "only.png")
    lib = _lib()
    lib.index([photo_dir])
    # The scope, not the relevance decision (a white cross is no red circle): the top 5 whatever they score.
    hits = lib.search("a photo of a red circle", top=5, within=[photo_dir / "sub"], min_score=-1)
    assert [Path(h.path).name for h in hits] == ["only.png"]


def test_index_from_a_newer_clipsearch_is_refused_untouched(photo_dir: Path) -> None:
    from clipsearch.errors import IndexSchemaError

    lib = _lib()
    lib.index([photo_dir])
    store = Store.open(lib.path)
    store.db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                     "VALUES ('clipsearch', 'm999_future', '2030-01-01')")
    store.close()
    before = (lib.path / "clipsearch.db").read_bytes()
    with pytest.raises(IndexSchemaError, match="newer clipsearch"):
        lib.search("a red circle")
    assert (lib.path / "clipsearch.db").read_bytes() == before


def test_odd_names_index_and_come_back_exactly(tmp_path: Path, heldout: list) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    src = next(p for p, c, s in heldout if (c, s) == ("pink", "star"))
    names = ["new\nline.png", "  spaces  .png", os.fsdecode(b"caf\xe9.png"), "emoji-🐶.png"]
    for name in names:
        shutil.copy(src, folder / name)
    lib = _lib()
    summary = lib.index([folder])
    assert summary.new == 4 and not summary.skipped
    hits = lib.search("a photo of a pink star", top=4)
    assert sorted(h.path for h in hits) == sorted(str(folder / n) for n in names)


def test_photo_count_survives_rebuild_and_upgrade_from_an_index_without_the_counter(photo_dir: Path) -> None:
    lib = _lib()
    lib.index([photo_dir])
    n = lib.status().images
    assert n > 0
    store = Store.open(lib.path)  # as an index written before the counter existed
    store.db.execute("DROP TRIGGER images_counted_in")
    store.db.execute("DROP TRIGGER images_counted_out")
    store.db.execute("DELETE FROM meta WHERE key = 'image_count'")
    store.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_image_count'")
    store.close()
    assert lib.status().images == n  # the step runs again on open and counts the rows once
    lib.index([photo_dir], rebuild=True)
    assert lib.status().images == n


def test_a_new_index_is_created_without_importing_pandas(tmp_path: Path) -> None:
    """sqlite_utils imports pandas when it can (0.3-1 s); the schema steps never need it, and a
    program that wants pandas afterwards still gets it."""
    pytest.importorskip("pandas")
    import subprocess
    import sys

    code = ("import sys\nfrom pathlib import Path\nfrom clipsearch.index.store import Store\n"
            f"Store.open(Path({str(tmp_path / 'index')!r}), create=True).close()\n"
            "assert 'sqlite_utils' in sys.modules, 'the schema was not created by sqlite_utils'\n"
            "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
            "import pandas\nprint(pandas.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pandas"
    with Store.open(tmp_path / "index") as store:  # the steps all ran
        assert store.db.execute("SELECT count(*) FROM images").fetchone() == (0,)
