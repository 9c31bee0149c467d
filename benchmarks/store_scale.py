"""Benchmark of the vector stores at catalogue scale (issue 6; not a test).

For each catalogue size and store, in a fresh subprocess: a synthetic catalogue of
L2-normalised float32 embeddings (default: clustered like product titles, 384-d like
MiniLM) is built into the store, then a fixed batch of queries (rows of the catalogue, as
in self-matching) is searched for its top 51. Stores:

* `flat`: `FaissFlatStore` (`IndexIDMap2(IndexFlatIP)`, exact), what `pricematch match`
  and the service use;
* `ivf`: FAISS IVF-Flat (`IndexIVFFlat`, inner product), nlist = 4·√n (`--nlist`),
  spherical k-means trained on a sample of `--train-per-list` × nlist rows, searched at
  each `--nprobe`;
* `milvus`: `MilvusStore` (FLAT, IP) on a milvus-lite file under `--work`, inserted with
  `MilvusStore.add` in batches of `--insert-batch` rows, then flushed.

Reported per (size, store): build time (generation excluded; IVF: train + add; Milvus:
insert + flush), search time of the query batch (median of `--repeats` after a warm-up)
as queries/s, recall@51 against the exact top 51 (`faiss.knn`, cached per size under
`--work`), and memory: VmHWM (the kernel's peak RSS) of the worker process, and the peak
RSS summed over its process tree, sampled from outside. milvus-lite 3.x serves the .db
file from threads inside the client process (no server process), so its memory is the
worker's. The worker holds the generated catalogue (n × dim × 4 bytes) throughout; it is
reported as `data_mib`.

Usage:
    python benchmarks/store_scale.py --sizes 10k,100k,300k,1M --stores flat,ivf,milvus \
        --out out/store_scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `index` and `benchmarks` from this checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.procmem import TreeSampler, loadavg, machine, now_utc, status_kb  # noqa: E402

K = 51
STORES = ("flat", "ivf", "milvus")


# -- pure helpers (tests/test_benchmarks.py) -----------------------------------------------


def parse_size(s: str) -> int:
    """'10k' -> 10000, '1M' -> 1000000, '2500' -> 2500."""
    s = s.strip()
    mult = {"k": 10**3, "K": 10**3, "m": 10**6, "M": 10**6}.get(s[-1:], 1)
    num = s[:-1] if mult > 1 else s
    return round(float(num) * mult)


def size_label(n: int) -> str:
    if n >= 10**6 and n % 10**5 == 0:
        return f"{n / 10**6:g}M"
    if n >= 10**3 and n % 100 == 0:
        return f"{n / 10**3:g}k"
    return str(n)


def nlist_for(n: int) -> int:
    """IVF lists for n vectors: 4·√n, at least 1 and at most n // 39 (FAISS wants ≥ 39
    training points per list)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


@dataclass(frozen=True)
class TreeSpec:
    """The `clustered` catalogue's topic tree; the defaults are calibrated on the zero-shot
    MiniLM embeddings of the 27,206 dev titles (see `make_catalogue`)."""

    group: float = 3.0  # rows per product (on average; Poisson)
    branch: int = 8  # children per node of the tree
    noise: float = 0.75  # squared norm of a row's offset from its product
    levels: tuple[float, ...] = (1.26, 0.63, 0.53)  # ... of a product from its parent, and
    # of the next two levels
    top: float = 0.3  # ... shared by the levels above those
    root: float = 0.8  # norm of the direction common to every row
    alpha: float = 1.0  # spectrum of the tree offsets: variance of dimension i ~ i^-alpha
    alpha_noise: float = 0.5  # ... of the row noise


def _spectrum(dim: int, alpha: float, var: float) -> np.ndarray:
    """Per-dimension standard deviations of an offset with squared norm ~`var` whose
    variance decays as i^-alpha."""
    lam = np.arange(1, dim + 1, dtype=np.float64) ** (-alpha)
    return np.sqrt(lam / lam.sum() * var).astype(np.float32)


def make_catalogue(
    n: int,
    dim: int,
    seed: int = 0,
    kind: str = "clustered",
    spec: TreeSpec = TreeSpec(),
    chunk: int = 100_000,
) -> np.ndarray:
    """(n, dim) float32 unit vectors, deterministic in (n, dim, seed, kind).

    `random`: i.i.d. Gaussian directions (nearly orthogonal; the worst case for IVF).
    `clustered` (default): a topic tree. n/3 products; products grouped 8 to a parent
    node, parents 8 to a grandparent, ... up to one root direction shared by every row.
    Each node is its parent plus an anisotropic Gaussian offset (variance decaying over the
    dimensions, as in real sentence embeddings), each row its product plus noise. With the
    `TreeSpec` defaults a 27,206-row catalogue has about the neighbour similarities and
    IVF recall of the real zero-shot MiniLM embeddings of the dev titles: median cosine of
    the 1st/5th/20th/50th neighbour (self excluded) 0.83/0.63/0.54/0.50 vs 0.84/0.66/0.57/0.52
    real; random pairs 0.19 ± 0.13 vs 0.19 ± 0.11; IVF-Flat (nlist 4·√n) recall@51 at
    nprobe 4/16/64 0.65/0.86/0.97 vs 0.65/0.82/0.95.
    """
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32)
    if kind == "random":
        for s in range(0, n, chunk):
            x[s : s + chunk] = _unit(rng.standard_normal((min(chunk, n - s), dim), np.float32))
        return x
    if kind != "clustered":
        raise ValueError(f"unknown catalogue kind {kind!r}")
    p = spec
    sizes = [max(1, round(n / p.group))]  # products, their parents, ... up to the top
    while sizes[-1] > p.branch:
        sizes.append(math.ceil(sizes[-1] / p.branch))
    levels = list(p.levels)[: len(sizes)]
    above = len(sizes) - len(levels)
    if above:
        levels += [p.top / above] * above
    else:
        levels[-1] += p.top
    nodes = _unit(rng.standard_normal((1, dim), np.float32)) * np.float32(p.root)
    for size, var in zip(reversed(sizes), reversed(levels), strict=True):
        g = rng.standard_normal((size, dim), np.float32) * _spectrum(dim, p.alpha, var)
        nodes = nodes[rng.integers(0, nodes.shape[0], size)] + g
    sd = _spectrum(dim, p.alpha_noise, p.noise)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        g = rng.standard_normal((m, dim), np.float32) * sd
        x[s : s + m] = _unit(nodes[rng.integers(0, sizes[0], m)] + g)
    return x


def load_catalogue(args: argparse.Namespace, n: int) -> np.ndarray:
    """The first n rows of --npy (L2-normalised), or a generated catalogue."""
    if args.npy is None:
        return make_catalogue(n, args.dim, seed=args.seed, kind=args.data)
    x = np.load(args.npy, mmap_mode="r")
    if x.ndim != 2 or x.shape[0] < n or x.shape[1] != args.dim:
        raise SystemExit(f"{args.npy}: shape {x.shape}, need at least {n} rows of {args.dim}")
    return _unit(np.array(x[:n], dtype=np.float32))


def query_rows(n: int, nq: int, seed: int = 0) -> np.ndarray:
    """`nq` distinct catalogue rows (sorted), the fixed query batch."""
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(n, size=min(nq, n), replace=False)).astype(np.int64)


def recall_at_k(
    I: np.ndarray, D: np.ndarray, I_true: np.ndarray, D_true: np.ndarray, tol: float = 1e-5
) -> float:
    """Mean over queries of the share of the exact top k found: a returned id counts if it
    is in the exact top k or ties with it (its score ≥ the exact k-th score − `tol`), so an
    exact search scores 1 whichever of equally scored rows it keeps. -1 ids never count."""
    k = I_true.shape[1]
    assert I.shape == D.shape and I.shape[0] == I_true.shape[0] and I.shape[1] >= k
    kth = D_true[:, k - 1 : k]
    hit = np.array([np.isin(I[q, :k], I_true[q]) for q in range(I.shape[0])])
    hit |= D[:, :k] >= kth - tol
    hit &= I[:, :k] >= 0
    return float(hit.sum(axis=1).clip(max=k).mean() / k)


def summarise(runs: list[dict[str, Any]]) -> list[str]:
    """A markdown table of the runs."""
    lines = [
        "| vectors | store | build s | queries/s | recall@51 | peak RSS MiB (worker) | "
        "data MiB | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        label = size_label(r["n"])
        if r.get("error"):
            lines.append(f"| {label} | {r['store']} | | | | | | {r['error']} |")
            continue
        for s in r.get("searches", []):
            name = r["store"] + (f" nprobe={s['nprobe']}" if "nprobe" in s else "")
            lines.append(
                f"| {label} | {name} | {r['build_s']:.1f} | {s['qps']:.0f} | "
                f"{s['recall']:.4f} | {r['peak_rss_mib']:.0f} | {r['data_mib']:.0f} | "
                f"{r.get('note', '')} |"
            )
        if not r.get("searches"):
            lines.append(
                f"| {label} | {r['store']} | {r.get('build_s', float('nan')):.1f} | | | "
                f"{r.get('peak_rss_mib', float('nan')):.0f} | {r.get('data_mib', 0):.0f} | "
                f"{r.get('note', '')} |"
            )
    return lines


# -- the worker: one (size, store) in its own process ---------------------------------------


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _rss_mib() -> float:
    return status_kb(os.getpid()).get("VmRSS", 0) / 1024


def _time_search(search: Any, xq: np.ndarray, repeats: int) -> tuple[list[float], Any]:
    search(xq[: min(10, len(xq))])  # warm-up
    times, res = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        res = search(xq)
        times.append(time.perf_counter() - t)
    return times, res


def _search_entry(times: list[float], nq: int, recall: float, **extra: Any) -> dict[str, Any]:
    med = float(np.median(times))
    return {
        **extra,
        "search_s": times,
        "median_s": med,
        "qps": nq / med,
        "best_qps": nq / min(times),
        "recall": recall,
    }


def _ground_truth(args: argparse.Namespace, x: np.ndarray, xq: np.ndarray) -> tuple[Any, Any]:
    """Exact top-51 of the queries (faiss.knn, no index copy), cached under --work."""
    import faiss

    data = args.data if args.npy is None else "npy-" + args.npy.stem
    path = args.work / f"gt-{data}-{x.shape[0]}-{x.shape[1]}-{xq.shape[0]}-{args.seed}.npz"
    if path.is_file():
        z = np.load(path)
        return z["D"], z["I"]
    t = time.perf_counter()
    D, I = faiss.knn(xq, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    _log(f"exact top-{K} of {len(xq)} queries in {time.perf_counter() - t:.1f}s (ground truth)")
    np.savez(path, D=D, I=I)
    return D, I


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import faiss
    from tqdm import tqdm

    from index.search.stores import FaissFlatStore

    n, store = args.worker_size, args.worker_store
    data = args.data if args.npy is None else str(args.npy)
    out: dict[str, Any] = {"n": n, "store": store, "dim": args.dim, "data": data}
    out["faiss_threads"] = faiss.omp_get_max_threads()
    out["rss_start_mib"] = _rss_mib()
    t = time.perf_counter()
    x = load_catalogue(args, n)
    qrows = query_rows(n, args.queries, args.seed)
    xq = np.ascontiguousarray(x[qrows])
    out["generate_s"] = time.perf_counter() - t
    out["data_mib"] = x.nbytes / 2**20
    out["rss_data_mib"] = _rss_mib()
    _log(f"{size_label(n)} x {args.dim} {data} vectors ready in {out['generate_s']:.1f}s")
    ids = np.arange(n, dtype=np.int64)
    D_true, I_true = _ground_truth(args, x, xq)
    nq = xq.shape[0]

    if store == "flat":
        fs = FaissFlatStore(args.dim, device="cpu")
        t = time.perf_counter()
        fs.add(ids, x)
        out["build_s"] = time.perf_counter() - t
        out["rss_built_mib"] = _rss_mib()
        _log(f"flat: {n} vectors added in {out['build_s']:.1f}s")
        times, (D, I) = _time_search(lambda q: fs.search(q, K), xq, args.repeats)
        out["searches"] = [_search_entry(times, nq, recall_at_k(I, D, I_true, D_true))]

    elif store == "ivf":
        nlist = args.nlist or nlist_for(n)
        quantizer = faiss.IndexFlatIP(args.dim)
        ivf = faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.spherical = True
        ivf.cp.niter = args.niter
        n_train = min(n, args.train_per_list * nlist)
        rng = np.random.default_rng(args.seed + 2)
        sample = x[np.sort(rng.choice(n, n_train, replace=False))]
        out.update(nlist=nlist, train_rows=n_train, niter=args.niter)
        _log(f"ivf: training {nlist} lists on {n_train} rows ({args.niter} k-means iterations)")
        t = time.perf_counter()
        ivf.train(sample)
        out["train_s"] = time.perf_counter() - t
        del sample
        t = time.perf_counter()
        step = 100_000
        for s in tqdm(range(0, n, step), desc="ivf add", unit="100k", mininterval=5):
            ivf.add_with_ids(x[s : s + step], ids[s : s + step])
        out["add_s"] = time.perf_counter() - t
        out["build_s"] = out["train_s"] + out["add_s"]
        out["rss_built_mib"] = _rss_mib()
        _log(f"ivf: trained in {out['train_s']:.1f}s, {n} added in {out['add_s']:.1f}s")
        out["searches"] = []
        for nprobe in args.nprobe:
            ivf.nprobe = min(nprobe, nlist)

            def search(q: np.ndarray) -> Any:
                return ivf.search(q, K)

            times, (D, I) = _time_search(search, xq, args.repeats)
            rec = recall_at_k(I, D, I_true, D_true)
            out["searches"].append(_search_entry(times, nq, rec, nprobe=int(ivf.nprobe)))
            _log(f"ivf nprobe={ivf.nprobe}: {nq / np.median(times):.0f} q/s, recall {rec:.4f}")

    elif store == "milvus":
        from index.store.milvus import MilvusStore

        db = args.work / f"milvus-{n}.db"
        shutil.rmtree(db, ignore_errors=True)
        if db.is_file():
            db.unlink()
        ms = MilvusStore(args.dim, db, collection="bench")
        t = time.perf_counter()
        done = 0
        bar = tqdm(total=n, desc="milvus insert", unit="row", mininterval=5)
        for s in range(0, n, args.insert_batch):
            ms.add(ids[s : s + args.insert_batch], x[s : s + args.insert_batch])
            done = min(n, s + args.insert_batch)
            bar.update(done - s)
            if time.perf_counter() - t > args.max_insert_s and done < n:
                break
        bar.close()
        out["insert_s"] = time.perf_counter() - t
        out["inserted"] = done
        out["insert_rows_per_s"] = done / out["insert_s"]
        if done < n:
            out["note"] = (
                f"insert stopped after {out['insert_s']:.0f}s (--max-insert-s) at {done} rows, "
                f"{out['insert_rows_per_s']:.0f} rows/s: about "
                f"{n / out['insert_rows_per_s'] / 60:.0f} min for all"
            )
            out["build_s"] = out["insert_s"]
            out["rss_built_mib"] = _rss_mib()
            _log("milvus: " + out["note"])
        else:
            t = time.perf_counter()
            ms.client.flush(ms.collection)
            out["flush_s"] = time.perf_counter() - t
            out["build_s"] = out["insert_s"] + out["flush_s"]
            out["rss_built_mib"] = _rss_mib()
            _log(f"milvus: {n} inserted in {out['insert_s']:.1f}s, flushed {out['flush_s']:.1f}s")
            times, (D, I) = _time_search(lambda q: ms.search(q, K), xq, args.repeats)
            out["searches"] = [_search_entry(times, nq, recall_at_k(I, D, I_true, D_true))]
        out["disk_mib"] = sum(f.stat().st_size for f in db.rglob("*") if f.is_file()) / 2**20
        ms.drop()
        ms.close()
        shutil.rmtree(db, ignore_errors=True)
    else:
        raise ValueError(f"unknown store {store!r}")

    st = status_kb(os.getpid())
    out["peak_rss_mib"] = st.get("VmHWM", 0) / 1024
    out["rss_end_mib"] = st.get("VmRSS", 0) / 1024
    return out


# -- the driver: every (size, store) in a fresh subprocess ----------------------------------


def run_one(args: argparse.Namespace, n: int, store: str) -> dict[str, Any]:
    result = args.work / f"result-{store}-{n}.json"
    result.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker-size",
        str(n),
        "--worker-store",
        store,
        "--worker-result",
        str(result),
        *args.passthrough,
    ]
    load0 = loadavg()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    sampler = TreeSampler(proc.pid, interval=args.interval, pss=False).start()
    try:
        rc = proc.wait(timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    tree = sampler.stop()
    wall = time.perf_counter() - t
    res: dict[str, Any] = {"n": n, "store": store}
    if rc == 0 and result.is_file():
        res = json.loads(result.read_text())
    else:
        res["error"] = f"worker exit code {rc} after {wall:.0f}s"
    res["wall_s"] = wall
    res["load_start"], res["load_end"] = load0, loadavg()
    res["tree"] = tree
    return res


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10k,100k,300k,1M", help="catalogue sizes (k, M suffixes)")
    ap.add_argument("--dim", type=int, default=384, help="vector size (384: MiniLM text)")
    ap.add_argument("--queries", type=int, default=1000, help="queries in the searched batch")
    ap.add_argument("--stores", default=",".join(STORES), help="of: " + ",".join(STORES))
    ap.add_argument("--out", type=Path, help="write every measurement as JSON here")
    ap.add_argument("--data", choices=["clustered", "random"], default="clustered")
    ap.add_argument(
        "--npy", type=Path, help="use the first n rows of this (rows, dim) .npy instead"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed searches (median reported)")
    ap.add_argument("--nprobe", default="16,64", help="IVF lists searched (comma list)")
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (default 4*sqrt(n))")
    ap.add_argument("--train-per-list", type=int, default=50, help="IVF training rows per list")
    ap.add_argument("--niter", type=int, default=10, help="IVF k-means iterations")
    ap.add_argument("--insert-batch", type=int, default=10_000, help="rows per MilvusStore.add")
    ap.add_argument(
        "--max-insert-s",
        type=float,
        default=900,
        help="stop inserting into Milvus after this long (the run is then reported as partial)",
    )
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "store_scale")
    ap.add_argument("--timeout-s", type=float, default=3600, help="per (size, store) process")
    ap.add_argument("--interval", type=float, default=0.5, help="memory sampling period (s)")
    ap.add_argument("--worker-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-store", help=argparse.SUPPRESS)
    ap.add_argument("--worker-result", type=Path, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.nprobe = [int(p) for p in str(args.nprobe).split(",") if p.strip()]
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.worker_store:
        res = worker(args)
        args.worker_result.write_text(json.dumps(res, indent=2))
        return 0

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    bad = set(stores) - set(STORES)
    if bad:
        build_parser().error(f"unknown store(s) {sorted(bad)}; valid: {', '.join(STORES)}")
    # the worker gets every option but --sizes/--stores/--out
    args.passthrough = [
        *("--dim", str(args.dim), "--queries", str(args.queries), "--data", args.data),
        *("--seed", str(args.seed), "--repeats", str(args.repeats)),
        *("--nprobe", ",".join(map(str, args.nprobe)), "--nlist", str(args.nlist)),
        *("--train-per-list", str(args.train_per_list), "--niter", str(args.niter)),
        *("--insert-batch", str(args.insert_batch), "--max-insert-s", str(args.max_insert_s)),
        *("--work", str(args.work)),
        *(("--npy", str(args.npy.resolve())) if args.npy else ()),
    ]
    import faiss

    meta = {
        "command": " ".join(["python", "benchmarks/store_scale.py", *argv]),
        "started": now_utc(),
        "machine": {**machine(), "platform": platform.platform()},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "load_start": loadavg(),
    }
    try:
        import milvus_lite
        import pymilvus

        meta["pymilvus"] = pymilvus.__version__
        meta["milvus_lite"] = getattr(milvus_lite, "__version__", "?")
    except ImportError:
        pass
    runs: list[dict[str, Any]] = []
    report = {"meta": meta, "runs": runs}
    for n in sizes:
        for store in stores:
            print(f"== {size_label(n)} x {args.dim}, {store}  (load {loadavg()})", flush=True)
            r = run_one(args, n, store)
            runs.append(r)
            if r.get("error"):
                print(f"   {r['error']}", flush=True)
            for s in r.get("searches", []):
                print(
                    f"   build {r['build_s']:.1f}s, {s['qps']:.0f} q/s"
                    + (f" (nprobe {s['nprobe']})" if "nprobe" in s else "")
                    + f", recall@{K} {s['recall']:.4f}, peak RSS {r['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
            if args.out:  # after every run: a long run interrupted keeps what it measured
                meta["finished"], meta["load_end"] = now_utc(), loadavg()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2))
    print("\n".join(summarise(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
