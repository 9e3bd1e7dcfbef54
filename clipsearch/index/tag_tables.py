"""The tables around the photos: query-text embeddings, label embeddings, tags, personal tags.

`Store` inherits these methods; they are kept apart from store.py's images and vectors.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from typing import TYPE_CHECKING

import numpy as np

QUERY_CACHE_SIZE = 5000


def encode_vector(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class TextAndTagTables:
    """Store's methods for the query cache, label embeddings, tags and personal-tag probes."""

    if TYPE_CHECKING:  # what these methods use of Store, for the type checker
        db: sqlite3.Connection

        def atomic(self) -> contextlib.AbstractContextManager[None]: ...

    def cached_text_vectors(self, weights_sha256: str, texts: list[str]) -> dict[str, np.ndarray]:
        """Embeddings of query texts seen before with this model: a repeated query needs no model."""
        out = {}
        for text in texts:
            row = self.db.execute("SELECT vector FROM query_cache WHERE weights_sha256 = ? AND text = ?",
                                  [weights_sha256, text]).fetchone()
            if row:
                out[text] = np.frombuffer(row[0], dtype="<f4").astype(np.float32)
        return out

    def cache_text_vectors(self, weights_sha256: str, vectors: dict[str, np.ndarray]) -> None:
        """Remember query embeddings (the oldest beyond QUERY_CACHE_SIZE are forgotten)."""
        try:
            with self.atomic():
                for text, vec in vectors.items():
                    self.db.execute("INSERT OR REPLACE INTO query_cache VALUES (?, ?, ?, ?)",
                                    [weights_sha256, text, encode_vector(vec), now()])
                self.db.execute("DELETE FROM query_cache WHERE rowid NOT IN (SELECT rowid FROM query_cache "
                                "ORDER BY used_at DESC LIMIT ?)", [QUERY_CACHE_SIZE])
        except sqlite3.OperationalError:
            pass  # a read-only or busy index still answers; the cache is only a shortcut

    def label_vectors(self, weights_sha256: str, label_set: str, labels: list[str]) -> np.ndarray | None:
        """The cached embeddings of a label set for this model, or None when any is missing."""
        rows = dict(self.db.execute("SELECT label, vector FROM label_vectors WHERE weights_sha256 = ? AND "
                                    "label_set = ?", [weights_sha256, label_set]).fetchall())
        if any(lab not in rows for lab in labels):
            return None
        return np.stack([np.frombuffer(rows[lab], dtype="<f4") for lab in labels]).astype(np.float32)

    def save_label_vectors(self, weights_sha256: str, label_set: str, labels: list[str], mat: np.ndarray) -> None:
        with self.atomic():
            for lab, vec in zip(labels, mat, strict=True):
                self.db.execute("INSERT OR REPLACE INTO label_vectors VALUES (?, ?, ?, ?)",
                                [weights_sha256, label_set, lab, encode_vector(vec)])

    def replace_tags(self, image_ids: list[int], source: str, label_set: str,
                     tags: list[list[tuple[str, float]]]) -> None:
        """Re-tagging is idempotent: a source's old tags on these photos are replaced, in one transaction."""
        with self.atomic():
            self.db.executemany("DELETE FROM tags WHERE image_id = ? AND source = ?",
                                     [(i, source) for i in image_ids])
            self.db.executemany("INSERT INTO tags VALUES (?, ?, ?, ?, ?)",
                                     [(image_id, label, score, source, label_set)
                                      for image_id, image_tags in zip(image_ids, tags, strict=True)
                                      for label, score in image_tags])
            # No generation bump: tags change no vector, so the FAISS file stays valid.

    def save_probe(self, weights_sha256: str, name: str, weights: np.ndarray, bias: float, examples: int) -> None:
        with self.atomic():
            self.db.execute("INSERT OR REPLACE INTO personal_tags VALUES (?, ?, ?, ?, ?, ?)",
                            [name, weights_sha256, encode_vector(weights), bias, examples, now()])

    def probes(self, weights_sha256: str) -> list[tuple[str, np.ndarray, float, int]]:
        return [(n, np.frombuffer(v, dtype="<f4").astype(np.float32), float(b), int(e)) for n, v, b, e in
                self.db.execute("SELECT name, vector, bias, examples FROM personal_tags WHERE weights_sha256 = ? "
                                "ORDER BY name", [weights_sha256])]

    def forget_probe(self, name: str) -> int:
        with self.atomic():
            n = self.db.execute("DELETE FROM personal_tags WHERE name = ?", [name]).rowcount
            self.db.execute("DELETE FROM tags WHERE label = ? AND source = 'few-shot'", [name])
        return int(n)

    def tag_counts(self) -> list[tuple[str, str, int]]:
        return [(lab, src, int(n)) for lab, src, n in self.db.execute(
            "SELECT label, source, count(*) FROM tags GROUP BY label, source ORDER BY count(*) DESC, label")]

    def tags_of(self, image_ids: list[int]) -> dict[int, list[tuple[str, float, str]]]:
        out: dict[int, list[tuple[str, float, str]]] = {i: [] for i in image_ids}
        for chunk_start in range(0, len(image_ids), 500):
            chunk = image_ids[chunk_start:chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            for image_id, label, score, source in self.db.execute(
                    f"SELECT image_id, label, score, source FROM tags WHERE image_id IN ({marks}) "
                    "ORDER BY score DESC", chunk):
                out[image_id].append((label, float(score), source))
        return out

    def ids_with_tags(self, labels: list[str]) -> set[int]:
        """Photos carrying every one of `labels` (case-insensitive)."""
        ids: set[int] | None = None
        for label in labels:
            found = {int(r[0]) for r in self.db.execute(
                "SELECT image_id FROM tags WHERE lower(label) = lower(?)", [label])}
            ids = found if ids is None else ids & found
        return ids or set()
