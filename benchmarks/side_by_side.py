"""The reference pipeline (`benchmarks/reference_pipeline.py`) and `pricematch match`, on
the same CSV, run in turn (A B A B ...) in one invocation: CPU seconds, wall seconds and
peak RSS of each run (the child's own `wait4` rusage), mean F1 when the CSV has
label_group, and the ratios B/A (medians over the rounds). Noisy machine: read the ratios.

    python benchmarks/side_by_side.py ../shared/data/shopee_dev.csv --model models/default \
        --rounds 2 --out out/side_by_side.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: Sequence[str]) -> dict[str, float]:
    """Run `cmd`; its wall seconds, CPU seconds (user + system) and peak RSS (MiB)."""
    t = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{err[-2000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mib": ru.ru_maxrss / 1024}


def mean_f1(submission: Path, labelled: Path) -> float | None:
    """Mean row F1 of a submission against label_group (None without labels)."""
    with open(labelled, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "label_group" not in rows[0]:
        return None
    group = {r["posting_id"]: r["label_group"] for r in rows}
    members: dict[str, set[str]] = {}
    for p, g in group.items():
        members.setdefault(g, set()).add(p)
    with open(submission, newline="", encoding="utf-8") as f:
        pred = {r["posting_id"]: set(r["matches"].split()) for r in csv.DictReader(f)}
    tot = 0.0
    for p, g in group.items():
        m, truth = pred.get(p, set()), members[g]
        tot += 2 * len(m & truth) / (len(m) + len(truth))
    return tot / len(group)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("--model", type=Path, required=True, help="pricematch model folder")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="side_by_side-"))
    env_py = sys.executable
    cmds = {
        "reference": [env_py, str(ROOT / "benchmarks" / "reference_pipeline.py"), str(a.csv)],
        "pricematch": [env_py, "-m", "index.cli", "match", str(a.csv), "--model", str(a.model),
                       "--device", "cpu", "-q"],
    }
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cmds}
    for r in range(a.rounds):
        for name, cmd in cmds.items():
            sub = work / f"{name}-{r}.csv"
            res = run([*cmd, "-o", str(sub)])
            res["f1"] = mean_f1(sub, a.csv)
            runs[name].append(res)
            print(f"round {r} {name:<10} wall {res['wall_s']:7.1f}s cpu {res['cpu_s']:7.1f}s "
                  f"rss {res['peak_rss_mib']:6.0f} MiB F1 {res['f1']}", flush=True)

    def med(name: str, key: str) -> float:
        v = sorted(x[key] for x in runs[name])
        return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

    summary = {
        k: {m: med(k, m) for m in ("wall_s", "cpu_s", "peak_rss_mib")} for k in cmds
    }
    ratio = {m: summary["pricematch"][m] / summary["reference"][m] for m in summary["reference"]}
    print("medians:", json.dumps(summary), "\nratio pricematch/reference:", json.dumps(ratio))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"csv": str(a.csv), "runs": runs, "median": summary,
                                     "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
