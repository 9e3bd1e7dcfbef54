"""clipsearch: search your photos by text or example, with CLIP, on your own machine.

The public API is small: `Library` (index, search, status), the result types it returns, and the
errors it raises. Everything else is an implementation module and may change.
"""

from typing import TYPE_CHECKING, Any

from clipsearch._version import __version__
from clipsearch.errors import (
    ClipsearchError,
    ClusterError,
    IndexLockedError,
    IndexMissingError,
    IndexSchemaError,
    ModelError,
    ModelMismatchError,
    ModelNotAvailableError,
    UsageError,
)

if TYPE_CHECKING:
    from clipsearch.index.status import Status
    from clipsearch.ingest.pipeline import IndexSummary
    from clipsearch.library import Library
    from clipsearch.search.ranking import SearchResult


_LAZY = {"IndexSummary": "clipsearch.ingest.pipeline", "Library": "clipsearch.library",
         "Status": "clipsearch.index.status", "SearchResult": "clipsearch.search.ranking"}


def __getattr__(name: str) -> Any:
    """Public classes are imported on first use, so `import clipsearch` (and the CLI) start fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")

__all__ = [
    "ClipsearchError",
    "ClusterError",
    "IndexLockedError",
    "IndexMissingError",
    "IndexSchemaError",
    "IndexSummary",
    "Library",
    "ModelError",
    "ModelMismatchError",
    "ModelNotAvailableError",
    "SearchResult",
    "Status",
    "UsageError",
    "__version__",
]
