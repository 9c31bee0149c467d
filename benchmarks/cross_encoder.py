"""The cross-encoder pair scorer alone on an entity-matching folder: fitted on its train
pairs (`training.cross.PairStates`, the settings of `CrossConfig`), scored on its valid
pairs. Pairwise F1 at logit 0 (p 0.5), at the best threshold on valid (optimistic: tuned
on what it scores), ROC AUC, and the CPU seconds of the lower-layer states and the fit.

    python benchmarks/cross_encoder.py ../shared/data/er_wdc_computers --out cross.json
    python benchmarks/cross_encoder.py ../shared/data/er_wdc_computers --max-length 128
    python benchmarks/cross_encoder.py ../shared/data/er_wdc_computers --mark-codes --augment
    python benchmarks/cross_encoder.py ../shared/data/er_wdc_computers --int8
    python benchmarks/cross_encoder.py ../shared/data/er_wdc_computers --closure
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from index.data.pairs import read_pair_folder
from index.tuning.metrics import pair_prf
from training.config import CrossConfig


def onnx_variants(states: Any, model: Any, a: list[str], b: list[str],
                  y: np.ndarray) -> dict[str, Any]:
    """The fitted scorer as ONNX, fp32 and int8 (`training.compress.quantize_int8`), on
    the valid pairs: F1 at logit 0, AUC, CPU-s per 1k pairs (in turn, one process) and
    the int8 logits' largest difference from fp32."""
    import tempfile

    from sklearn.metrics import roc_auc_score

    from index.matching.cross import PairScorer
    from training.compress import quantize_int8

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = states.export(model, Path(tmp) / "fp32")
        quantize_int8(Path(tmp) / "fp32", Path(tmp) / "int8")
        int8 = PairScorer(Path(tmp) / "int8", device="cpu")
        logits = {}
        for name, scorer in (("fp32", fp32), ("int8", int8)):
            scorer.logits(a[:64], b[:64])  # warm-up
            c0 = time.process_time()
            z = scorer.logits(a, b)
            cpu = time.process_time() - c0
            logits[name] = z
            out[name] = {"valid_at_0": pair_prf(z >= 0, y),
                         "valid_auc": float(roc_auc_score(y, z)),
                         "cpu_s_per_1k_pairs": round(1000 * cpu / len(a), 2)}
        out["int8_max_abs_logit_diff"] = float(np.max(np.abs(logits["int8"] - logits["fp32"])))
        out["int8_same_side_of_0"] = float(np.mean((logits["int8"] >= 0) == (logits["fp32"] >= 0)))
    return out


def main(argv: list[str] | None = None) -> int:
    d = CrossConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="an entity-matching folder (train and valid pairs)")
    ap.add_argument("--max-length", type=int, default=d.max_length)
    ap.add_argument("--top-layers", type=int, default=d.top_layers)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--layer-lr-mult", type=float, default=d.layer_lr_mult)
    ap.add_argument("--base", default=d.base, help="a transformers folder ('': MiniLM)")
    ap.add_argument("--mark-codes", action="store_true", help="bracket model codes")
    ap.add_argument("--distinct-words", action=argparse.BooleanOptionalAction,
                    default=d.distinct_words,
                    help="each word of a title once, punctuation dropped (default: "
                    f"{d.distinct_words}; --no-distinct-words reads the titles as they are)")
    ap.add_argument("--augment", action="store_true",
                    help="add one augmented copy of each train pair (swap, span deletion)")
    ap.add_argument("--closure", action="store_true",
                    help="add the hard negatives the train labels imply (x~p, x!~n: p!~n)")
    ap.add_argument("--int8", action="store_true",
                    help="also export the scorer to ONNX, quantise it (int8) and score both")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from training.cross import PairStates, augment_pairs, closure_negatives

    cfg = CrossConfig(base=args.base, max_length=args.max_length, top_layers=args.top_layers,
                      epochs=args.epochs, lr=args.lr, layer_lr_mult=args.layer_lr_mult,
                      mark_codes=args.mark_codes, distinct_words=args.distinct_words)
    data = read_pair_folder(args.input)
    titles = data.catalogue.title
    tr, va = data.pairs("train"), data.pairs("valid")
    left = np.concatenate([tr.left, va.left])
    right = np.concatenate([tr.right, va.right])
    a, b = [titles[i] for i in left], [titles[j] for j in right]
    y_train = tr.label.astype(np.int64)
    n_fit = len(tr)
    if args.augment:  # the copies after the valid pairs; the fit reads originals + copies
        xa, xb = augment_pairs(a[: len(tr)], b[: len(tr)], seed=cfg.seed)
        a, b = a + xa, b + xb
        y_train = np.concatenate([y_train, y_train])
    extra = np.zeros((0, 2), np.int64)
    if args.closure:  # the derived pairs after the rest; the fit reads them too
        extra = closure_negatives(tr.left, tr.right, tr.label)
        a = a + [titles[i] for i in extra[:, 0]]
        b = b + [titles[j] for j in extra[:, 1]]
        y_train = np.concatenate([y_train, np.zeros(len(extra), np.int64)])
    c0 = time.process_time()
    states = PairStates(a, b, cfg, args.device)
    c1 = time.process_time()
    fit_rows = np.arange(n_fit)
    if args.augment or args.closure:
        fit_rows = np.concatenate([fit_rows, np.arange(len(tr) + len(va), len(a))])
    model = states.fit(fit_rows, y_train)
    c2 = time.process_time()
    z = states.logits(model, np.arange(len(tr), len(tr) + len(va)))
    y = va.label.astype(bool)
    cuts = np.quantile(z, np.linspace(0, 1, 101))
    best = max((pair_prf(z >= t, y)["f1"], float(t)) for t in cuts)
    res = {
        "config": asdict(cfg),
        "augment": args.augment,
        "closure_negatives": len(extra),
        "train_pairs": len(tr),
        "valid_pairs": len(va),
        "valid_at_0": pair_prf(z >= 0, y),
        "valid_best_f1_optimistic": {"f1": best[0], "logit": best[1]},
        "valid_auc": float(roc_auc_score(y, z)),
        "cpu_s_states": round(c1 - c0, 1),
        "cpu_s_fit": round(c2 - c1, 1),
    }
    if args.int8:
        res["onnx"] = onnx_variants(states, model, [titles[i] for i in va.left],
                                    [titles[j] for j in va.right], y)
    print(json.dumps(res))
    if args.out:
        args.out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
