"""Zero-shot tagging: label texts become classifiers, calibrated per label so "none of these" is possible.

Each label's text embedding is the normalised mean over prompt templates (the CLIP paper's prompt
ensembling) and its variants. Scores of every photo against every label are one matrix product.
A photo gets a label when its score stands out of that label's own distribution over the library
(median + Z robust deviations, Z raised with library size as in search/relevance.py): a label that fits no
photo tags nothing, and a photo that fits no label gets no tag, unlike an argmax over a closed set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np

from clipsearch.errors import UsageError
from clipsearch.model.prefix_tower import prefixes_of
from clipsearch.search import relevance
from clipsearch.search.relevance import DEFAULT_Z, MIN_FOR_CUTOFF, cutoff_from_scores, robust_stats

PHOTO_TEMPLATES = (
    "a photo of {}.", "a photo of a {}.", "a picture of {}.", "a close-up photo of {}.", "a photo showing {}.",
    "a snapshot of {}.", "an image of {}.", "{}",
)


@dataclass(frozen=True)
class Label:
    name: str
    variants: tuple[str, ...] = ()


def parse_labels(text: str) -> list[Label]:
    """One label a line; `label: variant; variant` adds phrasings; `#` starts a comment."""
    labels: list[Label] = []
    seen: set[str] = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, rest = line.partition(":")
        name = " ".join(name.split())
        if not name:
            raise UsageError(f"label line without a label: {raw.strip()!r}")
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        labels.append(Label(name, tuple(v.strip() for v in rest.split(";") if v.strip())))
    if not labels:
        raise UsageError("the label set is empty")
    return labels


def default_labels() -> list[Label]:
    return parse_labels(resources.files("clipsearch").joinpath("data/labels.txt").read_text(encoding="utf-8"))


def templates(name: str) -> tuple[str, ...]:
    if name == "photo":
        return PHOTO_TEMPLATES
    if name == "none":
        return ("{}",)
    if name == "imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    raise UsageError(f"unknown template set {name!r}: photo, imagenet or none")


def prompts_for(label: Label, template_set: tuple[str, ...]) -> list[str]:
    return [t.format(label.name) for t in template_set] + list(label.variants)


def label_set_id(labels: list[Label], template_set: tuple[str, ...]) -> str:
    text = "\n".join(f"{lab.name}:{';'.join(lab.variants)}" for lab in labels) + "\n--\n" + "\n".join(template_set)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def label_vectors(labels: list[Label], template_set: tuple[str, ...],
                  embed_texts: Callable[[list[str]], np.ndarray],
                  token_lengths: Callable[[list[str]], np.ndarray] | None = None,
                  embed_shared: Callable[[list[str], list[str]], np.ndarray] | None = None) -> np.ndarray:
    """(labels, dim): each label the normalised mean of its normalised prompt embeddings.

    `embed_shared` (prefix_tower.PrefixEncoder's, where the export has its graph) embeds all prompts
    with each template's prefix computed once: the same vectors, about half the work. Else
    `token_lengths` (the encoder's, when it has one) orders the prompts; else their characters do.
    """
    prompts = [prompts_for(lab, template_set) for lab in labels]
    flat = [p for group in prompts for p in group]
    if embed_shared is not None:
        return _means(prompts, embed_shared(flat, prefixes_of(template_set)))
    # Batches of prompts of one length: the encoders cut every batch after its longest prompt's
    # end-of-text token (exact: causal mask, pooled at that token), so a long template in each
    # batch made all its prompts pay for padding. Sorted by tokens 1.3x faster on 1,000 labels.
    lengths = token_lengths(flat) if token_lengths is not None else [len(p) for p in flat]
    order = sorted(range(len(flat)), key=lambda j: int(lengths[j]))
    vecs = np.empty((len(flat), 0), np.float32)
    for i in range(0, len(flat), 256):
        batch = order[i:i + 256]
        got = embed_texts([flat[j] for j in batch])
        if not vecs.shape[1]:
            vecs = np.empty((len(flat), got.shape[1]), np.float32)
        vecs[batch] = got
    return _means(prompts, vecs)


def _means(prompts: list[list[str]], vecs: np.ndarray) -> np.ndarray:
    out, at = [], 0
    for group in prompts:
        mean = vecs[at:at + len(group)].mean(axis=0)
        out.append(mean / np.linalg.norm(mean))
        at += len(group)
    return np.stack(out).astype(np.float32)


@dataclass
class Thresholds:
    values: np.ndarray  # per label
    method: str
    # The zero-shot check against the search vocabulary (relevance.beats_average_alternative):
    # background vectors, which of them are alternatives to each label, the model's logit scale.
    background: np.ndarray | None = None
    keep: np.ndarray | None = None
    logit_scale: float = relevance.DEFAULT_LOGIT_SCALE
    sure: float | None = None  # a sigmoid-loss model's cosine of probability 0.5: passes the check too


def thresholds(mat: np.ndarray, labels_mat: np.ndarray, z: float = DEFAULT_Z,
               fixed: float | None = None, background: np.ndarray | None = None,
               logit_scale: float = relevance.DEFAULT_LOGIT_SCALE, logit_bias: float | None = None) -> Thresholds:
    """Per-label cutoffs: `fixed` for all, or each label's robust background over the library,
    lowered to the edge of the label's own cluster where the label set shows one (docs/tagging.md).

    With `background` (relevance.background_prompts' vectors) a photo must also give the label at
    least the likelihood of an average alternative text, as CLIP's zero-shot softmax weighs them.
    None is above 1.0, the largest cosine. A sigmoid-loss model (`logit_bias`, SigLIP) also gives
    every label its own probability sigmoid(scale * cos + bias) reaches 0.5 at (the cosine
    -bias / scale): that much admits a label whatever the statistics say (relevance.MIN_PROBABILITY).
    """
    if fixed is not None:
        return Thresholds(np.full(len(labels_mat), fixed, dtype=np.float32), "fixed")
    found = _calibrated(mat, labels_mat, z, background, logit_scale)
    if logit_bias is None:
        return found
    found.sure = float((np.log(relevance.MIN_PROBABILITY / (1 - relevance.MIN_PROBABILITY)) - logit_bias)
                       / logit_scale)
    found.values = np.minimum(found.values, np.float32(found.sure))
    found.method += f", or model probability >= {relevance.MIN_PROBABILITY:g}"
    return found


def require_calibration_photos(count: int) -> None:
    """Automatic thresholds need a library to learn what 'unrelated' scores from: said before any
    label is embedded (1,000 labels take seconds to minutes), not after."""
    if count < MIN_FOR_CUTOFF:
        raise UsageError(f"automatic thresholds need at least {MIN_FOR_CUTOFF} indexed photos to learn what "
                         f"'unrelated' scores; this index has {count}. Pass --threshold COSINE instead")


def _calibrated(mat: np.ndarray, labels_mat: np.ndarray, z: float, background: np.ndarray | None,
                logit_scale: float) -> Thresholds:
    require_calibration_photos(len(mat))
    sample = mat[:: max(1, len(mat) // 4096)][:4096]
    scores = sample @ labels_mat.T
    winners = scores.argmax(axis=1) if len(labels_mat) > 1 else None
    values, edges = [], 0
    for j in range(len(labels_mat)):
        cutoff, _ = cutoff_from_scores(scores[:, j], z, library_size=len(mat))
        value = np.inf if cutoff is None else cutoff
        edge = None if winners is None else cluster_edge(scores[:, j], winners == j)
        if edge is not None and edge < value:
            value, edges = edge, edges + 1
        values.append(value)
    method = "robust-z" if not edges else f"robust-z, cluster edge for {edges} of {len(labels_mat)} labels"
    capped = np.minimum(np.asarray(values, dtype=np.float32), 1.0)
    if background is None or len(background) == 0:
        return Thresholds(capped, method)
    return Thresholds(capped, method + ", zero-shot check", background,
                      relevance.paraphrase_mask(labels_mat, background), logit_scale)


EDGE_SIGMAS = 3.0
EDGE_MAX_SPREAD = 0.35  # of the label's spread over the whole library
EDGE_MAX_LEAK = 0.03  # of the photos the label does not win


def cluster_edge(scores: np.ndarray, wins: np.ndarray) -> float | None:
    """The lower edge of the photos a label wins, when they form a cluster of their own.

    The photos for which a label scores highest in its set (CLIP's zero-shot classification) are
    that label's candidates. When they are tight (their robust spread at most 0.35 of the label's
    spread over the library) and their edge, median - 3 robust sigmas, is reached by at most 3 % of
    the other photos, the edge separates the label's photos from the rest even where the robust
    background cannot: a label that fits a large share of the library, over a background made of
    several groups, puts its photos only 1-2 robust deviations above the median. A label that fits
    nothing wins photos that neither cluster nor stand apart, so "none of these" is unchanged.
    """
    won, rest = scores[wins], scores[~wins]
    if len(won) < max(5, len(scores) // 200) or len(rest) < 5:
        return None
    centre, spread = robust_stats(scores)
    won_centre, won_spread = robust_stats(won)
    if spread <= 0 or won_spread > EDGE_MAX_SPREAD * spread:
        return None
    edge = won_centre - EDGE_SIGMAS * won_spread
    if float(np.mean(rest >= edge)) > EDGE_MAX_LEAK or edge <= centre:
        return None
    return float(edge)


def assign(mat: np.ndarray, labels_mat: np.ndarray, cut: Thresholds, top: int) -> list[list[tuple[int, float]]]:
    """For each photo, up to `top` (label index, score) pairs that clear their label's threshold."""
    out: list[list[tuple[int, float]]] = []
    for start in range(0, len(mat), 8192):
        chunk_mat = mat[start:start + 8192]
        scores = chunk_mat @ labels_mat.T
        margin = scores - cut.values[None, :]
        if cut.background is not None and cut.keep is not None:
            likely = relevance.beats_average_alternative(scores, chunk_mat @ cut.background.T, cut.keep,
                                                         cut.logit_scale)
            if cut.sure is not None:
                likely |= scores >= cut.sure
            np.copyto(margin, -np.inf, where=~likely)
        passing_rows = np.flatnonzero((margin >= 0).any(axis=1))
        chunk: list[list[tuple[int, float]]] = [[] for _ in range(len(scores))]
        for r in passing_rows.tolist():  # most photos pass few labels: only those rows are sorted
            row_margin = margin[r]
            passing = np.flatnonzero(row_margin >= 0)
            best = passing[np.argsort(-row_margin[passing])][:top]
            chunk[r] = [(int(i), float(scores[r, i])) for i in best]
        out.extend(chunk)
    return out
