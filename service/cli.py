"""`pricematch serve`: run the service with uvicorn or on Ray Serve (registered via entry
points)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from index.errors import PricematchError


def register(sub: Any) -> None:
    """Add `serve` to the `pricematch` parser."""
    p = sub.add_parser("serve", help="run the matching service (FastAPI on uvicorn or Ray Serve)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default %(default)s)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--bundle", type=Path, help="bundle folder to serve [PRICEMATCH_BUNDLE]")
    p.add_argument("--model", type=Path, help="model folder when no bundle [PRICEMATCH_MODEL_DIR]")
    p.add_argument("--data-dir", type=Path, help="catalogue folder [PRICEMATCH_DATA_DIR]")
    p.add_argument(
        "--images-dir", type=Path, help="images for /batch-match [PRICEMATCH_IMAGES_DIR]"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="[PRICEMATCH_DEVICE]")
    p.add_argument(
        "--engine",
        choices=["uvicorn", "ray"],
        default="uvicorn",
        help="uvicorn: one process (default); ray: Ray Serve replicas behind its HTTP proxy "
        "(pip install -e '.[scale]')",
    )
    p.add_argument(
        "--address",
        help="with --engine ray: a Ray cluster (HOST:PORT; default: start a local Ray) "
        "[PRICEMATCH_RAY_ADDRESS]",
    )
    p.add_argument(
        "--replicas",
        type=int,
        help="with --engine ray: replicas (over 1: the catalogue is read-only) "
        "[PRICEMATCH_RAY_REPLICAS]",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from service.config import Settings

    given = {
        "bundle": args.bundle,
        "model_dir": args.model,
        "data_dir": args.data_dir,
        "images_dir": args.images_dir,
        "device": args.device,
        "ray_address": args.address,
        "ray_replicas": args.replicas,
    }
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    if settings.bundle is not None:
        from index.store.bundle import verify_bundle

        # a damaged bundle is one line (exit 2) here, not a traceback from the lifespan
        verify_bundle(settings.bundle)
    if args.engine == "ray":
        try:
            from service import ray_serve
        except ImportError as e:
            raise PricematchError(
                f"--engine ray needs Ray Serve: pip install -e '.[scale]' ({e})"
            ) from e
        ray_serve.run(settings, host=args.host, port=args.port)
        return 0
    if args.address is not None or args.replicas is not None:
        raise PricematchError("--address and --replicas need --engine ray")

    import uvicorn

    from service.main import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # SIGTERM: requests in flight get this long, then are cancelled (batches stop too)
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    return 0
