"""Exporting a loaded model's text tower to ONNX at index time, verified against open_clip.

The export is what makes text queries torch-free (text_tower.py runs it). It is optional: a model
whose tokenizer or text tower is not open_clip's standard CLIP kind keeps the torch path, and a
graph that does not answer like open_clip (cosine >= 0.999 on the check prompts) is not kept.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import ClipsearchError
from clipsearch.model.identity import ModelIdentity, check_same_model
from clipsearch.model.text_tower import (
    CHECK_PROMPTS,
    FOLDER,
    MIN_COSINE,
    TABLE_NAME,
    OnnxTextEncoder,
    record_sizes,
    remove,
)
from clipsearch.model.tokenizer import VOCAB_NAME


def ensure(index_dir: Path, recorded: ModelIdentity, loaded: Any, may_load: bool, device: str | None,
           precision: str | None, backdrop: Callable[[], np.ndarray], notify: Callable[[str], None] | None) -> None:
    """Give an index without a text tower one; optional, so failures only cost query speed.

    Exported from `loaded` (the Embedder a run has already) or, with `may_load`, from the index's
    weights when they are on this machine (never a download, as merging needs no model).
    """
    emb = loaded
    if emb is None:
        if not may_load:
            return
        from clipsearch.model import names
        from clipsearch.model.embedder import Embedder

        try:
            emb = Embedder(names.parse(recorded.name), device, precision, download=False)
            check_same_model(recorded, emb.identity)
        except ClipsearchError:
            return
    if notify is not None:
        notify("preparing the text encoder that makes queries fast (once per index)")
    try:
        export(emb, index_dir, backdrop())
    except Exception:  # noqa: BLE001 - an exporter or runtime gap must never fail an indexing run
        remove(index_dir)


def export(embedder: Any, index_dir: Path, backdrop: np.ndarray | None = None) -> bool:
    """Export and verify the text tower of a loaded Embedder; False when the model is not eligible.

    `backdrop` (some of the index's vectors) lets the int8 variant be judged by what users see:
    whether the same photos come back for the check prompts.
    """
    import copy

    import open_clip
    import torch

    from clipsearch.model.embedder import encode_texts, has_standard_text_tower

    tok = embedder.tokenizer
    model = embedder.model
    if (not isinstance(tok, open_clip.tokenizer.SimpleTokenizer) or tok.reduction_fn is not None
            or tok.clean_fn is not open_clip.tokenizer._clean_lower or not has_standard_text_tower(model)):
        return False  # other tokenizers and towers keep the torch path (the tokenizer port is CLIP's BPE)
    fp32 = copy.deepcopy(model).float().eval()
    tmp = index_dir / f".{FOLDER}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # Batch 3 and length 8: sizes of 1 can be folded into the traced graph as constants.
        sample = tok(["a photo of a dog", "a red circle", "two people on a beach at sunset"])[:, :8]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes would land in the user's terminal
            batch, length = torch.export.Dim("batch", max=4096), torch.export.Dim("length", min=2,
                                                                                   max=int(tok.context_length))
            embedded = fp32.token_embedding(sample)
            torch.onnx.export(_text_tower(fp32), (embedded, sample), str(tmp / "model.onnx"),
                              input_names=["embedded", "tokens"], output_names=["features"],
                              dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
                              dynamo=True, external_data=False, verbose=False)
            ref = torch.nn.functional.normalize(encode_texts(fp32, tok(CHECK_PROMPTS)).float(), dim=-1)
        # The token table (49,408 x width: 25 M weights for ViT-B-32, 40 % of the tower) is kept out
        # of the graph as float16, memory-mapped at query time: loading the session is that much
        # lighter, and no query dequantises a whole table to read a dozen rows of it.
        np.save(tmp / TABLE_NAME, fp32.token_embedding.weight.detach().numpy().astype(np.float16))
        shutil.copyfile(Path(open_clip.tokenizer.default_bpe()), tmp / VOCAB_NAME)
        meta: dict[str, Any] = {"weights_sha256": embedder.identity.weights_sha256, "model": embedder.identity.name,
                                "context_length": int(tok.context_length), "inputs": "embedded"}
        (tmp / "meta.json").write_text(json.dumps(meta))
        got = OnnxTextEncoder(tmp).embed_texts(CHECK_PROMPTS)
        meta["verified_min_cosine"] = float(np.min(np.sum(ref.numpy() * got, axis=1)))
        if meta["verified_min_cosine"] < MIN_COSINE:
            return False
        meta.update(_choose_int8(tmp, got, backdrop))
        (tmp / ("model.onnx" if meta["file"] != "model.onnx" else "model.int8.onnx")).unlink(missing_ok=True)
        meta.update(_preoptimize(tmp, meta["file"]))
        (tmp / "meta.json").write_text(json.dumps(record_sizes(tmp, meta)))
        remove(index_dir)
        os.replace(tmp, index_dir / FOLDER)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


INT8_MIN_COSINE = 0.995
INT8_MIN_OVERLAP = 0.9


def _choose_int8(folder: Path, fp32: np.ndarray, backdrop: np.ndarray | None) -> dict[str, Any]:
    """Quantise the weights to int8 (4x smaller, ~5x faster to load) if rankings stay the same.

    Kept only when every check prompt stays within cosine 0.995 of fp32 and, measured on the index's
    own vectors, the top 10 photos of each prompt overlap by 90 % on average.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # the quantiser logs advice to the root logger: noise in a terminal
    try:
        quantize_dynamic(str(folder / "model.onnx"), str(folder / "model.int8.onnx"), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    int8 = OnnxTextEncoder(folder, "model.int8.onnx").embed_texts(CHECK_PROMPTS)
    result: dict[str, Any] = {"int8_min_cosine": float(np.min(np.sum(fp32 * int8, axis=1)))}
    ok = result["int8_min_cosine"] >= INT8_MIN_COSINE
    if backdrop is not None and len(backdrop) >= 20:
        k = 10
        top_a = np.argsort(-(backdrop @ fp32.T), axis=0)[:k].T
        top_b = np.argsort(-(backdrop @ int8.T), axis=0)[:k].T
        result["int8_overlap_at_10"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_a, top_b,
                                                                                               strict=True)]))
        ok = ok and result["int8_overlap_at_10"] >= INT8_MIN_OVERLAP
    result["file"] = "model.int8.onnx" if ok else "model.onnx"
    return result


def _preoptimize(folder: Path, file: str) -> dict[str, Any]:
    """Save the chosen model with ONNX Runtime's graph optimisations applied, if it answers the same.

    EXTENDED, not ALL: the ALL level adds layout rewrites for this very CPU, and an index folder may
    move to another machine. Kept only when every check prompt stays within cosine 0.9999.
    """
    import onnxruntime as ort

    target = folder / file.replace(".onnx", ".opt.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])
    before = OnnxTextEncoder(folder, file, preoptimized=False).embed_texts(CHECK_PROMPTS)
    after = OnnxTextEncoder(folder, target.name, preoptimized=True).embed_texts(CHECK_PROMPTS)
    if float(np.min(np.sum(before * after, axis=1))) < 0.9999:
        target.unlink(missing_ok=True)
        return {}
    (folder / file).unlink()
    return {"file": target.name, "preoptimized": True}


def _text_tower(model: Any) -> Any:
    """The text tower after the token lookup, as a module for torch.onnx.export.

    Inputs: the tokens' embeddings (looked up outside the graph) and the tokens themselves (the
    end token's position picks the output): embedder.encode_embedded, traced.
    """
    import torch

    from clipsearch.model.embedder import encode_embedded

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, embedded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            return encode_embedded(self.model, embedded, tokens)

    return TextTower().eval()
