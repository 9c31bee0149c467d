"""From listings to features: TF-IDF rows, phash codes, text and image embeddings, each
with a validity mask (`embed`); `Features` is what the search and matching steps take."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp

from index.data.listings import Catalogue
from index.errors import CatalogueError, ImageError
from index.features.encoders import Encoder
from index.features.images import fill_phash, open_image, phash_codes
from index.features.tfidf import TfidfConfig, TitleTfidf
from index.progress import progress

log = logging.getLogger(__name__)

#: A searchable matrix of one signal: (n, d) dense float32 or (n, v) CSR.
Part: TypeAlias = np.ndarray | sp.csr_matrix
DENSE = ("text", "image")


class DenseSignals:
    """The text/image embeddings of a feature set, with their validity masks."""

    text: np.ndarray | None
    text_valid: np.ndarray | None
    image: np.ndarray | None
    image_valid: np.ndarray | None

    def dense(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each embedding present -> (x (n, d) float32, valid (n,) bool)."""
        out = {}
        for m, x, valid in (
            ("text", self.text, self.text_valid),
            ("image", self.image, self.image_valid),
        ):
            if x is not None:
                out[m] = (x, np.ones(x.shape[0], bool) if valid is None else valid)
        return out


@dataclass
class Encoders:
    """The dense encoders in use; either may be absent."""

    text: Encoder | None = None
    image: Encoder | None = None


@dataclass
class Features(DenseSignals):
    """Per-row features of a catalogue; `*_valid` masks rows that have the signal."""

    tfidf: TitleTfidf
    X: sp.csr_matrix  # (n, vocab) L2-normalised TF-IDF rows
    phash: np.ndarray  # (n, 8) uint8
    phash_valid: np.ndarray  # (n,) bool
    text: np.ndarray | None = None  # (n, d_text) float32, L2-normalised
    text_valid: np.ndarray | None = None
    image: np.ndarray | None = None  # (n, d_image) float32, L2-normalised
    image_valid: np.ndarray | None = None
    #: (n, char vocab) L2-normalised rows of the "char" signal (`TfidfConfig.char_source`,
    #: from `tfidf`), None when the TF-IDF has none
    C: sp.csr_matrix | None = None
    issues: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def subset(self, rows: np.ndarray) -> Features:
        """The features of `rows` (the same fitted TF-IDF; issues not carried)."""
        out = Features(
            tfidf=self.tfidf,
            X=sp.csr_matrix(self.X[rows]),
            phash=self.phash[rows],
            phash_valid=self.phash_valid[rows],
            C=None if self.C is None else sp.csr_matrix(self.C[rows]),
        )
        for m, (x, valid) in self.dense().items():
            out.set_dense(m, x[rows], valid[rows])
        return out

    def set_dense(self, modality: str, x: np.ndarray, valid: np.ndarray) -> None:
        """Set one modality's embeddings (n, d) float32 and validity (n,) bool."""
        assert modality in DENSE, modality
        assert x.shape[0] == valid.shape[0] == len(self), (x.shape, valid.shape, len(self))
        setattr(self, modality, x)
        setattr(self, f"{modality}_valid", valid)

    def present(self) -> set[str]:
        """The base signals some row has: "tfidf" (a non-empty title), "char", "phash",
        "text", "image" (what a report may name; an absent signal matches nothing)."""
        out = {"tfidf"} if self.X.nnz else set()
        if self.C is not None and self.C.nnz:
            out.add("char")
        if self.phash_valid.any():
            out.add("phash")
        out |= {m for m, (_, valid) in self.dense().items() if valid.any()}
        return out

    def pair_similarity(self, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(m,) float32 exact similarity of the row pairs (a[i], b[i]) in signal `name`
        ("tfidf", "char", "text", "image"; "phash": 1 - hamming/64), NaN where a side
        lacks it."""
        if name == "phash":
            return (1.0 - self.phash_distance(a, b) / 64.0).astype(np.float32)
        if name in ("tfidf", "char"):
            X = self.X if name == "tfidf" else self.C
            assert X is not None, "features without the char signal"
            s = np.asarray(X[a].multiply(X[b]).sum(axis=1)).ravel().astype(np.float32)
            empty = np.diff(X.indptr) == 0
            return np.where(empty[a] | empty[b], np.nan, s).astype(np.float32)
        x, valid = self.dense()[name]
        s = np.einsum("ij,ij->i", x[a], x[b]).astype(np.float32)
        return np.where(valid[a] & valid[b], s, np.nan).astype(np.float32)

    def phash_distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(m,) float32 Hamming distance (0..64) of the pairs' phash codes, NaN where a side
        has none."""
        x = np.bitwise_xor(self.phash[a], self.phash[b])
        d = np.unpackbits(x, axis=1).sum(axis=1).astype(np.float32)
        return np.where(self.phash_valid[a] & self.phash_valid[b], d, np.nan).astype(np.float32)

    def parts(self) -> dict[str, Part]:
        """The searchable matrix of each signal present (zero rows where invalid), as the
        stages take them."""
        out: dict[str, Part] = {"tfidf": self.X}
        if self.C is not None:
            out["char"] = self.C
        for name, (x, valid) in self.dense().items():
            out[name] = x if valid.all() else np.where(valid[:, None], x, 0).astype(np.float32)
        return out


def embed_images(
    encoder: Encoder, images: Sequence[str], batch_size: int = 32, show_progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Embed image files batch by batch; unreadable ones are marked invalid, not fatal.

    Returns:
        x (n, dim) float32 (zero rows where invalid) and valid (n,) bool.
    """
    n = len(images)
    x = np.zeros((n, encoder.dim), np.float32)
    valid = np.zeros(n, bool)
    starts = range(0, n, batch_size)
    for s in progress(starts, desc="image encoder", unit="batch", disable=not show_progress):
        good, imgs = [], []
        for i in range(s, min(s + batch_size, n)):
            if not images[i]:
                continue
            try:
                imgs.append(open_image(images[i]))
                good.append(i)
            except ImageError as e:
                log.debug("skipping image: %s", e)
        if good:
            x[good] = encoder.encode(imgs, batch_size=len(imgs))
            valid[good] = True
    return x, valid


#: What `Features.issues` counts, beside the catalogue's own issues.
PHASH_UNREADABLE = "image unreadable for phash (no phash signal)"
IMAGE_MISSING = "image missing or unreadable (no image signal)"


def title_mask(titles: Sequence[str]) -> np.ndarray:
    """(n,) bool: rows whose title is not empty (the text signal's validity)."""
    return np.array([bool(t) for t in titles], bool)


def build_features(
    cat: Catalogue,
    tfidf: TitleTfidf,
    X: sp.csr_matrix,
    phash: tuple[np.ndarray, np.ndarray],
    phash_failed: int,
    dense: dict[str, tuple[np.ndarray, np.ndarray]],
) -> Features:
    """`Features` of `cat` from computed parts, counting what rows lack (the one place
    `embed` and the Ray engine both assemble them).

    Args:
        phash: (n, 8) uint8 codes and (n,) validity.
        phash_failed: images that could not be read for a phash.
        dense: "text"/"image" -> (x (n, d) float32, valid (n,) bool); the image one is
            kept only when `cat.image` holds paths.
    """
    issues: dict[str, int] = dict(cat.issues)
    if phash_failed:
        issues[PHASH_UNREADABLE] = phash_failed
    codes, pvalid = phash
    C = tfidf.transform_source(list(cat.title)) if tfidf.has_source else None
    feats = Features(tfidf=tfidf, X=X, phash=codes, phash_valid=pvalid, C=C, issues=issues)
    if "text" in dense:
        feats.set_dense("text", *dense["text"])
    if "image" in dense and cat.image is not None:
        feats.set_dense("image", *dense["image"])
        missing = int(sum(1 for f in cat.image if f) - dense["image"][1].sum())
        if missing:
            issues[IMAGE_MISSING] = missing
    return feats


def embed(
    cat: Catalogue,
    encoders: Encoders | None = None,
    tfidf: TitleTfidf | None = None,
    tfidf_config: TfidfConfig | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> Features:
    """Compute every available feature of `cat`.

    Args:
        cat: the listings.
        encoders: dense encoders; the image one is used only when `cat.image` holds paths.
        tfidf: an already fitted TF-IDF (a bundle's); by default one is fitted on `cat`.
        tfidf_config: settings for the fitted-here TF-IDF.
    """
    encoders = encoders or Encoders()
    weighted = tfidf_config is not None and tfidf_config.field_weights
    if weighted and tfidf is None:
        missing = sorted(set(tfidf_config.field_weights) - set(cat.fields or {}))  # type: ignore[union-attr]
        if missing:
            raise CatalogueError(
                f"field weights name {', '.join(missing)}, which the listings were not read "
                "with (--fields)"
            )
        tfidf = TitleTfidf(tfidf_config).fit(cat.title)  # the vocabulary of every field
        X = tfidf.transform_fields(cat.fields)  # type: ignore[arg-type]
    elif tfidf is None:
        tfidf = TitleTfidf(tfidf_config)
        X = tfidf.fit_transform(cat.title)
    else:
        X = tfidf.transform(cat.title)
    given = cat.image_phash if cat.image_phash is not None else [""] * len(cat)  # one per row
    hashes, failed = fill_phash(given, cat.image, show_progress=show_progress)
    dense: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if encoders.text is not None:
        x = encoders.text.encode(cat.title, batch_size=batch_size, show_progress=show_progress)
        dense["text"] = (x, title_mask(cat.title))
    if encoders.image is not None and cat.image is not None:
        dense["image"] = embed_images(encoders.image, cat.image, show_progress=show_progress)
    return build_features(cat, tfidf, X, phash_codes(hashes), failed, dense)


@dataclass
class QueryFeatures(DenseSignals):
    """Features of listings to match (or to add), in the catalogue's feature spaces."""

    title: list[str]
    phash: np.ndarray  # (n, 8) uint8
    phash_valid: np.ndarray  # (n,) bool
    text: np.ndarray | None = None  # (n, d) float32
    text_valid: np.ndarray | None = None
    image: np.ndarray | None = None
    image_valid: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.title)

    @classmethod
    def build(
        cls,
        titles: Sequence[str],
        phashes: Sequence[str],
        text: np.ndarray | None = None,
        image: np.ndarray | None = None,
        image_valid: np.ndarray | None = None,
    ) -> QueryFeatures:
        """From titles, 16-hex-digit phashes ("" for none) and optional embeddings."""
        n = len(titles)
        assert len(phashes) == n
        codes, pvalid = phash_codes(list(phashes))
        tv = None
        if text is not None:
            assert text.shape[0] == n
            tv = title_mask(titles)
        if image is not None:
            assert image.shape[0] == n
            image_valid = np.ones(n, bool) if image_valid is None else image_valid
        else:
            image_valid = None
        return cls(list(titles), codes, pvalid, text, tv, image, image_valid)
