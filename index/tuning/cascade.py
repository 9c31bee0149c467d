"""Tuning the cross-encoder cascade out of fold (`index.matching.cross.Cascade`).

Given the trees' out-of-fold probabilities p and the cross-encoder's out-of-fold logits z
of labelled pairs, `tune_cascade` picks the band [lo, hi) and the stack (a logistic
regression of the band's labels on logit(p) and z, fitted by Newton's method) and the
threshold that maximise pairwise F1; `cascade_fold_f1` scores each fold by a cascade
tuned on the other folds only. Numpy only: the scorer itself is fitted by the caller
(`PairModelFit`, e.g. `training.cross.CrossFit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from index.matching.cross import Cascade, PairScorer, logit
from index.tuning.metrics import pair_prf, tune_pair_threshold

#: The bands tried: lower and upper ends of the trees' probability.
BAND_LO = (0.02, 0.05, 0.1, 0.2, 0.3)
BAND_HI = (0.6, 0.8, 0.9, 0.95, 0.98)
#: A band needs this many labelled pairs of each class to fit a stack on.
MIN_PER_CLASS = 5


class PairModelFit(Protocol):
    """Fits a pair scorer on some labelled pairs (indices into the caller's list)."""

    def fold_logits(self, train: np.ndarray, score: np.ndarray) -> np.ndarray:
        """(len(score),) logits of the pairs `score` by a scorer fitted on `train`."""
        ...

    def final(self, train: np.ndarray, folder: Path) -> PairScorer:
        """The scorer fitted on the pairs `train`, written to `folder`."""
        ...


def fit_stack(
    p: np.ndarray, z: np.ndarray, y: np.ndarray, ridge: float = 1e-2, steps: int = 50
) -> tuple[float, float, float]:
    """(w_tree, w_cross, bias) of the L2-regularised logistic regression of y on
    (logit(p), z), by Newton's method."""
    X = np.stack([logit(p), z.astype(np.float64), np.ones(len(p))], axis=1)  # (m, 3)
    t = y.astype(np.float64)
    w = np.zeros(3)
    reg = np.array([ridge, ridge, 0.0]) * len(p)
    for _ in range(steps):
        q = 1.0 / (1.0 + np.exp(-X @ w))
        grad = X.T @ (q - t) + reg * w
        H = (X * (q * (1 - q))[:, None]).T @ X + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), float(w[1]), float(w[2])


def apply_cascade(c: Cascade | None, p: np.ndarray, z: np.ndarray) -> np.ndarray:
    """p with the band's pairs re-decided from their logits z (all pairs' z given)."""
    if c is None:
        return p
    out = p.astype(np.float32).copy()
    band = c.band(p)
    out[band] = c.combine(p[band], z[band])
    return out


def tune_cascade(
    p: np.ndarray, z: np.ndarray, y: np.ndarray
) -> tuple[Cascade | None, float, float]:
    """The cascade (None: the trees alone are best), its threshold and pairwise F1 on
    these pairs. Bands are tried narrowest first; a wider one must score strictly above."""
    y = y.astype(bool)
    t0 = tune_pair_threshold(p, y)
    best: tuple[Cascade | None, float, float] = (None, t0, pair_prf(p >= t0, y)["f1"])
    bands = sorted(((lo, hi) for lo in BAND_LO for hi in BAND_HI), key=lambda b: b[1] - b[0])
    for lo, hi in bands:
        band = (p >= lo) & (p < hi)
        pos = int(y[band].sum())
        if pos < MIN_PER_CLASS or int(band.sum()) - pos < MIN_PER_CLASS:
            continue
        c = Cascade(lo, hi, *fit_stack(p[band], z[band], y[band]))
        q = apply_cascade(c, p, z)
        t = tune_pair_threshold(q, y)
        f = pair_prf(q >= t, y)["f1"]
        if f > best[2]:
            best = (c, t, f)
    return best


def cascade_fold_f1(
    p: np.ndarray, z: np.ndarray, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[float]:
    """Each fold's pairwise F1 decided by the cascade and threshold tuned on the others."""
    y = y.astype(bool)
    out = []
    for tr, va in splits:
        c, t, _ = tune_cascade(p[tr], z[tr], y[tr])
        out.append(pair_prf(apply_cascade(c, p[va], z[va]) >= t, y[va])["f1"])
    return out
