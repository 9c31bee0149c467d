"""`pricematch` sub-commands of the training layer.

Only `register` is imported when the CLI starts, so this module must not import torch or
`training.export` at top level: the CLI runs without the [train] extra, and the handlers
import what they need.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from index.errors import ImageError, PricematchError
from training.config import STATIC_TRAIN, TOP_TRAIN

#: Most images taken from --images for the parity check.
MAX_PARITY_IMAGES = 8
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def register(sub: Any) -> None:
    """Add the training commands: export-default."""
    p = sub.add_parser(
        "export-default",
        help="export the packaged pretrained text and image encoders to ONNX",
        description=(
            "Export all-MiniLM-L6-v2 and EfficientNet-Lite0 from their offline Python packages "
            "to ONNX encoder folders OUT/text and OUT/image, each checked against PyTorch."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help=f"images for the parity check (first {MAX_PARITY_IMAGES}; default: synthetic)",
    )
    p.add_argument(
        "--int8",
        type=Path,
        metavar="CSV",
        help="also quantise the text encoder to int8 and make it OUT/text when its fused F1 "
        "on this labelled CSV stays within 0.002 of fp32 (fp32 kept in OUT/text-fp32)",
    )
    p.set_defaults(func=_export_default)
    _register_train(sub)
    _register_compress(sub)


def _register_compress(sub: Any) -> None:
    p = sub.add_parser(
        "compress",
        help="make a faster text encoder from an exported one (int8, static) with a parity report",
        description=(
            "int8: ONNX Runtime dynamic quantisation (MatMul weights, per channel). fp16: "
            "a float16 graph (for CUDA; its parity is measured on whatever device runs it). "
            "static: "
            "static token embeddings distilled from the encoder (model2vec-style; numpy at "
            "run time). With --check, a labelled CSV: cosine to the source, speed and tuned "
            "F1 (text alone, fused with TF-IDF and phash) of both in OUT/compression.json; "
            "the command fails if the fused F1 drops more than 0.002 (unless --keep-anyway)."
        ),
    )
    p.add_argument("kind", choices=["int8", "fp16", "static"])
    p.add_argument(
        "source",
        type=Path,
        help="an onnx-text encoder folder (e.g. MODEL/text); int8 and fp16 also take a "
        "cross-encoder's onnx-pair folder (MODEL/ranker/cross)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="new encoder folder")
    p.add_argument("--check", type=Path, help="labelled CSV for the parity report")
    p.add_argument("--limit", type=int, help="--check: only the first N label groups")
    p.add_argument("--dims", type=int, help="static: PCA to this many dimensions")
    p.add_argument(
        "--corpus",
        type=Path,
        help="static: CSV whose titles weigh the tokens (SIF: frequent tokens count less)",
    )
    p.add_argument(
        "--keep-anyway", action="store_true", help="exit 0 even when F1 drops past 0.002"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_compress)


def _compress(args: argparse.Namespace) -> int:
    from index.data.listings import read_catalogue
    from training.compress import (
        F1_TOLERANCE,
        convert_fp16,
        distill_static,
        parity_report,
        quantize_int8,
        write_report,
    )

    if args.out.resolve() == args.source.resolve():
        raise PricematchError("--out must be another folder than the source encoder")
    from index.features.encoders import read_encoder_config
    from index.matching.cross import KIND as PAIR_KIND

    if args.check is not None and read_encoder_config(args.source).get("encoder") == PAIR_KIND:
        raise PricematchError(
            "--check scores a text encoder's titles; a cross-encoder (onnx-pair) has no "
            "such report: compare its cascade with `pricematch evaluate`"
        )
    if args.kind in ("int8", "fp16"):
        if args.dims or args.corpus:
            raise PricematchError("--dims and --corpus are options of `compress static`")
        (quantize_int8 if args.kind == "int8" else convert_fp16)(args.source, args.out)
    else:
        corpus = read_catalogue(args.corpus).title if args.corpus else None
        distill_static(
            args.source,
            args.out,
            dims=args.dims,
            corpus=corpus,
            device=args.device,
            show_progress=not args.quiet,
        )
    print(f"wrote {args.kind} encoder {args.out}")
    if args.check is None:
        return 0
    cat = read_catalogue(args.check)
    if args.limit:
        cat = cat.first_groups(args.limit)
    rep = parity_report(
        args.source, args.out, cat, device=args.device, show_progress=not args.quiet
    )
    path = write_report(args.out, rep)
    cos = rep["cosine"]
    if cos is not None:
        print(f"cosine to the source: mean {cos['mean']:.4f}, min {cos['min']:.4f}")
    speed = rep["titles_per_s"]
    print(f"titles/s: source {speed['source']:.0f}, new {speed['new']:.0f} ({speed['ratio']}x)")
    for name in ("source", "new"):
        f = rep["f1"][name]
        print(f"F1 {name:<6}: text alone {f['text']:.4f}, fused {f['fused']:.4f}")
    print(f"wrote {path}")
    if not rep["within_tolerance"] and not args.keep_anyway:
        print(
            f"fused F1 {rep['f1_delta']:+.4f} vs the source: more than {F1_TOLERANCE} lost; "
            "keep the source encoder (or --keep-anyway)"
        )
        return 1
    return 0


def _register_train(sub: Any) -> None:
    from training.config import CVConfig, ImageModelConfig, TextModelConfig, TrainConfig

    p = sub.add_parser(
        "train",
        help="fine-tune the text or image encoder (ArcFace), tune thresholds out of fold, export",
        description=(
            "GroupKFold cross-validation on label_group with out-of-fold threshold tuning, "
            "a final fit on all rows, and export to a model folder for `match --model`."
        ),
    )
    kinds = p.add_subparsers(
        dest="modality", required=True, metavar="{DATA,text,image,ranker}"
    )
    t_defaults, c_defaults = TrainConfig(), CVConfig()
    _register_train_all(kinds)
    for kind in ("text", "image"):
        k = kinds.add_parser(kind, help=f"train the {kind} encoder")
        k.add_argument(
            "input",
            type=Path,
            help="labelled CSV (Kaggle train.csv format), or for text a folder in the "
            "entity-matching layout (tableA/tableB.csv, train/valid.csv pairs)",
        )
        k.add_argument("--out", type=Path, required=True, metavar="DIR", help="model folder")
        k.add_argument("--images", type=Path, required=kind == "image", help="images folder")
        k.add_argument("--epochs", type=int, default=None)
        k.add_argument("--batch-size", type=int, default=None)
        k.add_argument("--lr", type=float, default=None)
        k.add_argument("--head-lr", type=float, default=None)
        k.add_argument("--head", choices=["arcface", "curricularface"], default=t_defaults.head)
        k.add_argument("--margin", type=float, default=t_defaults.margin)
        k.add_argument("--scale", type=float, default=t_defaults.scale)
        k.add_argument("--margin-warmup-epochs", type=int, default=0)
        k.add_argument("--folds", type=int, default=c_defaults.folds)
        k.add_argument("--no-final-fit", action="store_true", help="CV and thresholds only")
        k.add_argument(
            "--no-stages",
            action="store_true",
            help="skip the out-of-fold ablation of the match-quality stages (by default the "
            "stages that win on every fold, tuned on the saved out-of-fold embeddings, go "
            "into fusion.json when the pipeline beats the plain fusion on every fold)",
        )
        k.add_argument("--limit-groups", type=int, help="use the first N label groups only")
        k.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        k.add_argument("--compile", action="store_true", help="torch.compile the model")
        k.add_argument("--seed", type=int, default=0)
        k.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    text = kinds.choices["text"]
    tm = TextModelConfig()
    text.add_argument(
        "--mode",
        choices=["projection", "top", "full", "static"],
        default=tm.mode,
        help="top (default): fine-tune the top --top-layers transformer layers + a projection "
        "on cached states of the frozen layers below (CPU: about an hour for 27k titles); "
        "projection: frozen encoder + trained projection (fastest); "
        "full: fine-tune the whole encoder (use a GPU); static: fine-tune the token table "
        "of a static-text encoder (--base: its folder, from `pricematch compress static`)",
    )
    text.add_argument(
        "--top-layers", type=int, default=tm.top_layers, help="layers trained in top mode"
    )
    text.add_argument(
        "--layer-lr-mult",
        type=float,
        default=tm.layer_lr_mult,
        help="top mode: learning rate of the pretrained layers relative to --lr",
    )
    text.add_argument(
        "--base",
        default=tm.base,
        help="transformers model folder (default: the packaged all-MiniLM-L6-v2)",
    )
    text.add_argument("--dim", type=int, default=tm.dim)
    text.add_argument("--max-length", type=int, default=tm.max_length)
    text.add_argument(
        "--no-normalize-titles",
        dest="normalize_titles",
        action="store_false",
        help="tokenize lower-cased titles as they are (default: also decode HTML entities "
        "and split numbers from units, as the exported encoder then does at run time)",
    )
    image = kinds.choices["image"]
    im = ImageModelConfig()
    image.add_argument("--backbone", default=im.backbone, help="timm model name")
    image.add_argument("--pooling", choices=["gem", "avg"], default=im.pooling)
    image.add_argument("--dim", type=int, default=im.dim)
    image.add_argument("--input-size", type=int, default=im.input_size[0])
    image.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.set_defaults(func=_train)
    from index.cli.args import add_ranker_arguments

    add_ranker_arguments(
        kinds.add_parser(
            "ranker",
            help="train the pair re-ranker (LightGBM, no torch) into an existing model folder",
        )
    )


def _register_train_all(kinds: Any) -> None:
    from index.cli.parser import default_part
    from training.config import DEFAULT_BUDGET_MINUTES, AutoConfig

    d = AutoConfig()
    a = kinds.add_parser(
        "all",
        help="`pricematch train DATA --out MODEL`: try every part out of fold, keep the "
        "winners, write one model",
        description=(
            "Out of fold on the same folds (label groups: the CSV as one pool, rows in "
            "group-disjoint folds; an entity-matching folder: its train pairs in folds by "
            "connected component): TF-IDF + phash, then each candidate part (TF-IDF char "
            "n-grams, stages, a static and the base text encoder, the image encoder, the pair "
            "re-ranker, the cross-encoder cascade), cheapest first while the CPU budget lasts; a "
            "part is kept only if it scores above the best pipeline so far on every fold, or "
            "on most folds with a mean gain above its standard error, and matches within "
            "--match-cap. Prints what was tried, its "
            "out-of-fold F1, its CPU seconds and what was kept; writes the winner to --out."
        ),
    )
    a.add_argument(
        "input",
        type=Path,
        metavar="DATA",
        help="labelled CSV (label_group) or an entity-matching folder",
    )
    a.add_argument("--out", type=Path, required=True, metavar="DIR", help="model folder")
    a.add_argument("--images", type=Path, help="images folder (adds the image candidates)")
    a.add_argument(
        "--base",
        type=Path,
        metavar="DIR",
        help="a folder with the encoders to start from (text/, image/; e.g. what "
        "`export-default` wrote); default: export the packaged ones into OUT/work/base",
    )
    a.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_MINUTES,
        metavar="MINUTES",
        help=f"CPU minutes for the search (default {DEFAULT_BUDGET_MINUTES:g}); candidates "
        "whose estimated cost no longer fits are skipped and named",
    )
    a.add_argument(
        "--match-cap",
        type=float,
        default=d.match_cpu_per_1k,
        metavar="CPU_S",
        help=f"CPU seconds per 1,000 rows the model may take to match (default "
        f"{d.match_cpu_per_1k:g}, a third of the reference pipeline's); a part that would "
        "make it slower is not kept",
    )
    a.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run from its finished candidates (OUT/work/train)",
    )
    a.add_argument(
        "--cross-base",
        type=Path,
        metavar="DIR",
        help="a transformers folder (config, weights, tokenizer.json) the cross-encoder "
        "candidate of an entity-matching folder starts from; default: the packaged "
        "all-MiniLM-L6-v2",
    )
    a.add_argument("--folds", type=int, default=d.folds)
    a.add_argument("--seed", type=int, default=d.seed, help="the folds' shuffle")
    a.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=_train_all)
    default_part("train", "all", {"text", "image", "ranker"})


def training_data(path: Path, images: Path | None) -> tuple[Any, Any]:
    """The labelled data of a training command: (catalogue, None) from a label-group CSV,
    or (every record, the `PairData`) from an entity-matching folder with train pairs.

    Raises:
        CatalogueError: a CSV without label_group, or a folder without train pairs.
    """
    from index.data.listings import read_catalogue
    from index.data.pairs import is_pair_folder, read_pair_folder
    from index.errors import CatalogueError

    if is_pair_folder(path):
        data = read_pair_folder(path)
        data.pairs("train")  # a clear error when the folder has no train pairs
        return data.catalogue, data
    cat = read_catalogue(path, images_dir=images)
    if cat.label_group is None:
        raise CatalogueError(f"{path}: training needs a label_group column")
    return cat, None


def _train_all(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    import numpy as np

    from index.data.pairs import is_pair_folder
    from index.errors import CatalogueError
    from training.auto import Search, load_base
    from training.config import AutoConfig

    d = AutoConfig()
    if args.cross_base is not None and not (args.cross_base / "tokenizer.json").is_file():
        raise CatalogueError(f"--cross-base {args.cross_base}: no tokenizer.json there")
    if args.folds < 2:
        raise CatalogueError(f"--folds must be at least 2, got {args.folds}")
    if args.budget < 0:
        raise CatalogueError(f"--budget must be at least 0 minutes, got {args.budget:g}")
    if is_pair_folder(args.input) and args.images is not None:
        raise CatalogueError(f"{args.input}: an entity-matching folder has no images")
    cat, data = training_data(args.input, args.images)
    device = args.device
    if device == "auto":
        from index.features.encoders import onnx_providers

        device = "cuda" if "CUDAExecutionProvider" in onnx_providers("auto") else "cpu"
    config = AutoConfig(
        folds=args.folds,
        budget_minutes=args.budget,
        match_cpu_per_1k=args.match_cap,
        seed=args.seed,
        device=device,
        cross=replace(d.cross, base=str(args.cross_base) if args.cross_base else ""),
    )
    t0 = time.perf_counter()
    base = load_base(args.base, args.out / "work", device)
    images = args.images is not None and cat.image is not None
    search = Search(cat, base, args.out, config, data, images, args.resume, not args.quiet)
    what = (
        f"{len(cat)} rows, {len(np.unique(cat.labels))} label groups"
        if data is None
        else f"{len(cat)} records, {len(data.pairs('train'))} train pairs"
    )
    print(f"train {args.input}: {what}, {config.folds} folds, budget {args.budget:g} CPU-min")
    best, rows = search.run()
    path = search.write(best, rows, time.perf_counter() - t0)
    score = "mean row F1" if data is None else "pairwise F1 of the train pairs"
    print(f"\nout of fold ({score}; each fold scored by thresholds / ranker fitted away from it):")
    print(
        f"  {'candidate':<48} {'F1':>7} {'CPU s':>7} {'match':>6}  per fold / what happened"
    )
    for t in rows:
        f1 = f"{t.f1:7.4f}" if t.fold_f1 else f"{'-':>7}"
        cost = f"{t.match_cpu_1k:6.2f}" if t.fold_f1 else f"{'-':>6}"
        folds = " ".join(f"{f:.4f}" for f in t.fold_f1)
        if t.carry_f1:
            folds += "; carried " + " ".join(f"{f:.4f}" for f in t.carry_f1)
        if t.candidate_recall:
            r = t.candidate_recall
            folds += f"; cand. recall {min(r):.3f}-{max(r):.3f}"
        print(f"  {t.name:<48} {f1} {t.cpu_s:7.1f} {cost}  {folds}")
        print(f"  {'':<48} {'':>7} {'':>7} {'':>6}  {t.note or 'start'}")
    print("  (CPU s: what trying it cost; match: CPU-s per 1,000 rows to match with it;")
    print("   carried: a ranker trained on one fold alone deciding the other folds as one pool;")
    print("   cand. recall: the share of a fold's true pairs among the pairs the ranker decides:")
    print("   its candidates, and the hop pairs it scores where it has them)")
    parts = best.pipeline.changes()
    print(
        f"\nkept: {', '.join(parts) or 'the start (TF-IDF + phash)'}; out-of-fold F1 "
        f"{best.f1:.4f}; written to {args.out} ({path.name}"
        f"{', ranker/' if best.ranker is not None else ''}, train_report.json); "
        f"`pricematch match CSV --model {args.out}` uses it"
    )
    return 0


#: Per-modality defaults where text (projection on frozen features) and image differ.
_MODE_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("text", "projection"): {"epochs": 10, "batch_size": 256, "lr": 3e-3, "head_lr": 3e-2},
    ("text", "top"): TOP_TRAIN,
    ("text", "full"): {"epochs": 5, "batch_size": 64, "lr": 3e-5, "head_lr": 3e-3},
    ("text", "static"): STATIC_TRAIN,
    ("image", ""): {"epochs": 10, "batch_size": 32, "lr": 3e-4, "head_lr": 3e-3},
}


def _train(args: argparse.Namespace) -> int:
    try:
        import torch

        from training import recipe
        from training.config import CVConfig, ImageModelConfig, TextModelConfig, TrainConfig
        from training.export import export_default_image, export_default_text
        from training.tasks import ImageTask, StaticTextTask, Task, TextTask
    except ImportError as e:
        raise PricematchError(
            f"train needs the [train] extra (pip install 'pricematch[train]'): {e}"
        ) from e
    import logging

    import numpy as np

    from index.data.pairs import is_pair_folder
    from index.errors import CatalogueError

    pair_data = None
    if is_pair_folder(args.input):
        if args.modality == "image":
            raise CatalogueError(
                f"{args.input}: an entity-matching folder has no images; `train image` needs "
                "a labelled CSV with an image column and --images"
            )
        if args.limit_groups:
            raise CatalogueError("--limit-groups applies to a label_group CSV, not to pairs")
    cat, pair_data = training_data(args.input, args.images)
    if pair_data is None and args.limit_groups:
        cat = cat.first_groups(args.limit_groups)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PricematchError("--device cuda: torch sees no CUDA device")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    mode = getattr(args, "mode", "")
    d = _MODE_DEFAULTS[(args.modality, mode)]
    train = TrainConfig(
        epochs=args.epochs or d["epochs"],
        batch_size=args.batch_size or d["batch_size"],
        lr=args.lr or d["lr"],
        head_lr=args.head_lr or d["head_lr"],
        head=args.head,
        margin=args.margin,
        scale=args.scale,
        margin_warmup_epochs=args.margin_warmup_epochs,
        compile=args.compile,
        seed=args.seed,
    )
    cv = CVConfig(folds=args.folds, final_fit=not args.no_final_fit)
    show = not args.quiet
    logging.getLogger("training").setLevel(logging.INFO)
    task: Task
    rows = None
    if args.modality == "text":
        model_cfg: Any = TextModelConfig(
            base=args.base,
            mode=args.mode,
            top_layers=args.top_layers,
            layer_lr_mult=args.layer_lr_mult,
            dim=args.dim,
            max_length=args.max_length,
            normalize_titles=args.normalize_titles,
        )
        if args.mode == "static":
            try:
                task = StaticTextTask(cat.title, model_cfg, device)
            except ValueError as e:
                raise PricematchError(str(e)) from e
        else:
            task = TextTask(
                cat.title, model_cfg, device, show_progress=show, cache_dir=args.out / "work"
            )
        other: dict[str, Any] = {"image": export_default_image}
    else:
        if cat.image is None:
            raise CatalogueError(f"{args.input}: image training needs an image column and --images")
        model_cfg = ImageModelConfig(
            backbone=args.backbone,
            pooling=args.pooling,
            dim=args.dim,
            input_size=(args.input_size, args.input_size),
        )
        task = ImageTask(cat.image, model_cfg, device, workers=args.workers, show_progress=show)
        readable = task.readable()
        rows = np.flatnonzero(readable)
        if len(rows) < len(cat):
            print(f"{len(cat) - len(rows)} row(s) without a readable image are left out")
        other = {"text": export_default_text}
    if pair_data is not None:
        return _train_pairs(args, task, pair_data, train, cv, model_cfg, other, device)
    print(
        f"training {args.modality} on {device}: {len(cat)} rows, "
        f"{len(np.unique(cat.labels))} groups, {cv.folds} folds"
    )
    report = recipe.run(
        task, cat, args.out, train, cv, model_cfg, other, rows=rows, show_progress=show
    )
    print(f"\nout-of-fold mean F1 ({cv.folds} folds, thresholds tuned on the folds):")
    for r in report["oof"]:
        folds = " ".join(f"{f:.4f}" for f in r["per_fold"])
        print(f"  {r['pipeline']:<36} {r['f1']:.4f}   per fold: {folds}")
    print("\npool-size study (threshold tuned per pool size):")
    for s in report["pool_study"]["sizes"]:
        th = " ".join(f"{k}={v:.3f}" for k, v in s["thresholds"].items())
        print(f"  {s['rows']:>6} rows  F1 {s['f1']:.4f}  {th}")
    fusion = report["fusion"]
    slopes = " ".join(f"{k}={v:+.3f}" for k, v in fusion["pool_slopes"].items())
    print(
        f"\nthresholds tuned on pools of {fusion['tuned_rows']} rows, moved per doubling of "
        f"the pool when matching ({slopes}), written to {args.out / 'fusion.json'}; "
        f"model folder {args.out} ({report['seconds']:.0f}s)"
    )
    if not args.no_stages:
        keep_winning_pipeline(args.out, cat, args.device, show)
    return 0


def _train_pairs(
    args: argparse.Namespace,
    task: Any,
    data: Any,
    train: Any,
    cv: Any,
    model_cfg: Any,
    other: dict[str, Any],
    device: Any,
) -> int:
    """`train text` on an entity-matching folder (`training.recipe_pairs.run_pairs`)."""
    from training.recipe_pairs import run_pairs

    n_pairs = len(data.pairs("train"))
    print(
        f"training {args.modality} on {device}: {len(data.catalogue)} records, "
        f"{n_pairs} train pairs, {cv.folds} folds by connected component of the pairs"
    )
    try:
        report = run_pairs(
            task, data, args.out, train, cv, model_cfg, other, show_progress=not args.quiet
        )
    except ValueError as e:  # too few components for the folds
        raise PricematchError(f"{args.input}: {e}") from e
    print(
        f"\nout of fold on the train pairs ({cv.folds} folds; every record matched as one "
        "pool, each fold's pairs scored with the model that never saw them; thresholds "
        "tuned on those pairs):"
    )
    print(f"  {'pipeline':<28} {'P':>6} {'R':>6} {'F1':>6}   per fold")
    for r in report["oof"]:
        folds = " ".join(f"{f:.3f}" for f in r["per_fold"])
        print(
            f"  {r['pipeline']:<28} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f}"
            f"   {folds}"
        )
    if report["held_out"]:
        print("\nthe final model over every record, scored on pairs it never saw:")
        for r in report["held_out"]:
            name = f"{r['split']}: {r['pipeline']}"
            print(
                f"  {name:<28} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f}"
                f"   ({r['pairs']} pairs)"
            )
    kept = "+".join(report["signals"])
    for sig, gain in report["marginal"].items():
        print(f"marginal pair F1 of {sig} (left out, the others re-tuned): {gain:+.4f}")
    for sig, gain in report["left_out"].items():
        print(f"left out {sig}: adds {gain:+.4f} < 0.001 (its encoder is then not loaded)")
    if args.modality not in report["signals"] and not report["left_out"]:
        print(
            f"\n{kept} alone scored best out of fold: the fusion leaves the "
            f"{args.modality} encoder out"
        )
    print(
        f"\nfusion ({kept}) written to {args.out / 'fusion.json'}; model folder {args.out} "
        f"({report['seconds']:.0f}s); the stages ablation is for label_group CSVs"
    )
    return 0


#: The report of the stages chosen after training (`keep_winning_pipeline`).
PIPELINE_REPORT = "pipeline.json"


def keep_winning_pipeline(out: Path, cat: Any, device: str, show: bool) -> bool:
    """The out-of-fold ablation of the stages on the model's saved out-of-fold embeddings
    (`index.tuning.ablation.best_pipeline`); its pipeline replaces `out/fusion.json` when it
    scores above the plain fusion on every fold. Writes `out/pipeline.json`; returns whether
    fusion.json was replaced."""
    import json

    import numpy as np

    from index.data.oof import read_oof
    from index.store.model import FUSION, write_fusion
    from index.tuning.ablation import best_pipeline

    dense, fold_of = read_oof(out, cat.posting_id)
    rows = np.flatnonzero(fold_of >= 0)
    sub = cat.subset(rows)
    dense = {m: x[rows] for m, x in dense.items()}
    folds = [np.flatnonzero(fold_of[rows] == f) for f in sorted(set(fold_of[rows].tolist()))]
    if len(folds) < 2:
        return False
    print("\nstages, out of fold on the saved embeddings (each tuned on the other folds):")
    dev = "cpu" if device == "auto" else device
    pipe = best_pipeline(sub, dense, folds, dev, within_folds=True, show_progress=show)
    written = pipe.wins
    for f, (a, b) in enumerate(zip(pipe.plain, pipe.final, strict=True)):
        print(f"  fold {f}: plain fusion {a:.4f}  pipeline with stages {b:.4f}")
    if written:
        write_fusion(out / FUSION, pipe.config)
        print(f"the pipeline wins on every fold: written to {out / FUSION}")
    else:
        print(f"the pipeline does not win on every fold: {out / FUSION} keeps the plain fusion")
    report = {
        "plain_f1": pipe.plain,
        "pipeline_f1": pipe.final,
        "wins_every_fold": pipe.wins,
        "written": written,
        "config": pipe.config.model_dump(mode="json"),
        "seconds": pipe.seconds,
    }
    (out / PIPELINE_REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return written


def _parity_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ImageError(f"--images: {folder} is not a folder")
    files = sorted(
        f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise ImageError(
            f"--images: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}"
        )
    return files[:MAX_PARITY_IMAGES]


def _export_default(args: argparse.Namespace) -> int:
    images = _parity_images(args.images) if args.images is not None else None
    try:
        from training.export import export_default
    except ImportError as e:
        raise PricematchError(
            f"export-default needs the [train] extra (pip install 'pricematch[train]'): {e}"
        ) from e
    result = export_default(args.out, parity_images=images)
    for kind, r in (("text", result.text), ("image", result.image)):
        print(
            f"{kind:<5} encoder: {r.folder}  dim {r.dim}  "
            f"parity max abs diff {r.max_abs_diff:.2g} over {r.n_inputs} {kind}s"
        )
    if args.int8 is not None:
        from index.data.listings import read_catalogue
        from training.compress import adopt_int8

        rep = adopt_int8(args.out, read_catalogue(args.int8))
        new, fp32 = rep["f1"]["new"]["fused"], rep["f1"]["source"]["fused"]
        print(
            f"int8 text encoder: fused F1 {new:.4f} vs fp32 {fp32:.4f}"
            + (
                f"; it is now {args.out / 'text'} (fp32 in {args.out / 'text-fp32'})"
                if rep["adopted"]
                else f"; more than 0.002 lost, kept in {args.out / 'text-int8'}"
            )
        )
    return 0
