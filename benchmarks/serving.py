"""Starting a `pricematch serve` for a benchmark: a free loopback port, the command, and
waiting for /readyz (the helpers benchmarks/*.py share)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(
    data_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    log: IO[bytes] | int = subprocess.DEVNULL,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """`pricematch serve` on a free 127.0.0.1 port (CPU, no progress bars), ready; returns
    the process and its base URL. `extra`: more `serve` arguments (`--model DIR`...)."""
    port = free_port()
    cmd = [sys.executable, "-m", "index.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--device", "cpu", *extra]
    full_env = {**os.environ, "PRICEMATCH_NO_PROGRESS": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pricematch serve exited with {proc.returncode}")
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("pricematch serve not ready within 300 s")
        time.sleep(0.1)
