"""The arguments of the library's commands (match, evaluate, build-index, sample, train
ranker), kept apart from their handlers: building the parser (`pricematch --help`) imports
none of the matching code; a handler's module is imported when its command runs (`lazy`)."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from index.matching.names import SIGNALS, SOURCE_MODES


def lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports `module` and calls its `name` when the command runs."""

    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), name)(args))

    return run


def register(sub: Any) -> None:
    """Add match, evaluate, build-index and sample to the `pricematch` parser."""
    p = sub.add_parser("match", help="match the rows of a CSV among themselves (Kaggle format)")
    p.add_argument(
        "input",
        type=Path,
        help="listings CSV (posting_id,title[,image,image_phash,source]), or an "
        "entity-matching folder (its records as a-<id>/b-<id>, source = the table)",
    )
    _model_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="submission CSV to write")
    p.add_argument(
        "--links",
        type=Path,
        help="also write every link with its score, what decided it and each signal's "
        "similarity (posting_id,match,score,decided_by,<signal>...)",
    )
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: one process (default); ray: a Ray Data pipeline (encoder actors, "
        "sharded top-51 search; needs the [scale] extra), same submission",
    )
    p.add_argument(
        "--address", help="with --engine ray: a Ray cluster address (default: start a local one)"
    )
    p.add_argument(
        "--shards", type=int, default=1, help="with --engine ray: catalogue shards (default 1)"
    )
    p.set_defaults(func=lazy("index.cli.commands", "cmd_match"))

    p = sub.add_parser("evaluate", help="mean F1 on a labelled CSV, per signal and fused")
    p.add_argument(
        "input",
        type=Path,
        help="labelled listings CSV (with label_group), or an entity-matching folder "
        "(tableA.csv[, tableB.csv], train/valid/test.csv pairs)",
    )
    p.add_argument(
        "--split",
        default="valid",
        help="entity-matching folder: the labelled pairs scored (default valid)",
    )
    _model_args(p)
    p.add_argument("--tune", action="store_true", help="sweep every threshold on these rows")
    p.add_argument("--report", type=Path, help="write the full report as JSON")
    p.add_argument("--save-config", type=Path, help="write the best fusion config (fusion.json)")
    p.add_argument("--limit", type=int, help="use the first N label groups' rows only")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="out-of-fold table of the match-quality stages, one cumulative row each "
        "(GroupKFold by label_group; thresholds tuned on the training folds only)",
    )
    p.add_argument(
        "--oof",
        type=Path,
        help="with --ablation: a model folder (or its oof/) from `pricematch train`: use its "
        "saved out-of-fold embeddings and folds instead of embedding with --model",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=5,
        help="group-disjoint folds of --ablation, and of --tune's marginals on a model with "
        "a ranker (default 5)",
    )
    p.add_argument("--seed", type=int, default=0, help="with --ablation: fold seed")
    p.set_defaults(func=lazy("index.cli.commands", "cmd_evaluate"))

    p = sub.add_parser("build-index", help="build a bundle (index + encoders + config)")
    p.add_argument("input", type=Path, help="catalogue CSV")
    _model_args(p)
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.set_defaults(func=lazy("index.cli.commands", "cmd_build_index"))

    p = sub.add_parser("sample", help="write a small synthetic catalogue with images")
    p.add_argument("--out", type=Path, required=True, help="folder for listings.csv and images/")
    p.add_argument("--products", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lazy("index.cli.commands", "cmd_sample"))


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, help="folder holding the `image` files")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bundle", type=Path, help="bundle folder: its encoders and thresholds")
    g.add_argument(
        "--model",
        type=Path,
        default=os.environ.get("PRICEMATCH_MODEL") or None,
        help="model folder (text/, image/, fusion.json), e.g. from export-default or train "
        "[env PRICEMATCH_MODEL]",
    )
    p.add_argument("--config", type=Path, help="fusion.json overriding the model's thresholds")
    p.add_argument(
        "--no-ranker",
        action="store_true",
        help="ignore the model's pair re-ranker (decide by the fusion thresholds); with "
        "--ablation: no re-ranker row",
    )
    p.add_argument(
        "--signals",
        default=",".join(SIGNALS),
        help="comma-separated signals to use (default: all available: %(default)s)",
    )
    add_text_options(p)
    p.add_argument(
        "--cache",
        type=Path,
        help="folder keeping the text/image embeddings of this input: a re-run with other "
        "thresholds or options does not re-encode (keyed by the encoder files and the "
        "titles / image files)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_text_options(p: argparse.ArgumentParser) -> None:
    """--fields, --sources, --tfidf-codes, --tfidf-char, --char-source (see `with_options`,
    `fields_of`)."""
    p.add_argument(
        "--fields",
        help="comma-separated columns (CSV) or attributes (entity-matching tables) joined, "
        "in this order, into each listing's title (default: title; tables without one: "
        "every attribute); NAME:W weighs a field's words in TF-IDF (default 1; 0 leaves "
        "them out of TF-IDF), e.g. title:1,description:0.3",
    )
    p.add_argument(
        "--sources",
        choices=SOURCE_MODES,
        help="with a `source` column (or two entity-matching tables): any = sources ignored, "
        "cross = link other sources only, cross_first = other sources first; the "
        "at-least-one-match rule takes the nearest other-source row (default: fusion.json's)",
    )
    p.add_argument(
        "--tfidf-codes",
        choices=["on", "off"],
        help="TF-IDF: add model codes with separators removed (DSC-W120 = DSCW120) as words "
        "(default: fusion.json's)",
    )
    p.add_argument(
        "--tfidf-char",
        metavar="MIN-MAX|off",
        help="TF-IDF: add character n-grams MIN..MAX within words, e.g. 3-5 "
        "(default: fusion.json's)",
    )
    p.add_argument(
        "--char-source",
        metavar="MIN-MAX|off",
        help="the 'char' signal: a TF-IDF of character n-grams MIN..MAX within words with "
        "its own neighbours, for the pair re-ranker's candidates and features, e.g. 3-5 "
        "(default: fusion.json's)",
    )


def add_ranker_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `train ranker`."""
    p.add_argument(
        "input", help="labelled CSV (label_group) or an entity-matching folder (tableA.csv...)"
    )
    p.add_argument("--model", required=True, help="model folder the ranker is added to")
    p.add_argument("--images", help="folder holding the `image` files (CSV input)")
    p.add_argument("--folds", type=int, default=5, help="out-of-fold splits (default 5)")
    p.add_argument(
        "--pool",
        choices=["whole", "folds"],
        default="whole",
        help="label groups: whole = the CSV matched as one pool, its rows decided out of "
        "fold (the ranker then decides pools up to twice the CSV); folds = each fold "
        "matched as a pool of its own (pools up to twice a fold). Default: whole",
    )
    add_text_options(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--report", help="write the training report (JSON) here")
    p.add_argument(
        "--keep-anyway",
        action="store_true",
        help="write the ranker even where it does not beat the fusion (by default it is "
        "written only if it wins on every fold: label groups; or out of fold: pairs)",
    )
    p.add_argument(
        "--marginals",
        action="store_true",
        help="label groups: measure each signal's marginal out-of-fold F1 with the ranker "
        "(retrained without it) and leave out one that adds under 0.001",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=lazy("index.cli.ranker", "cmd_train_ranker"))
