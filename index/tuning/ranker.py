"""Training the pair re-ranker out of fold (`pricematch train ranker`).

Group-labelled rows (Kaggle `label_group`): the rows are split into `folds` group-disjoint
pools, each matched among itself (its own TF-IDF, neighbours and stages, as a user's
catalogue would be). Pool f's candidate pairs are scored by a model trained on the other
pools' pairs (out of fold); the thresholds for pool f are tuned on the other pools' OOF
scores, so every reported fold is decided on pairs and labels its model never saw. The
final model is trained on every pool's pairs with the mean best iteration count and the
thresholds tuned on all OOF scores.

Pairwise-labelled data (entity-matching layout): one pool of every record; the labelled
train pairs (candidates or not) are split into folds by connected component of the
positive pairs; the threshold is tuned on their OOF scores (pairwise F1), the final model
trained on all of them. Held-out splits (valid, test) are only ever scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from index.data.pairs import Pairs
from index.features.embed import Features
from index.matching.fusion import Neighbours
from index.matching.ranker import (
    Ranker,
    RankerConfig,
    candidate_pairs,
    pair_features,
    rank_matches,
)
from index.progress import progress
from index.tuning.grids import sub_pools
from index.tuning.metrics import SIZE_BUCKETS, f1_report, mean_f1, pair_prf

log = logging.getLogger(__name__)

#: LightGBM settings (deterministic, 2 threads; a few hundred trees at most).
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "seed": 0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbose": -1,
}
MAX_ROUNDS = 300
EARLY_STOP = 30
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


@dataclass
class RankPool:
    """One pool matched among itself: features, neighbours (stages applied), titles, labels."""

    features: Features
    nb: dict[str, Neighbours]
    titles: list[str]
    labels: np.ndarray | None = None  # (n,) groups, for group-labelled data


def fit(
    X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
    rounds: int = MAX_ROUNDS,
) -> Any:
    """A LightGBM booster; with a validation set, stopped early on its log loss."""
    import lightgbm

    train = lightgbm.Dataset(X, label=y.astype(np.float32), free_raw_data=False)
    if X_val is None or y_val is None or len(np.unique(y_val)) < 2:
        return lightgbm.train(PARAMS, train, num_boost_round=rounds)
    val = lightgbm.Dataset(X_val, label=y_val.astype(np.float32), reference=train)
    return lightgbm.train(
        PARAMS,
        train,
        num_boost_round=rounds,
        valid_sets=[val],
        callbacks=[lightgbm.early_stopping(EARLY_STOP, verbose=False)],
    )


def _predict(booster: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(booster.predict(X, num_threads=PARAMS["num_threads"]), np.float32)


def tune_group_thresholds(
    scored: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], base: RankerConfig
) -> RankerConfig:
    """(threshold, single_threshold) maximising mean row F1 over pools given as
    (pairs, p, labels): the threshold first (single = threshold), then single below it."""

    def f(cfg: RankerConfig) -> float:
        tot = 0.0
        rows = 0
        for pairs, p, labels in scored:
            I, _ = rank_matches(pairs, p, len(labels), cfg)
            tot += mean_f1(I, labels) * len(labels)
            rows += len(labels)
        return tot / rows

    best = max(THRESHOLDS, key=lambda t: (f(replace(base, threshold=t, single_threshold=t)), -t))
    cfg = replace(base, threshold=float(best), single_threshold=float(best))
    singles = [s for s in THRESHOLDS if s <= best]
    single = max(singles, key=lambda s: (f(replace(cfg, single_threshold=s)), s))
    return replace(cfg, single_threshold=float(single))


def tune_pair_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold maximising pairwise F1 of `p >= t` on labelled pairs."""
    return float(max(THRESHOLDS, key=lambda t: (pair_prf(p >= t, y)["f1"], -t)))


def _pool_pairs(pool: RankPool, signals: Sequence[str], config: RankerConfig) -> tuple[
    np.ndarray, np.ndarray, np.ndarray
]:
    assert pool.labels is not None
    use = {s: pool.nb[s] for s in signals}
    pairs = candidate_pairs(use, len(pool.titles), config)
    X = pair_features(pairs, pool.features, use, pool.titles, signals)
    y = pool.labels[pairs[:, 0]] == pool.labels[pairs[:, 1]]
    return pairs, X, y


#: Makes the pool of some rows of a pool (features subset, neighbours and stages anew).
SubPool = Callable[[RankPool, np.ndarray], RankPool]
#: Sub-pools per fold pool for the pool-size rule: halves and quarters.
SUB_PARTS = (2, 4)


def train_on_pools(
    pools: list[RankPool],
    signals: Sequence[str],
    config: RankerConfig | None = None,
    show_progress: bool = False,
    buckets: tuple[tuple[int, int], ...] = SIZE_BUCKETS,
    sub_pool: SubPool | None = None,
) -> tuple[Ranker, dict[str, Any]]:
    """Out-of-fold training on group-labelled pools (see the module doc).

    With `sub_pool`, the pool-size rule: each fold's pool is cut into group-disjoint halves
    and quarters, scored by that fold's model (which never saw them), the best threshold of
    each size found, and the slope of threshold against log2(pool size) saved.

    Returns:
        The final ranker, and a report: per fold the OOF F1 report, the thresholds used,
        the best iteration; the final thresholds; seconds.
    """
    t0 = time.perf_counter()
    config = config or RankerConfig()
    data = [_pool_pairs(p, signals, config) for p in pools]
    k = len(pools)
    oof: list[np.ndarray] = []
    iters = []
    boosters = []
    for f in progress(range(k), desc="ranker folds", unit="fold", disable=not show_progress):
        tr = [g for g in range(k) if g != f]
        X = np.concatenate([data[g][1] for g in tr])
        y = np.concatenate([data[g][2] for g in tr])
        booster = fit(X, y)
        boosters.append(booster)
        iters.append(booster.current_iteration())
        oof.append(_predict(booster, data[f][1]))
    folds = []
    for f in range(k):
        others = [(data[g][0], oof[g], pools[g].labels) for g in range(k) if g != f]
        cfg = tune_group_thresholds(others, config)  # type: ignore[arg-type]
        labels = pools[f].labels
        assert labels is not None
        I, _ = rank_matches(data[f][0], oof[f], len(labels), cfg)
        rep = f1_report(I, labels, buckets)
        rep.update(threshold=cfg.threshold, single_threshold=cfg.single_threshold)
        rep["candidate_pairs"] = len(data[f][0])
        rep["candidate_recall"] = _candidate_recall(data[f][0], data[f][2], labels)
        folds.append(rep)
    final_cfg = tune_group_thresholds(
        [(data[g][0], oof[g], pools[g].labels) for g in range(k)], config  # type: ignore[misc]
    )
    sizes: list[tuple[int, float]] = []
    if sub_pool is not None:
        for f in range(k):
            labels = pools[f].labels
            assert labels is not None
            own = tune_group_thresholds([(data[f][0], oof[f], labels)], final_cfg)
            sizes.append((len(labels), own.threshold))
            for parts in SUB_PARTS:
                for rows in sub_pools(np.arange(len(labels)), labels, parts, seed=f):
                    sp = sub_pool(pools[f], rows)
                    pairs, Xs, _ = _pool_pairs(sp, signals, config)
                    assert sp.labels is not None
                    t = tune_group_thresholds([(pairs, _predict(boosters[f], Xs), sp.labels)],
                                              final_cfg).threshold
                    sizes.append((len(rows), t))
        rows_mean = int(np.ceil(np.mean([len(p.titles) for p in pools])))
        slope = float(np.polyfit(np.log2([s for s, _ in sizes]), [t for _, t in sizes], 1)[0])
        final_cfg = replace(final_cfg, pool_rows=rows_mean, pool_slope=slope)
    X = np.concatenate([d[1] for d in data])
    y = np.concatenate([d[2] for d in data])
    booster = fit(X, y, rounds=int(np.mean(iters).round()))
    report = {
        "pool_rule": {"points": sizes, "pool_rows": final_cfg.pool_rows,
                      "slope_per_doubling": final_cfg.pool_slope},
        "mode": "groups",
        "folds": folds,
        "oof_f1": [r["f1"] for r in folds],
        "threshold": final_cfg.threshold,
        "single_threshold": final_cfg.single_threshold,
        "pairs": len(y),
        "positives": int(y.sum()),
        "rounds": booster.current_iteration(),
        "pool_rows": [len(p.titles) for p in pools],
        "seconds": time.perf_counter() - t0,
    }
    return Ranker(booster, list(signals), final_cfg, report), report


def _candidate_recall(pairs: np.ndarray, y: np.ndarray, labels: np.ndarray) -> float:
    """Share of the true pairs (i < j, same group) that are candidates."""
    _, counts = np.unique(labels, return_counts=True)
    true_pairs = int((counts * (counts - 1) // 2).sum())
    return float(y.sum() / true_pairs) if true_pairs else 1.0


def train_on_pairs(
    pool: RankPool,
    train: Pairs,
    groups: np.ndarray,
    signals: Sequence[str],
    folds: int = 5,
    config: RankerConfig | None = None,
    held_out: dict[str, Pairs] | None = None,
) -> tuple[Ranker, dict[str, Any]]:
    """Out-of-fold training on labelled pairs of one pool (see the module doc).

    Args:
        groups: (n,) connected component of each row (`index.data.pairs.pair_components`).
        held_out: splits only scored with the final model (e.g. valid).
    """
    from index.tuning.grids import group_folds

    t0 = time.perf_counter()
    config = config or RankerConfig()
    use = {s: pool.nb[s] for s in signals}
    pairs = np.stack([train.left, train.right], axis=1)
    X = pair_features(pairs, pool.features, use, pool.titles, signals)
    y = train.label
    pair_group = groups[train.left]
    oof = np.zeros(len(y), np.float32)
    iters = []
    for tr, va in group_folds(pair_group, folds):
        booster = fit(X[tr], y[tr])
        iters.append(booster.current_iteration())
        oof[va] = _predict(booster, X[va])
    t = tune_pair_threshold(oof, y)
    booster = fit(X, y, rounds=int(np.mean(iters).round()))
    cfg = replace(config, threshold=t, single_threshold=1.01)
    report: dict[str, Any] = {
        "mode": "pairs",
        "threshold": t,
        "train_oof": pair_prf(oof >= t, y),
        "pairs": len(y),
        "positives": int(y.sum()),
        "rounds": booster.current_iteration(),
    }
    ranker = Ranker(booster, list(signals), cfg, report)
    for name, split in (held_out or {}).items():
        sp_pairs = np.stack([split.left, split.right], axis=1)
        p = ranker.predict(pair_features(sp_pairs, pool.features, use, pool.titles, signals))
        report[name] = pair_prf(p >= t, split.label)
    report["seconds"] = time.perf_counter() - t0
    return ranker, report
