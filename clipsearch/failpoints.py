"""Named crash points, so the reliability tests can kill an indexer at the worst possible instants.

With CLIPSEARCH_FAILPOINT=NAME[:N] set, the N-th pass (default the first) through `hit(NAME)` kills
the process with SIGKILL: no cleanup, no exception handlers, exactly like a power cut or `kill -9`.
With CLIPSEARCH_FAILPOINT_ONCE=FILE also set, only the first process to get there dies (it creates
FILE first): a Ray worker restarted after the kill must carry on, not die again at the same point.
Unset (always, for users) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_passes: dict[str, int] = {}


def hit(name: str) -> None:
    spec = os.environ.get("CLIPSEARCH_FAILPOINT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] < int(nth or 1):
        return
    marker = os.environ.get("CLIPSEARCH_FAILPOINT_ONCE")
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # another process (or an earlier life of this worker) already died here
    os.kill(os.getpid(), signal.SIGKILL)
