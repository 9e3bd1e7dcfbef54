"""The label cache's prefix graph on OpenVINO in bf16 (the optional `openvino` extra; no torch).

What prefix_tower.py hands over when the CPU has native bf16: batches of prompt suffixes, each
against one template prefix's cached keys and values, to be run as fast as the cores allow.
Measured on 2 cores of an AMD EPYC with AVX512-BF16 and no AMX (docs/benchmarks.md, "Label cache"):

- Two streams of one thread, two batches in flight (PERFORMANCE_HINT THROUGHPUT, infer
  requests taken in turn), not one request on two threads: a batch's products are too small to split
  without the threads waiting on each other, and a core taken by another process then stalls
  only its own stream. Python prepares the next batch while both run.
- Only `features` is computed: the graph's `present` output (a prefix's keys and values) is
  dropped from the compiled model, as prefix_tower computes prefixes in fp32 on ONNX Runtime.
- The compiled model is cached (OpenVINO's CACHE_DIR, in openvino_tower.cache_dir()), and so is
  the self-check's verdict, keyed by everything that could change it (OpenVINO's version, the CPU's
  flags, the export's meta.json), as openvino_tower does for the image tower.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.model import cpu
from clipsearch.model.openvino_tower import cache_dir, ov

CONFIG = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "THROUGHPUT"}

Feeds = dict[str, np.ndarray]


class Runner:
    """The prefix graph compiled for bf16 batches; `run` takes many batches at once."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        """`meta`: meta.json's "prefix" entry."""
        self.folder, self.meta = folder, meta
        self.cache = _writable(cache_dir())
        core = ov.Core()
        model = core.read_model(str(folder / meta["file"]))
        at = next((i for i, out in enumerate(model.outputs) if "features" in out.get_names()), 0)
        model = ov.Model([model.get_results()[at]], model.get_parameters(), "prefix")
        config = dict(CONFIG, CACHE_DIR=str(self.cache)) if self.cache is not None else dict(CONFIG)
        self.compiled = core.compile_model(model, "CPU", config)
        self.requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def run(self, batches: Iterable[tuple[Any, Callable[[], Feeds]]], done: Callable[[Any, np.ndarray], None]) -> None:
        """Each batch's feeds (made only when a request can take them, so making the next one
        overlaps the running ones) through the graph; `done(key, features)` as each finishes.

        Plain infer requests taken in turn, not an AsyncInferQueue with a Python callback: that
        callback runs in OpenVINO's stream threads and needs the GIL, and a stream thread still
        waiting for it when the compiled model is destroyed (by a thread that holds the GIL, joining
        the stream threads) deadlocked the process (the self-check's runner, dropped right after)."""
        requests = [self.compiled.create_infer_request() for _ in range(self.requests)]
        pending: list[Any] = [None] * len(requests)  # each request's batch key while it runs

        def collect(i: int) -> None:
            requests[i].wait()  # releases the GIL
            key, pending[i] = pending[i], None
            done(key, np.array(requests[i].get_output_tensor(0).data, dtype=np.float32))

        for n, (key, feeds) in enumerate(batches):
            i = n % len(requests)
            if pending[i] is not None:
                collect(i)
            requests[i].start_async(feeds())
            pending[i] = key
        for i in range(len(requests)):
            if pending[i] is not None:
                collect(i)


def verdict(folder: Path, meta: dict[str, Any]) -> float | None:
    """The self-check's cosine recorded for this graph, CPU and OpenVINO, or None. Read before
    anything is compiled, so a graph that failed its check on this CPU is never compiled again."""
    path = _verdict_path(folder, meta)
    if path is None:
        return None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return float(json.loads(path.read_text())["min_cosine"])
    return None


def record(folder: Path, meta: dict[str, Any], cosine: float) -> None:
    path = _verdict_path(folder, meta)
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps({"min_cosine": cosine, "precision": "bf16", "openvino": ov.__version__}))
        os.replace(tmp, path)


def _verdict_path(folder: Path, meta: dict[str, Any]) -> Path | None:
    cache = _writable(cache_dir())
    if cache is None:
        return None
    h = hashlib.sha256(f"{ov.__version__}|prefix|bf16|{' '.join(sorted(cpu.flags()))}|".encode())
    h.update(json.dumps(meta, sort_keys=True).encode())
    with contextlib.suppress(OSError):
        h.update((folder / "meta.json").read_bytes())
    return cache / f"check-prefix-{h.hexdigest()[:32]}.json"


def _writable(folder: Path) -> Path | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile and check every time
    return folder
