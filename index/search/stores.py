"""Vector stores: mutable (id, vector) collections searched exactly by inner product.

`FaissFlatStore` here (in process, GPU when present); `index.store.milvus.MilvusStore` puts
them in Milvus. Search is top-k only; callers apply thresholds to the scores themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import faiss
import numpy as np

from index.search.knn import as_f32, check_device, no_neighbours, pad_results, to_device


@runtime_checkable
class VectorStore(Protocol):
    """A mutable collection of (id, vector) searched exactly by inner product.

    Implementations: `FaissFlatStore` (in process, GPU when present) and
    `index.store.milvus.MilvusStore` (a Milvus collection: milvus-lite file or cluster). Search
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
        # an upper bound of the stored ids: an add of larger ids (a live catalogue's new
        # listings) needs no removal scan first, so it costs O(batch), not O(n)
        self._max_id = -1
        if len(self):
            self._max_id = int(faiss.vector_to_array(self._cpu.id_map).max())  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return int(self._cpu.ntotal)

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        x = as_f32(x)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        assert x.shape == (ids.shape[0], self.dim), (x.shape, ids.shape, self.dim)
        if ids.size == 0:
            return
        if int(ids.min()) <= self._max_id:  # some may be stored: replace them
            self.remove(ids)
        self._cpu.add_with_ids(x, ids)
        self._max_id = max(self._max_id, int(ids.max()))
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
            self._search_index = to_device(self._cpu, self.device)
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

    def clone(self) -> FaissFlatStore:
        """An independent copy (the vectors copied in memory)."""
        return FaissFlatStore(self.dim, device=self.device, index=faiss.clone_index(self._cpu))

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> FaissFlatStore:
        index = faiss.read_index(str(path))
        return cls(index.d, device=device, index=index)
