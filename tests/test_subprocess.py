"""The installed `clipsearch` command in a real process, as a user or a script runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli_without_model

EXE = shutil.which("clipsearch") or str(Path(sys.executable).parent / "clipsearch")


def run(*args: str, env_home: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIPSEARCH_HOME": str(env_home)}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=300, check=check)


def test_index_and_query_through_the_console_script(photo_dir: Path, isolated: Path) -> None:
    assert os.path.exists(EXE), "the console script is installed with the package"
    indexed = run("index", str(photo_dir), env_home=isolated)
    assert indexed.returncode == 0, indexed.stderr
    assert indexed.stdout == ""  # not a TTY: the summary goes to stderr, no progress bar at all
    assert "48 new" in indexed.stderr and "\x1b[" not in indexed.stderr

    found = run("query", "a photo of a green triangle", "-n", "1", "--format", "paths", env_home=isolated)
    assert found.returncode == 0, found.stderr
    assert found.stdout == f"{photo_dir / 'all' / 'green-triangle-0.png'}\n"

    plain = run("query", "a photo of a green triangle", "-n", "2", "--min-score", "-1", env_home=isolated)
    assert "\x1b[" not in plain.stdout and len(plain.stdout.splitlines()) == 2

    # The text was embedded once: asked again, no model is loaded at all.
    again = run_cli_without_model(["query", "a photo of a green triangle", "-n", "2", "--min-score", "-1"], isolated)
    assert again.stdout == plain.stdout


def test_python_dash_m_and_exit_code_for_a_missing_index(tmp_path: Path) -> None:
    env = {**os.environ, "CLIPSEARCH_HOME": str(tmp_path / "empty")}
    version = subprocess.run([sys.executable, "-m", "clipsearch", "--version"], capture_output=True, text=True,
                             env=env, check=True)
    assert version.stdout.startswith("clipsearch 0.")
    missing = subprocess.run([sys.executable, "-m", "clipsearch", "query", "dog"], capture_output=True,
                             text=True, env=env)
    assert missing.returncode == 3
    assert missing.stderr.startswith("error: no index at") and "Traceback" not in missing.stderr


@pytest.mark.parametrize("cmd", [["--help"], ["models", "list"]])
def test_light_commands_do_not_import_torch(cmd: list[str], tmp_path: Path) -> None:
    run_cli_without_model(cmd, tmp_path)
