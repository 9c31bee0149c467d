"""The service with its catalogue's vectors in Milvus (`vector_store="milvus"`, milvus-lite
.db files): the same /match answers as on FAISS, writes seen by the next /match and kept
across restarts, a crash between the snapshot and the Milvus write repaired, a bundle's
vectors loaded once, and clear errors for a bad uri or a collection out of step."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus store needs pymilvus ('.[scale]')")
pytest.importorskip("milvus_lite", reason="local Milvus tests need milvus-lite ('.[scale]')")

from fastapi.testclient import TestClient

from index.cli.parser import main as cli_main
from index.errors import BundleError, StoreError
from index.search.knn import l2_normalize
from index.store.milvus import IDS, JOURNAL, SUFFIX, JournaledStore, MilvusStore
from service.config import Settings
from tests.test_service import clients, listing_json, rows_of

Client = Callable[..., TestClient]
TOL = 1e-5


@pytest.fixture
def client(tmp_path: Path, strict_model: Path) -> Iterator[Client]:
    """Factory of ready clients on Milvus (tmp_path/m.db) unless told otherwise; the same
    data_dir and .db across calls, so a second call is a restart."""
    db = str(tmp_path / "m.db")
    yield from clients(tmp_path, strict_model, vector_store="milvus", milvus_uri=db)


def stores(c: TestClient) -> dict[str, JournaledStore]:
    out = c.app.state.engine.catalogue.stores  # type: ignore[attr-defined]
    assert all(isinstance(s, JournaledStore) for s in out.values()), out
    return dict(out)


def snapshot(data: Path) -> Path:
    return data / (data / "CURRENT").read_text().strip()


def fail_once(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, after: int = 0) -> None:
    """Make `cls.name` raise on its call number `after + 1` (a Milvus outage or a crash)."""
    real, calls = getattr(cls, name), [0]

    def flaky(self: Any, *a: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] == after + 1:
            raise RuntimeError(f"injected failure of {cls.__name__}.{name}")
        return real(self, *a, **kw)

    monkeypatch.setattr(cls, name, flaky)


def assert_same_answer(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Same matches, signals and scores (within 1e-5; tied scores in any order); a signal's
    similarity may be missing on one side only where it did not match."""
    assert a["count"] == b["count"] and a["thresholds"] == b["thresholds"]
    ma = {m["posting_id"]: m for m in a["matches"]}
    mb = {m["posting_id"]: m for m in b["matches"]}
    assert set(ma) == set(mb)
    for pid, x in ma.items():
        y = mb[pid]
        assert x["signals"] == y["signals"] and x["is_self"] == y["is_self"], pid
        assert x["score"] == pytest.approx(y["score"], abs=TOL), pid
        sx, sy = x["similarities"], y["similarities"]
        for s in set(sx) | set(sy):  # one's top-51 only: tied with its cut-off, unmatched
            if s in sx and s in sy:
                assert sx[s] == pytest.approx(sy[s], abs=TOL), (pid, s)
            else:
                assert s not in x["signals"] and sx.get(s, sy.get(s)) < a["thresholds"][s]
    np.testing.assert_allclose(
        [m["score"] for m in a["matches"]], [m["score"] for m in b["matches"]], atol=TOL
    )


def test_milvus_service_answers_as_the_faiss_one(
    client: Client, synth: Path, tmp_path: Path
) -> None:
    rows = rows_of(synth)
    body = {"listings": [listing_json(r, synth) for r in rows]}
    faiss = client(vector_store="faiss", data_dir=tmp_path / "faiss")
    milvus = client()
    assert milvus.get("/readyz").json()["detail"]["vector_store"] == "milvus"
    for c in (faiss, milvus):
        assert c.post("/listings", json=body).json()["total"] == len(rows)
    s = stores(milvus)
    assert len(s["text"].store) == len(rows) and len(s["image"].store) == len(rows)
    grouped = 0
    for r in rows:
        for q in (listing_json(r, synth), {"title": r["title"]}):  # member / outsider
            a, b = (c.post("/match", json=q) for c in (faiss, milvus))
            assert a.status_code == b.status_code == 200, b.text
            assert_same_answer(a.json(), b.json())
            grouped += a.json()["count"] > 1
    assert grouped > len(rows)  # the answers have matches to compare, not only "self"
    snap = snapshot(tmp_path / "data")  # the snapshot references the collections
    assert {p.name for p in snap.iterdir()} >= {f"text{SUFFIX}", f"image{SUFFIX}"}
    assert not list(snap.glob("*.faiss")) and not list(snap.glob(f"*{JOURNAL}"))


def test_writes_are_seen_by_the_next_match_and_survive_a_restart(
    client: Client, synth: Path, tmp_path: Path
) -> None:
    c = client()
    rows = rows_of(synth)
    body = {"listings": [listing_json(r, synth) for r in rows[:40]]}
    assert c.post("/listings", json=body).json()["total"] == 40
    q = listing_json(rows[0], synth)
    q.pop("posting_id")  # an outsider: all its matches come from the catalogue
    first = c.post("/match", json=q).json()["matches"]
    gone = first[0]["posting_id"]
    assert "text" in first[0]["signals"] or "image" in first[0]["signals"]
    assert c.delete(f"/listings/{gone}").json()["total"] == 39
    assert gone not in {m["posting_id"] for m in c.post("/match", json=q).json()["matches"]}
    other = rows[1]["posting_id"]
    new = {"posting_id": other, "title": "kabel data usb samsung 1m original"}
    assert c.post("/listings", json={"listings": [new]}).json()["replaced"] == 1
    hit = c.post("/match", json={"title": new["title"]}).json()["matches"]
    assert hit[0]["posting_id"] == other and hit[0]["similarities"]["text"] > 0.99
    before = c.post("/match", json=q).json()
    assert len(stores(c)["text"].store) == 39 and len(stores(c)["image"].store) == 38
    c.__exit__(None, None, None)
    c2 = client()  # a restart: same data_dir, same .db
    assert c2.get(f"/listings/{gone}").status_code == 404
    assert c2.get(f"/listings/{other}").json()["title"] == new["title"]
    assert c2.post("/match", json=q).json() == before
    assert len(stores(c2)["text"].store) == 39 and len(stores(c2)["image"].store) == 38


def test_a_crash_between_snapshot_and_milvus_is_repaired(
    client: Client, synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = rows_of(synth)
    c = client(wal=False)  # a snapshot per write, the vector changes as its journal
    body = {"listings": [listing_json(r, synth) for r in rows[:30]]}
    assert c.post("/listings", json=body).status_code == 200
    # The upsert of the new listing's vectors fails after its snapshot was committed.
    fail_once(monkeypatch, MilvusStore, "add")
    new = listing_json(rows[40], synth)
    r = c.post("/listings", json={"listings": [new]})
    assert r.status_code == 503 and "injected failure" in r.json()["detail"], r.text
    snap = snapshot(tmp_path / "data")
    assert (snap / f"text{JOURNAL}").is_file()  # the intended change is in the snapshot
    assert stores(c)["text"].pending == 1 and len(stores(c)["text"].store) == 30
    c.__exit__(None, None, None)
    c2 = client(wal=False)  # the start applies it again
    s = stores(c2)
    assert s["text"].pending == s["image"].pending == 0
    assert len(s["text"].store) == len(s["image"].store) == 31
    assert not (snap / f"text{JOURNAL}").exists()  # marked applied
    assert c2.get(f"/listings/{new['posting_id']}").status_code == 200
    got = c2.post("/match", json={**new, "posting_id": None}).json()["matches"]
    assert got[0]["posting_id"] == new["posting_id"]
    assert set(got[0]["signals"]) >= {"text", "image"}
    # A failed delete is applied by the next search of the same process.
    fail_once(monkeypatch, MilvusStore, "remove")
    assert c2.delete(f"/listings/{new['posting_id']}").status_code == 503
    assert len(s["text"].store) == 31 and s["text"].pending == 1
    got = c2.post("/match", json={**new, "posting_id": None}).json()["matches"]
    assert new["posting_id"] not in {m["posting_id"] for m in got}
    assert len(s["text"].store) == 30 and s["text"].pending == 0
    assert not list(snapshot(tmp_path / "data").glob(f"*{JOURNAL}"))


def test_a_bundle_is_loaded_into_milvus_once(
    client: Client,
    synth: Path,
    strict_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pymilvus import MilvusClient

    bundle = tmp_path / "bundle"
    build = ["build-index", str(synth / "listings.csv"), "--model", str(strict_model)]
    assert cli_main([*build, "--out", str(bundle), "-q", "--device", "cpu"]) == 0
    n = len(rows_of(synth))  # no images in the bundle: text vectors only
    # The first start dies after one batch of the bundle's vectors went into Milvus.
    monkeypatch.setattr("index.store.milvus.BATCH", 16)
    fail_once(monkeypatch, MilvusClient, "upsert", after=1)
    with pytest.raises(StoreError, match="injected"):
        client(bundle=bundle, model_dir=None)
    side = MilvusStore(16, tmp_path / "m.db", collection="pricematch_text")
    assert len(side) == 16
    side.close()
    c = client(bundle=bundle, model_dir=None)  # the restart re-applies it, by id
    assert c.get("/readyz").json()["detail"]["listings"] == n
    assert len(stores(c)["text"].store) == n
    faiss = client(bundle=bundle, model_dir=None, vector_store="faiss", data_dir=tmp_path / "f")
    for r in rows_of(synth)[::4]:
        q = listing_json(r, synth, image=False)
        assert_same_answer(faiss.post("/match", json=q).json(), c.post("/match", json=q).json())
    c.__exit__(None, None, None)
    c2 = client(bundle=bundle, model_dir=None)  # a populated collection: nothing added twice
    assert len(stores(c2)["text"].store) == n


def test_bad_settings_and_collections_out_of_step_are_clear_errors(
    client: Client, synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StoreError, match=r"cannot connect to Milvus at http://127\.0\.0\.1:9"):
        client(milvus_uri="http://127.0.0.1:9")
    with pytest.raises(StoreError, match=r"must end in \.db"):
        client(milvus_uri=str(tmp_path / "vectors.sqlite"))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pymilvus", None)  # not installed
        with pytest.raises(StoreError, match=r"needs pymilvus: pip install -e '\.\[scale\]'"):
            client()
    with pytest.raises(ValueError, match="milvus_collection"):
        Settings(vector_store="milvus", milvus_collection="no-dashes")

    c = client()
    rows = rows_of(synth)[:10]
    body = {"listings": [listing_json(r, synth) for r in rows]}
    assert c.post("/listings", json=body).status_code == 200
    c.__exit__(None, None, None)
    with pytest.raises(BundleError, match="PRICEMATCH_VECTOR_STORE=milvus"):
        client(vector_store="faiss")
    with pytest.raises(StoreError, match="PRICEMATCH_MILVUS_COLLECTION to its prefix"):
        client(milvus_collection="other")
    with pytest.raises(StoreError, match="does not know of"):
        client(data_dir=tmp_path / "new")  # a populated collection, no snapshot
    side = MilvusStore(16, tmp_path / "m.db", collection="pricematch_text")
    side.add(np.array([10**6]), l2_normalize(np.ones((1, 16))))  # written behind its back
    side.close()
    with pytest.raises(StoreError, match="holds 11 vectors.*expects 10"):
        client()


def test_journaled_store_never_sends_unsaved_changes(tmp_path: Path) -> None:
    x = l2_normalize(np.random.default_rng(0).normal(size=(6, 8)))
    s = JournaledStore(MilvusStore(8, tmp_path / "m.db"), 0)
    s.add(np.arange(6), x)
    assert len(s) == 6 and s.contains(np.array([5, 6])).tolist() == [True, False]
    np.testing.assert_allclose(s.vectors(np.array([2])), x[[2]], atol=1e-7)
    with pytest.raises(StoreError, match="not saved in a snapshot"):
        s.search(x, 3)
    assert len(s.store) == 0
    s.save(tmp_path / f"text{SUFFIX}")
    s.saved(tmp_path / f"text{JOURNAL}")
    s.apply()
    assert len(s.store) == 6 and not (tmp_path / f"text{JOURNAL}").exists()
    assert s.remove(np.array([1, 1, 99])) == 1 and len(s) == 5 and len(s.store) == 6
    with pytest.raises(KeyError):
        s.vectors(np.array([1]))
    s.save(tmp_path / f"text{SUFFIX}")
    s.saved(tmp_path / f"text{JOURNAL}")
    D, I = s.search(x[[1]], 6)
    assert 1 not in I[0] and (I[0, :5] >= 0).all() and I[0, 5] == -1 and np.isneginf(D[0, 5])


def engine_of(c: TestClient) -> Any:
    return c.app.state.engine  # type: ignore[attr-defined]


def ref_count(snap: Path, m: str = "text") -> int:
    return int(json.loads((snap / f"{m}{SUFFIX}").read_text())["count"])


def test_on_the_log_milvus_runs_ahead_of_the_snapshot_and_a_restart_replays(
    client: Client, synth: Path, tmp_path: Path
) -> None:
    rows = rows_of(synth)
    c = client()  # the log is on by default, in the Milvus mode too
    assert engine_of(c).wal is not None and stores(c)["text"].logged
    body = {"listings": [listing_json(r, synth) for r in rows[:30]]}
    assert c.post("/listings", json=body).status_code == 200
    assert c.delete(f"/listings/{rows[0]['posting_id']}").status_code == 200
    new = {"posting_id": rows[1]["posting_id"], "title": "kabel data usb samsung 1m original"}
    assert c.post("/listings", json={"listings": [new]}).json()["replaced"] == 1
    s = stores(c)
    # applied at once (no snapshot written per write): Milvus is ahead of the snapshot
    assert s["text"].pending == 0 and len(s["text"].store) == 29
    assert len(s["image"].store) == 28  # the replacement has no photo
    data = tmp_path / "data"
    assert ref_count(snapshot(data)) == 0 and (data / "wal-000003.log").stat().st_size > 0
    q = {"title": rows[2]["title"]}
    before = c.post("/match", json=q).json()
    c.__exit__(None, None, None)
    c2 = client()  # snapshot + the log's 3 records, re-applied by id: nothing doubled
    s2 = stores(c2)
    assert len(s2["text"].store) == len(s2["text"]) == 29 and len(s2["image"].store) == 28
    assert c2.get(f"/listings/{rows[0]['posting_id']}").status_code == 404
    assert c2.get(f"/listings/{new['posting_id']}").json()["title"] == new["title"]
    assert c2.post("/match", json=q).json() == before
    c2.__exit__(None, None, None)
    # A compaction: the snapshot then holds the ids (and Milvus was flushed before it).
    c3 = client(wal_max_records=2)
    more = {"listings": [listing_json(r, synth) for r in rows[30:33]]}
    assert c3.post("/listings", json=more).status_code == 200
    for r in rows[33:35]:
        c3.post("/listings", json={"listings": [listing_json(r, synth)]})
    e = engine_of(c3)
    if e.compaction is not None:
        e.compaction.join(30)
    assert e.last_compaction is not None
    snap = snapshot(data)
    ids = set(np.load(snap / f"text{IDS}").tolist())
    assert ref_count(snap) == len(ids) >= 32
    assert ids <= stores(c3)["text"].ids  # type: ignore[operator]
    n = len(stores(c3)["text"])
    c3.__exit__(None, None, None)
    c4 = client()
    assert len(stores(c4)["text"].store) == len(stores(c4)["text"]) == n == 34


def test_on_the_log_a_milvus_failure_is_answered_and_applied_later(
    client: Client, synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = rows_of(synth)
    c = client()
    body = {"listings": [listing_json(r, synth) for r in rows[:30]]}
    assert c.post("/listings", json=body).status_code == 200
    fail_once(monkeypatch, MilvusStore, "add")
    new = listing_json(rows[40], synth)
    assert c.post("/listings", json={"listings": [new]}).status_code == 200  # it is logged
    s = stores(c)
    assert s["text"].pending == 1 and len(s["text"].store) == 30 and len(s["text"]) == 31
    assert c.get(f"/listings/{new['posting_id']}").json()["signals"][-2:] == ["text", "image"]
    got = c.post("/match", json={**new, "posting_id": None}).json()["matches"]  # applies it
    assert got[0]["posting_id"] == new["posting_id"] and s["text"].pending == 0
    assert len(s["text"].store) == 31
    # Milvus down for a search: 503 naming it, the change kept for the next try.
    fail_once(monkeypatch, MilvusStore, "remove")
    assert c.delete(f"/listings/{new['posting_id']}").status_code == 200
    assert s["text"].pending == 1
    fail_once(monkeypatch, MilvusStore, "remove")
    r = c.post("/match", json={"title": new["title"]})
    assert r.status_code == 503 and "Milvus write" in r.json()["detail"], r.text
    c.__exit__(None, None, None)  # a stop with a change still pending: the start applies it
    c2 = client()
    s2 = stores(c2)
    assert s2["text"].pending == 0 and len(s2["text"].store) == len(s2["text"]) == 30


def test_a_snapshot_saved_before_ids_were_kept_gets_them_from_milvus(
    client: Client, synth: Path, tmp_path: Path
) -> None:
    rows = rows_of(synth)
    c = client(wal=False)
    body = {"listings": [listing_json(r, synth) for r in rows[:10]]}
    assert c.post("/listings", json=body).status_code == 200
    c.__exit__(None, None, None)
    data = tmp_path / "data"
    old = snapshot(data)
    for m in ("text", "image"):
        (old / f"{m}{IDS}").unlink()  # as an older pricematch saved it
    side = MilvusStore(8, tmp_path / "m.db", collection="pricematch_image")
    kept = side.vectors(np.array([3]))
    side.remove(np.array([3]))  # lost behind the service's back: refused
    side.close()
    with pytest.raises(StoreError, match="holds 9 of the catalogue's vectors.*expects 10"):
        client()
    side = MilvusStore(8, tmp_path / "m.db", collection="pricematch_image")
    side.add(np.array([3]), kept)
    side.close()
    c2 = client()
    assert len(stores(c2)["text"]) == 10 and stores(c2)["text"].ids is not None
    assert snapshot(data) != old and (snapshot(data) / f"text{IDS}").is_file()
    c2.__exit__(None, None, None)
    # ids that disagree with the collection are refused, not guessed around
    with open(snapshot(data) / f"text{IDS}", "wb") as f:
        np.save(f, np.arange(9, dtype=np.int64))
    ref = snapshot(data) / f"text{SUFFIX}"
    ref.write_text(json.dumps({**json.loads(ref.read_text()), "count": 9}))
    with pytest.raises(StoreError, match="holds 10 vectors.*expects 9"):
        client()
