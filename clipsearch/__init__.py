"""clipsearch: search your photos by text or example, with CLIP, on your own machine.

The public API is small: `Library` (index, search, status), the result types it returns, and the
errors it raises. Everything else is an implementation module and may change.
"""

from clipsearch.errors import (
    ClipsearchError,
    IndexLockedError,
    IndexMissingError,
    IndexSchemaError,
    ModelError,
    ModelMismatchError,
    ModelNotAvailableError,
    UsageError,
)
from clipsearch.indexer import IndexSummary
from clipsearch.library import Library, Status
from clipsearch.search import SearchResult

__version__ = "0.1.0"

__all__ = [
    "ClipsearchError",
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
