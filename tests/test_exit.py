"""A command that loaded torch ends after Python's finalisation, before the C libraries' destructors.

cli._skip_library_destructors (docs/benchmarks.md, "Index runs without OpenVINO"): the exit status,
everything printed and Python's own atexit handlers stay; C-level exit handlers registered before
(as every loaded library's static destructors are) do not run. The stand-in for those destructors
here is abort(), registered with glibc's __cxa_atexit before the command: if it ran, the process
would die of SIGABRT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import shapes

CODE = """
import atexit, ctypes, sys
from pathlib import Path
libc = ctypes.CDLL("libc.so.6")
libc.__cxa_atexit.argtypes = [ctypes.c_void_p] * 3
if sys.argv[1] == "abort":
    libc.__cxa_atexit(ctypes.cast(libc.abort, ctypes.c_void_p), None, None)
marker = Path(sys.argv[2])
atexit.register(lambda: marker.write_text("torch" if "torch" in sys.modules else "no torch"))
from clipsearch.cli import main
sys.argv = ["clipsearch", *sys.argv[3:]]
main()
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's exit handlers")


def _run(mode: str, marker: Path, args: list[str],
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CODE, mode, str(marker), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_a_torch_command_keeps_its_status_output_and_atexit_but_skips_library_destructors(
        isolated: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    shapes.write_heldout(photos, per_class=1, seed=3)
    marker = tmp_path / "atexit.txt"
    run = _run("abort", marker, ["index", str(photos), "--json", "--device", "cpu"])
    assert run.returncode == 0, run.stderr  # abort() never ran: the destructors' turn never came
    assert json.loads(run.stdout)["embedded"] == len(list(photos.iterdir()))  # the output whole
    assert marker.read_text() == "torch"  # Python's atexit handlers ran, with torch loaded
    marker.unlink()
    # Another status survives: a text query through torch (no text tower here) that finds nothing is 1.
    run = _run("abort", marker, ["query", "a red circle", "--min-width", "100000"])
    assert run.returncode == 1, run.stderr
    assert marker.read_text() == "torch"


def test_the_destructors_run_when_asked_for(isolated: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    shapes.write_heldout(photos, per_class=1, seed=4)
    marker = tmp_path / "atexit.txt"
    run = _run("abort", marker, ["index", str(photos), "--device", "cpu"], {"CLIPSEARCH_EXIT_DESTRUCTORS": "1"})
    assert run.returncode == -6  # SIGABRT: every exit handler ran, the stand-in too
    assert marker.read_text() == "torch"
