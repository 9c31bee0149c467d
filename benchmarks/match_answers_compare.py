"""Same /match answers from two checkouts of the code: each serves MODEL, is filled with
the listings of a `pricematch sample` folder (titles + photos), and answers the same
/match queries (by posting_id with photo, title only, photo without id); the JSON answers
are compared. For refactors that must not change answers (issue 12).

    git worktree add /tmp/pm_before <commit>
    python benchmarks/match_answers_compare.py /tmp/pm_before . --model models/default \
        --sample sample
"""

from __future__ import annotations

import argparse
import base64
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` from this checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.serving import free_port  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path, help="checkout of the old code")
    p.add_argument("after", type=Path, help="checkout of the new code")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--sample", type=Path, required=True, help="a `pricematch sample` folder")
    a = p.parse_args()
    model, sample = a.model.resolve(), a.sample.resolve()
    with open(sample / "listings.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def listing(r: dict[str, str]) -> dict[str, Any]:
        d: dict[str, Any] = {"posting_id": r["posting_id"], "title": r["title"]}
        if r.get("image"):
            d["image"] = base64.b64encode((sample / "images" / r["image"]).read_bytes()).decode()
        return d

    def run(src: Path) -> list[Any]:
        return serve_and_ask(src.resolve(), model, rows, listing)

    old, new = run(a.before), run(a.after)
    diff = sum(x != y for x, y in zip(old, new, strict=True))
    print(f"{len(old)} answers; {'IDENTICAL' if diff == 0 else f'{diff} DIFFERENT'}")
    return 1 if diff else 0


def serve_and_ask(src: Path, model: Path, rows: list[dict[str, str]], listing: Any) -> list[Any]:
    data = tempfile.mkdtemp(prefix="pricematch-cmp-")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "PRICEMATCH_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "index.cli", "serve", "--port", str(port), "--model", str(model)]
    cmd += ["--data-dir", data, "--device", "cpu", "--log-level", "warning"]
    p = subprocess.Popen(cmd, cwd=src, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=120) as c:
            assert (
                c.post("/listings", json={"listings": [listing(r) for r in rows]}).status_code
                == 200
            )
            out = []
            for r in rows[::3]:
                out.append(c.post("/match", json=listing(r)).json())
                out.append(c.post("/match", json={"title": r["title"], "max_matches": 10}).json())
                q = listing(r)
                q.pop("posting_id")
                out.append(c.post("/match", json=q).json())
            return out
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    raise SystemExit(main())
