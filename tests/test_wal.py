"""index.store.wal and the service on it: records with checksums, torn tails, replay equal to
the writes, background compaction, restarts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.errors import BundleError
from index.features.embed import QueryFeatures
from index.store.live import LiveCatalogue
from index.store.snapshots import current_snapshot, load_snapshot, snapshot_wal_next
from index.store.wal import (
    WriteAheadLog,
    apply_record,
    delete_record,
    encode_record,
    read_records,
    segments,
    upsert_record,
)
from service.config import Settings
from tests.test_service import Client, clients, listing_json, rows_of


def test_documented_log_defaults() -> None:
    s = Settings()
    assert s.wal is True
    assert s.wal_max_mb == 64
    assert s.wal_max_records == 10_000


def _write(path: Path, recs: list[dict[str, Any]], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(encode_record(r) for r in recs) + tail)


@pytest.mark.parametrize(
    "cut", ["header", "payload", "checksum"], ids=["cut-header", "cut-payload", "bad-crc"]
)
def test_a_torn_last_record_is_dropped_and_cut_off(tmp_path: Path, cut: str) -> None:
    good = [{"op": "delete", "next_id": 1, "posting_id": "a"}] * 2
    last = encode_record({"op": "delete", "next_id": 1, "posting_id": "b"})
    tail = {
        "header": last[:7],
        "payload": last[:-3],
        "checksum": last[:-1] + bytes([last[-1] ^ 1]),
    }[cut]
    p = tmp_path / "wal-000001.log"
    _write(p, good, tail)
    recs, length = read_records(p, last=True)
    assert recs == good and length == p.stat().st_size - len(tail)
    with pytest.raises(BundleError, match="damaged"):
        read_records(p, last=False)  # not the newest segment: damage, never dropped
    wal = WriteAheadLog(tmp_path)
    assert list(wal.open(1)) == good
    assert p.stat().st_size == length  # cut at the last intact record
    wal.append({"op": "delete", "next_id": 1, "posting_id": "c"})
    wal.close()
    assert [r["posting_id"] for r in read_records(p, last=True)[0]] == ["a", "a", "c"]


def test_segments_before_the_snapshot_are_removed_and_newer_ones_replayed(
    tmp_path: Path,
) -> None:
    for seq in (1, 2, 3):
        _write(tmp_path / f"wal-{seq:06d}.log", [{"op": "delete", "n": seq}])
    wal = WriteAheadLog(tmp_path)
    assert [r["n"] for r in wal.open(2)] == [2, 3]
    assert [s for s, _ in segments(tmp_path)] == [2, 3]
    assert wal.state.records == 2 and wal.state.segment == 3
    assert wal.rotate() == 4 and wal.state.records == 0
    wal.drop_before(4)
    assert [s for s, _ in segments(tmp_path)] == [4]


def _feats(titles: list[str], dim: int = 4, seed: int = 0) -> QueryFeatures:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(titles), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hexes = ["ff00ff00ff00ff00" if i % 2 else "" for i in range(len(titles))]
    valid = np.array([i % 3 != 0 for i in range(len(titles))])
    return QueryFeatures.build(titles, hexes, text=x, image=x[:, ::-1].copy(), image_valid=valid)


def test_replaying_the_records_gives_the_same_catalogue() -> None:
    dims = {"text": 4, "image": 4}
    live = LiveCatalogue(dims=dims, device="cpu")
    replay = LiveCatalogue(dims=dims, device="cpu")
    records = []
    steps = [
        (["a", "b", "c"], _feats(["red shoe", "blue shoe", ""], seed=1)),
        (["b", "d"], _feats(["blue shoe 2", "green bag"], seed=2)),  # b replaced
    ]
    for ids, f in steps:
        records.append(upsert_record(live, ids, [f"{i}.jpg" for i in ids], f))
        live.upsert(ids, [f"{i}.jpg" for i in ids], f)
    records.append(delete_record(live, "a"))
    live.remove("a")
    for r in records:  # through the bytes, as on disk
        apply_record(replay, json.loads(encode_record(r)[12:]))
    assert replay.posting_id == live.posting_id == ["c", "b", "d"]
    assert replay.title == live.title and replay.image_phash == live.image_phash
    assert replay.image == live.image
    assert replay.ids.tolist() == live.ids.tolist() and replay.next_id == live.next_id
    q = _feats(["blue shoe", "bag"], seed=3)
    for m in dims:
        assert len(replay.stores[m]) == len(live.stores[m])
        x = q.dense()[m][0]
        Da, Ia = live.stores[m].search(x, 3)
        Db, Ib = replay.stores[m].search(x, 3)
        assert np.array_equal(Ia, Ib) and np.allclose(Da, Db)
    with pytest.raises(BundleError, match="does not follow"):
        apply_record(replay, records[0])  # written on another state


# -- the service on the log --------------------------------------------------------------


@pytest.fixture
def svc(tmp_path: Path, strict_model: Path) -> Iterator[Client]:
    yield from clients(tmp_path, strict_model, wal_max_records=4)


def _post(c: Any, synth: Path, rows: list[dict[str, str]]) -> None:
    r = c.post("/listings", json={"listings": [listing_json(x, synth) for x in rows]})
    assert r.status_code == 200, r.text


def test_writes_are_logged_not_snapshotted_and_survive_a_restart(
    svc: Client, synth: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    rows = rows_of(synth)
    c = svc()
    base = current_snapshot(data)  # the first start wrote the empty base snapshot
    assert base is not None
    for x in rows[:3]:
        _post(c, synth, [x])  # 3 records: under the limit of 4
    assert current_snapshot(data) == base  # no snapshot per write
    assert c.delete("/listings/nope").status_code == 404  # refused, not logged
    log = c.get("/readyz").json()["detail"]["log"]
    assert log["records"] == 3 and log["last_compaction"] is None
    assert c.delete(f"/listings/{rows[0]['posting_id']}").status_code == 200
    c2 = svc()  # a second process on the same data folder: snapshot + log replay
    got = c2.get("/readyz").json()["detail"]
    assert got["listings"] == 2
    assert c2.get(f"/listings/{rows[1]['posting_id']}").status_code == 200
    assert c2.get(f"/listings/{rows[0]['posting_id']}").status_code == 404


def test_compaction_writes_a_snapshot_and_drops_the_old_log(
    svc: Client, synth: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    rows = rows_of(synth)
    c = svc()
    for x in rows[:5]:  # the 4th record starts a compaction
        _post(c, synth, [x])
    engine = c.app.state.engine  # type: ignore[attr-defined]
    engine.compaction.join(30)
    log = c.get("/readyz").json()["detail"]["log"]
    assert log["last_compaction"]["listings"] == 4
    assert log["records"] == 1  # the 5th write came after the snapshot
    assert snapshot_wal_next(data) == log["segment"]
    assert [s for s, _ in segments(data)] == [log["segment"]]
    assert len([p for p in data.iterdir() if p.name.startswith("snap-")]) == 1
    metrics = c.get("/metrics").text
    assert "pricematch_compactions_total 1.0" in metrics
    assert "pricematch_wal_records 1.0" in metrics
    snap = load_snapshot(data, engine.meta, device="cpu")
    assert snap is not None and len(snap) == 4
    c2 = svc()
    assert c2.get("/readyz").json()["detail"]["listings"] == 5


def test_a_crash_in_the_middle_of_a_compaction_loses_nothing(
    svc: Client, synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.engine as eng

    data = tmp_path / "data"
    rows = rows_of(synth)
    c = svc()

    def crash(root: Path, live: LiveCatalogue, meta: dict, wal_next: int = 0) -> Path:
        # what a kill leaves: a half-written snapshot folder, CURRENT untouched
        (Path(root) / ".snap-999999.tmp").mkdir()
        (Path(root) / ".snap-999999.tmp" / "listings.csv").write_text("posting_id,ti")
        raise OSError("killed")

    monkeypatch.setattr(eng, "save_snapshot", crash)
    for x in rows[:6]:
        _post(c, synth, [x])
    c.app.state.engine.compaction.join(30)  # type: ignore[attr-defined]
    assert c.get("/readyz").json()["detail"]["log"]["last_compaction"] is None
    assert len(segments(data)) == 2  # the rotated-away segment is kept
    monkeypatch.undo()
    c2 = svc()
    assert c2.get("/readyz").json()["detail"]["listings"] == 6
    for x in rows[:6]:
        assert c2.get(f"/listings/{x['posting_id']}").status_code == 200


def test_without_the_log_every_write_is_a_snapshot_and_a_left_log_is_folded(
    tmp_path: Path, strict_model: Path, synth: Path
) -> None:
    rows = rows_of(synth)
    data = tmp_path / "data"
    gen = clients(tmp_path, strict_model)
    make = next(gen)
    c = make()  # with the log
    _post(c, synth, rows[:2])
    assert segments(data)
    c2 = make(wal=False)  # the log's writes are folded into a snapshot, the log removed
    assert not segments(data)
    assert c2.get("/readyz").json()["detail"]["listings"] == 2
    assert c2.get("/readyz").json()["detail"]["log"] is None
    before = current_snapshot(data)
    _post(c2, synth, rows[2:3])
    assert current_snapshot(data) != before  # a snapshot per write
    assert make().get("/readyz").json()["detail"]["listings"] == 3
    gen.close()
