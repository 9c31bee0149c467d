"""The ranker's graph pass with other graph features: out-of-fold F1 and the carry check
(`index.tuning.ranker.carry_f1`, as `pricematch train` runs it) per feature set, on a
group-labelled CSV matched as one pool with a model's encoders and fusion.

Each feature set replaces `graph_features` for its run (same pool, folds, first pass and
boosters); "sides" is the code's (`GRAPH_FEATURES`), "shares4" its first four columns (the
code before it). Every column is a share in [0, 1], so that it means the same in a pool of
any size.

    python benchmarks/graph_features.py ../shared/data/shopee_dev.csv --model /tmp/dev/m11 \
        --sets shares4,sides,ranks --out graph_sets.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import index.matching.ranker as rk
import index.tuning.ranker as tr
from index.data.listings import read_catalogue
from index.matching.ranker import RankerConfig
from index.store.model import load_model
from index.tuning.ranker import (
    carry_f1,
    group_pools,
    ranker_signals,
    sub_pool_maker,
    train_on_whole,
)

CODE = rk.graph_features


def _ranks(pairs: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """(m, 2): 1 / (1 + the pair's rank by p in each side's row, 0 = best), min and max."""
    a, b = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    pp = np.asarray(p, np.float64)
    # one sort of both directions: by row, best first, ties by partner
    rows, part, pr = np.r_[a, b], np.r_[b, a], np.r_[pp, pp]
    order = np.lexsort((part, -pr, rows))
    start = np.searchsorted(rows[order], np.arange(n))
    pos = np.empty(len(rows), np.int64)
    pos[order] = np.arange(len(rows)) - start[rows[order]]
    m = len(a)
    r_ab, r_ba = pos[:m].astype(np.float64), pos[m:].astype(np.float64)
    r1 = 1.0 / (1.0 + np.minimum(r_ab, r_ba))
    r2 = 1.0 / (1.0 + np.maximum(r_ab, r_ba))
    return np.stack([r1, r2], axis=1).astype(np.float32)


def shares4(pairs: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """p and the three shares over the smaller side (the code before "sides")."""
    return CODE(pairs, p, n)[:, :4]


def sides(pairs: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """shares4, and the same shares over the larger side: the code (`GRAPH_FEATURES`)."""
    return CODE(pairs, p, n)


def ranks(pairs: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """shares4, and the pair's rank in each side's row."""
    return np.hstack([shares4(pairs, p, n), _ranks(pairs, p, n)])


def both(pairs: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """sides and ranks together."""
    return np.hstack([sides(pairs, p, n), _ranks(pairs, p, n)])


SETS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "shares4": shares4, "sides": sides, "ranks": ranks, "both": both,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="labelled CSV (label_group column)")
    ap.add_argument("--model", type=Path, required=True, help="a model folder (encoders, fusion)")
    ap.add_argument("--sets", default="shares4,sides,ranks,both")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    names = args.sets.split(",")
    if bad := [s for s in names if s not in SETS]:
        raise SystemExit(f"unknown feature sets {bad}; known: {sorted(SETS)}")
    cat = read_catalogue(args.input)
    model = load_model(args.model, device="cpu")
    (pool,), fold_of = group_pools(cat, model.encoders, model.fusion, args.folds, "cpu",
                                   pooling="whole")
    assert fold_of is not None
    signals = ranker_signals([pool], model.fusion)
    sub = sub_pool_maker(model.fusion, "cpu")
    cfg = RankerConfig(graph_pass=True)
    res: dict[str, Any] = {"rows": len(cat), "signals": signals, "sets": []}
    for name in names:
        fn = SETS[name]
        rk.graph_features = tr.graph_features = fn  # type: ignore[assignment]
        c0 = time.process_time()
        _, rep = train_on_whole(pool, fold_of, signals, cfg, sub_pool=sub)
        carry = carry_f1(pool, fold_of, signals, cfg, sub)
        row = {
            "set": name,
            "oof_f1": round(float(np.mean(rep["oof_f1"])), 4),
            "fold_f1": [round(float(v), 4) for v in rep["oof_f1"]],
            "carry_f1": [round(float(v), 4) for v in carry],
            "cpu_s": round(time.process_time() - c0, 1),
        }
        res["sets"].append(row)
        print(json.dumps(row), flush=True)
    rk.graph_features = tr.graph_features = CODE
    if args.out:
        args.out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
