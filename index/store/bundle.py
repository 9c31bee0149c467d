"""A bundle: everything needed to match against a catalogue, in one folder.

Layout::

    manifest.json      format, versions, row count, dims, sha256 of every other file
    fusion.json        FusionConfig (thresholds)
    listings.csv       posting_id,title,image,image_phash[,label_group]
    tfidf.json, tfidf_idf.npz, tfidf.npz   fitted vocabularies and the catalogue's rows
    char.npz           the "char" signal's rows, when the TF-IDF has a char source
    phash.npy          (n, 8) uint8 codes; rows without a hash are all-zero and masked
    masks.npz          per-signal validity masks
    text.faiss, image.faiss   FAISS stores of the embeddings (ids = row numbers)
    encoders/text/, encoders/image/   the ONNX encoder artifacts used to build it
    ranker/            the model's pair re-ranker, when it has one (`Ranker.save`)

Written to a temporary folder then renamed into place, so a crash leaves the old bundle
or the new one, never half of one (`index.store.atomic.write_atomic`); verified against
the manifest on load.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import scipy.sparse as sp

from index import __version__
from index.data.listings import Catalogue, read_catalogue
from index.errors import BundleError
from index.features.embed import Encoders, Features
from index.features.encoders import Device
from index.features.images import phash_hex
from index.features.tfidf import TitleTfidf
from index.matching.fusion import FusionConfig
from index.matching.ranker import Ranker
from index.search.stores import FaissFlatStore
from index.store.atomic import sha256, write_atomic
from index.store.model import (
    FUSION,
    RANKER,
    Model,
    load_encoders,
    read_fusion,
    write_fusion,
)

FORMAT = 1
#: The bundle's folder of encoder artifacts (text/, image/), absent where none is used.
ENCODERS = "encoders"
#: The "char" signal's rows (`Features.C`), present when the TF-IDF has a char source.
CHAR = "char.npz"


def _versions() -> dict[str, str]:
    import faiss
    import onnxruntime
    import sklearn

    return {
        "pricematch": __version__,
        "faiss": faiss.__version__,
        "onnxruntime": onnxruntime.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


def _write_listings(path: Path, cat: Catalogue, phash: list[str]) -> None:
    cols = ["posting_id", "title", "image", "image_phash"]
    if cat.label_group is not None:
        cols.append("label_group")
    names = cat.image_name or [""] * len(cat)
    images = [PurePosixPath(f.replace("\\", "/")).name if f else "" for f in names]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for i in range(len(cat)):
            row = [cat.posting_id[i], cat.title[i], images[i], phash[i]]
            if cat.label_group is not None:
                row.append(cat.label_group[i])
            w.writerow(row)


def save_bundle(
    out: str | Path,
    cat: Catalogue,
    feats: Features,
    fusion: FusionConfig,
    encoders: Encoders | None = None,
    ranker: Ranker | None = None,
) -> Path:
    """Write a bundle folder atomically (see the module doc for the layout); `ranker`: the
    model's pair re-ranker, carried so that `/match` and `match --bundle` use it."""
    encoders = encoders or Encoders()
    n = len(cat)
    assert len(feats) == n, (len(feats), n)

    def fill(tmp: Path) -> None:
        write_fusion(tmp / FUSION, fusion)
        _write_listings(tmp / "listings.csv", cat, phash_hex(feats.phash, feats.phash_valid))
        feats.tfidf.save(tmp)
        sp.save_npz(tmp / "tfidf.npz", feats.X)
        np.save(tmp / "phash.npy", feats.phash)
        masks = {"phash": feats.phash_valid}
        dims: dict[str, int] = {"tfidf": int(feats.X.shape[1])}
        if feats.C is not None:
            sp.save_npz(tmp / CHAR, feats.C)
            dims["char"] = int(feats.C.shape[1])
        for m, (x, valid) in feats.dense().items():
            enc = getattr(encoders, m)
            store = FaissFlatStore(x.shape[1], device="cpu")
            rows = np.flatnonzero(valid)
            store.add(rows, x[rows])
            store.save(tmp / f"{m}.faiss")
            masks[m] = valid
            dims[m] = int(x.shape[1])
            if enc is not None:
                shutil.copytree(enc.folder, tmp / ENCODERS / m)
        np.savez(tmp / "masks.npz", **masks)  # type: ignore[arg-type]
        if ranker is not None:
            ranker.save(tmp / RANKER)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": n,
            "dims": dims,
            "signals": sorted(["tfidf", "phash", *[m for m in ("text", "image") if m in masks],
                               *(["char"] if feats.C is not None else [])]),
            "versions": _versions(),
            "files": {str(p.relative_to(tmp)): sha256(p) for p in files},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")

    return write_atomic(Path(out), fill)


@dataclass
class Bundle:
    """A loaded bundle: the catalogue, its features as stores, the config and encoders."""

    folder: Path
    manifest: dict[str, Any]
    catalogue: Catalogue
    fusion: FusionConfig
    tfidf: TitleTfidf
    X: sp.csr_matrix
    phash: np.ndarray
    masks: dict[str, np.ndarray]
    stores: dict[str, FaissFlatStore]
    encoders: Encoders
    ranker: Ranker | None = None
    C: sp.csr_matrix | None = None  # the "char" signal's rows (a TF-IDF with a char source)


def verify_bundle(folder: str | Path) -> dict[str, Any]:
    """Check the manifest against the files; returns the manifest.

    Raises:
        BundleError: no manifest, unknown format, a missing file or a checksum mismatch.
    """
    root = Path(folder)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise BundleError(f"{root} is not a bundle (no manifest.json)")
    try:
        manifest: dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath}: invalid JSON ({e})") from e
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{root}: bundle format {manifest.get('format')!r}, expected {FORMAT}")
    for rel, digest in manifest["files"].items():
        p = root / rel
        if not p.is_file():
            raise BundleError(f"{root}: file {rel} listed in the manifest is missing")
        if sha256(p) != digest:
            raise BundleError(f"{root}: checksum mismatch for {rel} (file changed or corrupt)")
    return manifest


def load_bundle(folder: str | Path, device: Device = "auto", with_encoders: bool = True) -> Bundle:
    """Load and verify a bundle written by `save_bundle`."""
    root = Path(folder)
    manifest = verify_bundle(root)
    cat = read_catalogue(root / "listings.csv")
    n = manifest["rows"]
    if len(cat) != n:
        raise BundleError(f"{root}: listings.csv has {len(cat)} rows, manifest says {n}")
    fusion = read_fusion(root / FUSION)
    masks = dict(np.load(root / "masks.npz"))
    stores = {
        m: FaissFlatStore.load(root / f"{m}.faiss", device=device)
        for m in ("text", "image")
        if (root / f"{m}.faiss").is_file()
    }
    tfidf = TitleTfidf.load(root)
    C = sp.csr_matrix(sp.load_npz(root / CHAR)) if (root / CHAR).is_file() else None
    if tfidf.has_source != (C is not None):
        raise BundleError(f"{root}: {CHAR} and the TF-IDF's char source disagree")
    enc_dir = root / ENCODERS
    encoders = (
        load_encoders(enc_dir, device=device) if with_encoders and enc_dir.is_dir() else Encoders()
    )
    return Bundle(
        folder=root,
        manifest=manifest,
        catalogue=cat,
        fusion=fusion,
        tfidf=tfidf,
        X=sp.csr_matrix(sp.load_npz(root / "tfidf.npz")),
        phash=np.load(root / "phash.npy"),
        masks=masks,
        stores=stores,
        encoders=encoders,
        ranker=bundle_ranker(root),
        C=C,
    )


def bundle_model(folder: str | Path) -> Model:
    """A bundle as a model (its fusion config, ranker and the folder of its encoders),
    verified against its manifest first; for matching rows among themselves with the
    bundle's pipeline (`match --bundle`). No encoder is loaded here: the caller loads the
    ones the pipeline needs from `folder` (`load_some_encoders`), which may not exist where
    the pipeline uses none.

    Raises:
        BundleError: what `verify_bundle` raises.
    """
    root = Path(folder)
    verify_bundle(root)
    return Model(root / ENCODERS, Encoders(), read_fusion(root / FUSION), bundle_ranker(root))


def bundle_ranker(folder: str | Path) -> Ranker | None:
    """The pair re-ranker a bundle carries (`ranker/`), or None."""
    d = Path(folder) / RANKER
    return Ranker.load(d) if d.is_dir() else None
