"""`pricematch evaluate --ablation`: the match-quality stages measured one by one, out of fold.

Protocol: the rows are split by label group into folds (GroupKFold, or the folds saved by
`pricematch train` with `--oof`); each fold is a *pool* matched among itself (TF-IDF fitted
on the pool, given phash, dense embeddings from the model or the saved out-of-fold ones).
For each validation fold, every setting is tuned on the other folds' pools only (same pool
size, so thresholds carry) and the result is scored on the validation pool. Stages are
cumulative: a stage joins the running pipeline of a fold when it raises that fold's
*training* F1; its row reports the pipeline with the stage on. The pool-size study tunes on
the merged training folds (4x the validation pool) and carries the thresholds to the
validation pool as they are and moved by the pool-size rule fitted on training sub-pools.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from index.data.listings import Catalogue
from index.features.embed import Encoders, Features, Part, embed
from index.matching.fusion import FusionConfig, Neighbours
from index.matching.selfmatch import self_neighbours
from index.matching.stages import apply_stages, fuse_stages
from index.progress import progress
from index.tuning.grids import (
    PairTable,
    fit_pool_slopes,
    slopes_of,
    sub_pools,
    tune_tables,
)
from index.tuning.metrics import f1_report

#: Group-size buckets of the ablation's break-down (finer at the top than `SIZE_BUCKETS`).
BUCKETS: tuple[tuple[int, int], ...] = (
    (2, 2),
    (3, 4),
    (5, 9),
    (10, 19),
    (20, 29),
    (30, 51),
)


@dataclass
class Pool:
    """One pool of rows matched among themselves."""

    rows: np.ndarray
    labels: np.ndarray
    titles: list[str]
    parts: dict[str, Part]
    nb: dict[str, Neighbours]
    cache: dict[str, tuple[dict[str, Neighbours], PairTable]] = field(default_factory=dict)
    features: Features | None = None  # what the pair re-ranker's features need

    def __len__(self) -> int:
        return len(self.rows)

    def signals(self, config: FusionConfig, device: str) -> tuple[dict[str, Neighbours], PairTable]:
        """Neighbours with the config's stages (INB moved to this pool's size), and their
        pair table (cached per stages)."""
        config = config.for_pool(len(self))
        key = config.stages.model_dump_json() + str("combined" in config.thresholds)
        if key not in self.cache:
            nb = apply_stages(self.parts, self.nb, config, device=device)
            keep = {str(k): v for k, v in config.stages.unit_keep.items()}
            table = PairTable(nb, self.labels, self.titles, keep)
            self.cache[key] = (nb, table)
        return self.cache[key]


def make_pool(cat: Catalogue, rows: np.ndarray, dense: dict[str, np.ndarray], device: str) -> Pool:
    """TF-IDF fitted on the pool, the given phash, and the dense embeddings of `rows`."""
    sub = cat.subset(rows)
    sub.image = None
    feats: Features = embed(sub, Encoders())
    for name, x in dense.items():
        xr = np.ascontiguousarray(x[rows], dtype=np.float32)
        feats.set_dense(name, xr, np.abs(xr).sum(axis=1) > 0)
    nb = self_neighbours(feats, device=device)  # type: ignore[arg-type]
    return Pool(rows, cat.labels[rows], list(sub.title), feats.parts(), nb, features=feats)


Candidates = Callable[[FusionConfig], list[FusionConfig]]


#: What a row is: "reference" (measured alone, e.g. TF-IDF alone), "stage" (joins the
#: pipeline when it helps on the training folds), "combined" (a stage the alternatives
#: start from), "alternative" (instead of the stages after "combined"; its gain is over
#: the combined row), "final" (the pipeline as kept), "ranker" (the pair re-ranker on the
#: final pipeline's neighbours; its gain is over the final row).
Role = Literal["reference", "stage", "combined", "alternative", "final", "ranker"]


@dataclass
class Step:
    """One ablation row: candidate configs built from the running config of a fold."""

    name: str  # for display only; control flow goes by `role`
    candidates: Candidates
    cumulative: bool = True  # False: measured but never joins the pipeline
    reciprocal: tuple[int, ...] = ()
    role: Role = "stage"
    key: str = ""  # which setting the stage turns on (`unanimous_only`)


def default_steps(dense: list[str]) -> list[Step]:
    """The stages, in order (dense: the dense modalities present, e.g. ["text"])."""
    modal = [m for m in ("text", "image") if m in dense]

    def combined(c: FusionConfig) -> list[FusionConfig]:
        out = []
        for w in (0.7, 1.0, 1.4):
            weights: dict[str, float] = {"tfidf": 1.0, **{m: w for m in modal}}
            out.append(
                c.with_(thresholds={**c.thresholds, "combined": 0.6}).with_stages(
                    combined_weights=weights
                )
            )
        return out

    def inb(c: FusionConfig) -> list[FusionConfig]:
        return [c.with_stages(inb=(*c.stages.inb, t)) for t in (0.5, 0.6, 0.7, 0.8)]

    def qe(c: FusionConfig) -> list[FusionConfig]:
        return [c.with_stages(inb=(), qe_alpha=3.0, qe_k=k) for k in (2, 3, 5)]

    steps = [
        Step(
            "TF-IDF alone",
            lambda c: [c.with_(thresholds={"tfidf": 0.55}, min2_signal="tfidf")],
            cumulative=False,
            role="reference",
        ),
        Step(
            "fused " + " ∪ ".join(["TF-IDF", "phash", *modal]),
            lambda c: [c],
        ),
    ]
    if modal:
        steps += [
            Step("+ combined embedding", combined, role="combined", key="combined"),
            Step("+ INB stage 1", inb, key="inb1"),
            Step("+ INB stage 2", inb, key="inb2"),
            Step("alternative: αQE instead of INB", qe, cumulative=False, role="alternative"),
        ]
    steps += [
        Step("+ min-2 rank-2 reciprocal", lambda c: [c], reciprocal=(1, 2), key="reciprocal"),
        Step("+ title unit rule", lambda c: [c.with_stages(unit_rule=True)], key="unit_rule"),
    ]
    return steps


@dataclass
class FoldState:
    running: FusionConfig
    train_f1: float
    base_before_inb: FusionConfig | None = None


def evaluate_pool(pool: Pool, cfg: FusionConfig, device: str) -> dict[str, Any]:
    nb, _ = pool.signals(cfg, device)
    I, _ = fuse_stages(nb, cfg, pool.titles)
    return f1_report(I, pool.labels, BUCKETS)


def run_ablation(
    pools: list[Pool],
    start: FusionConfig,
    steps: list[Step],
    device: str = "cpu",
    grid_step: int = 2,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Every step on every fold; one result dict per step (per-fold reports and configs)."""
    k = len(pools)
    states = [FoldState(start, -1.0) for _ in range(k)]
    out = []
    alt_base: list[FusionConfig] = [start] * k
    for step in progress(steps, desc="ablation", unit="stage", disable=not show_progress):
        folds = []
        for f in range(k):
            train = [p for g, p in enumerate(pools) if g != f]
            base = alt_base[f] if step.role == "alternative" else states[f].running
            best: tuple[float, FusionConfig] | None = None
            for cand in step.candidates(base):
                tables = [p.signals(cand, device)[1] for p in train]
                cfg, f_tr = tune_tables(
                    tables, cand, rounds=1, grid_step=grid_step, reciprocal=step.reciprocal
                )
                if best is None or f_tr > best[0]:
                    best = (f_tr, cfg)
            assert best is not None
            f_tr, cfg = best
            rep = evaluate_pool(pools[f], cfg, device)
            kept = step.cumulative and f_tr > states[f].train_f1 + 1e-6
            if step.role == "combined":
                alt_base[f] = cfg if kept else states[f].running
            if kept or (step.cumulative and states[f].train_f1 < 0):
                states[f] = FoldState(cfg, f_tr)
                kept = True
            folds.append(
                {"report": rep, "config": cfg.model_dump(), "train_f1": f_tr, "kept": kept}
            )
        out.append(
            {
                "name": step.name,
                "role": step.role,
                "key": step.key,
                "cumulative": step.cumulative,
                "folds": folds,
            }
        )
    final = [
        {
            "report": evaluate_pool(pools[f], states[f].running, device),
            "config": states[f].running.model_dump(),
            "train_f1": states[f].train_f1,
            "kept": True,
        }
        for f in range(k)
    ]
    out.append(
        {
            "name": "final (stages kept on the training folds)",
            "role": "final",
            "cumulative": True,
            "folds": final,
        }
    )
    return out


def pool_study(
    cat: Catalogue,
    dense: dict[str, np.ndarray],
    fold_rows: list[np.ndarray],
    pools: list[Pool],
    start: FusionConfig,
    device: str = "cpu",
    grid_step: int = 2,
    show_progress: bool = False,
    within_folds: bool = False,
) -> list[dict[str, Any]]:
    """Per validation fold: thresholds tuned on the merged training folds (4N) carried to the
    validation pool (N) as they are and moved by the pool-size rule, whose slopes are fitted
    on the training side only (sub-pools N/4 and N/2, the folds N, merged pairs 2N, all 4N).

    `within_folds` (out-of-fold embeddings: each fold embedded by its own model, so rows of
    two folds are not comparable) keeps every pool inside one fold: slopes from N/4, N/2
    and N, and the carried thresholds are those tuned on the N/4 sub-pools."""
    labels = cat.labels
    out = []
    k = len(fold_rows)
    cache: dict[bytes, PairTable] = {}  # sub-pools of a fold recur in every outer fold

    def table(rows: np.ndarray) -> PairTable:
        key = hashlib.sha1(np.sort(rows).tobytes()).digest()
        if key not in cache:
            cache[key] = make_pool(cat, rows, dense, device).signals(start, device)[1]
        return cache[key]

    def tables(rows_list: list[np.ndarray]) -> list[PairTable]:
        return [table(r) for r in rows_list]

    def split(g: int, parts: int) -> list[np.ndarray]:
        return sub_pools(fold_rows[g], labels, parts, seed=g, min_rows=2)

    for f in progress(range(k), desc="pool study", unit="fold", disable=not show_progress):
        train = [g for g in range(k) if g != f]

        sizes: dict[int, list[PairTable]] = {
            1: tables([r for g in train for r in split(g, 4)]),
            2: tables([r for g in train for r in split(g, 2)]),
            4: [pools[g].signals(start, device)[1] for g in train],
            8: tables(
                [
                    np.concatenate([fold_rows[a], fold_rows[b]])
                    for a, b in zip(train[::2], train[1::2], strict=False)
                ]
            ),
            16: tables([np.concatenate([fold_rows[g] for g in train])]),
        }
        if within_folds:
            del sizes[8], sizes[16]
        slopes, tuned = fit_pool_slopes(sizes, start, grid_step=grid_step)
        big, _ = tune_tables(sizes[1 if within_folds else 16], start, rounds=1, grid_step=grid_step)
        same, _ = tune_tables(sizes[4], start, rounds=1, grid_step=grid_step)
        moved = big.with_(pool_slopes=slopes)
        res = {
            "slopes": slopes,
            "sizes": {
                str(c.tuned_rows): {"f1": f1, "thresholds": dict(c.thresholds)}
                for c, f1 in tuned.values()
            },
            "carried": evaluate_pool(pools[f], big, device),
            "pool_rule": evaluate_pool(pools[f], moved, device),
            "same_size": evaluate_pool(pools[f], same, device),
            "carried_config": big.model_dump(),
            "moved_thresholds": moved.for_pool(len(pools[f])).thresholds,
        }
        out.append(res)
    return out


#: INB threshold offsets tried at each pool size when fitting a stages config's slopes.
INB_OFFSETS: tuple[float, ...] = (-0.1, 0.0, 0.1, 0.2)


def stage_slopes(
    cat: Catalogue,
    dense: dict[str, np.ndarray],
    fold_rows: list[np.ndarray],
    pools: list[Pool],
    config: FusionConfig,
    device: str = "cpu",
    grid_step: int = 2,
    show_progress: bool = False,
    merged: bool = False,
) -> dict[str, float]:
    """Pool-size slopes of a final pipeline's own thresholds (the combined one and the INB
    stages' included), fitted with its stages on. At each pool size the INB thresholds
    are shifted by each of `INB_OFFSETS`, the other thresholds tuned for each, and the best
    kept (blending in a larger pool needs a stricter INB threshold, not only a stricter
    final one). Pools: quarter and half sub-pools of each fold and the folds (`pools`);
    with `merged` (one model embedded every row) also pairs of folds and four folds."""
    labels = cat.labels
    start = config.with_(pool_slopes={})
    sizes: dict[str, list[Pool]] = {"N": pools}
    for parts in (2, 4):
        rows = [
            r for f, fr in enumerate(fold_rows) for r in sub_pools(fr, labels, parts, f, min_rows=2)
        ]
        bar = progress(rows, desc=f"stage slopes N/{parts}", unit="pool", disable=not show_progress)
        sizes[f"N/{parts}"] = [make_pool(cat, r, dense, device) for r in bar]
    if merged and len(fold_rows) >= 4:
        sizes["2N"] = [
            make_pool(cat, np.concatenate([fold_rows[a], fold_rows[a + 1]]), dense, device)
            for a in (0, 2)
        ]
        sizes["4N"] = [make_pool(cat, np.concatenate(fold_rows[:4]), dense, device)]
    offsets = INB_OFFSETS if start.stages.inb else (0.0,)
    tuned: list[FusionConfig] = []
    for name, ps in progress(
        list(sizes.items()), desc="stage slopes", unit="size", disable=not show_progress
    ):
        best: tuple[float, FusionConfig] | None = None
        for d in offsets:
            inb = tuple(min(1.0, max(-1.0, t + d)) for t in start.stages.inb)
            cand = start.with_stages(inb=inb)
            cfg, f = tune_tables(
                [p.signals(cand, device)[1] for p in ps],
                cand,
                rounds=1,
                tune_min2=False,
                grid_step=grid_step,
            )
            if best is None or f > best[0]:
                best = (f, cfg)
        assert best is not None
        tuned.append(best[1])
        if name != "N":
            for p in ps:  # free the big pools' stage caches
                p.cache.clear()
    return slopes_of(tuned)


# ---------------------------------------------------------------------------------------
# CLI


def mean_std(vals: list[float]) -> str:
    """`mean ± std` of a list (4 decimals)."""
    a = np.array(vals)
    return f"{a.mean():.4f} ± {a.std():.4f}"


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: mean and spread (std over folds) of F1/P/R/matches and of the gain over the
    previous cumulative row (per fold)."""
    rows = []
    prev: list[float] | None = None
    base: list[float] | None = None
    final: list[float] | None = None
    for r in results:
        f1 = [x["report"]["f1"] for x in r["folds"]]
        row = {
            "name": r["name"],
            "role": r["role"],
            "f1": f1,
            "precision": [x["report"]["precision"] for x in r["folds"]],
            "recall": [x["report"]["recall"] for x in r["folds"]],
            "matches": [x["report"]["mean_matches"] for x in r["folds"]],
            "kept": sum(bool(x["kept"]) for x in r["folds"]) if r["cumulative"] else None,
            "gain": None if prev is None else [a - b for a, b in zip(f1, prev, strict=True)],
            "by_group_size": {
                s: float(
                    np.mean(
                        [
                            x["report"]["by_group_size"].get(s, {"f1": np.nan})["f1"]
                            for x in r["folds"]
                        ]
                    )
                )
                for s in r["folds"][0]["report"]["by_group_size"]
            },
        }
        if r["role"] == "alternative":
            row["gain"] = None if base is None else [a - b for a, b in zip(f1, base, strict=True)]
        elif r["role"] == "final":
            row["gain"] = None
            final = f1
        elif r["role"] == "ranker":
            row["gain"] = None if final is None else [a - b for a, b in zip(f1, final, strict=True)]
        if r["role"] == "combined":
            base = f1
        if r["cumulative"] and r["role"] != "final":
            prev = [
                a if x["kept"] else b for a, b, x in zip(f1, prev or f1, r["folds"], strict=True)
            ]
        rows.append(row)
    return rows


def consensus(configs: list[FusionConfig], slopes: dict[str, float]) -> FusionConfig:
    """One config from the per-fold final ones: the most common stage settings and min-2
    rule, the median of each threshold, the mean tuned pool size, and the pool slopes."""
    from collections import Counter

    def mode(key: Callable[[FusionConfig], str]) -> FusionConfig:
        best = Counter(key(c) for c in configs).most_common(1)[0][0]
        return next(c for c in configs if key(c) == best)

    base = mode(
        lambda c: (
            c.stages.model_dump_json()
            + f"{c.min2}{c.min2_signal}{c.min2_reciprocal}{sorted(c.thresholds)}"
        )
    )
    same = [c for c in configs if sorted(c.thresholds) == sorted(base.thresholds)]
    th = {s: float(np.median([c.thresholds[s] for c in same])) for s in base.thresholds}
    floor = float(np.median([c.min2_floor for c in same]))
    rows = round(float(np.mean([c.tuned_rows or 0 for c in configs])))
    kept = {s: v for s, v in slopes.items() if s in th}
    return base.with_(thresholds=th, min2_floor=floor, tuned_rows=rows, pool_slopes=kept)


def unanimous_only(config: FusionConfig, results: list[dict[str, Any]]) -> FusionConfig:
    """`config` with every stage off that was not kept on every fold (a stage must win on
    each held-out fold to be on; the consensus alone would keep a majority's)."""
    won = {
        r["key"]
        for r in results
        if r.get("key") and r["cumulative"] and all(x["kept"] for x in r["folds"])
    }
    cfg = config
    inb = cfg.stages.inb[: 2 if "inb2" in won else 1 if "inb1" in won else 0]
    if "combined" not in won:
        th = {k: v for k, v in cfg.thresholds.items() if k != "combined"}
        slopes = {k: v for k, v in cfg.pool_slopes.items() if k != "combined"}
        cfg = cfg.with_(thresholds=th, pool_slopes=slopes).with_stages(combined_weights={})
        if tuple(cfg.stages.blend_signals) == ("combined",):
            inb = ()  # INB blends only the combined space
    cfg = cfg.with_stages(inb=inb)
    if not inb and "inb" in cfg.pool_slopes:
        cfg = cfg.with_(pool_slopes={k: v for k, v in cfg.pool_slopes.items() if k != "inb"})
    if "reciprocal" not in won:
        cfg = cfg.with_(min2_reciprocal=0)
    if "unit_rule" not in won:
        cfg = cfg.with_stages(unit_rule=False)
    return cfg


def ranker_row(
    pools: list[Pool], config: FusionConfig, device: str, show_progress: bool = False
) -> dict[str, Any]:
    """The pair re-ranker on each pool's neighbours under `config` (the final pipeline),
    trained and thresholded out of fold (`index.tuning.ranker.train_on_pools`): a result
    row of role "ranker"."""
    from index.tuning.ranker import RankPool, train_on_pools

    rank_pools = []
    for p in pools:
        assert p.features is not None, "pools made by make_pool carry their features"
        rank_pools.append(RankPool(p.features, p.signals(config, device)[0], p.titles, p.labels))
    signals = list(rank_pools[0].nb)
    _, rep = train_on_pools(rank_pools, signals, buckets=BUCKETS, show_progress=show_progress)
    folds = [
        {"report": r, "config": config.model_dump(), "train_f1": float("nan"), "kept": False}
        for r in rep["folds"]
    ]
    return {"name": "+ pair re-ranker", "role": "ranker", "cumulative": False, "folds": folds}


@dataclass
class Pipeline:
    """The ablation's outcome as a pipeline to keep (`best_pipeline`).

    Attributes:
        config: the final pipeline: stages kept on every fold (`unanimous_only`), the folds'
            consensus thresholds, pool-size slopes fitted with the stages on.
        wins: the final pipeline scores above the plain fusion on every held-out fold.
        plain: the plain fusion's per-fold F1; final: the final pipeline's.
        results: every step's per-fold results (`run_ablation`); pools: the folds' pools;
        study: the pool-size study; slopes: its mean slopes per doubling.
        seconds: time of each part ("pools", "stages", "pool_study", "stage_slopes").
    """

    config: FusionConfig
    wins: bool
    plain: list[float]
    final: list[float]
    results: list[dict[str, Any]]
    pools: list[Pool]
    study: list[dict[str, Any]]
    slopes: dict[str, float]
    seconds: dict[str, float]


def best_pipeline(
    cat: Catalogue,
    dense: dict[str, np.ndarray],
    fold_rows: list[np.ndarray],
    device: str = "cpu",
    within_folds: bool = False,
    show_progress: bool = False,
    fit_slopes: bool = True,
) -> Pipeline:
    """The ablation on the folds `fold_rows` of `cat` (dense: the rows' embeddings), and the
    pipeline it keeps; `within_folds`: the embeddings are out-of-fold ones (one model per
    fold), so no pool spans folds; `fit_slopes`: fit the kept pipeline's own pool slopes
    (`stage_slopes`; else the plain study's slopes)."""
    import time

    show = show_progress
    t = [time.perf_counter()]

    def lap() -> float:
        t.append(time.perf_counter())
        return t[-1] - t[-2]

    pools = [
        make_pool(cat, r, dense, device)
        for r in progress(fold_rows, desc="pools", unit="pool", disable=not show)
    ]
    start = FusionConfig().with_(
        thresholds={k: v for k, v in FusionConfig().thresholds.items() if k in pools[0].nb}
    )
    secs = {"pools": lap()}
    results = run_ablation(pools, start, default_steps(list(dense)), device, show_progress=show)
    secs["stages"] = lap()
    study = pool_study(
        cat, dense, fold_rows, pools, start, device, show_progress=show, within_folds=within_folds
    )
    secs["pool_study"] = lap()
    slopes = {
        s: float(np.mean([x["slopes"].get(s, 0.0) for x in study])) for s in study[0]["slopes"]
    }
    final_row = next(r for r in results if r["role"] == "final")
    final = [FusionConfig.model_validate(x["config"]) for x in final_row["folds"]]
    best = unanimous_only(consensus(final, slopes), results)
    if fit_slopes:  # the stages' thresholds (combined, INB) need slopes fitted with them on
        merged = not within_folds
        fitted = stage_slopes(
            cat, dense, fold_rows, pools, best, device, show_progress=show, merged=merged
        )
        best = best.with_(pool_slopes=fitted)
    secs["stage_slopes"] = lap()
    fused = results[1]  # the plain fusion (`default_steps`' second row)
    plain_f1 = [x["report"]["f1"] for x in fused["folds"]]
    final_f1 = [x["report"]["f1"] for x in final_row["folds"]]
    wins = wins_every_fold(final_f1, plain_f1)
    return Pipeline(best, wins, plain_f1, final_f1, results, pools, study, slopes, secs)


def wins_every_fold(final: list[float], plain: list[float]) -> bool:
    """Whether the pipeline's F1 is above the plain fusion's on every fold (a tie loses)."""
    return all(a > b for a, b in zip(final, plain, strict=True))
