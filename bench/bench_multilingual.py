"""Multilingual queries: tokenizer cost and the cold query, against today's English path in the same run.

    python bench/bench_multilingual.py [--quick]

Both indexes hold the same 48 held-out shapes; the English one is indexed with the tiny CLIP
(CLIP BPE tokenizer port + ONNX text tower), the multilingual one with the tiny XLM-RoBERTa-style
model (Hugging Face `tokenizers` + ONNX text tower). Measured in fresh processes, so each figure
includes Python's start:
- tokenizer: import + load + first encode of one query, `tokenizers` vs the BPE port (baseline);
- cold query: `clipsearch query TEXT -n 5` in a new process, Korean on the multilingual index vs
  English on the English index (baseline). The tiny towers cost nothing to run: the ratio is what
  the multilingual path adds around the model (tokenizer, graph loading), which is the question.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "fixtures"))
import common

FIXTURES = common.ROOT.parent / "tests" / "fixtures"
MODELS = {"english": FIXTURES / "tiny-clip", "multilingual": FIXTURES / "tiny-multilingual"}
QUERIES = {"english": "a photo of a red circle", "multilingual": "빨간 원 사진"}

TOKENIZE = {
    "clip_bpe": ("import time; t = time.perf_counter()\nfrom pathlib import Path\n"
                 "from clipsearch.model.tokenizer import Tokenizer\n"
                 "Tokenizer(Path({vocab!r}), 77)(['a photo of a red circle'])\nprint(time.perf_counter() - t)"),
    "hf_tokenizers": ("import time; t = time.perf_counter()\nfrom pathlib import Path\n"
                      "from clipsearch.model.hf_tokenizer import HFTokenizer\n"
                      "HFTokenizer(Path({json!r}), 16, 1)(['빨간 원 사진'])\nprint(time.perf_counter() - t)"),
}


def _python(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=common.ROOT.parent, env={**os.environ, "PYTHONPATH": str(common.ROOT.parent)})
    return float(out.stdout.strip().splitlines()[-1])


def tokenizer_costs(repeats: int) -> dict[str, float]:
    import open_clip

    vocab, tok_json = open_clip.tokenizer.default_bpe(), str(MODELS["multilingual"] / "tokenizer.json")
    out: dict[str, float] = {}
    for name, code in TOKENIZE.items():
        runs = [_python(code.format(vocab=vocab, json=tok_json)) for _ in range(repeats)]
        out[f"{name}_ms"] = round(1000 * statistics.median(runs), 1)
    out["ratio"] = round(out["hf_tokenizers_ms"] / out["clip_bpe_ms"], 2)
    return out


def build(kind: str, photos: Path) -> Path:
    home = common.CACHE / f"multilingual-{kind}"
    if not (home / "index" / "text-model" / "meta.json").exists():
        env = {"CLIPSEARCH_HOME": str(home), "CLIPSEARCH_MODEL": f"local-dir:{MODELS[kind]}",
               "CLIPSEARCH_TEXT_MODEL": "on", "HF_HUB_OFFLINE": "1"}
        common.run_cli(["index", str(photos), "-q"], env=env)
    return home


def cold_queries(repeats: int) -> dict[str, float]:
    import shapes

    photos = common.CACHE / "multilingual-photos"
    if not photos.exists():
        shapes.write_heldout(photos, per_class=1, seed=99)
    homes = {kind: build(kind, photos) for kind in MODELS}
    times: dict[str, list[float]] = {kind: [] for kind in MODELS}
    for _ in range(repeats):  # interleaved: the shared machine's load hits both alike
        for kind, home in homes.items():
            env = {**os.environ, "CLIPSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
            env.pop("CLIPSEARCH_MODEL", None)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "clipsearch", "query", QUERIES[kind], "-n", "5", "-f", "paths",
                            "--min-score", "-1"], capture_output=True, text=True, check=True, env=env,
                           cwd=common.ROOT.parent)
            times[kind].append(time.perf_counter() - start)
    out = {f"{kind}_s": round(statistics.median(t), 3) for kind, t in times.items()}
    out["ratio"] = round(out["multilingual_s"] / out["english_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeats = 2 if args.quick else 7
    payload = {"machine": common.machine(), "tokenizer": tokenizer_costs(repeats), "cold_query": cold_queries(repeats)}
    print(payload["tokenizer"], payload["cold_query"], flush=True)
    common.save("multilingual-quick" if args.quick else "multilingual", payload)


if __name__ == "__main__":
    main()
