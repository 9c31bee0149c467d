"""The pair re-ranker carried to held-out pools of other sizes.

The label groups of CSV are split at random (group-disjoint, `--seed`) into a training part
(`--train-share` of the groups) and a held-out part. The ranker is trained on the training
part as `pricematch train ranker --pool whole` trains it (one pool, its rows decided out of
fold, the pool-size rule fitted); then the held-out rows are matched as one pool with the
model's fusion (its stages included) and with the ranker (thresholds moved by the rule, and
without the rule), whatever `POOL_REACH` would allow, each scored by mean row F1. Several
shares in one run give several size ratios (held-out rows / training rows):

    python benchmarks/ranker_carry.py ../shared/data/shopee_dev.csv --model DIR \\
        --train-share 0.2,0.5,0.8 --out carry.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import Catalogue, read_catalogue
from index.matching.selfmatch import self_match
from index.store.model import Model, load_model
from index.tuning.metrics import f1_report
from index.tuning.ranker import group_pools, ranker_signals, sub_pool_maker, train_grouped


def split_groups(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): `share` of the label groups (at least one, at most
    all but one) drawn at random, the rest held out."""
    groups = np.unique(labels)
    rng = np.random.default_rng(seed)
    take = min(len(groups) - 1, max(1, round(share * len(groups))))
    chosen = rng.choice(groups, size=take, replace=False)
    inside = np.isin(labels, chosen)
    return np.flatnonzero(inside), np.flatnonzero(~inside)


def carry(
    cat: Catalogue, model: Model, share: float, folds: int, seed: int, device: str
) -> dict[str, Any]:
    """Train on `share` of the groups, score fusion and ranker on the rest (see the doc)."""
    train_rows, held_rows = split_groups(cat.labels, share, seed)
    train, held = cat.subset(train_rows), cat.subset(held_rows)
    t0 = time.perf_counter()
    pools, fold_of = group_pools(
        train, model.encoders, model.fusion, folds, device, pooling="whole"
    )
    signals = ranker_signals(pools, model.fusion)
    ranker, report = train_grouped(
        pools, signals, fold_of, sub_pool=sub_pool_maker(model.fusion, device)
    )
    trained = time.perf_counter() - t0
    r = self_match(held, model.fusion, model.encoders, device=device)  # type: ignore[arg-type]
    labels = held.labels
    flat = replace(ranker, config=replace(ranker.config, pool_slope=0.0))
    rows: dict[str, Any] = {"fusion": f1_report(r.I, labels)}
    for name, rk in (("ranker", ranker), ("ranker, no pool rule", flat)):
        I, _ = rk.match(r.features, r.neighbours, held.title)
        rows[name] = f1_report(I, labels)
    moved = ranker.config.for_pool(len(held))
    return {
        "share": share,
        "train_rows": len(train),
        "held_rows": len(held),
        "ratio": len(held) / len(train),
        "signals": signals,
        "train_oof_f1": report["whole_f1"],
        "threshold": [ranker.config.threshold, ranker.config.single_threshold],
        "slope_per_doubling": ranker.config.pool_slope,
        "moved_threshold": [moved.threshold, moved.single_threshold],
        "train_seconds": trained,
        "held_out": {
            k: {m: v[m] for m in ("f1", "precision", "recall", "mean_matches")}
            for k, v in rows.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="labelled CSV (label_group column)")
    ap.add_argument("--model", type=Path, required=True, help="model folder (its fusion.json)")
    ap.add_argument("--train-share", default="0.2,0.5,0.8", help="comma-separated shares")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)

    cat = read_catalogue(args.input)
    if cat.label_group is None:
        raise SystemExit(f"{args.input}: needs a label_group column")
    model = load_model(args.model, device=args.device)
    results = []
    print(
        f"{'share':>5} {'train':>6} {'held':>6} {'ratio':>5}  "
        f"{'fusion':>7} {'ranker':>7} {'no rule':>7}  thresholds (moved)"
    )
    for share in (float(s) for s in args.train_share.split(",")):
        res = carry(cat, model, share, args.folds, args.seed, args.device)
        results.append(res)
        h = res["held_out"]
        print(
            f"{share:5.2f} {res['train_rows']:6d} {res['held_rows']:6d} {res['ratio']:5.2f}  "
            f"{h['fusion']['f1']:7.4f} {h['ranker']['f1']:7.4f} "
            f"{h['ranker, no pool rule']['f1']:7.4f}  "
            f"{res['threshold'][0]:.2f} -> {res['moved_threshold'][0]:.2f} "
            f"({res['slope_per_doubling']:+.3f}/doubling; trained in {res['train_seconds']:.0f}s)",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
