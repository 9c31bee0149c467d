"""Tuning the cross-encoder cascade out of fold (`index.matching.cross.Cascade`).

Given the trees' out-of-fold probabilities p and the cross-encoder's out-of-fold logits z
of labelled pairs, `tune_cascade` fits one stack (a logistic regression of the labels on
logit(p) and z, by Newton's method) on every pair the scorer may read (`READ_LO <= p <
READ_HI`), tunes the threshold of the stacked probabilities for pairwise F1, and keeps the
cascade only if that F1 is above the trees'. The band is then not chosen by F1 but
derived for cost: the pairs whose decision the stack cannot change for any logit within
z's central range (`Z_QUANTILE`) keep the trees' probability and are not read. Choosing
among bands by F1 on the same pairs overfits: on WDC computers every fixed band scored
above the band so chosen, out of fold (docs/BENCHMARKS.md). `cascade_fold_f1` scores each
fold by a cascade tuned on the other folds only. Numpy only: the scorer itself is fitted
by the caller (`PairModelFit`, e.g. `training.cross.CrossFit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from index.matching.cross import Cascade, PairScorer, logit
from index.tuning.metrics import pair_prf, tune_pair_threshold

#: The pairs the cross-encoder may read: the trees' probability in [READ_LO, READ_HI).
READ_LO, READ_HI = 0.02, 0.98
#: The band leaves out the pairs whose decision no logit between these quantiles of the
#: read pairs' logits (and their mirror) could change.
Z_QUANTILE = 0.01
#: The read pairs need this many labelled pairs of each class to fit a stack on.
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


def derived_band(
    w_tree: float, w_cross: float, bias: float, t: float, z_lo: float, z_hi: float
) -> tuple[float, float]:
    """[lo, hi) within [READ_LO, READ_HI) outside which the decision `q >= t` is the
    trees' (`p >= t`) and the stack's alike for every logit z in [z_lo, z_hi].

    Below lo: p < t and the stack with z_hi is under t; at or above hi: p >= t and the
    stack with z_lo is at or over t. A stack that does not grow with p (w_tree near 0 or
    below: the readable pairs' p tell nothing) reads every readable pair."""
    if w_tree <= 1e-6:
        return READ_LO, READ_HI
    lt = float(logit(np.array([t]))[0])

    def p_at(z: float) -> float:  # the p at which the stack with logit z meets t
        return float(1.0 / (1.0 + np.exp(-(lt - w_cross * z - bias) / w_tree)))

    lo = min(max(READ_LO, min(t, p_at(z_hi))), READ_HI)
    hi = max(min(READ_HI, max(t, p_at(z_lo))), lo)
    return lo, hi


def tune_cascade(
    p: np.ndarray, z: np.ndarray, y: np.ndarray
) -> tuple[Cascade | None, float, float]:
    """The cascade (None: the trees alone are best), its threshold and pairwise F1 on
    these pairs (see the module doc): one stack on the readable pairs, kept only if its F1
    is strictly above the trees' and it grows with the scorer's logit; its band derived."""
    y = y.astype(bool)
    t0 = tune_pair_threshold(p, y)
    trees: tuple[Cascade | None, float, float] = (None, t0, pair_prf(p >= t0, y)["f1"])
    read = (p >= READ_LO) & (p < READ_HI)
    pos = int(y[read].sum())
    if pos < MIN_PER_CLASS or int(read.sum()) - pos < MIN_PER_CLASS:
        return trees
    w_tree, w_cross, bias = fit_stack(p[read], z[read], y[read])
    if w_cross <= 0:
        return trees
    q = apply_cascade(Cascade(READ_LO, READ_HI, w_tree, w_cross, bias), p, z)
    t = tune_pair_threshold(q, y)
    z_lo, z_hi = np.quantile(z[read], [Z_QUANTILE, 1 - Z_QUANTILE])
    c = Cascade(*derived_band(w_tree, w_cross, bias, t, float(z_lo), float(z_hi)),
                w_tree, w_cross, bias)
    f = pair_prf(apply_cascade(c, p, z) >= t, y)["f1"]
    return (c, t, f) if f > trees[2] else trees


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
