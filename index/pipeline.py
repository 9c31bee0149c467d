"""From a catalogue to features, neighbours and matches.

`embed` turns listings into features (TF-IDF rows, phash codes, text and image
embeddings, each with a validity mask); `self_neighbours` finds every row's k nearest
rows per signal; `match_catalogue` runs the whole Kaggle-style self-match.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from index.catalogue import Catalogue
from index.encoders import Device, Encoder, load_encoder
from index.errors import EncoderError, ImageError
from index.fusion import FusionConfig, Neighbours, to_lists
from index.images import open_image
from index.progress import progress
from index.search import K, hamming_self_knn, order_ties, self_knn
from index.signals import TfidfConfig, TitleTfidf, fill_phash, phash_codes, sparse_knn
from index.stages import Part, apply_stages, fuse_stages

log = logging.getLogger(__name__)


@dataclass
class Encoders:
    """The dense encoders in use; either may be absent."""

    text: Encoder | None = None
    image: Encoder | None = None

    @classmethod
    def from_folder(cls, folder: str | Path, device: Device = "auto") -> Encoders:
        """Load `folder/text` and `folder/image` where present (a model or bundle folder)."""
        root = Path(folder)
        if not root.is_dir():
            raise EncoderError(f"model folder not found: {root}")
        found = {m: root / m for m in ("text", "image") if (root / m / "config.json").is_file()}
        if not found:
            raise EncoderError(
                f"{root} holds no encoder (expected text/ or image/ with config.json)"
            )
        return cls(**{m: load_encoder(p, device=device) for m, p in found.items()})


@dataclass
class Features:
    """Per-row features of a catalogue; `*_valid` masks rows that have the signal."""

    tfidf: TitleTfidf
    X: sp.csr_matrix  # (n, vocab) L2-normalised TF-IDF rows
    phash: np.ndarray  # (n, 8) uint8
    phash_valid: np.ndarray  # (n,) bool
    text: np.ndarray | None = None  # (n, d_text) float32, L2-normalised
    text_valid: np.ndarray | None = None
    image: np.ndarray | None = None  # (n, d_image) float32, L2-normalised
    image_valid: np.ndarray | None = None
    issues: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def parts(self) -> dict[str, Part]:
        """The searchable matrix of each signal present (zero rows where invalid), as the
        stages take them."""
        out: dict[str, Part] = {"tfidf": self.X}
        for name in ("text", "image"):
            x, valid = getattr(self, name), getattr(self, f"{name}_valid")
            if x is not None:
                out[name] = (
                    x if valid is None else np.where(valid[:, None], x, 0).astype(np.float32)
                )
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
    issues: dict[str, int] = dict(cat.issues)
    if tfidf is None:
        tfidf = TitleTfidf(tfidf_config).fit(cat.title)
    X = tfidf.transform(cat.title)
    given = cat.image_phash if cat.image_phash is not None else [""] * len(cat)  # one per row
    hashes, failed = fill_phash(given, cat.image, show_progress=show_progress)
    codes, pvalid = phash_codes(hashes)
    if failed:
        issues["image unreadable for phash (no phash signal)"] = failed
    feats = Features(tfidf=tfidf, X=X, phash=codes, phash_valid=pvalid, issues=issues)
    if encoders.text is not None:
        feats.text = encoders.text.encode(
            cat.title, batch_size=batch_size, show_progress=show_progress
        )
        feats.text_valid = np.array([bool(t) for t in cat.title])
    if encoders.image is not None and cat.image is not None:
        x, valid = embed_images(encoders.image, cat.image, show_progress=show_progress)
        feats.image, feats.image_valid = x, valid
        missing = int(sum(1 for f in cat.image if f) - valid.sum())
        if missing:
            issues["image missing or unreadable (no image signal)"] = missing
    return feats


def self_neighbours(
    feats: Features, k: int = K, device: Device = "auto", show_progress: bool = False
) -> dict[str, Neighbours]:
    """Each row's k nearest rows (itself included) per available signal; equal scores in
    id order (`order_ties`, as the Ray engine's merged shards)."""
    out: dict[str, Neighbours] = {
        "tfidf": sparse_knn(feats.X, feats.X, k, show_progress=show_progress),
        "phash": hamming_self_knn(feats.phash, feats.phash_valid, k),
    }
    if feats.text is not None:
        out["text"] = self_knn(feats.text, feats.text_valid, k, device=device)
    if feats.image is not None:
        out["image"] = self_knn(feats.image, feats.image_valid, k, device=device)
    return {name: order_ties(D, I) for name, (D, I) in out.items()}


#: The neighbour step of a self-match: features and every signal's neighbours of a
#: catalogue (`local_neighbours` in this process; `index.ray_engine` on Ray).
NeighbourStep = Callable[[Catalogue, Encoders], tuple[Features, dict[str, Neighbours]]]


def local_neighbours(
    tfidf_config: TfidfConfig | None = None, device: Device = "auto", show_progress: bool = False
) -> NeighbourStep:
    """The single-process neighbour step: `embed`, then `self_neighbours`."""

    def step(cat: Catalogue, encoders: Encoders) -> tuple[Features, dict[str, Neighbours]]:
        feats = embed(cat, encoders, tfidf_config=tfidf_config, show_progress=show_progress)
        return feats, self_neighbours(feats, device=device, show_progress=show_progress)

    return step


@dataclass
class SelfMatch:
    """What a self-match computed: features, neighbours after the stages, the config as
    applied (thresholds of the computed signals only), fused rows and the matches."""

    features: Features
    neighbours: dict[str, Neighbours]
    config: FusionConfig
    I: np.ndarray  # (n, max_matches) fused row ids, -1 padded
    matches: list[list[str]]


def self_match(
    cat: Catalogue,
    config: FusionConfig,
    encoders: Encoders | None = None,
    neighbours: NeighbourStep | None = None,
    device: Device = "auto",
) -> SelfMatch:
    """Kaggle semantics, the one path of `pricematch match`, `evaluate`, `/batch-match` and
    `--engine ray`: the rows of `cat` matched among themselves (each row's matches: itself
    first, at most `config.max_matches`).

    Args:
        neighbours: the neighbour step (default: `local_neighbours(device=device)`).
    """
    step = neighbours or local_neighbours(device=device)
    feats, nb = step(cat, encoders or Encoders())
    nb = apply_stages(feats.parts(), nb, config, device=device)
    config = config.with_(thresholds={k: v for k, v in config.thresholds.items() if k in nb})
    I, _ = fuse_stages(nb, config, cat.title)
    return SelfMatch(feats, nb, config, I, to_lists(I, cat.posting_id))


def match_catalogue(
    cat: Catalogue,
    config: FusionConfig,
    encoders: Encoders | None = None,
    tfidf_config: TfidfConfig | None = None,
    device: Device = "auto",
    show_progress: bool = False,
) -> tuple[list[list[str]], Features]:
    """`self_match` in this process; returns the matches and the features."""
    step = local_neighbours(tfidf_config, device, show_progress)
    r = self_match(cat, config, encoders, step, device)
    return r.matches, r.features
