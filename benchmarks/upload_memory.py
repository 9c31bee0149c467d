"""Peak memory of a `pricematch serve` answering hostile uploads (docs/SECURITY.md).

Each case runs against a fresh server (no encoders) on a free 127.0.0.1 port, so the
kernel's per-process peak (VmHWM) is that case's: the idle peak after start, then the
peak after the answer. Cases: the issue's 40 MB CSV with duplicate ids, a 30 MB CSV (under
the 32 MB default) with an early duplicate or over the row limit, an 87k-row CSV whose
duplicate is its last row, and a 1 MB zip that unpacks to 1 GB.

    python benchmarks/upload_memory.py [--out report.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` from this checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.procmem import machine, status_kb  # noqa: E402
from benchmarks.serving import start_serve  # noqa: E402


def csv_mb(mb: float, dup_at: float) -> bytes:
    """A posting_id,title CSV of about `mb` MB whose row at fraction `dup_at` repeats row 0."""
    row = b"p%d,Paper Bag Victoria Secret ukuran besar murah warna %d\n"
    n = int(mb * (1 << 20) / (len(row) + 8))
    dup = int(n * dup_at)
    body = b"".join(row % (0 if i == dup else i, i) for i in range(n))
    return b"posting_id,title\n" + body


def bomb_zip() -> bytes:
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z,
        z.open("a.jpg", "w", force_zip64=True) as f,
    ):
        block = b"\0" * (1 << 20)
        for _ in range(1024):
            f.write(block)
    return buf.getvalue()


def run_case(name: str, files: dict[str, Any]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pricematch-mem-"))
    proc, base = start_serve(work / "data", "--log-level", "warning")
    try:
        with httpx.Client(base_url=base, timeout=300) as c:
            idle = status_kb(proc.pid)["VmHWM"]
            t = time.perf_counter()
            r = c.post("/batch-match", files=files)
            took = time.perf_counter() - t
            peak = status_kb(proc.pid)["VmHWM"]
            health = c.get("/healthz").status_code
        return {
            "case": name,
            "upload_mb": round(sum(len(v[1]) for v in files.values()) / (1 << 20), 1),
            "status": r.status_code,
            "detail": r.json().get("detail") if r.status_code >= 400 else None,
            "answer_s": round(took, 2),
            "idle_peak_mb": round(idle / 1024),
            "peak_mb": round(peak / 1024),
            "added_mb": round((peak - idle) / 1024),
            "healthz_after": health,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cases = [
        ("40 MB CSV, duplicate ids", {"csv": ("t.csv", csv_mb(40, 0.5))}),
        ("30 MB CSV, duplicate at 10%", {"csv": ("t.csv", csv_mb(30, 0.1))}),
        ("30 MB CSV, over 100,000 rows", {"csv": ("t.csv", csv_mb(30, 0.9999))}),
        ("5.5 MB CSV (87k rows), duplicate at the end", {"csv": ("t.csv", csv_mb(5.5, 0.9999))}),
        (
            "1 MB zip unpacking to 1 GB",
            {
                "csv": ("t.csv", b"posting_id,title,image\na,x,a.jpg\n"),
                "images": ("i.zip", bomb_zip()),
            },
        ),
    ]
    out = {"machine": machine(), "cases": [run_case(n, f) for n, f in cases]}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
