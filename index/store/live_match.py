"""Queries matched against a live catalogue (`index.store.live.LiveCatalogue`): by the
fusion's rules or by the pair re-ranker, each match with why it matched.

By the fusion (`match_queries`), the Kaggle rules of `index.matching.fusion.fuse` exactly:
the query is treated as one more row of the pool, its neighbours per signal are searched in
the catalogue (`LiveCatalogue.query_neighbours`), and `fuse_against` runs `fuse` on them
with the query as "the row itself". A query whose posting_id is in the catalogue *is* that
row, so matching every catalogue row this way gives what
`index.matching.selfmatch.match_catalogue` gives on the same features. By the ranker
(`rank_queries`), each query and its candidates form a small pool decided by
`Ranker.score` as a self-match's pool would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from index.errors import ConfigurationError
from index.features.embed import Features, QueryFeatures
from index.matching.fusion import FusionConfig, Neighbours, fuse, threshold
from index.matching.ranker import Ranker, candidate_pairs
from index.search.knn import K, order_ties
from index.store.live import LiveCatalogue


def fuse_against(
    signals: dict[str, Neighbours], config: FusionConfig, self_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`fuse` for queries matched against a catalogue.

    Each query is "the row itself" of `fuse` (always kept, +inf score, counts towards the cap
    and the at-least-one-match rule); a query that is catalogue row `self_rows[j]` is
    merged with that row.

    Args:
        signals: name -> (D, I), each (nq, k), I in catalogue rows (-1: none).
        config: thresholds and rules.
        self_rows: (nq,) int64, the catalogue row of each query, -1 if not in it.

    Returns:
        I (nq, max_matches) catalogue rows, -1 padded (a query not in the catalogue is left
        out, so it gets at most max_matches - 1), and S (nq, max_matches) scores, +inf for
        the query's own row.
    """
    nq = self_rows.shape[0]
    own = np.arange(nq, dtype=np.int64)[:, None]
    shifted: dict[str, Neighbours] = {}
    for name, (D, I) in signals.items():
        assert D.shape == I.shape and D.shape[0] == nq, (name, D.shape, I.shape, nq)
        J = np.where(I >= 0, I + nq, -1)
        J = np.where((I >= 0) & (self_rows[:, None] == I), own, J)
        shifted[name] = (D, J)
    If, Sf = fuse(shifted, config, nq)
    is_self = (If >= 0) & (If < nq)
    out = np.where(If >= nq, If - nq, -1)
    out = np.where(is_self, self_rows[:, None], out)
    Sf = np.where(out >= 0, Sf, -np.inf).astype(np.float32)
    o = np.argsort(out < 0, axis=1, kind="stable")  # drop the gap a left-out query leaves
    return np.take_along_axis(out, o, axis=1), np.take_along_axis(Sf, o, axis=1)


def signal_similarities(
    signals: dict[str, Neighbours], I: np.ndarray
) -> list[list[dict[str, float]]]:
    """For each match `I[j, m]`, the similarity each signal gave it (if a neighbour there)."""
    out: list[list[dict[str, float]]] = []
    for j in range(I.shape[0]):
        row: list[dict[str, float]] = []
        found = {
            name: dict(zip(Ii[j].tolist(), Di[j].tolist(), strict=True))
            for name, (Di, Ii) in signals.items()
        }
        for r in I[j].tolist():
            if r < 0:
                break
            row.append({n: float(f[r]) for n, f in found.items() if r in f})
        out.append(row)
    return out


def matched_signals(sims: dict[str, float], config: FusionConfig) -> list[str]:
    """Signals whose similarity passes its threshold (as `index.matching.fusion.threshold`
    decides)."""
    out = []
    for name, s in sims.items():
        t = config.thresholds.get(name)  # type: ignore[call-overload]
        if t is None:
            continue
        keep = threshold(np.array([[s]], np.float32), np.array([[0]]), t)
        if keep[0, 0] >= 0:
            out.append(name)
    return out


@dataclass(frozen=True)
class CatalogueMatch:
    """One match of a query: the catalogue listing, its fused score and why it matched."""

    row: int
    posting_id: str
    title: str
    score: float  # fused similarity; +inf for the query's own listing
    is_self: bool
    signals: list[str]  # "self", the signals passing their thresholds, or "nearest:<signal>"
    similarities: dict[str, float]  # each signal's similarity, where it found the listing


def search_queries(
    cat: LiveCatalogue,
    q: QueryFeatures,
    config: FusionConfig,
    self_ids: Sequence[str | None],
    k: int = K,
) -> tuple[np.ndarray, np.ndarray, dict[str, Neighbours]]:
    """Match queries against the catalogue `cat` with `fuse` rules (see `fuse_against`).

    Args:
        q: the queries' features.
        config: thresholds and rules.
        self_ids: each query's posting_id (None if it has none); one that is in the
            catalogue is that listing.

    Returns:
        I (nq, max_matches) catalogue rows, S scores, and the per-signal neighbours.

    The pool-size rule applies (`config.for_pool` of the catalogue size); the stages of
    `config.stages` that need the catalogue's own neighbourhoods (combined embedding,
    INB, alpha-QE), the reciprocal min-2 check and the unit rule are not applied here.
    """
    nb = cat.query_neighbours(q, k)
    self_rows = np.array([cat.row_or_none(p) for p in self_ids], np.int64)
    I, S = fuse_against(nb, config.for_pool(len(cat)), self_rows)
    return I, S, nb


def match_queries(
    cat: LiveCatalogue,
    q: QueryFeatures,
    config: FusionConfig,
    self_ids: Sequence[str | None],
    k: int = K,
) -> list[list[CatalogueMatch]]:
    """`search_queries`, each query's matches (best first) with why they matched.

    A match's `signals` are "self" (the query's own listing), else the signals whose
    similarity passes `config`'s threshold (`matched_signals`), else
    "nearest:<min2 signal>" (kept by the at-least-one-match rule).
    """
    I, S, nb = search_queries(cat, q, config, self_ids, k)
    out = []
    for j, sims in enumerate(signal_similarities(nb, I)):
        own_id = self_ids[j]
        row = []
        for r, s, sim in zip(I[j].tolist(), S[j].tolist(), sims, strict=False):
            if r < 0:
                break
            own = own_id is not None and cat.posting_id[r] == own_id
            used = matched_signals(sim, config) or [f"nearest:{config.min2_signal}"]
            row.append(_match_of(cat, r, float(s), own, sim, ["self"] if own else used))
        out.append(row)
    return out


def rank_queries(
    cat: LiveCatalogue,
    q: QueryFeatures,
    ranker: Ranker,
    self_ids: Sequence[str | None],
    k: int = K,
) -> list[list[CatalogueMatch]]:
    """Match queries against the catalogue `cat` with the pair re-ranker on each query's
    candidates.

    Each query and its candidates (every signal's top neighbours above the ranker's
    floors) form a small pool: the pairs' features are computed as in a self-match,
    the candidates' own neighbour lists searched in the catalogue; the decision is
    `rank_matches` (threshold, at-least-one-match, cap). A query that is a catalogue
    listing is that listing (its own row first, not a candidate).
    """
    missing = [s for s in ranker.signals if s not in cat.searched()]
    if missing:
        raise ConfigurationError(
            f"the model's ranker needs signal(s) {', '.join(missing)}, which the live "
            "catalogue does not search (stage signals are self-match only)"
        )
    nb_q = _ordered(cat.query_neighbours(q, k))
    return [
        _rank_one(cat, q, j, nb_q, cat.row_or_none(self_ids[j]), ranker, k) for j in range(len(q))
    ]


def _rank_one(
    cat: LiveCatalogue,
    q: QueryFeatures,
    j: int,
    nb_q: dict[str, Neighbours],
    own: int,
    ranker: Ranker,
    k: int,
) -> list[CatalogueMatch]:
    """One query's matches by the ranker: the query and its candidates as a small pool."""
    cfg = ranker.config.for_pool(len(cat))
    cands: list[int] = []
    for name in ranker.signals:
        D, I = nb_q[name]
        floor = cfg.floors.get(name, -np.inf)
        top = cfg.top_k + 1
        for r, d in zip(I[j, :top].tolist(), D[j, :top].tolist(), strict=True):
            if r >= 0 and r != own and d >= floor and r not in cands:
                cands.append(r)
    head = [] if own < 0 else [_match_of(cat, own, np.inf, True, {}, ["self"])]
    if not cands:
        return head
    # The small pool: 0 = the query, 1..m = the candidates; other catalogue rows keep
    # their place in neighbour lists as ids m + 1 + row (they count for ranks and density).
    m = len(cands)
    local = {c: i + 1 for i, c in enumerate(cands)}
    if own >= 0:
        local[own] = 0
    cq = cat.row_features(cands)
    nb_c = _ordered(cat.query_neighbours(cq, k))

    def remap(I: np.ndarray) -> np.ndarray:
        flat = [local.get(r, m + 1 + r) if r >= 0 else -1 for r in I.ravel().tolist()]
        return np.array(flat, np.int64).reshape(I.shape)

    nb: dict[str, Neighbours] = {}
    for name in ranker.signals:
        Dq, Iq = nb_q[name]
        Dc, Ic = nb_c[name]
        D = np.vstack([Dq[j : j + 1], Dc])
        I = remap(np.vstack([Iq[j : j + 1], Ic]))
        if own < 0:
            D, I = _as_pool_row(D, I, Dq[j], Iq[j], cands)
        nb[name] = (D, I)
    tfidf, X, _, _ = cat.features()
    C = cat.char_rows()
    pool = Features(
        tfidf=tfidf,
        X=sp.csr_matrix(sp.vstack([tfidf.transform([q.title[j]]), X[cands]])),
        phash=np.vstack([q.phash[j : j + 1], cq.phash]),
        phash_valid=np.concatenate([q.phash_valid[j : j + 1], cq.phash_valid]),
        C=None if C is None else sp.csr_matrix(
            sp.vstack([tfidf.transform_source([q.title[j]]), C[cands]])),
    )
    qd, cd = q.dense(), cq.dense()
    for name in qd:
        if name in cd:
            x = np.vstack([qd[name][0][j : j + 1], cd[name][0]])
            pool.set_dense(name, x, np.concatenate([qd[name][1][j : j + 1], cd[name][1]]))
    titles = [q.title[j], *cq.title]
    pairs = np.stack([np.zeros(m, np.int64), np.arange(1, m + 1)], axis=1)
    p = _score_small_pool(ranker, pairs, pool, nb, titles, len(cat))
    keep = p >= cfg.threshold
    if not keep.any() and p.max() >= cfg.single_threshold:
        keep[int(np.argmax(p))] = True
    order = [i for i in np.argsort(-p, kind="stable").tolist() if keep[i]]
    found = []
    for i in order[: cfg.max_matches - 1]:
        r = cands[i]
        sims = {
            name: float(nb_q[name][0][j][nb_q[name][1][j] == r][0])
            for name in ranker.signals
            if (nb_q[name][1][j] == r).any()
        }
        found.append(_match_of(cat, r, float(p[i]), False, sims, ["ranker"]))
    return head + found

def _score_small_pool(
    ranker: Ranker,
    pairs: np.ndarray,
    pool: Features,
    nb: dict[str, Neighbours],
    titles: list[str],
    pool_rows: int,
) -> np.ndarray:
    """(m,) the ranker's probability of the query's pairs (0, i) of a small pool whose
    neighbour lists were searched among `pool_rows` catalogue rows. A graph pass reads
    each pair among the pool's candidate pairs, so those among the candidates themselves
    (as a self-match would have them) are scored with them."""
    if ranker.graph is None:
        return ranker.score(pairs, pool, nb, titles, pool_rows)
    n = len(titles)
    among = candidate_pairs(nb, n, ranker.config)
    among = among[(among[:, 1] < n) & (among[:, 0] > 0)]  # rows of the pool, not the query's
    both = np.concatenate([pairs, among])
    return ranker.score(both, pool, nb, titles, pool_rows)[: len(pairs)]


def _ordered(nb: dict[str, Neighbours]) -> dict[str, Neighbours]:
    """Equal scores in row order, as a self-match's neighbours (`order_ties`)."""
    return {name: order_ties(D, I) for name, (D, I) in nb.items()}

def _match_of(
    cat: LiveCatalogue,
    r: int,
    score: float,
    is_self: bool,
    sims: dict[str, float],
    signals: list[str],
) -> CatalogueMatch:
    return CatalogueMatch(
        row=r,
        posting_id=cat.posting_id[r],
        title=cat.title[r],
        score=score,
        is_self=is_self,
        signals=signals,
        similarities=sims,
    )


def _as_pool_row(
    D: np.ndarray, I: np.ndarray, dq: np.ndarray, iq: np.ndarray, cands: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists of a small pool (row 0 the query, rows 1..m its candidates) as a
    self-match would have them with the query as one more row: the query first in its own
    list, and in each candidate's list at its similarity (the last entry dropped)."""
    n, k = D.shape
    D = np.hstack([np.full((n, 1), -np.inf, np.float32), D.astype(np.float32)])
    I = np.hstack([np.full((n, 1), -1, np.int64), I])
    D[0, 0], I[0, 0] = 1.0, 0
    sim = {int(r): float(d) for r, d in zip(iq.tolist(), dq.tolist(), strict=True) if r >= 0}
    for i, c in enumerate(cands, start=1):
        row_d, row_i = D[i, 1:].copy(), I[i, 1:].copy()  # the candidate's own list
        if c in sim:
            at = int(np.searchsorted(-np.where(row_i >= 0, row_d, -np.inf), -sim[c], "right"))
            row_d = np.insert(row_d, at, sim[c])[:k]
            row_i = np.insert(row_i, at, 0)[:k]
        D[i, 1:], I[i, 1:] = row_d, row_i
        D[i, 0], I[i, 0] = -np.inf, -1
    # shift the candidates' lists left (no empty first column), keep k + 1 columns
    D[1:] = np.hstack([D[1:, 1:], np.full((n - 1, 1), -np.inf, np.float32)])
    I[1:] = np.hstack([I[1:, 1:], np.full((n - 1, 1), -1, np.int64)])
    return D, I
