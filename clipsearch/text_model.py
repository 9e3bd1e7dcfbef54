"""The text tower exported to ONNX, so a text query needs neither torch nor open_clip.

Importing torch and open_clip costs ~4 s of a cold query's ~5 s. When an indexing run has the model
loaded anyway, its text tower is exported next to the index (`text-model/`: the graph, its fp32
weights in a file beside it, the BPE vocabulary, meta.json), verified against plain open_clip at
fp32 on a set of prompts (cosine >= 0.9995, else it is not used), and the query path runs it with
ONNX Runtime and the torch-free tokenizer. Tokens are cut after the end-of-text token, as in
embedder.py (identical result, a fraction of the work).

The weights stay fp32 (issue 15, docs/fidelity.md): int8 dynamic quantisation moved query vectors
to cosine 0.9988 of open_clip, cost 14 % of top-10 agreement on crowded rankings and made a text's
vector depend on its batch, and every weight-only or per-channel variant ranked worse or ran
slower. Kept in a separate file that ONNX Runtime memory-maps, the fp32 weights load as fast as
int8 ones did (no parse, no copy); they take 4x the disk (153 MB for ViT-B-32).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.tokenizer import VOCAB_NAME, Tokenizer

FOLDER = "text-model"
TABLE_NAME = "token_embedding.npy"
MIN_COSINE = 0.9995  # issue 15: query vectors within 0.9995 of open_clip fp32
REFERENCE = "open_clip fp32"
CHECK_PROMPTS = [
    "a photo of a dog", "a red circle", "my cute cat sleeping on the sofa", "sunset over the sea, long exposure",
    "Café crème brûlée 🍮", "a screenshot of a receipt", "two people hiking in the mountains in winter",
    "日本の桜", "a blurry photo", "x", "a very long caption " * 12,
]


def available(index_dir: Path, weights_sha256: str) -> bool:
    """True when index_dir holds a verified text model of exactly this model's weights."""
    try:
        meta = json.loads((index_dir / FOLDER / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    # Exports from before issue 15 (int8, checked against the bf16-cast model) do not count: the next
    # indexing run replaces them, queries meanwhile take the torch path.
    return bool(meta.get("weights_sha256") == weights_sha256 and meta.get("verified_min_cosine")
                and meta.get("reference") == REFERENCE)


class OnnxTextEncoder:
    """Texts -> normalised float32 vectors with ONNX Runtime; no torch anywhere."""

    def __init__(self, folder: Path, file: str | None = None, preoptimized: bool | None = None) -> None:
        """`file` and `preoptimized` default to what meta.json records (export tries others)."""
        import onnxruntime as ort

        meta = json.loads((folder / "meta.json").read_text())
        self.tokenizer = Tokenizer(folder / VOCAB_NAME, int(meta["context_length"]), cache_tables=True)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle worker threads spin by default, burning the core the rest of a query needs (measured:
        # session + one encode 0.16 s CPU with spinning, 0.08 s without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if meta.get("preoptimized") if preoptimized is None else preoptimized:
            # Optimised once at export (see _preoptimize): loading then skips the graph rewrite and the
            # weight pre-packing, 0.25 s -> 0.06 s of a cold query, for 5 ms more on one encode.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.add_session_config_entry("session.disable_prepacking", "1")
        model = folder / (file or meta.get("file", "model.onnx"))
        # The token table lives outside the graph, memory-mapped: a query reads the rows of its own
        # tokens, not 25 million weights (see export). Older exports have it inside the graph.
        self.table = (np.load(folder / TABLE_NAME, mmap_mode="r") if meta.get("inputs") == "embedded" else None)
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts)
        length = int(tokens.argmax(axis=1).max()) + 1  # the end token has the highest id
        tokens = tokens[:, :length]
        feeds = {"tokens": tokens}
        if self.table is not None:
            feeds["embedded"] = np.asarray(self.table[tokens], dtype=np.float32)
        (out,) = self.session.run(None, feeds)
        out = np.asarray(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def load_in_background(folder: Path) -> Callable[[], OnnxTextEncoder]:
    """Start loading the encoder on a thread; calling the result waits for it (re-raising its error).

    ONNX Runtime builds its session without holding the GIL, so a query loads the FAISS index and
    the text tower at the same time.
    """
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["encoder"] = OnnxTextEncoder(folder)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
            box["error"] = exc

    thread = threading.Thread(target=work, name="clipsearch-text-model", daemon=True)
    thread.start()

    def wait() -> OnnxTextEncoder:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["encoder"]

    return wait


def export(embedder: Any, index_dir: Path, backdrop: np.ndarray | None = None) -> bool:
    """Export and verify the text tower of a loaded Embedder; False when the model is not eligible.

    `backdrop` (some of the index's vectors) is accepted and unused since the weights stay fp32:
    there is no quantised variant left to judge by its rankings (issue 15).
    """
    import open_clip
    import torch

    tok = embedder.tokenizer
    model = embedder.model
    if (not isinstance(tok, open_clip.tokenizer.SimpleTokenizer) or tok.reduction_fn is not None
            or tok.clean_fn is not open_clip.tokenizer._clean_lower or not isinstance(model, open_clip.model.CLIP)
            or getattr(model, "text_pool_type", "") != "argmax" or getattr(model, "attn_mask", None) is None):
        return False  # other tokenizers and towers keep the torch path
    fp32 = _fp32_model(embedder)
    tmp = index_dir / f".{FOLDER}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta: dict[str, Any] = {"weights_sha256": embedder.identity.weights_sha256, "model": embedder.identity.name}
        _write_fp32(fp32, tok, tmp, meta)
        with torch.no_grad():
            # The reference is open_clip itself at fp32 (all 77 tokens, no cut), not the Embedder's
            # bf16-cast model: the recorded cosine is what a query really loses (issue 15).
            ref = torch.nn.functional.normalize(fp32.encode_text(tok(CHECK_PROMPTS)).float(), dim=-1)
        meta["file"] = "model.onnx"
        meta.update(_preoptimize(tmp, "model.onnx"))
        (tmp / "meta.json").write_text(json.dumps(meta))
        got = OnnxTextEncoder(tmp).embed_texts(CHECK_PROMPTS)  # the files a query will load
        meta.update({"verified_min_cosine": float(np.min(np.sum(ref.numpy() * got, axis=1))),
                     "reference": REFERENCE, "precision": "fp32"})
        if meta["verified_min_cosine"] < MIN_COSINE:
            return False
        (tmp / "meta.json").write_text(json.dumps(meta))
        remove(index_dir)
        os.replace(tmp, index_dir / FOLDER)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fp32_model(embedder: Any) -> Any:
    """The Embedder's model with its weights as stored (fp32, on the CPU), for export and reference.

    A bf16 or fp16 Embedder has rounded its weights; casting back to fp32 keeps the rounding, so
    the model is loaded again from the weights file.
    """
    import copy

    from clipsearch.embedder import _load

    if getattr(embedder, "precision", "fp32") == "fp32":
        return copy.deepcopy(embedder.model).float().cpu().eval()
    return _load(embedder.spec, embedder.weights_path, "cpu")[0].float().eval()


def _write_fp32(fp32: Any, tok: Any, folder: Path, meta: dict[str, Any]) -> None:
    """The fp32 graph (model.onnx, weights in model.onnx.data), the float16 token table, the
    vocabulary and meta.json, in folder."""
    import open_clip
    import torch

    # Batch 3 and length 8: sizes of 1 can be folded into the traced graph as constants.
    sample = tok(["a photo of a dog", "a red circle", "two people on a beach at sunset"])[:, :8]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes would land in the user's terminal
        batch, length = torch.export.Dim("batch", max=4096), torch.export.Dim("length", min=2,
                                                                               max=int(tok.context_length))
        embedded = fp32.token_embedding(sample)
        torch.onnx.export(_text_tower(fp32), (embedded, sample), str(folder / "model.onnx"),
                          input_names=["embedded", "tokens"], output_names=["features"],
                          dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
                          dynamo=True, external_data=True, verbose=False)
    # The token table (49,408 x width: 25 M weights for ViT-B-32, 40 % of the tower) is kept out
    # of the graph as float16, memory-mapped at query time: loading the session is that much
    # lighter, and no query dequantises a whole table to read a dozen rows of it.
    np.save(folder / TABLE_NAME, fp32.token_embedding.weight.detach().numpy().astype(np.float16))
    shutil.copyfile(Path(open_clip.tokenizer.default_bpe()), folder / VOCAB_NAME)
    meta.update({"context_length": int(tok.context_length), "inputs": "embedded"})
    (folder / "meta.json").write_text(json.dumps(meta))


def _preoptimize(folder: Path, file: str) -> dict[str, Any]:
    """Save the model with ONNX Runtime's graph optimisations applied, if it answers the same.

    EXTENDED, not ALL: the ALL level adds layout rewrites for this very CPU, and an index folder may
    move to another machine. Kept only when every check prompt stays within cosine 0.9999. The
    weights go to a file of their own, which a session memory-maps instead of parsing and copying
    them: 0.4-0.6 s -> 0.02 s to load ViT-B-32's fp32 text tower (bench/bench_text_precision.py).
    """
    import onnxruntime as ort

    target = folder / file.replace(".onnx", ".opt.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     target.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])
    before = OnnxTextEncoder(folder, file, preoptimized=False).embed_texts(CHECK_PROMPTS)
    after = OnnxTextEncoder(folder, target.name, preoptimized=True).embed_texts(CHECK_PROMPTS)
    if float(np.min(np.sum(before * after, axis=1))) < 0.9999:
        target.unlink(missing_ok=True)
        (folder / (target.name + ".data")).unlink(missing_ok=True)
        return {}
    (folder / file).unlink()
    (folder / (file + ".data")).unlink(missing_ok=True)
    return {"file": target.name, "preoptimized": True}


def remove(index_dir: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(index_dir / FOLDER)


def _text_tower(model: Any) -> Any:
    """The text tower after the token lookup, as a module for torch.onnx.export.

    Inputs: the tokens' embeddings (looked up outside the graph) and the tokens themselves (the
    end token's position picks the output): embedder.encode_embedded, traced.
    """
    import torch

    from clipsearch.embedder import encode_embedded

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, embedded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            return encode_embedded(self.model, embedded, tokens)

    return TextTower().eval()
