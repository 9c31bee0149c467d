"""Title TF-IDF: word (and optional char n-gram) vectorisers fitted on the normalised
titles, their rows L2-normalised; saved with a bundle and loaded back as fitted.

Its neighbours come from `index.search.knn.sparse_knn`, as `(D, I)` like every signal.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from index.features.text import model_codes, normalize_title

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer


#: The word vectoriser's token pattern (`TitleTfidf._vectorizers`, `_word_rows`).
_TOKEN = re.compile(r"(?u)\b\w+\b")
#: The one document a vectoriser is fitted on when no title has a token of its kind.
_NO_WORD = "_empty_"


def _l2_rows(X: sp.spmatrix) -> sp.csr_matrix:
    """float32 CSR with each row L2-normalised (zero rows stay zero)."""
    X = sp.csr_matrix(X, dtype=np.float32)
    n = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1 / np.maximum(n, 1e-12)) @ X, dtype=np.float32)


class TfidfConfig(BaseModel):
    """How titles become TF-IDF vectors: word and char n-grams, stacked and re-normalised.

    Attributes:
        code_tokens: add each model code with its separators removed as one more word
            (`features.text.model_codes`: `DSC-W120` and `DSCW120` both give `dscw120`).
        char_ngrams: (min, max) character n-grams as a second part, or None (off);
            weighted `char_weight` against the words (`char_analyzer`: "char_wb" keeps
            n-grams inside words).
        char_source: (min, max) character n-grams (within words) of a TF-IDF of their own,
            the "char" signal with its own neighbour list (`TitleTfidf.transform_source`),
            not mixed into the word rows; None (off). It lists look-alike spellings that
            share no word ("charger"/"chargr", "iphone11"/"iphone 11").
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    # On by default: +0.05 pairwise F1 on WDC computers, neutral on the Shopee dev rows
    # (docs/BENCHMARKS.md, "Entity-matching options").
    code_tokens: bool = True
    #: field -> weight: TF-IDF is the weighted sum of each field's own (normalised) vector,
    #: renormalised (`TitleTfidf.transform_fields`); {}: the joined title as one text
    field_weights: dict[str, float] = Field(default_factory=dict)
    word_ngrams: tuple[int, int] = (1, 1)
    char_ngrams: tuple[int, int] | None = None
    char_analyzer: Literal["char", "char_wb"] = "char_wb"
    char_weight: float = 0.5
    char_source: tuple[int, int] | None = None
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
        self.source: TfidfVectorizer | None = None

    def _vectorizers(
        self,
    ) -> tuple[TfidfVectorizer, TfidfVectorizer | None, TfidfVectorizer | None]:
        # imported here: the k-NN side of this module (sparse_topk) runs without sklearn
        from sklearn.feature_extraction.text import TfidfVectorizer

        c = self.config
        word = TfidfVectorizer(
            token_pattern=_TOKEN.pattern,
            ngram_range=c.word_ngrams,
            binary=c.binary,
            sublinear_tf=c.sublinear_tf,
            min_df=c.min_df,
            max_df=c.max_df,
            dtype=np.float32,
            lowercase=False,
        )

        def chars(ngrams: tuple[int, int] | None, analyzer: str) -> TfidfVectorizer | None:
            if ngrams is None:
                return None
            return TfidfVectorizer(
                analyzer=analyzer,
                ngram_range=ngrams,
                binary=c.binary,
                sublinear_tf=c.sublinear_tf,
                min_df=c.min_df,
                max_df=c.max_df,
                dtype=np.float32,
                lowercase=False,
            )

        return word, chars(c.char_ngrams, c.char_analyzer), chars(c.char_source, "char_wb")

    def _texts(self, titles: list[str]) -> list[str]:
        """The normalised titles, each followed by its joined model codes if asked."""
        norm = [normalize_title(t) for t in titles]
        if self.config.code_tokens:
            norm = [" ".join([n, *model_codes(t)]) for n, t in zip(norm, titles, strict=True)]
        return norm

    def fit(self, titles: list[str]) -> TitleTfidf:
        return self._fit(self._texts(titles))

    def _fit(self, norm: list[str]) -> TitleTfidf:
        self.word, self.char, self.source = self._vectorizers()
        # a catalogue without one word token (empty, punctuation-only or emoji-only titles)
        # still gets a (useless) vocabulary: every row is then a zero row, matched by the
        # other signals and at-least-one-match alone
        words = norm if any(_TOKEN.search(t) for t in norm) else [_NO_WORD]
        self.word.fit(words)
        for vec in (self.char, self.source):
            if vec is None:
                continue
            try:
                vec.fit(norm)
            except ValueError:  # no character n-gram in any title (all shorter than min)
                vec.fit([_NO_WORD])
        return self

    @property
    def has_source(self) -> bool:
        """Whether it gives the "char" signal's rows (`TfidfConfig.char_source`)."""
        return self.source is not None

    def transform_source(self, titles: list[str]) -> sp.csr_matrix:
        """(n, char vocab) float32 CSR of the "char" signal (`TfidfConfig.char_source`),
        rows L2-normalised (titles without an n-gram of the vocabulary are zero rows)."""
        assert self.source is not None, "a TF-IDF without char_source"
        return _l2_rows(self.source.transform(self._texts(titles)))

    def transform(self, titles: list[str]) -> sp.csr_matrix:
        """(n, vocab) float32 CSR, rows L2-normalised (empty titles are zero rows)."""
        return self._transform(self._texts(titles))

    def _transform(self, norm: list[str]) -> sp.csr_matrix:
        assert self.word is not None, "fit or load first"
        if self.char is None and tuple(self.config.word_ngrams) == (1, 1):
            return self._word_rows(norm)
        X = self.word.transform(norm)
        C = self.char.transform(norm) if self.char is not None else None
        return self._stack(X, C)

    def _word_rows(self, norm: list[str]) -> sp.csr_matrix:
        """Word-unigram rows without scikit-learn's per-call overhead (1 ms for one title,
        most of a `/match`): the vocabulary's tokens of each text, tf (1 when binary; 1 +
        log tf when sublinear) times idf, each row L2-normalised. Equal to the vectoriser's
        `transform` then `_stack` within float32 rounding (tested)."""
        assert self.word is not None
        vocab = self.word.vocabulary_
        idf = np.asarray(self.word.idf_, np.float64)
        binary, sublinear = self.config.binary, self.config.sublinear_tf
        indptr = [0]
        ind: list[int] = []
        tf: list[float] = []
        for text in norm:
            toks = [vocab[w] for w in _TOKEN.findall(text) if w in vocab]
            if binary:
                ids = sorted(set(toks))
                ind += ids
                tf += [1.0] * len(ids)
            else:
                counts = Counter(toks)
                ids = sorted(counts)
                ind += ids
                tf += [1 + math.log(counts[i]) if sublinear else counts[i] for i in ids]
            indptr.append(len(ind))
        cols = np.asarray(ind, np.int64)
        data = np.asarray(tf, np.float64) * idf[cols]
        rows = np.repeat(np.arange(len(norm)), np.diff(indptr))
        norms = np.sqrt(np.bincount(rows, weights=data * data, minlength=len(norm)))
        data = (data / np.maximum(norms[rows], 1e-12)).astype(np.float32)
        shape = (len(norm), len(vocab))
        return sp.csr_matrix((data, cols.astype(np.int32), np.asarray(indptr)), shape=shape)

    def fit_transform(self, titles: list[str]) -> sp.csr_matrix:
        """`fit(titles).transform(titles)`, bit for bit (the Ray engine fits, then transforms
        its shards), with the titles normalised once."""
        norm = self._texts(titles)
        return self._fit(norm)._transform(norm)

    def _stack(self, X: sp.csr_matrix, C: sp.csr_matrix | None) -> sp.csr_matrix:
        """Word (and char) parts weighted, stacked, rows L2-normalised, float32 CSR."""
        if C is not None:
            w = self.config.char_weight
            X = sp.hstack([np.sqrt(1 - w) * X, np.sqrt(w) * C])
        return _l2_rows(X)

    def transform_fields(self, fields: dict[str, list[str]]) -> sp.csr_matrix:
        """(n, vocab) rows of listings given as per-field texts: the sum over the weighted
        fields (`config.field_weights`) of each field's L2-normalised vector, L2-normalised.

        Raises:
            KeyError: a weighted field is not in `fields`.
        """
        weights = self.config.field_weights
        parts = [w * self.transform(fields[f]) for f, w in weights.items() if w > 0]
        if not parts:
            n = len(next(iter(fields.values())))
            return sp.csr_matrix((n, self.transform([""]).shape[1]), dtype=np.float32)
        return _l2_rows(sum(parts[1:], parts[0]))

    def save(self, folder: Path) -> list[Path]:
        """Write `tfidf.json` (config, vocabularies) and `tfidf_idf.npz`; returns the paths."""
        assert self.word is not None
        vocab = {"word": {k: int(v) for k, v in self.word.vocabulary_.items()}}
        idf = {"word": self.word.idf_.astype(np.float32)}
        for name, vec in (("char", self.char), ("source", self.source)):
            if vec is not None:
                vocab[name] = {k: int(v) for k, v in vec.vocabulary_.items()}
                idf[name] = vec.idf_.astype(np.float32)
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
        # a file written before code tokens existed was fitted without them
        self = cls(TfidfConfig.model_validate({"code_tokens": False, **meta["config"]}))
        word, char, source = self._vectorizers()
        for name, vec in (("word", word), ("char", char), ("source", source)):
            if vec is None:
                continue
            vec.vocabulary_ = meta["vocabulary"][name]
            vec.idf_ = idf[name]
        self.word, self.char, self.source = word, char, source
        return self
