"""The towers' export off the critical path of `index` (background_export.py, issue 22).

conftest sets CLIPSEARCH_EXPORT=inline for the rest of the suite; these tests run the default.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_cli_without_model

from clipsearch.cli import app
from clipsearch.index.store import Store
from clipsearch.model import background_export, image_tower, prefix_tower, text_tower
from clipsearch.model.embedder import Embedder

runner = CliRunner()
WAIT_S = 300  # generous: the exporter is niced, and the machine may be busy


@pytest.fixture
def in_background(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_EXPORT", "background")
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "on")


def _sha(index: Path) -> str:
    with Store.open(index) as store:
        return store.model_identity().weights_sha256  # type: ignore[union-attr]


def _marker_pid(index: Path) -> int:
    return int(json.loads((index / background_export.MARKER).read_text())["pid"])


def _wait_until_done(index: Path) -> None:
    """Until no exporter runs for this index (its marker gone), then reap it: CliRunner ran the CLI
    in this process, so the exporter is this process's child, and a zombie would pass for alive."""
    pid = _marker_pid(index) if (index / background_export.MARKER).exists() else None
    deadline = time.monotonic() + WAIT_S
    while (index / background_export.MARKER).exists():
        assert time.monotonic() < deadline, "the background export never finished: " + _log(index)
        time.sleep(0.2)
    if pid is not None and pid != os.getpid():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _log(index: Path) -> str:
    log = index / background_export.LOG
    return log.read_text()[-2000:] if log.exists() else "(no log)"


def test_index_returns_before_the_export_and_queries_fall_back_until_it_lands(
        photo_dir: Path, isolated: Path, in_background: None, monkeypatch: pytest.MonkeyPatch,
        tiny_embedder: Embedder) -> None:
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "on")  # text first, then the image tower
    index = isolated / "index"
    sha = tiny_embedder.identity.weights_sha256
    # Hold the lock an export of these weights takes: the exporter starts, then waits for it, so
    # the index run is seen returning while the export is still to come, on any machine.
    with background_export._weights_lock(sha):
        result = runner.invoke(app, ["index", str(photo_dir)])
        assert result.exit_code == 0, result.stderr
        assert _sha(index) == sha
        assert "preparing the text encoder in the background" in result.stderr
        assert not text_tower.available(index, sha)
        assert background_export.running(index) == ("text", "image")
        st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
        assert st["text_model"] is False and st["exporting"] == ["text", "image"]
        assert "being prepared in the background" in runner.invoke(app, ["status"]).stdout
        # A second index run meanwhile does not start a second exporter.
        assert not background_export.start(index, "any", sha, ["text"])
        # A text query meanwhile: the torch path answers, and says why it is slow (stderr only).
        query = runner.invoke(app, ["query", "a photo of a purple ring", "-n", "1", "-f", "paths"])
        assert query.exit_code == 0, query.stderr
        assert query.stdout.strip() == str(photo_dir / "all" / "purple-ring-0.png")
        assert "still being prepared in the background" in query.stderr
        as_json = runner.invoke(app, ["query", "a photo of a purple ring", "-n", "1", "--json"])
        assert json.loads(as_json.stdout)  # stdout stays the JSON alone

    _wait_until_done(index)
    assert text_tower.available(index, sha), _log(index)
    assert image_tower.available(index, sha), _log(index)  # after the text tower, in the same process
    # The label cache's bf16 graph was compiled and checked there too, not in the first `tag` run.
    text_folder = index / text_tower.FOLDER
    prefix = json.loads((text_folder / "meta.json").read_text()).get("prefix")
    if prefix and prefix_tower.bf16_wanted() and importlib.util.find_spec("openvino"):
        from clipsearch.model import prefix_openvino

        assert prefix_openvino.verdict(text_folder, prefix) is not None, _log(index)
    assert not list(index.glob(".*-model.*.tmp")) and not (index / background_export.DECLINED).exists()
    # The ONNX tower answers now: no torch in the process.
    result = run_cli_without_model(["query", "a photo of a purple ring", "-n", "1", "-f", "paths"], isolated)
    assert result.stdout.strip() == str(photo_dir / "all" / "purple-ring-0.png")
    assert "still being prepared" not in result.stderr

    # Another index of the same weights links the cached text tower in the run itself.
    other = runner.invoke(app, ["index", str(photo_dir), "--index", str(isolated / "other"), "-q"])
    assert other.exit_code == 0, other.stderr
    assert text_tower.available(isolated / "other", sha)
    _wait_until_done(isolated / "other")  # its image tower is not shared: exported in the background


def test_a_killed_exporter_leaves_no_half_folder_and_the_next_run_starts_again(
        photo_dir: Path, isolated: Path, in_background: None) -> None:
    index = isolated / "index"
    assert runner.invoke(app, ["index", str(photo_dir), "-q"]).exit_code == 0
    pid = _marker_pid(index)
    deadline = time.monotonic() + WAIT_S
    while not list(index.glob(".text-model.*.tmp/*")):  # the exporter is writing its files
        assert (index / background_export.MARKER).exists(), "the export ended before it could be killed"
        assert time.monotonic() < deadline, _log(index)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sha = _sha(index)
    assert list(index.glob(".text-model.*.tmp")) and not (index / text_tower.FOLDER).exists()
    assert not text_tower.available(index, sha)
    assert background_export.running(index) == ()  # its marker is stale: the pid is dead

    again = runner.invoke(app, ["index", str(photo_dir), "--json"])  # nothing changed since
    assert again.exit_code == 0 and json.loads(again.stdout)["unchanged"] == len(list(photo_dir.rglob("*.png")))
    assert not list(index.glob(".text-model.*.tmp")), "a dead exporter's folder was left behind"
    assert _marker_pid(index) != pid  # a new exporter
    _wait_until_done(index)
    assert text_tower.available(index, sha), _log(index)
    assert not list(index.glob(".text-model.*"))


def test_a_model_that_cannot_be_exported_is_not_tried_again(photo_dir: Path, isolated: Path, in_background: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from clipsearch.model import text_export

    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "off")
    assert runner.invoke(app, ["index", str(photo_dir), "-q"]).exit_code == 0
    index = isolated / "index"
    sha = _sha(index)
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "on")
    # The exporter itself, here in this process, with an export that declines (as one for a
    # tokenizer without a torch-free twin does).
    monkeypatch.setattr(text_export, "export", lambda *a, **k: False)
    monkeypatch.setattr(os, "nice", lambda _: 0)  # the exporter's; not this test process's
    (index / background_export.MARKER).write_text(json.dumps({"pid": os.getpid()}))
    assert background_export._main(index, os.environ["CLIPSEARCH_MODEL"], sha, ["text"]) == 0
    assert not (index / background_export.MARKER).exists()
    assert background_export.declined(index) == {"text": sha}
    result = runner.invoke(app, ["index", str(photo_dir)])
    assert result.exit_code == 0 and "preparing" not in result.stderr
    assert not (index / background_export.MARKER).exists()  # nothing started
