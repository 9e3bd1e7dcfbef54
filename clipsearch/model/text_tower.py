"""The text tower in ONNX at query time, so a text query needs neither torch nor open_clip.

Importing torch and open_clip costs ~4 s of a cold query's ~5 s. An indexing run exports the text
tower next to the index (text_export.py: `text-model/` holds the graph, the token table, the BPE
vocabulary and meta.json); queries run it here with ONNX Runtime and the torch-free tokenizer.
Tokens are cut after the end-of-text token, as in embedder.py (identical result, a fraction of the work).

The weights stay fp32 (issue 15, docs/fidelity.md): int8 dynamic quantisation moved query vectors
to cosine 0.9988 of open_clip, cost 14 % of top-10 agreement on crowded rankings and made a text's
vector depend on its batch, and every weight-only or per-channel variant ranked worse or ran
slower. Kept in a separate file that ONNX Runtime memory-maps, the fp32 weights load as fast as
int8 ones did (no parse, no copy); they take 4x the disk (153 MB for ViT-B-32).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.model.hf_tokenizer import TOKENIZER_NAME, HFTokenizer, cut_length
from clipsearch.model.tokenizer import VOCAB_NAME, Tokenizer

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
    """True when index_dir holds a verified text model of exactly this model's weights, whole.

    Whole: the files meta.json names are there, at the sizes it records (exports before sizes were
    recorded: present and not empty), so a truncated or half-deleted model is re-exported by the
    next `index` and meanwhile not used. A few stats, no reading.
    """
    try:
        meta = json.loads((index_dir / FOLDER / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    # Exports from before issue 15 (int8, checked against the bf16-cast model) do not count: the next
    # indexing run replaces them, queries meanwhile take the torch path.
    if not (meta.get("weights_sha256") == weights_sha256 and meta.get("verified_min_cosine")
            and meta.get("reference") == REFERENCE):
        return False
    sizes = meta.get("sizes") or {}
    try:
        for name in _files(meta):
            size = (index_dir / FOLDER / name).stat().st_size
            if size == 0 or sizes.get(name, size) != size:
                return False
    except OSError:
        return False
    return True


def _files(meta: dict[str, Any]) -> list[str]:
    """The files an export consists of, besides meta.json."""
    graph = str(meta.get("file", "model.onnx"))
    vocab = TOKENIZER_NAME if meta.get("tokenizer") == "hf" else VOCAB_NAME
    prefix = meta.get("prefix") or {}  # the label cache's graph (prefix_export.py), where it was kept
    return ([graph, f"{graph}.data", vocab] + ([TABLE_NAME] if meta.get("inputs") == "embedded" else [])
            + ([prefix["file"], prefix["file"] + ".data"] if prefix.get("file") else [])
            + ([prefix["check_vectors"]] if prefix.get("check_vectors") else []))


def record_sizes(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with the sizes of its files, which `available` checks."""
    return {**meta, "sizes": {name: (folder / name).stat().st_size for name in _files(meta)}}


def session(model: Path, preoptimized: bool, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU as a query wants it (the image tower's too); `threads`:
    intra-op threads, else ONNX Runtime's default (one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    # Idle worker threads spin by default, burning the core the rest of a query needs (measured:
    # session + one encode 0.16 s CPU with spinning, 0.08 s without).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if preoptimized:
        # Optimised once at export (text_export._preoptimize): loading then skips the graph rewrite
        # and the weight pre-packing, 0.25 s -> 0.06 s of a cold query, for 5 ms more on one encode.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def save_optimised(source: Path, target: Path) -> None:
    """`source` saved as `target` with ONNX Runtime's EXTENDED graph optimisations applied once, its
    weights in `target`.data, a file sessions memory-map instead of parsing and copying.

    EXTENDED, not ALL: the ALL level adds layout rewrites for this very CPU, and an index folder may
    move to another machine. The session exists only to write the file, so its weight pre-packing
    (a copy of every weight, never saved) is off. Raises what ONNX Runtime raises.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", target.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.add_session_config_entry("session.disable_prepacking", "1")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


class OnnxTextEncoder:
    """Texts -> normalised float32 vectors with ONNX Runtime; no torch anywhere."""

    def __init__(self, folder: Path, file: str | None = None, preoptimized: bool | None = None) -> None:
        """`file` and `preoptimized` default to what meta.json records (export tries others)."""
        meta = json.loads((folder / "meta.json").read_text())
        # Hugging Face text towers (XLM-RoBERTa...) pad with their pad id; CLIP's end token has the highest id.
        self.pad_id: int | None = int(meta["pad_id"]) if meta.get("tokenizer") == "hf" else None
        self.tokenizer: Tokenizer | HFTokenizer = (
            HFTokenizer(folder / TOKENIZER_NAME, int(meta["context_length"]), int(meta["pad_id"]))
            if self.pad_id is not None else Tokenizer(folder / VOCAB_NAME, int(meta["context_length"]),
                                                      cache_tables=True))
        model = folder / (file or meta.get("file", "model.onnx"))
        # The token table lives outside the graph, memory-mapped: a query reads the rows of its own
        # tokens, not 25 million weights (see export). Older exports have it inside the graph.
        self.table = (np.load(folder / TABLE_NAME, mmap_mode="r") if meta.get("inputs") == "embedded" else None)
        self.session = session(model, bool(meta.get("preoptimized") if preoptimized is None else preoptimized))
        self.folder, self.meta = folder, meta
        self._prefix: Any = None

    def prefix_encoder(self) -> Any:
        """The label cache's encoder of prompts that share prefixes (prefix_tower.PrefixEncoder,
        loaded on first use), or None where this export has no prefix graph (older exports, other
        towers): then prompts go through embed_texts."""
        if self._prefix is None and self.meta.get("prefix"):
            from clipsearch.model import prefix_tower  # it builds on this module

            self._prefix = prefix_tower.load(self.folder, self, self.meta["prefix"])
        return self._prefix

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Each text's tokens up to its end-of-text token: what one batch of them costs to run."""
        return self.tokenizer(texts).argmax(axis=1) + 1  # the end token has the highest id

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts)
        length = (cut_length(tokens, self.pad_id) if self.pad_id is not None
                  else int(tokens.argmax(axis=1).max()) + 1)  # the end token has the highest id
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


def remove(index_dir: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(index_dir / FOLDER)
