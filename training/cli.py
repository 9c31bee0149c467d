"""`pricematch` sub-commands of the training layer.

Only `register` is imported when the CLI starts, so this module must not import torch or
`training.export` at top level: the CLI runs without the [train] extra, and the handlers
import what they need.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from index.errors import ImageError, PricematchError

#: Most images taken from --images for the parity check.
MAX_PARITY_IMAGES = 8
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def register(sub: Any) -> None:
    """Add the training commands: export-default."""
    p = sub.add_parser(
        "export-default",
        help="export the packaged pretrained text and image encoders to ONNX",
        description=(
            "Export all-MiniLM-L6-v2 and EfficientNet-Lite0 from their offline Python packages "
            "to ONNX encoder folders OUT/text and OUT/image, each checked against PyTorch."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help=f"images for the parity check (first {MAX_PARITY_IMAGES}; default: synthetic)",
    )
    p.set_defaults(func=_export_default)


def _parity_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ImageError(f"--images: {folder} is not a folder")
    files = sorted(
        f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise ImageError(
            f"--images: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}"
        )
    return files[:MAX_PARITY_IMAGES]


def _export_default(args: argparse.Namespace) -> int:
    images = _parity_images(args.images) if args.images is not None else None
    try:
        from training.export import export_default
    except ImportError as e:
        raise PricematchError(
            f"export-default needs the [train] extra (pip install 'pricematch[train]'): {e}"
        ) from e
    result = export_default(args.out, parity_images=images)
    for kind, r in (("text", result.text), ("image", result.image)):
        print(
            f"{kind:<5} encoder: {r.folder}  dim {r.dim}  "
            f"parity max abs diff {r.max_abs_diff:.2g} over {r.n_inputs} {kind}s"
        )
    return 0
