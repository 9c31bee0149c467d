"""The competition metric (mean row F1) and its break-down by true group size; pairwise
precision/recall/F1 on labelled pairs (the entity-matching papers' metric)."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Group-size buckets for the break-down: (low, high) inclusive.
SIZE_BUCKETS: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 4), (5, 9), (10, 19), (20, 10**9))


def group_sizes(labels: np.ndarray) -> np.ndarray:
    """Size of each row's true group within the pool, shape (n,)."""
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inv]


def row_scores(I: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row F1, precision and recall of predicted matches.

    Args:
        I: (n, m) predicted row ids, -1 padded (a row's own id counts like any other).
        labels: (n,) true group of each row.
    """
    assert I.ndim == 2 and I.shape[0] == labels.shape[0], (I.shape, labels.shape)
    valid = I >= 0
    pred = valid.sum(axis=1)
    tp = (valid & (labels[np.maximum(I, 0)] == labels[:, None])).sum(axis=1)
    size = group_sizes(labels)
    f1 = 2 * tp / (pred + size)
    precision = np.divide(tp, pred, out=np.zeros(len(tp)), where=pred > 0)
    recall = tp / size
    return f1, precision, recall


def mean_f1(I: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None) -> float:
    """The Kaggle score: mean over rows (or over `rows` only) of the row F1."""
    f1 = row_scores(I, labels)[0]
    return float((f1 if rows is None else f1[rows]).mean())


def f1_report(
    I: np.ndarray,
    labels: np.ndarray,
    buckets: tuple[tuple[int, int], ...] = SIZE_BUCKETS,
    rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """Mean F1, precision, recall, mean predicted matches, and the same by true group size;
    of `rows` only when given (their matches may be any row of the pool)."""
    f1, p, r = row_scores(I, labels)
    size = group_sizes(labels)
    pred = (I >= 0).sum(axis=1)
    if rows is not None:
        f1, p, r, size, pred = f1[rows], p[rows], r[rows], size[rows], pred[rows]
    by_size = {}
    for lo, hi in buckets:
        m = (size >= lo) & (size <= hi)
        if m.any():
            name = str(lo) if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}")
            by_size[name] = {"rows": int(m.sum()), "f1": float(f1[m].mean())}
    return {
        "rows": len(f1),
        "f1": float(f1.mean()),
        "precision": float(p.mean()),
        "recall": float(r.mean()),
        "mean_matches": float(pred.mean()),
        "by_group_size": by_size,
    }


def pair_prf(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pairwise precision, recall and F1 of the positive class over labelled pairs."""
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "pairs": len(y), "positives": int(y.sum())}


def predicted_pairs(I: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(m,) bool: whether each pair (left[i], right[i]) is matched in I (n, m'), either way."""
    import scipy.sparse as sp

    n = I.shape[0]
    rows = np.broadcast_to(np.arange(n)[:, None], I.shape)
    ok = I >= 0
    M = sp.csr_matrix((np.ones(int(ok.sum())), (rows[ok], I[ok])), shape=(n, n))
    M = M + M.T
    return np.asarray(M[left, right]).ravel() > 0


def pair_report(I: np.ndarray, left: np.ndarray, right: np.ndarray, label: np.ndarray) -> dict:
    """Pairwise precision/recall/F1 of the matches I on labelled pairs (only those count)."""
    return pair_prf(predicted_pairs(I, left, right), label.astype(bool))


#: The probability thresholds a decision is tuned over.
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def tune_pair_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold maximising pairwise F1 of `p >= t` on labelled pairs."""
    return float(max(THRESHOLDS, key=lambda t: (pair_prf(p >= t, y)["f1"], -t)))
