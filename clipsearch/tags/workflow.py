"""The tag workflow: label vectors (cached per model), per-label thresholds, zero-shot and personal
tags for the photos in scope, stored in SQLite and, when asked, merged into XMP sidecars.

A function over an open store; `Library.tag` opens the store, indexes first and picks the text
encoder. docs/tagging.md explains the method.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clipsearch import paths
from clipsearch.errors import UsageError
from clipsearch.index import video_tables
from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.model.identity import ModelIdentity
from clipsearch.search import relevance
from clipsearch.tags import zero_shot
from clipsearch.tags.probes import Probe, learn_probe

PERSONAL_SET = "personal"


class TextEncoder(Protocol):
    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


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
    sidecars: list[str] = field(default_factory=list)
    sidecar_errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"photos": self.photos, "tagged": self.tagged, "untagged": self.photos - self.tagged,
                "counts": self.counts, "label_set": self.label_set, "labels": self.labels,
                "threshold_method": self.method, "sidecars_changed": self.sidecars_changed,
                "sidecar_errors": self.sidecar_errors}


@dataclass(frozen=True)
class TagRequest:
    """What to tag with: the label set and templates, how many tags a photo may get, the cutoff."""

    labels: list[zero_shot.Label]
    template_set: tuple[str, ...]
    top: int = 5
    threshold: float | None = None
    z: float = zero_shot.DEFAULT_Z


Tags = list[list[tuple[str, float]]]  # per photo: (label, score)


def tag(store: Store, recorded: ModelIdentity, request: TagRequest, encoder: Callable[[], TextEncoder],
        roots: tuple[str, ...] = (), write_xmp: bool = False, clear_xmp: bool = False,
        dry_run: bool = False) -> TagSummary:
    """Tag the indexed photos under `roots` (all when empty); `encoder` is called only when the label
    set's vectors are not cached for this model. `clear_xmp` only clears the sidecars."""
    if clear_xmp:
        return clear_sidecars(store, roots, dry_run)
    if request.threshold is None:
        zero_shot.require_calibration_photos(store.count())
    set_id = zero_shot.label_set_id(request.labels, request.template_set)
    label_mat = label_matrix(store, recorded, request, set_id, encoder)
    # The alternatives text queries are weighed against (search/relevance.py), kept beside the labels:
    # a label must be at least as likely as an average one of them.
    background = None if request.threshold is not None else _background(store, recorded, encoder)
    bias = relevance.logit_bias_of(store.meta("logit_bias"))  # a sigmoid-loss model's probability admits too
    ids, mat = store.all_vectors()
    cut = zero_shot.thresholds(mat, label_mat, request.z, request.threshold, background,
                               relevance.logit_scale_of(store.meta("logit_scale")), bias)
    # Photo rows are read only when a scope or sidecars need them (100k rows cost ~0.8 s).
    rows = store.images(ids.tolist()) if roots or write_xmp or clear_xmp else {}
    in_scope = [n for n, i in enumerate(ids.tolist()) if not roots or paths.under(rows[i].path, roots)]
    scope_ids = [int(ids[n]) for n in in_scope]
    scoped = mat if len(in_scope) == len(mat) else mat[in_scope]  # the whole library: no 200 MB copy at 100k
    names = [lab.name for lab in request.labels]
    zero = [[(names[k], score) for k, score in found]
            for found in zero_shot.assign(scoped, label_mat, cut, request.top)]
    probes = [Probe(*row) for row in store.tags.probes(recorded.weights_sha256)]
    personal = personal_tags(probes, scoped)
    # A video is tagged with what any of its moments shows: its frames' tags go to its own row.
    owners = video_tables.frame_owners(store.db)
    if owners:
        _, zero = fold_frames(scope_ids, zero, owners)
        scope_ids, personal = fold_frames(scope_ids, personal, owners)
    if not dry_run:
        store.tags.replace_tags(scope_ids, "zero-shot", set_id, zero)
        if probes:
            store.tags.replace_tags(scope_ids, "few-shot", PERSONAL_SET, personal)
    # A photo's tag names, each once: a zero-shot label and a personal tag may share a name.
    combined = [list(dict.fromkeys(n for n, _ in z + p)) for z, p in zip(zero, personal, strict=True)]
    counts = Counter(n for found in combined for n in found)
    summary = TagSummary(len(scope_ids), sum(1 for c in combined if c), dict(counts.most_common()), set_id,
                         len(request.labels), cut.method)
    if write_xmp or clear_xmp:
        _sidecars([rows[i] for i in scope_ids], [[] if clear_xmp else c for c in combined], dry_run, summary)
    return summary


def clear_sidecars(store: Store, roots: tuple[str, ...], dry_run: bool) -> TagSummary:
    """clipsearch's tags out of the sidecars of the photos under `roots` (all when empty), and nothing else:
    no label is embedded, no threshold needed, the tags stored in the index and other keywords stay."""
    from clipsearch.tags import xmp

    records = [r for r in store.iter_images() if (not roots or paths.under(r.path, roots))
               and xmp.sidecar_for(r.path).exists()]  # a photo without a sidecar has nothing to clear
    summary = TagSummary(len(records), 0, {}, "", 0, "none")
    _sidecars(records, [[] for _ in records], dry_run, summary)
    return summary


def label_matrix(store: Store, recorded: ModelIdentity, request: TagRequest, set_id: str,
                 encoder: Callable[[], TextEncoder]) -> np.ndarray:
    """The label set's vectors for this model, embedded once and cached in SQLite."""
    names = [lab.name for lab in request.labels]
    cached = store.tags.label_vectors(recorded.weights_sha256, set_id, names)
    if cached is not None:
        return cached
    enc = encoder()
    # The exported tower's prefix graph where it has one: each template's prefix computed once.
    prefix = enc.prefix_encoder() if hasattr(enc, "prefix_encoder") else None
    mat = zero_shot.label_vectors(request.labels, request.template_set, enc.embed_texts,
                                  getattr(enc, "token_lengths", None),
                                  prefix.embed_shared if prefix is not None else None)
    store.tags.save_label_vectors(recorded.weights_sha256, set_id, names, mat)
    return mat


def _background(store: Store, recorded: ModelIdentity, encoder: Callable[[], TextEncoder]) -> np.ndarray:
    prompts = relevance.background_prompts([lab.name for lab in zero_shot.default_labels()])
    set_id = relevance.background_set_id(prompts)
    mat = store.tags.label_vectors(recorded.weights_sha256, set_id, prompts)
    if mat is None:
        mat = encoder().embed_texts(prompts)
        store.tags.save_label_vectors(recorded.weights_sha256, set_id, prompts, mat)
    return mat


def personal_tags(probes: list[Probe], mat: np.ndarray) -> Tags:
    """Each photo's personal tags: the probes that give it a probability of at least one half."""
    found: Tags = [[] for _ in range(len(mat))]
    for probe in probes:
        for row, p in enumerate(probe.probability(mat)):
            if p >= 0.5:
                found[row].append((probe.name, float(p)))
    return found


def learn(store: Store, recorded: ModelIdentity, name: str, examples: Iterable[str | os.PathLike[str]],
          negatives: Iterable[str | os.PathLike[str]], embed: Callable[[str], np.ndarray],
          text_encoder: Callable[[], TextEncoder] | None) -> Probe:
    """Learn and save a personal tag. Negatives default to up to 2,000 other indexed photos, taken as
    "mostly not this"; with a `text_encoder` the tag's name is the probe's prior (probes.py)."""
    name = " ".join(name.split())
    if not name:
        raise UsageError("a personal tag needs a name")
    pos_ids, pos = example_vectors(store, examples, embed)
    negatives = list(negatives)
    if negatives:
        neg = example_vectors(store, negatives, embed)[1]
    else:
        ids, mat = store.all_vectors()
        keep = np.flatnonzero(~np.isin(ids, list(pos_ids)))
        neg = mat[np.sort(np.random.default_rng(0).permutation(keep)[:2000])]
    prior = text_encoder().embed_texts([f"a photo of {name}"])[0] if text_encoder is not None else None
    probe = learn_probe(name, pos, neg, prior)
    store.tags.save_probe(recorded.weights_sha256, name, probe.weights, probe.bias, probe.examples)
    return probe


def example_vectors(store: Store, given: Iterable[str | os.PathLike[str]],
                    embed: Callable[[str], np.ndarray]) -> tuple[set[int], np.ndarray]:
    """Vectors of example photos or folders of them: stored ones when indexed, else `embed`ded now."""
    from clipsearch.ingest import scan

    files: list[str] = []
    for item in given:
        path = paths.resolve(item)
        if os.path.isdir(path):
            files += [f.path for f in scan.walk([path])]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise UsageError(f"no such file or folder: {os.fspath(item)}")
    ids = {i for i in (store.id_for_path(f) for f in files) if i is not None}
    vecs = [store.vectors_of_ids([i])[0] if (i := store.id_for_path(f)) is not None else embed(f) for f in files]
    if not vecs:
        raise UsageError("no example photos found")
    return ids, np.stack(vecs)


def _sidecars(records: list[ImageRecord], tags: list[list[str]], dry_run: bool, summary: TagSummary) -> None:
    from clipsearch.tags import xmp

    for record, names in zip(records, tags, strict=True):
        try:
            path, did = xmp.update(record.path, names, dry_run=dry_run)
        except (ValueError, OSError) as exc:  # a broken or read-only sidecar costs only itself
            summary.sidecar_errors.append(f"{record.path}: {exc}")
            continue
        if did:
            summary.sidecars.append(str(path))
    summary.sidecars_changed = len(summary.sidecars)


def fold_frames(ids: list[int], found: list[list[tuple[str, float]]], owners: dict[int, int]
                ) -> tuple[list[int], list[list[tuple[str, float]]]]:
    """(ids, tags) with each video frame's tags moved onto its video's row (best score per label)."""
    pos = {i: n for n, i in enumerate(ids)}
    merged = [dict(f) for f in found]
    keep = []
    for n, i in enumerate(ids):
        video = owners.get(i)
        if video is None:
            keep.append(n)
        elif video in pos:
            target = merged[pos[video]]
            for name, score in found[n]:
                target[name] = max(score, target.get(name, score))
    return [ids[n] for n in keep], [sorted(merged[n].items(), key=lambda kv: -kv[1]) for n in keep]
