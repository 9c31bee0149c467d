"""CPU of the ranker's hot loops on one pool: pair features, the decision, threshold tuning.

The CSV is matched as one pool (TF-IDF + phash, the default fusion), its candidate pairs
built, then each step timed (process CPU seconds, best of `--rounds`): the features of
every pair (the title features are most of it), one `rank_matches` decision of every row, and the
threshold tuning of `train ranker` on random probabilities. Run it once per checkout to
compare code versions in one sitting (e.g. with PYTHONPATH at an older worktree):

    python benchmarks/ranker_speed.py ../shared/data/shopee_dev.csv --out speed.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import read_catalogue
from index.features.embed import Encoders
from index.matching.fusion import FusionConfig
from index.matching.ranker import RankerConfig, candidate_pairs, pair_features, rank_matches
from index.tuning.ranker import catalogue_pool, tune_group_thresholds


def cpu(fn: Callable[[], Any], rounds: int) -> float:
    """The least process CPU seconds of `rounds` calls of `fn`."""
    best = float("inf")
    for _ in range(rounds):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="labelled CSV (label_group column)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    cat = read_catalogue(args.input)
    pool = catalogue_pool(cat, Encoders(), FusionConfig(), "cpu", cat.labels)
    signals = ["tfidf", "phash"]
    use = {s: pool.nb[s] for s in signals}
    cfg = RankerConfig()
    pairs = candidate_pairs(use, len(cat), cfg)
    p = np.random.default_rng(0).random(len(pairs)).astype(np.float32)
    res = {
        "rows": len(cat),
        "pairs": len(pairs),
        "pair_features_cpu_s": cpu(
            lambda: pair_features(pairs, pool.features, use, pool.titles, signals), args.rounds
        ),
        "rank_matches_cpu_s": cpu(lambda: rank_matches(pairs, p, len(cat), cfg), args.rounds),
        "tune_thresholds_cpu_s": cpu(
            lambda: tune_group_thresholds([(pairs, p, cat.labels)], cfg), 1
        ),
    }
    for k, v in res.items():
        print(f"{k:<24} {v:.2f}" if isinstance(v, float) else f"{k:<24} {v}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
