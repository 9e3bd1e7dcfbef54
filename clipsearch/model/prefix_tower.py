"""Many prompts that share prefixes, embedded with each prefix computed once (no torch).

The label cache's prompts are a few templates times many labels. Under CLIP's causal mask the
keys and values of a template's prefix ("<start> a photo of") are the same in all of its prompts,
so prefix_export.py's graph takes them as an input and runs only each prompt's own tokens: about
half the tokens of 1,000 labels' prompts, and the result is the plain tower's (the same products,
cosine >= 0.9999 checked at export on prompts of several templates, unicode and long labels).

A prompt's prefix is the longest of the given ones whose *tokens* start its tokens (the BPE works
word by word, but that is checked, not assumed); every prompt shares at least the start token.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.model import cpu
from clipsearch.model.text_tower import OnnxTextEncoder, session

# Prompts the export checks the graph on (as label sets use them: templates, odd and long labels).
CHECK_TEMPLATES = ("a photo of {}.", "a photo of a {}.", "a picture of {}.", "an image of {}.", "{}")
CHECK_LABELS = ("dog", "x", "Café crème brûlée 🍮", "日本の桜", "sunset over the sea, long exposure",
                "a very long label " * 8, "Übergrößenträger")
MIN_COSINE = 0.9999  # exact up to the order of float sums
BF16_MIN_COSINE = 0.9995  # bf16's bar: what a query's text vector may lose (text_tower.MIN_COSINE)
BATCH = 256
MIN_ROWS = 32  # a batch's rows before it may end at a length change (see _batches)
CHECK_VECTORS = "prefix_check.npy"  # the plain graph's vectors of check_prompts(), recorded by the export
PRECISION_ENV = "CLIPSEARCH_LABEL_PRECISION"  # auto (bf16 where the CPU has it natively), fp32, bf16
DEFAULT_PRECISION = "auto"


def check_prompts() -> tuple[list[str], list[str]]:
    """(prompts, prefixes) the export verifies the graph with."""
    prompts = [t.format(label) for t in CHECK_TEMPLATES for label in CHECK_LABELS]
    return [*prompts, "a photo of", "a photo of a"], prefixes_of(CHECK_TEMPLATES)


def prefixes_of(templates: Sequence[str]) -> list[str]:
    """The text before each template's slot: what its prompts share."""
    return sorted({t.split("{}", 1)[0] for t in templates if "{}" in t})


class PrefixEncoder:
    """The text-model folder's prefix graph on ONNX Runtime, with the plain encoder's tokenizer
    and token table (what the prompts' own tokens are looked up in)."""

    def __init__(self, folder: Path, plain: OnnxTextEncoder, meta: dict[str, Any]) -> None:
        """`plain` lends its tokenizer and token table; `meta`: meta.json's "prefix" entry."""
        if plain.table is None or plain.pad_id is not None:
            raise ValueError("the prefix graph needs a CLIP export with its token table")
        self.tokenizer = plain.tokenizer
        self.table: Any = plain.table
        self.session = session(folder / meta["file"], bool(meta.get("preoptimized")))
        # past: (layers, 2, past, width), or by head (layers, 2, heads, past, head width) in graph 2:
        # the one axis without a fixed size is the past's.
        self._dummy = np.zeros([d if isinstance(d, int) else 1 for d in self.session.get_inputs()[3].shape], np.float32)
        # Prefixes' keys and values, always computed in fp32 on ONNX Runtime (one row each).
        self._states: dict[tuple[int, ...], np.ndarray] = {}
        self.precision = "fp32"
        self._bf16: Any = None  # prefix_openvino.Runner, when bf16 runs the batches (use_bf16)

    def use_bf16(self, folder: Path, meta: dict[str, Any]) -> float:
        """Run the batches on OpenVINO in bf16 from now on, if it answers like fp32: the lowest cosine
        of its vectors of the check prompts to this fp32 encoder's (kept at >= BF16_MIN_COSINE).
        The verdict is cached (prefix_openvino.py), so only a graph's first run on a CPU checks."""
        from clipsearch.model import prefix_openvino  # the optional `openvino` extra

        cosine = prefix_openvino.verdict(folder, meta)
        if cosine is not None and cosine < BF16_MIN_COSINE:
            return cosine  # failed on this CPU before: not compiled again
        runner = prefix_openvino.Runner(folder, meta)
        if cosine is None:
            prompts, prefixes = check_prompts()
            ref = _recorded(folder, meta, len(prompts))
            if ref is None:  # exports from before the vectors were recorded
                ref = self.embed_shared(prompts, prefixes)
            self._bf16 = runner
            try:
                cosine = float(np.min(np.sum(self.embed_shared(prompts, prefixes) * ref, axis=1)))
            finally:
                self._bf16 = None
            prefix_openvino.record(folder, meta, cosine)
        if cosine >= BF16_MIN_COSINE:
            self._bf16, self.precision = runner, "bf16"
        return cosine

    def _feeds(self, tokens: np.ndarray, start: int, past: np.ndarray, bias: np.ndarray,
               eot: np.ndarray) -> dict[str, np.ndarray]:
        return {"embedded": np.asarray(self.table[tokens], dtype=np.float32),
                "positions": np.arange(start, start + tokens.shape[1], dtype=np.int64),
                "past_bias": bias, "past": past, "eot": eot.astype(np.int64)}

    def state(self, prefix: tuple[int, ...]) -> np.ndarray:
        """(layers, 2, len(prefix), width), by head in graph 2: each layer's keys and values of these
        tokens from the start. One run of one row; the graph always takes a past, here a dummy row masked out."""
        if prefix not in self._states:
            feeds = self._feeds(np.asarray([prefix], dtype=np.int64), 0, self._dummy, np.full(1, -np.inf, np.float32),
                                np.asarray([len(prefix) - 1]))
            self._states[prefix] = np.ascontiguousarray(self.session.run(None, feeds)[1], dtype=np.float32)
        return self._states[prefix]

    def embed_shared(self, texts: list[str], prefixes: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors of `texts`, as OnnxTextEncoder.embed_texts gives them."""
        tokens = self.tokenizer(texts)
        lengths = tokens.argmax(axis=1) + 1  # the end token has the highest id
        start = {(int(tokens[0, 0]),)} if len(texts) else set()
        candidates = sorted({self._prefix_tokens(p) for p in prefixes} | start, key=len, reverse=True)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(tokens):
            for cand in candidates:  # longest first; the start token alone always fits
                if len(cand) < lengths[i] and tuple(int(t) for t in row[:len(cand)]) == cand:
                    groups.setdefault(cand, []).append(i)
                    break
        plan = [(prefix, batch) for prefix, members in groups.items() for batch in _batches(members, lengths)]

        def feeds(prefix: tuple[int, ...], batch: list[int]) -> dict[str, np.ndarray]:
            k, width = len(prefix), int(lengths[batch[-1]]) - len(prefix)
            return self._feeds(tokens[batch, k:k + width], k, self.state(prefix), np.zeros(k, np.float32),
                               lengths[batch] - 1 - k)

        got: dict[int, np.ndarray] = {}
        if self._bf16 is not None:  # batches in flight on OpenVINO while the next ones are made
            self._bf16.run(((i, lambda p=p, b=b: feeds(p, b)) for i, (p, b) in enumerate(plan)), got.__setitem__)
        else:
            for i, (p, b) in enumerate(plan):
                got[i] = np.asarray(self.session.run(None, feeds(p, b))[0], dtype=np.float32)
        out = np.empty((len(texts), got[0].shape[1] if got else 0), np.float32)
        for i, (_, batch) in enumerate(plan):
            out[batch] = got[i]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def _prefix_tokens(self, prefix: str) -> tuple[int, ...]:
        row = self.tokenizer([prefix])[0]
        return tuple(int(t) for t in row[:int(row.argmax())])  # the start token and the prefix's own


def _recorded(folder: Path, meta: dict[str, Any], count: int) -> np.ndarray | None:
    """The plain graph's vectors of the check prompts as the export recorded them, or None."""
    name = meta.get("check_vectors")
    if name:
        with contextlib.suppress(OSError, ValueError):
            ref = np.load(folder / str(name))
            if ref.shape[0] == count:
                return np.asarray(ref, dtype=np.float32)
    return None


def _batches(members: list[int], lengths: np.ndarray) -> list[list[int]]:
    """One prefix's prompts in batches of one suffix length where that is at least MIN_ROWS of
    them: fixed batches of a sorted list padded 22 % of 1,000 labels' suffix tokens (a batch spans
    several lengths), this < 1 %. A length with fewer prompts joins the batch of the next one."""
    out: list[list[int]] = []
    batch: list[int] = []
    for j in sorted(members, key=lambda j: int(lengths[j])):
        if batch and (len(batch) == BATCH or (lengths[j] > lengths[batch[-1]] and len(batch) >= MIN_ROWS)):
            out.append(batch)
            batch = []
        batch.append(j)
    return [*out, batch] if batch else out


def load(folder: Path, plain: OnnxTextEncoder, meta: dict[str, Any]) -> PrefixEncoder:
    """The encoder a tag run uses: bf16 on OpenVINO where $CLIPSEARCH_LABEL_PRECISION allows it
    (auto: where the CPU has native bf16) and it passes its self-check, else fp32 on ONNX Runtime."""
    encoder = PrefixEncoder(folder, plain, meta)
    if bf16_wanted():
        try:
            encoder.use_bf16(folder, meta)
        except Exception:  # noqa: BLE001 - no openvino extra, or it cannot compile: fp32 answers the same
            encoder._bf16, encoder.precision = None, "fp32"
    return encoder


def prepare(folder: Path) -> float | None:
    """Pay now what a first `tag` run would pay before its first batch (the background exporter
    calls this once the export has landed): OpenVINO's bf16 graph compiled into its cache and the
    self-check's verdict recorded, so that run compiles from the cache and checks nothing. The
    verdict's cosine, or None where tag runs would not take bf16."""
    if not bf16_wanted():
        return None
    try:
        from clipsearch.model import prefix_openvino  # the optional `openvino` extra
    except ImportError:
        return None
    meta = json.loads((folder / "meta.json").read_text()).get("prefix")
    if not meta:
        return None
    cosine = prefix_openvino.verdict(folder, meta)
    if cosine is not None:
        return cosine  # prepared before (the compiled model is cached with it)
    # Only now the plain encoder, whose constructor opens a session of the whole graph: the prefix
    # encoder needs its tokenizer and token table alone.
    plain = OnnxTextEncoder(folder)
    plain.session = None
    return PrefixEncoder(folder, plain, meta).use_bf16(folder, meta)


def bf16_wanted() -> bool:
    """Whether tag runs try bf16: $CLIPSEARCH_LABEL_PRECISION, "auto" meaning where the CPU has it natively."""
    wanted = os.environ.get(PRECISION_ENV, DEFAULT_PRECISION).strip().lower()
    return wanted == "bf16" or (wanted == "auto" and cpu.has_native_bf16())


def verify(folder: Path, meta: dict[str, Any]) -> tuple[float, np.ndarray]:
    """The prefix graph's lowest cosine to the plain graph over the check prompts, and the plain
    graph's vectors of them. One session at a time: the plain graph's vectors first, then it goes,
    then the prefix graph's."""
    prompts, prefixes = check_prompts()
    plain = OnnxTextEncoder(folder)
    ref = plain.embed_texts(prompts)
    plain.session = None
    got = PrefixEncoder(folder, plain, meta).embed_shared(prompts, prefixes)
    return float(np.min(np.sum(got * ref, axis=1))), ref
