"""Run by tests/test_ray_serve.py in a subprocess, inside a loopback-only network namespace:
`pricematch serve --engine ray` on a local Ray, requests through Serve's HTTP proxy, the
answers saved as JSON (the test compares them with the in-process app's).

1. A local Ray (2 CPUs, no dashboard) is started here; `pricematch serve --engine ray
   --address` (the real CLI, one replica) joins it. The spec's `requests` are sent one at
   a time, then its `burst` all at once; `/metrics` and `/readyz` are saved; the CLI is
   stopped with SIGTERM (its exit code and the apps left are saved).
2. `service.ray_serve.run` deploys two replicas on the same catalogue folder; the spec's
   `reads` and `writes` are sent.

Usage: python -m tests.ray_serve_run SPEC_JSON OUT_DIR
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx


def send(client: Any, req: dict[str, Any]) -> dict[str, Any]:
    """Send one request of a spec (`httpx.Client` or `TestClient`); its status and body.

    A request is `method`, `url` and any of `json`, `data` (form fields), `files`
    (name -> [filename, base64 content, content type]), `content` (base64 body) and
    `headers`.
    """
    kw: dict[str, Any] = {}
    for key in ("json", "data", "headers"):
        if key in req:
            kw[key] = req[key]
    if "files" in req:
        kw["files"] = {
            k: (name, base64.b64decode(data), ctype)
            for k, (name, data, ctype) in req["files"].items()
        }
    if "content" in req:
        kw["content"] = base64.b64decode(req["content"])
    r = client.request(req["method"], req["url"], **kw)
    ctype = r.headers.get("content-type", "").split(";")[0]
    body = r.json() if ctype == "application/json" else r.text
    return {"status": r.status_code, "type": ctype, "body": body}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(c: httpx.Client, alive: Any = None, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            assert alive(), "the serve process exited"
        try:
            if c.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "Serve never became ready"
        time.sleep(0.25)


def run(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    import ray
    from ray import serve

    from index.scale.ray_engine import init_ray
    from service import ray_serve
    from service.config import Settings

    res: dict[str, Any] = {}
    init_ray(None, num_cpus=2)
    address = ray.get_runtime_context().gcs_address
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **{f"PRICEMATCH_{k.upper()}": str(v) for k, v in spec["env"].items()}}
    cmd = [sys.executable, "-m", "index.cli", "serve", "--engine", "ray", "--address", address]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *spec["args"]]
    with open(out / "cli.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with httpx.Client(base_url=base, timeout=120) as c:
            wait_ready(c, lambda: proc.poll() is None)
            res["requests"] = [send(c, r) for r in spec["requests"]]
            with ThreadPoolExecutor(len(spec["burst"])) as pool:
                res["burst"] = list(pool.map(lambda r: send(c, r), spec["burst"]))
            res["metrics"] = c.get("/metrics").text
            res["readyz"] = c.get("/readyz").json()
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        res["cli_rc"] = proc.wait(timeout=120)
        res["cli_stop_s"] = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    res["apps_after_cli"] = sorted(serve.status().applications)

    settings = Settings(**spec["settings"], ray_replicas=2)
    ray_serve.run(settings, host="127.0.0.1", port=port, blocking=False)
    status = serve.status().applications[ray_serve.APP_NAME].deployments["PricematchService"]
    res["replica_states"] = {str(k): v for k, v in status.replica_states.items()}
    with httpx.Client(base_url=base, timeout=120) as c:
        wait_ready(c)
        res["reads"] = [send(c, r) for r in spec["reads"]]
        res["writes"] = [send(c, r) for r in spec["writes"]]
        res["readyz2"] = c.get("/readyz").json()
    serve.shutdown()
    ray.shutdown()
    return res


if __name__ == "__main__":
    spec_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    result = run(json.loads(spec_path.read_text()), out_dir)
    (out_dir / "result.json").write_text(json.dumps(result))
