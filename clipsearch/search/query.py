"""Parsing a query into weighted parts: `"beach + sunset - people"`, `"2:dog + cat"`, images, --add/--sub.

Each part is embedded on its own, multiplied by its weight, summed, and the sum re-normalised
(rclip's query arithmetic, which users of the peers know). Operators are a `+` or `-` standing alone
between spaces, so hyphenated words ("t-shirt", "black-and-white") stay text.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch import paths
from clipsearch.errors import UsageError

if TYPE_CHECKING:
    from clipsearch.index.store import Store

# A weight is a plain number of at most two integer digits (2, 0.5, .5, 10) at the start of a part,
# then a colon, then something that is not a digit. Times, ratios and scores ("12:30 lunch",
# "3:2 photo", "1:1", "16:9") have a digit after the colon, and years ("2024: Rome") have four
# digits, so they stay text; "2:dog" and "0.5: sunset" stay weights. Only a literal "2:dog" can no
# longer be searched as text, which no caption needs.
_WEIGHT = re.compile(r"^\s*([+-]?(?:\d{1,2}(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*:(?!\s*\d)\s*(.*)$", re.DOTALL)
# A weight beyond this drowns every other part anyway, and one near float32's range overflows the
# sum (a NumPy warning, then every score 0): refused as a usage error.
MAX_WEIGHT = 1000.0
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SPLIT = re.compile(r"(?:^|\s)([+-])(?=\s)")


@dataclass(frozen=True)
class Term:
    """One part of a query: a text or an image path, with a signed weight."""

    kind: str  # "text" or "image"
    value: str
    weight: float = 1.0

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "value": self.value, "weight": self.weight}


def _term(raw: str, sign: float, image_exts: frozenset[str]) -> Term:
    text = raw.strip()
    weight = 1.0
    m = _WEIGHT.match(text)
    if m:
        try:
            weight = float(m.group(1))
        except ValueError:
            raise UsageError(f"malformed weight in query part {raw.strip()!r}") from None
        if not abs(weight) <= MAX_WEIGHT:
            raise UsageError(f"the weight {m.group(1)} in {raw.strip()!r} is out of range: use a number up to "
                             f"{MAX_WEIGHT:g}")
        text = m.group(2).strip()
        if not text:
            raise UsageError(f"query part {raw.strip()!r} has a weight but nothing to weigh")
    if not text:
        raise UsageError("empty part in the query (check for a stray + or -)")
    path = os.path.expanduser(text)
    if os.path.splitext(path)[1].lower() in image_exts and os.path.isfile(path):
        return Term("image", os.path.abspath(path), sign * weight)
    # Bytes that were not UTF-8 on the command line arrive as lone surrogates; they become U+FFFD
    # so the tokenizer and SQLite see valid text.
    clean = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return Term("text", clean, sign * weight)


def parse(text: str | None, image_exts: frozenset[str], images: tuple[str, ...] = (),
          add: tuple[str, ...] = (), sub: tuple[str, ...] = ()) -> list[Term]:
    """All the parts of a query, in order; a usage error when there is nothing usable."""
    terms: list[Term] = []
    if text is not None and text.strip():
        pieces = _SPLIT.split(" " + text.strip() + " ")
        # pieces: [first, op, part, op, part, ...]; a leading operator leaves an empty first piece.
        first, rest = pieces[0], pieces[1:]
        if first.strip():
            terms.append(_term(first, 1.0, image_exts))
        elif not rest:
            raise UsageError("the query is empty")
        for op, part in zip(rest[0::2], rest[1::2], strict=True):
            terms.append(_term(part, -1.0 if op == "-" else 1.0, image_exts))
    elif text is not None and not images:
        raise UsageError("the query is empty")
    for img in images:
        if _URL.match(img):
            raise UsageError(f"--image takes a photo file on this machine, not an address: {img!r}; download it "
                             "first")
        path = paths.resolve(img)
        if not os.path.isfile(path):
            raise UsageError(f"query image not found: {img}")
        terms.append(Term("image", path, 1.0))
    terms += [_term(a, 1.0, image_exts) for a in add]
    terms += [_term(s, -1.0, image_exts) for s in sub]
    if not terms:
        raise UsageError("give a text query or --image PATH")
    if all(t.weight <= 0 for t in terms):
        raise UsageError("the query only subtracts; add something to look for")
    return terms


def parse_date(text: str, end: bool = False) -> dt.datetime:
    """`2023`, `2023-06`, `2023-06-14` or a full ISO time; `end` gives the instant after the period."""
    t = text.strip()
    try:
        if re.fullmatch(r"\d{4}", t):
            start = dt.datetime(int(t), 1, 1)
            nxt = dt.datetime(int(t) + 1, 1, 1)
        elif re.fullmatch(r"\d{4}-\d{2}", t):
            y, m = int(t[:4]), int(t[5:])
            start = dt.datetime(y, m, 1)
            nxt = dt.datetime(y + (m == 12), m % 12 + 1, 1)
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
            start = dt.datetime.fromisoformat(t)
            nxt = start + dt.timedelta(days=1)
        else:
            start = nxt = dt.datetime.fromisoformat(t)
    except ValueError:
        raise UsageError(f"cannot read {text!r} as a date: use YYYY, YYYY-MM, YYYY-MM-DD or an ISO time") from None
    when = nxt if end else start
    return when if when.tzinfo else when.astimezone()


def combine(terms: list[Term], vector_of: Callable[[Term], np.ndarray]) -> np.ndarray:
    """The query vector: each part's vector times its weight, summed, re-normalised."""
    total = np.sum([t.weight * vector_of(t) for t in terms], axis=0)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise UsageError("the query's parts cancel out; nothing is left to search for")
    return (total / norm).astype(np.float32)


def text_vectors(store: Store, weights_sha256: str, terms: list[Term], start_encoder: Callable[[], Callable[[], Any]],
                 extra: Sequence[str] = ()) -> Callable[[], dict[str, np.ndarray]]:
    """The query's texts (and `extra` texts) as vectors, when called. Texts embedded before by the
    index's model come from SQLite, so a repeated query loads no model at all (most of a cold
    query's time); for new ones `start_encoder()` starts loading an encoder now, and what it returns
    waits for it. Only the query's own texts go to the query cache (`extra` ones have their own table)."""
    texts = sorted({t.value for t in terms if t.kind == "text"})
    known = store.cached_text_vectors(weights_sha256, texts)
    queried = [t for t in texts if t not in known]
    missing = queried + [t for t in extra if t not in known and t not in queried]
    if not missing:
        return lambda: known
    get_encoder = start_encoder()

    def encode() -> dict[str, np.ndarray]:
        fresh = dict(zip(missing, get_encoder().embed_texts(missing), strict=True))
        store.cache_text_vectors(weights_sha256, {t: fresh[t] for t in queried})
        return {**known, **fresh}

    return encode
