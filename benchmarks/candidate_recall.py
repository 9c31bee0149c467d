"""Candidate recall of the pair re-ranker on a labelled CSV: what share of the true pairs
(same label_group) are candidates, per group size, and why the others are not.

The CSV is matched as one pool with a model's encoders and fusion settings (its TF-IDF,
neighbours, stages), with no labels used. For each candidate setting (each signal's top k,
with or without the similarity floors) every true pair is put in the first of: a candidate;
below the floor (in some signal's top k, under its floor); beyond the top k (in some
signal's neighbour list, past rank k); in no list (no signal lists it among its 50). Then
two hops: the pairs joined by two of the fusion's matches (`two_hop_pairs`), what they add
to the recall and how many pairs they cost. With `--char-source`, one more source: the
titles' character 3-5 n-gram TF-IDF (within words, no word part), its own 50 neighbours.

    python benchmarks/candidate_recall.py ../shared/data/shopee_dev.csv --model /tmp/dev/m6 \
        --out recall.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import read_catalogue
from index.features.tfidf import TfidfConfig, TitleTfidf
from index.matching.fusion import Neighbours
from index.matching.ranker import RankerConfig, candidate_pairs, two_hop_pairs
from index.matching.stages import fuse_stages
from index.search.knn import order_ties, sparse_knn
from index.store.model import load_model
from index.tuning.metrics import SIZE_BUCKETS
from index.tuning.ranker import catalogue_pool, is_candidate

REASONS = ("candidate", "below the floor", "beyond the top k", "in no list")


def true_pairs(labels: np.ndarray) -> np.ndarray:
    """(t, 2) every unordered pair of rows (i < j) of the same label."""
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    out = []
    for s, c in zip(starts, counts, strict=True):
        if c > 1:
            rows = np.sort(order[s : s + c])
            i, j = np.triu_indices(c, k=1)
            out.append(np.stack([rows[i], rows[j]], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def listed(nb: dict[str, Neighbours], n: int, pairs: np.ndarray, k: int | None) -> np.ndarray:
    """(t,) whether any signal lists the pair (either way) among its top `k` (None: its
    whole list), at any similarity."""
    return is_candidate(pairs, candidate_pairs(nb, n, RankerConfig(top_k=k or 10**6,
                                                                   floors={})))


def reasons(nb: dict[str, Neighbours], n: int, pairs: np.ndarray, cfg: RankerConfig
            ) -> np.ndarray:
    """(t,) index into REASONS of each true pair."""
    out = np.full(len(pairs), 3, np.int64)
    out[listed(nb, n, pairs, None)] = 2
    out[listed(nb, n, pairs, cfg.top_k)] = 1
    out[is_candidate(pairs, candidate_pairs(nb, n, cfg))] = 0
    return out


def by_size(labels: np.ndarray, pairs: np.ndarray, hit: np.ndarray) -> dict[str, float]:
    """Recall of the true pairs per size bucket of their group."""
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    size = counts[inv][pairs[:, 0]]
    out = {}
    for lo, hi in SIZE_BUCKETS:
        m = (size >= lo) & (size <= hi)
        if m.any():
            out[f"{lo}-{hi}" if hi != lo else str(lo)] = round(float(hit[m].mean()), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="labelled CSV (label_group column)")
    ap.add_argument("--model", type=Path, required=True, help="a model folder (its encoders)")
    ap.add_argument("--top-k", default="20,50", help="comma-separated top k per signal")
    ap.add_argument("--char-source", action="store_true",
                    help="add the char 3-5 n-gram TF-IDF neighbours as one more source")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    cat = read_catalogue(args.input)
    labels = cat.labels
    model = load_model(args.model, device="cpu")
    pool = catalogue_pool(cat, model.encoders, model.fusion, "cpu")
    n = len(cat)
    signals = [s for s in pool.nb if s in ("tfidf", "phash", "text", "image")]
    nb = {s: pool.nb[s] for s in signals}
    if args.char_source:
        c0 = time.process_time()
        char = TitleTfidf(TfidfConfig(char_ngrams=(3, 5), char_weight=1.0))
        C = char.fit_transform(list(cat.title))
        nb["char"] = order_ties(*sparse_knn(C, C, 51))
        signals = [*signals, "char"]
        print(f"char 3-5 n-gram neighbours: {time.process_time() - c0:.1f} CPU-s")
    truth = true_pairs(labels)
    res: dict[str, Any] = {"rows": n, "true_pairs": len(truth), "signals": signals,
                           "settings": []}
    I, _ = fuse_stages(pool.nb, model.fusion, pool.titles)
    rows = np.broadcast_to(np.arange(n)[:, None], I.shape)
    ok = (I >= 0) & (rows != I)
    matches = np.stack([rows[ok], I[ok]], axis=1)
    for k in (int(x) for x in args.top_k.split(",")):
        for floors in (True, False):
            cfg = RankerConfig(top_k=k) if floors else RankerConfig(top_k=k, floors={})
            c0 = time.process_time()
            cands = candidate_pairs(nb, n, cfg)
            why = reasons(nb, n, truth, cfg)
            hop = two_hop_pairs(matches, n, exclude=cands)
            with_hop = (why == 0) | is_candidate(truth, hop)
            row = {
                "top_k": k,
                "floors": floors,
                "candidate_pairs": len(cands),
                "recall": round(float((why == 0).mean()), 4),
                "missing": {REASONS[r]: int((why == r).sum()) for r in range(1, 4)},
                "recall_by_group_size": by_size(labels, truth, why == 0),
                "two_hop_pairs": len(hop),
                "recall_with_two_hops": round(float(with_hop.mean()), 4),
                "cpu_s": round(time.process_time() - c0, 1),
            }
            res["settings"].append(row)
            print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
