"""One BLAS thread for the small matrix products of a single search.

A text query's relevance decision multiplies a few hundred hits by a few hundred alternatives
(search/ranking.py): under a millisecond on one core. NumPy's OpenBLAS splits it over every core
and its threads spin while they wait; with anything else running (a second query, an indexing job,
a browser) they fight for the cores: the same 10k-photo search measured 3.9 ms p50 on one thread
against 13.8-24.5 ms with OpenBLAS's default two at a load of 1 on 2 cores (docs/benchmarks.md,
"Library.search"). Large products (tagging a folder, duplicates) keep every thread: only the blocks
wrapped in `single()` run on one.

OpenBLAS's count is process-wide, so concurrent searches share it: the first to enter sets one
thread, the last to leave puts the old count back; another thread's large product in the meantime
runs on one thread too, which costs it speed, never a different result. The setter is OpenBLAS's
`openblas_set_num_threads_local` (MKL's `mkl_set_num_threads_local`): the plain process-wide
setter, the one threadpoolctl calls, was measured here to have no effect when called from any
thread but the one that set the count last (BLAS's worker threads kept computing), and the
gallery searches from a thread pool. threadpoolctl finds the BLAS libraries NumPy loaded; without
it, or with a BLAS that has neither setter, nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Iterator

_LOCAL_SETTERS = {"openblas": "openblas_set_num_threads_local", "mkl": "mkl_set_num_threads_local"}
_setters: list[Callable[[int], int]] | None = None
_lock = threading.Lock()
_users = 0  # blocks inside single() now, in any thread
_saved: list[int] = []  # the counts to put back when the last one leaves


def _thread_setters() -> list[Callable[[int], int]]:
    """Per-thread thread-count setters of the BLAS libraries NumPy uses (each returns the previous
    count), found once: threadpoolctl walks the loaded libraries in about 1.4 ms."""
    global _setters
    if _setters is None:
        found: list[Callable[[int], int]] = []
        try:
            import numpy  # noqa: F401 - its BLAS must be loaded to be found
            from threadpoolctl import ThreadpoolController

            for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
                name = _LOCAL_SETTERS.get(lib.internal_api)
                fn = getattr(ctypes.CDLL(lib.filepath), name, None) if name else None
                if fn is not None:
                    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                    found.append(fn)
        except Exception:  # noqa: BLE001 - no threadpoolctl or a BLAS it cannot drive: leave threads alone
            found = []
        _setters = found
    return _setters


@contextlib.contextmanager
def single() -> Iterator[None]:
    """The block's NumPy matrix products on one BLAS thread (see the module's docstring)."""
    global _users, _saved
    setters = _thread_setters()
    if not setters:
        yield
        return
    with _lock:
        if _users == 0:
            _saved = [set_threads(1) for set_threads in setters]
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                for set_threads, count in zip(setters, _saved, strict=True):
                    set_threads(count)
