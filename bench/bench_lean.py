"""Issue 22's lean rows, this checkout against a baseline checkout, alternating in one run.

    python bench/bench_lean.py --baseline /path/to/baseline/checkout [--quick] [--sizes 10000,100000]

- `Library.search` p50 in a warm process (a text seen before: its vector cached), on the synthetic
  indexes of bench_query.py (random-weight ViT-B-32): one text again and again, and six texts in
  turn; beside them numpy's exact scan of the same vectors (every cosine and the 10 best);
- a cold `clipsearch query --image PHOTO` of an indexed photo: wall time and peak RSS (the baseline
  loads torch and the model to embed it; this checkout uses the stored vector);
- the offline start: `clipsearch index` with a model that is not cached, HF_HUB_OFFLINE=1, to the error;
- with `--labels N`: the label cache's prompts through the index's ONNX text tower in the order the
  baseline batched them against today's (by token length), N labels of bench_tagging.py's 1,000.

Each figure runs in its own subprocess with PYTHONPATH set to one checkout, baseline and current
alternating, so both meet the same machine load; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_query
import common

HERE = Path(__file__).resolve().parent.parent
SEARCH = """
import statistics, sys, time
import numpy as np
from clipsearch import Library
from clipsearch.index.store import Store
lib = Library(sys.argv[1])
texts = ["a dog on the beach", "sunset", "a photo of my cat", "mountains in winter", "a car", "birthday cake"]
for t in texts:
    lib.search(t, top=10)
one, turn = [], []
for i in range(120):
    t = time.perf_counter(); lib.search("a dog on the beach", top=10); one.append(time.perf_counter() - t)
    text = texts[i % len(texts)]
    t = time.perf_counter(); lib.search(text, top=10); turn.append(time.perf_counter() - t)
with Store.open(lib.path) as store:
    _, vecs = store.all_vectors()
q = vecs[:2].sum(axis=0)
q /= np.linalg.norm(q)
exact = []
from threadpoolctl import threadpool_limits
with threadpool_limits(1, user_api="blas"):  # as a search's products run (blas_threads.py)
    for _ in range(120):  # the floor: every cosine in numpy (float32) and the 10 best, no relevance, no rows
        t = time.perf_counter(); s = vecs @ q; np.argpartition(-s, 10)[:10]; exact.append(time.perf_counter() - t)
print(*(statistics.median(x) * 1000 for x in (one, turn, exact)))
"""


def _env(src: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in bench_query.INSTALLED_ENV.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(src), **extra}


def search_ms(src: Path, folder: Path) -> tuple[float, float, float]:
    """p50 ms of a warm Library.search: one text again and again, six texts in turn (all seen
    before), and numpy's exact scan of the same vectors (the floor, in the same process)."""
    out = subprocess.run([sys.executable, "-c", SEARCH, str(folder)], capture_output=True, text=True,
                         env=_env(src), check=True, cwd=src)
    one, turn, exact = (float(x) for x in out.stdout.strip().splitlines()[-1].split())
    return one, turn, exact


def timed(cmd: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """(wall s, peak RSS MB) of a command, run in the checkout it imports (`python -m` puts the
    working directory first on sys.path)."""
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env=env,
                          cwd=env["PYTHONPATH"])
    wall = time.perf_counter() - t
    if proc.returncode not in ok:
        raise RuntimeError(proc.stderr[-2000:])
    return wall, float(proc.stderr.strip().splitlines()[-1]) / 1024


def image_index(model_dir: Path, n: int) -> tuple[Path, Path]:
    """An index of `n` synthetic vectors plus one real photo (its row as indexing writes it)."""
    from PIL import Image

    from clipsearch.index.records import ImageRecord
    from clipsearch.index.store import Store
    from clipsearch.index.vectors import VectorIndex
    from clipsearch.ingest.plan import fingerprint
    from clipsearch.model import names
    from clipsearch.model.identity import ModelIdentity

    folder = common.CACHE / "lean-image-index" / str(n)
    photo = folder.parent / f"photo-{n}.jpg"
    if (folder / "done").exists():
        return folder, photo
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(n)
    Image.fromarray(rng.integers(0, 255, size=(1200, 1600, 3), dtype=np.uint8)).save(photo, quality=90)
    dim = common.embed_dim(model_dir)
    spec = names.parse(f"local-dir:{model_dir}")
    store = Store.open(folder, create=True)
    store.bind_model(ModelIdentity(spec.name, dim, names.sha256_of(names.resolve_weights(spec))))
    vecs = rng.normal(size=(n + 1, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    st = photo.stat()
    rows = [ImageRecord(f"/photos/{i:07d}.jpg", 2_000_000, 1_600_000_000_000_000_000 + i, str(i), 4000, 3000, "jpeg")
            for i in range(n)]
    rows.append(ImageRecord(str(photo), st.st_size, st.st_mtime_ns, fingerprint(str(photo), st.st_size), 1600, 1200,
                            "jpeg"))
    store.write_batch(rows, vecs)
    VectorIndex.load(folder, store)
    store.close()
    (folder / "done").write_text("")
    return folder, photo


def label_order(folder: Path, count: int, rounds: int) -> dict[str, float]:
    """Seconds to embed `count` labels' prompts unsorted (the baseline's batches) and sorted by tokens."""
    import bench_tagging

    from clipsearch.model.text_tower import FOLDER, OnnxTextEncoder
    from clipsearch.tags import zero_shot

    enc = OnnxTextEncoder(folder / FOLDER)
    labels = bench_tagging.labels(1000)[:: max(1, 1000 // count)][:count]
    flat = [p for lab in labels for p in zero_shot.prompts_for(lab, zero_shot.PHOTO_TEMPLATES)]
    before, after = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        unsorted = np.concatenate([enc.embed_texts(flat[i:i + 256]) for i in range(0, len(flat), 256)])
        before.append(time.perf_counter() - t)
        t = time.perf_counter()
        zero_shot.label_vectors(labels, zero_shot.PHOTO_TEMPLATES, enc.embed_texts, enc.token_lengths)
        after.append(time.perf_counter() - t)
    del unsorted
    floor = label_floor(folder, enc, flat)
    return {"prompts": len(flat), "baseline_s": sum(before), "current_s": sum(after),
            "speedup": sum(before) / sum(after), **floor,
            "current_vs_floor": (sum(after) / rounds) / floor["floor_s"]}


def label_floor(folder: Path, enc: object, flat: list[str]) -> dict[str, float]:
    """The label cache's arithmetic floor on this machine, measured in the same run: the text
    tower's matrix FLOPs for these prompts (each cut after its end-of-text token, as the encoders
    run them) over the FP32 rate of a large matrix product on every core. No encoder at FP32 can
    beat it; only fewer FLOPs (shared template prefixes) or a faster precision can."""
    import json

    from clipsearch.model.text_tower import FOLDER

    model = json.loads((folder / FOLDER / "meta.json").read_text())["model"]  # local-dir:PATH, as bench_query builds it
    config = Path(model.split(":", 1)[1]) / "open_clip_config.json"
    cfg = json.loads(config.read_text())["model_cfg"]["text_cfg"]
    width, layers = int(cfg["width"]), int(cfg["layers"])
    tokens = int(np.asarray(enc.token_lengths(flat)).sum())  # type: ignore[attr-defined]
    # Per token and layer: q, k, v, out projections (4 W^2) and the 4x MLP (8 W^2), 2 FLOPs a MAC.
    flops = 2.0 * 12 * width * width * layers * tokens
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(5))
    rate = 2.0 * 2048 ** 3 / best
    return {"tokens": float(tokens), "gflop": flops / 1e9, "fp32_gflops": rate / 1e9, "floor_s": flops / rate}


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare with")
    ap.add_argument("--quick", action="store_true", help="2,000 photos, the tiny model, 1 round")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--labels", type=int, default=0, help="also time the label cache's batching (N labels)")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    sizes = [2_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    model_dir = common.TINY if args.quick else common.random_model("ViT-B-32")
    sources = {"baseline": args.baseline.resolve(), "current": HERE}
    rows: dict[str, object] = {}
    for n in sizes:
        folder = bench_query.index_folder(n, args.quick)
        bench_query.build_index(folder, n, model_dir)
        got: dict[str, list[tuple[float, float, float]]] = {k: [] for k in sources}
        for r in range(rounds):
            for name, src in sources.items():
                got[name].append(search_ms(src, folder))
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} / {v[-1][1]:.2f} ms" for k, v in got.items()),
                  flush=True)
        b, c = (statistics.median(x[0] for x in got[k]) for k in ("baseline", "current"))
        bt, ct = (statistics.median(x[1] for x in got[k]) for k in ("baseline", "current"))
        floor = statistics.median(x[2] for v in got.values() for x in v)
        rows[f"search_{n}"] = {"baseline_ms_p50": b, "current_ms_p50": c, "speedup": b / c,
                               "baseline_six_texts_ms_p50": bt, "current_six_texts_ms_p50": ct,
                               "six_texts_speedup": bt / ct, "numpy_exact_ms_p50": floor,
                               "rounds": {k: [list(x) for x in v] for k, v in got.items()}}
        print(f"Library.search at {n:,}: baseline {b:.2f} ms, current {c:.2f} ms p50 ({b / c:.1f}x); six texts in "
              f"turn {bt:.2f} -> {ct:.2f} ms ({bt / ct:.1f}x); numpy's exact scan {floor:.2f} ms", flush=True)
    folder, photo = image_index(model_dir, 2_000 if args.quick else 10_000)
    cmd = [sys.executable, "-m", "clipsearch", "query", "--image", str(photo), "--index", str(folder), "-n", "5",
           "-f", "paths", "--min-score", "-1"]
    img: dict[str, list[tuple[float, float]]] = {k: [] for k in sources}
    for src in sources.values():
        timed(cmd, _env(src))  # bytecode and page cache warm, as on a used machine
    for _ in range(rounds):
        for name, src in sources.items():
            img[name].append(timed(cmd, _env(src)))
    b, c = (statistics.median(w for w, _ in img[k]) for k in ("baseline", "current"))
    rb, rc = (max(r for _, r in img[k]) for k in ("baseline", "current"))
    rows["query_image_indexed"] = {"baseline_s": b, "current_s": c, "speedup": b / c, "baseline_peak_mb": rb,
                                   "current_peak_mb": rc}
    print(f"cold query --image (indexed photo): baseline {b:.2f} s {rb:.0f} MB, current {c:.2f} s {rc:.0f} MB "
          f"({b / c:.1f}x)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        shutil.copyfile(photo, photos / "a.jpg")
        off = [sys.executable, "-m", "clipsearch", "index", str(photos), "--index", str(Path(tmp) / "index"),
               "--model", "ViT-B-32-256:datacomp_s34b_b86k"]
        env = _env(HERE, HF_HUB_OFFLINE="1", HF_HOME=str(Path(tmp) / "hf"), CLIPSEARCH_HOME=str(Path(tmp) / "home"))
        walls = [timed(off, env, ok=(4,))[0] for _ in range(rounds)]
    rows["offline_start_s"] = statistics.median(walls)
    print(f"offline start with an uncached model, to the error: {rows['offline_start_s']:.2f} s (current)")
    if args.labels:
        folder = bench_query.index_folder(sizes[-1], args.quick)
        rows["label_order"] = got_labels = label_order(folder, args.labels, min(rounds, 2))
        print(f"label cache, {got_labels['prompts']} prompts: baseline order {got_labels['baseline_s']:.1f} s, "
              f"by token length {got_labels['current_s']:.1f} s ({got_labels['speedup']:.2f}x); FP32 floor "
              f"{got_labels['floor_s']:.1f} s a run ({got_labels['gflop']:.0f} GFLOP at "
              f"{got_labels['fp32_gflops']:.0f} GFLOP/s), a run {got_labels['current_vs_floor']:.1f}x it")
    print(f"results: {common.save('lean' + ('-quick' if args.quick else ''), {'rows': rows})}")


if __name__ == "__main__":
    main()
