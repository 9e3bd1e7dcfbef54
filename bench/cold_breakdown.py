"""One cold text query, stage by stage, in a fresh process (run by bench_query.py; prints JSON).

    python bench/cold_breakdown.py INDEX "query text"
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


from clipsearch import cli, render  # noqa: E402 - importing is the first stage measured

mark("imports")
from pathlib import Path  # noqa: E402

from clipsearch import search, text_model  # noqa: E402
from clipsearch.library import Library  # noqa: E402

lib = Library(sys.argv[1])
store, index = lib._open_for_search()
mark("open index (SQLite + FAISS)")
recorded = store.model_identity()
assert recorded is not None and text_model.available(Path(sys.argv[1]), recorded.weights_sha256)
encoder = text_model.OnnxTextEncoder(Path(sys.argv[1]) / text_model.FOLDER)
mark("load tokenizer + text tower")
vec = encoder.embed_texts([sys.argv[2]])[0]
mark("encode text")
ranking = search.rank(store, index, vec, 20, min_score=-1)
mark("search + metadata")
text = render.results_paths(ranking.results)
mark("render")
assert cli is not None and text
print(json.dumps(stages))
