"""Exporting a loaded model's text tower to ONNX at index time, verified against open_clip.

The export is what makes text queries torch-free (text_tower.py runs it). It is optional: a model
whose tokenizer or text tower is neither open_clip's standard CLIP kind nor a Hugging Face text tower
with a fast tokenizer (XLM-RoBERTa, NLLB: hf_tokenizer.py) keeps the torch path, and a
graph that does not answer like open_clip at fp32 (cosine >= 0.9995 on the check prompts) is not
kept. The weights stay fp32 (docs/fidelity.md says why). A CLIP tower also gets a second graph for
the label cache of `tag` runs (prefix_export.py: each template's prefix computed once), kept only
when it answers like the plain one; a failure there costs only the label cache's speed.
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

from clipsearch import config
from clipsearch.errors import ClipsearchError
from clipsearch.model import prefix_export
from clipsearch.model.hf_tokenizer import TOKENIZER_NAME
from clipsearch.model.identity import ModelIdentity, check_same_model
from clipsearch.model.text_tower import (
    CHECK_PROMPTS,
    FOLDER,
    MIN_COSINE,
    REFERENCE,
    TABLE_NAME,
    OnnxTextEncoder,
    available,
    record_sizes,
    remove,
    save_optimised,
)
from clipsearch.model.tokenizer import VOCAB_NAME


def ensure(index_dir: Path, recorded: ModelIdentity, loaded: Any, may_load: bool, device: str | None,
           precision: str | None, notify: Callable[[str], None] | None) -> None:
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
    try:
        export(emb, index_dir, notify)
    except Exception:  # noqa: BLE001 - an exporter or runtime gap must never fail an indexing run
        remove(index_dir)


def export(embedder: Any, index_dir: Path, notify: Callable[[str], None] | None = None) -> bool:
    """Export and verify the text tower of a loaded Embedder; False when the model is not eligible.

    The weights stay fp32, so there is no quantised variant to judge by the index's rankings (issue 15).
    """
    import open_clip
    import torch

    from clipsearch.model.embedder import has_standard_text_tower

    tok = embedder.tokenizer
    model = embedder.model
    kind = ("clip" if (isinstance(tok, open_clip.tokenizer.SimpleTokenizer) and tok.reduction_fn is None
                       and tok.clean_fn is open_clip.tokenizer._clean_lower and has_standard_text_tower(model))
            else "hf" if has_hf_text_tower(model, tok) else None)
    if kind is None:
        return False  # other tokenizers and towers keep the torch path
    sha = embedder.identity.weights_sha256
    if link_cached(sha, index_dir):
        return True
    if notify is not None:  # only for a real export: one from the cache takes milliseconds
        notify("preparing the text encoder that makes queries fast (once per model)")
    fp32 = fp32_model(embedder)
    tmp = index_dir / f".{FOLDER}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta: dict[str, Any] = {"weights_sha256": embedder.identity.weights_sha256, "model": embedder.identity.name}
        (_write_fp32 if kind == "clip" else _write_hf)(fp32, tok, tmp, meta)
        with torch.no_grad():
            # The reference is open_clip itself at fp32 (all 77 tokens, no cut), not the Embedder's
            # bf16-cast model: the recorded cosine is what a query really loses (issue 15).
            ref = torch.nn.functional.normalize(fp32.encode_text(tok(CHECK_PROMPTS)).float(), dim=-1).numpy()
        # The label cache's graph (prefix_export.py), from the same fp32 copy; optional.
        with_prefix = kind == "clip" and _try(prefix_export.write, fp32, tmp)
        # The torch copy of the tower goes before ONNX Runtime loads the exported one (twice, to check
        # the optimised graph): never two copies of its weights at once (issue 22, peak RSS).
        del fp32
        import gc

        gc.collect()
        meta["file"] = "model.onnx"
        meta.update(_preoptimize(tmp, "model.onnx"))
        (tmp / "meta.json").write_text(json.dumps(meta))
        got = OnnxTextEncoder(tmp).embed_texts(CHECK_PROMPTS)  # the files a query will load
        meta.update({"verified_min_cosine": float(np.min(np.sum(ref * got, axis=1))),
                     "reference": REFERENCE, "precision": "fp32"})
        if meta["verified_min_cosine"] < MIN_COSINE:
            return False
        if with_prefix:
            meta.update(_try(prefix_export.finish, tmp, meta) or {})
        (tmp / "meta.json").write_text(json.dumps(record_sizes(tmp, meta)))
        remove(index_dir)
        os.replace(tmp, index_dir / FOLDER)
        _to_cache(sha, index_dir / FOLDER)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _try(step: Callable[..., Any], *args: Any) -> Any:
    """An optional step of the export: its failure (an exporter or runtime gap) costs only what it
    would have added, here the label cache's speed; the plain graph is kept."""
    try:
        return step(*args)
    except Exception:  # noqa: BLE001 - see above
        return None


def _cached(sha: str) -> Path:
    """Where the verified export of the weights with this sha256 is kept for every index using them."""
    return config.cache_home() / "text-models" / sha


def _link_files(src: Path, dst: Path) -> None:
    """dst (new) with src's files, hard-linked where the filesystem allows, else copied.

    Links are safe: an export's files are never written in place, only replaced whole.
    """
    dst.mkdir(parents=True)
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copyfile(f, dst / f.name)


def link_cached(sha: str, index_dir: Path) -> bool:
    """Give the index the cached export of these weights, whole or not at all (a temporary folder
    renamed into place). The cached copy was verified when it was made; `available` checks it is
    whole (the sizes meta.json records)."""
    if not available(_cached(sha), sha):
        return False
    tmp = index_dir / f".{FOLDER}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _link_files(_cached(sha) / FOLDER, tmp)
        remove(index_dir)
        os.replace(tmp, index_dir / FOLDER)
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return available(index_dir, sha)


def _to_cache(sha: str, folder: Path) -> None:
    """Share a fresh export with later indexes of the same weights; a cache that cannot be written
    only costs the next index its own export."""
    target = _cached(sha)
    tmp = target / f".{FOLDER}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        shutil.rmtree(tmp, ignore_errors=True)
        _link_files(folder, tmp)
        shutil.rmtree(target / FOLDER, ignore_errors=True)  # a damaged copy `available` refused
        os.replace(tmp, target / FOLDER)
    shutil.rmtree(tmp, ignore_errors=True)


def fp32_model(embedder: Any, tower: str = "text") -> Any:
    """The Embedder's model with its weights as stored (fp32, on the CPU), for export and reference;
    `tower` ("text" or "image") is the one an export needs.

    A bf16 or fp16 Embedder has rounded its weights; casting back to fp32 keeps the rounding, so
    the model is loaded again from the weights file.
    """
    import copy

    from clipsearch.model.embedder import _create, _load

    if getattr(embedder, "lean", False):
        # That tower alone, read from the weights file in fp32 (lean_load.py): the other one is
        # never built a second time, so a bf16 run never holds two copies of the model.
        import torch

        from clipsearch.model import lean_load

        if (tower != lean_load.TEXT and embedder.dtype == torch.float32 and str(embedder.device) == "cpu"
                and lean_load.IMAGE in lean_load.loaded_towers(embedder.model)):
            return embedder.model.eval()  # already that (the background exporter's own load): no second copy
        spec, weights = embedder.spec, embedder.weights_path
        model, _ = lean_load.skeleton(lambda: _create(spec, weights, "meta", load_weights=False))
        if tower == lean_load.TEXT:
            model.visual = torch.nn.Identity()  # encode_text never runs it
        lean_load.materialise(model, weights, (lean_load.TEXT if tower == lean_load.TEXT else lean_load.IMAGE,),
                              torch.float32, "cpu")
        return model.eval()
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


def has_hf_text_tower(model: Any, tok: Any) -> bool:
    """A Hugging Face text tower (open_clip's HFTextEncoder) with a plain fast tokenizer: the kind
    hf_tokenizer.py reproduces without torch (no 'clips' mode, no stripped separators)."""
    import open_clip
    from open_clip.hf_model import HFTextEncoder

    return (isinstance(tok, open_clip.tokenizer.HFTokenizer) and not tok.tokenizer_mode
            and not tok.strip_sep_token and tok.clean_fn is open_clip.tokenizer._clean_whitespace
            and getattr(tok.tokenizer, "backend_tokenizer", None) is not None
            and isinstance(getattr(model, "text", None), HFTextEncoder) and not model.text.output_tokens)


def _write_hf(fp32: Any, tok: Any, folder: Path, meta: dict[str, Any]) -> None:
    """The HF text tower as one fp32 graph over token ids (the tower masks its own padding), its
    tokenizer.json and meta.json, in folder."""
    import torch

    sample = tok(["a photo of a dog", "빨간 원", "two people on a beach at sunset"])[:, :8]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch, length = torch.export.Dim("batch", max=4096), torch.export.Dim("length", min=2,
                                                                               max=int(tok.context_length))
        torch.onnx.export(fp32.text.eval(), (sample,), str(folder / "model.onnx"), input_names=["tokens"],
                          output_names=["features"], dynamic_shapes=({0: batch, 1: length},),
                          dynamo=True, external_data=True, verbose=False)
    tok.tokenizer.backend_tokenizer.save(str(folder / TOKENIZER_NAME))
    meta.update({"context_length": int(tok.context_length), "inputs": "tokens", "tokenizer": "hf",
                 "pad_id": int(tok.tokenizer.pad_token_id)})
    (folder / "meta.json").write_text(json.dumps(meta))


def _preoptimize(folder: Path, file: str) -> dict[str, Any]:
    """Save the model with ONNX Runtime's graph optimisations applied, if it answers the same.

    EXTENDED, not ALL (text_tower.save_optimised says why). Kept only when every check prompt stays
    within cosine 0.9999. The weights go to a file of their own, which a session memory-maps
    instead of parsing and copying them: 0.4-0.6 s -> 0.02 s to load ViT-B-32's fp32 text tower
    (bench/bench_text_precision.py).
    """
    target = folder / file.replace(".onnx", ".opt.onnx")
    save_optimised(folder / file, target)
    before = OnnxTextEncoder(folder, file, preoptimized=False).embed_texts(CHECK_PROMPTS)
    after = OnnxTextEncoder(folder, target.name, preoptimized=True).embed_texts(CHECK_PROMPTS)
    if float(np.min(np.sum(before * after, axis=1))) < 0.9999:
        target.unlink(missing_ok=True)
        (folder / (target.name + ".data")).unlink(missing_ok=True)
        return {}
    (folder / file).unlink()
    (folder / (file + ".data")).unlink(missing_ok=True)
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
