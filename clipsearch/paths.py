"""Paths as clipsearch handles them: resolved from what users type, shown safely, compared by
folder, and files replaced atomically."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from clipsearch.errors import UsageError


def resolve(path: str | os.PathLike[str]) -> str:
    """An absolute path from what a user typed (`~` expanded); symlinks are kept as given."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def resolve_all(paths: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    return tuple(resolve(p) for p in paths)


def under(path: str, roots: Sequence[str]) -> bool:
    """True when `path` is one of `roots` or inside one of them (absolute paths)."""
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def display(path: str) -> str:
    """A path safe to print on one line: undecodable bytes as \\xNN, control characters escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c >= " " and c != "\x7f" else f"\\x{ord(c):02x}" for c in text)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable; filesystems that cannot do it are left be."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """`write` a temp file beside `target`, fsync it, rename it over: a crash leaves old or new.

    The temp name carries the writer's pid, so a later run can tell a dead writer's leftovers.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def existing(given: Iterable[str | os.PathLike[str]], none_given: str) -> tuple[str, ...]:
    """The folders or files named, resolved; a typo is an error before anything is created."""
    items = [os.fspath(p) for p in given]
    if not items:
        raise UsageError(none_given)
    for item in items:
        if not os.path.lexists(resolve(item)):
            raise UsageError(f"no such file or folder: {item}")
    return resolve_all(items)
