"""The HTTP service, in process (httpx TestClient, lifespan run): match, batch-match,
catalogue updates and persistence, bad input, auth, metrics, micro-batching."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index.cli.parser import main as cli_main
from index.data.listings import read_catalogue
from index.features.tfidf import TfidfConfig
from index.matching.fusion import FusionConfig
from index.matching.selfmatch import match_catalogue
from index.store.model import load_encoders
from service.batching import MicroBatcher
from service.config import Settings
from service.deps import get_engine
from service.main import create_app

Client = Callable[..., TestClient]


def rows_of(synth: Path) -> list[dict[str, str]]:
    with open(synth / "listings.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def listing_json(r: dict[str, str], synth: Path, image: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"posting_id": r["posting_id"], "title": r["title"]}
    out["image_phash"] = r["image_phash"]
    if image:
        out["image"] = b64(synth / "images" / r["image"])
    return out


def wait_ready(c: TestClient) -> None:
    for _ in range(200):
        if c.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("service never became ready")


def clients(tmp_path: Path, model: Path, **defaults: Any) -> Iterator[Client]:
    """Yields a factory of ready clients (settings: `defaults`, then the call's), all on
    tmp_path/data, so a second call is a restart; closes them afterwards."""
    opened: list[TestClient] = []

    def make(**kw: Any) -> TestClient:
        kw = {"model_dir": model, "data_dir": tmp_path / "data", "device": "cpu", **defaults, **kw}
        c = TestClient(create_app(Settings(**kw)), raise_server_exceptions=False)
        c.__enter__()
        opened.append(c)
        wait_ready(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture
def client(tmp_path: Path, strict_model: Path) -> Iterator[Client]:
    """Factory of ready clients; the same data_dir across calls (a restart)."""
    yield from clients(tmp_path, strict_model)


@pytest.fixture
def filled(client: Client, synth: Path) -> TestClient:
    """A service whose catalogue holds the synthetic catalogue (titles, phash, images)."""
    c = client()
    body = {"listings": [listing_json(r, synth) for r in rows_of(synth)]}
    r = c.post("/listings", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "added": len(body["listings"]),
        "replaced": 0,
        "total": len(body["listings"]),
    }
    return c


def reference(synth: Path, model_dir: Path) -> tuple[list[str], list[list[str]]]:
    """Self-match of the synthetic catalogue by the library (what the catalogue should give)."""
    cat = read_catalogue(synth / "listings.csv", images_dir=synth / "images")
    config = FusionConfig.model_validate_json((model_dir / "fusion.json").read_text())
    enc = load_encoders(model_dir, device="cpu")
    matches, _ = match_catalogue(cat, config, enc, tfidf_config=TfidfConfig(), device="cpu")
    return cat.posting_id, matches


# -- match ------------------------------------------------------------------------------------


def test_health_ready_and_openapi(client: Client) -> None:
    c = client()
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz").json()
    assert ready["ready"] and ready["detail"]["signals"] == ["tfidf", "phash", "text", "image"]
    spec = c.get("/openapi.json").json()
    body = spec["paths"]["/match"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert body["application/json"]["examples"]
    assert {"/batch-match", "/listings", "/listings/{posting_id}", "/metrics"} <= set(spec["paths"])


def test_match_members_equal_the_library_self_match(
    filled: TestClient, synth: Path, strict_model: Path
) -> None:
    """JSON /match of a catalogue listing (by its posting_id) = its row of match_catalogue."""
    ids, want = reference(synth, strict_model)
    rows = {r["posting_id"]: r for r in rows_of(synth)}
    grouped = 0
    for i in range(0, len(ids), 5):
        r = filled.post("/match", json=listing_json(rows[ids[i]], synth))
        assert r.status_code == 200, r.text
        got = r.json()["matches"]
        assert got[0]["posting_id"] == ids[i] and got[0]["is_self"] and got[0]["score"] == 1.0
        assert {m["posting_id"] for m in got} == set(want[i])
        th = r.json()["thresholds"]
        for m in got[1:]:
            sig = [s for s in m["signals"] if not s.startswith("nearest")]
            assert m["signals"] and 0 < m["score"] <= 1.0 + 1e-6
            assert all(m["similarities"][s] >= th[s] for s in sig)
            if sig:  # the score is the best similarity of the signals that matched
                assert max(m["similarities"][s] for s in sig) == pytest.approx(m["score"])
        grouped += len(got) > 1
    assert grouped >= 3


def test_match_multipart_equals_json_and_self_is_excluded(filled: TestClient, synth: Path) -> None:
    r0 = rows_of(synth)[3]
    img = (synth / "images" / r0["image"]).read_bytes()
    as_json = filled.post(
        "/match", json={"title": r0["title"], "image": b64(synth / "images" / r0["image"])}
    )
    as_form = filled.post(
        "/match", data={"title": r0["title"]}, files={"image": ("x.jpg", img, "image/jpeg")}
    )
    assert as_json.status_code == as_form.status_code == 200, as_form.text
    assert as_json.json() == as_form.json()
    # Not in the catalogue (no posting_id): its twin in the catalogue is a match, not "self".
    got = as_json.json()["matches"]
    assert got and not any(m["is_self"] for m in got)
    assert r0["posting_id"] in {m["posting_id"] for m in got}
    # The phash was computed from the photo: it equals the given one, so phash matched.
    twin = next(m for m in got if m["posting_id"] == r0["posting_id"])
    assert "phash" in twin["signals"] and twin["similarities"]["phash"] == 1.0


def test_threshold_override_and_max_matches(filled: TestClient, synth: Path) -> None:
    title = rows_of(synth)[0]["title"]
    base = filled.post("/match", json={"title": title}).json()
    loose = filled.post("/match", json={"title": title, "threshold": {"tfidf": 0.05}}).json()
    assert loose["thresholds"]["tfidf"] == 0.05 and base["thresholds"]["tfidf"] == 0.6
    assert loose["count"] > base["count"]
    assert all(
        m["similarities"]["tfidf"] >= 0.05 for m in loose["matches"] if "tfidf" in m["signals"]
    )
    few = filled.post(
        "/match", json={"title": title, "threshold": {"tfidf": 0.05}, "max_matches": 3}
    )
    assert [m["posting_id"] for m in few.json()["matches"]] == [
        m["posting_id"] for m in loose["matches"][:3]
    ]
    assert filled.post("/match", json={"title": title, "max_matches": 51}).status_code == 422
    assert filled.post("/match", json={"title": title, "threshold": {"x": 1}}).status_code == 422


# -- catalogue updates ------------------------------------------------------------------------


def test_add_match_delete_match_and_restart(client: Client, synth: Path, tmp_path: Path) -> None:
    c = client()
    rows = rows_of(synth)
    group = [r for r in rows if r["label_group"] == rows[0]["label_group"]]
    assert c.post("/match", json={"title": group[0]["title"]}).json()["count"] == 0  # empty
    body = {"listings": [listing_json(r, synth, image=False) for r in rows[:40]]}
    assert c.post("/listings", json=body).json()["total"] == 40
    q = {"title": group[0]["title"], "image_phash": group[0]["image_phash"]}
    first = c.post("/match", json=q).json()["matches"]
    pid = first[0]["posting_id"]
    got = c.get(f"/listings/{pid}").json()
    assert got["posting_id"] == pid and set(got["signals"]) >= {"tfidf", "text"}
    assert c.delete(f"/listings/{pid}").json() == {"posting_id": pid, "total": 39}
    after = c.post("/match", json=q).json()["matches"]
    assert pid not in {m["posting_id"] for m in after}
    assert c.get(f"/listings/{pid}").status_code == 404
    # Replace one listing: its new title is what is matched next.
    other = rows[1]["posting_id"]
    new = {"posting_id": other, "title": "kabel data usb samsung 1m original"}
    assert c.post("/listings", json={"listings": [new]}).json() == {
        "added": 0,
        "replaced": 1,
        "total": 39,
    }
    hit = c.post("/match", json={"title": "kabel data usb samsung 1m original"}).json()
    assert hit["matches"][0]["posting_id"] == other
    before = c.post("/match", json=q).json()
    # A restart (new app, same data folder) keeps the catalogue and answers the same.
    c.__exit__(None, None, None)
    c2 = client()
    assert c2.get(f"/listings/{other}").json()["title"] == new["title"]
    assert c2.get(f"/listings/{pid}").status_code == 404
    assert c2.post("/match", json=q).json() == before
    assert "pricematch_catalogue_listings 39.0" in c2.get("/metrics").text


def test_batch_add_replace_counts_and_empty_title(client: Client) -> None:
    c = client(model_dir=None)  # no encoders: TF-IDF and phash only
    assert c.get("/readyz").json()["detail"]["signals"] == ["tfidf", "phash"]
    body = {
        "listings": [
            {"posting_id": "a", "title": ""},
            {"posting_id": "b", "title": "emina serum wajah", "image_phash": "ffffffff00000000"},
        ]
    }
    assert c.post("/listings", json=body).json() == {"added": 2, "replaced": 0, "total": 2}
    assert c.get("/listings/a").json()["signals"] == []
    hit = c.post("/match", json={"title": "", "image_phash": "ffffffff00000001"}).json()
    assert [m["posting_id"] for m in hit["matches"]] == ["b"]
    assert hit["matches"][0]["signals"] == ["phash"]


# -- batch-match ------------------------------------------------------------------------------


def _cli_submission(tmp_path: Path, csv_path: Path, *extra: str) -> str:
    out = tmp_path / "cli.csv"
    assert cli_main(["match", str(csv_path), *extra, "-q", "--device", "cpu", "-o", str(out)]) == 0
    return out.read_text(encoding="utf-8")


def test_batch_match_equals_cli_titles_only(
    client: Client, synth: Path, strict_model: Path, tmp_path: Path
) -> None:
    c = client()
    test_csv = tmp_path / "test.csv"  # Kaggle test.csv columns: no label_group
    with open(test_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["posting_id", "image", "image_phash", "title"])
        for r in rows_of(synth):
            w.writerow([r["posting_id"], r["image"], r["image_phash"], r["title"]])
    r = c.post("/batch-match", files={"csv": ("test.csv", test_csv.read_bytes(), "text/csv")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    want = _cli_submission(tmp_path, test_csv, "--model", str(strict_model))
    assert r.text == want
    assert sum(len(line.split()) for line in want.splitlines()[1:]) > 1.5 * len(rows_of(synth))
    m = c.get("/metrics").text
    assert f"pricematch_batch_match_rows_total {float(len(rows_of(synth)))}" in m


def test_batch_match_of_ids_and_titles_only(
    client: Client, synth: Path, strict_model: Path, tmp_path: Path
) -> None:
    """A CSV with only posting_id,title (no phash column, no images) works as in the CLI."""
    c = client()
    path = tmp_path / "titles.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["posting_id", "title"])
        for r in rows_of(synth):
            w.writerow([r["posting_id"], r["title"]])
    r = c.post("/batch-match", files={"csv": ("titles.csv", path.read_bytes())})
    assert r.status_code == 200, r.text
    assert r.text == _cli_submission(tmp_path, path, "--model", str(strict_model))
    assert len(r.text.splitlines()) == len(rows_of(synth)) + 1


def test_batch_match_with_images_zip_and_server_folder(
    client: Client, synth: Path, strict_model: Path, tmp_path: Path
) -> None:
    want = _cli_submission(
        tmp_path,
        synth / "listings.csv",
        "--model",
        str(strict_model),
        "--images",
        str(synth / "images"),
    )
    no_images = _cli_submission(tmp_path, synth / "listings.csv", "--model", str(strict_model))
    assert want != no_images  # the image signal changes the result, so the test can tell
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted((synth / "images").iterdir()):
            z.write(p, f"test_images/{p.name}")
    c = client(images_dir=synth.parent)
    files = {
        "csv": ("t.csv", (synth / "listings.csv").read_bytes()),
        "images": ("i.zip", buf.getvalue()),
    }
    r = c.post("/batch-match", files=files)
    assert r.status_code == 200, r.text
    assert r.text == want
    r2 = c.post(
        "/batch-match",
        files={"csv": ("t.csv", (synth / "listings.csv").read_bytes())},
        data={"images_subdir": f"{synth.name}/images"},
    )
    assert r2.status_code == 200, r2.text
    assert r2.text == want
    bad = c.post(
        "/batch-match",
        files={"csv": ("t.csv", b"posting_id,title\na,b\n")},
        data={"images_subdir": "../../etc"},
    )
    assert bad.status_code == 400 and "inside the server's images folder" in bad.json()["detail"]


def test_bundle_mode_serves_its_catalogue_and_keeps_changes(
    client: Client, synth: Path, strict_model: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    assert (
        cli_main(
            [
                "build-index",
                str(synth / "listings.csv"),
                "--model",
                str(strict_model),
                "--out",
                str(bundle),
                "-q",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = rows_of(synth)
    c = client(bundle=bundle, model_dir=None)
    assert c.get("/readyz").json()["detail"]["listings"] == len(rows)
    q = listing_json(rows[0], synth, image=False)
    got = c.post("/match", json=q).json()["matches"]
    assert got[0]["posting_id"] == rows[0]["posting_id"] and got[0]["is_self"]
    assert c.delete(f"/listings/{rows[0]['posting_id']}").status_code == 200
    want = _cli_submission(tmp_path, synth / "listings.csv", "--bundle", str(bundle))
    r = c.post("/batch-match", files={"csv": ("t.csv", (synth / "listings.csv").read_bytes())})
    assert r.text == want
    c.__exit__(None, None, None)
    c2 = client(bundle=bundle, model_dir=None)
    assert c2.get("/readyz").json()["detail"]["listings"] == len(rows) - 1
    assert c2.get(f"/listings/{rows[0]['posting_id']}").status_code == 404


# -- bad input --------------------------------------------------------------------------------


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")  # 81 MP, a few kB
    return buf.getvalue()


def test_every_bad_input_is_a_clear_4xx_and_the_service_goes_on(
    client: Client, synth: Path
) -> None:
    c = client(max_request_mb=1, max_upload_mb=0.05, max_image_mb=0.5)
    keep = {"listings": [listing_json(r, synth) for r in rows_of(synth)[:5]]}
    assert c.post("/listings", json=keep).status_code == 200
    bomb = base64.b64encode(_bomb()).decode()
    big_csv = b"posting_id,title\n" + b"".join(b"p%d,%s\n" % (i, b"x" * 50) for i in range(2000))
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/match", {"json": {"title": "a", "image": "not base64!"}}, 400, "not valid base64"),
        (
            "/match",
            {"json": {"title": "a", "image": base64.b64encode(b"hello").decode()}},
            400,
            "not a readable image",
        ),
        ("/match", {"json": {"title": "a", "image": bomb}}, 400, "pixels is over the"),
        (
            "/match",
            {"data": {"title": "a"}, "files": {"image": ("x.png", b"GIF89a...")}},
            400,
            "not a readable image",
        ),
        (
            "/match",
            {"data": {"title": "a"}, "files": {"image": ("x.png", b"\xff" * 600_000)}},
            413,
            "limit",
        ),
        (
            "/match",
            {"content": b"title=a", "headers": {"content-type": "text/plain"}},
            415,
            "not supported",
        ),
        ("/match", {"json": {"title": "a", "image": "A" * 1_500_000}}, 413, "limit"),
        ("/match", {"json": {"title": "a", "image_phash": "xyz"}}, 422, "pattern"),
        (
            "/batch-match",
            {"files": {"csv": ("t.csv", b"id,name\n1,a\n")}},
            400,
            "missing required column(s) posting_id, title",
        ),
        (
            "/batch-match",
            {"files": {"csv": ("t.csv", b"posting_id,title\n\xff\xfe,a\n")}},
            400,
            "not UTF-8",
        ),
        ("/batch-match", {"files": {"csv": ("t.csv", big_csv)}}, 413, "limit"),
        (
            "/batch-match",
            {
                "files": {
                    "csv": ("t.csv", b"posting_id,title,image\na,b,c.jpg\n"),
                    "images": ("i.zip", b"not a zip"),
                }
            },
            400,
            "not a zip",
        ),
        (
            "/listings",
            {"json": {"listings": [{"posting_id": "z", "title": "t", "image": bomb}]}},
            400,
            "image of listing 'z'",
        ),
        (
            "/listings",
            {"json": {"listings": [{"posting_id": "z", "title": "t"}] * 2}},
            400,
            "duplicate posting_id",
        ),
    ]
    for path, kw, status, text in cases:
        r = c.post(path, **kw)
        assert r.status_code == status, (path, text, r.status_code, r.text)
        assert text in str(r.json()["detail"]), (text, r.json())
        assert c.get("/healthz").status_code == 200
    assert c.get("/listings/nope").status_code == 404
    r = c.delete("/listings/nope")
    assert r.status_code == 404 and "not in the catalogue" in r.json()["detail"]
    # nothing was lost or half-added
    assert c.get("/readyz").json()["detail"]["listings"] == 5
    assert c.get("/listings/z").status_code == 404
    assert c.post("/match", json={"title": rows_of(synth)[0]["title"]}).status_code == 200


def test_api_key_guards_writes_only(client: Client) -> None:
    c = client(api_key="s3cret")
    body = {"listings": [{"posting_id": "a", "title": "t"}]}
    assert c.post("/listings", json=body).status_code == 401
    assert c.post("/listings", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.post("/listings", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert c.delete("/listings/a").status_code == 401
    assert c.get("/listings/a").status_code == 200
    assert c.post("/match", json={"title": "t"}).status_code == 200


def test_internal_error_is_generic_and_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    c = client()

    class Broken:
        async def match(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("secret internals at /srv/x")

    c.app.dependency_overrides[get_engine] = lambda: Broken()  # type: ignore[attr-defined]
    r = c.post("/match", json={"title": "t"})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error", "error": "InternalError"}
    assert "secret internals" in caplog.text
    c.app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert c.post("/match", json={"title": "t"}).status_code == 200


# -- serving machinery ------------------------------------------------------------------------


def test_micro_batcher_collects_concurrent_items() -> None:
    calls: list[int] = []

    def fn(items: Any) -> np.ndarray:
        calls.append(len(items))
        return np.array([[float(x) * 2] for x in items])

    async def run() -> list[np.ndarray]:
        b: MicroBatcher[int] = MicroBatcher(fn, max_batch=8, wait_ms=200)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(20)))
        finally:
            await b.stop()

    out = asyncio.run(run())
    assert [float(o[0]) for o in out] == [2.0 * i for i in range(20)]
    assert calls == [8, 8, 4]


def test_micro_batcher_delivers_errors_to_each_waiter() -> None:
    def fn(items: Any) -> np.ndarray:
        raise ValueError("boom")

    async def run() -> list[Any]:
        b: MicroBatcher[int] = MicroBatcher(fn, max_batch=4, wait_ms=50)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
        finally:
            await b.stop()

    assert [str(e) for e in asyncio.run(run())] == ["boom"] * 3


def test_metrics_count_routes_and_time_encoders(filled: TestClient) -> None:
    for _ in range(3):
        filled.post("/match", json={"title": "wardah lipstick"})
    filled.get("/listings/does-not-exist")
    m = filled.get("/metrics").text
    assert 'pricematch_requests_total{method="POST",route="/match",status="200"} 3.0' in m
    assert 'route="/listings/{posting_id}",status="404"' in m  # templates, not raw paths
    assert 'pricematch_request_seconds_count{method="POST",route="/match"} 3.0' in m
    assert 'pricematch_encoder_seconds_count{modality="text"}' in m
    assert "pricematch_catalogue_listings" in m


def test_metrics_time_each_stage_of_a_match(filled: TestClient) -> None:
    before = filled.get("/metrics").text
    assert 'pricematch_match_stage_seconds_count{stage="search_tfidf"}' not in before
    r = filled.post("/match", json={"title": "kaos polos", "image_phash": "94974f937d4c2433"})
    assert r.status_code == 200, r.text
    text = filled.get("/metrics").text
    for stage in ("features", "search_tfidf", "search_phash", "search_text", "fuse"):
        assert f'pricematch_match_stage_seconds_count{{stage="{stage}"}} 1.0' in text, stage
