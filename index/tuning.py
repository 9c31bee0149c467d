"""Threshold tuning on labelled rows: per-signal sweeps and coordinate descent on the fusion.

Neighbours are computed once; every candidate config is then one vectorised `fuse` call.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from index.fusion import FusionConfig, Neighbours, fuse, phash_similarity
from index.metrics import mean_f1
from index.progress import progress

#: Candidate thresholds per signal.
GRIDS: dict[str, list[float]] = {
    "tfidf": [round(float(t), 3) for t in np.arange(0.30, 0.901, 0.025)],
    # Trained (ArcFace) embeddings separate at much lower cosines than zero-shot ones.
    "text": [round(float(t), 3) for t in np.arange(0.20, 0.981, 0.02)],
    "image": [round(float(t), 3) for t in np.arange(0.10, 0.981, 0.025)],
    "phash": [phash_similarity(d) for d in range(0, 17)],
}
FLOORS: list[float] = [round(float(t), 2) for t in np.arange(0.0, 0.951, 0.05)]


def group_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold splits (train rows, validation rows): no group on both sides."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise ValueError(f"{k} folds need at least {k} label groups, got {n_groups}")
    gkf = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in gkf.split(np.zeros(len(groups)), groups=groups)]


#: One pool of rows matched among themselves: neighbours per signal and true labels.
Pool = tuple[dict[str, Neighbours], np.ndarray]


def score(signals: dict[str, Neighbours], labels: np.ndarray, config: FusionConfig) -> float:
    """Mean row F1 of `config` on these neighbours."""
    I, _ = fuse(signals, config, len(labels))
    return mean_f1(I, labels)


def score_pools(pools: list[Pool], config: FusionConfig) -> float:
    """Mean row F1 of `config` over the rows of several pools (each matched on its own)."""
    n = sum(len(labels) for _, labels in pools)
    return sum(score(s, labels, config) * len(labels) for s, labels in pools) / n


def single_signal(name: str, config: FusionConfig) -> FusionConfig:
    """`config` restricted to one signal (min2 on that signal too)."""
    t = config.thresholds.get(name, GRIDS[name][len(GRIDS[name]) // 2])  # type: ignore[call-overload]
    return config.with_(thresholds={name: t}, min2_signal=name)


def _best(
    pools: list[Pool],
    configs: Iterable[FusionConfig],
    best: tuple[float, FusionConfig],
    desc: str,
    show_progress: bool,
) -> tuple[float, FusionConfig]:
    cands = list(configs)
    for c in progress(cands, desc=desc, unit="cfg", disable=not show_progress):
        f = score_pools(pools, c)
        if f > best[0] + 1e-9:
            best = (f, c)
    return best


def tune(
    signals: dict[str, Neighbours],
    labels: np.ndarray,
    start: FusionConfig,
    rounds: int = 2,
    tune_min2: bool = True,
    min2_signals: tuple[str, ...] = ("text", "tfidf", "image"),
    show_progress: bool = False,
) -> tuple[FusionConfig, float]:
    """`tune_pools` on a single pool."""
    return tune_pools([(signals, labels)], start, rounds, tune_min2, min2_signals, show_progress)


def tune_pools(
    pools: list[Pool],
    start: FusionConfig,
    rounds: int = 2,
    tune_min2: bool = True,
    min2_signals: tuple[str, ...] = ("text", "tfidf", "image"),
    show_progress: bool = False,
) -> tuple[FusionConfig, float]:
    """Coordinate descent over the thresholds of `start` (and the min-2 floor and signal).

    Only signals present in every pool and in `start.thresholds` are tuned; the min-2 rule
    may use any of `min2_signals` that is present. With several pools (e.g. the validation
    folds of a cross-validation) the objective is the mean F1 over all their rows.

    Returns:
        The best config found (with `tuned_rows` set to the mean pool size) and its F1.
    """
    signals = {k: v for k, v in pools[0][0].items() if all(k in s for s, _ in pools)}
    names = [s for s in start.thresholds if s in signals]
    start = start.with_(thresholds={s: start.thresholds[s] for s in names})
    if start.min2_signal not in signals and names:
        start = start.with_(min2_signal=names[0])
    best = (score_pools(pools, start), start)
    for _ in range(rounds):
        before = best[0]
        for name in names:
            base = best[1]
            cands = (base.with_(thresholds={**base.thresholds, name: t}) for t in GRIDS[name])
            best = _best(pools, cands, best, f"tune {name}", show_progress)
        if tune_min2 and best[1].min2:
            base = best[1]
            cands = (
                base.with_(min2_signal=s, min2_floor=f)
                for s in [n for n in min2_signals if n in signals]
                for f in FLOORS
            )
            best = _best(pools, cands, best, "tune min2", show_progress)
        if best[0] <= before + 1e-6:
            break
    rows = round(sum(len(labels) for _, labels in pools) / len(pools))
    return best[1].with_(tuned_rows=rows), best[0]
