"""Out-of-fold embeddings, the one owner of their format.

`pricematch train` writes them (each row embedded by the fold model that did not train on
it) into `MODEL/oof/`; `pricematch evaluate --ablation --oof MODEL` reads them back::

    {modality}.npy   (n, dim) float32, row-aligned with the training CSV
    folds.npy        (n,) int64 fold of each row (-1: not used)
    meta.json        rows, the posting ids' sha256 (a reader checks the rows are its CSV's)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from index.errors import CatalogueError

MODALITIES = ("text", "image")


def posting_ids_sha256(posting_ids: Sequence[str]) -> str:
    """The checksum that ties out-of-fold rows to a CSV's rows (order included)."""
    return hashlib.sha256("\n".join(map(str, posting_ids)).encode()).hexdigest()


def write_oof(
    folder: str | Path,
    modality: str,
    oof: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    posting_ids: Sequence[str],
) -> Path:
    """Write one modality's out-of-fold embeddings (see the module doc for the files).

    Args:
        oof: (n, dim) embeddings, row i of the CSV's row i.
        folds: (train_rows, valid_rows) of each fold.
    """
    assert modality in MODALITIES, modality
    n = len(posting_ids)
    assert oof.shape[0] == n, (oof.shape, n)
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    fold = np.full(n, -1, np.int64)
    for f, (_, va) in enumerate(folds):
        fold[va] = f
    np.save(d / f"{modality}.npy", oof.astype(np.float32))
    np.save(d / "folds.npy", fold)
    meta = {"rows": n, "posting_id_sha256": posting_ids_sha256(posting_ids), "folds": len(folds)}
    (d / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return d


def read_oof(
    folder: str | Path, posting_ids: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Saved out-of-fold embeddings of these rows: ({modality: (n, dim)}, folds (n,)).

    `folder` is a model folder (its `oof/` is read) or the `oof/` folder itself.

    Raises:
        CatalogueError: nothing saved there, or saved for other rows.
    """
    root = Path(folder)
    d = root / "oof" if (root / "oof" / "meta.json").is_file() else root
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise CatalogueError(f"{root}: no oof/meta.json (made by `pricematch train`)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    n = len(posting_ids)
    if meta.get("rows") != n or meta.get("posting_id_sha256") != posting_ids_sha256(posting_ids):
        raise CatalogueError(
            f"{d}: out-of-fold embeddings belong to another CSV "
            f"({meta.get('rows')} rows, not these {n})"
        )
    dense = {m: np.load(d / f"{m}.npy") for m in MODALITIES if (d / f"{m}.npy").is_file()}
    for m, x in dense.items():
        if x.shape[0] != n:
            raise CatalogueError(f"{d}/{m}.npy has {x.shape[0]} rows, not {n}")
    return dense, np.load(d / "folds.npy")
