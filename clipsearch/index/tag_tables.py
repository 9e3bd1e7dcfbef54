"""The tables around the photos' tags: label embeddings, tags, personal-tag probes.

A `Store` holds one as `store.tags`; its SQL is the store's, kept apart from images and vectors.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable

import numpy as np

from clipsearch.index.records import decode_vector, encode_vector, now, os_path


class TagTables:
    """Label embeddings, tags and probes of one index database (the store's connection and transactions)."""

    def __init__(self, db: sqlite3.Connection, atomic: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self.db = db
        self.atomic = atomic

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
        return [(n, decode_vector(v), float(b), int(e)) for n, v, b, e in
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

    def page_with_tag(self, label: str, offset: int, limit: int) -> tuple[list[int], int]:
        """(ids of a page of the photos carrying `label`, most confident first; how many carry it)."""
        total = int(self.db.execute("SELECT count(DISTINCT image_id) FROM tags WHERE lower(label) = lower(?)",
                                    [label]).fetchone()[0])
        ids = [int(r[0]) for r in self.db.execute(
            "SELECT image_id FROM tags WHERE lower(label) = lower(?) GROUP BY image_id ORDER BY max(score) DESC, "
            "image_id LIMIT ? OFFSET ?", [label, limit, offset])]
        return ids, total

    def all_tags(self) -> list[tuple[str, str, float, str]]:
        """(path, label, score, source) for every tag, by path then best score."""
        return [(os_path(p, raw), lab, float(sc), src) for p, raw, lab, sc, src in self.db.execute(
            "SELECT images.path, images.path_raw, label, score, source FROM tags JOIN images "
            "ON images.id = tags.image_id ORDER BY images.path, score DESC")]
