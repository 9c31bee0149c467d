"""The live (serving) catalogue: listings changed one by one, and new listings matched
against it with their explanations (persisted by `index.store.snapshots`).

`LiveCatalogue` holds listings that can be added, replaced and removed one by one: titles
as TF-IDF rows, phash codes, and text/image embeddings in `VectorStore`s (`FaissFlatStore`
by default; `index.store.milvus` puts them in Milvus) keyed by a stable int64 id per
listing. Rows are kept in insertion order (ids ascending), so a store's ids map back to
rows with `searchsorted`.

Matching a query (a listing that may or may not be in the catalogue) follows the Kaggle
rules of `index.matching.fusion.fuse` exactly: the query is treated as one more row of the pool, its
neighbours per signal are searched in the catalogue (`query_neighbours`), and
`fuse_against` runs `fuse` on them with the query as "the row itself". A query whose
posting_id is in the catalogue *is* that row, so matching every catalogue row this way
gives what `index.matching.selfmatch.match_catalogue` gives on the same features.

"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from index.errors import ConfigurationError, NotFoundError
from index.features.embed import Features, QueryFeatures
from index.features.images import phash_codes, phash_hex
from index.features.tfidf import TfidfConfig, TitleTfidf
from index.matching.fusion import FusionConfig, Neighbours, fuse, threshold
from index.matching.ranker import Ranker
from index.search.knn import (
    K,
    as_f32,
    hamming_index,
    hamming_search,
    no_neighbours,
    order_ties,
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


def _has(store: VectorStore, pid: int) -> bool:
    return bool(store.contains(np.array([pid], np.int64))[0])


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
        self._XT = None
        if self._X is not None and self.fixed_vocabulary:
            self._X = sp.csr_matrix(self._X[keep])
        else:
            self._X = None
        self._codes = self._hamming = None

    def _changed(self, new_rows: list[str] | None) -> None:
        self._codes = self._hamming = None
        self._XT = None
        if new_rows is not None and self._X is not None and self.tfidf is not None:
            self._X = sp.csr_matrix(sp.vstack([self._X, self.tfidf.transform(new_rows)]))
        else:
            self._X = None

    # -- features of the catalogue -------------------------------------------------------

    def features(self) -> tuple[TitleTfidf, sp.csr_matrix, np.ndarray, np.ndarray]:
        """The TF-IDF (refitted if the titles changed), its rows, phash codes and mask."""
        if self._X is None:
            if not self.fixed_vocabulary:
                self.tfidf = TitleTfidf(self.tfidf_config).fit(self.title)
            assert self.tfidf is not None
            if len(self):
                self._X = self.tfidf.transform(self.title)
            else:  # sklearn refuses to transform nothing
                vocab = self.tfidf.transform([""]).shape[1]
                self._X = sp.csr_matrix((0, vocab), dtype=np.float32)
        if self._codes is None:
            self._codes = phash_codes(self.image_phash)
        assert self.tfidf is not None
        codes, valid = self._codes
        return self.tfidf, self._X, codes, valid

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

    def search(
        self, q: QueryFeatures, config: FusionConfig, self_ids: Sequence[str | None], k: int = K
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Neighbours]]:
        """Match queries against the catalogue with `fuse` rules (see `fuse_against`).

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
        nb = self.query_neighbours(q, k)
        self_rows = np.array([self.row_or_none(p) for p in self_ids], np.int64)
        I, S = fuse_against(nb, config.for_pool(len(self)), self_rows)
        return I, S, nb

    def match(
        self, q: QueryFeatures, config: FusionConfig, self_ids: Sequence[str | None], k: int = K
    ) -> list[list[CatalogueMatch]]:
        """`search`, each query's matches (best first) with why they matched.

        A match's `signals` are "self" (the query's own listing), else the signals whose
        similarity passes `config`'s threshold (`matched_signals`), else
        "nearest:<min2 signal>" (kept by the at-least-one-match rule).
        """
        I, S, nb = self.search(q, config, self_ids, k)
        out = []
        for j, sims in enumerate(signal_similarities(nb, I)):
            own_id = self_ids[j]
            row = []
            for r, s, sim in zip(I[j].tolist(), S[j].tolist(), sims, strict=False):
                if r < 0:
                    break
                own = own_id is not None and self.posting_id[r] == own_id
                used = matched_signals(sim, config) or [f"nearest:{config.min2_signal}"]
                row.append(
                    CatalogueMatch(
                        row=r,
                        posting_id=self.posting_id[r],
                        title=self.title[r],
                        score=float(s),
                        is_self=own,
                        signals=["self"] if own else used,
                        similarities=sim,
                    )
                )
            out.append(row)
        return out

    # -- the pair re-ranker --------------------------------------------------------------

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

    def rank(
        self,
        q: QueryFeatures,
        ranker: Ranker,
        self_ids: Sequence[str | None],
        k: int = K,
    ) -> list[list[CatalogueMatch]]:
        """Match queries with the pair re-ranker on each query's candidates.

        Each query and its candidates (every signal's top neighbours above the ranker's
        floors) form a small pool: the pairs' features are computed as in a self-match,
        the candidates' own neighbour lists searched in the catalogue; the decision is
        `rank_matches` (threshold, at-least-one-match, cap). A query that is a catalogue
        listing is that listing (its own row first, not a candidate).
        """
        missing = [s for s in ranker.signals if s not in ("tfidf", "phash", *self.stores)]
        if missing:
            raise ConfigurationError(
                f"the model's ranker needs signal(s) {', '.join(missing)}, which the live "
                "catalogue does not search (stage signals are self-match only)"
            )
        nb_q = self._ordered(self.query_neighbours(q, k))
        out = []
        for j in range(len(q)):
            pid = self_ids[j]
            own = self.row_or_none(pid)
            out.append(self._rank_one(q, j, nb_q, own, ranker, k))
        return out

    def _rank_one(
        self,
        q: QueryFeatures,
        j: int,
        nb_q: dict[str, Neighbours],
        own: int,
        ranker: Ranker,
        k: int,
    ) -> list[CatalogueMatch]:
        cfg = ranker.config.for_pool(len(self))
        cands: list[int] = []
        for name in ranker.signals:
            D, I = nb_q[name]
            floor = cfg.floors.get(name, -np.inf)
            top = cfg.top_k + 1
            for r, d in zip(I[j, :top].tolist(), D[j, :top].tolist(), strict=True):
                if r >= 0 and r != own and d >= floor and r not in cands:
                    cands.append(r)
        head = [] if own < 0 else [self._match_of(own, np.inf, True, {}, ["self"])]
        if not cands:
            return head
        # The small pool: 0 = the query, 1..m = the candidates; other catalogue rows keep
        # their place in neighbour lists as ids m + 1 + row (they count for ranks and density).
        m = len(cands)
        local = {c: i + 1 for i, c in enumerate(cands)}
        if own >= 0:
            local[own] = 0
        cq = self.row_features(cands)
        nb_c = self._ordered(self.query_neighbours(cq, k))

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
        pool = Features(
            tfidf=self.tfidf,  # type: ignore[arg-type]
            X=sp.csr_matrix(sp.vstack([self.tfidf.transform([q.title[j]]), self._X[cands]])),  # type: ignore[union-attr, index]
            phash=np.vstack([q.phash[j : j + 1], cq.phash]),
            phash_valid=np.concatenate([q.phash_valid[j : j + 1], cq.phash_valid]),
        )
        qd, cd = q.dense(), cq.dense()
        for name in qd:
            if name in cd:
                x = np.vstack([qd[name][0][j : j + 1], cd[name][0]])
                pool.set_dense(name, x, np.concatenate([qd[name][1][j : j + 1], cd[name][1]]))
        titles = [q.title[j], *cq.title]
        pairs = np.stack([np.zeros(m, np.int64), np.arange(1, m + 1)], axis=1)
        p = ranker.score(pairs, pool, nb, titles)
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
            found.append(self._match_of(r, float(p[i]), False, sims, ["ranker"]))
        return head + found

    @staticmethod
    def _ordered(nb: dict[str, Neighbours]) -> dict[str, Neighbours]:
        """Equal scores in row order, as a self-match's neighbours (`order_ties`)."""
        return {name: order_ties(D, I) for name, (D, I) in nb.items()}

    def _match_of(
        self, r: int, score: float, is_self: bool, sims: dict[str, float], signals: list[str]
    ) -> CatalogueMatch:
        return CatalogueMatch(
            row=r,
            posting_id=self.posting_id[r],
            title=self.title[r],
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
