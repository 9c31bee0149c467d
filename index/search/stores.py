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


#: Removed ids a `FaissFlatStore` keeps as tombstones (skipped by its searches) before it
#: removes them from the FAISS index in one O(n) pass.
TOMBSTONES = 256


class FaissFlatStore:
    """Exact inner-product store (`IndexIDMap2(IndexFlatIP)`), on GPU when available.

    A removal only marks the id (a tombstone: O(1)); searches fetch `k + tombstones`
    neighbours and drop the marked ones, which is exact. Past `TOMBSTONES` marks (or
    before a save, a re-add of a marked id, or `purge`) they leave the index in one pass,
    so a stream of deletes costs O(n) once per `TOMBSTONES`, not per delete.
    """

    def __init__(self, dim: int, device: str = "auto", index: faiss.Index | None = None) -> None:
        check_device(device)
        self.dim = dim
        self.device = device
        self._cpu = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._search_index: faiss.Index | None = None
        self._gone: set[int] = set()  # removed ids still in the FAISS index
        # an upper bound of the stored ids: an add of larger ids (a live catalogue's new
        # listings) needs no removal scan first, so it costs O(batch), not O(n)
        self._max_id = -1
        if self._cpu.ntotal:
            self._max_id = int(faiss.vector_to_array(self._cpu.id_map).max())  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return int(self._cpu.ntotal) - len(self._gone)

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        x = as_f32(x)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        assert x.shape == (ids.shape[0], self.dim), (x.shape, ids.shape, self.dim)
        if ids.size == 0:
            return
        if int(ids.min()) <= self._max_id:  # some may be stored: replace them
            self.purge()
            self._remove_now(ids)
        self._cpu.add_with_ids(x, ids)
        self._max_id = max(self._max_id, int(ids.max()))
        self._search_index = None

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(self) == 0 or ids.size == 0:
            return 0
        present = ids[self.contains(ids)].tolist()
        self._gone.update(present)
        if len(self._gone) > TOMBSTONES:
            self.purge()
        return len(present)

    def purge(self) -> None:
        """Remove the tombstoned ids from the FAISS index (one O(n) pass)."""
        if self._gone:
            self._remove_now(self._gone_ids())
            self._gone = set()

    def _gone_ids(self) -> np.ndarray:
        return np.fromiter(self._gone, np.int64, len(self._gone))

    def _remove_now(self, ids: np.ndarray) -> None:
        if self._cpu.ntotal and ids.size:
            self._cpu.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64)))
            self._search_index = None

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq = as_f32(xq)
        assert xq.shape[1] == self.dim, (xq.shape, self.dim)
        if len(self) == 0:
            return no_neighbours(xq.shape[0], k)
        if self._search_index is None:
            self._search_index = to_device(self._cpu, self.device)
        # GPU flat search allows k <= 2048; matching uses 51 (+ at most TOMBSTONES)
        kk = min(k + len(self._gone), int(self._cpu.ntotal))
        D, I = self._search_index.search(xq, kk)
        I = I.astype(np.int64)
        if self._gone:  # drop the tombstoned ids, the others keep their order
            dead = np.isin(I, self._gone_ids())
            I = np.where(dead, -1, I)
            o = np.argsort(I < 0, axis=1, kind="stable")
            D, I = np.take_along_axis(D, o, axis=1), np.take_along_axis(I, o, axis=1)
            D, I = D[:, :k], I[:, :k]
        D = np.where(I < 0, -np.inf, D).astype(np.float32)
        return pad_results(D, I, k)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which of `ids` are stored."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size <= 64:  # a few ids: the IDMap2's own lookup, O(1) each
            return np.array([self._has(i) for i in ids.tolist()], bool)
        idmap: Any = self._cpu  # an IndexIDMap2: its ids are in id_map
        stored = faiss.vector_to_array(idmap.id_map) if self._cpu.ntotal else np.zeros(0, np.int64)
        out = np.isin(ids, stored)
        if self._gone:
            out &= ~np.isin(ids, self._gone_ids())
        return out

    def _has(self, i: int) -> bool:
        if i in self._gone or i < 0 or i > self._max_id:
            return False
        try:
            self._cpu.reconstruct(i)
        except RuntimeError:
            return False
        return True

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `ids`, shape (n, dim). Raises RuntimeError for an unknown id."""
        gone = [int(i) for i in ids if int(i) in self._gone]
        if gone:
            raise RuntimeError(f"ids not in the store (removed): {gone[:5]}")
        return (
            np.stack([self._cpu.reconstruct(int(i)) for i in ids])
            if len(ids)
            else np.zeros((0, self.dim), np.float32)
        )

    def save(self, path: Path) -> None:
        self.purge()
        faiss.write_index(self._cpu, str(path))

    def clone(self) -> FaissFlatStore:
        """An independent copy (the vectors copied in memory, the tombstones with them)."""
        out = FaissFlatStore(self.dim, device=self.device, index=faiss.clone_index(self._cpu))
        out._gone = set(self._gone)
        return out

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> FaissFlatStore:
        index = faiss.read_index(str(path))
        return cls(index.d, device=device, index=index)
