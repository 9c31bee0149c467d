"""The live (serving) catalogue: listings changed one by one, and their neighbours of a
query per signal (persisted by `index.store.snapshots`).

`LiveCatalogue` holds listings that can be added, replaced and removed one by one: titles
as TF-IDF rows, phash codes, and text/image embeddings in `VectorStore`s (`FaissFlatStore`
by default; `index.store.milvus` puts them in Milvus) keyed by a stable int64 id per
listing. Rows are kept in insertion order (ids ascending), so a store's ids map back to
rows with `searchsorted`. It stores and searches (`query_neighbours`); deciding matches
from those neighbours, by the fusion or by the pair re-ranker, is
`index.store.live_match`'s.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from index.errors import NotFoundError
from index.features.embed import QueryFeatures
from index.features.images import phash_codes, phash_hex
from index.features.tfidf import TfidfConfig, TitleTfidf
from index.matching.fusion import Neighbours
from index.search.knn import (
    K,
    as_f32,
    hamming_index,
    hamming_search,
    no_neighbours,
    sparse_topk,
)
from index.search.stores import FaissFlatStore, VectorStore

if TYPE_CHECKING:
    from index.store.bundle import Bundle

DENSE = ("text", "image")


def store_knn(
    xq: np.ndarray, valid_q: np.ndarray, store: VectorStore, ids: np.ndarray, k: int = K
) -> Neighbours:
    """k nearest stored vectors of each valid query row, as catalogue rows.

    Args:
        xq: (nq, d) float32 L2-normalised queries; valid_q (nq,) bool.
        store: vectors keyed by the catalogue's ids.
        ids: (nb,) int64 ascending, the id of each catalogue row.
        k: neighbours per query.

    Returns:
        D (nq, k) cosine similarity, descending, and I (nq, k) catalogue rows, -1 padded.
    """
    xq = as_f32(xq)
    assert valid_q.shape == (xq.shape[0],), (valid_q.shape, xq.shape)
    assert xq.shape[1] == store.dim, (xq.shape, store.dim)
    D, I = no_neighbours(xq.shape[0], k)
    rows = np.flatnonzero(valid_q)
    if rows.size == 0 or len(store) == 0:
        return D, I
    Dv, Iv = store.search(xq[rows], k)
    pos = np.searchsorted(ids, np.maximum(Iv, 0))
    D[rows] = Dv
    I[rows] = np.where(Iv >= 0, pos, -1)
    return D, I


def _has(store: VectorStore, pid: int) -> bool:
    return bool(store.contains(np.array([pid], np.int64))[0])


@dataclass
class LiveCatalogue:
    """Listings that change one by one; see the module doc.

    Args:
        dims: embedding size per dense signal kept ("text", "image").
        tfidf: a fitted TF-IDF whose vocabulary is kept (a bundle's); None refits one on
            the catalogue's titles whenever they changed (lazily, before the next search).
        device: where FAISS searches run.
        tfidf_config: how a refitted TF-IDF is built (the model's `FusionConfig.tfidf`).
    """

    dims: dict[str, int]
    tfidf: TitleTfidf | None = None
    device: str = "auto"
    tfidf_config: TfidfConfig = field(default_factory=TfidfConfig)
    posting_id: list[str] = field(default_factory=list)
    title: list[str] = field(default_factory=list)
    image: list[str] = field(default_factory=list)
    image_phash: list[str] = field(default_factory=list)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    next_id: int = 0
    stores: dict[str, VectorStore] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fixed_vocabulary = self.tfidf is not None
        for m, d in self.dims.items():
            assert m in DENSE, m
            self.stores.setdefault(m, FaissFlatStore(d, device=self.device))
        #: the stable id of each posting_id; its row is `searchsorted(ids, id)` (rows are in id
        #: order), so removing a row shifts no entry here
        self._id = dict(zip(self.posting_id, self.ids.tolist(), strict=True))
        #: seconds of each signal's search in the last `query_neighbours` (for the metrics)
        self.last_timings: dict[str, float] = {}
        self._X: sp.csr_matrix | None = None
        self._XT: sp.csr_matrix | None = None
        #: the "char" signal's rows (a TF-IDF with a char source), kept as `_X` is
        self._C: sp.csr_matrix | None = None
        self._CT: sp.csr_matrix | None = None
        self._hamming: tuple[Any, np.ndarray] | None = None
        self._codes: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.posting_id)

    def copy(self) -> LiveCatalogue:
        """An independent copy of the listings and stores (for a snapshot written while this
        one keeps changing). Raises TypeError for stores that cannot be copied in memory."""
        stores = {}
        for m, s in self.stores.items():
            clone = getattr(s, "clone", None)
            if clone is None:
                raise TypeError(f"the {m} store ({type(s).__name__}) cannot be copied")
            stores[m] = clone()
        return LiveCatalogue(
            dims=dict(self.dims),
            tfidf=self.tfidf if self.fixed_vocabulary else None,
            device=self.device,
            tfidf_config=self.tfidf_config,
            posting_id=list(self.posting_id),
            title=list(self.title),
            image=list(self.image),
            image_phash=list(self.image_phash),
            ids=self.ids.copy(),
            next_id=self.next_id,
            stores=stores,
        )

    def __contains__(self, posting_id: object) -> bool:
        return posting_id in self._id

    def row(self, posting_id: str) -> int:
        """Row of `posting_id`. Raises NotFoundError."""
        r = self.row_or_none(posting_id)
        if r < 0:
            raise NotFoundError(f"posting_id {posting_id!r} is not in the catalogue")
        return r

    def row_or_none(self, posting_id: str | None) -> int:
        """Row of `posting_id`, -1 if it is not in the catalogue (or None)."""
        i = self._id.get(posting_id) if posting_id else None
        return -1 if i is None else int(np.searchsorted(self.ids, i))

    def get(self, posting_id: str) -> dict[str, Any]:
        """One listing as stored: posting_id, title, image, image_phash and its signals."""
        i = self.row(posting_id)
        pid = int(self.ids[i])
        signals = ["tfidf"] if self.title[i] else []
        if self.title[i] and self.tfidf is not None and self.tfidf.has_source:
            signals.append("char")
        if self.image_phash[i]:
            signals.append("phash")
        signals += [m for m, s in self.stores.items() if _has(s, pid)]
        return {
            "posting_id": posting_id,
            "title": self.title[i],
            "image": self.image[i],
            "image_phash": self.image_phash[i],
            "signals": signals,
        }

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str = "auto") -> LiveCatalogue:
        """The bundle's catalogue, its vocabulary kept; its stores' ids are its rows."""
        cat = bundle.catalogue
        n = len(cat)
        valid = bundle.masks.get("phash", np.zeros(n, bool))
        hexes = phash_hex(bundle.phash, valid)
        live = cls(
            dims={m: s.dim for m, s in bundle.stores.items()},
            tfidf=bundle.tfidf,
            device=device,
            posting_id=list(cat.posting_id),
            title=list(cat.title),
            image=list(cat.image_name) if cat.image_name is not None else [""] * n,
            image_phash=hexes,
            ids=np.arange(n, dtype=np.int64),
            next_id=n,
            stores=dict(bundle.stores),
        )
        live._X = sp.csr_matrix(bundle.X)
        live._C = None if bundle.C is None else sp.csr_matrix(bundle.C)
        return live

    # -- changes -------------------------------------------------------------------------

    def upsert(
        self, posting_ids: Sequence[str], images: Sequence[str], feats: QueryFeatures
    ) -> tuple[int, int]:
        """Add listings, replacing any with the same posting_id. Returns (added, replaced)."""
        n = len(feats)
        assert len(posting_ids) == n == len(images), (len(posting_ids), n, len(images))
        assert len(set(posting_ids)) == n, "posting_ids of one upsert must be distinct"
        replaced = [p for p in posting_ids if p in self._id]
        self._drop([self.row(p) for p in replaced])
        new_ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        dense = feats.dense()
        for m, store in self.stores.items():
            if m not in dense:
                continue
            x, valid = dense[m]
            rows = np.flatnonzero(valid)
            if rows.size:
                store.add(new_ids[rows], x[rows])
        hexes = phash_hex(feats.phash, feats.phash_valid)
        self.posting_id += list(posting_ids)
        self.title += list(feats.title)
        self.image += list(images)
        self.image_phash += hexes
        self.ids = np.concatenate([self.ids, new_ids])
        self._id.update(zip(posting_ids, new_ids.tolist(), strict=True))
        self._changed(new_rows=feats.title if self.fixed_vocabulary else None)
        return n - len(replaced), len(replaced)

    def remove(self, posting_id: str) -> None:
        """Remove one listing. Raises NotFoundError."""
        self._drop([self.row(posting_id)])

    def _drop(self, rows: list[int]) -> None:
        if not rows:
            return
        gone = np.unique(np.asarray(rows, np.int64))
        for store in self.stores.values():
            store.remove(self.ids[gone])
        for i in gone.tolist():
            del self._id[self.posting_id[i]]
        keep = np.ones(len(self), bool)
        keep[gone] = False
        for name in ("posting_id", "title", "image", "image_phash"):
            col = getattr(self, name)
            for i in gone[::-1].tolist():  # in place: a memmove per row, no rebuild
                del col[i]
        self.ids = self.ids[keep]
        self._XT = self._CT = None
        if self._X is not None and self.fixed_vocabulary:
            self._X = sp.csr_matrix(self._X[keep])
            self._C = None if self._C is None else sp.csr_matrix(self._C[keep])
        else:
            self._X = self._C = None
        self._codes = self._hamming = None

    def _changed(self, new_rows: list[str] | None) -> None:
        self._codes = self._hamming = None
        self._XT = self._CT = None
        if new_rows is not None and self._X is not None and self.tfidf is not None:
            self._X = sp.csr_matrix(sp.vstack([self._X, self.tfidf.transform(new_rows)]))
            if self._C is not None:
                C = self.tfidf.transform_source(new_rows)
                self._C = sp.csr_matrix(sp.vstack([self._C, C]))
        else:
            self._X = self._C = None

    # -- features of the catalogue -------------------------------------------------------

    def features(self) -> tuple[TitleTfidf, sp.csr_matrix, np.ndarray, np.ndarray]:
        """The TF-IDF (refitted if the titles changed), its rows, phash codes and mask."""
        if self._X is None:
            if not self.fixed_vocabulary:
                self.tfidf = TitleTfidf(self.tfidf_config).fit(self.title)
            assert self.tfidf is not None
            self._X = self._rows(self.tfidf.transform)
            if self.tfidf.has_source:
                self._C = self._rows(self.tfidf.transform_source)
        if self._codes is None:
            self._codes = phash_codes(self.image_phash)
        assert self.tfidf is not None
        codes, valid = self._codes
        return self.tfidf, self._X, codes, valid

    def _rows(self, transform: Callable[[list[str]], sp.csr_matrix]) -> sp.csr_matrix:
        """The titles' rows by `transform` (none: a (0, vocab) matrix; sklearn refuses to
        transform nothing)."""
        if len(self):
            return transform(self.title)
        return sp.csr_matrix((0, transform([""]).shape[1]), dtype=np.float32)

    def searched(self) -> list[str]:
        """The signals `query_neighbours` lists: "tfidf", "char" (a TF-IDF with a char
        source), "phash" and each store's."""
        if self.fixed_vocabulary and self.tfidf is not None:
            char = self.tfidf.has_source
        else:
            char = self.tfidf_config.char_source is not None
        return ["tfidf", *(["char"] if char else []), "phash", *self.stores]

    def char_rows(self) -> sp.csr_matrix | None:
        """The "char" signal's rows of the catalogue (None: its TF-IDF has no char source)."""
        self.features()
        return self._C

    def query_neighbours(self, q: QueryFeatures, k: int = K) -> dict[str, Neighbours]:
        """Each query's k nearest catalogue rows per signal (catalogue rows as ids)."""
        tfidf, X, codes, pvalid = self.features()
        if self._XT is None or self._XT.shape[1] != X.shape[0]:
            self._XT = sp.csr_matrix(X.T)
        if self._hamming is None:
            self._hamming = hamming_index(codes, pvalid)
        out: dict[str, Neighbours] = {}
        t = time.perf_counter()

        def lap(name: str) -> None:  # the seconds since the last lap, as `search_<name>`
            nonlocal t
            now = time.perf_counter()
            self.last_timings[f"search_{name}"] = now - t
            t = now

        out["tfidf"] = sparse_topk(tfidf.transform(q.title), self._XT, k)
        lap("tfidf")
        if self._C is not None:
            if self._CT is None or self._CT.shape[1] != self._C.shape[0]:
                self._CT = sp.csr_matrix(self._C.T)
            out["char"] = sparse_topk(tfidf.transform_source(q.title), self._CT, k)
            lap("char")
        out["phash"] = hamming_search(*self._hamming, q.phash, q.phash_valid, k)
        lap("phash")
        dense = q.dense()
        for m, store in self.stores.items():
            if m in dense:
                out[m] = store_knn(*dense[m], store, self.ids, k)
            else:
                out[m] = no_neighbours(len(q), k)
            lap(m)
        return out

    # -- catalogue rows as queries --------------------------------------------------------

    def row_features(self, rows: Sequence[int]) -> QueryFeatures:
        """Catalogue rows as queries: their titles, phashes and stored vectors."""
        r = list(rows)
        text = image = image_valid = None
        dense: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for m, store in self.stores.items():
            ids = self.ids[r] if r else np.zeros(0, np.int64)
            has = store.contains(ids)
            x = np.zeros((len(r), store.dim), np.float32)
            if has.any():
                x[has] = store.vectors(ids[has])
            dense[m] = (x, has)
        if "text" in dense:
            text = dense["text"][0]
        if "image" in dense:
            image, image_valid = dense["image"]
        q = QueryFeatures.build(
            [self.title[i] for i in r], [self.image_phash[i] for i in r], text, image, image_valid
        )
        if q.text is not None:  # a stored text vector is what counts, not the title
            q.text_valid = dense["text"][1]
        return q
