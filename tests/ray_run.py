"""Run by tests/test_ray_engine.py in a subprocess, inside a loopback-only network namespace:
`pricematch match --engine ray --char-source 3-5` with 1 and with 4 shards on one local Ray
instance, saving
each run's submission and the neighbours it fused (to compare scores and tied ids).

Usage: python -m tests.ray_run OUT_DIR LISTINGS_CSV IMAGES_DIR MODEL_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from index.cli.parser import main
from index.scale import ray_engine


def run(out: Path, csv_path: str, images: str, model: str) -> int:
    seen: list[dict[str, Any]] = []
    real = ray_engine.ray_neighbours

    def recording(*args: Any, **kwargs: Any) -> Any:
        feats, nb = real(*args, **kwargs)
        seen.append(nb)
        return feats, nb

    ray_engine.ray_neighbours = recording  # type: ignore[assignment]
    base = ["match", csv_path, "--images", images, "--model", model, "-q", "--engine", "ray",
            "--char-source", "3-5"]
    for shards in (1, 4):
        rc = main([*base, "--shards", str(shards), "-o", str(out / f"ray{shards}.csv")])
        if rc:
            return rc
        nb = seen[-1]
        np.savez(
            out / f"nb{shards}.npz",
            **{f"D_{s}": d for s, (d, _) in nb.items()},
            **{f"I_{s}": i for s, (_, i) in nb.items()},
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), *sys.argv[2:5]))
