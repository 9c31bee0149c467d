"""All k-NN of the project: dense (FAISS inner product), sparse (TF-IDF cosine) and Hamming (phash).

Conventions (as in faiss): `xq` (nq, d) queries, `xb` (nb, d) database, `k` neighbours;
results `D` (nq, k) similarities in descending order and `I` (nq, k) int64 ids, with
`I == -1` (and `D == -inf`) where there is no neighbour.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from index.errors import StoreError
from index.progress import check_cancelled, progress

#: k for the matching search: at most 50 matches, plus the row itself.
K = 51
#: Queries per FAISS call in `knn` (cancellation is checked between calls).
KNN_CHUNK = 16384


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU."""
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get is not None and get() > 0)


def check_device(device: str) -> None:
    """Raise for `device="cuda"` without a GPU FAISS (as the encoders do; "auto" falls back).

    Raises:
        StoreError: cuda asked, but this faiss build has no GPU support or sees no GPU.
    """
    if device == "cuda" and not gpu_available():
        raise StoreError(
            "device 'cuda' requested but faiss has no GPU here (install the [gpu] extra, "
            "faiss-gpu-cu12, on a CUDA host; or use --device auto/cpu)"
        )


def to_device(index: faiss.Index, device: str) -> faiss.Index:
    """Move a CPU index to GPU 0 when asked ('auto'/'cuda') and possible; else return it."""
    check_device(device)
    if device == "cpu" or not gpu_available():
        return index
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, 0, index)


def no_neighbours(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """No neighbours: D (nq, k) all -inf, I (nq, k) all -1."""
    return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)


def as_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    assert x.ndim == 2, f"expected a 2-d array, got shape {x.shape}"
    return x


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = as_f32(x)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def knn_numpy(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference exact inner-product k-NN in numpy (tests compare FAISS against it)."""
    xq, xb = as_f32(xq), as_f32(xb)
    S = xq @ xb.T  # (nq, nb)
    kk = min(k, xb.shape[0])
    I = np.argsort(-S, axis=1, kind="stable")[:, :kk]
    D = np.take_along_axis(S, I, axis=1)
    return pad_results(D, I.astype(np.int64), k)


def order_ties(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's neighbours by score descending, equal scores by id ascending, padding
    (-1) last: one order for equal scores whatever the search or the sharding gave.
    Shapes (n, k)."""
    assert D.shape == I.shape, (D.shape, I.shape)
    key_id = np.where(I < 0, np.iinfo(np.int64).max, I)
    key_d = np.where(I < 0, np.inf, -D.astype(np.float64))
    order = np.lexsort((key_id, key_d), axis=1)
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


def pad_results(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """D, I (nq, k' ) cut or padded (-inf, -1) to k columns."""
    if D.shape[1] >= k:
        return D[:, :k].astype(np.float32), I[:, :k]
    nq = D.shape[0]
    Dp = np.full((nq, k), -np.inf, np.float32)
    Ip = np.full((nq, k), -1, np.int64)
    Dp[:, : D.shape[1]] = D
    Ip[:, : I.shape[1]] = I
    return Dp, Ip


def knn(
    xq: np.ndarray, xb: np.ndarray, k: int, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN of `xq` in `xb` (`IndexFlatIP`); ids are row numbers of `xb`.

    Queries run in chunks of `KNN_CHUNK`, checking for cancellation between them."""
    xq, xb = as_f32(xq), as_f32(xb)
    assert xq.shape[1] == xb.shape[1], (xq.shape, xb.shape)
    if xb.shape[0] == 0:
        return no_neighbours(xq.shape[0], k)
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    index = to_device(flat, device)
    kk = min(k, xb.shape[0])  # GPU flat search allows k <= 2048; matching uses 51

    def search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        D, I = index.search(q, kk)
        return pad_results(np.where(I < 0, -np.inf, D).astype(np.float32), I.astype(np.int64), k)

    if xq.shape[0] <= KNN_CHUNK:
        return search(xq)
    parts = []
    for s in range(0, xq.shape[0], KNN_CHUNK):
        check_cancelled()
        parts.append(search(xq[s : s + KNN_CHUNK]))
    return np.concatenate([D for D, _ in parts]), np.concatenate([I for _, I in parts])


def self_knn(
    x: np.ndarray, valid: np.ndarray | None = None, k: int = K, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """k-NN of every row of `x` among the rows of `x` (itself included).

    Rows with `valid == False` (no such signal, e.g. a missing image) neither get nor are
    neighbours.
    """
    x = as_f32(x)
    n = x.shape[0]
    D = np.full((n, k), -np.inf, np.float32)
    I = np.full((n, k), -1, np.int64)
    rows = np.arange(n) if valid is None else np.flatnonzero(valid)
    if rows.size == 0:
        return D, I
    Dv, Iv = knn(x[rows], x[rows], k, device=device)
    D[rows] = Dv
    I[rows] = np.where(Iv >= 0, rows[np.maximum(Iv, 0)], -1)
    return D, I


def hamming_index(codes_b: np.ndarray, valid_b: np.ndarray) -> tuple[Any, np.ndarray]:
    """A FAISS binary index of the valid catalogue codes, and the catalogue row of each."""
    assert codes_b.ndim == 2 and codes_b.shape[1] == 8 and codes_b.dtype == np.uint8
    assert valid_b.shape == (codes_b.shape[0],)
    brows = np.flatnonzero(valid_b)
    index = faiss.IndexBinaryFlat(64)
    if brows.size:
        index.add(np.ascontiguousarray(codes_b[brows]))
    return index, brows


def hamming_search(
    index: Any, brows: np.ndarray, codes_q: np.ndarray, valid_q: np.ndarray, k: int = K
) -> tuple[np.ndarray, np.ndarray]:
    """Search a `hamming_index`: D (nq, k) similarity 1 - d/64, I (nq, k) catalogue rows."""
    assert codes_q.ndim == 2 and codes_q.shape[1] == 8 and codes_q.dtype == np.uint8
    assert valid_q.shape == (codes_q.shape[0],)
    D, I = no_neighbours(codes_q.shape[0], k)
    qrows = np.flatnonzero(valid_q)
    if qrows.size == 0 or brows.size == 0:
        return D, I
    kk = min(k, brows.size)
    dist, Iv = index.search(np.ascontiguousarray(codes_q[qrows]), kk)
    D[qrows, :kk] = np.where(Iv >= 0, 1.0 - dist.astype(np.float32) / 64.0, -np.inf)
    I[qrows, :kk] = np.where(Iv >= 0, brows[np.maximum(Iv, 0)], -1)
    return D, I


def hamming_knn(
    codes_q: np.ndarray,
    valid_q: np.ndarray,
    codes_b: np.ndarray,
    valid_b: np.ndarray,
    k: int = K,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest catalogue codes of each query code by Hamming distance.

    Args:
        codes_q: (nq, 8) uint8 query hashes; valid_q (nq,) bool.
        codes_b: (nb, 8) uint8 catalogue hashes; valid_b (nb,) bool.
        k: neighbours per query.

    Returns:
        D (nq, k) similarity 1 - d/64, descending, and I (nq, k) catalogue rows, -1 padded.
    """
    index, brows = hamming_index(codes_b, valid_b)
    return hamming_search(index, brows, codes_q, valid_q, k)


def hamming_self_knn(
    codes: np.ndarray, valid: np.ndarray | None = None, k: int = K
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest 64-bit codes by Hamming distance among the rows themselves (D = 1 - d/64).

    Exact-hash buckets first: rows sharing a code share their neighbours, so only the
    distinct codes are searched (FAISS binary flat: popcounts, on one thread, so a busy
    machine's other work does not make OpenMP threads wait on each other), each against
    the distinct codes (the k nearest codes hold at least k rows), and their rows
    expanded in (distance, code, row) order.

    Args:
        codes: (n, 8) uint8 packed hashes.
        valid: (n,) bool, rows without a hash are left out.

    Returns:
        D (n, k) similarity, descending, and I (n, k) rows, -1 padded.
    """
    assert codes.ndim == 2 and codes.shape[1] == 8 and codes.dtype == np.uint8
    n = codes.shape[0]
    valid = np.ones(n, bool) if valid is None else valid
    D, I = no_neighbours(n, k)
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        return D, I
    keys = np.ascontiguousarray(codes[rows]).view(np.uint64)[:, 0]  # (m,)
    uniq, first, inv, counts = np.unique(
        keys, return_index=True, return_inverse=True, return_counts=True
    )
    ucodes = np.ascontiguousarray(codes[rows[first]])  # (u, 8)
    index = faiss.IndexBinaryFlat(64)
    index.add(ucodes)
    ku = min(k, uniq.size)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        dist, Iu = index.search(ucodes, ku)  # (u, ku) distances and code numbers
    finally:
        faiss.omp_set_num_threads(threads)
    members = rows[np.argsort(inv, kind="stable")]  # rows by code, ascending within one
    start = np.cumsum(counts) - counts  # (u,) where each code's rows begin in `members`
    L = counts[Iu]  # (u, ku) rows each neighbour code brings
    before = np.cumsum(L, axis=1) - L  # rows taken before it
    take = np.clip(k - before, 0, L)  # (u, ku) how many of them fit in k
    flat, per_code = take.ravel(), take.sum(axis=1)  # (u*ku,), (u,)
    j = np.repeat(np.arange(uniq.size), per_code)  # code of each output entry
    src = np.repeat(Iu.ravel(), flat)  # neighbour code of each entry
    off = np.arange(src.size) - np.repeat(np.cumsum(flat) - flat, flat)  # within its code
    pos = np.arange(src.size) - np.repeat(np.cumsum(per_code) - per_code, per_code)
    Du, Ij = no_neighbours(uniq.size, k)
    Du[j, pos] = 1.0 - np.repeat(dist.ravel(), flat).astype(np.float32) / 64.0
    Ij[j, pos] = members[start[src] + off]
    D[rows], I[rows] = Du[inv], Ij[inv]
    return D, I


def sparse_topk(Xq: sp.csr_matrix, XbT: sp.csr_matrix, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of L2-normalised sparse rows `Xq` against `XbT` = Xb.T (CSR),
    all queries in one dense (nq, nb) block; zero similarities are not neighbours."""
    assert Xq.shape[1] == XbT.shape[0], (Xq.shape, XbT.shape)
    nq, nb = Xq.shape[0], XbT.shape[1]
    D, I = no_neighbours(nq, k)
    if nb == 0 or nq == 0:
        return D, I
    kk = min(k, nb)
    S = (Xq @ XbT).toarray()  # (nq, nb)
    top = (
        np.argpartition(-S, kk - 1, axis=1)[:, :kk] if kk < nb else np.tile(np.arange(nb), (nq, 1))
    )
    Dt = np.take_along_axis(S, top, axis=1)
    o = np.argsort(-Dt, axis=1, kind="stable")
    Dt, top = np.take_along_axis(Dt, o, axis=1), np.take_along_axis(top, o, axis=1)
    ok = Dt > 0  # a zero similarity shares no term: not a neighbour
    D[:, :kk] = np.where(ok, Dt, -np.inf)
    I[:, :kk] = np.where(ok, top, -1)
    return D, I


def sparse_topk_join(
    Xq: sp.csr_matrix, XbT: sp.csr_matrix, k: int = K
) -> tuple[np.ndarray, np.ndarray] | None:
    """`sparse_topk` as a sparse top-k join (`sparse_dot_topn.sp_matmul_topn`: each row's k
    best products kept while multiplying, no dense (nq, nb) block), single-threaded; equal
    scores in column order. None when sparse_dot_topn is not installed."""
    try:
        from sparse_dot_topn import sp_matmul_topn
    except ImportError:
        return None
    assert Xq.shape[1] == XbT.shape[0], (Xq.shape, XbT.shape)
    nq, nb = Xq.shape[0], XbT.shape[1]
    D, I = no_neighbours(nq, k)
    if nb == 0 or nq == 0:
        return D, I
    C = sp_matmul_topn(sp.csr_matrix(Xq), XbT, top_n=k, threshold=0.0, sort=False)
    C = sp.csr_matrix(C)
    counts = np.diff(C.indptr)
    rows = np.repeat(np.arange(nq), counts)
    o = np.lexsort((C.indices, -C.data, rows))  # by row, then score desc, then column
    pos = np.arange(C.nnz) - np.repeat(C.indptr[:-1], counts)
    D[rows, pos] = C.data[o].astype(np.float32)
    I[rows, pos] = C.indices[o]
    return D, I


def sparse_knn(
    Xq: sp.csr_matrix,
    Xb: sp.csr_matrix,
    k: int = K,
    chunk: int = 512,
    show_progress: bool = False,
    join: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN between L2-normalised sparse rows, in row chunks.

    A sparse top-k join per chunk (`sparse_topk_join`) when sparse_dot_topn is installed,
    else `sparse_topk`'s dense (chunk, nb) blocks (memory bounded by one block, so 70k rows
    fit in a few hundred MB). Zero rows (empty titles) get no neighbours.
    """
    assert Xq.shape[1] == Xb.shape[1], (Xq.shape, Xb.shape)
    nq = Xq.shape[0]
    D = np.full((nq, k), -np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    XbT = sp.csr_matrix(Xb.T)
    starts = range(0, nq, chunk)
    for s in progress(starts, desc="tfidf neighbours", unit="chunk", disable=not show_progress):
        part = sparse_topk_join(Xq[s : s + chunk], XbT, k) if join else None
        if part is None:
            part = sparse_topk(Xq[s : s + chunk], XbT, k)
        D[s : s + chunk], I[s : s + chunk] = part
    return D, I
