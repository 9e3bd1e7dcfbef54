"""Decode pool sizing from measured rates (pool_size.py), on simulated machines."""

from __future__ import annotations

import threading
import time

import pytest

from clipsearch.ingest import pool_size


@pytest.mark.parametrize(("cores", "device", "decode_s", "model_s", "want"), [
    # 2 cores, CPU model: decoding shares the cores with the model, as before (never more than 2).
    (2, "cpu", 0.060, 0.050, 2),
    (2, "cpu", 0.010, 0.050, 1),  # small photos decode 5x faster than the model eats: one is plenty
    # 64 cores, CPU model at 300 photos/s, 12 MP photos at 40 ms each: 15 at once, not 8.
    (64, "cpu", 0.040, 1 / 300, 15),
    # 64 cores and a GPU at 2,000 photos/s: all 63 cores the model leaves free, not 8.
    (64, "cuda", 0.040, 1 / 2000, 63),
    (16, "cuda", 0.040, 1 / 2000, 15),
    # A GPU with phone photos at 5 ms: 13 decoders keep 2,000/s fed, the other cores stay idle.
    (64, "cuda:1", 0.005, 1 / 2000, 13),
    (1, "cuda", 0.040, 0.001, 1),  # one core: at least one decoder
    (8, "mps", 0.040, 0.0, 7),  # a model too fast to time: every free core
])
def test_decode_workers_keep_the_model_fed_within_free_cores(cores: int, device: str, decode_s: float,
                                                              model_s: float, want: int) -> None:
    assert pool_size.decode_workers(cores, device, decode_s, model_s) == want


def test_the_start_guess_is_the_old_size_within_free_cores() -> None:
    assert pool_size.start_workers(2, "cpu") == 2
    assert pool_size.start_workers(64, "cpu") == 8
    assert pool_size.start_workers(4, "cuda") == 3
    assert pool_size.upper_bound(64, "cpu") == 64 and pool_size.upper_bound(64, "cuda") == 63


def test_gate_limits_concurrency_and_can_grow_while_running() -> None:
    gate = pool_size.Gate(2)
    running, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        with gate.slot():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2
    gate.set(6)
    peak[0] = 0
    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 2 < peak[0] <= 6
