"""Benchmark of the service (not a test): /match latency under concurrency, batch-match rate.

Builds a bundle from a listings CSV (titles and given phash only, no images), starts
`pricematch serve` on a free 127.0.0.1 port, then

* sends `/match` requests (title + image_phash of random rows of the CSV) from 1, 8 and 32
  concurrent clients, each level bounded by --requests and --seconds, and reports p50/p99
  latency and requests/s;
* posts the whole CSV (as Kaggle's test.csv: no label_group) to `/batch-match` and reports
  rows/s.

Usage:
    python benchmarks/service_bench.py ../shared/data/shopee_dev.csv --model models/default \
        [--append docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stage_means(metrics: str) -> dict[str, float]:
    """Mean milliseconds per /match stage from the service's Prometheus text."""
    import re

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    pat = re.compile(r'^pricematch_match_stage_seconds_(sum|count)\{stage="([^"]+)"\} (\S+)$')
    for line in metrics.splitlines():
        if m := pat.match(line):
            (sums if m.group(1) == "sum" else counts)[m.group(2)] = float(m.group(3))
    return {k: 1000 * sums[k] / counts[k] for k in sums if counts.get(k)}


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


async def load(base: str, queries: list[dict[str, str]], clients: int, n: int, seconds: float):
    """`clients` concurrent loops sending `/match` until n requests or `seconds` elapsed."""
    lat: list[float] = []
    sent = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:

        async def worker() -> None:
            nonlocal sent
            while sent < n and time.perf_counter() < stop:
                q = queries[sent % len(queries)]
                sent += 1
                t = time.perf_counter()
                r = await c.post("/match", json=q)
                lat.append(time.perf_counter() - t)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {
        "clients": clients,
        "requests": len(lat),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "rps": len(lat) / wall,
    }


def send_times(rate: float, seconds: float) -> list[float]:
    """Open loop: the offsets (s) at which requests are sent, `rate` per second, evenly."""
    return [i / rate for i in range(int(rate * seconds))]


async def open_loop(base: str, queries: list[dict[str, str]], rate: float, seconds: float):
    """Requests sent on a fixed schedule whatever the answers (an offered load); latency is
    measured from each request's scheduled time, so queueing counts."""
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:
        t0 = time.perf_counter()

        async def one(i: int, at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            r = await c.post("/match", json=queries[i % len(queries)])
            lat.append(time.perf_counter() - (t0 + at))
            errors += r.status_code != 200

        await asyncio.gather(*(one(i, at) for i, at in enumerate(send_times(rate, seconds))))
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {
        "offered_rps": rate,
        "requests": len(lat),
        "errors": errors,
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "achieved_rps": len(lat) / wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("csv", type=Path, help="listings CSV (posting_id,title[,image_phash,...])")
    ap.add_argument("--model", type=Path, default=Path("models/default"))
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--bundle", type=Path, help="reuse this bundle (built from the same CSV)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=400, help="most /match requests per level")
    ap.add_argument("--seconds", type=float, default=45, help="most seconds per level")
    ap.add_argument("--append", type=Path, help="append a Service section to this markdown file")
    ap.add_argument(
        "--rate",
        type=float,
        default=0,
        help="also an open-loop run: /match offered at this many requests/s (0: none)",
    )
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="pricematch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    with open(args.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in ("posting_id", "image", "image_phash", "title") if c in rows[0]]
    test_csv = io.StringIO()
    w = csv.writer(test_csv, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([r[c] for c in cols])
    test_bytes = test_csv.getvalue().encode()

    pm = [sys.executable, "-m", "index.cli"]
    bundle = args.bundle or work / "bundle"
    build_s = (
        0.0
        if args.bundle
        else run(
            [
                *pm,
                "build-index",
                str(args.csv),
                "--model",
                str(args.model),
                "--out",
                str(bundle),
                "--device",
                "cpu",
                "-q",
            ]
        )
    )
    if not args.bundle:
        print(f"bundle of {len(rows)} rows built in {build_s:.0f}s", flush=True)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(work / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            *pm,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--bundle",
            str(bundle),
            "--data-dir",
            str(work / "data"),
            "--device",
            "cpu",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PRICEMATCH_NO_PROGRESS": "1"},
    )
    try:
        t = time.perf_counter()
        while True:
            assert proc.poll() is None, (work / "server.log").read_text()
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        print(f"server ready in {time.perf_counter() - t:.1f}s", flush=True)
        rng = random.Random(0)
        sample = rng.sample(rows, min(2000, len(rows)))
        queries = [{"title": r["title"], "image_phash": r.get("image_phash", "")} for r in sample]
        queries = [{k: v for k, v in q.items() if v} for q in queries]
        asyncio.run(load(base, queries, 4, 40, 20))  # warm the server's threads and caches
        levels = []
        for c in (int(x) for x in args.concurrency.split(",")):
            res = asyncio.run(load(base, queries, c, args.requests, args.seconds))
            levels.append(res)
            print(
                f"/match c={c}: {res['requests']} req, p50 {res['p50']:.1f} ms, "
                f"p99 {res['p99']:.1f} ms, {res['rps']:.1f} req/s",
                flush=True,
            )
        if args.rate > 0:
            res = asyncio.run(open_loop(base, queries, args.rate, args.seconds))
            print(
                f"/match open loop, {args.rate:g} req/s offered: {res['requests']} req, "
                f"{res['errors']} errors, p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms, "
                f"{res['achieved_rps']:.1f} req/s answered",
                flush=True,
            )
        stages = stage_means(httpx.get(base + "/metrics").text)
        print(
            "/match time per stage (mean over every request, ms): "
            + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()),
            flush=True,
        )
        t = time.perf_counter()
        r = httpx.post(base + "/batch-match", files={"csv": ("test.csv", test_bytes)}, timeout=3600)
        batch_s = time.perf_counter() - t
        r.raise_for_status()
        n_out = r.text.count("\n") - 1
        assert n_out == len(rows), (n_out, len(rows))
        print(
            f"/batch-match: {len(rows)} rows in {batch_s:.1f}s = {len(rows) / batch_s:.0f} rows/s"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        log.close()

    if args.append:
        cmd = " ".join(["python", *sys.argv])
        lines = [
            "",
            "## Service",
            "",
            f"`{cmd}` — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} "
            f"{os.cpu_count()}-core CPU, no GPU (ONNX Runtime and FAISS on CPU), "
            f"{args.csv.name}: {len(rows)} rows, titles + given phash (no images), bundle of the "
            f"default encoders (MiniLM text; the image encoder unused without images). Client "
            f"and server share the machine's cores.",
            "",
            "| /match | requests | p50 ms | p99 ms | req/s |",
            "|---|---|---|---|---|",
            *[
                f"| {x['clients']} concurrent | {x['requests']} | {x['p50']:.1f} | {x['p99']:.1f} "
                f"| {x['rps']:.1f} |"
                for x in levels
            ],
            "",
            f"`/batch-match` of the whole file (as test.csv, rows matched among themselves): "
            f"{len(rows)} rows in {batch_s:.1f} s = **{len(rows) / batch_s:.0f} rows/s** "
            f"(building the bundle, mostly encoding, took {build_s:.0f} s)."
            if build_s
            else "",
            "",
        ]
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n".join(lines))
        print(f"appended to {args.append}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
