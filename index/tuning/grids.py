"""Threshold tuning on labelled rows: per-signal sweeps and coordinate descent on the fusion.

Neighbours are computed once; every candidate config is then one vectorised `fuse` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from index.errors import CatalogueError
from index.matching.fusion import FusionConfig, Neighbours, fuse, phash_similarity
from index.progress import progress
from index.tuning.metrics import group_sizes, mean_f1

log = logging.getLogger(__name__)

#: Candidate thresholds per signal.
GRIDS: dict[str, list[float]] = {
    "tfidf": [round(float(t), 3) for t in np.arange(0.30, 0.901, 0.025)],
    # Trained (ArcFace) embeddings separate at much lower cosines than zero-shot ones.
    "text": [round(float(t), 3) for t in np.arange(0.20, 0.981, 0.02)],
    "image": [round(float(t), 3) for t in np.arange(0.10, 0.981, 0.025)],
    "phash": [phash_similarity(d) for d in range(0, 17)],
    # Blended (INB) combined embeddings bunch up near 1: finer steps at the top (the best
    # threshold after two INB stages was 0.999 on some 5k-row pools).
    "combined": [round(float(t), 3) for t in np.arange(0.20, 0.891, 0.02)]
    + [round(float(t), 3) for t in np.arange(0.90, 0.9951, 0.01)]
    + [0.995, 0.9975, 0.999],
}
FLOORS: list[float] = [round(float(t), 2) for t in np.arange(0.0, 0.951, 0.05)]


def group_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold splits (train rows, validation rows): no group on both sides.

    Raises:
        CatalogueError: fewer label groups than folds (out-of-fold work needs k of them).
    """
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < max(k, 2):
        raise CatalogueError(
            f"{k} folds need at least {max(k, 2)} label groups, the data has {n_groups} "
            "(label more groups, or lower --folds)"
        )
    gkf = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in gkf.split(np.zeros(len(groups)), groups=groups)]


def sub_pools(
    rows: np.ndarray, groups: np.ndarray, parts: int, seed: int, min_rows: int = 1
) -> list[np.ndarray]:
    """`rows` split into `parts` group-disjoint pools of about equal size (groups assigned
    at random); pools with fewer than `min_rows` rows are left out."""
    uniq = np.unique(groups[rows])
    rng = np.random.default_rng(seed)
    a = rng.integers(0, parts, len(uniq))[np.searchsorted(uniq, groups[rows])]
    return [rows[a == p] for p in range(parts) if (a == p).sum() >= min_rows]


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


#: What tuning maximises: a config's score on labelled data.
Objective = Callable[[FusionConfig], float]


def _best(
    objective: Objective,
    configs: Iterable[FusionConfig],
    best: tuple[float, FusionConfig],
    desc: str,
    show_progress: bool,
) -> tuple[float, FusionConfig]:
    cands = list(configs)
    for c in progress(cands, desc=desc, unit="cfg", disable=not show_progress):
        f = objective(c)
        if f > best[0] + 1e-9:
            best = (f, c)
    return best


def descend(
    objective: Objective,
    start: FusionConfig,
    min2_signals: Iterable[str],
    rounds: int = 2,
    tune_min2: bool = True,
    show_progress: bool = False,
) -> tuple[FusionConfig, float]:
    """Coordinate descent of `objective` over each threshold of `start` (over `GRIDS`),
    then the min-2 signal (of `min2_signals`) and floor (`FLOORS`); stops when a round
    gains nothing. Returns the best config and its score."""
    best = (objective(start), start)
    min2 = list(min2_signals)
    for _ in range(rounds):
        before = best[0]
        for name in start.thresholds:
            base = best[1]
            cands = (base.with_(thresholds={**base.thresholds, name: t}) for t in GRIDS[name])
            best = _best(objective, cands, best, f"tune {name}", show_progress)
        if tune_min2 and best[1].min2:
            base = best[1]
            cands = (base.with_(min2_signal=s, min2_floor=f) for s in min2 for f in FLOORS)
            best = _best(objective, cands, best, "tune min2", show_progress)
        if best[0] <= before + 1e-6:
            break
    return best[1], best[0]


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
    best, f1 = descend(
        lambda c: score_pools(pools, c),
        start,
        [n for n in min2_signals if n in signals],
        rounds,
        tune_min2,
        show_progress,
    )
    rows = round(sum(len(labels) for _, labels in pools) / len(pools))
    return best.with_(tuned_rows=rows), f1


class PairTable:
    """A pool's candidate pairs, laid out so a config's F1 is a few vectorised passes.

    Every (row, other row) pair that some signal lists holds its similarity per signal
    (-inf where not listed) and whether the two rows share a label; per signal, each row's
    nearest other row (for the at-least-one-match rule). `score` then equals
    `mean_f1(fuse_stages(...))` except where a row's matches exceed the cap, whose true
    positives are scaled down proportionally; tuning uses it, reports use `fuse_stages`.
    """

    def __init__(
        self,
        signals: dict[str, Neighbours],
        labels: np.ndarray,
        titles: list[str] | None = None,
        unit_keep: dict[str, float] | None = None,
    ) -> None:
        n = len(labels)
        self.n, self.labels = n, labels
        self.names = list(signals)
        self.size = group_sizes(labels).astype(np.float64)
        keys, sims = [], []
        for s, (D, I) in signals.items():
            assert D.shape == I.shape and D.shape[0] == n, (s, D.shape, I.shape, n)
            r = np.repeat(np.arange(n, dtype=np.int64), I.shape[1]).reshape(I.shape)
            m = (I >= 0) & (r != I)
            keys.append(r[m] * n + I[m])
            sims.append(D[m])
        allk = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        uniq, inv = np.unique(allk, return_inverse=True)
        self.P = np.full((len(uniq), len(self.names)), -np.inf, np.float32)
        off = 0
        for c, d in enumerate(sims):
            idx = inv[off : off + len(d)]
            np.maximum.at(self.P[:, c], idx, d)
            off += len(d)
        self.row = uniq // n
        col = uniq % n
        self.same = labels[self.row] == labels[col]
        self.drop = np.zeros(len(uniq), bool)
        if titles is not None:
            from index.features.text import Quantities

            conflict = Quantities(titles).conflicts(self.row, col)
            strong = np.zeros(len(uniq), bool)
            for s, t in (unit_keep or {}).items():
                if s in self.names:
                    strong |= self.P[:, self.names.index(s)] >= t
            self.drop = conflict & ~strong
        # Per signal: each row's nearest other row, its similarity, same label, rank of the
        # row in that neighbour's list (for the reciprocal check), and the unit-rule drop.
        self.near: dict[str, tuple[np.ndarray, ...]] = {}
        rows = np.arange(n)
        pos = {int(k): p for p, k in enumerate(uniq.tolist())} if titles is not None else {}
        for s, (D, I) in signals.items():
            other = (I >= 0) & (rows[:, None] != I)
            j = np.argmax(other, axis=1)
            has = other[rows, j]
            bj, bd = I[rows, j], D[rows, j]
            ok = has & (bj >= 0)
            same = ok & (labels[np.maximum(bj, 0)] == labels)
            Ij = I[np.maximum(bj, 0)]
            oth = (Ij >= 0) & (Ij != bj[:, None])
            rank = np.cumsum(oth, axis=1)
            hit = oth & (Ij == rows[:, None])
            rr = np.where(hit.any(axis=1), np.where(hit, rank, 10**6).min(axis=1), 10**6)
            nd = np.zeros(n, bool)
            if titles is not None:
                for i in np.flatnonzero(ok).tolist():
                    p = pos.get(i * n + int(bj[i]))
                    nd[i] = p is not None and bool(self.drop[p])
            self.near[s] = (ok, np.where(ok, bd, -np.inf), same, rr, nd)

    def score(self, config: FusionConfig) -> float:
        """Mean row F1 of `config` on this pool (see the class note on the cap)."""
        cfg = config.for_pool(self.n)
        pred = np.zeros(len(self.row), bool)
        for s, t in cfg.thresholds.items():
            if s in self.names:
                pred |= self.P[:, self.names.index(s)] >= t
        if cfg.stages.unit_rule:
            pred &= ~self.drop
        count = np.bincount(self.row[pred], minlength=self.n).astype(np.float64)
        tp = np.bincount(self.row[pred & self.same], minlength=self.n).astype(np.float64)
        cap = cfg.max_matches - 1
        over = count > cap
        tp[over] *= cap / count[over]
        count[over] = cap
        if cfg.min2 and cfg.min2_signal in self.near:
            ok, d, same, rr, nd = self.near[cfg.min2_signal]
            add = (count == 0) & ok & (d >= cfg.min2_floor) & (cap >= 1)
            if cfg.min2_reciprocal:
                add &= rr <= cfg.min2_reciprocal
            if cfg.stages.unit_rule:
                add &= ~nd
            count += add
            tp += add & same
        return float(np.mean(2 * (tp + 1) / (count + 1 + self.size)))


def score_tables(tables: list[PairTable], config: FusionConfig) -> float:
    """Mean row F1 over the rows of several pools."""
    n = sum(t.n for t in tables)
    return sum(t.score(config) * t.n for t in tables) / n


def coarse(grid: list[float], step: int = 2) -> list[float]:
    """Every `step`-th value of a grid, and always its last."""
    out = grid[::step]
    return out if out[-1] == grid[-1] else [*out, grid[-1]]


def tune_tables(
    tables: list[PairTable],
    start: FusionConfig,
    rounds: int = 2,
    tune_min2: bool = True,
    min2_signals: tuple[str, ...] = ("text", "tfidf", "image", "combined"),
    grid_step: int = 1,
    reciprocal: tuple[int, ...] = (),
) -> tuple[FusionConfig, float]:
    """`tune_pools` on `PairTable`s (fast): coordinate descent over the thresholds of
    `start` present in every table, then the min-2 signal and floor (and, when
    `reciprocal` lists ranks, the rank of the reciprocal check among them)."""
    present = [s for s in tables[0].names if all(s in t.names for t in tables)]
    names = [s for s in start.thresholds if s in present]
    start = start.with_(thresholds={s: start.thresholds[s] for s in names})
    if start.min2_signal not in present and names:
        start = start.with_(min2_signal=names[0])
    best = (score_tables(tables, start), start)

    def consider(cands: Iterable[FusionConfig]) -> None:
        nonlocal best
        for c in cands:
            f = score_tables(tables, c)
            if f > best[0] + 1e-9:
                best = (f, c)

    for _ in range(rounds):
        before = best[0]
        for name in names:
            base = best[1]
            consider(
                base.with_(thresholds={**base.thresholds, name: t})
                for t in coarse(GRIDS[name], grid_step)
            )
        if tune_min2 and best[1].min2:
            base = best[1]
            ranks = list(reciprocal) if reciprocal else [base.min2_reciprocal]
            consider(
                base.with_(min2_signal=s, min2_floor=f, min2_reciprocal=r)
                for s in [m for m in min2_signals if m in present]
                for f in coarse(FLOORS, grid_step)
                for r in ranks
            )
        if best[0] <= before + 1e-6:
            break
    rows = round(sum(t.n for t in tables) / len(tables))
    return best[1].with_(tuned_rows=rows), best[0]


def slopes_of(tuned: list[FusionConfig]) -> dict[str, float]:
    """Least-squares slope, against log2(`tuned_rows`), of each threshold the configs share
    and of their mean INB threshold ("inb", when every config blends): the pool-size rule
    (change per doubling of the pool). Empty with fewer than two pool sizes."""
    x = np.log2([c.tuned_rows or 1 for c in tuned])
    if len(set(x.tolist())) < 2:
        return {}
    ys: dict[str, list[float | None]] = {
        s: [c.thresholds.get(s) for c in tuned] for s in tuned[0].thresholds
    }
    if all(c.stages.inb for c in tuned):
        ys["inb"] = [float(np.mean(c.stages.inb)) for c in tuned]
    return {
        s: float(np.polyfit(x, np.array(v, float), 1)[0])
        for s, v in ys.items()
        if all(y is not None for y in v)
    }


def fit_pool_slopes(
    sizes: dict[int, list[PairTable]], start: FusionConfig, grid_step: int = 1
) -> tuple[dict[str, float], dict[int, tuple[FusionConfig, float]]]:
    """The pool-size rule: tune `start` on pools of each size (key: any size label), then fit
    each threshold against log2(mean pool rows) by least squares (`slopes_of`).

    Returns:
        Slope per signal (threshold change per doubling of the pool) and, per size, the
        tuned config and its F1.
    """
    tuned = {
        k: tune_tables(ts, start, rounds=1, tune_min2=False, grid_step=grid_step)
        for k, ts in sizes.items()
        if ts
    }
    slopes = slopes_of([c for c, _ in tuned.values()])
    return {k: v for k, v in slopes.items() if k in start.thresholds}, tuned


@dataclass(frozen=True)
class PairPool:
    """One pool of pairwise-labelled records matched among themselves: neighbours per
    signal (row ids local to the pool), the labelled pairs `(left, right, label)` inside
    it, and its titles and source codes (for the unit rule and the source mode)."""

    signals: dict[str, Neighbours]
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
    titles: list[str] | None = None
    source: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.signals[next(iter(self.signals))][1].shape[0])


def pair_pools_prf(pools: Sequence[PairPool], config: FusionConfig) -> dict[str, float]:
    """Pairwise P/R/F1 over the labelled pairs of every pool (each pool matched on its
    own, as `fuse_stages` makes the matches; the pairs pooled, not the pools averaged)."""
    from index.matching.stages import fuse_stages
    from index.tuning.metrics import pair_prf, predicted_pairs

    pred, y = [], []
    for p in pools:
        I, _ = fuse_stages(p.signals, config, p.titles, n=p.rows, source=p.source)
        left, right, label = p.pairs
        pred.append(predicted_pairs(I, left, right))
        y.append(label.astype(bool))
    return pair_prf(np.concatenate(pred), np.concatenate(y))


def tune_pair_pools(
    pools: Sequence[PairPool],
    start: FusionConfig,
    rounds: int = 2,
    tune_min2: bool = True,
    show_progress: bool = False,
) -> tuple[FusionConfig, float]:
    """`descend` on pairwise-labelled data: the objective is the pairwise F1 on the
    labelled pairs only (an unlabelled pair is unknown, never a non-match) of the matches
    over every row of each pool (`pair_pools_prf`). Only signals present in every pool are
    tuned. Returns the best config (`tuned_rows`: the mean pool size) and its pair F1."""
    signals = [s for s in pools[0].signals if all(s in p.signals for p in pools)]
    names = [s for s in start.thresholds if s in signals]
    start = start.with_(thresholds={s: start.thresholds[s] for s in names})
    if start.min2_signal not in signals and names:
        start = start.with_(min2_signal=names[0])
    min2 = [s for s in ("tfidf", "text", "image", "combined") if s in signals]
    best, f1 = descend(
        lambda c: pair_pools_prf(pools, c)["f1"], start, min2, rounds, tune_min2, show_progress
    )
    return best.with_(tuned_rows=round(sum(p.rows for p in pools) / len(pools))), f1


def tune_pairs(
    signals: dict[str, Neighbours],
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    start: FusionConfig,
    titles: list[str] | None = None,
    source: np.ndarray | None = None,
    rounds: int = 2,
    show_progress: bool = False,
) -> tuple[FusionConfig, float]:
    """`tune_pair_pools` on one pool: every record, matched over all of them."""
    pool = PairPool(signals, pairs, titles, source)
    return tune_pair_pools([pool], start, rounds, show_progress=show_progress)


def never_below_single(
    fused: tuple[FusionConfig, float], singles: list[tuple[FusionConfig, float]]
) -> tuple[FusionConfig, float]:
    """The tuned fused config and its score, unless a signal alone scored higher on the
    tuning data: then that signal's (the fusion never ends below its best single signal)."""
    best, score = fused
    for cfg, f1 in singles:
        if f1 > score + 1e-9:
            best, score = cfg, f1
    if best is not fused[0]:
        log.info(
            "tuning: %s alone beat every fusion on the tuning data (%.4f vs %.4f): kept alone",
            "+".join(best.thresholds),
            score,
            fused[1],
        )
    return best, score


#: A signal whose marginal F1 is below this is left out of a saved config (`drop_weak`).
MARGINAL_MIN = 0.001
#: Re-tunes a config (its thresholds as the start) on labelled data: (config, score).
Tuner = Callable[[FusionConfig], tuple[FusionConfig, float]]


def marginals(
    tuner: Tuner, best: FusionConfig, score: float
) -> dict[str, tuple[float, FusionConfig]]:
    """Each signal's marginal score: `score` minus the score of `best` without it, the
    other thresholds re-tuned (`tuner`); with the re-tuned config. Empty for one signal."""
    out: dict[str, tuple[float, FusionConfig]] = {}
    if len(best.thresholds) < 2:
        return out
    for s in best.thresholds:
        rest = {k: v for k, v in best.thresholds.items() if k != s}
        min2 = best.min2_signal if best.min2_signal != s else next(iter(rest))
        cfg, f = tuner(best.with_(thresholds=rest, min2_signal=min2))
        out[s] = (score - f, cfg)
    return out


def drop_weak(
    tuner: Tuner, best: FusionConfig, score: float, floor: float = MARGINAL_MIN
) -> tuple[FusionConfig, float, list[tuple[str, float]], dict[str, float]]:
    """Leave out, one at a time, the signal with the lowest marginal score while it is
    below `floor` (the others re-tuned each time).

    Returns:
        the config kept, its score, the (signal, marginal) left out in order, and the
        marginals of the first round (every signal of `best`).
    """
    dropped: list[tuple[str, float]] = []
    first: dict[str, float] | None = None
    while True:
        m = marginals(tuner, best, score)
        if first is None:
            first = {s: g for s, (g, _) in m.items()}
        if not m:
            break
        s, (gain, cfg) = min(m.items(), key=lambda kv: kv[1][0])
        if gain >= floor:
            break
        dropped.append((s, gain))
        best, score = cfg, score - gain
    return best, score, dropped, first
