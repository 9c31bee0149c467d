"""Attack a real `pricematch serve` from outside and count the answers (docs/SECURITY.md).

Starts the server on a free 127.0.0.1 port (an API key set, optionally a model folder),
then runs (1) Schemathesis (`st run`, every check) on its /openapi.json and (2) families of
hand-made hostile requests: image paths in CSVs and zips, NaN/Infinity, lone surrogates,
non-UTF-8 bytes, odd X-API-Key values, posting_ids, zip bombs, empty queries, wrong
content types. Each hand-made request is followed by GET /healthz on the same keep-alive
connection. Prints one JSON summary: requests per status class from the server's access
log (start-up /readyz polls left out), 5xx count, health failures, and canary matches: two
rows without titles that name the same photo outside the upload must not match (they
would only through the photo's phash, had it been read).

    python benchmarks/hostile_campaign.py [--model DIR] [--examples 100] [--out report.json]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` from this checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.serving import start_serve  # noqa: E402

KEY = "campaign-key"


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buf, format="PNG")
    return buf.getvalue()


def csv_of(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["posting_id", "title", "image"])
    w.writerows(rows)
    return buf.getvalue().encode()


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def hand_made(canary: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(family, method+path, httpx keyword arguments) of every hand-made request."""
    key = {"X-API-Key": KEY}
    js = {"content-type": "application/json"}
    out: list[tuple[str, str, dict[str, Any]]] = []
    names = [
        str(canary),
        f"../{canary.parent.name}/{canary.name}",
        canary.name,
        "/etc/passwd",
        "../../../../etc/hostname",
        "a\\..\\..\\x.png",
        "C:\\Windows\\win.ini",
        "./x/../..",
        "%2e%2e/%2e%2e/etc/passwd",
        "sub/../../" + canary.name,
    ]
    for n in names:  # two rows naming the same file: a match would reveal it was read
        body = csv_of([["a", "", n], ["b", "", n]])  # no title: only the photo could link them
        out.append(("paths: CSV", "POST /batch-match", {"files": {"csv": ("t.csv", body)}}))
        z = zip_of({"../../evil.png": png((1, 2, 3)), "x.png": png((9, 9, 9))})
        files = {"csv": ("t.csv", body), "images": ("i.zip", z)}
        out.append(("paths: CSV + zip", "POST /batch-match", {"files": files}))
    for sub in ["..", "../..", "/etc", "a/../../..", "\x00", "~root"]:
        out.append(
            (
                "paths: images_subdir",
                "POST /batch-match",
                {
                    "files": {"csv": ("t.csv", csv_of([["a", "t", "x.png"]]))},
                    "data": {"images_subdir": sub},
                },
            )
        )
    for raw in [
        b'{"title":"a","threshold":{"tfidf":NaN}}',
        b'{"title":"a","threshold":{"tfidf":Infinity}}',
        b'{"title":"a","threshold":{"tfidf":-Infinity}}',
        b'{"title":NaN}',
        b'{"title":1e999}',
        b'{"title":"a\\ud800"}',
        b'{"title":"\\udfff"}',
        b'{"title":"a\xff"}',
        b"\xff\xfe",
        b'{"title":"a","max_matches":1e400}',
        b'{"title":"a","max_matches":true}',
        b'{"title":"a","threshold":{"tfidf":true}}',
        b"[" * 5000,
        b'{"title":"' + b"a" * 6000 + b'"}',
        b"",
        b"null",
        b"{}",
        b'{"title":"   "}',
        b'{"image":""}',
        b'{"title":"a","image":"!!"}',
        b'{"title":"a","image":"aGVsbG8="}',
        b'{"posting_id":"a/b","title":"t"}',
    ]:
        out.append(("values: /match JSON", "POST /match", {"content": raw, "headers": js}))
        lst = b'{"listings":[' + raw + b"]}" if raw.startswith(b"{") else raw
        out.append(
            ("values: /listings JSON", "POST /listings", {"content": lst, "headers": {**js, **key}})
        )
    for thr in ['{"tfidf": Infinity}', '{"tfidf": NaN}', "not json", "[1]", '{"x": 1}']:
        out.append(
            (
                "values: /match form",
                "POST /match",
                {
                    "data": {"title": "a", "threshold": thr},
                    "files": {"image_phash": (None, "94974f937d4c2433")},
                },
            )
        )
    for value in ["kä".encode(), b"\xff\xfe", b"k\xe9", b"x" * 10000, b""]:
        out.append(
            (
                "headers: X-API-Key",
                "POST /listings",
                {
                    "json": {"listings": [{"posting_id": "a", "title": "t"}]},
                    "headers": [(b"X-API-Key", value)],
                },
            )
        )
    for pid in ["a/b", "../../etc/passwd", "..", ".", "a\nb", "a\x00", " x", "x" * 201, "\ud800"]:
        body = json.dumps({"listings": [{"posting_id": pid, "title": "t"}]}).encode()
        out.append(
            ("ids: /listings", "POST /listings", {"content": body, "headers": {**js, **key}})
        )
        out.append(
            (
                "ids: /batch-match",
                "POST /batch-match",
                {"files": {"csv": ("t.csv", csv_of([[pid.replace("\ud800", "?"), "t", ""]]))}},
            )
        )
    for z in [
        zip_of({"a.png": b"\0" * 5_000_000}),
        zip_of({"x/a.png": b"1", "y/a.png": b"2"}),
        b"PK\x03\x04broken",
        b"",
        zip_of({f"{i}.png": b"" for i in range(10)}),
    ]:
        out.append(
            (
                "uploads: zips",
                "POST /batch-match",
                {
                    "files": {
                        "csv": ("t.csv", csv_of([["a", "t", "a.png"]])),
                        "images": ("i.zip", z),
                    }
                },
            )
        )
    dup = csv_of([[f"p{i % 1000}", "t", ""] for i in range(20000)])
    out.append(("uploads: duplicate ids", "POST /batch-match", {"files": {"csv": ("t.csv", dup)}}))
    for ctype in [
        "text/plain",
        "application/xml",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ]:
        out.append(
            (
                "content types",
                "POST /listings",
                {"content": b"x=1", "headers": {"content-type": ctype, **key}},
            )
        )
        out.append(
            (
                "content types",
                "POST /match",
                {"content": b"x=1", "headers": {"content-type": ctype}},
            )
        )
    for path in [
        "/listings/..%2F..%2Fetc%2Fpasswd",
        "/listings/%00",
        "/listings/" + "a" * 5000,
        "/nope",
    ]:
        out.append(("paths: URLs", f"GET {path}", {}))
    out.append(("methods", "PUT /match", {}))
    out.append(("methods", "DELETE /listings/x", {}))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="model folder to serve (default: no encoders)")
    p.add_argument("--examples", type=int, default=100, help="Schemathesis examples per operation")
    p.add_argument("--out", type=Path, help="also write the summary here")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pricematch-campaign-"))
    canary = work / "canary" / "canary.png"
    canary.parent.mkdir()
    canary.write_bytes(png((200, 10, 10)))
    log = work / "server.log"
    env = {"PRICEMATCH_API_KEY": KEY}
    model = ["--model", str(args.model.resolve())] if args.model else []
    with open(log, "wb") as f:
        proc, base = start_serve(work / "data", *model, env=env, log=f, cwd=canary.parent)
    summary: dict[str, Any] = {"families": {}, "health_failures": 0, "canary_matched": 0}
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            cases = hand_made(canary)
            for family, target, kw in cases:
                method, path = target.split(" ", 1)
                r = c.request(method, path, **kw)
                fam = summary["families"].setdefault(family, Counter())
                fam[f"{r.status_code // 100}xx"] += 1
                if family.startswith("paths: CSV") and r.status_code == 200:
                    rows = dict(csv.reader(io.StringIO(r.text)))
                    summary["canary_matched"] += int("b" in rows.get("a", "").split())
                if c.get("/healthz").status_code != 200:
                    summary["health_failures"] += 1
            summary["hand_made_requests"] = len(cases)
            st = shutil.which("st")
            if st:
                rep = work / "st"
                run = subprocess.run(
                    [
                        st,
                        "run",
                        f"{base}/openapi.json",
                        "--checks",
                        "all",
                        "-n",
                        str(args.examples),
                        "--seed",
                        "1",
                        "--continue-on-failure",
                        "-H",
                        f"X-API-Key: {KEY}",
                        "--report",
                        "junit",
                        "--report-dir",
                        str(rep),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=1800,
                    check=False,
                )
                m = re.search(r"(\d+) generated, (\d+) found (\d+) unique failures", run.stdout)
                summary["schemathesis"] = {
                    "generated": int(m[1]) if m else None,
                    "failures": dict(Counter(re.findall(r"^- (ST\d+ [^\n]+)$", run.stdout, re.M))),
                    "invalid_components": re.findall(r"Invalid component: ([^\n]+)", run.stdout),
                }
            summary["health_after"] = c.get("/healthz").status_code
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    served = "\n".join(
        x for x in log.read_text(errors="replace").splitlines() if "/readyz" not in x
    )
    statuses = Counter(re.findall(r'HTTP/1\.1" (\d)\d\d', served))
    summary["server_log_statuses"] = {f"{k}xx": v for k, v in sorted(statuses.items())}
    summary["server_5xx"] = statuses.get("5", 0)
    summary["server_5xx_lines"] = re.findall(r'^.*HTTP/1\.1" 5\d\d.*$', served, re.M)[:20]
    summary["server_tracebacks"] = log.read_text(errors="replace").count("Traceback")
    summary["families"] = {k: dict(v) for k, v in summary["families"].items()}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return (
        1 if summary["server_5xx"] or summary["health_failures"] or summary["canary_matched"] else 0
    )


if __name__ == "__main__":
    raise SystemExit(main())
