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
from index.data.listings import Catalogue, read_catalogue
from index.data.pairs import Pairs, is_pair_folder, pair_components, read_pair_folder
from index.errors import CatalogueError
from index.features.embed import Encoders, Features, embed
from index.matching.fusion import FusionConfig
from index.matching.selfmatch import self_neighbours
from index.matching.stages import apply_stages, fuse_stages
from index.progress import progress
from index.store.model import FUSION, load_model, write_fusion, write_ranker
from index.tuning.grids import MARGINAL_MIN, group_folds
from index.tuning.metrics import f1_report, pair_report
from index.tuning.ranker import RankPool, train_on_pairs, train_on_pools

log = logging.getLogger("pricematch")


def pool_of(
    feats: Features, titles: list[str], labels: Any, config: FusionConfig, device: str
) -> RankPool:
    """Features of a pool matched among itself: neighbours with the config's stages."""
    nb = self_neighbours(feats, device=device)  # type: ignore[arg-type]
    nb = apply_stages(feats.parts(), nb, config.for_pool(len(titles)), device=device)
    return RankPool(feats, nb, titles, labels)


def make_pool(
    cat: Catalogue, encoders: Encoders, config: FusionConfig, device: str, labels: Any = None
) -> RankPool:
    """`cat` matched among itself (`pool_of` its features)."""
    feats = embed(cat, encoders, tfidf_config=config.tfidf)
    return pool_of(feats, list(cat.title), labels, config, device)


def sub_pool_maker(config: FusionConfig, device: str) -> Any:
    """Sub-pools of a pool for the pool-size rule: its features' rows, neighbours and
    stages computed anew among them."""

    def make(pool: RankPool, rows: np.ndarray) -> RankPool:
        labels = None if pool.labels is None else pool.labels[rows]
        titles = [pool.titles[i] for i in rows]
        return pool_of(pool.features.subset(rows), titles, labels, config, device)

    return make


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
        print(f"wrote {Path(args.model) / FUSION} (--sources / --tfidf-* as trained)")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=2, default=float), "utf-8")
    return 0


def _signals(pools: list[RankPool], config: FusionConfig) -> list[str]:
    """The signals the ranker uses: every computed one (stage signals included) but a base
    signal no row of any pool has (an empty `image_phash` column gives no phash features)."""
    present = set().union(*(p.features.present() for p in pools))
    base = ("tfidf", "phash", "text", "image")
    return [
        s
        for s in pools[0].nb
        if (s in base and s in present) or (s not in base and s in config.thresholds)
    ]


def _train_groups(args: argparse.Namespace, encoders: Encoders, config: FusionConfig) -> Any:
    from pathlib import Path

    cat = read_catalogue(Path(args.input), images_dir=args.images, fields=fields_of(args))
    if cat.label_group is None:
        raise CatalogueError(f"{args.input}: training the ranker needs a label_group column")
    if cat.image is None:
        encoders = Encoders(text=encoders.text)
    labels = cat.labels
    folds = group_folds(labels, args.folds)
    pools = []
    for _, rows in progress(folds, desc="pools", unit="pool", disable=args.quiet):
        sub = cat.subset(rows)
        pools.append(make_pool(sub, encoders, config, args.device, labels[rows]))
    signals = _signals(pools, config)
    left_out: list[tuple[str, float]] = []
    marginal: dict[str, float] = {}
    if getattr(args, "marginals", False):
        signals, left_out, marginal = ranker_marginals(pools, signals, show=not args.quiet)
    ranker, report = train_on_pools(
        pools, signals, show_progress=not args.quiet, sub_pool=sub_pool_maker(config, args.device)
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
        plain.append(f1_report(I, p.labels)["f1"])
    report["fusion_f1"] = plain
    report["signals"] = signals
    ranker.report.update(report)
    print(
        f"\n{args.input}: {len(cat)} rows in {len(pools)} group-disjoint pools; signals "
        f"{'+'.join(signals)}; {report['pairs']} candidate pairs"
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
    wins = all(r > b for r, b in zip(report["oof_f1"], plain, strict=True))
    why = "it does not beat the fusion on every fold"
    report["written"] = write_if_won(args, ranker, wins, why)
    return report


def _without(signals: list[str], s: str) -> list[str]:
    """`signals` without `s` and what is made from it ("combined" from text and image)."""
    return [x for x in signals if x != s and not (x == "combined" and s in ("text", "image"))]


def ranker_marginals(
    pools: list[RankPool], signals: list[str], show: bool = False
) -> tuple[list[str], list[tuple[str, float]], dict[str, float]]:
    """Each base signal's marginal out-of-fold F1 with the ranker: mean OOF F1 of the
    ranker trained on `signals` minus that of one retrained without the signal. The
    signal with the lowest marginal under `MARGINAL_MIN` is left out, then the others are
    measured again, until every one left earns its cost.

    Returns:
        the signals kept, the (signal, marginal) left out in order, and the first round's
        marginal of every base signal.
    """

    def oof(sigs: list[str]) -> float:
        return float(np.mean(train_on_pools(pools, sigs, show_progress=show)[1]["oof_f1"]))

    kept, left_out = list(signals), []
    first: dict[str, float] = {}
    score = oof(kept)
    while True:
        base = [s for s in kept if s in ("tfidf", "phash", "text", "image")]
        if len(base) < 2:
            break
        runs = {s: oof(_without(kept, s)) for s in base}
        gains = {s: score - f for s, f in runs.items()}
        if not first:
            first = {s: round(g, 4) for s, g in gains.items()}
        weakest = min(gains, key=lambda s: gains[s])
        if gains[weakest] >= MARGINAL_MIN:
            break
        left_out.append((weakest, round(gains[weakest], 4)))
        kept, score = _without(kept, weakest), runs[weakest]
    return kept, left_out, first


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
    pool = make_pool(cat, Encoders(text=encoders.text), config, args.device)
    signals = _signals([pool], config)
    groups = pair_components(len(cat), train)
    held: dict[str, Pairs] = {s: data.splits[s] for s in ("valid", "test") if s in data.splits}
    ranker, report = train_on_pairs(pool, train, groups, signals, args.folds, held_out=held)
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
