"""The cheap signals' searches and the text encoders, each pair of paths run in turn.

On the titles and phashes of CSV, in one process, `--rounds` rounds of A B A B:

- TF-IDF self-neighbours (k = 51): the sparse top-k join (`sparse_knn(join=True)`,
  sparse_dot_topn) against the dense similarity chunks (`join=False`); the scores must agree.
- phash self-neighbours (k = 51): the exact-hash buckets (`hamming_self_knn`, one thread)
  against FAISS binary flat over every row with its default OpenMP threads (`hamming_knn`);
  the similarities must agree on every row.
- with `--encoders NAME=DIR,...`: titles per second of each text encoder folder on the first
  `--titles` titles, run in turn within each round (`training.compress.encoding_speeds`).

Wall and CPU seconds (this process, all threads) per run, the best of the rounds:

    python benchmarks/cheap_signals.py ../shared/data/shopee_dev.csv --rounds 2 \\
        --encoders fp32=models/default/text,int8=out/int8 --out cheap.json
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
from index.features.embed import Encoders, embed
from index.matching.fusion import FusionConfig
from index.search.knn import hamming_knn, hamming_self_knn, sparse_knn

K = 51


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn's result, its wall seconds and its CPU seconds (every thread of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def in_turn(
    paths: dict[str, Callable[[], Any]], rounds: int
) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Each path run once per round, in the given order; (last results, times per path)."""
    results: dict[str, Any] = {}
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            results[name], wall, cpu = timed(fn)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    return results, times


def agreement(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> dict:
    """How two (D, I) results (the same k, scores descending per row) differ: the largest
    score difference (finite entries), whether the empty slots coincide, the share of rows
    whose set of neighbour ids differs (a cut through tied scores at the k-th place may
    keep other ids), and of rows whose ids scoring above their k-th score differ (never
    legitimate)."""
    (Da, Ia), (Db, Ib) = a, b
    fa, fb = np.isfinite(Da) & (Ia >= 0), np.isfinite(Db) & (Ib >= 0)
    both = fa & fb
    diff = float(np.abs(Da[both] - Db[both]).max()) if both.any() else 0.0
    # the lowest kept score of each row (its k-th, or its last kept one)
    kth = np.where(fa, Da, np.inf).min(axis=1, keepdims=True)

    def ids(I: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return np.sort(np.where(keep, I, -1), axis=1)

    return {
        "max_score_diff": diff,
        "same_empty_slots": bool(np.array_equal(fa, fb)),
        "rows_with_other_ids": float(np.mean((ids(Ia, fa) != ids(Ib, fb)).any(axis=1))),
        "rows_differing_above_kth": float(
            np.mean((ids(Ia, fa & (Da > kth)) != ids(Ib, fb & (Db > kth))).any(axis=1))
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="CSV with title and image_phash")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--encoders", help="NAME=DIR,... text encoder folders to time in turn")
    ap.add_argument("--titles", type=int, default=2000, help="titles the encoders encode")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)

    cat = read_catalogue(args.input)
    feats = embed(cat, Encoders(), tfidf_config=FusionConfig().tfidf)
    X, codes, valid = feats.X, feats.phash, feats.phash_valid
    distinct = len(np.unique(codes[valid].view(np.uint64)))
    print(
        f"{args.input}: {len(cat)} rows; TF-IDF {X.shape[0]} x {X.shape[1]}, {X.nnz} "
        f"non-zeros; {int(valid.sum())} phashes, {distinct} distinct"
    )
    out: dict[str, Any] = {"rows": len(cat), "distinct_phashes": distinct, "rounds": args.rounds}
    suites = {
        "tfidf": {
            "sparse top-k join": lambda: sparse_knn(X, X, K, join=True),
            "dense chunks": lambda: sparse_knn(X, X, K, join=False),
        },
        "phash": {
            "exact-hash buckets": lambda: hamming_self_knn(codes, valid, K),
            "FAISS over every row": lambda: hamming_knn(codes, valid, codes, valid, K),
        },
    }
    print(f"{'search':<8} {'path':<22} {'wall s (each round)':>24} {'CPU s (each round)':>24}")
    for suite, paths in suites.items():
        res, times = in_turn(paths, args.rounds)
        a, b = (res[n] for n in paths)
        out[suite] = {"times": times, "agreement": agreement(a, b)}
        for name, t in times.items():
            walls = " / ".join(f"{x:.2f}" for x in t["wall"])
            cpus = " / ".join(f"{x:.2f}" for x in t["cpu"])
            print(f"{suite:<8} {name:<22} {walls:>24} {cpus:>24}")
        print(f"{'':<8} agreement: {out[suite]['agreement']}")
    if args.encoders:
        from index.features.encoders import load_encoder
        from training.compress import encoding_speeds

        encs = {}
        for spec in args.encoders.split(","):
            name, _, folder = spec.partition("=")
            encs[name] = load_encoder(Path(folder), device="cpu")
        titles = list(cat.title[: args.titles])
        speeds = encoding_speeds(encs, titles, rounds=args.rounds)
        first = next(iter(speeds.values()))
        out["encoders"] = {n: {"titles_per_s": s, "vs_first": s / first} for n, s in speeds.items()}
        for name, s in speeds.items():
            print(f"encoder  {name:<22} {s:10.0f} titles/s  ({s / first:.2f}x the first)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
