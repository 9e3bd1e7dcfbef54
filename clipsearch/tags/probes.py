"""Personal tags learnt from a few example photos: a linear probe on CLIP features.

The CLIP paper's linear probes, with the zero-shot head of the tag's name as the prior, so that
one example already gives a usable tag and more examples move it towards what they show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipsearch.errors import UsageError


@dataclass(frozen=True)
class Probe:
    """A linear probe on CLIP features: P(concept | photo) = sigmoid(w · x + b)."""

    name: str
    weights: np.ndarray
    bias: float
    examples: int

    def probability(self, mat: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(mat @ self.weights + self.bias)))


def learn_probe(name: str, positives: np.ndarray, negatives: np.ndarray, prior: np.ndarray | None = None,
                steps: int = 500, l2: float = 0.05) -> Probe:
    """Logistic regression with balanced classes, regularised towards the text prior when there is one.

    With a text name the zero-shot classifier (the label's embedding, scaled like CLIP's logits) is
    where the weights start and what they are pulled back to: with one example the probe is mostly
    the text, with many mostly the examples (the few-shot recipe of the CLIP paper's linear probes,
    with the zero-shot head as prior).
    """
    if len(positives) == 0:
        raise UsageError("give at least one example photo")
    if len(negatives) == 0:
        raise UsageError("need photos that are not examples: index more photos or pass --negatives")
    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    weight = np.where(y == 1, 0.5 / len(positives), 0.5 / len(negatives))
    w0 = np.zeros(x.shape[1]) if prior is None else prior.astype(np.float64) * 20.0
    w, b = w0.copy(), float(-(x @ w0).mean()) if prior is not None else 0.0
    lr = 2.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        g = weight * (p - y)
        w -= lr * (x.T @ g + l2 * (w - w0))
        b -= lr * float(g.sum())
    return Probe(name, w.astype(np.float32), b, len(positives))
