"""The pair re-ranker's out-of-fold F1 and candidate recall per candidate setting, on a
group-labelled CSV matched as one pool (as `pricematch train` scores its ranker).

The CSV is matched once with a model's encoders and fusion settings (`group_pools`,
"whole", the same folds as `train`); each setting then trains `train_on_whole` out of fold
(no pool-size rule) and reports the mean and per-fold row F1, each fold's candidate recall
(its true pairs among the candidates), the candidate pairs and the CPU it took. A setting
is `SOURCES:TOPK:FLOORS[:hops][:graph][:ghops][:cross]`, e.g. `base:20:floors`,
`char:50:nofloors:hops`: "base" the model's signals, "char" those and the character 3-5
n-gram source (`TfidfConfig.char_source`, its own neighbour list); "hops" two hops at
decision time, "graph" the ranker's graph pass (`RankerConfig.graph_pass`), "ghops" its
hop pairs (`RankerConfig.graph_hops`, with "graph"; "decided recall" then counts them
beside the candidates' recall), "cross" the
cross-encoder cascade after it (`train_on_whole(cross=...)`, `training.cross.CrossFit`,
at most `--cross-pairs` pairs per fit). "match CPU-s / 1k" is the final ranker deciding
the whole pool (its pair features, passes and cascade; not the pool's neighbours).

    python benchmarks/ranker_sources.py ../shared/data/shopee_dev.csv --model /tmp/dev/tp \
        --settings base:20:floors,char:50:nofloors --out sources.json
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

from index.data.listings import read_catalogue
from index.matching.ranker import RankerConfig
from index.store.model import load_model
from index.tuning.ranker import group_pools, ranker_signals, train_on_whole

#: The character n-grams of the "char" source.
CHAR = (3, 5)


def parse_setting(s: str) -> tuple[str, RankerConfig]:
    """`SOURCES:TOPK:FLOORS[:hops][:graph][:cross]` -> (sources, the ranker config)."""
    parts = s.split(":")
    extra = set(parts[3:])
    if len(parts) < 3 or parts[0] not in ("base", "char") or parts[2] not in (
        "floors", "nofloors") or not extra <= {"hops", "graph", "ghops", "cross"} or (
        "ghops" in extra and "graph" not in extra):
        raise SystemExit(f"bad setting {s!r}: SOURCES(base|char):TOPK:(floors|nofloors)"
                         "[:hops][:graph][:ghops (with graph)][:cross]")
    cfg = RankerConfig(top_k=int(parts[1]), two_hop="hops" in extra,
                       graph_pass="graph" in extra, graph_hops="ghops" in extra)
    if parts[2] == "nofloors":
        cfg = replace(cfg, floors={})
    return parts[0], cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="labelled CSV (label_group column)")
    ap.add_argument("--model", type=Path, required=True, help="a model folder (its encoders)")
    ap.add_argument("--settings", default="base:20:floors,char:50:nofloors")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cross-pairs", type=int, default=2000,
                    help="the most pairs one cross-encoder fit trains on")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings.split(",")]

    cat = read_catalogue(args.input)
    model = load_model(args.model, device="cpu")
    c0 = time.process_time()
    fusion = model.fusion.with_(tfidf={**model.fusion.tfidf.model_dump(), "char_source": CHAR})
    (pool,), fold_of = group_pools(cat, model.encoders, fusion, args.folds, "cpu",
                                   pooling="whole")
    assert fold_of is not None
    res: dict[str, Any] = {"rows": len(cat), "pool_cpu_s": round(time.process_time() - c0, 1),
                           "settings": []}
    print(f"pool: {res['pool_cpu_s']} CPU-s, signals {list(pool.nb)}", flush=True)
    every = ranker_signals([pool], fusion)
    for text, (sources, cfg) in zip(args.settings.split(","), settings, strict=True):
        signals = every if sources == "char" else [s for s in every if s != "char"]
        c0 = time.process_time()
        cross: Any = None
        if text.endswith(":cross") or ":cross:" in text:
            from training.config import CrossConfig
            from training.cross import CrossFit

            cc = CrossConfig(max_pairs=args.cross_pairs)

            def cross(a: list[str], b: list[str], y: np.ndarray, cc: Any = cc) -> Any:
                return CrossFit(a, b, y, cc, "cpu")

        with tempfile.TemporaryDirectory() as tmp:
            ranker, rep = train_on_whole(pool, fold_of, signals, cfg, cross=cross,
                                         cross_folder=Path(tmp) / "cross")
            cpu = time.process_time() - c0
            c1 = time.process_time()
            ranker.match(pool.features, pool.nb, pool.titles)
            match_cpu = time.process_time() - c1
        row = {
            "setting": text,
            "signals": signals,
            "oof_f1": round(float(np.mean(rep["oof_f1"])), 4),
            "per_fold": [round(f, 4) for f in rep["oof_f1"]],
            "candidate_recall": [round(f["candidate_recall"], 4) for f in rep["folds"]],
            **({"decided_recall": [round(f["decided_recall"], 4) for f in rep["folds"]]}
               if cfg.graph_hops else {}),
            "candidate_pairs": rep["pairs"],
            "cpu_s": round(cpu, 1),
            "match_cpu_s_per_1k": round(1000 * match_cpu / len(cat), 3),
            **({"cascade": rep["cascade"]} if "cascade" in rep else {}),
        }
        res["settings"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
