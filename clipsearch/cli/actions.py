"""Doing something with the results: copy or link them into a folder, open the best one.

The photos are only ever read: copies and links go into the folder named, a name already taken
there gets " (2)", " (3)"… rather than being overwritten.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from clipsearch.cli.common import err, escape, fail


def prepare(folder: Path | None, option: str) -> None:
    """Create the target folder now, so a bad path is a usage error before the search runs."""
    if folder is None:
        return
    try:
        folder.expanduser().mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"{option} {folder}: cannot create it ({exc.strerror or exc})", 2) from None
    if not os.access(folder.expanduser(), os.W_OK):
        raise fail(f"{option} {folder}: permission denied", 2)


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    stem, suffix = os.path.splitext(name)
    n = 2
    while os.path.lexists(target):
        target = folder / f"{stem} ({n}){suffix}"
        n += 1
    return target


def put(paths: Sequence[str], folder: Path, link: bool) -> None:
    """Copy (or symlink) each photo into `folder`; a line says how many and where."""
    folder = folder.expanduser().absolute()
    done = 0
    for path in paths:
        target = _free_name(folder, os.path.basename(path))
        try:
            if link:
                os.symlink(os.path.abspath(path), target)
            else:
                shutil.copy2(path, target)
            done += 1
        except OSError as exc:
            err.print(f"[yellow]skipped:[/] {escape(path)}: {escape(exc.strerror or str(exc))}")
    verb = "linked" if link else "copied"
    err.print(f"{verb} {done} {'photo' if done == 1 else 'photos'} into {escape(str(folder))}")


def open_file(path: str) -> None:
    """Open a photo with the desktop's viewer (xdg-open, open on macOS, the Windows association)."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None:
        raise fail(f"--open needs `{opener}`, which is not installed; the photo is {path}", 2)
    subprocess.Popen([opener, path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
