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
import os
import re
import sqlite3
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

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


def _is_plain(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _clean(text: str) -> str:
    return clean_whitespace(text).lower()


def clean_whitespace(text: str) -> str:
    """open_clip's `_clean_whitespace` (basic_clean, then whitespace): hf_tokenizer.py uses it too."""
    # ftfy repairs mojibake, control characters and entities; printable ASCII without '&' has none of
    # them (checked on random strings), so the usual English query skips importing it (~50 ms cold).
    if not (_is_plain(text) and "&" not in text):
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip()


def _build_tables(vocab_path: Path) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    with gzip.open(vocab_path) as f:
        merges_text = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in merges_text[1:49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [v + "</w>" for v in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
    return {tok: i for i, tok in enumerate(vocab)}, {(m[0], m[1]): i for i, m in enumerate(merges)}


TABLES_NAME = "bpe_tables.sqlite"


class _Lookup:
    """A read-only mapping over one SQLite table, remembering what it has been asked.

    A query touches a few dozen of the 98,000 vocabulary entries: looking them up on demand costs
    ~2 ms, loading every entry into dicts ~40 ms (marshal) or ~200 ms (from the vocabulary).
    """

    _MISSING = object()

    def __init__(self, conn: sqlite3.Connection, sql: str) -> None:
        self._conn, self._sql = conn, sql
        self._seen: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        found = self._seen.get(key, self._MISSING)
        if found is self._MISSING:
            row = self._conn.execute(self._sql, key if isinstance(key, tuple) else (key,)).fetchone()
            found = self._seen[key] = row[0] if row else None
        return default if found is None else found

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None

    def __getitem__(self, key: Any) -> Any:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found


def _open_tables(vocab_path: Path) -> tuple[Any, Any] | None:
    """The tables as on-demand lookups in a SQLite file beside the vocabulary, built when missing.

    None when the file can neither be read nor written (a read-only index folder): build in memory.
    """
    path = vocab_path.with_name(TABLES_NAME)
    for _attempt in range(2):
        try:
            if path.stat().st_mtime_ns >= vocab_path.stat().st_mtime_ns:
                conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
                conn.execute("SELECT count(*) FROM meta WHERE done = 1").fetchone()
                return (_Lookup(conn, "SELECT id FROM encoder WHERE token = ?"),
                        _Lookup(conn, "SELECT rank FROM ranks WHERE a = ? AND b = ?"))
        except (OSError, sqlite3.Error):
            pass
        if not _write_tables(vocab_path, path):
            return None
    return None


def _write_tables(vocab_path: Path, path: Path) -> bool:
    encoder, ranks = _build_tables(vocab_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(tmp)) as conn, conn:
            conn.execute("CREATE TABLE encoder (token TEXT PRIMARY KEY, id INTEGER NOT NULL) WITHOUT ROWID")
            conn.execute("CREATE TABLE ranks (a TEXT, b TEXT, rank INTEGER NOT NULL, PRIMARY KEY (a, b)) "
                         "WITHOUT ROWID")
            conn.execute("CREATE TABLE meta (done INTEGER)")
            conn.executemany("INSERT INTO encoder VALUES (?, ?)", encoder.items())
            conn.executemany("INSERT INTO ranks VALUES (?, ?, ?)", ((a, b, r) for (a, b), r in ranks.items()))
            conn.execute("INSERT INTO meta VALUES (1)")
        os.replace(tmp, path)
        return True
    except (OSError, sqlite3.Error):
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False


# For printable ASCII, the pattern below matches exactly what open_clip's does (\p{L} is [A-Za-z] and
# \p{N} is [0-9] there), and the stdlib's re imports in no time where the `regex` module takes ~40 ms.
_ASCII_PATTERN = SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+"""
_UNICODE_PATTERN = SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class Tokenizer:
    """`Tokenizer(vocab_path, context_length)(texts)` -> int64 array (n, context_length).

    `cache_tables` keeps the tables beside the vocabulary (a folder of ours, never a package's) and
    looks entries up there on demand.
    """

    def __init__(self, vocab_path: Path, context_length: int, cache_tables: bool = False) -> None:
        tables = _open_tables(vocab_path) if cache_tables else None
        if tables is None:
            tables = _build_tables(vocab_path)
        self.encoder: Mapping[str, int] = tables[0]
        self.bpe_ranks: Mapping[tuple[str, str], int] = tables[1]
        self.cache = {SOT: SOT, EOT: EOT}
        self._ascii = re.compile(_ASCII_PATTERN, re.IGNORECASE | re.ASCII)
        self._unicode: Any = None
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.context_length = context_length

    def _words(self, text: str) -> list[str]:
        if _is_plain(text):
            return self._ascii.findall(text)
        if self._unicode is None:
            import regex

            self._unicode = regex.compile(_UNICODE_PATTERN, regex.IGNORECASE)
        return self._unicode.findall(text)

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
        for token in self._words(_clean(text)):
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
