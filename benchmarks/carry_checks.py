"""The carry check of `pricematch train`, both ways and on every fold, for ranker settings.

The CSV is matched once as one pool with a model's encoders and fusion settings
(`group_pools`, "whole", the folds `train` uses). For each fold f and setting, a ranker is
trained out of fold with the pool-size rule (`train_on_whole` with `sub_pool`, inner folds
as `carry_f1` makes them) on "up": fold f's rows matched as a pool of their own, then
decides the other folds' rows as one pool ((k-1)x its size: what `train`'s carry check
does on its first two folds); "down": the other folds' rows, then decides fold f's rows
(1/(k-1)x). Each decision's mean row F1 is printed; with `--sweep` also the best F1 over
the decision thresholds on the decided pool itself (an oracle no user has: what the
pool-size rule could reach at best), for a graph pass's hop pairs a separate hop threshold
too (a hop pair under it is never taken; one at it or above is decided as a candidate).
Run it at two commits to compare code, e.g. density read at fixed ranks (before
5cf905b) and at the pool's scale.

    python benchmarks/carry_checks.py ../shared/data/shopee_dev.csv --model /tmp/dev/tp \\
        --settings graph --direction up --folds 0,1,2,3,4 --out carry_up.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import read_catalogue
from index.matching.ranker import RankerConfig, candidate_pairs, rank_matches
from index.store.model import load_model
from index.tuning.grids import group_folds
from index.tuning.metrics import mean_f1
from index.tuning.ranker import group_pools, ranker_signals, sub_pool_maker, train_on_whole

#: `--settings` names: the ranker's configs.
SETTINGS = {
    "ranker": RankerConfig(),
    "graph": RankerConfig(graph_pass=True),
    "graph:ghops": RankerConfig(graph_pass=True, graph_hops=True),
    "graph:hops": RankerConfig(graph_pass=True, two_hop=True),
    "graph:hops2": RankerConfig(graph_pass=True, two_hop=True, hop_rounds=2),
    "graph:wide": RankerConfig(graph_pass=True, top_k=50, floors={}),
}
#: The oracle's threshold grid (`--sweep`).
GRID = np.round(np.arange(0.30, 0.96, 0.05), 2)


def sweep(pairs: np.ndarray, p: np.ndarray, m: int, n: int, labels: np.ndarray,
          cfg: RankerConfig) -> dict[str, Any]:
    """The best mean row F1 over candidate thresholds (and hop thresholds for the pairs
    past the first `m`, the hop pairs) on the decided pool itself."""
    best: dict[str, Any] = {"f1": -1.0}
    hop_grid = GRID if len(pairs) > m else np.array([np.nan])
    for tc in GRID:
        for th in hop_grid:
            q = p.copy()
            if len(pairs) > m:  # a hop pair under th is left (at-least-one-match too)
                q[m:] = np.where(p[m:] >= th, p[m:], -1.0)
            c = replace(cfg, threshold=float(tc), single_threshold=float(min(tc, 0.6)))
            I, _ = rank_matches(pairs, q, n, c)
            f1 = mean_f1(I, labels)
            if f1 > best["f1"]:
                best = {"f1": round(f1, 4), "threshold": float(tc),
                        **({"hop_threshold": float(th)} if len(pairs) > m else {})}
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="labelled CSV (label_group column)")
    ap.add_argument("--model", type=Path, required=True, help="a model folder (its encoders)")
    ap.add_argument("--settings", default="graph", help=f"comma-separated: {', '.join(SETTINGS)}")
    ap.add_argument("--direction", choices=("up", "down"), default="up")
    ap.add_argument("--folds", default="0,1", help="the folds f to check (comma-separated)")
    ap.add_argument("--k", type=int, default=5, help="folds of the pool")
    ap.add_argument("--sweep", action="store_true", help="the oracle thresholds too")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    names = args.settings.split(",")
    bad = [s for s in names if s not in SETTINGS]
    if bad:
        raise SystemExit(f"unknown setting(s) {bad}; known: {', '.join(SETTINGS)}")
    cat = read_catalogue(args.input)
    model = load_model(args.model, device="cpu")
    c0 = time.process_time()
    (pool,), fold_of = group_pools(cat, model.encoders, model.fusion, args.k, "cpu",
                                   pooling="whole")
    assert fold_of is not None
    sub = sub_pool_maker(model.fusion, "cpu")
    signals = [s for s in ranker_signals([pool], model.fusion) if s != "char"]
    print(f"pool: {time.process_time() - c0:.1f} CPU-s, signals {signals}", flush=True)
    res: dict[str, Any] = {"rows": len(cat), "direction": args.direction, "signals": signals,
                           "checks": []}
    for f in (int(x) for x in args.folds.split(",")):
        mine = fold_of == f
        train_rows = np.flatnonzero(mine if args.direction == "up" else ~mine)
        sample = sub(pool, train_rows)
        rest = sub(pool, np.flatnonzero(~mine if args.direction == "up" else mine))
        assert sample.labels is not None and rest.labels is not None
        inner = np.full(len(sample.labels), -1, np.int64)
        for g, (_, rows) in enumerate(group_folds(sample.labels, args.k, seed=f)):
            inner[rows] = g
        for name in names:
            c1 = time.process_time()
            r, _ = train_on_whole(sample, inner, signals, SETTINGS[name], sub_pool=sub)
            I, _ = r.match(rest.features, rest.nb, rest.titles)
            row: dict[str, Any] = {
                "fold": f, "setting": name, "train_rows": len(sample.labels),
                "decided_rows": len(rest.labels), "f1": round(mean_f1(I, rest.labels), 4),
                "threshold": round(r.config.for_pool(len(rest.labels)).threshold, 3),
                "slope_per_doubling": round(r.config.pool_slope, 4),
            }
            if args.sweep:
                use = {s: rest.nb[s] for s in signals}
                cand = candidate_pairs(use, len(rest.labels), r.config)
                pairs, p = r.score_pool(cand, rest.features, use, rest.titles)
                row["oracle"] = sweep(pairs, p, len(cand), len(rest.labels), rest.labels,
                                      r.config.for_pool(len(rest.labels)))
                row["hop_pairs"] = len(pairs) - len(cand)
            row["cpu_s"] = round(time.process_time() - c1, 1)
            res["checks"].append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
