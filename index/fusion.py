"""Fusion: per-signal thresholds, union of signals, the at-least-one-match rule, the cap.

A signal is neighbours `(D, I)` of shape (n, k) (see `index.search`). `fuse` turns a dict of
them into matches `I` (n, max_matches), -1 padded, the row itself always in column 0.
All thresholds live in one `FusionConfig`, saved with each bundle.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

SignalName = Literal["tfidf", "phash", "text", "image"]
SIGNALS: tuple[SignalName, ...] = ("tfidf", "phash", "text", "image")
Neighbours = tuple[np.ndarray, np.ndarray]


def phash_similarity(max_hamming: int) -> float:
    """The phash similarity threshold (1 - d/64) that keeps Hamming distances <= max_hamming."""
    return 1.0 - max_hamming / 64.0


class FusionConfig(BaseModel):
    """Every matching threshold, typed and saved with the bundle.

    Attributes:
        thresholds: similarity threshold per signal; a signal without one is not used.
            Cosine for tfidf/text/image; for phash the similarity is 1 - hamming/64.
        min2: the at-least-one-match rule: a row left with only itself takes its nearest
            neighbour from `min2_signal` unless that neighbour's similarity < `min2_floor`.
        max_matches: cap on matches per row, the row itself included (Kaggle: 50).
        tuned_rows: size of the pool the thresholds were tuned on (None: hand-set).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    # Defaults: tuned by `pricematch evaluate --tune` on the 27k-row dev pool with the
    # zero-shot default encoders (docs/BENCHMARKS.md); image: 0.8, stricter than the optimum
    # (~0.72) on 185 re-shot real photos, since larger pools need stricter thresholds.
    thresholds: dict[SignalName, float] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            "tfidf": 0.625,
            "phash": phash_similarity(6),
            "text": 0.92,
            "image": 0.8,
        }
    )
    min2: bool = True
    min2_signal: SignalName = "tfidf"
    min2_floor: float = 0.35
    max_matches: int = Field(default=50, ge=1, le=50)
    tuned_rows: int | None = None

    @field_validator("thresholds")
    @classmethod
    def _in_range(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not -1.0 <= t <= 1.0:
                raise ValueError(f"threshold for {k} must be in [-1, 1], got {t}")
        return v

    def with_(self, **kw: object) -> FusionConfig:
        """A copy with fields replaced (validated)."""
        return FusionConfig.model_validate({**self.model_dump(), **kw})


def threshold(D: np.ndarray, I: np.ndarray, t: float) -> np.ndarray:
    """Neighbour ids with similarity >= t, others -1. Shapes (n, k)."""
    assert D.shape == I.shape, (D.shape, I.shape)
    return np.where((I >= 0) & (t <= D), I, -1)


def _dedupe(I: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Row-wise: -1 for every repeated id except its highest-scoring copy. Shapes (n, m)."""
    n, m = I.shape
    s = np.clip(np.where(np.isfinite(S), S, np.where(S > 0, 2.0, -1.0)), -1.0, 2.0)
    # Sort key: ids ascending, and within one id the higher score first.
    key = np.where(I >= 0, I + (2.0 - s) / 4.0, np.inf)
    o = np.argsort(key, axis=1)
    Is = np.take_along_axis(I, o, axis=1)
    dup = np.zeros((n, m), bool)
    dup[:, 1:] = (Is[:, 1:] == Is[:, :-1]) & (Is[:, 1:] >= 0)
    out = np.where(dup, -1, Is)
    res = np.empty_like(I)
    np.put_along_axis(res, o, out, axis=1)
    return res


def fuse(
    signals: dict[str, Neighbours], config: FusionConfig, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Union of thresholded signals with the at-least-one-match rule and the cap.

    Args:
        signals: name -> (D, I), each (n, k); names without a threshold are ignored.
        config: thresholds and rules.
        n: number of rows.

    Returns:
        I (n, max_matches) int64 row ids, -1 padded, the row itself first; and
        S (n, max_matches) float32 scores (the best similarity over the signals that
        matched, +inf for the row itself).
    """
    rows = np.arange(n, dtype=np.int64)
    cols_I = [rows[:, None]]
    cols_S = [np.full((n, 1), np.inf, np.float32)]
    for name, (D, I) in signals.items():
        t = config.thresholds.get(name)  # type: ignore[call-overload]
        if t is None:
            continue
        assert D.shape[0] == n and I.shape == D.shape, (name, D.shape, I.shape, n)
        keep = threshold(D, I, t)
        cols_I.append(keep)
        cols_S.append(np.where(keep >= 0, D, -np.inf).astype(np.float32))
    I = _dedupe(np.hstack(cols_I), S_all := np.hstack(cols_S))
    S = np.where(I >= 0, S_all, -np.inf).astype(np.float32)
    count = (I >= 0).sum(axis=1)

    if config.min2 and config.min2_signal in signals:
        D2, I2 = signals[config.min2_signal]
        other = (I2 >= 0) & (rows[:, None] != I2)
        j = np.argmax(other, axis=1)  # first (nearest) neighbour that is not the row itself
        has = other[rows, j]
        best_I, best_D = I2[rows, j], D2[rows, j]
        free_any = (I < 0).any(axis=1)
        add = (count == 1) & has & (best_D >= config.min2_floor) & free_any
        # The row's own id sits in some column; put the neighbour in a free one.
        free = np.argmax(I < 0, axis=1)
        I[add, free[add]] = best_I[add]
        S[add, free[add]] = best_D[add]

    # Best score first (the row itself, +inf, leads), empty slots last, then the cap.
    o = np.argsort(-S, axis=1, kind="stable")
    I = np.take_along_axis(I, o, axis=1)
    S = np.take_along_axis(S, o, axis=1)
    cap = config.max_matches
    if I.shape[1] < cap:
        pad = cap - I.shape[1]
        I = np.hstack([I, np.full((n, pad), -1, np.int64)])
        S = np.hstack([S, np.full((n, pad), -np.inf, np.float32)])
    return I[:, :cap], S[:, :cap]


def to_lists(I: np.ndarray, ids: list[str]) -> list[list[str]]:
    """Match matrix (n, m) of row numbers -> per row the posting_ids, in column order."""
    return [[ids[j] for j in row if j >= 0] for row in I.tolist()]
