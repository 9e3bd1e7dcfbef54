"""Multilingual queries: tokenizer cost and the cold query, against today's English path in the same run.

    python bench/bench_multilingual.py [--quick]
    python bench/bench_multilingual.py --families [NAME ...]   # each family's towers, random weights

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
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "fixtures"))
import common

# Each catalogued family's towers, built with random weights from open_clip's own configs (nothing is
# downloaded). Hugging Face text towers get their hub config.json values written locally: xlm-roberta-base
# and -large, nllb-200-distilled-600M and -1.3B (M2M100 encoders). Families sharing a tower share a row.
IMAGE_TOWERS = {"ViT-B-32": "ViT-B-32", "ViT-H-14": "xlm-roberta-large-ViT-H-14",
                "SigLIP-B-16-384": "nllb-clip-base-siglip", "SigLIP-SO400M-384": "nllb-clip-large-siglip",
                "SigLIP-B-16-256": "ViT-B-16-SigLIP-i18n-256"}
TEXT_TOWERS = {"ViT-B-32": "ViT-B-32", "xlm-roberta-base": "xlm-roberta-base-ViT-B-32",
               "xlm-roberta-large": "xlm-roberta-large-ViT-H-14", "nllb-600M": "nllb-clip-base",
               "nllb-1.3B": "nllb-clip-large", "SigLIP-i18n": "ViT-B-16-SigLIP-i18n-256"}
XLMR = {"vocab_size": 250002, "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1,
        "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5}
HF_CONFIGS = {
    "xlm-roberta-base": ("XLMRobertaConfig", {**XLMR, "hidden_size": 768, "num_hidden_layers": 12,
                                              "num_attention_heads": 12, "intermediate_size": 3072}),
    "xlm-roberta-large": ("XLMRobertaConfig", {**XLMR, "hidden_size": 1024, "num_hidden_layers": 24,
                                               "num_attention_heads": 16, "intermediate_size": 4096}),
    "nllb-600M": ("M2M100Config", {"vocab_size": 256206, "d_model": 1024, "encoder_layers": 12, "decoder_layers": 1,
                                   "encoder_attention_heads": 16, "encoder_ffn_dim": 4096, "scale_embedding": True,
                                   "max_position_embeddings": 1024, "pad_token_id": 1}),
    "nllb-1.3B": ("M2M100Config", {"vocab_size": 256206, "d_model": 1024, "encoder_layers": 24, "decoder_layers": 1,
                                   "encoder_attention_heads": 16, "encoder_ffn_dim": 8192, "scale_embedding": True,
                                   "max_position_embeddings": 1024, "pad_token_id": 1}),
}

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
        common.wait_for_exports(home / "index")  # the queries below are timed on the exported tower
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


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call allocation and kernel selection
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return 1000 * statistics.median(runs)


def _text_tower(name: str, family: str, scratch: Path) -> tuple[Any, Any]:
    """(tower, token ids of one short query padded as open_clip's tokenizer pads it)."""
    import open_clip
    import torch

    cfg = open_clip.get_model_config(family)
    text_cfg = dict(cfg["text_cfg"])
    if name in HF_CONFIGS:
        import transformers

        cls, values = HF_CONFIGS[name]
        getattr(transformers, cls)(**values).save_pretrained(scratch / name)
        text_cfg.update({"hf_model_name": str(scratch / name), "hf_model_pretrained": False})
        length, vocab, pad = 77, values["vocab_size"], 1
    else:
        length, vocab, pad = text_cfg.get("context_length", 77), text_cfg.get("vocab_size", 49408), 0
    tower = open_clip.model._build_text_tower(cfg["embed_dim"], text_cfg).eval()
    ids = torch.full((1, length), pad, dtype=torch.long)
    ids[0, :8] = torch.randint(3, vocab, (8,))  # a query of ~8 tokens ("귀여운 우리 강아지")
    return tower, ids


def family_speeds(which: list[str], repeats: int) -> dict[str, Any]:
    """ms per photo (batch 4) and per query (torch, batch 1) for each tower. ViT-B-32's towers stay built
    and are timed just before and after every other tower: each ratio is against that tower's own
    neighbouring baseline (their mean), so the shared machine's drift cancels."""
    import tempfile

    import open_clip
    import torch

    torch.manual_seed(0)
    out: dict[str, Any] = {"image_ms_per_photo": {}, "text_ms_per_query_torch": {}, "image_ratio": {},
                           "text_ratio": {}, "params_m": {}}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        def image(family: str) -> Callable[[], object]:
            cfg = open_clip.get_model_config(family)
            tower = open_clip.model._build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"]).eval()
            size = cfg["vision_cfg"]["image_size"]
            out["params_m"][family] = round(sum(p.numel() for p in tower.parameters()) / 1e6)
            return partial(tower, torch.randn(4, 3, size, size))

        def text(name: str, family: str) -> Callable[[], object]:
            tower, ids = _text_tower(name, family, Path(tmp))
            out["params_m"][f"text:{name}"] = round(sum(p.numel() for p in tower.parameters()) / 1e6)
            return partial(tower, ids)

        kinds = [("image_ms_per_photo", "image_ratio", IMAGE_TOWERS, image(IMAGE_TOWERS["ViT-B-32"]), 4),
                 ("text_ms_per_query_torch", "text_ratio", TEXT_TOWERS, text("ViT-B-32", "ViT-B-32"), 1)]
        for key, ratio_key, towers, baseline, per in kinds:
            for name, family in towers.items():
                if name == "ViT-B-32" or (which and name not in which):
                    continue
                run = image(family) if per == 4 else text(name, family)
                before = _median_ms(baseline, repeats) / per
                took = _median_ms(run, repeats) / per
                after = _median_ms(baseline, repeats) / per
                run = None  # freed before the next (larger) tower is built
                out[key][name] = round(took, 1)
                out[key].setdefault("ViT-B-32", []).extend([round(before, 1), round(after, 1)])
                out[ratio_key][name] = round(took / ((before + after) / 2), 2)
                print(key, name, out[key][name], "ratio", out[ratio_key][name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--families", nargs="*", metavar="TOWER",
                    help=f"time the families' towers instead (default all): {', '.join({*IMAGE_TOWERS, *TEXT_TOWERS})}")
    args = ap.parse_args()
    if args.families is not None:
        speeds = family_speeds(args.families, 2 if args.quick else 3)
        print(json.dumps(speeds, indent=1))
        common.save("multilingual-families", {"families": speeds})
        return
    repeats = 2 if args.quick else 7
    payload = {"machine": common.machine(), "tokenizer": tokenizer_costs(repeats), "cold_query": cold_queries(repeats)}
    print(payload["tokenizer"], payload["cold_query"], flush=True)
    common.save("multilingual-quick" if args.quick else "multilingual", payload)


if __name__ == "__main__":
    main()
