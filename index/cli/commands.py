"""The library's CLI commands: match, evaluate, build-index, sample."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import Catalogue, read_catalogue, write_links, write_submission
from index.data.oof import read_oof
from index.data.pairs import is_pair_folder, read_pair_folder
from index.errors import BundleError, CatalogueError
from index.features.embed import DENSE, Encoders, Features, embed
from index.features.tfidf import TfidfConfig
from index.matching.fusion import SIGNALS, FusionConfig
from index.matching.selfmatch import (
    NeighbourStep,
    decide,
    local_neighbours,
    self_match,
    self_neighbours,
)
from index.matching.stages import fuse_stages
from index.store.model import (
    Model,
    load_model,
    load_some_encoders,
    needed_modalities,
    read_fusion,
    write_fusion,
)
from index.tuning.ablation import (
    best_pipeline,
    consensus,
    mean_std,
    ranker_row,
    summarize,
)
from index.tuning.grids import (
    MARGINAL_MIN,
    Tuner,
    drop_weak,
    group_folds,
    never_below_single,
    single_signal,
    tune_pairs,
)
from index.tuning.metrics import f1_report, pair_report
from index.tuning.ranker import group_pools, ranker_marginals

log = logging.getLogger("pricematch")


def _field_spec(args: argparse.Namespace) -> list[tuple[str, float | None]] | None:
    """`--fields a:2,b` as [(name, weight or None)]; CatalogueError for a bad weight."""
    spec = getattr(args, "fields", None)
    if spec is None:
        return None
    out: list[tuple[str, float | None]] = []
    for part in spec.split(","):
        name, sep, w = part.partition(":")
        weight = None
        if sep:
            try:
                weight = float(w)
            except ValueError:
                weight = -1.0
            if not 0.0 <= weight <= 100.0:
                raise CatalogueError(f"--fields: the weight of {name!r} must be 0-100, got {w!r}")
        out.append((name.strip(), weight))
    return out


def fields_of(args: argparse.Namespace) -> list[str] | None:
    """`--fields` as a list of names (None: the default title)."""
    spec = _field_spec(args)
    return None if spec is None else [n for n, _ in spec]


def field_weights_of(args: argparse.Namespace) -> dict[str, float] | None:
    """`--fields` weights (a field without one weighs 1); None where no weight is given."""
    spec = _field_spec(args)
    if spec is None or all(w is None for _, w in spec):
        return None
    return {n: 1.0 if w is None else w for n, w in spec}


def _char_ngrams(spec: str, flag: str = "--tfidf-char") -> tuple[int, int] | None:
    """`--tfidf-char` or `--char-source`: "off" -> None, "3-5" -> (3, 5); CatalogueError
    otherwise."""
    if spec.strip().lower() == "off":
        return None
    lo, sep, hi = spec.partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise CatalogueError(f"{flag} takes MIN-MAX (e.g. 3-5) or off, got {spec!r}")
    a, b = int(lo), int(hi)
    if not 1 <= a <= b <= 10:
        raise CatalogueError(f"{flag} needs 1 <= MIN <= MAX <= 10, got {spec!r}")
    return a, b


def with_options(config: FusionConfig, args: argparse.Namespace) -> FusionConfig:
    """`config` with --sources, --tfidf-codes, --tfidf-char and --char-source applied
    (where given)."""
    if getattr(args, "sources", None):
        config = config.with_(sources=args.sources)
    tfidf = config.tfidf.model_dump()
    if getattr(args, "tfidf_codes", None):
        tfidf["code_tokens"] = args.tfidf_codes == "on"
    if getattr(args, "tfidf_char", None):
        tfidf["char_ngrams"] = _char_ngrams(args.tfidf_char)
    if getattr(args, "char_source", None):
        tfidf["char_source"] = _char_ngrams(args.char_source, "--char-source")
    weights = field_weights_of(args)
    if weights is not None:
        tfidf["field_weights"] = weights
    return config.with_(tfidf=tfidf)


def _signals(args: argparse.Namespace) -> set[str]:
    chosen = {s.strip() for s in args.signals.split(",") if s.strip()}
    unknown = chosen - set(SIGNALS)
    if unknown:
        raise CatalogueError(
            f"unknown signal(s) {', '.join(sorted(unknown))}; valid: {', '.join(SIGNALS)}"
        )
    return chosen


def resolve_model(args: argparse.Namespace) -> Model:
    """Encoders, fusion config and ranker from --bundle / --model / --config / --signals /
    --images / --no-ranker."""
    if args.bundle is not None:
        from index.store.bundle import bundle_model

        model = bundle_model(args.bundle)  # checksums verified, as the service does
    else:  # config and ranker first, the encoders once it is known which are needed
        model = load_model(args.model, device=args.device, modalities=())
    folder = model.folder
    config = model.fusion
    if folder is None:
        log.info(
            "no --model or --bundle: matching on TF-IDF and phash only "
            "(`pricematch export-default --out models/default` gives the default encoders)"
        )
    if args.config is not None:
        config = read_fusion(args.config)
    chosen = _signals(args)
    ranker = None if getattr(args, "no_ranker", False) else model.ranker
    # --signals naming a signal the config leaves out forces it (at the default threshold)
    forced = {s for s in chosen if s in DENSE} if args.signals != ",".join(SIGNALS) else set()
    default = FusionConfig().thresholds
    thresholds = {s: default[s] for s in forced if s not in config.thresholds}  # type: ignore[index]
    thresholds.update({k: v for k, v in config.thresholds.items() if k in chosen})
    used = needed_modalities(config, ranker) | forced  # before --signals narrows it
    config = with_options(config.with_(thresholds=thresholds), args)
    need = used & chosen
    if args.images is None:
        need.discard("image")
    for m in sorted(set(DENSE) - used):  # left out by the config, not by --signals/--images
        if folder is not None and (folder / m / "config.json").is_file():
            log.info("the %s encoder is not loaded: this pipeline uses no %s signal", m, m)
    encoders = load_some_encoders(folder, args.device, sorted(need)) if folder else Encoders()
    missing = [m for m in sorted(need) if getattr(encoders, m) is None]
    if missing and args.bundle is not None:
        raise BundleError(
            f"{args.bundle}: its pipeline uses the {', '.join(missing)} encoder, "
            "which the bundle does not hold (encoders/)"
        )
    return Model(model.folder, encoders, config, ranker)


def _read(args: argparse.Namespace) -> Catalogue:
    if is_pair_folder(args.input):
        return read_pair_folder(args.input, fields_of(args)).catalogue
    cat = read_catalogue(args.input, images_dir=args.images, fields=fields_of(args))
    for line in cat.issue_lines():
        log.warning("%s: %s", args.input, line)
    return cat


def _features(
    cat: Catalogue, encoders: Encoders, args: argparse.Namespace, tfidf: TfidfConfig
) -> Any:
    t = time.perf_counter()
    if getattr(args, "cache", None) is not None:
        feats, nb = _cached_features(cat, encoders, args, tfidf)
    else:
        step = local_neighbours(tfidf, device=args.device, show_progress=not args.quiet)
        feats, nb = step(cat, encoders)
    _log_issues(cat, feats, args)
    log.info("features and neighbours for %d rows in %.1fs", len(cat), time.perf_counter() - t)
    return feats, nb


def _cached_features(
    cat: Catalogue, encoders: Encoders, args: argparse.Namespace, tfidf: TfidfConfig
) -> Any:
    """`local_neighbours` with the dense embeddings from (or into) the --cache folder."""
    from index.store.cache import FeatureCache, cache_inputs
    from index.store.model import fingerprint

    cache, fp = FeatureCache(args.cache), fingerprint(encoders)
    keys = {
        m: cache.key(m, fp[m], cache_inputs(cat, m))
        for m in fp
        if m == "text" or cat.image is not None
    }
    hits = {m: got for m, k in keys.items() if (got := cache.load(m, k, len(cat))) is not None}
    rest = Encoders(*(None if m in hits else getattr(encoders, m) for m in ("text", "image")))
    feats = embed(cat, rest, tfidf_config=tfidf, show_progress=not args.quiet)
    for m, (x, valid) in hits.items():
        feats.set_dense(m, x, valid)
    for m, (x, valid) in feats.dense().items():
        if m not in hits:
            cache.save(m, keys[m], x, valid)
    if hits:
        log.info("embeddings of %s from the cache %s", "+".join(hits), args.cache)
    return feats, self_neighbours(feats, device=args.device, show_progress=not args.quiet)


def _log_issues(cat: Catalogue, feats: Features, args: argparse.Namespace) -> None:
    """What the features lack beyond the CSV's own issues (logged when it was read)."""
    for what, n in feats.issues.items():
        if what not in cat.issues:
            log.warning("%s: %d row(s): %s", args.input, n, what)


def _ray_features(
    cat: Catalogue,
    encoders: Encoders,
    args: argparse.Namespace,
    tfidf: TfidfConfig,
    folder: Path | None,
) -> Any:
    try:
        from index.scale.ray_engine import init_ray, ray_neighbours
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CatalogueError(f"--engine ray needs Ray: pip install -e '.[scale]' ({e})") from e
    if args.shards < 1:
        raise CatalogueError(f"--shards must be at least 1, got {args.shards}")
    t = time.perf_counter()
    init_ray(args.address)
    feats, nb = ray_neighbours(
        cat,
        folder,
        text=encoders.text is not None,
        image=encoders.image is not None,
        tfidf_config=tfidf,
        shards=args.shards,
        device=args.device,
    )
    _log_issues(cat, feats, args)
    log.info(
        "ray: features and neighbours for %d rows on %d shard(s) in %.1fs",
        len(cat),
        args.shards,
        time.perf_counter() - t,
    )
    return feats, nb


def cmd_match(args: argparse.Namespace) -> int:
    cat = _read(args)
    model = resolve_model(args)
    encoders, config = model.encoders, model.fusion
    step = _neighbour_step(args, model)
    r = self_match(cat, config, encoders, step, device=args.device, ranker=model.ranker)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_submission(args.output, cat.posting_id, r.matches)
    used = "+".join(r.signals_used()) or "none"
    if r.ranked:
        used += " (pair re-ranker)"
    if cat.source_codes is not None and r.config.sources != "any":
        used += f", sources {r.config.sources}"
    mean = float(np.mean([len(m) for m in r.matches]))
    print(f"wrote {args.output}: {len(cat)} rows, signals {used}; {mean:.2f} matches per row")
    if args.links is not None:
        args.links.parent.mkdir(parents=True, exist_ok=True)
        names, links = r.links()
        count = write_links(args.links, cat.posting_id, names, links)
        print(f"wrote {args.links}: {count} links with scores")
    return 0


def _neighbour_step(args: argparse.Namespace, model: Model) -> NeighbourStep:
    """The neighbour step `--engine` asks for (TF-IDF as the model's `fusion.tfidf`; Ray's
    workers load the encoders from `model.folder`), logging what it found."""
    tfidf = model.fusion.tfidf
    if getattr(args, "engine", "local") == "ray":
        return lambda cat, encoders: _ray_features(cat, encoders, args, tfidf, model.folder)
    return lambda cat, encoders: _features(cat, encoders, args, tfidf)


def _row(
    name: str,
    config: FusionConfig,
    nb: dict[str, Any],
    labels: np.ndarray,
    titles: list[str] | None = None,
    source: np.ndarray | None = None,
) -> dict[str, Any]:
    I, _ = fuse_stages(nb, config, titles, n=len(labels), source=source)
    rep = f1_report(I, labels)
    rep["name"] = name
    rep["config"] = config.model_dump()
    return rep


def _fmt_thresholds(config: FusionConfig) -> str:
    parts = []
    for k, v in config.thresholds.items():
        parts.append(f"phash<={round((1 - v) * 64)}" if k == "phash" else f"{k}>={v:.3f}")
    if config.min2:
        parts.append(f"min2 {config.min2_signal}>={config.min2_floor:.2f}")
    return " ".join(parts)


def earn_their_cost(
    tuner: Tuner, best: FusionConfig, score: float, what: str
) -> tuple[FusionConfig, dict[str, Any]]:
    """Print each signal's marginal score (left out, the others re-tuned) and return the
    config without those adding under `MARGINAL_MIN` (and the report of it)."""
    kept, _, dropped, marg = drop_weak(tuner, best, score)
    if marg:
        print(f"\nmarginal {what} of each signal (left out, the others re-tuned):")
        for s, g in sorted(marg.items(), key=lambda kv: -kv[1]):
            print(f"  {s:<10} {g:+.4f}")
    for s, g in dropped:
        print(
            f"left out {s}: adds {g:+.4f} < {MARGINAL_MIN} (its encoder is then not loaded; "
            "--signals naming it forces it)"
        )
    return kept, {"marginal": marg, "left_out": dict(dropped)}


def ranker_earn_their_cost(
    cat: Catalogue, model: Model, args: argparse.Namespace
) -> dict[str, Any]:
    """A model with a pair re-ranker: print each of its signals' marginal out-of-fold F1
    with the ranker retrained without it (on `args.folds` group-disjoint pools of `cat`,
    as `train ranker --marginals`) and say which the ranker should be retrained without."""
    assert model.ranker is not None
    show = not args.quiet
    pooling = model.ranker.report.get("mode", "groups")  # as the ranker was trained
    pooling = "whole" if pooling == "whole" else "folds"
    pools, fold_of = group_pools(
        cat, model.encoders, model.fusion, args.folds, args.device, show, pooling
    )
    signals = [s for s in model.ranker.signals if s in pools[0].nb]
    _, left_out, marg = ranker_marginals(pools, signals, show=show, fold_of=fold_of)
    how = "one pool" if fold_of is not None else f"{len(pools)} group-disjoint pools"
    print(
        f"\nmarginal F1 of each signal with the pair re-ranker (retrained without it, out of "
        f"fold, {args.folds} folds, {how}):"
    )
    for s, g in sorted(marg.items(), key=lambda kv: -kv[1]):
        print(f"  {s:<10} {g:+.4f}")
    for s, g in left_out:
        print(
            f"the ranker gains {g:+.4f} < {MARGINAL_MIN} from {s}: `pricematch train ranker "
            "--marginals` retrains it without it (the ranker keeps its encoder loaded)"
        )
    return {"ranker_marginal": marg, "ranker_left_out": dict(left_out)}


def _evaluate_pairs(args: argparse.Namespace) -> int:
    """Pairwise P/R/F1 on one split's labelled pairs; the matching runs over all records."""
    data = read_pair_folder(args.input, fields_of(args))
    split = data.pairs(args.split)
    cat = data.catalogue
    model = resolve_model(args)
    result = self_match(
        cat, model.fusion, model.encoders, _neighbour_step(args, model), args.device
    )
    source, nb = cat.source_codes, result.neighbours
    rows = [("fused", result.I)]
    best = result.config
    tune_on = data.pairs("train") if args.tune else None
    if tune_on is not None and args.split == "train":
        log.warning("--tune tunes on the train pairs: scoring them too is in sample")

    def tuned(start: FusionConfig) -> tuple[FusionConfig, float]:
        assert tune_on is not None
        on = (tune_on.left, tune_on.right, tune_on.label)
        return tune_pairs(nb, on, start, cat.title, source, show_progress=not args.quiet)

    singles: list[tuple[FusionConfig, float]] = []
    earned: dict[str, Any] = {}
    for s in result.signals_used():
        single = single_signal(s, result.config)
        I, _ = fuse_stages(nb, single, cat.title, source=source)
        rows.insert(len(rows) - 1, (f"{s} alone", I))
        if tune_on is not None:
            singles.append(tuned(single))
            I, _ = fuse_stages(nb, singles[-1][0], cat.title, source=source)
            rows.insert(len(rows) - 1, (f"{s} alone (tuned)", I))
    if tune_on is not None:
        best, score = never_below_single(tuned(result.config), singles)
        I, _ = fuse_stages(nb, best, cat.title, source=source)
        rows.append(("fused (tuned on train)", I))
        kept, earned = earn_their_cost(tuned, best, score, "train-pair F1")
        if kept is not best:
            best = kept
            I, _ = fuse_stages(nb, best, cat.title, source=source)
            rows.append(("fused (tuned, weak signals out)", I))
    decided_by = None
    if model.ranker is not None:
        I, _, _ = decide(result.features, nb, result.config, cat.title, source, model.ranker)
        decided_by = "ranker"
        rows.append(("pair re-ranker", I))
    print(
        f"\n{args.input}: {len(cat)} records; {len(split)} labelled {args.split} pairs "
        f"({int(split.label.sum())} matches); scored on those pairs only"
    )
    print(f"{'pipeline':<24} {'P':>6} {'R':>6} {'F1':>6}")
    report = []
    for name, I in rows:
        r = pair_report(I, split.left, split.right, split.label)
        report.append({"name": name, **r})
        print(f"{name:<24} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(
            json.dumps(
                {
                    "input": str(args.input),
                    "split": args.split,
                    "rows": report,
                    "decided_by": decided_by,
                    **earned,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    if args.tune:
        print(f"\nthresholds tuned on the train pairs: {_fmt_thresholds(best)}")
    if args.save_config:  # as run or tuned, its --sources / --tfidf-* options included
        args.save_config.parent.mkdir(parents=True, exist_ok=True)
        write_fusion(args.save_config, best if args.tune else model.fusion)
        print(f"wrote {args.save_config}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from index.tuning.grids import tune

    t0 = time.perf_counter()
    if is_pair_folder(args.input):
        return _evaluate_pairs(args)
    cat = _read(args)
    if cat.label_group is None:
        raise CatalogueError(f"{args.input}: evaluate needs a label_group column")
    if args.limit:
        cat = cat.first_groups(args.limit)
    labels = cat.labels
    if args.ablation:
        return cmd_ablation(args, cat)
    model = resolve_model(args)
    encoders, config = model.encoders, model.fusion
    result = self_match(cat, config, encoders, _neighbour_step(args, model), device=args.device)
    nb, config = result.neighbours, result.config
    show = not args.quiet
    titles, src = cat.title, cat.source_codes
    rows = []
    singles: list[tuple[FusionConfig, float]] = []
    earned: dict[str, Any] = {}
    for s in result.signals_used():
        single = single_signal(s, config)
        rows.append(_row(f"{s} alone", single, nb, labels, titles, src))
        if args.tune:
            singles.append(tune(nb, labels, single, min2_signals=(s,), show_progress=show))
            rows.append(_row(f"{s} alone (tuned)", singles[-1][0], nb, labels, titles, src))
    rows.append(_row("fused", config, nb, labels, titles, src))
    if model.ranker is not None:
        I, _, _ = decide(result.features, nb, config, titles, src, model.ranker)
        rep = f1_report(I, labels)
        rows.append({**rep, "name": "pair re-ranker", "config": config.model_dump()})
    best = config
    if args.tune:
        best, score = never_below_single(tune(nb, labels, config, show_progress=show), singles)
        rows.append(_row("fused (tuned)", best, nb, labels, titles, src))
        kept, earned = earn_their_cost(lambda c: tune(nb, labels, c), best, score, "F1")
        if kept is not best:
            best = kept
            rows.append(_row("fused (tuned, weak signals out)", best, nb, labels, titles, src))
        if model.ranker is not None:
            earned.update(ranker_earn_their_cost(cat, model, args))
    elapsed = time.perf_counter() - t0

    print(f"\n{args.input}: {len(cat)} rows, {len(np.unique(labels))} groups")
    print(f"{'pipeline':<24} {'F1':>6} {'prec':>6} {'recall':>6} {'matches':>7}  thresholds")
    for r in rows:
        cfg = FusionConfig.model_validate(r["config"])
        print(
            f"{r['name']:<24} {r['f1']:6.4f} {r['precision']:6.4f} {r['recall']:6.4f} "
            f"{r['mean_matches']:7.2f}  {_fmt_thresholds(cfg)}"
        )
    final = rows[-1]
    print(f"\nF1 by true group size ({final['name']}):")
    for size, v in final["by_group_size"].items():
        print(f"  {size:>6}: {v['f1']:.4f}  ({v['rows']} rows)")
    if args.tune:
        print("\nbest config:\n" + best.model_dump_json(indent=2))
    print(f"\ntotal time {elapsed:.1f}s")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(
            json.dumps(
                {"input": str(args.input), "rows": rows, "seconds": elapsed, **earned}, indent=2
            ),
            encoding="utf-8",
        )
    if args.save_config:
        args.save_config.parent.mkdir(parents=True, exist_ok=True)
        write_fusion(args.save_config, best)
    return 0


def cmd_build_index(args: argparse.Namespace) -> int:
    from index.store.bundle import save_bundle

    cat = _read(args)
    model = resolve_model(args)
    encoders, config = model.encoders, model.fusion
    if config.tfidf.field_weights:
        raise CatalogueError(
            "field weights apply to match, evaluate and train ranker: a bundle's queries "
            "(/match) carry one title; give --fields without weights"
        )
    if args.images is not None and encoders.image is None and args.bundle is None and args.model:
        log.warning("--images given but the model has no image encoder")
    feats = embed(cat, encoders, tfidf_config=config.tfidf, show_progress=not args.quiet)
    out = save_bundle(args.out, cat, feats, config, encoders, ranker=model.ranker)
    print(
        f"wrote bundle {out}: {len(cat)} listings"
        + (" (with the pair re-ranker)" if model.ranker is not None else "")
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from index.data.synthetic import SyntheticSpec, make_catalogue

    path = make_catalogue(args.out, SyntheticSpec(products=args.products, seed=args.seed))
    print(f"wrote {path} and {args.out / 'images'}")
    return 0


def cmd_ablation(args: argparse.Namespace, cat: Catalogue) -> int:
    t0 = time.perf_counter()
    labels = cat.labels
    show = not args.quiet
    device = args.device
    if args.oof is not None:
        dense, fold_of = read_oof(args.oof, cat.posting_id)
        source = f"out-of-fold embeddings {args.oof}"
    else:
        encoders = resolve_model(args).encoders
        parts = embed(cat, encoders, show_progress=show).parts()  # zero rows where invalid
        dense = {m: parts[m] for m in ("text", "image") if m in parts}
        fold_of = np.full(len(cat), -1, np.int64)
        for f, (_, va) in enumerate(group_folds(labels, args.folds, args.seed)):
            fold_of[va] = f
        source = f"embedded with {args.model or 'no model'}"
    fold_rows = [np.flatnonzero(fold_of == f) for f in sorted(set(fold_of.tolist()) - {-1})]
    if len(fold_rows) < 2:
        raise CatalogueError("the ablation needs at least 2 folds")
    # Saved out-of-fold embeddings come from one model per fold: pools never span folds.
    within = args.oof is not None
    pipe = best_pipeline(
        cat,
        dense,
        fold_rows,
        device,
        within_folds=within,
        show_progress=show,
        fit_slopes=args.save_config is not None,
    )
    pools, results, study, slopes = pipe.pools, pipe.results, pipe.study, pipe.slopes
    final_row = next(r for r in results if r["role"] == "final")
    final = [FusionConfig.model_validate(x["config"]) for x in final_row["folds"]]
    if not args.no_ranker:
        results.append(ranker_row(pools, consensus(final, {}), device, show_progress=show))
    elapsed = time.perf_counter() - t0
    table = summarize(results)

    print(
        f"\n{args.input}: {len(cat)} rows, {len(np.unique(labels))} groups; {len(pools)} folds "
        f"(pools of ~{round(np.mean([len(p) for p in pools]))} rows); {source}"
    )
    print("thresholds tuned on the other folds' pools; mean ± std over folds\n")
    print(f"{'stage':<36} {'F1':>17} {'gain':>17} {'prec':>6} {'recall':>6} {'matches':>7} kept")
    for r in table:
        gain = mean_std(r["gain"]) if r["gain"] is not None else ""
        kept = f"{r['kept']}/{len(pools)}" if r["kept"] is not None else "-"
        print(
            f"{r['name']:<36} {mean_std(r['f1']):>17} {gain:>17} {np.mean(r['precision']):6.4f} "
            f"{np.mean(r['recall']):6.4f} {np.mean(r['matches']):7.2f} {kept}"
        )
    print("\nF1 by true group size (mean over folds):")
    sizes = list(table[0]["by_group_size"])
    print(f"{'stage':<36} " + " ".join(f"{s:>7}" for s in sizes))
    for r in table:
        print(f"{r['name']:<36} " + " ".join(f"{r['by_group_size'][s]:7.4f}" for s in sizes))
    src = "quarter-fold sub-pools (N/4)" if within else f"{len(pools) - 1} merged training folds"
    print(f"\nPool size (validation pool N; thresholds tuned on the {src}):")
    for what in ("same_size", "carried", "pool_rule"):
        label = {
            "same_size": "tuned on N-row pools (as above)",
            "carried": "other-size pools, carried as is",
            "pool_rule": "other-size pools + pool rule",
        }[what]
        print(f"  {label:<36} F1 {mean_std([s[what]['f1'] for s in study])}")
    slopes = {
        s: float(np.mean([x["slopes"].get(s, 0.0) for x in study])) for s in study[0]["slopes"]
    }
    print(
        "  slopes per doubling (mean over folds): "
        + ", ".join(f"{s} {v:+.3f}" for s, v in slopes.items())
    )
    print(
        f"\ntime: pools {pipe.seconds['pools']:.0f}s, stages {pipe.seconds['stages']:.0f}s, "
        f"pool study {pipe.seconds['pool_study']:.0f}s, total {elapsed:.0f}s"
    )
    if args.save_config:
        best = pipe.config
        args.save_config.parent.mkdir(parents=True, exist_ok=True)
        write_fusion(args.save_config, best)
        print(f"wrote {args.save_config} (final pipeline, thresholds for {best.tuned_rows} rows)")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(
            json.dumps(
                {
                    "input": str(args.input),
                    "source": source,
                    "table": table,
                    "steps": results,
                    "pool_study": study,
                    "seconds": elapsed,
                },
                indent=2,
                default=float,
            ),
            encoding="utf-8",
        )
    return 0
