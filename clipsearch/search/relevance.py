"""The relevance cutoff's statistics, shared by search and tagging (docs/search.md, docs/tagging.md).

A query's scores against a sample of the whole index form its own "unrelated photo" distribution.
A result counts as relevant when its score stands out of that distribution by Z robust standard
deviations (median + Z * 1.4826 * MAD). Different queries and models have very different score
ranges (a good CLIP match is 0.3 for one query and 0.22 for another), so a fixed threshold cannot
work; a query's own distribution can.
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
    return median + z_eff * sigma, {"median": median, "sigma": sigma, "z": z_eff}


def robust_stats(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 * median absolute deviation: a Gaussian's (mean, sigma), outliers ignored."""
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))
