"""Title TF-IDF and perceptual-hash signals.

Each signal ends as neighbours `(D, I)` of shape (n, k): similarity in [0, 1], descending,
and row ids (-1 padded), so that fusion treats every signal alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict

from index.errors import ImageError
from index.images import compute_phash
from index.progress import progress
from index.search import K, no_neighbours
from index.text import normalize_title

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

class TfidfConfig(BaseModel):
    """How titles become TF-IDF vectors: word and char n-grams, stacked and re-normalised."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    word_ngrams: tuple[int, int] = (1, 1)
    char_ngrams: tuple[int, int] | None = None
    char_analyzer: Literal["char", "char_wb"] = "char_wb"
    char_weight: float = 0.5
    binary: bool = True
    sublinear_tf: bool = False
    min_df: int = 1
    max_df: float = 1.0


class TitleTfidf:
    """Fitted TF-IDF over normalised titles. Save/load keep vocabularies and idf only."""

    def __init__(self, config: TfidfConfig | None = None) -> None:
        self.config = config or TfidfConfig()
        self.word: TfidfVectorizer | None = None
        self.char: TfidfVectorizer | None = None

    def _vectorizers(self) -> tuple[TfidfVectorizer, TfidfVectorizer | None]:
        # imported here: the k-NN side of this module (sparse_topk) runs without sklearn
        from sklearn.feature_extraction.text import TfidfVectorizer

        c = self.config
        word = TfidfVectorizer(
            token_pattern=r"(?u)\b\w+\b",
            ngram_range=c.word_ngrams,
            binary=c.binary,
            sublinear_tf=c.sublinear_tf,
            min_df=c.min_df,
            max_df=c.max_df,
            dtype=np.float32,
            lowercase=False,
        )
        char = None
        if c.char_ngrams is not None:
            char = TfidfVectorizer(
                analyzer=c.char_analyzer,
                ngram_range=c.char_ngrams,
                binary=c.binary,
                sublinear_tf=c.sublinear_tf,
                min_df=c.min_df,
                max_df=c.max_df,
                dtype=np.float32,
                lowercase=False,
            )
        return word, char

    def fit(self, titles: list[str]) -> TitleTfidf:
        norm = [normalize_title(t) for t in titles]
        self.word, self.char = self._vectorizers()
        if not any(norm):
            norm = ["_empty_"]  # an all-empty catalogue still gets a (useless) vocabulary
        self.word.fit(norm)
        if self.char is not None:
            self.char.fit(norm)
        return self

    def transform(self, titles: list[str]) -> sp.csr_matrix:
        """(n, vocab) float32 CSR, rows L2-normalised (empty titles are zero rows)."""
        assert self.word is not None, "fit or load first"
        norm = [normalize_title(t) for t in titles]
        X = self.word.transform(norm)
        if self.char is not None:
            w = self.config.char_weight
            X = sp.hstack([np.sqrt(1 - w) * X, np.sqrt(w) * self.char.transform(norm)])
        X = sp.csr_matrix(X, dtype=np.float32)
        n = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1 / np.maximum(n, 1e-12)) @ X, dtype=np.float32)

    def save(self, folder: Path) -> list[Path]:
        """Write `tfidf.json` (config, vocabularies) and `tfidf_idf.npz`; returns the paths."""
        assert self.word is not None
        vocab = {"word": {k: int(v) for k, v in self.word.vocabulary_.items()}}
        idf = {"word": self.word.idf_.astype(np.float32)}
        if self.char is not None:
            vocab["char"] = {k: int(v) for k, v in self.char.vocabulary_.items()}
            idf["char"] = self.char.idf_.astype(np.float32)
        p1, p2 = folder / "tfidf.json", folder / "tfidf_idf.npz"
        p1.write_text(
            json.dumps(
                {"config": self.config.model_dump(), "vocabulary": vocab}, ensure_ascii=False
            ),
            encoding="utf-8",
        )
        np.savez(p2, **idf)
        return [p1, p2]

    @classmethod
    def load(cls, folder: Path) -> TitleTfidf:
        meta = json.loads((folder / "tfidf.json").read_text(encoding="utf-8"))
        idf = np.load(folder / "tfidf_idf.npz")
        self = cls(TfidfConfig.model_validate(meta["config"]))
        word, char = self._vectorizers()
        for name, vec in (("word", word), ("char", char)):
            if vec is None:
                continue
            vec.vocabulary_ = meta["vocabulary"][name]
            vec.idf_ = idf[name]
        self.word, self.char = word, char
        return self


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


def sparse_knn(
    Xq: sp.csr_matrix,
    Xb: sp.csr_matrix,
    k: int = K,
    chunk: int = 512,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN between L2-normalised sparse rows, in row chunks.

    Memory is bounded by one dense (chunk, nb) block, so 70k rows fit in a few hundred MB.
    Zero rows (empty titles) get no neighbours.
    """
    assert Xq.shape[1] == Xb.shape[1], (Xq.shape, Xb.shape)
    nq = Xq.shape[0]
    D = np.full((nq, k), -np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    XbT = sp.csr_matrix(Xb.T)
    starts = range(0, nq, chunk)
    for s in progress(starts, desc="tfidf neighbours", unit="chunk", disable=not show_progress):
        D[s : s + chunk], I[s : s + chunk] = sparse_topk(Xq[s : s + chunk], XbT, k)
    return D, I


def phash_codes(hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """16-hex-digit phash strings -> (n, 8) uint8 codes and (n,) validity mask."""
    n = len(hashes)
    codes = np.zeros((n, 8), np.uint8)
    valid = np.zeros(n, bool)
    for i, h in enumerate(hashes):
        if h and len(h) == 16:
            try:
                codes[i] = np.frombuffer(bytes.fromhex(h), np.uint8)
                valid[i] = True
            except ValueError:
                pass
    return codes, valid


def fill_phash(
    hashes: list[str], images: list[str] | None, show_progress: bool = False
) -> tuple[list[str], int]:
    """Given phashes (one per row, "" where none), computing the missing ones from images.

    Returns:
        The hashes ("" where none) and the count of images that could not be read.
    """
    out = list(hashes)
    failed = 0
    if images is None:
        return out, 0
    assert len(images) == len(out), (len(images), len(out))
    todo = [i for i in range(len(out)) if not out[i] and images[i]]
    for i in progress(todo, desc="phash", unit="img", disable=not show_progress):
        try:
            out[i] = compute_phash(images[i])
        except ImageError:
            failed += 1
    return out, failed
