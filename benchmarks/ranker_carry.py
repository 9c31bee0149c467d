"""The pair re-ranker `pricematch train` writes, carried to held-out pools of other sizes.

A group-disjoint sample of about `--train-rows` rows of CSV (label groups drawn at random,
`--seed`) is what a user labelled; the rest are held out. On the sample, the fusion and the
ranker are trained exactly as `pricematch train` trains its candidates (one pool, its rows
in group-disjoint folds; `training.auto.Search`, so with the same options). Then held-out
pools of `--ratios` times the training rows (random group-disjoint subsets of the held-out
rows) are matched as one pool each and scored by mean row F1: the tuned fusion, the ranker
with its pool-size rule, and the ranker without it.

    python benchmarks/ranker_carry.py ../shared/data/shopee_dev.csv --base models/default \\
        --train-rows 5000 --ratios 0.25,1,2,4 --out carry.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import Catalogue, read_catalogue
from index.features.embed import Encoders
from index.matching.selfmatch import self_match
from index.tuning.metrics import f1_report
from training.auto import AutoConfig, Pipeline, Search, load_base


def group_sample(labels: np.ndarray, rows: int, seed: int, among: np.ndarray | None = None
                 ) -> np.ndarray:
    """Sorted rows of whole label groups (of the rows `among`, default all) drawn in a
    random order until they are at least `rows` (all of them if fewer)."""
    pool = np.arange(len(labels)) if among is None else among
    groups, counts = np.unique(labels[pool], return_counts=True)
    order = np.random.default_rng(seed).permutation(len(groups))
    enough = int(np.searchsorted(np.cumsum(counts[order]), rows)) + 1
    return np.sort(pool[np.isin(labels[pool], groups[order[:enough]])])


def carry(
    cat: Catalogue,
    base: Encoders,
    train_rows: int,
    ratios: list[float],
    pipeline: Pipeline,
    folds: int,
    seed: int,
) -> dict[str, Any]:
    """Train on a sample of `train_rows`, score fusion and ranker on held-out pools."""
    labels = cat.labels
    train_idx = group_sample(labels, train_rows, seed)
    held_idx = np.setdiff1d(np.arange(len(cat)), train_idx)
    train = cat.subset(train_idx)
    t0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        search = Search(train, base, Path(tmp), AutoConfig(folds=folds, seed=seed))
        fused = search.trial("fusion", "fusion", replace(pipeline, ranker=False))
        ranked = search.trial("ranker", "ranker", replace(pipeline, ranker=True))
        enc = search.encoders(pipeline)  # while its work folder (a static encoder) exists
    trained = time.process_time() - t0
    assert fused.config is not None and ranked.config is not None and ranked.ranker is not None
    ranker = ranked.ranker
    flat = replace(ranker, config=replace(ranker.config, pool_slope=0.0))
    out: dict[str, Any] = {
        "train_rows": len(train),
        "pipeline": dict(vars(pipeline)),
        "train_oof_f1": {"fusion": fused.f1, "ranker": ranked.f1},
        "threshold": [ranker.config.threshold, ranker.config.single_threshold],
        "slope_per_doubling": ranker.config.pool_slope,
        "train_cpu_s": trained,
        "pools": [],
    }
    for k, ratio in enumerate(ratios):
        rows = group_sample(labels, int(ratio * len(train)), seed + 1 + k, among=held_idx)
        held = cat.subset(rows)
        c0 = time.process_time()
        r = self_match(held, fused.config, enc, device="cpu")
        fusion_cpu = time.process_time() - c0
        r2 = self_match(held, ranked.config, enc, device="cpu")
        c1 = time.process_time()
        I, _ = ranker.match(r2.features, r2.neighbours, held.title)
        ranker_cpu = time.process_time() - c1
        I0, _ = flat.match(r2.features, r2.neighbours, held.title)
        moved = ranker.config.for_pool(len(held))
        out["pools"].append({
            "ratio": ratio,
            "rows": len(held),
            "fusion": f1_report(r.I, held.labels)["f1"],
            "ranker": f1_report(I, held.labels)["f1"],
            "ranker_no_rule": f1_report(I0, held.labels)["f1"],
            "moved_threshold": [moved.threshold, moved.single_threshold],
            "fusion_cpu_s": fusion_cpu,
            "ranker_decision_cpu_s": ranker_cpu,
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="labelled CSV (label_group column)")
    ap.add_argument("--base", type=Path, required=True, help="encoders folder (text/, image/)")
    ap.add_argument("--train-rows", type=int, default=5000)
    ap.add_argument("--ratios", default="0.25,1,2,4", help="held-out pool sizes / train rows")
    ap.add_argument("--text", choices=["none", "static", "base"], default="none",
                    help="the text signal of the pipeline (as `train` names its candidates)")
    ap.add_argument("--char-ngrams", action="store_true")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)

    cat = read_catalogue(args.input)
    if cat.label_group is None:
        raise SystemExit(f"{args.input}: needs a label_group column")
    base = load_base(args.base, Path(tempfile.gettempdir()))
    pipe = Pipeline(char_ngrams=args.char_ngrams, text=None if args.text == "none" else args.text)
    ratios = [float(r) for r in args.ratios.split(",")]
    res = carry(cat, base, args.train_rows, ratios, pipe, args.folds, args.seed)
    print(
        f"trained on {res['train_rows']} rows ({res['train_cpu_s']:.0f} CPU-s): OOF fusion "
        f"{res['train_oof_f1']['fusion']:.4f}, ranker {res['train_oof_f1']['ranker']:.4f}; "
        f"threshold {res['threshold'][0]:.2f}, {res['slope_per_doubling']:+.3f}/doubling"
    )
    print(f"{'ratio':>5} {'rows':>6}  {'fusion':>7} {'ranker':>7} {'no rule':>7}  moved")
    for p in res["pools"]:
        print(
            f"{p['ratio']:5.2f} {p['rows']:6d}  {p['fusion']:7.4f} {p['ranker']:7.4f} "
            f"{p['ranker_no_rule']:7.4f}  {p['moved_threshold'][0]:.2f}",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
