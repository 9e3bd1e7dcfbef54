"""The index's single-writer lock: one indexing run, merge or tag run at a time; readers need none."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from clipsearch.errors import IndexLockedError
from clipsearch.index.records import now

LOCK_NAME = "index.lock"
LOCK_OWNER = "index.lock.owner"


@contextlib.contextmanager
def write_lock(folder: Path, wait: bool) -> Iterator[None]:
    """Hold the lock, with a note of who holds it for the error that others get."""
    import socket

    import filelock

    from clipsearch.index import faults

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise faults.translate(exc, folder) or exc from exc
    if not faults.writable(folder):  # before the lock file: a read-only folder says so, not EROFS
        raise faults.read_only_error(folder)
    lock = filelock.FileLock(str(folder / LOCK_NAME), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except filelock.Timeout:  # an OSError too: caught first
        raise IndexLockedError(f"the index at {folder} is being updated by {_owner(folder)}; "
                               "wait for it, or pass --wait") from None
    except OSError as exc:
        raise faults.translate(exc, folder) or exc from exc
    try:
        (folder / LOCK_OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                     "since": now()}))
        yield
    finally:
        with contextlib.suppress(OSError):
            (folder / LOCK_OWNER).unlink()
        lock.release()


def _owner(folder: Path) -> str:
    try:
        info = json.loads((folder / LOCK_OWNER).read_text())
        return f"process {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "another clipsearch process"
