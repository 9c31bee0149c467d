"""Abandoned work against a real `pricematch serve` on 127.0.0.1: a client that gives up
on a long /batch-match frees the batch slot (its job is cancelled), an upload cut off
half-way costs nothing, and SIGTERM stops the server within seconds, its temporary
folders removed."""

from __future__ import annotations

import io
import random
import re
import socket
import time
import zipfile
from pathlib import Path

import httpx
from PIL import Image

from tests.test_service_uvicorn import Server, server

#: A CSV whose self-match takes tens of seconds on 2 cores (60k rows of 6 words from a
#: 300-word vocabulary: dense TF-IDF neighbourhoods); the tests never let it finish.
SLOW_ROWS, VOCAB = 60_000, 300


def slow_csv() -> bytes:
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6)) for _ in range(VOCAB)]
    rows = "".join(f"p{i},{' '.join(rng.choices(words, k=6))}\n" for i in range(SLOW_ROWS))
    return ("posting_id,title,image\n" + rows.replace("\n", ",a.jpg\n")).encode()


def tiny_zip() -> bytes:
    img = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(img, format="PNG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.jpg", img.getvalue())
    return buf.getvalue()


def raw_request(port: int, files: dict[str, tuple[str, bytes]]) -> tuple[bytes, bytes]:
    """Headers and body of a multipart POST /batch-match, as bytes for a raw socket."""
    req = httpx.Request("POST", f"http://127.0.0.1:{port}/batch-match", files=files)
    body = req.read()
    head = f"POST /batch-match HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    for k, v in req.headers.items():
        if k.lower() not in ("host", "transfer-encoding"):
            head += f"{k}: {v}\r\n"
    if "content-length" not in req.headers:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode(), body


def metric(s: Server, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", s.client.get("/metrics").text, re.M)
    return float(m[1]) if m else 0.0


def wait_for(cond: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if callable(cond) and cond():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def start_slow_batch(s: Server, with_zip: bool = False) -> socket.socket:
    files = {"csv": ("t.csv", slow_csv())}
    if with_zip:
        files["images"] = ("i.zip", tiny_zip())
    head, body = raw_request(s.port, files)
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(head + body)
    wait_for(lambda: metric(s, "pricematch_batch_jobs_running") == 1, 30, "the batch runs")
    return sock


def test_client_disconnect_cancels_its_batch_and_frees_the_slot(tmp_path: Path) -> None:
    with server(None, tmp_path / "data", tmp_path / "server.log") as s:
        sock = start_slow_batch(s)
        time.sleep(1.0)
        sock.close()  # the client gives up
        wait_for(
            lambda: metric(s, "pricematch_batch_jobs_cancelled_total") == 1, 20, "cancelled"
        )
        assert metric(s, "pricematch_batch_jobs_running") == 0
        # the only batch slot is free again: a 2-row batch is answered at once
        r = s.client.post(
            "/batch-match", files={"csv": ("t.csv", b"posting_id,title\na,x\nb,y\n")}, timeout=20
        )
        assert r.status_code == 200 and r.text.startswith("posting_id,matches\n")
        # an upload cut off half-way: the server drops it and goes on
        head, body = raw_request(s.port, {"csv": ("t.csv", slow_csv())})
        with socket.create_connection(("127.0.0.1", s.port)) as half:
            half.sendall(head + body[: len(body) // 3])
        assert s.client.get("/healthz").status_code == 200
        r = s.client.post("/match", json={"title": "x"})
        assert r.status_code == 200
        assert metric(s, "pricematch_batch_jobs_running") == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_sigterm_stops_a_busy_server_after_the_grace_period_and_cleans_up(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp), "PRICEMATCH_SHUTDOWN_GRACE_S": "1"}
    log = tmp_path / "server.log"
    with server(None, tmp_path / "data", log, env=env) as s:
        sock = start_slow_batch(s, with_zip=True)
        assert [p.name for p in tmp.iterdir() if p.name.startswith("pricematch-batch-")]
        s.proc.terminate()
        # The batch alone takes tens of seconds; the grace period (1 s) cuts it off. The
        # bound is generous for a loaded machine (speed is measured in benchmarks).
        s.proc.wait(timeout=20)  # raises if it does not stop
        sock.close()
    # uvicorn ends by re-raising the signal it caught: -15 is its normal SIGTERM exit
    assert s.proc.returncode in (0, -15), log.read_text()
    assert "Application shutdown complete" in log.read_text()
    assert not [p for p in tmp.iterdir() if p.name.startswith("pricematch-batch-")]
