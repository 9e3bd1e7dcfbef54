"""`clipsearch serve`: a warm server's search latency at 100k photos, and how soon --watch finds a new photo.

    python bench/bench_serve.py [--quick] [--sizes 100000]

The index is bench_query.py's (synthetic clustered vectors in a real index, ViT-B-32 random weights,
the exported text tower). Baseline in the same run and process: `Library.search` for the same text
and the same page size. **Server time** is what `/api/search` spends answering (its `server_ms`:
the query, the page of rows, the relevance line); **round trip** adds the ASGI stack, the guard and
JSON, through Starlette's in-process test client. Two workloads: a text asked before (the typing
pauses, the same words again) and a new text every time (each keystroke of search-as-you-type).

The watch figure uses the tiny model on a small folder: seconds from writing a new photo into a
watched folder to the first search that finds it (debounce, index run and query included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_query
import common

PAGE = 60


def _p50(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def warm_server(folder: Path, repeats: int) -> dict[str, float]:
    from starlette.testclient import TestClient

    from clipsearch import Library
    from clipsearch.serve import Gallery, create_app
    from clipsearch.serve.security import COOKIE

    lib = Library(folder)
    text = "a dog on the beach"
    g = Gallery(folder)
    base, server, trip, base_new, server_new, trip_new = [], [], [], [], [], []
    stamp = time.time_ns()
    with TestClient(create_app(g), base_url="http://127.0.0.1:8765") as client:
        client.cookies.set(COOKIE, g.token)
        lib.search(text, top=PAGE + 1)
        client.get("/api/search", params={"q": text, "limit": PAGE})
        # Interleaved, so both see the same machine: this one is shared and its speed drifts.
        for i in range(repeats):
            t = time.perf_counter()
            lib.search(text, top=PAGE + 1)
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            body = client.get("/api/search", params={"q": text, "limit": PAGE}).json()
            trip.append(time.perf_counter() - t)
            server.append(body["server_ms"] / 1000)
            t = time.perf_counter()
            lib.search(f"a dog on the beach {stamp} library {i}", top=PAGE + 1)
            base_new.append(time.perf_counter() - t)
            t = time.perf_counter()
            body = client.get("/api/search", params={"q": f"a dog on the beach {stamp} server {i}",
                                                     "limit": PAGE}).json()
            trip_new.append(time.perf_counter() - t)
            server_new.append(body["server_ms"] / 1000)
    return {"library_search_ms_p50": _p50(base), "server_ms_p50": _p50(server), "round_trip_ms_p50": _p50(trip),
            "library_search_new_text_ms_p50": _p50(base_new), "server_new_text_ms_p50": _p50(server_new),
            "round_trip_new_text_ms_p50": _p50(trip_new),
            "server_ratio_to_library": _p50(server) / _p50(base),
            "server_new_text_ratio_to_library": _p50(server_new) / _p50(base_new)}


def watch_latency(tries: int) -> dict[str, float]:
    """Seconds from a new photo written under a watched root to a search that returns it."""
    import tempfile

    from starlette.testclient import TestClient

    sys.path.insert(0, str(common.ROOT.parent / "tests" / "fixtures"))
    import shapes

    from clipsearch import Library
    from clipsearch.serve import Gallery, create_app
    from clipsearch.serve.security import COOKIE

    model = f"local-dir:{common.TINY}"
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        photos, index = Path(tmp) / "photos", Path(tmp) / "index"
        shapes.write_heldout(photos, per_class=1, seed=3)
        os.environ.setdefault("CLIPSEARCH_EXPORT", "inline")  # the text tower in place before the timed searches
        Library(index, model=model).index([photos])
        g = Gallery(index, model=model, watch_roots=[str(photos)])
        seconds = []
        with TestClient(create_app(g), base_url="http://127.0.0.1:8765") as client:
            client.cookies.set(COOKIE, g.token)
            g.writer.run_now("warm-up", lambda lib: lib.embedder())  # as `serve --watch` would have by now
            rng = np.random.default_rng(11)
            for i in range(tries):
                name = f"new-{i}.png"
                t = time.perf_counter()
                shapes.render(rng, "white", "star", 3, "large").save(photos / name)
                while True:
                    body = client.get("/api/search", params={"q": "three white stars", "limit": 100}).json()
                    if any(r["name"] == name for r in body["results"]):
                        break
                    if time.perf_counter() - t > 60:
                        raise RuntimeError("the watcher never indexed the new photo")
                    time.sleep(0.05)
                seconds.append(time.perf_counter() - t)
    return {"watch_to_searchable_s_p50": statistics.median(seconds), "watch_to_searchable_s_max": max(seconds),
            "watch_tries": tries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 photos, the tiny model, few repeats")
    ap.add_argument("--sizes", default="100000")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = [2_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    model_dir = common.TINY if args.quick else common.random_model("ViT-B-32")
    rows = []
    for n in sizes:
        folder = bench_query.index_folder(n, args.quick)
        bench_query.build_index(folder, n, model_dir)
        w = warm_server(folder, 10 if args.quick else 100)
        rows.append({"photos": n, "page": PAGE, **w})
        print(f"{n:>8} photos  server {w['server_ms_p50']:.2f} ms (Library.search {w['library_search_ms_p50']:.2f} "
              f"ms, {w['server_ratio_to_library']:.2f}x), round trip {w['round_trip_ms_p50']:.2f} ms; new text: server "
              f"{w['server_new_text_ms_p50']:.2f} ms (Library.search {w['library_search_new_text_ms_p50']:.2f} ms)",
              flush=True)
    watch = watch_latency(2 if args.quick else 5)
    print(f"watch: new photo searchable after {watch['watch_to_searchable_s_p50']:.2f} s p50 "
          f"(max {watch['watch_to_searchable_s_max']:.2f} s)", flush=True)
    saved = common.save("serve" + ("-quick" if args.quick else ""), {"rows": rows, "watch": watch,
                                                                      "cpu_count": os.cpu_count()})
    print(f"results: {saved}")


if __name__ == "__main__":
    main()
