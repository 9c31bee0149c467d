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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import Catalogue
from index.data.pairs import Pairs
from index.errors import CatalogueError
from index.features.embed import Encoders, Features, embed
from index.features.text import WordWeights
from index.matching.cross import Cascade, PairScorer
from index.matching.fusion import FusionConfig, Neighbours
from index.matching.names import BASE_SIGNALS
from index.matching.ranker import (
    Ranker,
    RankerConfig,
    ScoredPairs,
    add_two_hops,
    candidate_pairs,
    graph_features,
    hop_pairs,
    pair_features,
    rank_matches,
)
from index.matching.selfmatch import decide, self_neighbours
from index.matching.stages import apply_stages
from index.progress import progress
from index.tuning.cascade import (
    READ_HI,
    READ_LO,
    PairModelFit,
    apply_cascade,
    cascade_fold_f1,
    tune_cascade,
)
from index.tuning.grids import MARGINAL_MIN, group_folds, sub_pools
from index.tuning.metrics import (
    SIZE_BUCKETS,
    THRESHOLDS,
    f1_report,
    mean_f1,
    pair_prf,
    pair_report,
    tune_pair_threshold,
)

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
    """A LightGBM booster; with a validation set, stopped early on its log loss.

    Raises:
        CatalogueError: no candidate pair to learn from (LightGBM needs at least one).
    """
    import lightgbm

    if len(X) == 0:
        raise CatalogueError(
            "the re-ranker has no candidate pair to learn from (in the whole data or in one "
            "fold's training part): the rows are too few or too unlike each other"
        )

    # bagging 90% of a handful of pairs can draw none (LightGBM then fails): no bagging there
    params = PARAMS if len(X) >= 10 else {**PARAMS, "bagging_fraction": 1.0, "bagging_freq": 0}
    train = lightgbm.Dataset(X, label=y.astype(np.float32), free_raw_data=False)
    if X_val is None or y_val is None or len(np.unique(y_val)) < 2:
        return lightgbm.train(params, train, num_boost_round=rounds)
    val = lightgbm.Dataset(X_val, label=y_val.astype(np.float32), reference=train)
    return lightgbm.train(
        params,
        train,
        num_boost_round=rounds,
        valid_sets=[val],
        callbacks=[lightgbm.early_stopping(EARLY_STOP, verbose=False)],
    )


def _predict(booster: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(booster.predict(X, num_threads=PARAMS["num_threads"]), np.float32)


#: Scored candidate pairs of a pool: (pairs, p, labels) or (pairs, p, labels, rows): the
#: rows decided and scored (default: every row of the pool).
Scored = tuple[Any, ...]


def tune_group_thresholds(scored: Sequence[Scored], base: RankerConfig) -> RankerConfig:
    """(threshold, single_threshold) maximising mean row F1 over the rows of scored pools
    (`Scored`): the threshold first (single = threshold), then single below it."""

    sorted_once = [
        (ScoredPairs.of(pairs, p, len(labels)), labels, rest[0] if rest else None)
        for pairs, p, labels, *rest in scored
    ]

    def f(cfg: RankerConfig) -> float:
        tot = 0.0
        count = 0
        for sp, labels, rows in sorted_once:
            I, _ = sp.decide(cfg, rows)
            m = len(labels) if rows is None else len(rows)
            tot += mean_f1(I, labels, rows) * m
            count += m
        return tot / count

    best = max(THRESHOLDS, key=lambda t: (f(replace(base, threshold=t, single_threshold=t)), -t))
    cfg = replace(base, threshold=float(best), single_threshold=float(best))
    singles = [s for s in THRESHOLDS if s <= best]
    single = max(singles, key=lambda s: (f(replace(cfg, single_threshold=s)), s))
    return replace(cfg, single_threshold=float(single))


def _pool_pairs(
    pool: RankPool, signals: Sequence[str], config: RankerConfig, weights: WordWeights
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    assert pool.labels is not None
    use = {s: pool.nb[s] for s in signals}
    pairs = candidate_pairs(use, len(pool.titles), config)
    X = pair_features(pairs, pool.features, use, pool.titles, signals, weights)
    y = pool.labels[pairs[:, 0]] == pool.labels[pairs[:, 1]]
    return pairs, X, y


#: Makes the pool of some rows of a pool (features subset, neighbours and stages anew).
SubPool = Callable[[RankPool, np.ndarray], RankPool]
#: Sub-pools per fold pool for the pool-size rule: halves and quarters.
SUB_PARTS = (2, 4)


def pool_rule_slope(classes: Sequence[tuple[float, Sequence[Scored]]], base: RankerConfig
                    ) -> tuple[float, list[tuple[float, float]]]:
    """The pool-size rule's slope. Each class is (pool rows, the scored pools of about that
    size: the whole pool's folds, the folds alone, their halves, their quarters): one
    threshold tuned on all its pools together (`tune_group_thresholds`; far less noisy than
    one per small pool), then the least-squares slope of threshold against log2(rows).

    Returns:
        (threshold change per doubling, the classes' (rows, threshold) points).
    """
    points = [(float(rows), tune_group_thresholds(scored, base).threshold)
              for rows, scored in classes]
    x = np.log2([r for r, _ in points])
    if len(points) < 2 or np.ptp(x) == 0:
        return 0.0, points
    return float(np.polyfit(x, [t for _, t in points], 1)[0]), points

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
    if config is not None and config.graph_pass:
        raise ValueError("the graph pass is trained on one whole pool (train_on_whole)")
    t0 = time.perf_counter()
    config = config or RankerConfig()
    weights = WordWeights.fit([t for p in pools for t in p.titles])
    data = [_pool_pairs(p, signals, config, weights) for p in pools]
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
        cfg = tune_group_thresholds(others, config)
        labels = pools[f].labels
        assert labels is not None
        I, _ = rank_matches(data[f][0], oof[f], len(labels), cfg)
        rep = f1_report(I, labels, buckets)
        rep.update(threshold=cfg.threshold, single_threshold=cfg.single_threshold)
        rep["candidate_pairs"] = len(data[f][0])
        rep["candidate_recall"] = _candidate_recall(data[f][0], data[f][2], labels)
        folds.append(rep)
    final_cfg = tune_group_thresholds(
        [(data[g][0], oof[g], pools[g].labels) for g in range(k)], config
    )
    sizes: list[tuple[float, float]] = []
    if sub_pool is not None:
        classes: list[list[Scored]] = [[] for _ in (1, *SUB_PARTS)]
        for f in range(k):
            labels = pools[f].labels
            assert labels is not None
            classes[0].append((data[f][0], oof[f], labels))
            for c, parts in enumerate(SUB_PARTS, start=1):
                for rows in sub_pools(np.arange(len(labels)), labels, parts, seed=f):
                    sp = sub_pool(pools[f], rows)
                    pairs, Xs, _ = _pool_pairs(sp, signals, config, weights)
                    assert sp.labels is not None
                    classes[c].append((pairs, _predict(boosters[f], Xs), sp.labels))
        rows_mean = int(np.ceil(np.mean([len(p.titles) for p in pools])))
        slope, sizes = pool_rule_slope(
            [(rows_mean / d, c) for d, c in zip((1, *SUB_PARTS), classes, strict=True)],
            final_cfg)
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
    return Ranker(booster, list(signals), final_cfg, report, weights), report


def _graph_folds(
    pairs: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    fold_of: np.ndarray,
    scored: list[Scored],
    n: int,
    boosters: Sequence[Any] = (),
    hop_features: Callable[[np.ndarray], np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> tuple[list[Any], np.ndarray, np.ndarray, list[int]]:
    """The graph pass out of fold, on one whole pool's candidate pairs. Each pair's first
    probability is the mean of the fold models that never saw it (one or two: the folds it
    touches, `scored`); the graph features over those train the second booster of fold f
    on the pairs away from f; fold f's pairs (those touching it) are scored by that booster
    with their graph features re-computed from fold f's own first model's probabilities
    (the edges away from fold f, which only the far side of a pair crossing folds reads,
    keep the mean). Replaces `scored[f]`'s probabilities by the second pass's.

    With `hop_features` (the pair features of any pairs; `RankerConfig.graph_hops`), the
    hop pairs (`hop_pairs`) of those first probabilities join the second pass: scored by
    the first `boosters` as the candidates are (the mean of the folds they touch), trained
    on with their `labels`' verdicts, and fold f's own, from fold f's first probabilities,
    appended to `scored[f]`.

    Returns:
        each fold's second booster, the (m + h, f + graph) features and (m + h,) labels
        the final one trains on, and the folds' round counts.
    """
    k = len(scored)
    fa, fb = fold_of[pairs[:, 0]], fold_of[pairs[:, 1]]
    touch = [(fa == f) | (fb == f) for f in range(k)]
    total, count = np.zeros(len(y)), np.zeros(len(y))
    for f in range(k):
        total[touch[f]] += scored[f][1]
        count[touch[f]] += 1
    p1 = total / np.maximum(count, 1)

    def hops_of(p: np.ndarray, folds: Sequence[int]) -> tuple[np.ndarray, np.ndarray, Any]:
        """The hop pairs of first probabilities `p` touching `folds`, their features and
        first probabilities (the mean of those folds' first boosters they touch)."""
        if hop_features is None:
            return pairs[:0], X[:0], np.zeros(0)
        hop = hop_pairs(pairs, p, n)
        ha, hb = fold_of[hop[:, 0]], fold_of[hop[:, 1]]
        hop = hop[np.isin(ha, folds) | np.isin(hb, folds)]
        ha, hb = fold_of[hop[:, 0]], fold_of[hop[:, 1]]
        Xh = hop_features(hop)
        tot, cnt = np.zeros(len(hop)), np.zeros(len(hop))
        for g in folds:
            on = (ha == g) | (hb == g)
            if on.any():
                tot[on] += _predict(boosters[g], Xh[on])
                cnt[on] += 1
        return hop, Xh, tot / np.maximum(cnt, 1)

    hop, Xh, ph = hops_of(p1, range(k))
    yh = np.zeros(0, bool) if labels is None else labels[hop[:, 0]] == labels[hop[:, 1]]
    X2 = np.hstack([np.vstack([X, Xh]), graph_features(pairs, p1, n, hop, ph)])
    y2 = np.r_[y, yh]
    ha, hb = fold_of[hop[:, 0]], fold_of[hop[:, 1]]
    graphs, iters = [], []
    for f in range(k):
        away = ~np.r_[touch[f], (ha == f) | (hb == f)]
        b2 = fit(X2[away], y2[away])
        pf = p1.copy()
        pf[touch[f]] = scored[f][1]
        hop_f, Xh_f, ph_f = hops_of(pf, [f])
        G = graph_features(pairs, pf, n, hop_f, ph_f)
        G = np.vstack([G[: len(pairs)][touch[f]], G[len(pairs):]])
        Xf = np.hstack([np.vstack([X[touch[f]], Xh_f]), G])
        f_pairs = np.concatenate([scored[f][0], hop_f])
        scored[f] = (f_pairs, _predict(b2, Xf), *scored[f][2:])
        graphs.append(b2)
        iters.append(b2.current_iteration())
    return graphs, X2, y2, iters


def train_on_whole(
    pool: RankPool,
    fold_of: np.ndarray,
    signals: Sequence[str],
    config: RankerConfig | None = None,
    show_progress: bool = False,
    buckets: tuple[tuple[int, int], ...] = SIZE_BUCKETS,
    sub_pool: SubPool | None = None,
    cross: CrossMaker | None = None,
    cross_folder: Path | None = None,
) -> tuple[Ranker, dict[str, Any]]:
    """Out-of-fold training on one group-labelled pool matched as a whole (the size it will
    decide): its rows split into group-disjoint folds by `fold_of` (0..k-1). Fold f's rows
    are decided by a model trained on the pairs with no row in fold f, which scores every
    pair touching fold f (labels it never saw), at thresholds tuned on the other folds'
    rows decided the same way. With `sub_pool`, the pool-size rule: per fold, the best
    threshold for its rows in the whole pool and for the fold, its halves and quarters
    matched as pools of their own, all scored by that fold's model.

    With `cross`, the cross-encoder cascade after the trees (and the graph pass):
    `_cascade_folds`; the final scorer is written to `cross_folder` when the cascade tuned
    on every fold reads any band. The pool-size rule's sub-pools and two hops are scored
    by each fold's trees alone (a fold's cross-encoder is not exported). The density
    features (and with the graph pass the rank features: `scaled_ranks`) are read at this
    pool's ranks (`RankerConfig.density_rows` is its size), so the sub-pools and any other
    pool read them at their scale.

    Returns:
        The final ranker (trained on every pair; `pool_rows` the pool's size), and the
        report of `train_on_pools` with `mode` "whole" and `whole_f1` (every row OOF).
    """
    t0 = time.perf_counter()
    labels = pool.labels
    assert labels is not None
    n = len(labels)
    # the density read at this pool's ranks here and at its scale in any other pool
    # (and, with the graph pass, the pairs' ranks: without it they carried worse)
    config = config or RankerConfig()
    config = replace(config, density_rows=n, scaled_ranks=config.graph_pass)
    weights = WordWeights.fit(pool.titles)
    pairs, X, y = _pool_pairs(pool, signals, config, weights)
    k = int(fold_of.max()) + 1
    fa, fb = fold_of[pairs[:, 0]], fold_of[pairs[:, 1]]
    rows_of = [np.flatnonzero(fold_of == f) for f in range(k)]
    scored: list[Scored] = []  # per fold: pairs touching it, their OOF p, labels, its rows
    boosters, iters = [], []
    for f in progress(range(k), desc="ranker folds", unit="fold", disable=not show_progress):
        away = (fa != f) & (fb != f)
        booster = fit(X[away], y[away])
        boosters.append(booster)
        iters.append(booster.current_iteration())
        scored.append((pairs[~away], _predict(booster, X[~away]), labels, rows_of[f]))
    graphs: list[Any] = [None] * k
    X2, y2, g_iters = None, y, list[int]()
    if config.graph_pass:
        use_all = {s: pool.nb[s] for s in signals}

        def hop_features(hop: np.ndarray) -> np.ndarray:
            return pair_features(hop, pool.features, use_all, pool.titles, signals, weights)

        graphs, X2, y2, g_iters = _graph_folds(
            pairs, X, y, fold_of, scored, n, boosters,
            hop_features if config.graph_hops else None, labels)
    cascade, scorer, cascade_rep = None, None, None
    if cross is not None:
        if cross_folder is None:
            raise ValueError("a cross-encoder fit needs a folder for its final scorer")
        cascade, scorer, cascade_rep = _cascade_folds(
            pairs, y, fold_of, scored, pool.titles, cross, cross_folder, show_progress
        )
    fold_rankers = [Ranker(boosters[f], list(signals), config, weights=weights, graph=graphs[f])
                    for f in range(k)]
    folds = []
    I_all = np.full((n, config.max_matches), -1, np.int64)
    use = {s: pool.nb[s] for s in signals}
    for f in range(k):
        cfg = tune_group_thresholds([scored[g] for g in range(k) if g != f], config)
        f_pairs, f_p = scored[f][0], scored[f][1]
        if config.two_hop:  # as `Ranker.match` decides, with this fold's model

            def score(hop: np.ndarray, r: Ranker = fold_rankers[f], base: Any = f_pairs
                      ) -> np.ndarray:
                if r.graph is None:
                    return r.score(hop, pool.features, use, pool.titles)
                both = np.concatenate([base, hop])
                return r.score(both, pool.features, use, pool.titles)[len(base):]

            f_pairs, f_p = add_two_hops(f_pairs, f_p, cfg.threshold, n, score, cfg.hop_rounds)
        I, _ = rank_matches(f_pairs, f_p, n, cfg, rows_of[f])
        I_all[rows_of[f]] = I[rows_of[f]]
        rep = f1_report(I, labels, buckets, rows=rows_of[f])
        rep.update(threshold=cfg.threshold, single_threshold=cfg.single_threshold)
        within = (fa == f) & (fb == f)
        rep["candidate_pairs"] = len(scored[f][0])
        rep["candidate_recall"] = _candidate_recall(pairs[within], y[within], labels[rows_of[f]])
        if config.graph_hops or config.two_hop:  # and the hop pairs the ranker decides
            d_in = (fold_of[f_pairs[:, 0]] == f) & (fold_of[f_pairs[:, 1]] == f)
            dy = labels[f_pairs[d_in, 0]] == labels[f_pairs[d_in, 1]]
            rep["decided_recall"] = _candidate_recall(f_pairs[d_in], dy, labels[rows_of[f]])
        folds.append(rep)
    final_cfg = tune_group_thresholds(scored, config)
    sizes: list[tuple[float, float]] = []
    if sub_pool is not None:
        # the whole pool (each fold's rows in it), then the folds alone, halves, quarters
        classes: list[list[Scored]] = [[] for _ in range(2 + len(SUB_PARTS))]
        for f in range(k):
            classes[0].append(scored[f])
            for c, parts in enumerate((1, *SUB_PARTS), start=1):
                for rows in sub_pools(rows_of[f], labels, parts, seed=f):
                    sp = sub_pool(pool, rows)
                    sp_pairs = candidate_pairs({s: sp.nb[s] for s in signals}, len(rows),
                                               config)
                    sp_pairs, p_sp = fold_rankers[f].score_pool(sp_pairs, sp.features, sp.nb,
                                                                sp.titles)
                    assert sp.labels is not None
                    classes[c].append((sp_pairs, p_sp, sp.labels))
        fold_rows = n / k
        slope, sizes = pool_rule_slope(
            [(n, classes[0])] + [(fold_rows / d, c) for d, c in
                                 zip((1, *SUB_PARTS), classes[1:], strict=True)],
            final_cfg)
        final_cfg = replace(final_cfg, pool_rows=n, pool_slope=slope)
    booster = fit(X, y, rounds=int(np.mean(iters).round()))
    graph = None
    if X2 is not None:
        graph = fit(X2, y2, rounds=int(np.mean(g_iters).round()))
    report = {
        "pool_rule": {"points": sizes, "pool_rows": final_cfg.pool_rows,
                      "slope_per_doubling": final_cfg.pool_slope},
        "mode": "whole",
        "graph_pass": graph is not None,
        **({"cascade": cascade_rep} if cascade_rep is not None else {}),
        "folds": folds,
        "oof_f1": [r["f1"] for r in folds],
        "whole_f1": f1_report(I_all, labels, buckets)["f1"],
        "threshold": final_cfg.threshold,
        "single_threshold": final_cfg.single_threshold,
        "pairs": len(y),
        "positives": int(y.sum()),
        "rounds": booster.current_iteration(),
        "pool_rows": [n],
        "seconds": time.perf_counter() - t0,
    }
    ranker = Ranker(booster, list(signals), final_cfg, report, weights, cascade, scorer, graph)
    return ranker, report


#: Makes the cross-encoder fits of `train_on_whole`'s cascade from its pairs' titles
#: (a, b) and labels (`training.cross.CrossFit`: `index` knows no torch).
CrossMaker = Callable[[list[str], list[str], np.ndarray], PairModelFit]


def _cascade_folds(
    pairs: np.ndarray,
    y: np.ndarray,
    fold_of: np.ndarray,
    scored: list[Scored],
    titles: Sequence[str],
    make: CrossMaker,
    folder: Path,
    show_progress: bool = False,
) -> tuple[Cascade | None, PairScorer | None, dict[str, Any]]:
    """The cross-encoder cascade out of fold on one whole pool's candidate pairs.

    The pairs the scorer may read are the candidates (not a graph pass's hop pairs, which
    keep the second booster's probability) some fold scores within `READ_LO` to
    `READ_HI`. Fold f's are scored by a cross-encoder fitted on
    those not touching fold f, and re-decided by the cascade (band, stack) tuned on the
    other folds' pairs (`tune_cascade`, pairwise F1): so fold f's decision never saw its
    labels. Replaces `scored[f]`'s probabilities by the cascade's.

    Returns:
        the cascade tuned on every fold and its scorer (fitted on every pair it may read,
        written to `folder`), both None when the trees alone are best; and a report.
    """
    k = len(scored)
    fa, fb = fold_of[pairs[:, 0]], fold_of[pairs[:, 1]]
    touch = [(fa == f) | (fb == f) for f in range(k)]
    idx = [np.flatnonzero(t) for t in touch]  # scored[f]'s pairs, in pair order
    lo, hi = READ_LO, READ_HI
    wide = [(scored[f][1] >= lo) & (scored[f][1] < hi) for f in range(k)]
    readable = np.zeros(len(y), bool)
    for f in range(k):
        readable[idx[f][wide[f]]] = True
    u = np.flatnonzero(readable)
    at = np.full(len(y), -1, np.int64)
    at[u] = np.arange(len(u))
    fitter = make([titles[i] for i in pairs[u, 0]], [titles[j] for j in pairs[u, 1]], y[u])
    z = [np.zeros(len(idx[f]), np.float32) for f in range(k)]
    for f in progress(range(k), desc="cross-encoder folds", unit="fold",
                      disable=not show_progress):
        if wide[f].any():
            z[f][wide[f]] = fitter.fold_logits(at[u[~touch[f][u]]], at[idx[f][wide[f]]])
    # the candidates' probabilities (a graph pass's hop pairs after them keep theirs)
    p = [np.asarray(scored[f][1])[: len(idx[f])] for f in range(k)]
    hops = [np.asarray(scored[f][1])[len(idx[f]):] for f in range(k)]
    labels = [y[idx[f]] for f in range(k)]
    banded, read = [], 0
    for f in range(k):
        rest = [g for g in range(k) if g != f]
        c, _, _ = tune_cascade(np.concatenate([p[g] for g in rest]),
                               np.concatenate([z[g] for g in rest]),
                               np.concatenate([labels[g] for g in rest]))
        if c is not None:
            read += int(c.band(p[f]).sum())
        refined = np.r_[apply_cascade(c, p[f], z[f]), hops[f]].astype(np.float32)
        scored[f] = (scored[f][0], refined, *scored[f][2:])
        banded.append(c is not None)
    cascade, _, _ = tune_cascade(np.concatenate(p), np.concatenate(z), np.concatenate(labels))
    scorer = fitter.final(np.arange(len(u)), folder) if cascade is not None else None
    entries = sum(len(i) for i in idx)
    rep = {
        **(asdict(cascade) if cascade is not None else {}),
        "readable_pairs": len(u),
        "band_share": read / max(1, entries),  # of the folds' scored pairs, out of fold
        "folds_with_a_band": int(sum(banded)),
    }
    return cascade, scorer, rep


#: Folds the carry check trains on (each the small sample, the other folds the catalogue).
CARRY_FOLDS = 2


def carry_f1(
    pool: RankPool,
    fold_of: np.ndarray,
    signals: Sequence[str],
    config: RankerConfig,
    sub_pool: SubPool,
    folds: int = CARRY_FOLDS,
    show_progress: bool = False,
) -> list[float]:
    """The carry check: a user trains on a labelled sample and matches a bigger catalogue.
    For each of the first `folds` folds, a ranker is trained on that fold's rows matched as
    a pool of their own (`train_on_whole` in as many inner folds, the pool-size rule
    included), then decides the other folds' rows matched as one pool ((k-1)× its size);
    returns the mean row F1 of each such decision. What wins out of fold at one pool size
    but loses carried (e.g. wider candidates, whose extra neighbours hold more look-alikes
    in a bigger pool) shows here.

    Args:
        pool: one group-labelled pool; fold_of: (n,) fold of each row, 0..k-1.
        sub_pool: makes the pool of some of its rows (`sub_pool_maker`).
    """
    labels = pool.labels
    assert labels is not None
    k = int(fold_of.max()) + 1
    out = []
    for f in progress(range(min(folds, k)), desc="carry check", unit="fold",
                      disable=not show_progress):
        sample = sub_pool(pool, np.flatnonzero(fold_of == f))
        assert sample.labels is not None
        inner_k = min(k, len(np.unique(sample.labels)))
        if inner_k < 2:  # a sample of one product cannot be trained on out of fold
            continue
        inner = np.full(len(sample.labels), -1, np.int64)
        for g, (_, rows) in enumerate(group_folds(sample.labels, inner_k, seed=f)):
            inner[rows] = g
        small, _ = train_on_whole(sample, inner, signals, config, sub_pool=sub_pool)
        rest = sub_pool(pool, np.flatnonzero(fold_of != f))
        assert rest.labels is not None
        I, _ = small.match(rest.features, rest.nb, rest.titles)
        out.append(mean_f1(I, rest.labels))
    return out


def train_grouped(
    pools: list[RankPool],
    signals: Sequence[str],
    fold_of: np.ndarray | None = None,
    show_progress: bool = False,
    sub_pool: SubPool | None = None,
) -> tuple[Ranker, dict[str, Any]]:
    """`train_on_whole` of the one pool when `fold_of` is given, else `train_on_pools`."""
    if fold_of is not None:
        (pool,) = pools
        return train_on_whole(pool, fold_of, signals, show_progress=show_progress,
                              sub_pool=sub_pool)
    return train_on_pools(pools, signals, show_progress=show_progress, sub_pool=sub_pool)


def is_candidate(pairs: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(m,) bool: whether each pair of rows (either order) is one of the (c, 2) sorted
    unordered `candidates` (as `candidate_pairs` gives them)."""
    if len(pairs) == 0 or len(candidates) == 0:
        return np.zeros(len(pairs), bool)
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    width = int(max(hi.max(), candidates.max())) + 1
    key = lo.astype(np.int64) * width + hi
    ckey = candidates[:, 0].astype(np.int64) * width + candidates[:, 1]
    pos = np.searchsorted(ckey, key)
    return (pos < len(ckey)) & (ckey[np.minimum(pos, len(ckey) - 1)] == key)


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
    fusion: FusionConfig | None = None,
    source: np.ndarray | None = None,
    cross: PairModelFit | None = None,
    cross_folder: Path | None = None,
) -> tuple[Ranker, dict[str, Any]]:
    """Out-of-fold training on labelled pairs of one pool (see the module doc).

    Args:
        groups: (n,) connected component of each row (`index.data.pairs.pair_components`).
        held_out: splits only scored with the final model (e.g. valid), by the decision
            `match` and `evaluate` make (`selfmatch.decide` with `fusion`'s source mode
            and the rows' `source` codes).
        cross: fits a cross-encoder on the labelled pairs (by index): with it, the
            cascade is tuned out of fold on the same folds (`index.tuning.cascade`), each
            fold scored by a cascade whose scorer, band and stack never saw it; the final
            scorer (fitted on every pair) is written to `cross_folder` when the cascade
            tuned on all the folds reads any band.
    """
    if config is not None and config.graph_pass:
        raise ValueError("the graph pass is trained on label groups (train_on_whole)")
    t0 = time.perf_counter()
    config = config or RankerConfig()
    use = {s: pool.nb[s] for s in signals}
    pairs = np.stack([train.left, train.right], axis=1)
    weights = WordWeights.fit(pool.titles)
    X = pair_features(pairs, pool.features, use, pool.titles, signals, weights)
    y = train.label
    # a labelled pair no signal proposes is never matched: it scores as a non-match (so
    # the out-of-fold F1 is the decision's, and wider candidates can be measured)
    reach = is_candidate(pairs, candidate_pairs(use, len(pool.titles), config))
    pair_group = groups[train.left]
    oof = np.zeros(len(y), np.float32)
    iters = []
    splits = group_folds(pair_group, folds)
    for tr, va in splits:
        booster = fit(X[tr], y[tr])
        iters.append(booster.current_iteration())
        oof[va] = np.where(reach[va], _predict(booster, X[va]), 0.0)
    t = tune_pair_threshold(oof, y)
    # each fold's pairs at the threshold tuned on the other folds' out-of-fold scores
    fold_f1 = [
        pair_prf(oof[va] >= tune_pair_threshold(oof[tr], y[tr]), y[va])["f1"]
        for tr, va in splits
    ]
    booster = fit(X, y, rounds=int(np.mean(iters).round()))
    report: dict[str, Any] = {"mode": "pairs"}
    cascade, scorer, final_p = None, None, oof
    if cross is not None:
        z = np.zeros(len(y), np.float32)
        for tr, va in progress(splits, desc="cross-encoder folds", disable=cross_folder is None):
            z[va] = cross.fold_logits(tr, va)
        report["trees_oof_f1"] = fold_f1
        fold_f1 = cascade_fold_f1(oof, z, y, splits)
        cascade, t, _ = tune_cascade(oof, z, y)
        if cascade is not None:
            if cross_folder is None:
                raise ValueError("a cross-encoder fit needs a folder for its final scorer")
            scorer = cross.final(np.arange(len(y)), cross_folder)
            final_p = apply_cascade(cascade, oof, z)
            share = float(cascade.band(oof[reach]).mean()) if reach.any() else 0.0
            report["cascade"] = {**asdict(cascade), "band_share": share}
    cfg = replace(config, threshold=t, single_threshold=1.01)
    report |= {
        "threshold": t,
        "train_oof": pair_prf(final_p >= t, y),
        "oof_f1": fold_f1,
        "pairs": len(y),
        "positives": int(y.sum()),
        "candidate_recall": float(reach[y].mean()) if y.any() else 1.0,
        "rounds": booster.current_iteration(),
    }
    ranker = Ranker(booster, list(signals), cfg, report, weights, cascade, scorer)
    if held_out:
        # scored as `evaluate` and `match` decide: the ranker's matches over the whole pool
        # (candidates, threshold, cap), not every labelled pair's probability on its own
        # (that scored pairs no signal ever proposes, and so disagreed with `evaluate`)
        I, _, _ = decide(
            pool.features, pool.nb, fusion or FusionConfig(), pool.titles, source, ranker
        )
        for name, split in held_out.items():
            report[name] = pair_report(I, split.left, split.right, split.label)
    report["seconds"] = time.perf_counter() - t0
    return ranker, report


def match_pool(
    feats: Features, titles: list[str], labels: Any, config: FusionConfig, device: str
) -> RankPool:
    """Features of a pool matched among itself: neighbours with the config's stages."""
    nb = self_neighbours(feats, device=device)  # type: ignore[arg-type]
    nb = apply_stages(feats.parts(), nb, config.for_pool(len(titles)), device=device)
    return RankPool(feats, nb, titles, labels)


def catalogue_pool(
    cat: Catalogue,
    encoders: Encoders,
    config: FusionConfig,
    device: str,
    labels: Any = None,
    show_progress: bool = False,
) -> RankPool:
    """`cat` matched among itself (`match_pool` of its features)."""
    feats = embed(cat, encoders, tfidf_config=config.tfidf, show_progress=show_progress)
    return match_pool(feats, list(cat.title), labels, config, device)


def ranker_signals(pools: list[RankPool], config: FusionConfig) -> list[str]:
    """The signals a ranker uses: every computed one (stage signals included) but a base
    signal no row of any pool has (an empty `image_phash` column gives no phash features)."""
    present = set().union(*(p.features.present() for p in pools))
    return [
        s
        for s in pools[0].nb
        if (s in BASE_SIGNALS and s in present)
        or (s not in BASE_SIGNALS and s in config.thresholds)
    ]


#: How `train ranker` pools group-labelled rows: "whole" (the CSV matched as one pool,
#: folds by group within it: `train_on_whole`) or "folds" (each fold its own pool).
POOLINGS = ("whole", "folds")


def group_pools(
    cat: Catalogue,
    encoders: Encoders,
    config: FusionConfig,
    folds: int,
    device: str,
    show_progress: bool = False,
    pooling: str = "folds",
) -> tuple[list[RankPool], np.ndarray | None]:
    """The pools of a group-labelled catalogue for the ranker (`POOLINGS`): "folds" gives
    `folds` group-disjoint pools each matched among itself and no fold ids; "whole" gives
    one pool of every row and each row's fold (0..folds-1). Without images the image
    encoder is not used."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if cat.image is None:
        encoders = Encoders(text=encoders.text)
    labels = cat.labels
    splits = group_folds(labels, folds)
    if pooling == "whole":
        fold_of = np.full(len(cat), -1, np.int64)
        for f, (_, rows) in enumerate(splits):
            fold_of[rows] = f
        return [catalogue_pool(cat, encoders, config, device, labels)], fold_of
    pools = []
    for _, rows in progress(splits, desc="pools", unit="pool", disable=not show_progress):
        pools.append(catalogue_pool(cat.subset(rows), encoders, config, device, labels[rows]))
    return pools, None


def sub_pool_maker(config: FusionConfig, device: str) -> Any:
    """Sub-pools of a pool for the pool-size rule: its features' rows, neighbours and
    stages computed anew among them."""

    def make(pool: RankPool, rows: np.ndarray) -> RankPool:
        labels = None if pool.labels is None else pool.labels[rows]
        titles = [pool.titles[i] for i in rows]
        return match_pool(pool.features.subset(rows), titles, labels, config, device)

    return make


def without(signals: list[str], s: str) -> list[str]:
    """`signals` without `s` and what is made from it ("combined" from text and image)."""
    return [x for x in signals if x != s and not (x == "combined" and s in ("text", "image"))]


def ranker_marginals(
    pools: list[RankPool],
    signals: list[str],
    show: bool = False,
    fold_of: np.ndarray | None = None,
) -> tuple[list[str], list[tuple[str, float]], dict[str, float]]:
    """Each base signal's marginal out-of-fold F1 with the ranker: mean OOF F1 of the
    ranker trained on `signals` minus that of one retrained without the signal. The
    signal with the lowest marginal under `MARGINAL_MIN` is left out, then the others are
    measured again, until every one left earns its cost. (`fold_of`: one whole pool, as
    `train_grouped`.)

    Returns:
        the signals kept, the (signal, marginal) left out in order, and the first round's
        marginal of every base signal.
    """

    def oof(sigs: list[str]) -> float:
        return float(np.mean(train_grouped(pools, sigs, fold_of, show)[1]["oof_f1"]))

    kept, left_out = list(signals), []
    first: dict[str, float] = {}
    score = oof(kept)
    while True:
        base = [s for s in kept if s in BASE_SIGNALS]
        if len(base) < 2:
            break
        runs = {s: oof(without(kept, s)) for s in base}
        gains = {s: score - f for s, f in runs.items()}
        if not first:
            first = {s: round(g, 4) for s, g in gains.items()}
        weakest = min(gains, key=lambda s: gains[s])
        if gains[weakest] >= MARGINAL_MIN:
            break
        left_out.append((weakest, round(gains[weakest], 4)))
        kept, score = without(kept, weakest), runs[weakest]
    return kept, left_out, first
