"""`pricematch serve`: run the service with uvicorn (registered via entry points)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add `serve` to the `pricematch` parser."""
    p = sub.add_parser("serve", help="run the matching service (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default %(default)s)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--bundle", type=Path, help="bundle folder to serve [PRICEMATCH_BUNDLE]")
    p.add_argument("--model", type=Path, help="model folder when no bundle [PRICEMATCH_MODEL_DIR]")
    p.add_argument("--data-dir", type=Path, help="catalogue folder [PRICEMATCH_DATA_DIR]")
    p.add_argument(
        "--images-dir", type=Path, help="images for /batch-match [PRICEMATCH_IMAGES_DIR]"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="[PRICEMATCH_DEVICE]")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.config import Settings
    from service.main import create_app

    given = {
        "bundle": args.bundle,
        "model_dir": args.model,
        "data_dir": args.data_dir,
        "images_dir": args.images_dir,
        "device": args.device,
    }
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
