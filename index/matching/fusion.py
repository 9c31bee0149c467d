"""Fusion: per-signal thresholds, union of signals, the at-least-one-match rule, the cap.

A signal is neighbours `(D, I)` of shape (n, k) (see `index.search.knn`). `fuse` turns a dict of
them into matches `I` (n, max_matches), -1 padded, the row itself always in column 0.
All thresholds live in one `FusionConfig`, saved with each bundle.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from index.features.tfidf import TfidfConfig
from index.matching.names import SIGNALS, SOURCE_MODES, SignalName, SourceMode

__all__ = ["SIGNALS", "SOURCE_MODES", "SignalName", "SourceMode"]

#: Pools from a quarter to four times the tuned size: the range the pool-size rule covers.
POOL_RANGE = (0.25, 4.0)
Neighbours = tuple[np.ndarray, np.ndarray]
#: Keys of `FusionConfig.pool_slopes`: a signal's threshold, or "inb" (every INB stage's).
SlopeKey = SignalName | Literal["inb"]


def phash_similarity(max_hamming: int) -> float:
    """The phash similarity threshold (1 - d/64) that keeps Hamming distances <= max_hamming."""
    return 1.0 - max_hamming / 64.0


class Stages(BaseModel):
    """Match-quality stages around the fusion (`index.matching.stages`); all off by default.

    Attributes:
        combined_weights: modality -> weight of the combined embedding (each modality
            L2-normalised, weighted, concatenated, normalised; TF-IDF joins as a sparse
            part). Used when `FusionConfig.thresholds` has a "combined" threshold and two
            of the named modalities are present; its matches join the union.
        inb: one similarity threshold per iterative-neighbourhood-blending stage (each row
            replaced by the similarity-weighted sum of its neighbours above it, then
            searched again), applied to the signals of `blend_signals`; () is off.
        qe_alpha, qe_k: alpha query expansion (each row replaced by the sum of its `qe_k`
            nearest rows weighted by similarity**alpha) instead of or before INB; None off.
        blend_signals: the signals INB / alpha-QE rework.
        unit_rule: drop a match whose titles give different quantities of one unit
            (`200gr` vs `400gr`) unless a signal of `unit_keep` is at least that similar.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    combined_weights: dict[SignalName, float] = Field(default_factory=dict)
    inb: tuple[float, ...] = ()
    qe_alpha: float | None = Field(default=None, ge=0.0)
    qe_k: int = Field(default=3, ge=1, le=51)
    blend_signals: tuple[SignalName, ...] = ("combined",)
    unit_rule: bool = False
    unit_keep: dict[SignalName, float] = Field(
        default_factory=lambda: {"image": 0.9, "phash": phash_similarity(2)}  # type: ignore[arg-type]
    )

    @field_validator("inb")
    @classmethod
    def _inb_range(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) > 3 or any(not -1.0 <= t <= 1.0 for t in v):
            raise ValueError(f"inb takes 0-3 thresholds in [-1, 1], got {v}")
        return v


class FusionConfig(BaseModel):
    """Every matching threshold, typed and saved with the bundle.

    Attributes:
        thresholds: similarity threshold per signal; a signal without one is not used.
            Cosine for tfidf/text/image; for phash the similarity is 1 - hamming/64.
        min2: the at-least-one-match rule: a row left with only itself takes its nearest
            neighbour from `min2_signal` unless that neighbour's similarity < `min2_floor`.
        max_matches: cap on matches per row, the row itself included (Kaggle: 50).
        min2_reciprocal: 0 (off) or r: the at-least-one-match neighbour j of row i is taken
            only if i is among j's r nearest other rows in `min2_signal` (rank-r check).
        tuned_rows: size of the pool the thresholds were tuned on (None: hand-set).
        pool_slopes: signal -> threshold change per doubling of the pool, and "inb" -> the
            change of every INB stage's threshold; `for_pool(n)` moves them from
            `tuned_rows` to n (empty: no change).
        stages: the match-quality stages (`Stages`), all off by default.
        sources: `SourceMode` ("any": sources ignored); applies only where listings carry
            a source (`link_sources`).
        tfidf: how titles become TF-IDF vectors (`TfidfConfig`: code tokens, char n-grams).
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
    min2_reciprocal: int = Field(default=0, ge=0, le=50)
    max_matches: int = Field(default=50, ge=1, le=50)
    tuned_rows: int | None = None
    pool_slopes: dict[SlopeKey, float] = Field(default_factory=dict)
    stages: Stages = Field(default_factory=Stages)
    # cross_first: never drops a link, gives each row its nearest other-source match
    # (docs/BENCHMARKS.md, "Entity-matching options"); no effect without sources.
    sources: SourceMode = "cross_first"
    tfidf: TfidfConfig = Field(default_factory=TfidfConfig)

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

    def with_stages(self, **kw: object) -> FusionConfig:
        """A copy with `stages` fields replaced (validated)."""
        return self.with_(stages={**self.stages.model_dump(), **kw})

    def for_pool(self, n: int) -> FusionConfig:
        """Thresholds (and INB stage thresholds) moved to a pool of `n` rows: each by
        slope * log2(n / tuned_rows), the ratio clipped to `POOL_RANGE`; monotone in n.
        Unchanged without slopes or `tuned_rows`, or when n is the tuned size."""
        if not self.pool_slopes or not self.tuned_rows or n == self.tuned_rows:
            return self
        lo, hi = POOL_RANGE
        steps = float(np.log2(min(hi, max(lo, n / self.tuned_rows))))

        def move(t: float, key: SlopeKey) -> float:
            return float(min(1.0, max(-1.0, t + self.pool_slopes.get(key, 0.0) * steps)))

        th = {s: move(t, s) for s, t in self.thresholds.items()}
        inb = tuple(move(t, "inb") for t in self.stages.inb)
        return self.with_(thresholds=th, tuned_rows=n, pool_slopes={}).with_stages(inb=inb)


def threshold(D: np.ndarray, I: np.ndarray, t: float) -> np.ndarray:
    """Neighbour ids with similarity >= t, others -1. Shapes (n, k)."""
    assert D.shape == I.shape, (D.shape, I.shape)
    return np.where((I >= 0) & (t <= D), I, -1)


def reciprocal(I: np.ndarray, j: np.ndarray, r: int) -> np.ndarray:
    """(n,) bool: row i is among the `r` nearest rows of row j[i] other than j[i] itself.

    Args:
        I: (n, k) self-join neighbours (ids are rows of the same pool).
        j: (n,) a candidate row per row (-1: none, gives False).
        r: rank to check.
    """
    n = I.shape[0]
    assert j.shape == (n,), (j.shape, n)
    rows = np.arange(n)
    ok = j >= 0
    Ij = I[np.maximum(j, 0)]  # (n, k) the candidates' neighbours
    others = (Ij >= 0) & (Ij != j[:, None])
    rank = np.cumsum(others, axis=1)  # 1-based rank among the others
    hit = others & (rank <= r) & (Ij == rows[:, None])
    return ok & hit.any(axis=1)


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
        r = config.min2_reciprocal
        if r and I2.shape[0] == n and int(I2.max(initial=-1)) < n:  # a self-join only
            add &= reciprocal(I2, best_I, r)
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


def link_sources(
    I: np.ndarray,
    S: np.ndarray,
    source: np.ndarray | None,
    mode: SourceMode,
    fallback: Neighbours | None = None,
    floor: float = -1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Matches shaped by the rows' sources (see `SourceMode`).

    Args:
        I, S: matches and scores (n, m) as `fuse` returns them (the row itself first).
        source: (n,) int64 source code per row, -1 where unknown (an unknown source is
            another source for every row); None: returned unchanged.
        mode: "any" (unchanged), "cross" (same-source links dropped) or "cross_first"
            (kept after the other-source ones).
        fallback: (D, I) neighbours (n, k) of the at-least-one-match signal: a row with no
            other-source link takes its nearest other-source neighbour there whose
            similarity is >= `floor` (into a free column, else in place of the last one).

    Returns:
        I, S (n, m): the row itself first, then other-source links by score, then (for
        "cross_first") same-source links by score, then -1 / -inf.
    """
    if mode == "any" or source is None:
        return I, S
    n, m = I.shape
    assert source.shape == (n,), (source.shape, n)
    rows = np.arange(n)

    def same_source(J: np.ndarray) -> np.ndarray:
        sj = source[np.maximum(J, 0)]
        return (J >= 0) & (rows[:, None] != J) & (source[:, None] >= 0) & (sj == source[:, None])

    I, S = I.copy(), S.copy()
    same = same_source(I)
    if mode == "cross":
        I[same], S[same] = -1, -np.inf
        same[:] = False
    if fallback is not None:
        D2, I2 = fallback
        ok = (I2 >= 0) & (rows[:, None] != I2) & ~same_source(I2) & (floor <= D2)
        j = np.argmax(ok, axis=1)  # nearest other-source neighbour
        other = (I >= 0) & (rows[:, None] != I) & ~same
        add = ok[rows, j] & ~other.any(axis=1)
        free = np.where((I < 0).any(axis=1), np.argmax(I < 0, axis=1), m - 1)
        I[add, free[add]] = I2[add, j[add]]
        S[add, free[add]] = D2[add, j[add]]
        same[add, free[add]] = False
    # Order: the row itself, other sources by score, same source by score, empty slots.
    key = np.where(I < 0, 3, np.where(rows[:, None] == I, 0, np.where(same, 2, 1)))
    o = np.argsort(-S, axis=1, kind="stable")
    o = np.take_along_axis(o, np.argsort(np.take_along_axis(key, o, 1), 1, kind="stable"), 1)
    return np.take_along_axis(I, o, axis=1), np.take_along_axis(S, o, axis=1)


def to_lists(I: np.ndarray, ids: list[str]) -> list[list[str]]:
    """Match matrix (n, m) of row numbers -> per row the posting_ids, in column order."""
    return [[ids[j] for j in row if j >= 0] for row in I.tolist()]
