"""Hugging Face tokenizers (XLM-RoBERTa, NLLB, multilingual SigLIP...) without torch or transformers.

open_clip's HFTokenizer wraps transformers' AutoTokenizer, which imports torch. A fast tokenizer is a
`tokenizer.json` run by the Rust `tokenizers` library; saved next to the exported text tower at index
time (text_export.py), it gives the query path the same ids as open_clip: the same cleaning (ftfy,
HTML entities, whitespace), `<s> ... </s>` from the file's post-processor, truncation to the context
length (special tokens kept) and right padding with the pad id (tests/test_multilingual.py checks them
id for id).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipsearch.model.tokenizer import clean_whitespace

TOKENIZER_NAME = "tokenizer.json"


class HFTokenizer:
    """Texts -> (N, context_length) int64 ids, as open_clip's HFTokenizer (clean='whitespace')."""

    def __init__(self, path: Path, context_length: int, pad_id: int) -> None:
        from tokenizers import Tokenizer

        self.context_length = context_length
        self.pad_id = pad_id
        self.tokenizer = Tokenizer.from_file(str(path))
        # What transformers sets for padding='max_length', truncation=True, max_length=context_length.
        self.tokenizer.enable_truncation(max_length=context_length)
        self.tokenizer.enable_padding(pad_id=pad_id, length=context_length)

    def __call__(self, texts: list[str]) -> np.ndarray:
        cleaned = [clean_whitespace(t) for t in texts]  # open_clip's HFTokenizer default (clean='whitespace')
        encoded = self.tokenizer.encode_batch(cleaned)
        return np.asarray([e.ids for e in encoded], dtype=np.int64).reshape(len(texts), self.context_length)


def cut_length(tokens: np.ndarray, pad_id: int) -> int:
    """Columns up to the longest text's last token: padding is masked out of attention and pooling,
    so cutting it changes nothing but the work."""
    return max(2, int((tokens != pad_id).sum(axis=1).max()))
