"""The Kaggle self-match, one path for `pricematch match`, `evaluate`, `/batch-match` and
`--engine ray`: a neighbour step (features and every signal's k nearest rows, in this
process by `local_neighbours` or on Ray), then the stages and the fusion (`self_match`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from index.data.listings import Catalogue
from index.features.embed import Encoders, Features, embed
from index.features.encoders import Device
from index.features.tfidf import TfidfConfig
from index.matching.fusion import FusionConfig, Neighbours, to_lists
from index.matching.names import BASE_SIGNALS
from index.matching.ranker import POOL_RANGE, Ranker
from index.matching.stages import apply_stages, fuse_stages, ranker_source_links
from index.search.knn import K, hamming_self_knn, order_ties, self_knn, sparse_knn

log = logging.getLogger(__name__)


def self_neighbours(
    feats: Features, k: int = K, device: Device = "auto", show_progress: bool = False
) -> dict[str, Neighbours]:
    """Each row's k nearest rows (itself included) per available signal; equal scores in
    id order (`order_ties`, as the Ray engine's merged shards)."""
    out: dict[str, Neighbours] = {
        "tfidf": sparse_knn(feats.X, feats.X, k, show_progress=show_progress),
        "phash": hamming_self_knn(feats.phash, feats.phash_valid, k),
    }
    if feats.C is not None:
        out["char"] = sparse_knn(feats.C, feats.C, k, show_progress=show_progress)
    if feats.text is not None:
        out["text"] = self_knn(feats.text, feats.text_valid, k, device=device)
    if feats.image is not None:
        out["image"] = self_knn(feats.image, feats.image_valid, k, device=device)
    return {name: order_ties(D, I) for name, (D, I) in out.items()}


#: The neighbour step of a self-match: features and every signal's neighbours of a
#: catalogue (`local_neighbours` in this process; `index.scale.ray_engine` on Ray).
NeighbourStep = Callable[[Catalogue, Encoders], tuple[Features, dict[str, Neighbours]]]


def local_neighbours(
    tfidf_config: TfidfConfig | None = None, device: Device = "auto", show_progress: bool = False
) -> NeighbourStep:
    """The single-process neighbour step: `embed`, then `self_neighbours`."""

    def step(cat: Catalogue, encoders: Encoders) -> tuple[Features, dict[str, Neighbours]]:
        feats = embed(cat, encoders, tfidf_config=tfidf_config, show_progress=show_progress)
        return feats, self_neighbours(feats, device=device, show_progress=show_progress)

    return step


@dataclass
class SelfMatch:
    """What a self-match computed: features, neighbours after the stages, the config as
    applied (thresholds of the computed signals only), fused rows and the matches."""

    features: Features
    neighbours: dict[str, Neighbours]
    config: FusionConfig
    I: np.ndarray  # (n, max_matches) fused row ids, -1 padded
    S: np.ndarray  # (n, max_matches) float32 scores (+inf for the row itself, -inf empty)
    matches: list[list[str]]
    ranked: bool = False  # decided by the pair re-ranker (not the thresholds)

    def signals_used(self) -> list[str]:
        """The thresholded signals some row has (what a report names)."""
        return [s for s in self.neighbours if s in self.config.thresholds]

    def links(self) -> tuple[list[str], list[tuple[int, int, float, str, list[float]]]]:
        """Every link (row i, matched row j != i) with its score, what decided it and each
        used signal's exact similarity (NaN where a side lacks it).

        Returns:
            the signal names of the similarity columns, and per link (i, j, score,
            decided_by, similarities): decided_by is "ranker", the signals whose
            (pool-moved) threshold the pair reaches joined by "+", or "nearest" (the
            at-least-one-match rule).
        """
        n = self.I.shape[0]
        rows, cols = np.nonzero((self.I >= 0) & (np.arange(n)[:, None] != self.I))
        a, b = rows.astype(np.int64), self.I[rows, cols]
        names = [s for s in self.signals_used() if s in BASE_SIGNALS]
        sims = {s: self.features.pair_similarity(s, a, b) for s in names}
        cfg = self.config.for_pool(n)
        out = []
        for p in range(len(a)):
            s = [float(sims[x][p]) for x in names]
            if self.ranked:
                why = "ranker"
            else:
                hit = [x for x, v in zip(names, s, strict=True) if v >= cfg.thresholds[x]]  # type: ignore[index]
                why = "+".join(hit) or "nearest"
            out.append((int(a[p]), int(b[p]), float(self.S[rows[p], cols[p]]), why, s))
        return names, out


def self_match(
    cat: Catalogue,
    config: FusionConfig,
    encoders: Encoders | None = None,
    neighbours: NeighbourStep | None = None,
    device: Device = "auto",
    ranker: Ranker | None = None,
) -> SelfMatch:
    """Kaggle semantics, the one path of `pricematch match`, `evaluate`, `/batch-match` and
    `--engine ray`: the rows of `cat` matched among themselves (each row's matches: itself
    first, at most `config.max_matches`).

    Args:
        neighbours: the neighbour step (default: `local_neighbours(device=device)`).
        ranker: a pair re-ranker; when given, it decides the matches from the neighbours
            (after the stages) instead of the thresholds.
    """
    step = neighbours or local_neighbours(config.tfidf, device=device)
    feats, nb = step(cat, encoders or Encoders())
    nb = apply_stages(feats.parts(), nb, config, device=device)
    # the thresholds of signals computed here that some row has (an absent one matches nothing)
    present = feats.present()
    used = {k for k in nb if k in present or k not in BASE_SIGNALS}
    config = config.with_(thresholds={k: v for k, v in config.thresholds.items() if k in used})
    I, S, ranked = decide(feats, nb, config, cat.title, cat.source_codes, ranker)
    return SelfMatch(feats, nb, config, I, S, to_lists(I, cat.posting_id), ranked)


def decide(
    feats: Features,
    nb: dict[str, Neighbours],
    config: FusionConfig,
    titles: list[str],
    source: np.ndarray | None,
    ranker: Ranker | None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The one decision of a self-match on its neighbours (after the stages): the pair
    re-ranker where given (any pool size), else the fusion; the source
    mode on either. `match`, `evaluate` and `/batch-match` all decide here.

    Returns:
        I, S (n, max_matches) and whether the ranker decided (False: no ranker given).
    """
    n = len(titles)
    if ranker is not None and n > ranker.config.pool_rows > 0 and not ranker.config.measured_for(n):
        log.warning(
            "%d rows: more than %gx the %d-row pool the ranker was tuned on, the largest its "
            "pool-size rule was measured at; its thresholds stay where the rule puts them there",
            n,
            POOL_RANGE[1],
            ranker.config.pool_rows,
        )
    if ranker is not None:
        I, S = ranker.match(feats, nb, titles)
        I, S = ranker_source_links(I, S, config, source)
        return I, S, True
    I, S = fuse_stages(nb, config, titles, source=source)
    return I, S, False


def match_catalogue(
    cat: Catalogue,
    config: FusionConfig,
    encoders: Encoders | None = None,
    tfidf_config: TfidfConfig | None = None,
    device: Device = "auto",
    show_progress: bool = False,
    ranker: Ranker | None = None,
) -> tuple[list[list[str]], Features]:
    """`self_match` in this process; returns the matches and the features (TF-IDF as
    `tfidf_config`, default the config's)."""
    step = local_neighbours(tfidf_config or config.tfidf, device, show_progress)
    r = self_match(cat, config, encoders, step, device, ranker)
    return r.matches, r.features
