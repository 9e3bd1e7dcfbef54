"""Every test runs offline, on the tiny trained CLIP, with its data in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import shapes

from clipsearch import Library
from clipsearch.model.embedder import Embedder

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs on one worker per core (pytest-xdist): one torch thread each, not two fighting per core.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The tests that turn the text export on want it done when `index` returns, as a script with
# CLIPSEARCH_EXPORT=inline gets it; a detached exporter per test would also outlive its tmp_path and
# take the cores from the tests after it. Set here, not in `isolated`, so that session fixtures and
# the processes tests start inherit it too. tests/test_background_export.py tests the default.
os.environ["CLIPSEARCH_EXPORT"] = "inline"

TINY_MODEL_DIR = Path(__file__).parent / "fixtures" / "tiny-clip"
TINY_MODEL = f"local-dir:{TINY_MODEL_DIR}"


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Spread tests one by one over the workers, but keep a file with module-scoped fixtures on one
    worker, so they are built once. (xdist's own `xdist_group` marks do not group under pytest 9.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    shared: dict[str, bool] = {}

    class ByFixtureScope(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            if file not in shared:
                source = config.rootpath / file
                shared[file] = source.is_file() and 'scope="module"' in source.read_text(encoding="utf-8")
            return file if shared[file] else nodeid

    return ByFixtureScope(config, log)


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
    # Likewise the image tower's background export after a torch-answered image query (image_export.py).
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "off")
    return home


@pytest.fixture(scope="session")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str, str]]:
    """Held-out shapes (another seed than training): 2 PNGs per colour+shape class."""
    folder = tmp_path_factory.mktemp("heldout")
    return shapes.write_heldout(folder, per_class=2, seed=2024)


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """One loaded tiny model shared by the tests that only embed (session fixtures run before `isolated`)."""
    from clipsearch.model import names

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_HOME", str(tmp_path_factory.mktemp("embedder-home")))
        return Embedder(names.parse(TINY_MODEL))


@pytest.fixture(scope="session")
def shared_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 held-out pictures (one per class) made once: for tests that only read them."""
    folder = tmp_path_factory.mktemp("shared-photos")
    shapes.write_heldout(folder / "all", per_class=1, seed=99)
    return folder


@pytest.fixture(scope="session")
def shared_index(shared_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`shared_photos` indexed once (no text export); tests copy the folder before using it."""
    home = tmp_path_factory.mktemp("shared-index")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"CLIPSEARCH_HOME": str(home), "CLIPSEARCH_MODEL": TINY_MODEL, "HF_HUB_OFFLINE": "1",
                           "CLIPSEARCH_TEXT_MODEL": "off"}.items():
            mp.setenv(key, value)
        Library(index=home / "index").index([shared_photos])
    return home / "index"


@pytest.fixture(scope="session")
def image_tower_index(shared_index: Path, tiny_embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`shared_index` with the tiny model's image tower exported (seconds: once); tests copy it."""
    import shutil

    from clipsearch.model import image_export

    folder = tmp_path_factory.mktemp("image-tower") / "index"
    shutil.copytree(shared_index, folder)
    assert image_export.export(tiny_embedder, folder)
    return folder


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


def run_cli_without_model(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """`clipsearch ARGS` in a fresh process that must exit 0 without importing torch or open_clip."""
    code = ("import sys; from clipsearch.cli import main; sys.argv = ['clipsearch', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'the model was loaded'")
    env = {**os.environ, "CLIPSEARCH_HOME": str(home)}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def index_heldout_through_cli(factory: pytest.TempPathFactory, name: str, model: str, per_class: int
                              ) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """(photos, index home, the run): held-out shapes (`per_class` a class, seed 99) indexed once
    by `clipsearch index` in a fresh process with `model`, the text export on."""
    photos = factory.mktemp(f"{name}-photos")
    shapes.write_heldout(photos / "all", per_class=per_class, seed=99)
    home = factory.mktemp(f"{name}-home")
    env = {**os.environ, "CLIPSEARCH_HOME": str(home), "CLIPSEARCH_MODEL": model, "HF_HUB_OFFLINE": "1",
           "CLIPSEARCH_TEXT_MODEL": "on", "NO_COLOR": "1"}
    run = subprocess.run([sys.executable, "-m", "clipsearch", "index", str(photos)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return photos, home, run
