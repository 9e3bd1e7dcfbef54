"""Walking photo folders the way a user expects: sorted, hidden files skipped, loops survived."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipsearch import paths
from clipsearch.errors import UsageError
from clipsearch.ingest import scan


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _names(found: list[scan.FoundFile], root: Path) -> list[str]:
    return [os.path.relpath(f.path, root) for f in found]


def test_sorted_and_filtered(tmp_path: Path) -> None:
    for rel in ["b/2.jpg", "b/1.PNG", "a.jpg", "c/d/e.webp", "notes.txt", ".hidden/x.jpg", ".x.jpg",
                "._a.jpg", ".DS_Store", "skip/me.jpg", "raw/IMG_1.CR2", "raw/IMG_1.JPG", "raw/IMG_2.cr2"]:
        _touch(tmp_path / rel)
    found = list(scan.walk([tmp_path], exclude=("skip",)))
    assert _names(found, tmp_path) == ["a.jpg", "b/1.PNG", "b/2.jpg", "c/d/e.webp", "raw/IMG_1.JPG",
                                       "raw/IMG_2.cr2"]
    hidden = _names(list(scan.walk([tmp_path], include_hidden=True)), tmp_path)
    assert ".hidden/x.jpg" in hidden and ".x.jpg" in hidden


def test_exclude_by_glob_on_name_or_path(tmp_path: Path) -> None:
    _touch(tmp_path / "keep.jpg")
    _touch(tmp_path / "thumbs" / "t.jpg")
    _touch(tmp_path / "x_small.jpg")
    found = list(scan.walk([tmp_path], exclude=("*_small.jpg", str(tmp_path / "thumbs"))))
    assert _names(found, tmp_path) == ["keep.jpg"]


def test_symlinks_not_followed_by_default_and_loops_end(tmp_path: Path) -> None:
    _touch(tmp_path / "real" / "a.jpg")
    os.symlink(tmp_path / "real", tmp_path / "real" / "loop")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "real" / "broken.jpg")
    assert _names(list(scan.walk([tmp_path])), tmp_path) == ["real/a.jpg"]
    problems = scan.ScanProblems()
    followed = list(scan.walk([tmp_path], follow_symlinks=True, problems=problems))
    assert _names(followed, tmp_path) == ["real/a.jpg"]
    reasons = {os.path.basename(p): r for p, r, _ in problems.skipped}
    assert reasons == {"broken.jpg": "broken symlink", "loop": "symlink loop"}


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or folder"):
        list(scan.walk([tmp_path / "nope"]))


def test_single_files_and_odd_names(tmp_path: Path) -> None:
    odd = _touch(tmp_path / "new\nline and spaces.jpg")
    raw_name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: not valid UTF-8
    _touch(tmp_path / raw_name)
    found = list(scan.walk([odd]))
    assert [f.path for f in found] == [str(odd)]
    everything = {f.path for f in scan.walk([tmp_path])}
    assert str(tmp_path / raw_name) in everything
    assert paths.display(str(odd)).endswith("new\\x0aline and spaces.jpg")
    assert paths.display(str(tmp_path / raw_name)).endswith("caf\\xe9.jpg")
