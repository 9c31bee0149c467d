"""The cross-encoder pair scorer alone on an entity-matching folder: fitted on its train
pairs (`training.cross.PairStates`, the settings of `CrossConfig`), scored on its valid
pairs. Pairwise F1 at logit 0 (p 0.5), at the best threshold on valid (optimistic: tuned
on what it scores), ROC AUC, and the CPU seconds of the lower-layer states and the fit.

    python benchmarks/cross_encoder.py ../shared/data/er_wdc_computers --out cross.json
    python benchmarks/cross_encoder.py ../shared/data/er_wdc_computers --max-length 128
    python benchmarks/cross_encoder.py ../shared/data/er_wdc_computers --mark-codes --augment
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from index.data.pairs import read_pair_folder
from index.tuning.metrics import pair_prf
from training.config import CrossConfig


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
    ap.add_argument("--augment", action="store_true",
                    help="add one augmented copy of each train pair (swap, span deletion)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from training.cross import PairStates, augment_pairs

    cfg = CrossConfig(base=args.base, max_length=args.max_length, top_layers=args.top_layers,
                      epochs=args.epochs, lr=args.lr, layer_lr_mult=args.layer_lr_mult,
                      mark_codes=args.mark_codes)
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
    c0 = time.process_time()
    states = PairStates(a, b, cfg, args.device)
    c1 = time.process_time()
    fit_rows = np.arange(n_fit)
    if args.augment:
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
        "train_pairs": len(tr),
        "valid_pairs": len(va),
        "valid_at_0": pair_prf(z >= 0, y),
        "valid_best_f1_optimistic": {"f1": best[0], "logit": best[1]},
        "valid_auc": float(roc_auc_score(y, z)),
        "cpu_s_states": round(c1 - c0, 1),
        "cpu_s_fit": round(c2 - c1, 1),
    }
    print(json.dumps(res))
    if args.out:
        args.out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
