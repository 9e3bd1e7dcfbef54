"""Image queries of photos the index holds: their stored vectors, no model (ingest/known.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli_without_model

from clipsearch import Library
from clipsearch.encoders import Encoders


@pytest.fixture
def indexed(shared_index: Path, isolated: Path) -> Library:
    shutil.copytree(shared_index, isolated / "index")
    return Library()


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The photos the model embedded during the test (the real model still does it)."""
    calls: list[str] = []
    original = Encoders.embed_photo

    def spy(self: Encoders, recorded: Any, path: str, purpose: str) -> np.ndarray:
        calls.append(path)
        return original(self, recorded, path, purpose)

    monkeypatch.setattr(Encoders, "embed_photo", spy)
    return calls


def test_query_image_of_an_indexed_photo_imports_no_torch(indexed: Library, shared_photos: Path,
                                                          isolated: Path) -> None:
    photo = shared_photos / "all" / "blue-star-0.png"
    found = run_cli_without_model(["query", "--image", str(photo), "-n", "2", "--min-score", "-1", "-f", "paths"],
                                  isolated)
    assert found.stdout.splitlines()[0] == str(photo)  # its own vector: cosine 1 with itself


def test_image_parts_of_composite_queries_use_the_stored_vector(indexed: Library, shared_photos: Path,
                                                                embedded: list[str]) -> None:
    ref = shared_photos / "all" / "green-square-0.png"
    hits = indexed.query(f"{ref} + a photo of a yellow square", images=[ref], top=3, min_score=-1)
    assert [t.kind for t in hits.terms] == ["image", "text", "image"]
    assert embedded == []


def test_a_copy_under_another_name_is_found_by_fingerprint(indexed: Library, shared_photos: Path, tmp_path: Path,
                                                          embedded: list[str]) -> None:
    original = shared_photos / "all" / "orange-cross-0.png"
    copy = tmp_path / "elsewhere" / "IMG_0001.png"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    found = indexed.query(images=[copy], top=1, min_score=-1)
    assert embedded == [] and found.results[0].path == str(original)
    assert found.results[0].score == pytest.approx(1.0, abs=1e-5)


def test_a_changed_file_is_embedded_again_not_answered_with_its_stale_vector(
        shared_photos: Path, isolated: Path, tmp_path: Path, embedded: list[str]) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    photo = folder / "photo.png"
    shutil.copyfile(shared_photos / "all" / "green-square-0.png", photo)
    lib = Library()
    lib.index([folder])
    lib.query(images=[photo], top=1, min_score=-1)
    assert embedded == []  # unchanged: the stored vector
    shutil.copyfile(shared_photos / "all" / "red-circle-0.png", photo)  # same path, other picture
    os.utime(photo, ns=(1_000_000_000, 1_000_000_000))
    found = lib.query(images=[photo], top=1, min_score=-1)
    assert embedded == [str(photo)]
    assert found.results[0].score < 0.99  # the index's (green square) vector is no longer this photo's
