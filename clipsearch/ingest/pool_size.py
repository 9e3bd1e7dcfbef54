"""How many photos decode at once: enough to keep the model fed, no more than the cores allow.

The pool used to be `min(8, cpu_count)` threads: on a 16-64-core machine, above all one whose
model runs on a GPU, that capped decoding 12 MP photos at ~300/s however many cores were idle.
Now the executor starts with today's guess, measures the first batches (seconds of decode per
photo in a worker, seconds of model per photo on the calling thread) and sets the number of
decodes allowed at once to what keeps the model busy with some headroom, within the cores the
model leaves free (`decode_workers`). A `Gate` lets the limit change while the pool runs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HEADROOM = 1.25  # decode a little faster than the model eats: decode times vary photo to photo
START = 8  # the guess before anything is measured (the old fixed size)
MEASURE_AFTER = 64  # photos decoded and embedded before the limit is set from rates


def model_cores(device: str) -> int:
    """Cores the model keeps busy: on a GPU only the thread that feeds it; on the CPU all of them
    (torch uses every core, and decoding shares them with it, as the old pool did)."""
    return 1 if device.startswith(("cuda", "mps")) else 0


def upper_bound(cores: int, device: str) -> int:
    """The most decodes that can help: every core the model leaves free (at least one)."""
    return max(1, cores - model_cores(device))


def decode_workers(cores: int, device: str, decode_s_per_photo: float, model_s_per_photo: float) -> int:
    """Decodes at once so that decoding keeps up with the model (x HEADROOM), within upper_bound.

    `decode_s_per_photo` is one worker's wall time per photo, `model_s_per_photo` the model's wall
    time per photo in its batches. A model faster than anything measurable (0) takes every free core.
    """
    hi = upper_bound(cores, device)
    if decode_s_per_photo <= 0:
        return 1
    if model_s_per_photo <= 0:
        return hi
    needed = math.ceil(HEADROOM * decode_s_per_photo / model_s_per_photo)
    return max(1, min(hi, needed))


def start_workers(cores: int, device: str) -> int:
    return max(1, min(START, upper_bound(cores, device)))


class Gate:
    """A limit on how many decodes run at once that can change while they run (a resizable semaphore)."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._limit = max(1, limit)
        self._running = 0

    @property
    def limit(self) -> int:
        return self._limit

    def set(self, limit: int) -> None:
        with self._cond:
            self._limit = max(1, limit)
            self._cond.notify_all()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            while self._running >= self._limit:
                self._cond.wait()
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify()
