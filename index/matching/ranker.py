"""The pair re-ranker: a gradient-boosted classifier (LightGBM) deciding candidate pairs.

Candidates are the union of every signal's top `RankerConfig.top_k` neighbours above a low
floor; each unordered pair (i < j) gets features (`pair_features`): each signal's exact
similarity where it can be computed (TF-IDF, text, image; phash distance), its rank in both
directions and each side's neighbourhood density (the similarity of the 2nd and 10th
neighbour), the density (and with `RankerConfig.scaled_ranks` the ranks) read at the
pool's scale (`RankerConfig.density_rows`), the stage signals' similarities where they
list the pair, and title features
(lengths, token overlap, shared and conflicting numbers and model codes, the unit rule's
verdict; with the ranker's word weights, the rarest word in one title only and the weight
share of such words). `rank_matches` keeps pairs whose probability reaches `threshold`, gives a row
left alone its best candidate at `single_threshold` (at-least-one-match), caps at 50.

No torch: the booster is LightGBM's text model, read at serving time.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from index.errors import EncoderError
from index.features.embed import Features
from index.features.encoders import Device
from index.features.text import Quantities, WordWeights, model_codes, normalize_title
from index.matching.cross import Cascade, PairScorer
from index.matching.fusion import Neighbours

#: The cross-encoder's artifact folder inside a ranker folder (a kept cascade only).
CROSS = "cross"
#: The graph pass's booster inside a ranker folder (a kept graph pass only).
GRAPH = "graph.txt"
#: Signals whose similarity is computed exactly for any pair (the others are looked up in
#: their neighbour lists).
EXACT = ("tfidf", "char", "text", "image")
#: The pool sizes, as ratios to the tuned pool, the pool-size rule was measured on: a ranker
#: trained by `pricematch train` on 5k Shopee dev rows beat the fusion trained the same way
#: on held-out pools of 0.25x to 4x (benchmarks/ranker_carry.py, docs/BENCHMARKS.md). The
#: ranker decides any pool; past this range its thresholds stay where the rule puts them at
#: the range's end (and a warning says so).
POOL_RANGE = (0.25, 4.0)
#: Neighbour ranks (1 = nearest other row) whose similarity measures a row's density, in
#: a pool of the size the ranker was trained on (`RankerConfig.density_rows`); another
#: pool reads them at `density_rank`.
DENSITY_RANKS = (1, 9)
#: The title columns of `pair_features`, in order.
TITLE_FEATURES = (
    "len_min",
    "len_max",
    "jaccard",
    "num_shared",
    "num_conflict",
    "code_shared",
    "code_conflict",
    "unit_conflict",
)
#: The columns a ranker with word weights (`WordWeights`, saved with it) adds after them:
#: over the words in one title only, the largest weight and their share of the pair's.
WEIGHT_FEATURES = ("diff_idf_max", "diff_idf_share")
#: The columns the graph pass (`graph_features`) adds to a pair's: over the first pass's
#: probabilities of the pool's candidate pairs (confident: at or above `CONFIDENT`), each
#: a share in [0, 1], so that they mean the same in a pool of any size (degrees and sums
#: grow with the pool's look-alikes and did not carry to a bigger pool); each share is
#: taken over the smaller side and over the larger ("_max"): a row of a big group and a
#: singleton's look-alike differ in the larger side.
GRAPH_FEATURES = (
    "p_first",
    "common_soft_share",
    "common_share",
    "p_over_best",
    "common_soft_share_max",
    "common_share_max",
    "p_over_best_max",
)
#: A first-pass probability the graph features count as a confident link.
CONFIDENT = 0.5
#: Numbers that stand alone or lead a unit ("3gr"), not the digits inside a code ("a12b").
_NUM = re.compile(r"(?<![a-z\d.,])\d+(?:[.,]\d+)?")


@dataclass(frozen=True)
class RankerConfig:
    """Candidate generation and the decision rule (saved with the ranker)."""

    top_k: int = 20
    floors: dict[str, float] = field(
        default_factory=lambda: {
            "tfidf": 0.2,
            "phash": 0.75,
            "text": 0.5,
            "image": 0.4,
            "combined": 0.3,
        }
    )
    threshold: float = 0.5
    single_threshold: float = 0.2
    max_matches: int = 50
    #: Transitivity at decision time: the pairs joined by two confident matches (p at or
    #: above `threshold`) that are no candidates are scored too (`add_two_hops`), and
    #: decided with the rest. A whole pool only (`match`, `evaluate`, `/batch-match`): one
    #: listing at `/match` is decided against its own candidates.
    two_hop: bool = False
    #: With `two_hop`: how many times the hops are taken, each round through the confident
    #: matches of the pairs scored so far (round 2 reaches pairs up to four matches apart).
    hop_rounds: int = 1
    #: Train a graph pass (`Ranker.graph`): a second booster over each pair's features and
    #: its `graph_features` among the first pass's scored candidates (label groups,
    #: `train_on_whole`).
    graph_pass: bool = False
    #: With the graph pass: the pairs joined by two of the first pass's confident matches
    #: (p at or above `CONFIDENT`) that are no candidates (`hop_pairs`) are scored by the
    #: first booster and decided by the second with the rest, which is trained on them too
    #: (their graph features read the candidates' graph: a hop pair's common partner is
    #: its reason). A whole pool only, as `two_hop`.
    graph_hops: bool = False
    #: The pool-size rule: the thresholds were tuned on pools of `pool_rows` rows and move
    #: by `pool_slope` per doubling of the pool (fitted on sub-pools out of fold).
    pool_rows: int = 0
    pool_slope: float = 0.0
    #: The pool size the density and rank features were read at in training: a pool of n
    #: rows reads each of `DENSITY_RANKS` past the first at r * sqrt(n / density_rows)
    #: (`density_scale`, `density_rank`; the nearest other row as listed) and (with
    #: `scaled_ranks`) divides a pair's ranks by that scale, so that a row's
    #: density and a pair's rank mean about the same in a pool of any size (0: at r whatever
    #: the pool, as rankers before it and those trained on several pools or on labelled
    #: pairs; `train_on_whole` sets its pool's size). A row's near neighbours are its
    #: group's rows, whose number does not grow with the pool, and look-alikes, whose
    #: number does: the square root is halfway between the two on a log scale
    #: (benchmarks in docs/BENCHMARKS.md).
    density_rows: int = 0
    #: Whether a pair's rank columns are read at the pool's scale too (divided by
    #: `density_scale`): `train_on_whole` sets it with the graph pass, whose carry checks
    #: it lifted, and not without, whose it lowered (docs/BENCHMARKS.md); False for
    #: rankers saved before it, which read ranks as listed.
    scaled_ranks: bool = False

    def __post_init__(self) -> None:
        if self.graph_hops and not self.graph_pass:
            raise ValueError("graph_hops are decided by the graph pass: set graph_pass too")
        if self.hop_rounds < 1:
            raise ValueError(f"hop_rounds must be at least 1, got {self.hop_rounds}")

    def measured_for(self, n: int) -> bool:
        """Whether a pool of `n` rows is within the measured `POOL_RANGE` of the pools the
        ranker was tuned on (any size when that is unknown)."""
        lo, hi = POOL_RANGE
        return not self.pool_rows or lo * self.pool_rows <= n <= hi * self.pool_rows

    def for_pool(self, n: int) -> RankerConfig:
        """The thresholds moved to a pool of `n` rows: by `pool_slope` per doubling from
        `pool_rows`, the ratio clipped to `POOL_RANGE`, the thresholds to [0.01, 0.99]."""
        if not self.pool_rows or not self.pool_slope or n <= 0:
            return self
        lo, hi = POOL_RANGE
        d = self.pool_slope * float(np.log2(min(hi, max(lo, n / self.pool_rows))))

        def clip(t: float) -> float:
            return float(min(0.99, max(0.01, t + d)))

        return replace(
            self, threshold=clip(self.threshold), single_threshold=clip(self.single_threshold)
        )

    def density_scale(self, n: int) -> float:
        """The factor a pool of `n` rows reads the density ranks at (see `density_rows`)."""
        if not self.density_rows or n <= 0:
            return 1.0
        return float(np.sqrt(n / self.density_rows))


def candidate_pairs(nb: dict[str, Neighbours], n: int, config: RankerConfig) -> np.ndarray:
    """(m, 2) int64 unordered candidate pairs (i < j), sorted: any signal's top_k neighbour
    (itself excluded) at or above that signal's floor (signals without a floor: any)."""
    parts = []
    for name, (D, I) in nb.items():
        kk = min(config.top_k + 1, I.shape[1])
        Dk, Ik = D[:, :kk], I[:, :kk]
        rows = np.broadcast_to(np.arange(n)[:, None], Ik.shape)
        ok = (Ik >= 0) & (Ik != rows) & (Dk >= config.floors.get(name, -np.inf))
        a, b = rows[ok], Ik[ok]
        parts.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    if not parts:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(parts).astype(np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def two_hop_pairs(edges: np.ndarray, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """(m, 2) int64 sorted unordered pairs (i < j) joined by two of the (e, 2) `edges`
    (i - x - j, e.g. confident matches) and not one edge themselves nor in the sorted
    unordered `exclude` (e.g. the candidates already): one sparse product, no loop."""
    if len(edges) == 0:
        return np.zeros((0, 2), np.int64)
    a, b = edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64)
    ones = np.ones(2 * len(a), np.float32)
    A = sp.csr_matrix((ones, (np.r_[a, b], np.r_[b, a])), shape=(n, n))
    A.data[:] = 1.0  # an edge given twice counts once
    two = sp.triu(A @ A, k=1).tocoo()  # (n, n): i < j sharing a neighbour
    one = sp.triu(A, k=1).tocsr()
    pairs = np.stack([two.row, two.col], axis=1).astype(np.int64)
    pairs = pairs[np.asarray(one[pairs[:, 0], pairs[:, 1]]).ravel() == 0] if len(pairs) else pairs
    if exclude is not None and len(exclude) and len(pairs):
        key = pairs[:, 0] * n + pairs[:, 1]
        pairs = pairs[~np.isin(key, exclude[:, 0].astype(np.int64) * n + exclude[:, 1])]
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order]


def hop_pairs(pairs: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """(h, 2) sorted unordered pairs joined by two of the (m, 2) sorted unordered `pairs`
    whose first-pass probability `p` (m,) is at or above `CONFIDENT`, not among `pairs`:
    the graph pass's hop pairs (`RankerConfig.graph_hops`)."""
    return two_hop_pairs(pairs[p >= CONFIDENT], n, exclude=pairs)


def add_two_hops(
    pairs: np.ndarray,
    p: np.ndarray,
    threshold: float,
    n: int,
    score: Callable[[np.ndarray], np.ndarray],
    rounds: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The (m, 2) scored candidate `pairs` and their (m,) `p`, with the pairs joined by two
    of those at or above `threshold` (`two_hop_pairs`) appended, scored by `score`; `rounds`
    times, each round through every pair scored so far (until one adds none)."""
    for _ in range(rounds):
        hop = two_hop_pairs(pairs[p >= threshold], n, exclude=pairs)
        if len(hop) == 0:
            break
        pairs = np.concatenate([pairs, hop])
        p = np.concatenate([p, score(hop)]).astype(np.float32)
    return pairs, p


def _lookup(nb: Neighbours, n: int, what: str) -> sp.csr_matrix:
    """n x n sparse: at (i, I[i, r]) the similarity + 3 ("sim") or rank r + 1 ("rank")."""
    D, I = nb
    rows = np.broadcast_to(np.arange(n)[:, None], I.shape)
    ok = I >= 0
    val = (D[ok].astype(np.float64) + 3.0) if what == "sim" else (np.nonzero(ok)[1] + 1.0)
    m = sp.csr_matrix((val, (rows[ok], I[ok])), shape=(n, max(n, int(I.max(initial=-1)) + 1)))
    m.sum_duplicates()
    return m


def _get(m: sp.csr_matrix, a: np.ndarray, b: np.ndarray, offset: float) -> np.ndarray:
    if len(a) == 0:  # no pair (a one-row pool): scipy's fancy indexing needs at least one
        return np.zeros(0, np.float32)
    v = np.asarray(m[a, b]).ravel().astype(np.float32)
    return np.where(v > 0, v - offset, np.nan).astype(np.float32)


def density_rank(r: int, scale: float) -> float:
    """The rank a pool at `scale` (`RankerConfig.density_scale`) reads density rank `r` at:
    the nearest other row as listed in any pool (mostly a row of the same group, which a
    bigger pool does not push down), a farther one at r * scale (look-alikes, which it
    does). Read at 1 * scale, the carry checks 1k -> 4k rows lost 0.005-0.05 F1
    (docs/BENCHMARKS.md)."""
    return float(r) if r <= 1 else r * scale


def _density(nb: Neighbours, rank: float) -> np.ndarray:
    """(n,) similarity of each row's `rank`-th other neighbour (NaN where none); a rank
    between two whole ranks interpolates their similarities (the lower one's where the
    upper has none), a rank under 1 reads the nearest."""
    D, I = nb
    n = D.shape[0]
    rows = np.arange(n)[:, None]
    other = (I >= 0) & (rows != I)
    pos = np.cumsum(other, axis=1)

    def at(k: int) -> np.ndarray:
        out = np.full(n, np.nan, np.float32)
        r, c = np.nonzero(other & (pos == k))
        out[r] = D[r, c]
        return out

    rank = max(1.0, float(rank))
    lo = int(np.floor(rank))
    w = rank - lo
    v = at(lo)
    if w > 1e-9:
        up = at(lo + 1)
        v = np.where(np.isnan(up), v, (1.0 - w) * v + w * up).astype(np.float32)
    return v


def _binary_rows(sets: Sequence[set[Any]]) -> tuple[sp.csr_matrix, list[Any]]:
    """(n, vocab) 0/1 CSR, row i with a 1 in the column of each item of sets[i]; and the
    items of the columns in order."""
    vocab: dict[Any, int] = {}
    indptr = np.zeros(len(sets) + 1, np.int64)
    cols: list[int] = []
    for i, items in enumerate(sets):
        cols += [vocab.setdefault(x, len(vocab)) for x in items]
        indptr[i + 1] = len(cols)
    data = np.ones(len(cols), np.float32)
    M = sp.csr_matrix((data, np.asarray(cols, np.int64), indptr), shape=(len(sets), len(vocab)))
    return M, list(vocab)


def _shared(M: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m,) how many columns rows a[p] and b[p] of a 0/1 matrix share."""
    return np.asarray(M[a].multiply(M[b]).sum(axis=1)).ravel()


def _title_features(
    titles: Sequence[str], a: np.ndarray, b: np.ndarray, weights: WordWeights | None = None
) -> dict[str, np.ndarray]:
    """The title columns (`TITLE_FEATURES`) of the pairs (a[p], b[p]): the titles' words,
    numbers, codes and quantities as 0/1 rows of sparse matrices, each pair's overlap one
    row-wise product (no loop over pairs)."""
    words, nums, codes = [], [], []
    for t in titles:
        words.append(set(normalize_title(t).split()))
        nums.append(set(_NUM.findall(t.lower())))
        codes.append(set(model_codes(t)))
    m = len(a)
    if m == 0:
        names = (*TITLE_FEATURES, *(WEIGHT_FEATURES if weights is not None else ()))
        return {k: np.zeros(0, np.float32) for k in names}
    f: dict[str, np.ndarray] = {}
    W, vocab = _binary_rows(words)
    size = np.diff(W.indptr)
    li, lj = size[a], size[b]
    inter = _shared(W, a, b)
    union = li + lj - inter
    f["len_min"], f["len_max"] = np.minimum(li, lj), np.maximum(li, lj)
    f["jaccard"] = np.divide(inter, union, out=np.zeros(m), where=union > 0)
    for name, sets in (("num", nums), ("code", codes)):
        M, _ = _binary_rows(sets)
        has = np.diff(M.indptr) > 0
        shared = _shared(M, a, b)
        f[f"{name}_shared"] = shared
        f[f"{name}_conflict"] = (has[a] & has[b] & (shared == 0)).astype(np.float32)
    f["unit_conflict"] = Quantities(titles).conflicts(a, b).astype(np.float32)
    names = TITLE_FEATURES
    if weights is not None:  # the same word rows, weighted
        f["diff_idf_max"], f["diff_idf_share"] = weights.differences_of(W, vocab, a, b)
        names = (*TITLE_FEATURES, *WEIGHT_FEATURES)
    return {k: np.asarray(f[k], np.float32) for k in names}


def pair_features(
    pairs: np.ndarray,
    feats: Features,
    nb: dict[str, Neighbours],
    titles: Sequence[str],
    signals: Sequence[str],
    weights: WordWeights | None = None,
    density_at: float = 1.0,
    rank_at: float = 1.0,
) -> np.ndarray:
    """(m, f) float32 features of the pairs (columns: `feature_names(signals, weights is
    not None)`); the density columns read each of `DENSITY_RANKS` at `density_rank` of
    `density_at` (`RankerConfig.density_scale`), the rank columns are the ranks over
    `rank_at`."""
    n = len(titles)
    a, b = pairs[:, 0], pairs[:, 1]
    cols: list[np.ndarray] = []
    for name in signals:
        if name == "phash":
            cols.append(feats.phash_distance(a, b))
        elif name in EXACT:
            cols.append(feats.pair_similarity(name, a, b))
        else:
            table = _lookup(nb[name], n, "sim")
            cols.append(np.fmax(_get(table, a, b, 3.0), _get(table, b, a, 3.0)))
        rank = _lookup(nb[name], n, "rank")
        r_ab, r_ba = _get(rank, a, b, 0.0), _get(rank, b, a, 0.0)
        cols += [np.fmin(r_ab, r_ba) / rank_at, np.fmax(r_ab, r_ba) / rank_at]
        for r in DENSITY_RANKS:
            d = _density(nb[name], density_rank(r, density_at))
            cols += [np.fmin(d[a], d[b]), np.fmax(d[a], d[b])]
    t = _title_features(titles, a, b, weights)
    cols += list(t.values())
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((len(a), 0), np.float32)


def feature_names(signals: Sequence[str], weighted: bool = False) -> list[str]:
    """Column names of `pair_features` for these signals (with word weights or not)."""
    out = []
    for name in signals:
        out.append(f"{name}_distance" if name == "phash" else f"{name}_sim")
        out += [f"{name}_rank_min", f"{name}_rank_max"]
        for r in DENSITY_RANKS:
            out += [f"{name}_density{r + 1}_min", f"{name}_density{r + 1}_max"]
    return [*out, *TITLE_FEATURES, *(WEIGHT_FEATURES if weighted else ())]


#: Pairs per block of `_row_dot` (bounds the rows it materialises).
_DOT_BLOCK = 65536


def _row_dot(M: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m,) float64 dot product of rows a[p] and b[p] of `M`, in blocks of pairs."""
    out = np.zeros(len(a))
    for s in range(0, len(a), _DOT_BLOCK):
        e = s + _DOT_BLOCK
        out[s:e] = np.asarray(M[a[s:e]].multiply(M[b[s:e]]).sum(axis=1)).ravel()
    return out


def graph_features(
    pairs: np.ndarray,
    p: np.ndarray,
    n: int,
    extra: np.ndarray | None = None,
    p_extra: np.ndarray | None = None,
) -> np.ndarray:
    """(m + h, len(GRAPH_FEATURES)) float32 features of the (m, 2) unordered pairs of a
    pool of `n` rows from their first-pass probabilities `p` (m,), each pair seen in the
    graph of all of them, each a share in [0, 1] whatever the pool's size: its p; the rows
    both sides link to, weighted (sum of p(a, x) p(x, b)) over the smaller side's weighted
    degree (sum of its p); the rows both link to confidently (both at or above
    `CONFIDENT`) over the smaller confident degree; p over the smaller of the two sides'
    best p; then the same three shares over the larger side. Big groups show as many
    common rows; a look-alike of a row with a better partner as p well under that row's
    best. Then the same for the (h, 2) `extra` pairs with their first-pass `p_extra` (h,)
    (hop pairs: read against the graph of `pairs`, not edges of it, so that the features
    of `pairs` do not change; p over best may exceed 1 there). Sparse products, no loop
    over pairs."""
    h = 0 if extra is None else len(extra)
    if len(pairs) == 0:
        return np.zeros((h, len(GRAPH_FEATURES)), np.float32)
    a, b = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    pp = np.asarray(p, np.float64)
    W = sp.csr_matrix((np.r_[pp, pp], (np.r_[a, b], np.r_[b, a])), shape=(n, n))
    A = W.copy()
    A.data = (A.data >= CONFIDENT).astype(np.float64)
    A.eliminate_zeros()
    deg = np.asarray(A.sum(axis=1)).ravel()
    sdeg = np.asarray(W.sum(axis=1)).ravel()
    best = np.zeros(n)
    np.maximum.at(best, a, pp)
    np.maximum.at(best, b, pp)
    if h:
        assert extra is not None and p_extra is not None and len(p_extra) == h
        a = np.r_[a, extra[:, 0].astype(np.int64)]
        b = np.r_[b, extra[:, 1].astype(np.int64)]
        pp = np.r_[pp, np.asarray(p_extra, np.float64)]
    soft, common = _row_dot(W, a, b), _row_dot(A, a, b)
    cols = [pp]
    for side in (np.minimum, np.maximum):
        cols += [
            soft / np.maximum(1e-6, side(sdeg[a], sdeg[b])),
            common / np.maximum(1.0, side(deg[a], deg[b])),
            pp / np.maximum(1e-6, side(best[a], best[b])),
        ]
    # (m + h, 7): p, then the three shares over the smaller side, then over the larger
    return np.stack(cols, axis=1).astype(np.float32)


@dataclass(frozen=True)
class ScoredPairs:
    """Scored candidate pairs of a pool of `n` rows, both directions sorted once (by row,
    best first, ties by partner id), so that many decisions (threshold tuning) do not sort
    again: `decide`."""

    a: np.ndarray  # (2m,) row
    b: np.ndarray  # (2m,) partner
    p: np.ndarray  # (2m,) float32 probability
    pos: np.ndarray  # (2m,) rank of the partner in its row, 0 = best
    n: int

    @classmethod
    def of(cls, pairs: np.ndarray, p: np.ndarray, n: int) -> ScoredPairs:
        assert pairs.shape == (len(p), 2), (pairs.shape, p.shape)
        a = np.concatenate([pairs[:, 0], pairs[:, 1]])
        b = np.concatenate([pairs[:, 1], pairs[:, 0]])
        pp = np.concatenate([p, p]).astype(np.float32)
        o = np.lexsort((b, -pp, a))
        a, b, pp = a[o], b[o], pp[o]
        pos = np.arange(len(a)) - np.searchsorted(a, np.arange(n))[a]
        return cls(a, b, pp, pos, n)

    def decide(
        self, config: RankerConfig, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`rank_matches` of these pairs."""
        a, b, pp, pos, n = self.a, self.b, self.p, self.pos, self.n
        kept = np.bincount(a[pp >= config.threshold], minlength=n)  # a prefix of each row
        cap = config.max_matches
        take = pos < np.minimum(kept, cap - 1)[a]
        # a row with no partner at the threshold takes its best at single_threshold
        take |= (kept[a] == 0) & (pos == 0) & (pp >= config.single_threshold) & (cap > 1)
        if rows is not None:
            decided = np.zeros(n, bool)
            decided[rows] = True
            take &= decided[a]
        I = np.full((n, cap), -1, np.int64)
        S = np.full((n, cap), -np.inf, np.float32)
        I[:, 0] = np.arange(n)
        S[:, 0] = np.inf
        I[a[take], 1 + pos[take]] = b[take]
        S[a[take], 1 + pos[take]] = pp[take]
        return I, S


def rank_matches(
    pairs: np.ndarray,
    p: np.ndarray,
    n: int,
    config: RankerConfig,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Matches from scored pairs: I (n, max_matches) rows, the row itself first, then its
    partners by probability (those at `threshold` or above; a row with none takes its best
    candidate at `single_threshold` or above); S the probabilities (+inf for itself).
    With `rows`, only those rows are decided (the others keep only themselves)."""
    return ScoredPairs.of(pairs, p, n).decide(config, rows)


@dataclass
class Ranker:
    """A trained pair classifier: the booster, the signals it was trained on, its config."""

    booster: Any  # lightgbm.Booster
    signals: list[str]
    config: RankerConfig
    report: dict[str, Any] = field(default_factory=dict)
    #: The word weights of its title features (None: a ranker trained without them).
    weights: WordWeights | None = None
    #: The cross-encoder cascade: which pairs the scorer reads and how (None: trees only).
    cascade: Cascade | None = None
    scorer: PairScorer | None = None
    #: The graph pass (None: one pass): a second booster over each pair's features and its
    #: `graph_features` among the pool's candidates scored by the first.
    graph: Any = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(m,) match probability of each pair's features."""
        if X.shape[0] == 0:
            return np.zeros(0, np.float32)
        return np.asarray(self.booster.predict(X, num_threads=1), np.float32)

    def match(
        self, feats: Features, nb: dict[str, Neighbours], titles: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The self-match of a pool decided by the ranker (see `rank_matches`)."""
        missing = [s for s in self.signals if s not in nb]
        if missing:
            raise EncoderError(
                f"the ranker was trained with signal(s) {', '.join(missing)}, which this run "
                f"does not compute (computed: {', '.join(nb)})"
            )
        n = len(titles)
        use = {s: nb[s] for s in self.signals}
        pairs, p = self.score_pool(candidate_pairs(use, n, self.config), feats, use, titles)
        cfg = self.config.for_pool(n)
        if cfg.two_hop:
            base = pairs

            def score_hops(hop: np.ndarray) -> np.ndarray:
                if self.graph is None:
                    return self.score(hop, feats, use, titles)
                # the graph pass reads the hop pairs among every candidate
                return self.score(np.concatenate([base, hop]), feats, use, titles)[len(base):]

            pairs, p = add_two_hops(pairs, p, cfg.threshold, n, score_hops, cfg.hop_rounds)
        return rank_matches(pairs, p, n, cfg)

    def score(
        self,
        pairs: np.ndarray,
        feats: Features,
        nb: dict[str, Neighbours],
        titles: Sequence[str],
        pool_rows: int | None = None,
    ) -> np.ndarray:
        """(m,) match probability of the (m, 2) pairs: the trees'; with a graph pass, the
        second booster's over the features and `graph_features` of these pairs (so `pairs`
        must be all the pool's candidates); where a cascade is kept, the uncertain band's
        re-decided with the cross-encoder (`Cascade.refine`). No hop pairs are added.
        `pool_rows`: the rows the neighbour lists `nb` were searched among (default: the
        pool's, `len(titles)`; a query's small pool at `/match` names its catalogue's)."""
        return self.score_pool(pairs, feats, nb, titles, hops=False, pool_rows=pool_rows)[1]

    def score_pool(
        self,
        pairs: np.ndarray,
        feats: Features,
        nb: dict[str, Neighbours],
        titles: Sequence[str],
        hops: bool = True,
        pool_rows: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The pool's (m, 2) candidate `pairs` scored as `score` does, with the graph
        pass's hop pairs (`RankerConfig.graph_hops`, with `hops`) appended and decided by
        the second booster too (a cascade re-decides the candidates only): the (m + h, 2)
        pairs and their (m + h,) probabilities. `pool_rows` as in `score`."""
        X = self.pair_features(pairs, feats, nb, titles, pool_rows)
        p = self.predict(X)
        if self.graph is not None and len(p):
            n = len(titles)
            hop = hop_pairs(pairs, p, n) if hops and self.config.graph_hops else pairs[:0]
            # no pair features for no hop pair (they build the signals' lookups anew)
            Xh = self.pair_features(hop, feats, nb, titles, pool_rows) if len(hop) else X[:0]
            G = graph_features(pairs, p, n, hop, self.predict(Xh))
            X2 = np.hstack([np.vstack([X, Xh]), G])
            p = np.asarray(self.graph.predict(X2, num_threads=1), np.float32)
            pairs = np.concatenate([pairs, hop])
        if self.cascade is not None and self.scorer is not None:
            m = len(X)  # the candidates (hop pairs keep the graph pass's probability)
            head, _ = self.cascade.refine(p[:m], pairs[:m], titles, self.scorer)
            p = np.r_[head, p[m:]].astype(np.float32)
        return pairs, p

    def pair_features(
        self,
        pairs: np.ndarray,
        feats: Features,
        nb: dict[str, Neighbours],
        titles: Sequence[str],
        pool_rows: int | None = None,
    ) -> np.ndarray:
        """`pair_features` of the pairs as this ranker was trained on them, the density
        (and with `scaled_ranks` the ranks) read at this pool's scale
        (`RankerConfig.density_scale` of `pool_rows`, default `len(titles)`)."""
        n = len(titles) if pool_rows is None else pool_rows
        s = self.config.density_scale(n)
        return pair_features(pairs, feats, nb, titles, self.signals, self.weights,
                             s, s if self.config.scaled_ranks else 1.0)

    def save(self, folder: str | Path) -> Path:
        """Write `folder/model.txt` (LightGBM) and `folder/ranker.json`."""
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(d / "model.txt"))
        meta: dict[str, Any] = {
            "format": 1,
            "signals": self.signals,
            "features": feature_names(self.signals, self.weights is not None),
            "config": asdict(self.config),
            "report": self.report,
        }
        if self.weights is not None:
            meta["word_weights"] = self.weights.to_json()
        if self.graph is not None:
            self.graph.save_model(str(d / GRAPH))
            meta["graph"] = list(GRAPH_FEATURES)
        if self.cascade is not None and self.scorer is not None:
            meta["cascade"] = asdict(self.cascade)
            cross = d / CROSS
            if self.scorer.folder.resolve() != cross.resolve():
                shutil.copytree(self.scorer.folder, cross, dirs_exist_ok=True)
        (d / "ranker.json").write_text(json.dumps(meta, indent=2, default=float), "utf-8")
        return d

    @classmethod
    def load(cls, folder: str | Path, device: Device = "auto") -> Ranker:
        """Read a folder written by `save` (a cascade's scorer runs on `device`). Raises
        EncoderError when it is not one."""
        import lightgbm

        d = Path(folder)
        if not (d / "ranker.json").is_file() or not (d / "model.txt").is_file():
            raise EncoderError(f"{d} is not a ranker folder (needs ranker.json and model.txt)")
        meta = json.loads((d / "ranker.json").read_text(encoding="utf-8"))
        if meta.get("format") != 1:
            raise EncoderError(f"{d}: ranker format {meta.get('format')!r}, expected 1")
        booster = lightgbm.Booster(model_file=str(d / "model.txt"))
        try:
            config = RankerConfig(**meta["config"])
        except (TypeError, ValueError) as e:
            raise EncoderError(f"{d}: unreadable config in ranker.json: {e}") from e
        weights = None
        if "word_weights" in meta:
            try:
                weights = WordWeights.from_json(meta["word_weights"])
            except (KeyError, TypeError, ValueError) as e:
                raise EncoderError(f"{d}: unreadable word_weights in ranker.json: {e}") from e
        if booster.num_feature() != len(feature_names(meta["signals"], weights is not None)):
            raise EncoderError(f"{d}: the model's features do not match its signals")
        graph = None
        if "graph" in meta:
            if not (d / GRAPH).is_file():
                raise EncoderError(f"{d}: ranker.json names a graph pass, {GRAPH} is missing")
            graph = lightgbm.Booster(model_file=str(d / GRAPH))
            width = len(feature_names(meta["signals"], weights is not None)) + len(GRAPH_FEATURES)
            if meta["graph"] != list(GRAPH_FEATURES) or graph.num_feature() != width:
                raise EncoderError(f"{d}: the graph pass's features do not match this version")
        cascade, scorer = None, None
        if "cascade" in meta:
            try:
                cascade = Cascade(**meta["cascade"])
            except TypeError as e:
                raise EncoderError(f"{d}: unreadable cascade in ranker.json: {e}") from e
            scorer = PairScorer(d / CROSS, device)
        return cls(booster, list(meta["signals"]), config, meta["report"], weights, cascade,
                   scorer, graph)
