"""Fusion configs on one pool of a whole labelled CSV, from saved embeddings.

Every row of CSV is one pool (TF-IDF fitted on it, its phash, the dense embeddings of an
`oof/` folder: text.npy / image.npy in CSV row order); each config is scored on it (mean
row F1, precision, recall, matches per row) after its pool-size rule moved it to the
pool's size. Used to check that a config tuned on smaller pools carries to a larger one.
A `:no-rule` suffix scores a config without its pool slopes.

    python benchmarks/pool_configs.py ../shared/data/shopee_dev.csv --oof out/zeroshot \\
        out/poolx/abl_zs_fusion.json out/poolx/abl_zs_fusion.json:no-rule
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from index.data.listings import read_catalogue
from index.data.oof import read_oof
from index.matching.fusion import FusionConfig
from index.tuning.ablation import evaluate_pool, make_pool


def load_config(spec: str) -> FusionConfig:
    """A fusion.json path, optionally with `:no-rule` (its pool slopes dropped)."""
    path, _, mod = spec.partition(":")
    if mod not in ("", "no-rule"):
        raise SystemExit(f"{spec}: unknown suffix {mod!r} (only :no-rule)")
    cfg = FusionConfig.model_validate_json(Path(path).read_text(encoding="utf-8"))
    return cfg.with_(pool_slopes={}) if mod else cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="labelled CSV (label_group column)")
    ap.add_argument("configs", nargs="+", help="fusion.json files (PATH or PATH:no-rule)")
    ap.add_argument("--oof", type=Path, required=True, help="folder with oof/meta.json")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args()

    configs = {spec: load_config(spec) for spec in args.configs}
    cat = read_catalogue(args.input)
    dense, _ = read_oof(args.oof, cat.posting_id)
    t0 = time.perf_counter()
    pool = make_pool(cat, np.arange(len(cat)), dense, args.device)
    print(f"{args.input}: one pool of {len(pool)} rows ({time.perf_counter() - t0:.0f} s)")
    results = []
    for spec, cfg in configs.items():
        t = time.perf_counter()
        rep = evaluate_pool(pool, cfg, args.device)
        moved = cfg.for_pool(len(pool))
        row = {
            "config": spec,
            "f1": rep["f1"],
            "precision": rep["precision"],
            "recall": rep["recall"],
            "matches": rep["mean_matches"],
            "thresholds": moved.thresholds,
            "inb": list(moved.stages.inb),
            "seconds": time.perf_counter() - t,
        }
        results.append(row)
        inb = ", ".join(f"{t:.3f}" for t in moved.stages.inb)
        print(
            f"{spec}: F1 {row['f1']:.4f}  P {row['precision']:.3f}  R {row['recall']:.3f}  "
            f"matches/row {row['matches']:.2f}  thresholds "
            + ", ".join(f"{s} {v:.3f}" for s, v in moved.thresholds.items())
            + (f"  INB {inb}" if inb else "")
            + f"  ({row['seconds']:.0f} s)",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")


if __name__ == "__main__":
    main()
