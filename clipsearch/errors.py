"""The errors the library raises. The CLI turns each into one line on stderr and its exit code.

Exit codes are part of the interface scripts rely on; docs/cli.md lists them.
"""

from __future__ import annotations


class ClipsearchError(Exception):
    """Base of every error clipsearch raises on purpose."""

    exit_code = 1


class UsageError(ClipsearchError):
    """The request itself is wrong: a bad option value, a malformed query, a missing file."""

    exit_code = 2


class IndexUnavailableError(ClipsearchError):
    """The index cannot be used as asked: missing, locked by another run, or damaged."""

    exit_code = 3


class IndexMissingError(IndexUnavailableError):
    """No index exists where one was expected."""


class IndexLockedError(IndexUnavailableError):
    """Another clipsearch process holds the index's write lock."""


class StorageError(IndexUnavailableError):
    """The index could not be written (disk full, read-only, I/O error); what was there is intact."""


class IndexReadOnlyError(StorageError):
    """The index folder cannot be written (a read-only mount, a backup, no permission); reading works."""


class IndexDamagedError(IndexUnavailableError):
    """The index database is damaged (not a database, truncated, failing SQLite's checks); `clipsearch repair`."""


class IndexSchemaError(IndexUnavailableError):
    """The index was written by a newer clipsearch; it is left untouched."""


class ModelError(ClipsearchError):
    """A model cannot be named, found, loaded or used with this index."""

    exit_code = 4


class ModelNotAvailableError(ModelError):
    """The weights are not on this machine and cannot be downloaded now."""


class ModelMismatchError(ModelError):
    """The index was built with another model; mixing embeddings would give silent garbage."""


class ClusterError(ClipsearchError):
    """The Ray cluster could not be reached, or it lost work it could not redo; what was committed is kept."""

    exit_code = 5
