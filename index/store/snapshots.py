"""Persistence of the live catalogue: complete snapshot folders and a `CURRENT` pointer.

Every state is a complete folder `snap-NNNNNN/`; a `CURRENT` file names the live one and is
replaced atomically (`index.store.atomic.write_file_atomic`) only once the new folder is
complete and synced, so a crash mid-write leaves the old state or the new one, never a
broken one. A store is saved as `{m}.faiss`, or as `{m}{store.file_suffix}` for a store
that names its own file (a reference to where its vectors live);
`load_snapshot(open_store=...)` reopens such stores.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import BundleError
from index.features.tfidf import TitleTfidf
from index.search.stores import FaissFlatStore, VectorStore
from index.store.atomic import fsync_tree, write_file_atomic
from index.store.live import LiveCatalogue

_SNAP = re.compile(r"^snap-(\d{6,})$")


LISTING_COLUMNS = ("posting_id", "title", "image", "image_phash", "id")


def save_snapshot(
    root: str | Path, live: LiveCatalogue, meta: dict[str, Any], wal_next: int = 0
) -> Path:
    """Write `live` as a new snapshot under `root` and make it the current one, atomically.

    Args:
        root: the data folder of the catalogue.
        live: the catalogue.
        meta: caller's identity of the feature spaces (e.g. encoder fingerprints), saved in
            `meta.json` and checked by `load_snapshot`.
        wal_next: the first write-ahead-log segment this snapshot does not hold
            (`index.store.wal`; 0: the snapshot was saved without a log).

    Returns:
        The snapshot folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    seqs = [int(g.group(1)) for p in root.iterdir() if (g := _SNAP.match(p.name))]
    name = f"snap-{max(seqs, default=0) + 1:06d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / "listings.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LISTING_COLUMNS)
        for i in range(len(live)):
            w.writerow(
                [live.posting_id[i], live.title[i], live.image[i], live.image_phash[i], live.ids[i]]
            )
    for m, store in live.stores.items():
        store.save(tmp / f"{m}{getattr(store, 'file_suffix', '.faiss')}")
    info = {
        "format": 1,
        "rows": len(live),
        "next_id": live.next_id,
        "dims": live.dims,
        "fixed_vocabulary": live.fixed_vocabulary,
        "meta": meta,
        "wal_next": wal_next,
    }
    (tmp / "meta.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    fsync_tree(tmp)
    os.rename(tmp, root / name)
    write_file_atomic(root / "CURRENT", name + "\n")  # the commit point
    for p in root.iterdir():  # older snapshots and leftovers of interrupted writes
        if p.name != name and (_SNAP.match(p.name) or p.name.endswith(".tmp")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    return root / name


def current_snapshot(root: str | Path) -> Path | None:
    """The snapshot folder `CURRENT` names, or None when nothing was saved yet."""
    cur = Path(root) / "CURRENT"
    if not cur.is_file():
        return None
    name = cur.read_text(encoding="utf-8").strip()
    snap = Path(root) / name
    if not _SNAP.match(name) or not (snap / "meta.json").is_file():
        raise BundleError(f"{root}: CURRENT names {name!r}, which is not a complete snapshot")
    return snap


def snapshot_wal_next(root: str | Path) -> int:
    """The current snapshot's `wal_next` (0 without a snapshot or for one saved without a
    log)."""
    snap = current_snapshot(root)
    if snap is None:
        return 0
    return int(json.loads((snap / "meta.json").read_text(encoding="utf-8")).get("wal_next", 0))


def load_snapshot(
    root: str | Path,
    meta: dict[str, Any],
    tfidf: TitleTfidf | None = None,
    device: str = "auto",
    open_store: Callable[[str, Path, int], VectorStore] | None = None,
) -> LiveCatalogue | None:
    """The current snapshot under `root`, or None if there is none.

    Args:
        open_store: reopens the store of modality `m` (dimension `dim`) from the snapshot
            folder, `open_store(m, folder, dim)`; default: `{m}.faiss` as a `FaissFlatStore`.

    Raises:
        BundleError: the snapshot was made for other feature spaces (`meta` differs) or is
            unreadable.
    """
    snap = current_snapshot(root)
    if snap is None:
        return None
    info = json.loads((snap / "meta.json").read_text(encoding="utf-8"))
    if info.get("meta") != meta:
        raise BundleError(
            f"{root} holds a catalogue built with other encoders or another bundle "
            f"({info.get('meta')} vs {meta}); point the data folder elsewhere or move it away"
        )
    csv.field_size_limit(1 << 20)
    with open(snap / "listings.csv", newline="", encoding="utf-8") as f:
        r = csv.reader(f)
        header = next(r)
        if tuple(header) != LISTING_COLUMNS:
            raise BundleError(f"{snap}/listings.csv: unexpected header {header}")
        rows = list(r)
    if len(rows) != info["rows"]:
        raise BundleError(f"{snap}: {len(rows)} listings, meta.json says {info['rows']}")
    dims = {m: int(d) for m, d in info["dims"].items()}
    if open_store is None:
        open_store = partial(open_faiss, device=device)
    stores = {m: open_store(m, snap, d) for m, d in dims.items()}
    live = LiveCatalogue(
        dims=dims,
        tfidf=tfidf if info["fixed_vocabulary"] else None,
        device=device,
        posting_id=[r[0] for r in rows],
        title=[r[1] for r in rows],
        image=[r[2] for r in rows],
        image_phash=[r[3] for r in rows],
        ids=np.array([int(r[4]) for r in rows], np.int64),
        next_id=int(info["next_id"]),
        stores=stores,
    )
    return live


def open_faiss(m: str, snap: Path, dim: int, device: str = "auto") -> VectorStore:
    """`{m}.faiss` of a snapshot. Raises BundleError if the vectors live in Milvus."""
    if not (snap / f"{m}.faiss").is_file() and (snap / f"{m}.milvus.json").is_file():
        raise BundleError(
            f"{snap} keeps its {m} vectors in Milvus ({m}.milvus.json); serve it with "
            "PRICEMATCH_VECTOR_STORE=milvus"
        )
    return FaissFlatStore.load(snap / f"{m}.faiss", device=device)
