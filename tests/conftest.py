"""Every test runs offline, on the tiny trained CLIP, with its data in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import shapes

from clipsearch.embedder import Embedder

TINY_MODEL_DIR = Path(__file__).parent / "fixtures" / "tiny-clip"
TINY_MODEL = f"local-dir:{TINY_MODEL_DIR}"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "clipsearch-home"
    monkeypatch.setenv("CLIPSEARCH_HOME", str(home))
    monkeypatch.setenv("CLIPSEARCH_MODEL", TINY_MODEL)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.delenv("CLIPSEARCH_DEVICE", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    # Exporting the ONNX text tower adds ~5 s to every index; the tests that are about it turn it on.
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "off")
    return home


@pytest.fixture(scope="session")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str, str]]:
    """Held-out shapes (another seed than training): 2 PNGs per colour+shape class."""
    folder = tmp_path_factory.mktemp("heldout")
    return shapes.write_heldout(folder, per_class=2, seed=2024)


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """One loaded tiny model shared by the tests that only embed (session fixtures run before `isolated`)."""
    from clipsearch import models

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_HOME", str(tmp_path_factory.mktemp("embedder-home")))
        return Embedder(models.parse(TINY_MODEL))


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A small folder of held-out shapes, one per class for a few classes, in subfolders."""
    folder = tmp_path / "photos"
    rng_items = shapes.write_heldout(folder / "all", per_class=1, seed=99)
    assert len(rng_items) == 48
    return folder


@pytest.fixture
def text_model_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "on")
