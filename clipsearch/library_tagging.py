"""The tagging half of `Library`: zero-shot tags, personal tags learnt from examples, listing them.

`Library` inherits these methods; they live here to keep library.py about one job (index and search).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch import relevance, scan, text_model
from clipsearch import search as search_mod
from clipsearch.embedder import ModelIdentity
from clipsearch.errors import UsageError
from clipsearch.store import Store, check_same_model, os_path

if TYPE_CHECKING:
    from pathlib import Path

    from clipsearch import indexer, tagging
    from clipsearch.embedder import Embedder


@dataclass
class TagSummary:
    """What a tagging run did."""

    photos: int
    tagged: int
    counts: dict[str, int]
    label_set: str
    labels: int
    method: str
    sidecars_changed: int = 0
    sidecars: list[str] | None = None
    sidecar_errors: list[str] | None = None

    def as_dict(self) -> dict[str, object]:
        return {"photos": self.photos, "tagged": self.tagged, "untagged": self.photos - self.tagged,
                "counts": self.counts, "label_set": self.label_set, "labels": self.labels,
                "threshold_method": self.method, "sidecars_changed": self.sidecars_changed,
                "sidecar_errors": self.sidecar_errors or []}


class Tagging:
    """Library's tagging methods (see tagging.py for the method, docs/tagging.md for the why)."""

    if TYPE_CHECKING:  # what these methods use of Library, for the type checker
        path: Path

        def _require_model(self, store: Store) -> ModelIdentity: ...

        def embedder(self) -> Embedder: ...

        def index(self, paths: Iterable[str | os.PathLike[str]], *,
                  progress: indexer.Progress | None = None) -> indexer.IndexSummary: ...

    def tag(self, paths: Iterable[str | os.PathLike[str]] = (), *, labels: list[tagging.Label] | None = None,
            template_set: str = "photo", top: int = 5, threshold: float | None = None,
            z: float = search_mod.DEFAULT_Z, write_xmp: bool = False, clear_xmp: bool = False,
            dry_run: bool = False, progress: indexer.Progress | None = None) -> TagSummary:
        """Zero-shot tags for indexed photos under `paths` (indexing them first), stored in SQLite.

        With `write_xmp` the tags also go to XMP sidecars; `clear_xmp` removes clipsearch's tags from
        them instead. `dry_run` computes and reports without writing tags or sidecars.
        """
        from clipsearch import tagging

        given = [os.fspath(p) for p in paths]
        if given:  # indexing only fills the index (never the photos), so a dry run does it too
            self.index(given, progress=progress)
        labels = labels if labels is not None else tagging.default_labels()
        tpl = tagging.templates(template_set)
        names = [lab.name for lab in labels]
        store = Store.open(self.path)
        try:
            recorded = self._require_model(store)
            set_id = tagging.label_set_id(labels, tpl)
            label_mat = store.label_vectors(recorded.weights_sha256, set_id, names)
            if label_mat is None:
                label_mat = tagging.label_vectors(labels, tpl, self._text_encoder(recorded).embed_texts)
                store.save_label_vectors(recorded.weights_sha256, set_id, names, label_mat)
            # The alternatives text queries are weighed against (relevance.py), kept beside the labels.
            prompts = relevance.background_prompts()
            bg_id = relevance.background_set_id(prompts)
            background = store.label_vectors(recorded.weights_sha256, bg_id, prompts)
            if background is None and threshold is None:
                background = self._text_encoder(recorded).embed_texts(prompts)
                store.save_label_vectors(recorded.weights_sha256, bg_id, prompts, background)
            ids, mat = store.all_vectors()
            cut = tagging.thresholds(mat, label_mat, z, threshold, background,
                                     relevance.logit_scale_of(store.meta("logit_scale")))
            roots = tuple(os.path.abspath(os.path.expanduser(p)) for p in given)
            # Photo rows are read only when a scope or sidecars need them (100k rows cost ~0.8 s).
            rows = store.images(ids.tolist()) if roots or write_xmp or clear_xmp else {}
            in_scope = [n for n, i in enumerate(ids.tolist())
                        if not roots or search_mod.Filters(within=roots).accepts(rows[i])]
            assigned = tagging.assign(mat[in_scope], label_mat, cut, top)
            scope_ids = [int(ids[n]) for n in in_scope]
            tags = [[(names[k], score) for k, score in found] for found in assigned]
            probes = store.probes(recorded.weights_sha256)
            if probes:
                sub = mat[in_scope]
                learned: list[list[tuple[str, float]]] = [[] for _ in scope_ids]
                for name, weights, bias, examples in probes:
                    probe = tagging.Probe(name, weights, bias, examples)
                    for row, p in enumerate(probe.probability(sub)):
                        if p >= 0.5:
                            learned[row].append((name, float(p)))
                for row, extra in enumerate(learned):
                    tags[row] = tags[row] + extra
                if not dry_run:
                    store.replace_tags(scope_ids, "few-shot", "personal", learned)
            if not dry_run:
                store.replace_tags(scope_ids, "zero-shot", set_id,
                                   [[t for t in found if not any(t[0] == p[0] for p in probes)] for found in tags])
            counts: dict[str, int] = {}
            for found in tags:
                for name, _ in found:
                    counts[name] = counts.get(name, 0) + 1
            summary = TagSummary(len(scope_ids), sum(1 for t in tags if t), dict(sorted(
                counts.items(), key=lambda kv: -kv[1])), set_id, len(labels), cut.method)
            if write_xmp or clear_xmp:
                from clipsearch import xmp

                changed, failed = [], []
                for image_id, found in zip(scope_ids, tags, strict=True):
                    try:
                        path, did = xmp.update(rows[image_id].path, [] if clear_xmp else [n for n, _ in found],
                                               dry_run=dry_run)
                    except (ValueError, OSError) as exc:  # a broken or read-only sidecar costs only itself
                        failed.append(f"{rows[image_id].path}: {exc}")
                        continue
                    if did:
                        changed.append(str(path))
                summary.sidecars_changed, summary.sidecars, summary.sidecar_errors = len(changed), changed, failed
            return summary
        finally:
            store.close()

    def learn(self, name: str, examples: Iterable[str | os.PathLike[str]], *,
              negatives: Iterable[str | os.PathLike[str]] = (), use_text: bool = True) -> tagging.Probe:
        """Learn a personal tag from example photos (indexed or not); `tag` applies it from then on.

        Negatives default to up to 2,000 other indexed photos, taken as "mostly not this".
        """
        from clipsearch import tagging

        name = " ".join(name.split())
        if not name:
            raise UsageError("a personal tag needs a name")
        store = Store.open(self.path)
        try:
            recorded = self._require_model(store)
            pos_ids, pos = self._vectors_of(store, recorded, examples)
            negatives = list(negatives)
            if negatives:
                _, neg = self._vectors_of(store, recorded, negatives)
            else:
                ids, mat = store.all_vectors()
                keep = np.flatnonzero(~np.isin(ids, list(pos_ids)))
                pick = np.random.default_rng(0).permutation(keep)[:2000]
                neg = mat[np.sort(pick)]
            prior = self._text_encoder(recorded).embed_texts([f"a photo of {name}"])[0] if use_text else None
            probe = tagging.learn_probe(name, pos, neg, prior)
            store.save_probe(recorded.weights_sha256, name, probe.weights, probe.bias, probe.examples)
            return probe
        finally:
            store.close()

    def forget(self, name: str) -> bool:
        store = Store.open(self.path)
        try:
            return store.forget_probe(name) > 0
        finally:
            store.close()

    def _vectors_of(self, store: Store, recorded: ModelIdentity,
                    paths: Iterable[str | os.PathLike[str]]) -> tuple[set[int], np.ndarray]:
        """Vectors of photos or folders of photos: stored ones when indexed, else embedded now."""
        from clipsearch import images

        files: list[str] = []
        for given in paths:
            path = os.path.abspath(os.path.expanduser(os.fspath(given)))
            if os.path.isdir(path):
                files += [f.path for f in scan.walk([path])]
            elif os.path.isfile(path):
                files.append(path)
            else:
                raise UsageError(f"no such file or folder: {given}")
        ids: set[int] = set()
        vecs: list[np.ndarray] = []
        for path in files:
            image_id = store.id_for_path(path)
            if image_id is not None:
                ids.add(image_id)
                vecs.append(store.vectors_for([image_id])[0])
                continue
            emb = self.embedder()
            check_same_model(recorded, emb.identity)
            try:
                decoded = images.decode(path, emb.preprocess)
            except images.SkipFile as skip:
                raise UsageError(f"cannot use {scan.display_path(path)} as an example: {skip}") from None
            vecs.append(emb.embed_images(decoded.pixels[None])[0])
        if not vecs:
            raise UsageError("no example photos found")
        return ids, np.stack(vecs)

    def tag_counts(self) -> list[tuple[str, str, int]]:
        store = Store.open(self.path)
        try:
            return store.tag_counts()
        finally:
            store.close()

    def all_tags(self) -> list[tuple[str, str, float, str]]:
        """(path, label, score, source) for every tag, for export."""
        store = Store.open(self.path)
        try:
            return [(os_path(p, raw), lab, float(sc), src) for p, raw, lab, sc, src in store.db.execute(
                "SELECT images.path, images.path_raw, label, score, source FROM tags JOIN images "
                "ON images.id = tags.image_id ORDER BY images.path, score DESC")]
        finally:
            store.close()

    def _text_encoder(self, recorded: ModelIdentity) -> Any:
        """The exported text tower when there is one (no torch), else the model itself."""
        if text_model.available(self.path, recorded.weights_sha256):
            return text_model.OnnxTextEncoder(self.path / text_model.FOLDER)
        emb = self.embedder()
        check_same_model(recorded, emb.identity)
        return emb
