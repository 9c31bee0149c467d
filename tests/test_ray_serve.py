"""`pricematch serve --engine ray` (service/ray_serve.py): through Serve's HTTP proxy the
service answers as the in-process app does, batches concurrent /match queries with
`serve.batch`, stops cleanly on SIGTERM, and with two replicas serves the saved catalogue
read-only.

Ray's processes bind every interface, so Ray runs in a subprocess inside a loopback-only
network namespace (`unshare -rn`, tests/ray_serve_run.py); the comparisons run here,
against the same requests sent to the plain app (TestClient).
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("ray.serve", reason="--engine ray needs Ray Serve (pip install -e '.[scale]')")

from index.cli.parser import main as cli_main
from index.errors import PricematchError
from service import ray_serve
from service.config import Settings
from service.main import create_app
from tests.ray_serve_run import send
from tests.test_ray_engine import ROOT, run_in_netns
from tests.test_service import b64, listing_json, rows_of, wait_ready

#: Settings of both the Ray deployments and the plain app (as PRICEMATCH_* for the CLI).
ENV = {"max_batch": 8, "batch_wait_ms": 10, "max_request_mb": 1, "ray_num_cpus": 0.5}
BURST = 24


def _match(r: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"method": "POST", "url": "/match", "json": {"title": r["title"], **extra}}


def _spec(synth: Path, model: Path, data: Path) -> dict[str, Any]:
    rows = rows_of(synth)
    listings = [listing_json(r, synth) for r in rows]
    img = b64(synth / "images" / rows[3]["image"])
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        for r in rows:
            z.write(synth / "images" / r["image"], r["image"])
    csv_ = base64.b64encode((synth / "listings.csv").read_bytes()).decode()
    reads: list[dict[str, Any]] = [
        *[_match(r, posting_id=r["posting_id"], image_phash=r["image_phash"]) for r in rows[::9]],
        {"method": "POST", "url": "/match", "json": listing_json(rows[5], synth)},
        {"method": "POST", "url": "/match", "json": {"title": rows[3]["title"], "image": img}},
        {
            "method": "POST",
            "url": "/match",
            "data": {"title": rows[3]["title"], "max_matches": "3"},
            "files": {"image": ["x.jpg", img, "image/jpeg"]},
        },
        _match(rows[0], threshold={"tfidf": 0.3}, max_matches=5),
        {"method": "GET", "url": f"/listings/{rows[7]['posting_id']}"},
        # bad requests: the same 4xx as the plain app
        _match(rows[0], max_matches=51),  # 422
        _match(rows[0], threshold={"x": 1}),  # 422
        {"method": "POST", "url": "/match", "json": {"title": "x", "image": "not base64!"}},
        {
            "method": "POST",
            "url": "/match",
            "content": "eA==",
            "headers": {"content-type": "text/plain"},
        },
        {"method": "POST", "url": "/match", "json": {"title": "x" * (1 << 20)}},  # 413
        {"method": "GET", "url": "/listings/nope"},  # 404
        {"method": "POST", "url": "/batch-match", "files": {"csv": ["t.csv", "eA==", "text/csv"]}},
    ]
    batch = {"csv": ["t.csv", csv_, "text/csv"]}
    zipped_b64 = base64.b64encode(zipped.getvalue()).decode()
    requests = [
        {"method": "POST", "url": "/listings", "json": {"listings": listings}},
        *reads,
        {"method": "POST", "url": "/batch-match", "files": batch},
        {
            "method": "POST",
            "url": "/batch-match",
            "files": {**batch, "images": ["i.zip", zipped_b64, "application/zip"]},
        },
        {"method": "DELETE", "url": f"/listings/{rows[-1]['posting_id']}"},
        {"method": "DELETE", "url": f"/listings/{rows[-1]['posting_id']}"},  # 404 now
        _match(rows[-1], image_phash=rows[-1]["image_phash"]),
    ]
    writes = [
        {"method": "POST", "url": "/listings", "json": {"listings": listings[:1]}},
        {"method": "DELETE", "url": f"/listings/{rows[0]['posting_id']}"},
    ]
    settings = {"model_dir": str(model), "data_dir": str(data), "device": "cpu", **ENV}
    return {
        "env": ENV,
        "args": ["--model", str(model), "--data-dir", str(data), "--device", "cpu"],
        "settings": settings,
        "requests": requests,
        "burst": [_match(r) for r in rows[:BURST]],
        "reads": reads,
        "writes": writes,
    }


@pytest.fixture(scope="module")
def served(
    synth: Path, strict_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spec and what Ray Serve answered to it."""
    out = tmp_path_factory.mktemp("ray_serve")
    spec = _spec(synth, strict_model, out / "data")
    (out / "spec.json").write_text(json.dumps(spec))
    r = run_in_netns(["-m", "tests.ray_serve_run", f"{out}/spec.json", str(out)], timeout=420)
    log = (out / "cli.log").read_text() if (out / "cli.log").exists() else ""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + log[-3000:]
    return spec, json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def plain(served: tuple[dict[str, Any], dict[str, Any]], tmp_path_factory: pytest.TempPathFactory):
    """The in-process app's answers to the same requests (its own catalogue folder): the
    requests, the burst (one at a time), the reads again (after the requests' writes)."""
    spec = served[0]
    settings = Settings(**{**spec["settings"], "data_dir": tmp_path_factory.mktemp("plain")})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        wait_ready(c)
        answers = [send(c, r) for r in spec["requests"]]
        burst = [send(c, r) for r in spec["burst"]]
        reads = [send(c, r) for r in spec["reads"]]
    return answers, burst, reads


def test_serve_answers_as_the_plain_app(served, plain) -> None:
    spec, res = served
    want = plain[0]
    got = res["requests"]
    assert len(got) == len(want) == len(spec["requests"])
    for req, g, w in zip(spec["requests"], got, want, strict=True):
        assert g == w, (req["method"], req["url"], g, w)
    statuses = [w["status"] for w in want]
    assert {200, 400, 404, 413, 415, 422} <= set(statuses)  # the bad requests stay 4xx
    first_match = want[1]["body"]
    assert first_match["count"] >= 1 and first_match["matches"][0]["is_self"]
    assert want[0]["body"]["total"] == len(spec["requests"][0]["json"]["listings"])


def test_concurrent_match_is_batched_by_serve_batch(served, plain) -> None:
    _, res = served
    want = plain[1]
    assert res["readyz"]["detail"]["batching"] == {"text": "serve.batch", "image": "serve.batch"}
    got = res["burst"]
    assert len(got) == BURST and all(g["status"] == 200 for g in got)
    for g, w in zip(got, want, strict=True):  # batched encodings: equal up to float rounding
        assert [m["posting_id"] for m in g["body"]["matches"]] == [
            m["posting_id"] for m in w["body"]["matches"]
        ]
        for a, b in zip(g["body"]["matches"], w["body"]["matches"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)

    def metric(series: str) -> float:
        name = re.escape(f"pricematch_encoder_batch_size_{series}")
        m = re.search(rf"^{name} (\S+)$", res["metrics"], re.M)
        assert m, series
        return float(m[1])

    calls = metric('count{modality="text"}')
    items = metric('sum{modality="text"}')
    at_most_one = metric('bucket{le="1.0",modality="text"}')
    at_most_max = metric('bucket{le="8.0",modality="text"}')
    assert items >= BURST
    assert at_most_one < calls  # some encoder call took more than one query
    assert at_most_max == calls  # none took more than max_batch


def test_sigterm_stops_the_cli_and_removes_its_app(served) -> None:
    _, res = served
    assert res["cli_rc"] == 0
    assert res["cli_stop_s"] < 60
    assert ray_serve.APP_NAME not in res["apps_after_cli"]


def test_two_replicas_serve_the_saved_catalogue_read_only(served, plain) -> None:
    """Two replicas load the catalogue the CLI's replica saved (a listing deleted) and answer
    as the plain app does after the same writes; writes are refused."""
    spec, res = served
    want = plain[2]
    assert res["replica_states"] == {"RUNNING": 2}
    for req, g, w in zip(spec["reads"], res["reads"], want, strict=True):
        assert g == w, (req["method"], req["url"], g, w)
    for g in res["writes"]:
        assert g["status"] == 409, g
        assert g["body"]["error"] == "ReadOnlyCatalogueError"
        assert "read-only with 2 Ray Serve replicas" in g["body"]["detail"]
    listings = len(spec["requests"][0]["json"]["listings"])
    assert res["readyz2"]["detail"]["listings"] == listings - 1


def test_replica_options_follow_the_settings() -> None:
    d = ray_serve.deployment(
        Settings(ray_replicas=3, ray_num_cpus=2, ray_num_gpus=0.25, max_batch=16)
    )
    assert d.num_replicas == 3
    assert d.ray_actor_options == {"num_cpus": 2, "num_gpus": 0.25}
    assert d.max_ongoing_requests == 32
    assert ray_serve.deployment(Settings()).ray_actor_options == {"num_cpus": 1.0}
    assert ray_serve.deployment(Settings(batch_wait_ms=10)).num_replicas == 1
    with pytest.raises(PricematchError, match="at most 10 ms"):
        ray_serve.deployment(Settings(batch_wait_ms=25))


def test_cli_ray_engine_without_ray_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import uvicorn

    import service

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the CLI went on to serve")

    monkeypatch.setattr(ray_serve, "run", never)  # fail, never serve, if the import works
    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.delattr(service, "ray_serve")  # as if ray[serve] were missing:
    monkeypatch.setitem(sys.modules, "service.ray_serve", None)  # the import fails
    assert cli_main(["serve", "--engine", "ray", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--engine ray needs Ray Serve: pip install -e '.[scale]'" in err
    assert cli_main(["serve", "--replicas", "2", "--data-dir", str(tmp_path)]) == 2
    assert "need --engine ray" in capsys.readouterr().err


def test_default_path_does_not_import_ray(tmp_path: Path) -> None:
    code = (
        "import sys; from service.config import Settings; from service.main import create_app;"
        "import service.cli;"
        f"create_app(Settings(data_dir={str(tmp_path)!r}));"
        "assert 'ray' not in sys.modules, 'ray imported'; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
