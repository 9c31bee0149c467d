"""Benchmark: `pricematch match` with the default engine vs `--engine ray` (issue 6; not a test).

Runs each engine on the same CSV and model folder, one after the other, each as its own
process tree, and reports wall time, rows/s, CPU time, and memory: the peak RSS and PSS
summed over the process tree (the driver and, for Ray, its GCS, raylet and workers),
sampled every `--interval` seconds (benchmarks/procmem.py). Then it compares the two
submissions (byte for byte; row by row as sets of matches) and, with `--truth`, scores
both with the independent scorer (`../shared/tools/score.py`).

Ray binds every interface, so the Ray run is wrapped in a loopback-only network namespace
(`unshare -rn`, as tests/test_ray_engine.py does); `--no-netns` runs it as it is.
Without `--images` only the titles are used: TF-IDF, the given phash and the text encoder.

Usage:
    python benchmarks/engine_compare.py ../shared/data/shopee_dev.csv --model models/default \
        --truth ../shared/data/shopee_dev.csv --out out/engine_compare.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` from this checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.procmem import TreeSampler, loadavg, machine, now_utc  # noqa: E402

DEFAULT_SCORER = ROOT.parent / "shared" / "tools" / "score.py"


# -- pure helpers (tests/test_benchmarks.py) -----------------------------------------------


def read_submission(path: Path) -> dict[str, list[str]]:
    """posting_id -> its matches, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        return {r["posting_id"]: r["matches"].split() for r in csv.DictReader(f)}


def compare_submissions(a: dict[str, list[str]], b: dict[str, list[str]]) -> dict[str, Any]:
    """How two submissions differ: rows in one only, rows whose match sets differ, rows
    whose match lists differ only in order, and the matches added/dropped from a to b."""
    common = a.keys() & b.keys()
    differ = [p for p in common if set(a[p]) != set(b[p])]
    reordered = sum(1 for p in common if a[p] != b[p] and set(a[p]) == set(b[p]))
    return {
        "rows": len(common),
        "only_in_first": len(a.keys() - b.keys()),
        "only_in_second": len(b.keys() - a.keys()),
        "rows_identical_sets": len(common) - len(differ),
        "rows_differing": len(differ),
        "rows_reordered_only": reordered,
        "matches_only_in_first": sum(len(set(a[p]) - set(b[p])) for p in differ),
        "matches_only_in_second": sum(len(set(b[p]) - set(a[p])) for p in differ),
        "examples": sorted(differ)[:5],
    }


def parse_score(text: str) -> float | None:
    """The mean F1 score.py prints last (`rows N mean_f1 X`)."""
    found = re.findall(r"mean_f1\s+([0-9.]+)", text)
    return float(found[-1]) if found else None


def count_rows(path: Path) -> int:
    with open(path, newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.DictReader(f))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- running ---------------------------------------------------------------------------------


def match_cmd(args: argparse.Namespace, engine: str, shards: int, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "index.cli", "match", str(args.csv), "-o", str(out), "-q"]
    if args.model:
        cmd += ["--model", str(args.model)]
    if args.images:
        cmd += ["--images", str(args.images)]
    cmd += args.extra
    if engine == "ray":
        cmd += ["--engine", "ray", "--shards", str(shards)]
        if not args.no_netns:
            inner = "ip link set lo up && exec " + shlex.join(cmd)
            cmd = ["unshare", "-rn", "sh", "-c", inner]
    return cmd


def run_engine(args: argparse.Namespace, name: str, cmd: list[str]) -> dict[str, Any]:
    log_path = args.work / f"{name}.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "PRICEMATCH_NO_PROGRESS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    print(f"== {name}: {shlex.join(cmd)}", flush=True)
    print(f"   load {loadavg()}, log {log_path}", flush=True)
    load0, started = loadavg(), now_utc()
    t = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, interval=args.interval).start()
        last = t
        while True:
            # wait4, not poll: it gives the CPU time of the process and of every descendant
            # it waited for (Ray's raylet waits for its workers)
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.5)
            if time.perf_counter() - last >= 60:  # progress on long runs
                last = time.perf_counter()
                print(
                    f"   {last - t:.0f}s, peak tree RSS so far {sampler.peak_rss_kb / 1024:.0f} "
                    f"MiB, {sampler.peak_procs} processes, load {loadavg()}",
                    flush=True,
                )
    wall = time.perf_counter() - t
    time.sleep(args.interval)
    left = [p for p in sampler.alive() if p != proc.pid]
    tree = sampler.stop()
    for pid in left:  # processes of this run that outlived it (e.g. Ray's): end them
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    rc = proc.returncode
    res: dict[str, Any] = {
        "name": name,
        "command": shlex.join(cmd),
        "started": started,
        "rc": rc,
        "wall_s": wall,
        "load_start": load0,
        "load_end": loadavg(),
        "tree": tree,
        "left_running": len(left),
    }
    res["cpu_s_waited"] = ru.ru_utime + ru.ru_stime  # the process + descendants waited for
    res["cpu_s"] = max(res["cpu_s_waited"], tree["cpu_s"])  # ... or as sampled, if more
    res["max_single_process_rss_mib"] = ru.ru_maxrss / 1024  # the largest one process's peak
    res["log_tail"] = log_path.read_text(errors="replace")[-2000:]
    print(
        f"   rc {rc}, {wall:.1f}s, peak tree RSS {tree['peak_tree_rss_mib']:.0f} MiB "
        f"(PSS {tree['peak_tree_pss_mib']:.0f}), {tree['processes_seen']} processes",
        flush=True,
    )
    return res


def score(args: argparse.Namespace, sub: Path) -> float | None:
    if args.truth is None or not args.scorer.is_file():
        return None
    r = subprocess.run(
        [sys.executable, str(args.scorer), str(sub), str(args.truth)],
        capture_output=True,
        text=True,
        check=False,
    )
    print(f"   score.py {sub.name}: {r.stdout.strip()} {r.stderr.strip()[-300:]}", flush=True)
    return parse_score(r.stdout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("csv", type=Path, help="listings CSV (posting_id,title[,image_phash,...])")
    ap.add_argument("--model", type=Path, default=Path("models/default"), help="model folder")
    ap.add_argument("--images", type=Path, help="image folder (default: none, titles only)")
    ap.add_argument("--engines", default="local,ray", help="engines to run, in this order")
    ap.add_argument("--shards", default="1", help="--shards of the Ray runs (comma list)")
    ap.add_argument("--truth", type=Path, help="labelled CSV to score the submissions against")
    ap.add_argument("--scorer", type=Path, default=DEFAULT_SCORER, help="score.py")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "engine_compare")
    ap.add_argument("--out", type=Path, help="write every measurement as JSON here")
    ap.add_argument("--interval", type=float, default=0.5, help="memory sampling period (s)")
    ap.add_argument("--no-netns", action="store_true", help="run Ray without `unshare -rn`")
    ap.add_argument(
        "--extra", default="", help="more `pricematch match` options, e.g. '--device cpu'"
    )
    args = ap.parse_args(argv)
    args.extra = shlex.split(args.extra)
    args.csv, args.work = args.csv.resolve(), args.work.resolve()
    args.model = args.model.resolve() if args.model else None
    args.work.mkdir(parents=True, exist_ok=True)
    rows = count_rows(args.csv)

    runs: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "meta": {
            "command": " ".join(["python", "benchmarks/engine_compare.py", *argv]),
            "started": now_utc(),
            "machine": {**machine(), "platform": platform.platform()},
            "python": platform.python_version(),
            "csv": str(args.csv),
            "rows": rows,
            "load_start": loadavg(),
        },
        "runs": runs,
    }
    plan = []
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if engine == "ray":
            plan += [("ray", int(s)) for s in args.shards.split(",") if s.strip()]
        else:
            plan.append((engine, 1))
    for engine, shards in plan:
        name = engine if engine != "ray" else f"ray-{shards}shard"
        sub = args.work / f"{name}.csv"
        sub.unlink(missing_ok=True)
        res = run_engine(args, name, match_cmd(args, engine, shards, sub))
        res.update(engine=engine, shards=shards if engine == "ray" else None)
        if res["rc"] == 0 and sub.is_file():
            res["submission"] = str(sub)
            res["sha256"] = sha256(sub)
            res["rows_per_s"] = rows / res["wall_s"]
            res["mean_f1"] = score(args, sub)
        runs.append(res)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2))

    ok = [r for r in runs if "submission" in r]
    comparisons = []
    for r in ok[1:]:
        a, b = Path(ok[0]["submission"]), Path(r["submission"])
        c = compare_submissions(read_submission(a), read_submission(b))
        c.update(
            first=ok[0]["name"], second=r["name"], bytes_identical=a.read_bytes() == b.read_bytes()
        )
        comparisons.append(c)
        print(
            f"{ok[0]['name']} vs {r['name']}: files identical {c['bytes_identical']}, "
            f"{c['rows_identical_sets']}/{c['rows']} rows with the same matches",
            flush=True,
        )
    report["comparisons"] = comparisons
    report["meta"]["finished"], report["meta"]["load_end"] = now_utc(), loadavg()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print("| engine | wall s | rows/s | CPU s | peak tree RSS MiB | peak tree PSS MiB | F1 |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        t = r["tree"]
        f1 = r.get("mean_f1")
        print(
            f"| {r['name']} | {r['wall_s']:.1f} | {r.get('rows_per_s', 0):.0f} | "
            f"{r.get('cpu_s', 0):.0f} | {t['peak_tree_rss_mib']:.0f} | "
            f"{t['peak_tree_pss_mib']:.0f} | {'' if f1 is None else f'{f1:.4f}'} |"
        )
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
