"""Faults around the index folder, told apart and turned into errors that say what to do.

A read-only folder (a backup, a shared mount) is opened read-only and still answers queries; a
damaged database (not a database, truncated, 0 bytes, failing SQLite's checks) is reported with the
way back (`clipsearch repair`); an I/O error while reading (say a `-wal` deleted under a running
indexer) is a clean error. None of them may reach the CLI as an "internal error".
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from clipsearch.errors import ClipsearchError, IndexDamagedError, IndexReadOnlyError, StorageError

T = TypeVar("T")

REPAIR_HINT = "run `clipsearch repair` to salvage what is readable (the damaged file is kept aside)"
READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
# SQLite's words for a file whose bytes are wrong, as opposed to one it cannot reach right now.
_DAMAGE_WORDS = ("malformed", "not a database", "corrupt", "file is encrypted")


def writable(folder: Path) -> bool:
    """Whether clipsearch may write in `folder`: access() sees a read-only mount even for root."""
    db = folder / "clipsearch.db"
    return os.access(folder, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))


def read_only_error(folder: Path, doing: str = "change it") -> IndexReadOnlyError:
    return IndexReadOnlyError(f"the index folder {folder} is read-only; cannot {doing} (queries, similar, status, "
                              "duplicates and tags still work)")


def connect(path: Path, read_only: bool) -> sqlite3.Connection:
    """The database, opened to write, or read-only without creating a lock, `-shm` or `-wal` file.

    A WAL database opened read-only needs its `-shm` file; in a folder nothing can be created in,
    `immutable=1` reads the file as it is (a clean close has already folded the WAL into it).
    """
    if not read_only:
        return sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    shared = path.with_name(path.name + "-shm").exists() and path.with_name(path.name + "-wal").exists()
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("" if shared else "&immutable=1")
    return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)


def check_not_empty(path: Path) -> None:
    """A missing database is a new index; a 0-byte one is a damaged index (clipsearch never leaves one)."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        return
    if empty:
        raise IndexDamagedError(f"the index database {path} is empty (0 bytes): its contents were lost; {REPAIR_HINT}")


def translate(exc: BaseException, folder: Path | None) -> ClipsearchError | None:
    """The ClipsearchError a low-level failure means, or None when it is not an index-folder fault."""
    where = f" at {folder}" if folder is not None else ""
    if isinstance(exc, sqlite3.DatabaseError):
        text = str(exc)
        if any(word in text for word in _DAMAGE_WORDS):
            return IndexDamagedError(f"the index database{where} is damaged ({text}); {REPAIR_HINT}")
        if "readonly" in text or "read-only" in text:
            return IndexReadOnlyError(f"the index{where} is read-only ({text}); queries, similar, status, "
                                      "duplicates and tags still work")
        if "disk I/O error" in text or "unable to open" in text:
            return StorageError(f"could not read the index{where} ({text}): a file of the index changed or "
                                "vanished under this process (a deleted -wal, a disk gone away); rerun the command, "
                                f"and if it keeps failing, `clipsearch status`; {REPAIR_HINT}")
        if "locked" in text or "busy" in text:
            return StorageError(f"the index{where} is busy ({text}): another process held SQLite's lock too long; "
                                "rerun the command")
        if "no such table" in text or "no such column" in text:
            return IndexDamagedError(f"the index database{where} is missing parts of its schema ({text}); "
                                     f"{REPAIR_HINT}")
        if "full" in text:
            return StorageError(f"could not write the index{where} ({text}); what was indexed before is intact")
        return StorageError(f"the index database{where} could not be used ({text}); {REPAIR_HINT}")
    if (isinstance(exc, OSError) and exc.errno in READ_ONLY_ERRNOS and folder is not None and exc.filename
            and _inside(os.fsdecode(exc.filename), folder)):
        return read_only_error(folder)  # a photo clipsearch cannot read is not the index's fault
    return None


def _inside(path: str, folder: Path) -> bool:
    target, root = os.path.abspath(path), os.path.abspath(folder)
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def create_atomically(path: Path, init: Callable[[sqlite3.Connection], None]) -> None:
    """A new database made under a temp name and renamed into place once its schema is committed, so
    a `clipsearch.db` is never empty or half-made (an empty one can then only mean damage)."""
    from clipsearch.paths import fsync_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            init(conn)
        finally:
            conn.close()  # folds the WAL into the file: the rename carries everything
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)


def guarded(cls: type[T]) -> type[T]:
    """Wrap every public method of `cls` (which has a `path`) so index-folder faults become errors."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or not callable(fn):
            continue
        setattr(cls, name, _guard(fn))
    return cls


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (sqlite3.DatabaseError, OSError) as exc:
            mapped = translate(exc, getattr(self, "path", None))
            if mapped is None:
                raise
            raise mapped from exc

    return wrapper


# A damaged page is found only by reading it. SQLite's quick_check reads every page (about 1 ms per MB
# here: 0.2 s at 200 MB), so writers, `status` and `duplicates` run it on databases up to this size;
# beyond it, damage is still reported wherever a read meets it.
QUICK_CHECK_MAX_BYTES = 1 << 30


def check_intact(conn: sqlite3.Connection, path: Path) -> None:
    """Raise IndexDamagedError when the database fails SQLite's quick_check (where that is cheap)."""
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size > QUICK_CHECK_MAX_BYTES:
        return
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise translate(exc, path.parent) or exc from exc
    if rows != ["ok"]:
        raise IndexDamagedError(f"the index database {path} is damaged (SQLite's check: {'; '.join(rows)[:200]}); "
                                f"{REPAIR_HINT}")
