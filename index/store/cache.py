"""The feature cache of `pricematch match/evaluate --cache DIR`: the dense embeddings of a
catalogue, so that re-running with other thresholds, options or a ranker does not
re-encode. The one owner of its files: `DIR/<modality>-<key>.npz` holding `x` (n, d)
float32 and `valid` (n,) bool.

The key is a sha256 over the encoder's identity (`store.model.fingerprint`: its artifact
files) and the inputs in order: the titles for "text"; for "image" each resolved path with
its size and modification time (a changed photo misses the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import Catalogue


def cache_inputs(cat: Catalogue, modality: str) -> list[str]:
    """What the embeddings of `modality` depend on, one string per row."""
    if modality == "text":
        return list(cat.title)
    out = []
    for p in cat.image or []:
        try:
            st = os.stat(p) if p else None
        except OSError:
            st = None
        out.append(f"{p}\0{st.st_size}\0{st.st_mtime_ns}" if st else f"{p}\0-")
    return out


class FeatureCache:
    """Embeddings by key in one folder (created on first write)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(modality: str, encoder: dict[str, Any], inputs: Sequence[str]) -> str:
        """sha256 hex of the modality, the encoder's fingerprint and the inputs."""
        h = hashlib.sha256(json.dumps([modality, encoder], sort_keys=True).encode())
        for s in inputs:
            h.update(s.encode("utf-8", "surrogatepass") + b"\x00\x01")
        return h.hexdigest()

    def path(self, modality: str, key: str) -> Path:
        return self.folder / f"{modality}-{key}.npz"

    def load(self, modality: str, key: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(x, valid) if cached for `n` rows; None if absent or unreadable (re-encoded)."""
        p = self.path(modality, key)
        try:
            with np.load(p) as z:
                x, valid = z["x"].astype(np.float32), z["valid"].astype(bool)
        except (OSError, KeyError, ValueError):
            return None
        return (x, valid) if x.shape[0] == valid.shape[0] == n else None

    def save(self, modality: str, key: str, x: np.ndarray, valid: np.ndarray) -> Path:
        """Write atomically (a temporary file renamed in)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        p = self.path(modality, key)
        tmp = p.with_name(p.name + ".tmp.npz")
        np.savez(tmp, x=x.astype(np.float32), valid=valid.astype(bool))
        os.replace(tmp, p)
        return p
