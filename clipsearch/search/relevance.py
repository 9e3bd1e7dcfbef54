"""Is a photo relevant to a query? CLIP's own zero-shot decision, and the library's statistics where they help.

Text queries (docs/search.md): the CLIP paper's zero-shot classifier decides by comparing a photo's
score for a text with its scores for alternative texts, through a softmax at the model's logit scale.
clipsearch does that per photo, with the built-in tag vocabulary ("a photo of a beach.", ...) as the
alternatives: a photo is relevant when the query takes at least half of that softmax, i.e. the query
describes the photo better than all the alternatives together. This needs nothing from the rest of
the library, so it holds in a library of one subject (where "most photos are unrelated" is false) and
in a small one; a query about nothing in the library loses every photo to some alternative.
Alternatives that paraphrase the query (its text neighbours, robust outliers of the vocabulary's
similarities to it) are left out, so "beach" is not outvoted by the label "beach".

Image queries and `similar` have no text to compare: they keep the robust cutoff over the library
(`adaptive_cutoff`: median + Z robust deviations of the query's scores against a sample of the
library), capped at NEAR_COPY so a near-copy always passes, and never above 1.0.

The robust statistics are shared with tagging's per-label calibration (docs/tagging.md).
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_Z = 3.0
# Below this many photos the backdrop is too small (and too likely to be all one subject) to say
# what "unrelated" scores: no cutoff, the top N are shown.
MIN_FOR_CUTOFF = 200


def normal_quantile(p: float) -> float:
    """The standard normal's inverse CDF, by bisection on math.erfc (to 1e-12).

    statistics.NormalDist does the same but importing statistics (fractions, decimal, random)
    costs a cold query 10 ms.
    """
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def adaptive_cutoff(query: np.ndarray, sample: np.ndarray, z: float,
                    library_size: int | None = None) -> tuple[float | None, dict[str, float]]:
    """median + Z * robust sigma of the query's scores against a sample of the index.

    Z is at least `z`, and high enough that a library of `library_size` wholly unrelated photos
    would let through half a photo on average (a Gaussian tail of 0.5 / N): a fixed Z = 3 passes
    0.13 % of unrelated photos, which is 130 junk results at 100k photos.
    """
    return cutoff_from_scores(sample @ query, z, library_size)


def cutoff_from_scores(scores: np.ndarray, z: float,
                       library_size: int | None = None) -> tuple[float | None, dict[str, float]]:
    """adaptive_cutoff for scores already computed (tagging scores every label at once)."""
    n = library_size or len(scores)
    if len(scores) < MIN_FOR_CUTOFF or n < MIN_FOR_CUTOFF:
        return None, {}
    z_eff = max(z, normal_quantile(1 - 0.5 / n))
    median, sigma = robust_stats(scores)
    sigma = sigma or float(scores.std()) or 1e-6
    # No cosine exceeds 1.0: a cutoff above it (a backdrop of near-copies, a damaged index) would
    # only ever mean "nothing", never a judgement about the photos.
    return min(median + z_eff * sigma, 1.0), {"median": median, "sigma": sigma, "z": z_eff}


def robust_stats(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 * median absolute deviation: a Gaussian's (mean, sigma), outliers ignored."""
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


# CLIP's trained temperature is clamped at 100 and the pretrained models sit there; an index whose
# model never recorded its own scale (or a query that loads no model) uses it.
DEFAULT_LOGIT_SCALE = 100.0
# The query must take at least this share of the softmax over itself and the alternatives.
MIN_SHARE = 0.5
# Vocabulary texts this many robust deviations more similar to the query than the vocabulary's
# median are paraphrases of it, not alternatives.
PARAPHRASE_Z = 3.0
# A cosine at which two photos are copies of one picture (duplicates.NEAR_COSINE): no adaptive
# cutoff may lie above it, so crops, resizes and re-encodes of the query are always shown.
NEAR_COPY = 0.95
TEMPLATE = "a photo of {}."


def background_prompts(labels: list[str]) -> list[str]:
    """The alternatives a text query competes with: every label of the built-in tag vocabulary
    (tags/zero_shot.default_labels, which the caller passes) in one photo template."""
    return [TEMPLATE.format(name) for name in labels]


def background_set_id(prompts: list[str]) -> str:
    """Where the background's vectors are kept in SQLite (`label_vectors`, per model)."""
    import hashlib

    return "relevance:" + hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16]


def alternative_mask(query: np.ndarray, background: np.ndarray, z: float = PARAPHRASE_Z) -> np.ndarray:
    """Which background texts are alternatives to the query, as booleans: all but those that
    paraphrase it (its robust outliers in text space).

    Each remaining text counts once, as a class does in CLIP's zero-shot softmax. (Counting texts
    that embed alike as one vote was tried: on the tiny model, whose unknown words all embed alike,
    it let half-matching photos and unrelated queries through; see docs/search.md.)
    """
    return _not_paraphrases(background @ query, z)


def _not_paraphrases(sims: np.ndarray, z: float) -> np.ndarray:
    """One text's similarities to the background -> which background texts do not paraphrase it."""
    centre, spread = robust_stats(sims)
    return sims < centre + z * spread if spread > 0 else sims < centre + 1e-6


def query_share(scores: np.ndarray, alt_scores: np.ndarray, logit_scale: float) -> np.ndarray:
    """Per photo, the query's probability in a softmax over [query, alternatives] at `logit_scale`.

    `scores` (k,) are the photos' cosines with the query, `alt_scores` (k, m) with the alternatives.
    """
    if alt_scores.shape[1] == 0:
        return np.ones(len(scores))
    top = np.maximum(scores, alt_scores.max(axis=1))
    mine = np.exp(logit_scale * (scores - top))
    rest = np.exp(logit_scale * (alt_scores - top[:, None])).sum(axis=1)
    return mine / (mine + rest)


def paraphrase_mask(texts: np.ndarray, background: np.ndarray, z: float = PARAPHRASE_Z) -> np.ndarray:
    """(texts, background) booleans: True where a background text is an alternative to that text."""
    sims = texts @ background.T
    keep = np.ones(sims.shape, dtype=bool)
    for j, row in enumerate(sims):
        keep[j] = _not_paraphrases(row, z)
    return keep


def beats_average_alternative(scores: np.ndarray, alt_scores: np.ndarray, keep: np.ndarray,
                              logit_scale: float) -> np.ndarray:
    """(photos, labels) booleans: the label is at least as likely as the average of its alternatives.

    A tag is a partial description ("red" of a red circle), so it cannot be asked to beat all the
    alternatives together as a query is; in the same softmax, it must at least not fall below the
    level of a typical alternative (its share at least 1 / (alternatives + 1)). `scores` (k, L) are
    the photos' cosines with the labels, `alt_scores` (k, m) with the background, `keep` (L, m)
    which background texts are alternatives to each label (paraphrase_mask).
    """
    top = alt_scores.max(axis=1, keepdims=True)
    each = np.exp(logit_scale * (alt_scores - top))
    total = each @ keep.T.astype(each.dtype)  # (k, L): each label's alternatives' summed weights
    counts = np.maximum(keep.sum(axis=1), 1).astype(total.dtype)
    # weight(label) >= total / count, compared as weight * count >= total in the weights' own dtype,
    # in place: a log per (photo, label) in float64 took most of a re-tag. A label far above every
    # alternative overflows to inf, which passes, as it should.
    weight = scores - top
    weight *= np.asarray(logit_scale, dtype=weight.dtype)
    with np.errstate(over="ignore"):
        np.exp(weight, out=weight)
        weight *= counts[None, :]
    return weight >= total


def cap(cutoff: float | None) -> float | None:
    """An adaptive cutoff never lies above what a near-copy scores (and so never above 1.0)."""
    return None if cutoff is None else min(cutoff, NEAR_COPY)


def logit_scale_of(recorded: str | None) -> float:
    """The scale an index recorded for its model (meta `logit_scale`), else CLIP's default."""
    try:
        value = float(recorded) if recorded else DEFAULT_LOGIT_SCALE
    except ValueError:
        return DEFAULT_LOGIT_SCALE
    return value if np.isfinite(value) and value > 0 else DEFAULT_LOGIT_SCALE


# A sigmoid-loss model (SigLIP) says per pair how likely the text describes the photo. "More likely
# than not" is a principled bar for admitting a photo, but not for refusing one: true pairs often
# score well under it (the multilingual test model: matching pairs' median 0.20, while its 48-way
# zero-shot accuracy is 61 %), so it is added to the zero-shot decision, not put in its place.
MIN_PROBABILITY = 0.5


def pair_probability(scores: np.ndarray, logit_scale: float, logit_bias: float) -> np.ndarray:
    """sigmoid(scale * cosine + bias): a SigLIP model's probability that each pair matches."""
    return 1.0 / (1.0 + np.exp(-(logit_scale * np.asarray(scores, dtype=np.float64) + logit_bias)))


def logit_bias_of(recorded: str | None) -> float | None:
    """The bias an index recorded for a sigmoid-loss model (meta `logit_bias`); None for softmax CLIP."""
    try:
        value = float(recorded) if recorded else None
    except ValueError:
        return None
    return value if value is not None and np.isfinite(value) else None
