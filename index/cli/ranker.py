"""`pricematch train ranker INPUT --model DIR`: train the pair re-ranker into a model folder.

INPUT is a labelled CSV (`label_group`) or a folder in the entity-matching layout
(`index.data.pairs`). The model folder's encoders and `fusion.json` (its stages included)
make the neighbours the ranker decides on; out-of-fold scores are printed next to the plain
fusion's, and the ranker is written to `DIR/ranker/` (`index.store.model.write_ranker`).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import numpy as np

from index.cli.commands import fields_of, with_options
from index.data.listings import read_catalogue
from index.data.pairs import Pairs, is_pair_folder, pair_components, read_pair_folder
from index.errors import CatalogueError
from index.features.embed import Encoders
from index.matching.fusion import FusionConfig
from index.matching.selfmatch import decide
from index.matching.stages import fuse_stages
from index.store.model import FUSION, load_model, write_fusion, write_ranker
from index.tuning.grids import MARGINAL_MIN
from index.tuning.metrics import f1_report, pair_report
from index.tuning.ranker import (
    catalogue_pool,
    group_pools,
    ranker_marginals,
    ranker_signals,
    sub_pool_maker,
    train_grouped,
    train_on_pairs,
)

log = logging.getLogger("pricematch")


def cmd_train_ranker(args: argparse.Namespace) -> int:
    from pathlib import Path

    model = load_model(Path(args.model), device=args.device)
    if args.folds < 2:
        raise CatalogueError(f"--folds must be at least 2, got {args.folds}")
    config = with_options(model.fusion, args)
    if is_pair_folder(args.input):
        report = _train_pairs(args, model.encoders, config)
    else:
        report = _train_groups(args, model.encoders, config)
    if report["written"] and config != model.fusion:
        # the ranker's features come from these TF-IDF / source settings: keep them together
        write_fusion(Path(args.model) / FUSION, config)
        print(f"wrote {Path(args.model) / FUSION} (the --sources, --tfidf-* and --char-source "
              "it was trained with)")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=2, default=float), "utf-8")
    return 0


def _train_groups(args: argparse.Namespace, encoders: Encoders, config: FusionConfig) -> Any:
    from pathlib import Path

    cat = read_catalogue(Path(args.input), images_dir=args.images, fields=fields_of(args))
    if cat.label_group is None:
        raise CatalogueError(f"{args.input}: training the ranker needs a label_group column")
    pooling = getattr(args, "pool", "whole")
    pools, fold_of = group_pools(
        cat, encoders, config, args.folds, args.device, not args.quiet, pooling
    )
    signals = ranker_signals(pools, config)
    left_out: list[tuple[str, float]] = []
    marginal: dict[str, float] = {}
    if getattr(args, "marginals", False):
        signals, left_out, marginal = ranker_marginals(
            pools, signals, show=not args.quiet, fold_of=fold_of
        )
    ranker, report = train_grouped(
        pools, signals, fold_of, not args.quiet, sub_pool_maker(config, args.device)
    )
    if marginal:
        report["marginal_f1"] = marginal
        report["left_out"] = [{"signal": s, "marginal_f1": g} for s, g in left_out]
        print("\nmarginal F1 of each signal (the ranker retrained out of fold without it):")
        for name, g in marginal.items():
            print(f"  {name:<8} {g:+.4f}")
        for name, g in left_out:
            print(
                f"left out {name}: adds {g:+.4f} < {MARGINAL_MIN} to the ranker "
                "(its encoder is not loaded for this model unless the fusion uses it)"
            )
    plain = []
    for p in pools:
        assert p.labels is not None
        I, _ = fuse_stages(p.nb, config, p.titles)
        if fold_of is None:
            plain.append(f1_report(I, p.labels)["f1"])
        else:  # the fusion of the whole pool, scored on each fold's rows
            plain += [
                f1_report(I, p.labels, rows=np.flatnonzero(fold_of == f))["f1"]
                for f in range(len(report["folds"]))
            ]
    report["fusion_f1"] = plain
    report["signals"] = signals
    ranker.report.update(report)
    how = (
        f"one pool, its rows in {len(report['folds'])} group-disjoint folds"
        if fold_of is not None
        else f"{len(pools)} group-disjoint pools"
    )
    print(
        f"\n{args.input}: {len(cat)} rows in {how}; signals {'+'.join(signals)}; "
        f"{report['pairs']} candidate pairs"
    )
    print(
        f"{'fold':<6} {'rows':>6} {'fusion F1':>10} {'ranker F1':>10} {'prec':>6} "
        f"{'recall':>6} {'cand. recall':>12}"
    )
    for f, (r, base) in enumerate(zip(report["folds"], plain, strict=True)):
        print(
            f"{f:<6} {r['rows']:>6} {base:10.4f} {r['f1']:10.4f} {r['precision']:6.4f} "
            f"{r['recall']:6.4f} {r['candidate_recall']:12.4f}"
        )
    gain = np.array(report["oof_f1"]) - np.array(plain)
    print(
        f"mean   {'':>6} {np.mean(plain):10.4f} {np.mean(report['oof_f1']):10.4f}   "
        f"gain {gain.mean():+.4f} ± {gain.std():.4f} (min {gain.min():+.4f})"
    )
    rule = report["pool_rule"]
    print(
        f"ranker: threshold {ranker.config.threshold:.2f}, single "
        f"{ranker.config.single_threshold:.2f} at {rule['pool_rows']} rows, "
        f"{rule['slope_per_doubling']:+.3f} per doubling of the pool; "
        f"{report['rounds']} trees, {report['seconds']:.0f}s"
    )
    if fold_of is not None:  # the final ranker on the whole pool, as `evaluate` decides it
        whole = pools[0]
        assert whole.labels is not None
        I, _, _ = decide(whole.features, whole.nb, config, whole.titles, cat.source_codes, ranker)
        report["in_sample_f1"] = f1_report(I, whole.labels)["f1"]
        print(
            f"in sample (the final ranker was trained on these rows; what `evaluate` of this "
            f"CSV on the written model prints): {report['in_sample_f1']:.4f}; the fold table "
            "above is the out-of-fold estimate"
        )
    wins = all(r > b for r, b in zip(report["oof_f1"], plain, strict=True))
    why = "it does not beat the fusion on every fold"
    report["written"] = write_if_won(args, ranker, wins, why)
    return report


def write_if_won(args: argparse.Namespace, ranker: Any, wins: bool, why_not: str) -> bool:
    """Write the ranker into the model folder if it won (or --keep-anyway); say which."""
    from pathlib import Path

    if wins or args.keep_anyway:
        write_ranker(Path(args.model), ranker)
        print(f"wrote {Path(args.model) / 'ranker'}" + ("" if wins else f" ({why_not})"))
        return True
    print(f"not written: {why_not} (--keep-anyway writes it); the model keeps its fusion")
    return False


def _train_pairs(args: argparse.Namespace, encoders: Encoders, config: FusionConfig) -> Any:
    if getattr(args, "marginals", False):
        raise CatalogueError(
            "--marginals needs label groups (a CSV with label_group): on pairwise data the "
            "ranker is trained once, out of fold by connected component"
        )
    data = read_pair_folder(args.input, fields_of(args))
    cat = data.catalogue
    train = data.pairs("train")
    pool = catalogue_pool(cat, Encoders(text=encoders.text), config, args.device)
    signals = ranker_signals([pool], config)
    groups = pair_components(len(cat), train)
    held: dict[str, Pairs] = {s: data.splits[s] for s in ("valid", "test") if s in data.splits}
    ranker, report = train_on_pairs(
        pool,
        train,
        groups,
        signals,
        args.folds,
        held_out=held,
        fusion=config,
        source=cat.source_codes,
    )
    I, _ = fuse_stages(pool.nb, config, pool.titles, source=cat.source_codes)
    scored: dict[str, Pairs] = {"train": train, **held}
    report["fusion"] = {s: pair_report(I, p.left, p.right, p.label) for s, p in scored.items()}
    report["signals"] = signals
    ranker.report.update(report)
    print(
        f"\n{args.input}: {len(cat)} records, {len(train)} train pairs; signals {'+'.join(signals)}"
    )
    print(f"{'split':<22} {'P':>6} {'R':>6} {'F1':>6}  (pairwise, labelled pairs only)")
    rows = [
        ("train, fusion", report["fusion"]["train"]),
        ("train OOF, ranker", report["train_oof"]),
    ]
    for s in held:
        rows += [(f"{s}, fusion", report["fusion"][s]), (f"{s}, ranker", report[s])]
    for name, r in rows:
        print(f"{name:<22} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f}")
    print(
        f"ranker: threshold {ranker.config.threshold:.2f}, {report['rounds']} trees, "
        f"{report['seconds']:.0f}s"
    )
    wins = report["train_oof"]["f1"] > report["fusion"]["train"]["f1"]
    report["written"] = write_if_won(args, ranker, wins, "it does not beat the fusion out of fold")
    return report
