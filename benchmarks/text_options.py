"""The effect of each matching option (sources, code tokens, char n-grams, fields) on one
labelled input, as a table for docs/BENCHMARKS.md.

Each variant is one `pricematch evaluate INPUT --tune --report ...` with the variant's flags
and a shared `--cache` (the encoders run once). On an entity-matching folder the thresholds
are tuned on the train pairs and scored on `--split` (valid): out of sample. On a labelled
CSV `--tune` tunes on the rows it scores (in sample), so the table also gives the untuned
row (the model's own thresholds).

    python benchmarks/text_options.py ../shared/data/er_wdc_computers --model models/default
    python benchmarks/text_options.py ../shared/data/shopee_dev.csv --model models/default \\
        --variants base codes char codes+char
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: name -> the evaluate flags of a variant ("+" joins several).
OPTIONS: dict[str, list[str]] = {
    "base": [],
    "cross": ["--sources", "cross"],
    "cross_first": ["--sources", "cross_first"],
    "codes": ["--tfidf-codes", "on"],
    "char": ["--tfidf-char", "3-5"],
}


def variant_flags(name: str) -> list[str]:
    """Flags of a variant such as "codes+cross" or "fields=title,brand"."""
    out: list[str] = []
    for part in name.split("+"):
        if part.startswith("fields="):
            out += ["--fields", part.removeprefix("fields=")]
        elif part in OPTIONS:
            out += OPTIONS[part]
        else:
            raise SystemExit(f"unknown option {part!r}; known: {', '.join(OPTIONS)}, fields=A,B")
    return out


def pick_rows(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the untuned fused row, the tuned fused row or None) of an evaluate report."""
    rows = {r["name"]: r for r in report["rows"]}
    tuned = rows.get("fused (tuned on train)") or rows.get("fused (tuned)")
    return rows["fused"], tuned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="entity-matching folder or labelled CSV")
    ap.add_argument("--model", help="model folder (default: TF-IDF and phash only)")
    ap.add_argument("--split", default="valid")
    ap.add_argument(
        "--variants",
        nargs="+",
        default=[
            "base",
            "cross",
            "cross_first",
            "codes",
            "char",
            "codes+cross",
            "codes+char+cross",
            "codes+cross_first",
        ],
    )
    ap.add_argument("--cache", help="embedding cache folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="write all reports as JSON here")
    args = ap.parse_args()
    cache = args.cache or tempfile.mkdtemp(prefix="pm-cache-")
    folder = Path(args.input).is_dir()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in args.variants:
            rep = Path(tmp) / f"{len(results)}.json"
            cmd = [sys.executable, "-m", "index.cli", "evaluate", args.input, "--tune", "-q"]
            cmd += ["--cache", cache, "--report", str(rep), *variant_flags(v)]
            if args.model:
                cmd += ["--model", args.model]
            if folder:
                cmd += ["--split", args.split]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            report = json.loads(rep.read_text(encoding="utf-8"))
            untuned, tuned = pick_rows(report)
            results.append(
                {
                    "variant": v,
                    "seconds": time.perf_counter() - t,
                    "untuned": untuned,
                    "tuned": tuned,
                }
            )
            print(f"done {v}", file=sys.stderr)
    how = "tuned on train pairs, scored on " + args.split if folder else "tuned in sample"
    print(f"| variant | P | R | F1 ({how}) | F1 untuned |")
    print("|---|---|---|---|---|")
    for r in results:
        t, u = r["tuned"] or r["untuned"], r["untuned"]
        print(
            f"| {r['variant']} | {t['precision']:.3f} | {t['recall']:.3f} | {t['f1']:.4f} "
            f"| {u['f1']:.4f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")


if __name__ == "__main__":
    main()
