"""The model folder, the one owner of its format.

Layout::

    text/, image/      ONNX encoder artifacts, each with its config.json (either optional)
    fusion.json        the FusionConfig the encoders were tuned with (optional: defaults)
    ranker/            the pair re-ranker (optional): model.txt (LightGBM), ranker.json
    ...                anything else training leaves (configs, cv_report.json, oof/)

`pricematch export-default` and `pricematch train` write it (`write_model`,
`write_fusion`); `pricematch match --model`, the service and bundles read it (`load_model`,
`load_encoders`, `read_fusion`). A bundle holds the same two parts: `encoders/` and its own
`fusion.json`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.errors import CatalogueError, EncoderError
from index.features.embed import DENSE, Encoders
from index.features.encoders import Device, Encoder, load_encoder
from index.matching.fusion import FusionConfig
from index.matching.ranker import Ranker
from index.store.atomic import sha256, write_atomic

#: The fusion config's file name, in a model folder and in a bundle.
FUSION = "fusion.json"
#: The pair re-ranker's folder in a model folder.
RANKER = "ranker"


@dataclass(frozen=True)
class Model:
    """What a model folder gives: its encoders and its fusion config."""

    folder: Path | None
    encoders: Encoders
    fusion: FusionConfig
    ranker: Ranker | None = None


#: What a fusion.json written before a field existed meant by its absence (read as that,
#: not as today's default, so an older model folder keeps matching as it did).
LEGACY_FUSION: dict[str, Any] = {"sources": "any", "tfidf": {"code_tokens": False}}


def read_fusion(path: str | Path) -> FusionConfig:
    """A fusion.json file (fields it lacks as `LEGACY_FUSION`, then the defaults).

    Raises:
        CatalogueError: the file is missing, not JSON or not a valid config.
    """
    p = Path(path)
    if not p.is_file():
        raise CatalogueError(f"config file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CatalogueError(f"{p}: not a JSON fusion config ({e})") from e
    if not isinstance(data, dict):
        raise CatalogueError(f"{p}: a fusion config is a JSON object")
    for k, v in LEGACY_FUSION.items():
        data.setdefault(k, v)
    try:
        return FusionConfig.model_validate(data)
    except ValueError as e:
        raise CatalogueError(f"{p}: not a valid fusion config: {e}") from e


def write_fusion(path: str | Path, config: FusionConfig) -> Path:
    """Write `config` as a fusion.json file (indented JSON)."""
    p = Path(path)
    p.write_text(config.model_dump_json(indent=2), encoding="utf-8")
    return p


def load_encoders(
    folder: str | Path, device: Device = "auto", modalities: Sequence[str] = DENSE
) -> Encoders:
    """Load `folder/text` and `folder/image` where present (of `modalities` only).

    Raises:
        EncoderError: no such folder, or no encoder in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise EncoderError(f"model folder not found: {root}")
    found = {m: root / m for m in modalities if (root / m / "config.json").is_file()}
    if not found:
        raise EncoderError(f"{root} holds no encoder (expected text/ or image/ with config.json)")
    return Encoders(**{m: load_encoder(p, device=device) for m, p in found.items()})


def load_some_encoders(
    folder: str | Path, device: Device, modalities: Sequence[str]
) -> Encoders:
    """The encoders of `modalities` that `folder` holds (none of them: no encoder)."""
    root = Path(folder)
    wanted = [m for m in DENSE if m in modalities and (root / m / "config.json").is_file()]
    return load_encoders(root, device, wanted) if wanted else Encoders()


def needed_modalities(fusion: FusionConfig, ranker: Ranker | None = None) -> set[str]:
    """The encoders (`DENSE` modalities) a pipeline uses: a signal with a threshold, one
    weighted into the combined embedding (with a "combined" threshold) or blended by INB,
    one the ranker was trained with. The others need not be loaded."""
    need: set[str] = {m for m in DENSE if m in fusion.thresholds}
    st = fusion.stages
    if "combined" in fusion.thresholds:
        need |= {m for m in st.combined_weights if m in DENSE}
    if st.inb or st.qe_alpha is not None:
        need |= {m for m in st.blend_signals if m in DENSE}
    if ranker is not None:
        need |= {m for m in ranker.signals if m in DENSE}
    return need


def load_model(
    folder: str | Path | None, device: Device = "auto", modalities: Sequence[str] | None = None
) -> Model:
    """A model folder's encoders and fusion config (defaults without fusion.json); None
    gives no encoders and the default config (TF-IDF and phash only).

    Args:
        modalities: load only these encoders (None: every one the folder has).
    """
    if folder is None:
        return Model(None, Encoders(), FusionConfig())
    root = Path(folder)
    bare = root.is_dir() and not any((root / m / "config.json").is_file() for m in DENSE)
    if bare and ((root / FUSION).is_file() or (root / RANKER).is_dir()):
        encoders = Encoders()  # a TF-IDF and phash model: thresholds and/or a ranker only
    elif modalities is not None and not bare and root.is_dir():
        encoders = load_some_encoders(root, device, modalities)
    else:
        encoders = load_encoders(root, device=device)
    fusion = read_fusion(root / FUSION) if (root / FUSION).is_file() else FusionConfig()
    ranker = Ranker.load(root / RANKER, device) if (root / RANKER).is_dir() else None
    return Model(root, encoders, fusion, ranker)


def write_ranker(folder: str | Path, ranker: Ranker) -> Path:
    """Add (or replace) the model folder's ranker, atomically."""
    return write_atomic(Path(folder) / RANKER, ranker.save)


def fingerprint(encoders: Encoders) -> dict[str, Any]:
    """Identity of the loaded encoders: per modality its dim and a sha256 over its
    artifact folder's files (what a saved catalogue's feature spaces depend on)."""
    out: dict[str, Any] = {}
    for m in DENSE:
        enc: Encoder | None = getattr(encoders, m)
        if enc is None:
            continue
        files = sorted(p for p in enc.folder.iterdir() if p.is_file())
        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode() + sha256(p).encode())
        out[m] = {"dim": enc.dim, "sha256": h.hexdigest()}
    return out


def write_model(out: str | Path, fusion: FusionConfig, artifacts: dict[str, Path]) -> Path:
    """Assemble a model folder: copy the encoder artifacts (`{"text": folder, ...}`) into it
    (an artifact already in place stays) and write its fusion.json."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for name, src in artifacts.items():
        dst = root / name
        if dst.resolve() != Path(src).resolve():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
    write_fusion(root / FUSION, fusion)
    return root
