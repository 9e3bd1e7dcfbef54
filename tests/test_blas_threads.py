"""One BLAS thread inside a search, and the old count back when the last search leaves."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from clipsearch import blas_threads


def _count() -> set[int]:
    """The BLAS thread count the calling thread gets."""
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def two_threads():
    if not blas_threads._thread_setters():
        pytest.skip("NumPy's BLAS has no per-thread setter threadpoolctl can reach")
    with threadpool_limits(2, user_api="blas"):
        yield


def test_one_thread_inside_and_the_count_back_after(two_threads) -> None:
    assert _count() == {2}
    with blas_threads.single():
        assert _count() == {1}
        a = np.ones((64, 64), np.float32)
        assert float((a @ a)[0, 0]) == 64.0
        with blas_threads.single():
            assert _count() == {1}
        assert _count() == {1}
    assert _count() == {2}


def test_concurrent_searches_give_the_threads_back_when_the_last_leaves(two_threads) -> None:
    inside, release = threading.Event(), threading.Event()

    def search() -> None:
        with blas_threads.single():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=search)
    t.start()
    assert inside.wait(10)
    with blas_threads.single():
        pass
    assert _count() == {1}  # the other search is still inside
    release.set()
    t.join(10)
    assert _count() == {2}


def test_an_exception_in_the_block_still_restores(two_threads) -> None:
    with pytest.raises(RuntimeError), blas_threads.single():
        raise RuntimeError("boom")
    assert _count() == {2}


def _cpu_ticks() -> dict[str, int]:
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread CPU times come from Linux's /proc")
def test_blas_workers_stay_idle_inside_a_search_thread(two_threads) -> None:
    """What the setting is for: the product runs on the calling thread, BLAS's workers do nothing
    (the process-wide setter, called from this thread, left them computing)."""
    a = np.random.default_rng(0).random((1200, 1200))
    a @ a  # BLAS's worker threads exist from here on
    got: dict[str, int] = {}

    def search() -> None:
        me = str(threading.get_native_id())
        with blas_threads.single():
            before = _cpu_ticks()
            for _ in range(6):
                a @ a
            after = _cpu_ticks()
        got["mine"] = after[me] - before[me]
        got["others"] = sum(after[t] - before.get(t, 0) for t in after if t != me)

    t = threading.Thread(target=search)
    t.start()
    t.join(60)
    assert got["mine"] > 0
    assert got["others"] <= max(2, got["mine"] // 10), got
