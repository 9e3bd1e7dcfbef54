"""One cold text query, stage by stage, in a fresh process (run by bench_query.py; prints JSON).

    python bench/cold_breakdown.py INDEX "query text"

It follows Library.query's own order: the text encoder loads on a thread while the main thread
loads FAISS, so "text encoder load (thread)" overlaps "load FAISS"; "wait for text encoder" is what
the main thread still waited for it.
"""

from __future__ import annotations

import json
import sys
import time

start = time.perf_counter()
stages: dict[str, float] = {}


def mark(name: str) -> None:
    global start
    now = time.perf_counter()
    stages[name] = now - start
    start = now


from clipsearch import cli  # noqa: E402 - importing is the first stage measured
from clipsearch.cli import render  # noqa: E402
from clipsearch.library import Library  # noqa: E402

mark("imports")
from clipsearch.index.vectors import VectorIndex  # noqa: E402
from clipsearch.model import text_tower  # noqa: E402
from clipsearch.search import query, ranking  # noqa: E402

real_init = text_tower.OnnxTextEncoder.__init__


def timed_init(self: text_tower.OnnxTextEncoder, *args: object, **kwargs: object) -> None:
    t = time.perf_counter()
    real_init(self, *args, **kwargs)  # type: ignore[arg-type]
    stages["text encoder load (thread)"] = time.perf_counter() - t


text_tower.OnnxTextEncoder.__init__ = timed_init  # type: ignore[method-assign]

lib = Library(sys.argv[1])
terms = query.parse(sys.argv[2], frozenset(), (), (), ())
with lib._open() as store:
    recorded = store.model_identity()
    assert recorded is not None
    mark("open SQLite, check the text cache")
    text_vectors = lib._text_vectors(store, recorded, terms, [], {})
    index = VectorIndex.load(lib.path, store)
    mark("load FAISS (memory-mapped)")
    t0 = time.perf_counter()
    vectors = text_vectors()
    total = time.perf_counter() - t0
    encode = total
    vec = query.combine(terms, lambda t: vectors[t.value])
    mark("wait for text encoder + encode")
    found = ranking.rank(store, index, vec, 20)
    mark("search + cutoff + metadata")
    text = render.results_paths(found.results)
    mark("render")
    assert cli is not None and text is not None
stages.setdefault("text encoder load (thread)", 0.0)
print(json.dumps(stages))
