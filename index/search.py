"""Exact k-NN by inner product on L2-normalised float32 vectors, behind a small store interface.

Conventions (as in faiss): `xq` (nq, d) queries, `xb` (nb, d) database, `k` neighbours;
results `D` (nq, k) similarities in descending order and `I` (nq, k) int64 ids, with
`I == -1` (and `D == -inf`) where there is no neighbour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import faiss
import numpy as np

from index.errors import StoreError
from index.progress import check_cancelled

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


def _to_device(index: faiss.Index, device: str) -> faiss.Index:
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


@runtime_checkable
class VectorStore(Protocol):
    """A mutable collection of (id, vector) searched exactly by inner product.

    Implementations: `FaissFlatStore` (in process, GPU when present) and
    `index.milvus.MilvusStore` (a Milvus collection: milvus-lite file or cluster). Search
    is top-k only; callers apply similarity thresholds to the scores themselves.
    """

    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Upsert: add vectors `x` (n, dim) under int64 `ids` (n,), replacing existing ids."""

    def remove(self, ids: np.ndarray) -> int:
        """Delete `ids`; returns how many were present."""

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest by inner product: scores D (nq, k) desc, ids I (nq, k), -1 padded."""

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which of `ids` are stored."""

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `ids`, shape (n, dim)."""

    def save(self, path: Path) -> None:
        """Persist (a file at `path`: the index itself, or a reference to where it lives)."""


class FaissFlatStore:
    """Exact inner-product store (`IndexIDMap2(IndexFlatIP)`), on GPU when available."""

    def __init__(self, dim: int, device: str = "auto", index: faiss.Index | None = None) -> None:
        check_device(device)
        self.dim = dim
        self.device = device
        self._cpu = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._search_index: faiss.Index | None = None

    def __len__(self) -> int:
        return int(self._cpu.ntotal)

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        x = as_f32(x)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        assert x.shape == (ids.shape[0], self.dim), (x.shape, ids.shape, self.dim)
        self.remove(ids)
        self._cpu.add_with_ids(x, ids)
        self._search_index = None

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(self) == 0 or ids.size == 0:
            return 0
        n = int(self._cpu.remove_ids(faiss.IDSelectorBatch(ids)))
        self._search_index = None
        return n

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = as_f32(xq)
        assert xq.shape[1] == self.dim, (xq.shape, self.dim)
        if len(self) == 0:
            return no_neighbours(xq.shape[0], k)
        if self._search_index is None:
            self._search_index = _to_device(self._cpu, self.device)
        kk = min(k, len(self))  # GPU flat search allows k <= 2048; matching uses 51
        D, I = self._search_index.search(xq, kk)
        D = np.where(I < 0, -np.inf, D).astype(np.float32)
        return pad_results(D, I.astype(np.int64), k)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which of `ids` are stored."""
        ids = np.asarray(ids, dtype=np.int64)
        idmap: Any = self._cpu  # an IndexIDMap2: its ids are in id_map
        stored = faiss.vector_to_array(idmap.id_map) if len(self) else np.zeros(0, np.int64)
        return np.isin(ids, stored)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `ids`, shape (n, dim). Raises RuntimeError for an unknown id."""
        return (
            np.stack([self._cpu.reconstruct(int(i)) for i in ids])
            if len(ids)
            else np.zeros((0, self.dim), np.float32)
        )

    def save(self, path: Path) -> None:
        faiss.write_index(self._cpu, str(path))

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> FaissFlatStore:
        index = faiss.read_index(str(path))
        return cls(index.d, device=device, index=index)


def knn(
    xq: np.ndarray, xb: np.ndarray, k: int, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN of `xq` in `xb`; ids are row numbers of `xb`.

    Queries run in chunks of `KNN_CHUNK`, checking for cancellation between them."""
    xb = as_f32(xb)
    store = FaissFlatStore(xb.shape[1], device=device)
    store.add(np.arange(xb.shape[0], dtype=np.int64), xb)
    if xq.shape[0] <= KNN_CHUNK:
        return store.search(xq, k)
    parts = []
    for s in range(0, xq.shape[0], KNN_CHUNK):
        check_cancelled()
        parts.append(store.search(xq[s : s + KNN_CHUNK], k))
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

    Args:
        codes: (n, 8) uint8 packed hashes.
        valid: (n,) bool, rows without a hash are left out.
    """
    valid = np.ones(codes.shape[0], bool) if valid is None else valid
    return hamming_knn(codes, valid, codes, valid, k)
