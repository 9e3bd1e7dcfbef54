"""One BLAS thread inside a search, and the old count back when the last search leaves."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from clipsearch import blas_threads


def _count() -> set[int]:
    """The thread count the calling thread gets from NumPy's BLAS (other BLAS libraries loaded by
    other tests, e.g. SciPy's own, are not what searches use)."""
    return {lib["num_threads"] for lib in threadpool_info() if lib["filepath"] in blas_threads._paths}


@pytest.fixture
def two_threads():
    """Two BLAS threads to start from, set as single() sets them (the process-wide setter is
    ignored after another thread set the count: see blas_threads.py)."""
    setters = blas_threads._thread_setters()
    if not setters:
        pytest.skip("NumPy's BLAS has no per-thread setter threadpoolctl can reach")
    before = [set_threads(2) for set_threads in setters]
    yield
    for set_threads, count in zip(setters, before, strict=True):
        set_threads(count)


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
    seen: dict[str, set[int]] = {}

    def search() -> None:
        with blas_threads.single():
            inside.set()
            release.wait(10)
            seen["other"] = _count()

    t = threading.Thread(target=search)
    t.start()
    assert inside.wait(10)
    with blas_threads.single():
        seen["mine"] = _count()
    release.set()
    t.join(10)
    assert seen == {"mine": {1}, "other": {1}}  # neither search lost its one thread to the other's exit
    assert _count() == {2}


def test_an_exception_in_the_block_still_restores(two_threads) -> None:
    with pytest.raises(RuntimeError), blas_threads.single():
        raise RuntimeError("boom")
    assert _count() == {2}


_WORKERS_IDLE = """
import os, sys, threading
from pathlib import Path
import numpy as np
from clipsearch import blas_threads

def ticks():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        out[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return out

a = np.random.default_rng(0).random((1200, 1200))
a @ a  # BLAS's worker threads exist from here on
got = {}

def search(use_single):
    me = str(threading.get_native_id())
    ctx = blas_threads.single() if use_single else open(os.devnull)
    with ctx:
        before = ticks()
        for _ in range(6):
            a @ a
        after = ticks()
    got[use_single] = (after[me] - before[me], sum(after[t] - before.get(t, 0) for t in after if t != me))

import time
for use_single in (False, True):
    time.sleep(1.0)  # idle BLAS workers spin a while after a product: let that end first
    t = threading.Thread(target=search, args=(use_single,))
    t.start()
    t.join(60)
print(got[False][0], got[False][1], got[True][0], got[True][1])
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread CPU times come from Linux's /proc")
def test_blas_workers_stay_idle_inside_a_search_thread(tmp_path: Path) -> None:
    """What the setting is for: the product runs on the calling thread and BLAS's workers do
    nothing (the process-wide setter, called from such a thread, left them computing). In a
    fresh process with two BLAS threads, so that no other test's threads are counted."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env.update({"OPENBLAS_NUM_THREADS": "2", "PYTHONPATH": str(Path(__file__).parent.parent)})
    out = subprocess.run([sys.executable, "-c", _WORKERS_IDLE], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    _, others_default, mine_single, others_single = map(int, out.stdout.split())
    if others_default == 0:
        pytest.skip("this BLAS ran the products on one thread anyway: nothing to show")
    assert mine_single > 0
    assert others_single <= max(2, mine_single // 10), out.stdout  # without single(): others_default
