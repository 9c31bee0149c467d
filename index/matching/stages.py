"""Match-quality stages around fusion: combined embeddings, neighbourhood blending (INB),
alpha query expansion, the title unit rule, and the pool-size rule's helpers.

All are small functions over float32 arrays (faiss conventions: `xq`/`xb` queries and
database, `D` (n, k) similarities descending, `I` (n, k) ids, -1 padded). A *space* is
what a signal is searched in: a list of parts, each an (n, d_m) dense float32 array or an
(n, v_m) CSR matrix, with the part weights already applied; a row's vector is the
concatenation of its parts, and every search L2-normalises that concatenation. One
modality is a one-part space; the combined embedding is the weighted concatenation of
several modalities (TF-IDF included, as a sparse part).

`apply_stages` runs the stages a `FusionConfig` asks for on a pool's features and
neighbours; `fuse_stages` is `fuse` plus the pool-size rule and the unit rule.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp

from index.features.embed import Part
from index.features.text import Quantities
from index.matching.fusion import FusionConfig, Neighbours, fuse, link_sources
from index.search.knn import K, as_f32, l2_normalize, no_neighbours, self_knn

Space: TypeAlias = list[Part]

# ---------------------------------------------------------------------------------------
# Spaces and exact search


def combine(embs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Dense combined embedding: each (n, d_m) L2-normalised, scaled by its weight,
    concatenated, and the result L2-normalised. Shape (n, sum d_m)."""
    assert len(embs) == len(weights) and embs, (len(embs), len(weights))
    n = embs[0].shape[0]
    parts = []
    for x, w in zip(embs, weights, strict=True):
        assert x.shape[0] == n, (x.shape, n)
        parts.append(l2_normalize(x) * np.float32(w))
    return l2_normalize(np.hstack(parts))


def make_space(parts: Sequence[tuple[Part, float]]) -> Space:
    """A space from (matrix, weight) pairs: each part row-normalised, then weighted."""
    out: Space = []
    for x, w in parts:
        if sp.issparse(x):
            Xs = sp.csr_matrix(x, dtype=np.float32)
            nrm = np.sqrt(np.asarray(Xs.multiply(Xs).sum(axis=1)).ravel())
            scale = np.float32(w) / np.maximum(nrm, 1e-12)
            out.append(sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ Xs, dtype=np.float32))
        else:
            out.append(l2_normalize(x) * np.float32(w))
    return out


def space_norms(space: Space) -> np.ndarray:
    """(n,) L2 norm of each row's concatenated vector."""
    sq = np.zeros(space[0].shape[0], np.float64)
    for x in space:
        if isinstance(x, sp.spmatrix | sp.sparray):
            sq += np.asarray(x.multiply(x).sum(axis=1)).ravel()
        else:
            sq += np.einsum("ij,ij->i", x, x, dtype=np.float64)
    return np.sqrt(sq).astype(np.float32)


def space_self_knn(
    space: Space, k: int = K, chunk: int = 1024, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN of every row of a space among its rows (itself included).

    All-dense spaces go through FAISS (`self_knn`, GPU when present); a space with a sparse
    part is searched in row chunks (one dense (chunk, n) block at a time). Zero rows get
    and are no neighbours.
    """
    n = space[0].shape[0]
    assert all(x.shape[0] == n for x in space), [x.shape for x in space]
    nrm = space_norms(space)
    valid = nrm > 1e-6
    if all(not sp.issparse(x) for x in space):
        x = np.hstack([as_f32(p) for p in space]) / np.maximum(nrm, 1e-12)[:, None]
        return self_knn(x, valid, k, device=device)
    inv = (1.0 / np.maximum(nrm, 1e-12)).astype(np.float32)
    D, I = no_neighbours(n, k)
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        return D, I
    sub = [x[rows] for x in space]
    inv_v = inv[rows]
    T = [sp.csr_matrix(x.T) if sp.issparse(x) else np.ascontiguousarray(x.T) for x in sub]
    m = rows.size
    kk = min(k, m)
    for s in range(0, m, chunk):
        e = min(s + chunk, m)
        S = np.zeros((e - s, m), np.float32)
        for x, xt in zip(sub, T, strict=True):
            blk = x[s:e] @ xt
            S += blk.toarray() if sp.issparse(blk) else blk
        S *= inv_v[s:e, None]
        S *= inv_v[None, :]
        if kk < m:
            top = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        else:
            top = np.tile(np.arange(m), (e - s, 1))
        Dt = np.take_along_axis(S, top, axis=1)
        o = np.argsort(-Dt, axis=1, kind="stable")
        D[rows[s:e], :kk] = np.take_along_axis(Dt, o, axis=1)
        I[rows[s:e], :kk] = rows[np.take_along_axis(top, o, axis=1)]
    return D, I


# ---------------------------------------------------------------------------------------
# Neighbourhood blending and query expansion


def _weights(D: np.ndarray, I: np.ndarray, W: np.ndarray, n: int) -> sp.csr_matrix:
    """Sparse (n, n) matrix with W[i, I[i, j]] for the kept neighbours (W > 0)."""
    assert D.shape == I.shape == W.shape and D.shape[0] == n, (D.shape, I.shape, W.shape, n)
    keep = (I >= 0) & (W > 0)
    r = np.repeat(np.arange(n), I.shape[1]).reshape(I.shape)[keep]
    return sp.csr_matrix((W[keep].astype(np.float32), (r, I[keep])), shape=(n, n))


def _apply(W: sp.csr_matrix, space: Space, empty: np.ndarray) -> Space:
    """W @ each part; rows with no kept neighbour keep their vector."""
    keep_self = sp.diags(empty.astype(np.float32))
    W = sp.csr_matrix(W + keep_self)
    return [
        sp.csr_matrix(W @ x, dtype=np.float32) if sp.issparse(x) else as_f32(W @ x) for x in space
    ]


def blend(space: Space, D: np.ndarray, I: np.ndarray, threshold: float) -> Space:
    """One stage of iterative neighbourhood blending (INB).

    Each row becomes the similarity-weighted sum of its neighbours with similarity
    >= `threshold` (itself included, weight = its self-similarity); searches renormalise.

    Args:
        space: the vectors the neighbours (D, I) were found in, n rows.
        D, I: (n, k) neighbours of every row in `space`.
        threshold: neighbours below it do not take part.
    """
    n = space[0].shape[0]
    Wd = np.where((I >= 0) & (threshold <= D), np.maximum(D, 0.0), 0.0)
    empty = np.asarray(~(Wd > 0).any(axis=1))
    return _apply(_weights(D, I, Wd, n), space, empty)


def alpha_qe(space: Space, D: np.ndarray, I: np.ndarray, alpha: float, k: int) -> Space:
    """alpha query expansion (database-side augmentation for a self-match): each row becomes
    the sum of its `k` nearest rows (itself included) weighted by similarity**alpha
    (negative similarities weigh 0)."""
    assert k >= 1 and alpha >= 0, (k, alpha)
    n = space[0].shape[0]
    kk = min(k, I.shape[1])
    Dk, Ik = D[:, :kk], I[:, :kk]
    Wd = np.where(Ik >= 0, np.power(np.clip(Dk, 0.0, None), alpha), 0.0)
    empty = np.asarray(~(Wd > 0).any(axis=1))
    return _apply(_weights(Dk, Ik, Wd, n), space, empty)


def pair_similarities(nb: Neighbours, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m,) float32 similarity of b[p] in row a[p]'s neighbour list (-inf where absent)."""
    D, I = nb
    hit = I[a] == b[:, None]  # (m, k)
    found = hit.any(axis=1)
    out = np.full(len(a), -np.inf, np.float32)
    out[found] = D[a[found], hit[found].argmax(axis=1)]
    return out


@functools.lru_cache(maxsize=4)
def _quantities_of(titles: tuple[str, ...]) -> Quantities:
    return Quantities(titles)


def quantities(titles: Sequence[str]) -> Quantities:
    """`Quantities` of the titles, parsed once for the same titles (tuning fuses one pool
    many times)."""
    return _quantities_of(tuple(titles))


def drop_unit_conflicts(
    I: np.ndarray,
    S: np.ndarray,
    titles: Sequence[str],
    signals: Mapping[str, Neighbours],
    keep_if: Mapping[Any, float],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove matches whose titles state different quantities of one unit, unless a signal
    of `keep_if` (the image ones) gives that pair at least its similarity there.

    Args:
        I, S: (n, m) fused matches (row itself first) and scores.
        titles: (n,) titles of the rows.
        signals: the neighbours fused, to look up the image similarity of a pair.
        keep_if: signal -> similarity at which a conflicting pair is kept anyway.

    Returns:
        I, S with the dropped matches moved to the end (-1 / -inf) and the count dropped.
    """
    assert I.shape == S.shape and I.shape[0] == len(titles), (I.shape, S.shape, len(titles))
    n = I.shape[0]
    rows, cols = np.nonzero((I >= 0) & (np.arange(n)[:, None] != I))
    a, b = rows.astype(np.int64), I[rows, cols]
    drop = quantities(titles).conflicts(a, b)
    for s, t in keep_if.items():
        if s in signals and drop.any():
            hit = np.flatnonzero(drop)
            drop[hit[pair_similarities(signals[s], a[hit], b[hit]) >= t]] = False
    I, S = I.copy(), S.copy()
    I[rows[drop], cols[drop]], S[rows[drop], cols[drop]] = -1, -np.inf
    dropped = int(drop.sum())
    o = np.argsort(I < 0, axis=1, kind="stable")
    return np.take_along_axis(I, o, axis=1), np.take_along_axis(S, o, axis=1), dropped


# ---------------------------------------------------------------------------------------
# Running the stages a config asks for


def signal_space(name: str, parts: Mapping[str, Part], config: FusionConfig) -> Space | None:
    """The space of a signal: its own matrix, or for "combined" the weighted parts named by
    `config.stages.combined_weights` that are present (None when it cannot be built)."""
    if name == "combined":
        w = {s: v for s, v in config.stages.combined_weights.items() if s in parts and v > 0}
        if len(w) < 2:
            return None
        return make_space([(parts[s], v) for s, v in w.items()])
    if name in parts:
        return make_space([(parts[name], 1.0)])
    return None


def blended_neighbours(
    space: Space, nb: Neighbours | None, config: FusionConfig, k: int = K, device: str = "auto"
) -> Neighbours:
    """Neighbours in `space` after the config's INB stages (or alpha-QE), searched again."""
    st = config.stages
    D, I = nb if nb is not None else space_self_knn(space, k, device=device)
    if st.qe_alpha is not None:
        space = alpha_qe(space, D, I, st.qe_alpha, st.qe_k)
        D, I = space_self_knn(space, k, device=device)
    for t in st.inb:
        space = blend(space, D, I, t)
        D, I = space_self_knn(space, k, device=device)
    return D, I


def apply_stages(
    parts: Mapping[str, Part],
    nb: dict[str, Neighbours],
    config: FusionConfig,
    k: int = K,
    device: str = "auto",
) -> dict[str, Neighbours]:
    """Neighbours with the config's stages applied: the combined signal added (when it has a
    threshold and `combined_weights` name two present modalities), and the signals of
    `stages.blend_signals` replaced by their blended (INB / alpha-QE) neighbours.
    With every stage off this returns `nb` unchanged.

    The INB thresholds follow the pool-size rule (`FusionConfig.for_pool` of n rows).

    Args:
        parts: the matrix of each signal (`Features.parts()`), n rows.
        nb: the signals' neighbours, (n, k) each.
    """
    if nb:
        config = config.for_pool(next(iter(nb.values()))[1].shape[0])
    st = config.stages
    out = dict(nb)
    wanted = ["combined"] if "combined" in config.thresholds else []
    blending = bool(st.inb) or st.qe_alpha is not None
    names = wanted + [s for s in st.blend_signals if blending and s != "combined" and s in nb]
    if not names:
        return out
    for name in names:
        space = signal_space(name, parts, config)
        if space is None:
            continue
        if name == "combined" and not ("combined" in st.blend_signals and blending):
            out[name] = space_self_knn(space, k, device=device)
        else:
            out[name] = blended_neighbours(space, nb.get(name), config, k, device)
    return out


def fuse_stages(
    signals: dict[str, Neighbours],
    config: FusionConfig,
    titles: Sequence[str] | None = None,
    n: int | None = None,
    source: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`fuse` with the pool-size rule (thresholds moved to this pool's size when the config
    has slopes), when `stages.unit_rule` is on and titles are given the unit rule, and
    with `source` codes (n,) the config's source mode (`link_sources`)."""
    n = len(titles) if n is None and titles is not None else n
    assert n is not None, "give n or titles"
    cfg = config.for_pool(n)
    I, S = fuse(signals, cfg, n)
    if cfg.stages.unit_rule and titles is not None:
        I, S, _ = drop_unit_conflicts(I, S, titles, signals, cfg.stages.unit_keep)
    return source_links(I, S, signals, cfg, source)


def source_links(
    I: np.ndarray,
    S: np.ndarray,
    signals: Mapping[str, Neighbours],
    config: FusionConfig,
    source: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`link_sources` with the config's mode, its at-least-one-match signal and floor."""
    fallback = signals.get(config.min2_signal) if config.min2 else None
    return link_sources(I, S, source, config.sources, fallback, config.min2_floor)


def ranker_source_links(
    I: np.ndarray, S: np.ndarray, config: FusionConfig, source: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The config's source mode on the pair re-ranker's matches: same-source links dropped
    ("cross") or put behind ("cross_first"), but no at-least-one-match fallback: the ranker
    decides which rows stay alone (its own `single_threshold`), as it was tuned to, so the
    fusion's fallback must not add back the links it left out (it did, and `evaluate` and
    `match` then scored far below what `train ranker` reported on a folder whose table B
    is ten times table A)."""
    return link_sources(I, S, source, config.sources)
