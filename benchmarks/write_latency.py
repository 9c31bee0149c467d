"""Benchmark (not a test): single-listing `POST /listings` latency and writes/s against the
catalogue size, with the write-ahead log and without it (a whole snapshot per write), and
the start time of a catalogue with a long log (replay speed).

For each size a data folder is seeded directly (`save_snapshot`): titles and phash of the
CSV's rows, cycled (with a suffix) to the size, and random unit text vectors of the model's
dimension (synthetic vectors: encoding 300k titles is not what is measured). Then `pricematch
serve` starts on it and one client posts `--writes` single listings in turn (each title is
encoded by the model: the same work at every size). Runs each mode in one invocation, so
the ratios are measured on the same loaded machine.

    python benchmarks/write_latency.py ../shared/data/shopee_dev.csv --model /tmp/mtext \\
        --sizes 3k 27k 300k --writes 200

`--vector-store milvus` runs the same with the vectors in Milvus (milvus-lite `.db` in the
data folder; the seeded vectors move into it at the first start, not timed).
"""

from __future__ import annotations

import argparse
import csv
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `index` and `benchmarks` from this checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.serving import start_serve  # noqa: E402
from benchmarks.store_scale import parse_size  # noqa: E402
from index.store.live import LiveCatalogue  # noqa: E402
from index.store.model import fingerprint, load_model  # noqa: E402
from index.store.snapshots import save_snapshot  # noqa: E402


def percentiles(ms: list[float]) -> dict[str, float]:
    """p50 / p99 / mean (ms) and writes per second of sequential timings (ms)."""
    a = np.asarray(ms, np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "writes_per_s": float(1000.0 / a.mean()),
    }


def seed(folder: Path, rows: list[tuple[str, str]], n: int, model: Path) -> None:
    """A snapshot of `n` listings in `folder` for the model's encoders."""
    enc = load_model(model, device="cpu").encoders
    dims = {m: getattr(enc, m).dim for m in ("text", "image") if getattr(enc, m) is not None}
    live = LiveCatalogue(dims=dims, device="cpu")
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(n)]
    titles = [f"{rows[i % len(rows)][0]} {i // len(rows)}" for i in range(n)]
    phash = [rows[i % len(rows)][1] for i in range(n)]
    from index.features.embed import QueryFeatures

    for s in range(0, n, 50_000):
        e = min(n, s + 50_000)
        x = rng.normal(size=(e - s, dims["text"])).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        f = QueryFeatures.build(titles[s:e], phash[s:e], text=x)
        live.upsert(ids[s:e], [""] * (e - s), f)
    save_snapshot(folder, live, {"encoders": fingerprint(enc)}, wal_next=1)


def serve(
    folder: Path, model: Path, log: Path, wal: bool, store: str = "faiss"
) -> tuple[subprocess.Popen, str, float]:
    """`pricematch serve` on `folder` (`benchmarks.serving.start_serve`), the log on or off
    and never compacting; returns the process, its base URL and seconds to ready."""
    env = {
        "PRICEMATCH_VECTOR_STORE": store,
        "PRICEMATCH_WAL": str(wal).lower(),
        "PRICEMATCH_WAL_MAX_RECORDS": "1000000",
        "PRICEMATCH_WAL_MAX_MB": "100000",
    }
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        proc, base = start_serve(folder, "--model", str(model), env=env, log=out)
    return proc, base, time.perf_counter() - t0


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def post_singles(base: str, writes: int, tag: str) -> list[float]:
    """`writes` single new listings, one after another: each request's ms."""
    ops = [
        {
            "posting_id": f"{tag}-{i}",
            "title": f"kaos polos {tag} {i}",
            "image_phash": "ff00ff00ff00ff00",
        }
        for i in range(writes)
    ]
    return timed(base, ops)


def timed(base: str, ops: list[dict[str, str] | str]) -> list[float]:
    """Run `ops` in turn (a dict: POST that one listing; a str: DELETE that posting_id)
    and return each request's ms. Raises SystemExit on a failed request."""
    import httpx

    ms = []
    with httpx.Client(base_url=base, timeout=120) as c:
        for op in ops:
            t = time.perf_counter()
            if isinstance(op, str):
                r = c.delete(f"/listings/{op}")
            else:
                r = c.post("/listings", json={"listings": [op]})
            ms.append((time.perf_counter() - t) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"request failed: {r.status_code} {r.text[:300]}")
    return ms


def changes(n: int, size: int, seed: int = 1) -> tuple[list[dict[str, str]], list[str]]:
    """`n` replacements and `n` deletes of distinct seeded listings (`s{i}`)."""
    picked = np.random.default_rng(seed).choice(size, 2 * n, replace=False).tolist()
    repl = [
        {"posting_id": f"s{i}", "title": f"kemeja flanel {i}", "image_phash": "00ff00ff00ff00ff"}
        for i in picked[:n]
    ]
    return repl, [f"s{i}" for i in picked[n:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="listings CSV (titles and image_phash)")
    ap.add_argument("--model", type=Path, required=True, help="model folder (text encoder)")
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=[3000, 27000, 300000])
    ap.add_argument("--writes", type=int, default=200, help="single-listing writes per run")
    ap.add_argument(
        "--snapshot-writes",
        type=int,
        default=20,
        help="writes without the log (each rewrites the catalogue)",
    )
    ap.add_argument(
        "--replay",
        type=int,
        default=5000,
        help="log records replayed at the start-time measurement (largest but one size; "
        "0: not measured)",
    )
    ap.add_argument(
        "--changes",
        type=int,
        default=0,
        help="also time this many single replacements and deletes of seeded listings "
        "(with the log)",
    )
    ap.add_argument(
        "--vector-store", choices=["faiss", "milvus"], default="faiss", help="where vectors live"
    )
    args = ap.parse_args()
    with open(args.input, newline="", encoding="utf-8") as f:
        rows = [(r["title"], r.get("image_phash", "")) for r in csv.DictReader(f)]
    vs = args.vector_store
    print("| listings | vectors | mode | write | n | p50 ms | p99 ms | writes/s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        for n in args.sizes:
            for wal, writes in ((True, args.writes), (False, args.snapshot_writes)):
                folder = Path(tmp) / f"d{n}-{wal}"
                seed(folder, rows, n, args.model)
                proc, base, _ = serve(folder, args.model, log, wal, vs)
                mode = "log" if wal else "snapshot per write"
                runs = []
                try:
                    post_singles(base, 3, "warm")
                    runs.append(("add", post_singles(base, writes, "w")))
                    if wal and args.changes:
                        repl, dels = changes(args.changes, n)
                        runs.append(("replace", timed(base, list(repl))))
                        runs.append(("delete", timed(base, list(dels))))
                finally:
                    stop(proc)
                for op, ms in runs:
                    r = percentiles(ms)
                    print(
                        f"| {n:,} | {vs} | {mode} | {op} | {len(ms)} | {r['p50']:.1f} | "
                        f"{r['p99']:.1f} | {r['writes_per_s']:.1f} |",
                        flush=True,
                    )
        if not args.replay:
            return
        # start time with a long log: the second largest size (or the only one)
        n = sorted(args.sizes)[-2] if len(args.sizes) > 1 else args.sizes[0]
        folder = Path(tmp) / "replay"
        seed(folder, rows, n, args.model)
        proc, base, t_empty = serve(folder, args.model, log, True, vs)
        try:
            post_singles(base, args.replay, "r")
        finally:
            proc.kill()  # no compaction at exit: the next start replays the whole log
            proc.wait()
        proc, _, t_log = serve(folder, args.model, log, True, vs)
        stop(proc)
        replay = re.findall(r"replayed (\d+) log records in ([\d.]+)s", log.read_text())
        print(
            f"\nstart of {n:,} listings: {t_empty:.1f}s without a log, {t_log:.1f}s with "
            f"{args.replay} log records (replay itself: {replay[-1][1] if replay else '?'}s)"
        )


if __name__ == "__main__":
    main()
