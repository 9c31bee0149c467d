"""Out-of-fold tuning of the fusion on one pool matched as a whole, its rows in folds.

The pool is matched once, at the size a catalogue like it is matched at; fold f's rows are
scored with thresholds tuned on the other folds' rows of the same pool (label groups), or
fold f's labelled pairs with thresholds tuned on the other folds' pairs (entity matching).
A config's fused matches do not depend on the fold, so each config is fused once and its
per-row F1 (or per-pair decision) serves every fold's objective: tuning k folds costs
little more than tuning once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from index.matching.fusion import FusionConfig, Neighbours
from index.matching.names import BASE_SIGNALS
from index.matching.stages import fuse_stages
from index.progress import progress
from index.tuning.grids import descend
from index.tuning.metrics import pair_prf, predicted_pairs, row_scores

#: Signals the at-least-one-match rule may use.
MIN2_SIGNALS = ("text", "tfidf", "image")


@dataclass
class FoldTuning:
    """What out-of-fold tuning found: each fold's held-out F1 with the config tuned away
    from it, and the config tuned on every fold (the one a model keeps) with its F1."""

    fold_f1: list[float]
    fold_configs: list[FusionConfig]
    config: FusionConfig
    f1: float


@dataclass
class _Fused:
    """Fuses configs on one pool, each once (cache keyed by the config's JSON)."""

    nb: dict[str, Neighbours]
    titles: Sequence[str]
    source: np.ndarray | None
    cache: dict[str, np.ndarray] = field(default_factory=dict)

    def matches(self, cfg: FusionConfig) -> np.ndarray:
        key = cfg.model_dump_json()
        if key not in self.cache:
            self.cache[key] = fuse_stages(self.nb, cfg, self.titles, source=self.source)[0]
        return self.cache[key]


def start_config(nb: dict[str, Neighbours], base: FusionConfig, present: set[str]) -> FusionConfig:
    """`base` with thresholds for the signals of `nb` that some row has (defaults where
    `base` has none) and the at-least-one-match signal among them; tuned for the pool."""
    defaults = FusionConfig().thresholds
    th = {
        s: base.thresholds.get(s, defaults.get(s, 0.5))  # type: ignore[call-overload]
        for s in nb
        if s in present or s not in BASE_SIGNALS
    }
    th = {s: t for s, t in th.items() if s in defaults or s in base.thresholds}
    min2 = base.min2_signal if base.min2_signal in th else next(iter(th), "tfidf")
    return base.with_(thresholds=th, min2_signal=min2, pool_slopes={}, tuned_rows=None)


def tune_groups(
    nb: dict[str, Neighbours],
    titles: Sequence[str],
    labels: np.ndarray,
    fold_of: np.ndarray,
    start: FusionConfig,
    source: np.ndarray | None = None,
    rounds: int = 2,
    show_progress: bool = False,
) -> FoldTuning:
    """Out-of-fold thresholds on a group-labelled pool: for each fold, coordinate descent
    (`grids.descend`) of the mean row F1 of the other folds' rows, scored on the fold's rows;
    then the same on every row for the config kept.

    Args:
        nb: the pool's neighbours per signal (stages applied); titles, labels (n,).
        fold_of: (n,) fold of each row, 0..k-1.
    """
    fused = _Fused(nb, titles, source)
    f1_of: dict[str, np.ndarray] = {}

    def row_f1(cfg: FusionConfig) -> np.ndarray:
        key = cfg.model_dump_json()
        if key not in f1_of:
            f1_of[key] = row_scores(fused.matches(cfg), labels)[0]
        return f1_of[key]

    k = int(fold_of.max()) + 1
    min2 = [s for s in MIN2_SIGNALS if s in nb]
    fold_f1, configs = [], []
    for f in progress(range(k), desc="tune folds", unit="fold", disable=not show_progress):
        away, held = fold_of != f, fold_of == f
        cfg, _ = descend(lambda c, m=away: float(row_f1(c)[m].mean()), start, min2, rounds)  # type: ignore[misc]
        configs.append(cfg)
        fold_f1.append(float(row_f1(cfg)[held].mean()))
    cfg, f1 = descend(lambda c: float(row_f1(c).mean()), start, min2, rounds)
    return FoldTuning(fold_f1, configs, cfg.with_(tuned_rows=len(titles)), f1)


def tune_pair_folds(
    nb: dict[str, Neighbours],
    titles: Sequence[str],
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    pair_fold: np.ndarray,
    start: FusionConfig,
    source: np.ndarray | None = None,
    rounds: int = 2,
    show_progress: bool = False,
) -> FoldTuning:
    """Out-of-fold thresholds on labelled pairs of one pool: for each fold of the pairs
    (`pair_fold`, 0..k-1), the pairwise F1 of the other folds' pairs maximised, the fold's
    pairs scored; then the same on every pair for the config kept.

    Args:
        pairs: (left, right, label) arrays of the labelled pairs (row ids of the pool).
    """
    left, right, label = pairs
    fused = _Fused(nb, titles, source)
    pred_of: dict[str, np.ndarray] = {}

    def pred(cfg: FusionConfig) -> np.ndarray:
        key = cfg.model_dump_json()
        if key not in pred_of:
            pred_of[key] = predicted_pairs(fused.matches(cfg), left, right)
        return pred_of[key]

    def f1(cfg: FusionConfig, m: np.ndarray) -> float:
        return float(pair_prf(pred(cfg)[m], label[m])["f1"])

    k = int(pair_fold.max()) + 1
    min2 = [s for s in MIN2_SIGNALS if s in nb]
    fold_f1, configs = [], []
    for f in progress(range(k), desc="tune folds", unit="fold", disable=not show_progress):
        away, held = pair_fold != f, pair_fold == f
        cfg, _ = descend(lambda c, m=away: f1(c, m), start, min2, rounds)  # type: ignore[misc]
        configs.append(cfg)
        fold_f1.append(f1(cfg, held))
    every = np.ones(len(label), bool)
    cfg, score = descend(lambda c: f1(c, every), start, min2, rounds)
    return FoldTuning(fold_f1, configs, cfg.with_(tuned_rows=len(titles)), score)
