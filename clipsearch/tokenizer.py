"""CLIP's byte-level BPE tokenizer without torch, giving the same ids as open_clip's SimpleTokenizer.

The query path uses it so that a text query needs neither torch nor open_clip (importing them is
most of a cold query's time). Ported from open_clip's tokenizer.py, itself copied from OpenAI's CLIP
(MIT License, Copyright (c) 2021 OpenAI); the vocabulary file is open_clip's own, copied next to the
exported text model so the index folder is self-contained.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import itertools
import marshal
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

SOT, EOT = "<start_of_text>", "<end_of_text>"
VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(word))


def _clean(text: str) -> str:
    # ftfy repairs mojibake, control characters and entities; printable ASCII without '&' has none of
    # them (checked on random strings), so the usual English query skips importing it (~50 ms cold).
    if not (text.isascii() and text.isprintable() and "&" not in text):
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


def _build_tables(vocab_path: Path) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    with gzip.open(vocab_path) as f:
        merges_text = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in merges_text[1:49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [v + "</w>" for v in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
    return {tok: i for i, tok in enumerate(vocab)}, {(m[0], m[1]): i for i, m in enumerate(merges)}


def _load_tables(vocab_path: Path, use_cache: bool) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """The BPE tables, from a marshal cache beside the vocabulary when there is one.

    Building them from the vocabulary takes ~0.2 s, a third of a cold query; loading the cache
    0.04 s. The cache is this Python's own format (named after its version) and rebuilt when stale.
    """
    if not use_cache:
        return _build_tables(vocab_path)
    cache = vocab_path.with_name(f"bpe_tables.py{sys.version_info[0]}{sys.version_info[1]}.marshal")
    try:
        if cache.stat().st_mtime_ns >= vocab_path.stat().st_mtime_ns:
            encoder, ranks = marshal.loads(cache.read_bytes())
            return encoder, ranks
    except (OSError, ValueError, EOFError, TypeError):
        pass
    tables = _build_tables(vocab_path)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(marshal.dumps(tables))
        os.replace(tmp, cache)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return tables


class Tokenizer:
    """`Tokenizer(vocab_path, context_length)(texts)` -> int64 array (n, context_length).

    `cache_tables` keeps the built tables beside the vocabulary (a folder of ours, never a package's).
    """

    def __init__(self, vocab_path: Path, context_length: int, cache_tables: bool = False) -> None:
        import regex

        tables = _load_tables(vocab_path, cache_tables)
        self.encoder: dict[str, int] = tables[0]
        self.bpe_ranks: dict[tuple[str, str], int] = tables[1]
        self.cache = {SOT: SOT, EOT: EOT}
        self.pattern = regex.compile(
            SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.context_length = context_length

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        byte_encoder = _bytes_to_unicode()
        ids: list[int] = []
        for token in self.pattern.findall(_clean(text)):
            token = "".join(byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot_id, *self.encode(text), self.eot_id]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = self.eot_id  # as open_clip truncates: the end token always survives
            out[row, : len(tokens)] = tokens
        return out
