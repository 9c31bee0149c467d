"""The service as a real `pricematch serve` (uvicorn) process on a free 127.0.0.1 port:
concurrent /match (micro-batched), batch-match = `pricematch match`, restart keeps the
catalogue."""

from __future__ import annotations

import base64
import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from index.cli.parser import main as cli_main


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running `pricematch serve`: its process, port and a client."""

    proc: subprocess.Popen[bytes]
    port: int
    client: httpx.Client


@contextmanager
def server(
    model_dir: Path | None, data_dir: Path, log: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Starts `pricematch serve` on a free loopback port, waits for /readyz, and stops it
    with SIGTERM afterwards (kill after 20 s)."""
    port = free_port()
    env = {
        **os.environ,
        "PRICEMATCH_BATCH_WAIT_MS": "50",
        "PRICEMATCH_NO_PROGRESS": "1",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "index.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--device", "cpu"]
    if model_dir is not None:
        cmd += ["--model", str(model_dir)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server not ready: " + log.read_text()
                time.sleep(0.1)
            yield Server(proc, port, c)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def serve(model_dir: Path, data_dir: Path, log: Path) -> Iterator[httpx.Client]:
    with server(model_dir, data_dir, log) as s:
        yield s.client


def test_real_server_match_batch_and_restart(synth: Path, model_dir: Path, tmp_path: Path) -> None:
    with open(synth / "listings.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    data, log = tmp_path / "data", tmp_path / "server.log"
    body = {
        "listings": [
            {
                "posting_id": r["posting_id"],
                "title": r["title"],
                "image": base64.b64encode((synth / "images" / r["image"]).read_bytes()).decode(),
            }
            for r in rows
        ]
    }
    with serve(model_dir, data, log) as c:
        assert c.post("/listings", json=body).json()["total"] == len(rows)
        titles = [r["title"] for r in rows[:16]]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda t: c.post("/match", json={"title": t}), titles))
        assert all(a.status_code == 200 for a in answers)
        first = [a.json() for a in answers]
        assert all(a["count"] >= 1 for a in first)
        metrics = c.get("/metrics").text
        calls = float(re.search(r'encoder_batch_size_count\{modality="text"\} (\S+)', metrics)[1])  # type: ignore[index]
        assert calls < len(titles)  # concurrent requests shared encoder calls

        r = c.post("/batch-match", files={"csv": ("t.csv", (synth / "listings.csv").read_bytes())})
        assert r.status_code == 200
        out = tmp_path / "cli.csv"
        args = [
            "match",
            str(synth / "listings.csv"),
            "--model",
            str(model_dir),
            "-q",
            "-o",
            str(out),
        ]
        assert cli_main([*args, "--device", "cpu"]) == 0
        assert r.text == out.read_text(encoding="utf-8")
        assert c.delete(f"/listings/{rows[0]['posting_id']}").status_code == 200
        probe = {"title": rows[0]["title"], "image_phash": rows[0]["image_phash"]}
        before = c.post("/match", json=probe).json()
        assert before["count"] >= 1

    with serve(model_dir, data, log) as c:  # a restart: same data folder
        assert c.get(f"/listings/{rows[0]['posting_id']}").status_code == 404
        assert c.get(f"/listings/{rows[1]['posting_id']}").json()["title"] == rows[1]["title"]
        assert c.get("/readyz").json()["detail"]["listings"] == len(rows) - 1
        assert c.post("/match", json=probe).json() == before
