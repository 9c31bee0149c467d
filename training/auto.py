"""`pricematch train DATA --out MODEL`: the best model a CPU budget can measure, out of fold.

Every candidate is a whole pipeline (signals, TF-IDF options, stages, the pair re-ranker),
scored on the same folds: label groups are one pool of every row (the size a catalogue
like it is matched at) whose rows are split into group-disjoint folds, each fold's rows
scored with thresholds (and ranker) fitted away from it (`index.tuning.whole`,
`index.tuning.ranker.train_on_whole`); an entity-matching folder is one pool of every
record whose labelled train pairs are split by connected component (`train_on_pairs`).

The search is greedy, cheapest candidate first within each part (`PART_ORDER`): from
TF-IDF + phash, each candidate changes one part of the best pipeline so far and is kept
only if it scores above it out of fold (`verdict`), and if the
model still matches within the match-cost cap. Candidates whose estimated CPU cost no
longer fits the budget are skipped and named. Each finished candidate is saved under
`OUT/work/train/`, so `--resume` continues a killed run from there and ends with the same
model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import Catalogue
from index.data.oof import posting_ids_sha256
from index.data.pairs import PairData, Pairs, pair_components
from index.errors import CatalogueError, PricematchError
from index.features.embed import Encoders
from index.features.encoders import Encoder, load_encoder, read_encoder_config
from index.features.tfidf import TfidfConfig
from index.matching.fusion import FusionConfig
from index.matching.ranker import Ranker, RankerConfig
from index.matching.stages import fuse_stages
from index.progress import progress
from index.store.model import FUSION, RANKER, write_model, write_ranker
from index.tuning.grids import group_folds
from index.tuning.ranker import (
    CrossMaker,
    RankPool,
    carry_f1,
    catalogue_pool,
    ranker_signals,
    sub_pool_maker,
    train_on_pairs,
    train_on_whole,
)
from index.tuning.whole import start_config, tune_groups, tune_pair_folds
from training.config import (
    DEFAULT_BUDGET_MINUTES,
    DEFAULT_MATCH_CPU_PER_1K,
    AutoConfig,
    CrossConfig,
)

__all__ = [
    "CAP_MIN_ROWS",
    "COSTS",
    "DEFAULT_BUDGET_MINUTES",
    "DEFAULT_MATCH_CPU_PER_1K",
    "PART_ORDER",
    "REPORT",
    "AutoConfig",
    "Candidate",
    "Pipeline",
    "Search",
    "Trial",
    "candidates",
    "carry_verdict",
    "cross_cost",
    "load_base",
    "verdict",
]

log = logging.getLogger(__name__)

#: The report written beside the model.
REPORT = "train_report.json"
#: Where finished candidates are kept for --resume.
WORK = Path("work") / "train"
#: Estimated CPU seconds of each step: (fixed, per 1,000 rows). From the 2-core dev VM's
#: runs on the 27k dev rows (docs/BENCHMARKS.md, "One training command"); they only order
#: the candidates and decide what the budget skips.
COSTS: dict[str, tuple[float, float]] = {
    "pool": (1.0, 0.4),  # TF-IDF, phash and their neighbours
    "char": (1.0, 0.6),  # char n-gram TF-IDF on top
    "tune": (1.0, 3.0),  # out-of-fold threshold descent
    "static": (30.0, 0.3),  # distilling the static encoder, then encoding
    "text": (2.0, 9.0),  # the transformer encoder, zero-shot
    "image": (2.0, 60.0),  # the image encoder, zero-shot, on a CPU
    "ranker": (2.0, 12.0),  # candidate pairs, LightGBM folds, the pool-size rule
    "carry": (2.0, 4.0),  # the carry check: a ranker on one fold, the rest matched
    "cross": (60.0, 1200.0),  # the cross-encoder: a fit of its 6 layers per fold
    # ... on label groups: scoring the pairs of its widest band (the fits: `cross_cost`)
    "cross_groups": (60.0, 64.0),
}
#: The cascade on label groups (7,969 Shopee dev rows, 2,000 pairs a fit: 2,302 CPU-s,
#: docs/BENCHMARKS.md): pairs in its widest band per row, and CPU seconds per pair and
#: fit of `CROSS_EPOCHS` epochs.
CROSS_PAIRS_PER_ROW = 3.2
CROSS_FIT_CPU_PER_PAIR = 0.15
CROSS_EPOCHS = 4
#: The cap counts a catalogue of fewer rows as this many (its fixed costs, imports and
#: index set-up, would otherwise dominate the per-row figure of a small catalogue).
CAP_MIN_ROWS = 5000


#: What a pool's features depend on: TF-IDF char n-grams, the text encoder, the image
#: encoder, the char source (`Pipeline.signals`).
PoolKey = tuple[bool, str | None, bool, bool]
#: The char source's n-grams (`TfidfConfig.char_source`): 3-5 within words, as measured.
CHAR_SOURCE = (3, 5)
#: How many times the ranker's CPU its graph pass makes (a second booster and the graph
#: features per fold: 190 vs 131 CPU-s on the 27k dev rows, docs/BENCHMARKS.md).
GRAPH_WIDE = 1.5
#: How many times the ranker's CPU the char source makes (27k dev rows, top 20: 1.5x: 693k
#: pairs instead of 532k, docs/BENCHMARKS.md "The char source as a ranker signal").
CHAR_WIDE = 1.5


@dataclass(frozen=True)
class Pipeline:
    """One candidate model: the choice made for each part."""

    char_ngrams: bool = False  # TF-IDF char 3-5 n-grams as a second part
    text: str | None = None  # None, "static" (distilled from the base) or "base"
    image: bool = False  # the base image encoder (zero-shot)
    unit_rule: bool = False
    reciprocal: int = 0  # min-2 reciprocal rank check (0 off)
    ranker: bool = False
    top_k: int = 20  # the ranker's candidates: each signal's top k neighbours
    floors: bool = True  # ... at or above each signal's floor (False: any similarity)
    two_hop: bool = False  # ... and the pairs joined by two confident matches
    char_source: bool = False  # ... and the char 3-5 n-gram TF-IDF's own neighbours
    graph: bool = False  # the ranker's graph pass (label groups)
    graph_hops: bool = False  # ... deciding the pairs two of its first confident links join
    cross: bool = False  # the cross-encoder cascade behind the ranker

    def ranker_config(self) -> RankerConfig:
        """The ranker's candidate settings of this pipeline."""
        cfg = RankerConfig(top_k=self.top_k, two_hop=self.two_hop, graph_pass=self.graph,
                           graph_hops=self.graph_hops)
        return cfg if self.floors else replace(cfg, floors={})

    def key(self) -> str:
        """A stable name of the pipeline (file names under WORK)."""
        raw = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def changes(self) -> list[str]:
        """What differs from the start (TF-IDF + phash), as `name` or `name=value`."""
        start = asdict(Pipeline())
        return [
            k if v is True else f"{k}={v}"
            for k, v in asdict(self).items()
            if v != start[k]
        ]

    def signals(self) -> PoolKey:
        """What its features depend on (pools are shared by pipelines with the same)."""
        return self.char_ngrams, self.text, self.image, self.char_source


@dataclass(frozen=True)
class Candidate:
    """A change to the best pipeline so far."""

    name: str
    part: str
    change: Callable[[Pipeline], Pipeline]
    applies: Callable[[Pipeline], bool] = lambda p: True


@dataclass(frozen=True)
class Scored:
    """What scoring a pipeline out of fold gives (`Search.score`)."""

    fold_f1: list[float]
    config: FusionConfig
    ranker: Ranker | None = None
    carry_f1: list[float] = field(default_factory=list)
    candidate_recall: list[float] = field(default_factory=list)


@dataclass
class Trial:
    """One row of the table: a pipeline scored out of fold (or skipped)."""

    name: str
    part: str
    pipeline: Pipeline
    fold_f1: list[float] = field(default_factory=list)
    carry_f1: list[float] = field(default_factory=list)  # the ranker's carry check
    #: per fold, the share of its true pairs among the ranker's candidates (label groups)
    candidate_recall: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    match_cpu_1k: float = float("nan")  # CPU-s per 1k rows to match with this pipeline
    kept: bool = False
    note: str = ""
    config: FusionConfig | None = None
    ranker: Ranker | None = None

    @property
    def f1(self) -> float:
        return float(np.mean(self.fold_f1)) if self.fold_f1 else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "part": self.part,
            "pipeline": asdict(self.pipeline),
            "fold_f1": self.fold_f1,
            "f1": self.f1 if self.fold_f1 else None,
            "carry_f1": self.carry_f1,
            "candidate_recall": self.candidate_recall,
            "cpu_s": round(self.cpu_s, 1),
            "match_cpu_per_1k": None if np.isnan(self.match_cpu_1k) else self.match_cpu_1k,
            "kept": self.kept,
            "note": self.note,
        }


#: The order of the parts tried (cheapest first within each): the ranker first, since it
#: is what most often wins and it changes what every other part is worth (a TF-IDF option
#: or a signal that adds nothing to the fusion's thresholds can add to the ranker's, and
#: the other way round: docs/BENCHMARKS.md, "One training command"); then its candidates
#: (no floors, a wider top k: a true pair that is no candidate is never matched); then the
#: TF-IDF options and the signals, weighed with the ranker when it was kept; the fusion's
#: stages, and only without a ranker (it decides instead of them); the cross-encoder
#: cascade last (with a ranker): it costs more than all the rest together (WDC computers:
#: 1,409 of 1,530 CPU-s; 7,969 Shopee dev rows: 2,302 of 2,351) and is weighed on the
#: pipeline that won them.
PART_ORDER = {"ranker": 0, "candidates": 1, "tfidf": 2, "signal": 3, "stage": 4, "cascade": 5}
#: Each signal's top 50 instead of 20 is not a candidate: measured, it wins out of fold at
#: the pool trained on (+0.0006 on the 27k dev rows, +0.005 on a 5k sample) and loses when
#: the 5k sample's model matches the other 22k rows (0.711 vs 0.742, at any threshold), a
#: loss the carry check cannot see from a 5k sample (docs/BENCHMARKS.md, "The carry check").


def candidates(base: Encoders, images: bool, groups: bool = True) -> list[Candidate]:
    """What the search tries (it orders them by estimated cost); `groups`: the data are
    label groups (not labelled pairs).

    No encoder fine-tuned on the data is among them: scored out of fold in one pool, each
    fold's rows would be embedded by another model (the one fine-tuned on the other folds),
    so rows of different folds, in different spaces, hardly ever look alike and every fold
    is matched as if alone in a pool a fifth of the size. Measured (docs/BENCHMARKS.md,
    "The carry check, and a fine-tuned encoder …"): 0.92 out of fold on 5k rows, kept,
    then 0.62 on the other 22k rows against 0.76 without it. A fine-tuned encoder
    (`train text`) is weighed as the base encoder (`--base`) on other labelled rows.
    """
    kind = read_encoder_config(base.text.folder)["encoder"] if base.text is not None else None
    static_ok = kind == "onnx-text"
    out = [
        Candidate("TF-IDF char 3-5 n-grams", "tfidf", lambda p: replace(p, char_ngrams=True)),
        Candidate(
            "unit rule", "stage", lambda p: replace(p, unit_rule=True), lambda p: not p.ranker
        ),
        Candidate(
            "min-2 reciprocal 3", "stage", lambda p: replace(p, reciprocal=3),
            lambda p: not p.ranker,
        ),
        Candidate("pair re-ranker", "ranker", lambda p: replace(p, ranker=True)),
        Candidate(
            "candidates: no similarity floors", "candidates",
            lambda p: replace(p, floors=False), lambda p: p.ranker and p.floors,
        ),
    ]
    out.append(Candidate(  # fitted on the labelled pairs or the pool's pairs, out of fold
        "cascade: cross-encoder on the uncertain band", "cascade",
        lambda p: replace(p, cross=True), lambda p: p.ranker and not p.cross,
    ))
    out.append(Candidate(
        "candidates: char n-gram source", "candidates",
        lambda p: replace(p, char_source=True), lambda p: p.ranker and not p.char_source,
    ))
    if groups:  # out of fold on label groups only (pairwise folds score labelled pairs)
        out.append(Candidate(
            "decision: a graph pass over the first pass's scores", "candidates",
            lambda p: replace(p, graph=True), lambda p: p.ranker and not p.graph,
        ))
        out.append(Candidate(
            "candidates: two hops through confident matches", "candidates",
            lambda p: replace(p, two_hop=True), lambda p: p.ranker and not p.two_hop,
        ))
        out.append(Candidate(  # the hop pairs trained on and decided by the graph pass
            "candidates: two hops in the graph pass", "candidates",
            lambda p: replace(p, graph_hops=True), lambda p: p.graph and not p.graph_hops,
        ))

    def text(name: str, value: str, applies: Callable[[Pipeline], bool]) -> Candidate:
        return Candidate(f"text: {name}", "signal", lambda p: replace(p, text=value), applies)

    if static_ok:
        out.append(text("static, distilled from the base encoder", "static",
                        lambda p: p.text is None))
    if base.text is not None:
        out.append(text(f"base encoder ({kind}, as given)", "base", lambda p: p.text != "base"))
    if images and base.image is not None:
        out.append(
            Candidate("image: base encoder (as given)", "signal", lambda p: replace(p, image=True))
        )
    return out


def cross_cost(rows: int, cross: CrossConfig, folds: int) -> float:
    """Estimated CPU seconds of the cascade on label groups: scoring its widest band's
    pairs (`COSTS["cross_groups"]`) and a fit per fold and a final one, each on the band
    pairs not touching its fold, at most `cross.max_pairs`."""
    pairs = min(cross.max_pairs, CROSS_PAIRS_PER_ROW * rows * (folds - 1) / folds)
    per_pair = CROSS_FIT_CPU_PER_PAIR * cross.epochs / CROSS_EPOCHS
    return _cost("cross_groups", rows) + (folds + 1) * pairs * per_pair


def verdict(new: list[float], old: list[float]) -> str | None:
    """Whether per-fold scores `new` beat `old`: None when they do, else why not.

    They do when they are above on every fold that can tell (a fold at F1 1.0 for both
    cannot), or above on most of them with a mean gain over the folds larger than its
    standard error (a fold or two of noise, as small folds have, does not sink a part whose
    gain holds on the others; a gain no larger than its spread does not count)."""
    pairs = [(a, b) for a, b in zip(new, old, strict=True) if not a == b == 1.0]
    if not pairs:
        return "no fold can tell (F1 1.0 on all)"
    gain = np.array([a - b for a, b in pairs])
    above = int((gain > 0).sum())
    if above == len(gain):
        return None
    if 2 * above <= len(gain):
        return f"above on {above} of {len(gain)} folds"
    se = float(gain.std(ddof=1) / np.sqrt(len(gain)))
    if gain.mean() > se:
        return None
    return f"mean gain {gain.mean():+.4f} not above its standard error {se:.4f}"


def carry_verdict(new: list[float], old: list[float]) -> str | None:
    """Whether the carry check (`index.tuning.ranker.carry_f1`) of `new` beats `old`'s:
    None when it does on every check or when either has none (a fusion, labelled pairs),
    else why not. Strictly above: a tie does not buy a part its cost."""
    if not new or not old:
        return None
    lost = [(a, b) for a, b in zip(new, old, strict=True) if not a > b]
    if not lost:
        return None
    a, b = lost[0]
    return f"loses carried to a bigger pool ({a:.4f} vs {b:.4f})"


def _cost(kind: str, rows: int) -> float:
    fixed, per_1k = COSTS[kind]
    return fixed + per_1k * rows / 1000.0


class Search:
    """The greedy out-of-fold search over one catalogue (see the module doc)."""

    def __init__(
        self,
        cat: Catalogue,
        base: Encoders,
        out: Path,
        config: AutoConfig,
        pairs: PairData | None = None,
        images: bool = False,
        resume: bool = False,
        show_progress: bool = False,
    ) -> None:
        self.cat, self.base, self.out, self.config = cat, base, out, config
        self.data, self.images, self.show = pairs, images, show_progress
        self.work = out / WORK
        self.n = len(cat)
        self.pools: dict[PoolKey, RankPool] = {}
        self.pool_cpu: dict[PoolKey, float] = {}
        # the pools of the trials finished so far, run or resumed: what the estimates take
        # as made (so a resumed run decides as the uninterrupted one did)
        self.made: set[PoolKey] = set()
        self._folds()
        self._open_work(resume)

    # -- folds and the work folder -------------------------------------------------------

    def _folds(self) -> None:
        k = self.config.folds
        if self.data is None:
            labels = self.cat.labels
            self.fold_of = np.full(self.n, -1, np.int64)
            for f, (_, rows) in enumerate(group_folds(labels, k, self.config.seed)):
                self.fold_of[rows] = f
            self.train_pairs: Pairs | None = None
            return
        train = self.data.pairs("train")
        self.train_pairs = train
        self.groups = pair_components(self.n, train)
        self.pair_fold = np.full(len(train), -1, np.int64)
        for f, (_, va) in enumerate(group_folds(self.groups[train.left], k, self.config.seed)):
            self.pair_fold[va] = f

    def _identity(self) -> dict[str, Any]:
        return {
            "rows": posting_ids_sha256(self.cat.posting_id),
            "titles": hashlib.sha256("\n".join(self.cat.title).encode()).hexdigest(),
            "labels": hashlib.sha256(
                (self.fold_of if self.data is None else self.pair_fold).tobytes()
            ).hexdigest(),
            "folds": self.config.folds,
            "seed": self.config.seed,
            "images": self.images,
            "cross": asdict(self.config.cross),
        }

    def _open_work(self, resume: bool) -> None:
        state = self.work / "state.json"
        ident = self._identity()
        if resume and state.is_file():
            had = json.loads(state.read_text(encoding="utf-8"))
            if had != ident:
                raise PricematchError(
                    f"--resume: {self.work} was started on other data or folds; run "
                    "without --resume to start again"
                )
            return
        if resume:
            log.info("--resume: nothing to resume in %s, starting", self.work)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(ident), encoding="utf-8")

    # -- encoders and pools --------------------------------------------------------------

    def static_text(self) -> Encoder:
        """The static encoder distilled from the base text encoder (kept in WORK)."""
        from training.compress import distill_static

        folder = self.work / "static-text"
        if not (folder / "done").is_file():
            assert self.base.text is not None
            shutil.rmtree(folder, ignore_errors=True)
            distill_static(
                self.base.text.folder,
                folder,
                corpus=list(self.cat.title),
                show_progress=self.show,
            )
            (folder / "done").write_text("", encoding="utf-8")
        return load_encoder(folder, device=self.config.device)  # type: ignore[arg-type]

    def _text(self, which: str | None) -> Encoder | None:
        if which is None:
            return None
        return self.static_text() if which == "static" else self.base.text

    def encoders(self, p: Pipeline) -> Encoders:
        """The encoders pipeline `p` runs."""
        return Encoders(text=self._text(p.text), image=self.base.image if p.image else None)

    def fusion_base(self, p: Pipeline) -> FusionConfig:
        """The fusion settings a pipeline starts its tuning from."""
        tf = TfidfConfig(
            code_tokens=True,
            char_ngrams=(3, 5) if p.char_ngrams else None,
            char_source=CHAR_SOURCE if p.char_source else None,
        )
        cfg = FusionConfig(tfidf=tf, min2_reciprocal=p.reciprocal)
        return cfg.with_stages(unit_rule=p.unit_rule)

    def pool(self, p: Pipeline) -> RankPool:
        key = p.signals()
        if key in self.pools:
            return self.pools[key]
        labels = self.cat.labels if self.data is None else None
        enc = self.encoders(p)
        c0 = time.process_time()
        self.pools[key] = catalogue_pool(
            self.cat, enc, self.fusion_base(p), self.config.device, labels, self.show
        )
        self.pool_cpu[key] = time.process_time() - c0
        return self.pools[key]

    def match_cost(self, p: Pipeline, config: FusionConfig, ranker: Ranker | None) -> float:
        """CPU seconds per 1,000 rows to match the catalogue with `p`: its features and
        neighbours (as measured when its pool was made), then one decision, timed."""
        pool = self.pool(p)
        c0 = time.process_time()
        if ranker is not None:
            ranker.match(pool.features, pool.nb, pool.titles)
        else:
            fuse_stages(pool.nb, config, pool.titles, source=self.cat.source_codes)
        decide = time.process_time() - c0
        return (self.pool_cpu[p.signals()] + decide) * 1000.0 / self.n

    def estimate(
        self, p: Pipeline, made: set[PoolKey] | None = None
    ) -> float:
        """Estimated CPU seconds to score `p` when the pools of `made` exist (default:
        those made so far; a pool already made costs nothing)."""
        n = self.n
        s = 0.0
        if p.signals() not in (self.made if made is None else made):
            s += _cost("pool", n) + _cost("char", n) * (p.char_ngrams + p.char_source)
            if p.text == "static":
                s += _cost("static", n)
            elif p.text == "base":
                s += _cost("text", n)
            if p.image:
                s += _cost("image", n)
        s += _cost("tune", n)
        if p.ranker:  # its cost grows with the candidate pairs
            wide = p.top_k / 20 * (1.0 if p.floors else 1.1) * (CHAR_WIDE if p.char_source else 1)
            wide *= GRAPH_WIDE if p.graph else 1
            s += (_cost("ranker", n) + (_cost("carry", n) if self.data is None else 0.0)) * wide
        if p.cross:
            s += _cost("cross", n) if self.data is not None else cross_cost(
                n, self.config.cross, self.config.folds)
        return s

    # -- scoring -------------------------------------------------------------------------

    def score(self, p: Pipeline) -> Scored:
        """`p` out of fold: each fold's F1, the fusion config kept, the ranker kept, and
        (label groups; none for a fusion or labelled pairs) the ranker's carry check and
        its candidate recall per fold."""
        pool = self.pool(p)
        present = pool.features.present()
        start = start_config(pool.nb, self.fusion_base(p), present)
        dev = self.config.device
        if self.data is None:
            assert pool.labels is not None
            tuned = tune_groups(
                pool.nb, pool.titles, pool.labels, self.fold_of, start, show_progress=self.show
            )
            if not p.ranker:
                return Scored(tuned.fold_f1, tuned.config)
            signals = ranker_signals([pool], tuned.config)
            sub = sub_pool_maker(tuned.config, dev)
            maker, folder = (self._cross_maker(), self.work / f"{p.key()}_cross") if p.cross \
                else (None, None)
            ranker, rep = train_on_whole(
                pool, self.fold_of, signals, p.ranker_config(), show_progress=self.show,
                sub_pool=sub, cross=maker, cross_folder=folder,
            )
            # the cascade's trees are the kept ranker's, carried as it was (a tie would
            # read as a loss): its carry check is not run
            carry = [] if p.cross else carry_f1(pool, self.fold_of, signals,
                                                p.ranker_config(), sub, show_progress=self.show)
            # the pairs the ranker decides: its candidates and the graph pass's hop pairs
            recall = [round(float(f.get("decided_recall", f["candidate_recall"])), 4)
                      for f in rep["folds"]]
            return Scored(list(rep["oof_f1"]), tuned.config, ranker, carry, recall)
        train = self.train_pairs
        assert train is not None
        src = self.cat.source_codes
        tuned_p = tune_pair_folds(
            pool.nb, pool.titles, (train.left, train.right, train.label), self.pair_fold,
            start, source=src, show_progress=self.show,
        )
        if not p.ranker:
            return Scored(tuned_p.fold_f1, tuned_p.config)
        signals = ranker_signals([pool], tuned_p.config)
        cross, folder = None, None
        if p.cross:
            titles = pool.titles
            cross = self._cross_maker()(
                [titles[i] for i in train.left], [titles[j] for j in train.right], train.label
            )
            folder = self.work / f"{p.key()}_cross"
        ranker, rep = train_on_pairs(
            pool, train, self.groups, signals, self.config.folds, p.ranker_config(),
            fusion=tuned_p.config, source=src, cross=cross, cross_folder=folder,
        )
        return Scored(list(rep["oof_f1"]), tuned_p.config, ranker)

    def _cross_maker(self) -> CrossMaker:
        """The cross-encoder fits of the cascade (`training.cross.CrossFit`, this search's
        `CrossConfig` and device), from pairs' titles (a, b) and labels."""
        from training.cross import CrossFit

        return partial(CrossFit, config=self.config.cross, device=self.config.device,
                       show_progress=self.show)

    def _saved(self, p: Pipeline) -> Path:
        return self.work / f"{p.key()}.json"

    def trial(self, name: str, part: str, p: Pipeline, start: bool = False) -> Trial:
        """Score `p` (or read its saved result) as a row of the table; unless it is the
        `start`, one whose features alone are over the match cap is not scored."""
        path = self._saved(p)
        if path.is_file():
            got = json.loads(path.read_text(encoding="utf-8"))
            scored = got["config"] is not None  # not one named over the match cap
            ranker = Ranker.load(self.work / p.key()) if p.ranker and scored else None
            t = Trial(name, part, p, got["fold_f1"], got.get("carry_f1", []),
                      got.get("candidate_recall", []), got["cpu_s"], got["match_cpu_1k"],
                      note="resumed" + (f"; {got['note']}" if got.get("note") else ""))
            if scored:
                t.config, t.ranker = FusionConfig.model_validate(got["config"]), ranker
            self.made.add(p.signals())
            return t
        c0 = time.process_time()
        self.pool(p)
        features_1k = self.pool_cpu[p.signals()] * 1000.0 / self.n
        if not start and not self.fast_enough(features_1k):  # it could not be kept
            return self._too_slow(name, part, p, c0, features_1k, "its features alone take")
        got = self.score(p)
        cost = self.match_cost(p, got.config, got.ranker)
        t = Trial(name, part, p, got.fold_f1, got.carry_f1, got.candidate_recall,
                  time.process_time() - c0, cost, config=got.config, ranker=got.ranker)
        if got.ranker is not None:
            got.ranker.save(self.work / p.key())
        self.made.add(p.signals())
        body = {
            "fold_f1": got.fold_f1,
            "carry_f1": got.carry_f1,
            "candidate_recall": got.candidate_recall,
            "cpu_s": t.cpu_s,
            "match_cpu_1k": cost,
            "config": got.config.model_dump(mode="json"),
        }
        self._save(path, body)
        return t

    def _too_slow(self, name: str, part: str, p: Pipeline, c0: float, cost: float,
                  what: str) -> Trial:
        """The row (saved, so --resume reads it) of a candidate not scored: matching with
        it would cost `cost` CPU-s per 1k rows, over the cap."""
        note = (f"not kept: {what} {cost:.2f} CPU-s per 1k rows, over the cap of "
                f"{self.config.match_cpu_per_1k:g}")
        t = Trial(name, part, p, [], [], [], time.process_time() - c0, cost, note=note)
        self._save(self._saved(p), {"fold_f1": [], "cpu_s": t.cpu_s, "match_cpu_1k": cost,
                                    "config": None, "note": note})
        return t

    @staticmethod
    def _save(path: Path, body: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body), encoding="utf-8")
        tmp.replace(path)  # the trial counts as finished only once this file is whole

    def fast_enough(self, cpu_per_1k: float) -> bool:
        """Whether a model matching at `cpu_per_1k` CPU-s per 1k rows is within the cap
        (a catalogue under `CAP_MIN_ROWS` rows counted as that many)."""
        cap = self.config.match_cpu_per_1k
        return cpu_per_1k * self.n <= cap * max(self.n, CAP_MIN_ROWS)

    def order(self, cands: list[Candidate]) -> list[Candidate]:
        """The order the search tries `cands` in: by part (`PART_ORDER`), then by the
        estimated cost of each change to the start (stable: a tie keeps the list's order,
        so a part that applies only behind another, e.g. the graph pass's hops, comes
        after it). It does not depend on what is resumed."""
        start = {Pipeline().signals()}
        return sorted(
            cands, key=lambda c: (PART_ORDER[c.part], self.estimate(c.change(Pipeline()), start))
        )

    def run(self) -> tuple[Trial, list[Trial]]:
        """The greedy search; returns the best trial and every row of the table."""
        budget = self.config.budget_minutes * 60.0
        best = self.trial("TF-IDF + phash fusion (start)", "fusion", Pipeline(), start=True)
        best.kept = True
        rows = [best]
        cands = self.order(candidates(self.base, self.images, groups=self.data is None))
        for c in progress(cands, desc="train: candidates", unit="cand", disable=not self.show):
            if not c.applies(best.pipeline):
                continue
            p = c.change(best.pipeline)
            spent = sum(t.cpu_s for t in rows)  # as measured when each trial ran
            need = self.estimate(p)
            if not self._saved(p).is_file() and spent + need > budget:
                rows.append(
                    Trial(c.name, c.part, p, note=f"skipped: needs ~{need:.0f} CPU-s, "
                          f"{max(0.0, budget - spent):.0f} left of the budget")
                )
                continue
            t = self.trial(c.name, c.part, p)
            if not t.fold_f1:  # stopped early: too slow to match
                rows.append(t)
                self.pools.pop(p.signals(), None)
                continue
            why = verdict(t.fold_f1, best.fold_f1) or carry_verdict(t.carry_f1, best.carry_f1)
            cap = self.config.match_cpu_per_1k
            t.kept = why is None and self.fast_enough(t.match_cpu_1k)
            if why is None and not t.kept:
                t.note = (t.note + "; " if t.note else "") + (
                    f"not kept: it wins, but matches at {t.match_cpu_1k:.2f} "
                    f"CPU-s per 1k rows, over the cap of {cap:g}"
                )
            elif t.kept:
                t.note = (t.note + "; " if t.note else "") + "kept"
                best = t
            else:
                t.note = (t.note + "; " if t.note else "") + f"not kept: {why}"
            rows.append(t)
            # every candidate changes the best pipeline: other pools are not needed again
            for key in [k for k in self.pools if k != best.pipeline.signals()]:
                del self.pools[key]
        return best, rows

    # -- the model -----------------------------------------------------------------------

    def write(self, best: Trial, rows: list[Trial], seconds: float) -> Path:
        """Write the model folder: encoders the pipeline uses, fusion.json, ranker/,
        and the report."""
        assert best.config is not None
        p = best.pipeline
        arts: dict[str, Path] = {}
        text = self._text(p.text)
        if text is not None:
            arts["text"] = text.folder
        if p.image and self.base.image is not None:
            arts["image"] = self.base.image.folder
        for stale in ("text", "image", RANKER):
            if stale not in arts and (self.out / stale).exists():
                shutil.rmtree(self.out / stale)
        write_model(self.out, best.config, arts)
        if best.ranker is not None:
            write_ranker(self.out, best.ranker)
        report = {
            "config": asdict(self.config),
            "rows": self.n,
            "mode": "groups" if self.data is None else "pairs",
            "chosen": asdict(p),
            "f1": best.f1,
            "fold_f1": best.fold_f1,
            "trials": [t.summary() for t in rows],
            "cpu_s": round(sum(t.cpu_s for t in rows), 1),
            "seconds": round(seconds, 1),
        }
        (self.out / REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
        return self.out / FUSION


def load_base(folder: Path | None, work: Path, device: str = "cpu") -> Encoders:
    """The encoders the candidates start from: a model folder's text/ and image/ (as
    `export-default` writes them), or, without one, the packaged encoders exported once
    into `work/base` (needs the [train] extra)."""
    if folder is None:
        folder = work / "base"
        if not (folder / "done").is_file():
            try:
                from training.export import export_default
            except ImportError as e:
                raise PricematchError(
                    f"train without --base exports the packaged encoders, which needs the "
                    f"[train] extra (pip install 'pricematch[train]'): {e}"
                ) from e
            export_default(folder)
            (folder / "done").write_text("", encoding="utf-8")
    enc = Encoders()
    for m in ("text", "image"):
        if (folder / m / "config.json").is_file():
            setattr(enc, m, load_encoder(folder / m, device=device))  # type: ignore[arg-type]
    if enc.text is None and enc.image is None:
        raise CatalogueError(f"--base {folder}: no text/ or image/ encoder folder in it")
    return enc
