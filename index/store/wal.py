"""The write-ahead log of the live catalogue: one record per write, fsynced before the
write is answered; snapshots (`index.store.snapshots`) are written in the background from
time to time (compaction) and the log then restarts after them.

The one owner of the log's files. Under the data folder, segments `wal-NNNNNN.log`, each a
sequence of records::

    b"PMW1" | length: uint32 LE | crc32 of the payload: uint32 LE | payload (length bytes)

The payload is UTF-8 JSON: `{"op": "upsert", "next_id": N, "posting_id": [...], "title":
[...], "image": [...], "image_phash": [...], "vectors": {"text": {"rows": [...], "b64":
"..."}}}` (the vectors of the listed rows, float32 little-endian, base64) or `{"op":
"delete", "next_id": N, "posting_id": "..."}`; `next_id` is the catalogue's before the write
(replay checks it, so a record is never applied to a state it was not written on).

A write appends one record (a batch of listings is one record). A crash can leave only the
last record of the last segment incomplete: on open, such a torn tail (short, or its crc
wrong) is cut off and the write it held was never answered. A bad record anywhere else is
damage, not a crash, and raises `BundleError`. A snapshot names the first segment it does
not contain (`wal_next` in its meta.json): start = that snapshot + the records of segments
from `wal_next` on.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import BundleError
from index.features.embed import QueryFeatures
from index.features.images import phash_hex
from index.store.atomic import fsync_dir
from index.store.live import LiveCatalogue

log = logging.getLogger(__name__)

MAGIC = b"PMW1"
_HEAD = struct.Struct("<4sII")  # magic, payload length, crc32
_SEGMENT = re.compile(r"^wal-(\d{6,})\.log$")
#: A record larger than this is damage (a batch of listings is far smaller).
MAX_RECORD = 1 << 30


def segment_name(seq: int) -> str:
    return f"wal-{seq:06d}.log"


def segments(root: Path) -> list[tuple[int, Path]]:
    """The log segments under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(g.group(1)), p) for p in root.iterdir() if (g := _SEGMENT.match(p.name))]
    return sorted(found)


def encode_record(payload: dict[str, Any]) -> bytes:
    """One record's bytes (header + JSON payload)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body


def read_records(path: Path, last: bool) -> tuple[list[dict[str, Any]], int]:
    """The intact records of one segment and the byte length they take.

    Args:
        last: this is the newest segment: a bad tail is a torn write (dropped; the caller
            cuts the file at the returned length); elsewhere it raises.

    Raises:
        BundleError: a bad record that is not the torn tail of the last segment.
    """
    data = path.read_bytes()
    out: list[dict[str, Any]] = []
    pos = 0
    while pos < len(data):
        bad = None
        if len(data) - pos < _HEAD.size:
            bad = "a cut-off record header"
        else:
            magic, n, crc = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + n
            if magic != MAGIC or n > MAX_RECORD:
                bad = "no record header"
            elif end > len(data):
                bad = "a cut-off record"
            elif zlib.crc32(data[pos + _HEAD.size : end]) != crc:
                bad = "a record whose checksum fails"
        if bad is not None:
            if not last:
                raise BundleError(f"{path}: {bad} at byte {pos} (the log is damaged)")
            # A torn tail can only be the last write, never answered; anything after a bad
            # record in the newest segment could not have been written after it.
            log.warning("%s: %s at byte %d: dropped (a write cut short)", path, bad, pos)
            return out, pos
        out.append(json.loads(data[pos + _HEAD.size : end].decode("utf-8")))
        pos = end
    return out, pos


def _vectors_payload(feats: QueryFeatures) -> dict[str, Any]:
    out = {}
    for m, (x, valid) in feats.dense().items():
        rows = np.flatnonzero(valid)
        data = np.ascontiguousarray(x[rows], dtype="<f4").tobytes()
        out[m] = {"rows": rows.tolist(), "b64": base64.b64encode(data).decode("ascii")}
    return out


def upsert_record(
    live: LiveCatalogue, posting_ids: list[str], images: list[str], feats: QueryFeatures
) -> dict[str, Any]:
    """The record of `live.upsert(posting_ids, images, feats)`, made before applying it."""
    return {
        "op": "upsert",
        "next_id": live.next_id,
        "posting_id": list(posting_ids),
        "title": list(feats.title),
        "image": list(images),
        "image_phash": phash_hex(feats.phash, feats.phash_valid),
        "vectors": _vectors_payload(feats),
    }


def delete_record(live: LiveCatalogue, posting_id: str) -> dict[str, Any]:
    return {"op": "delete", "next_id": live.next_id, "posting_id": posting_id}


def apply_record(live: LiveCatalogue, rec: dict[str, Any]) -> None:
    """Apply one record to `live` as the write did. Raises BundleError if `live` is not in
    the state the record was written on."""
    if rec.get("next_id") != live.next_id:
        raise BundleError(
            f"log record written on a catalogue at id {rec.get('next_id')}, replayed on one at "
            f"{live.next_id}: the log does not follow this snapshot"
        )
    if rec["op"] == "delete":
        live.remove(rec["posting_id"])
        return
    if rec["op"] != "upsert":
        raise BundleError(f"unknown log record {rec['op']!r}")
    n = len(rec["posting_id"])
    dense: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for m, v in rec["vectors"].items():
        dim = live.dims[m]
        rows = np.asarray(v["rows"], np.int64)
        x = np.zeros((n, dim), np.float32)
        got = np.frombuffer(base64.b64decode(v["b64"]), dtype="<f4").reshape(len(rows), dim)
        x[rows] = got
        valid = np.zeros(n, bool)
        valid[rows] = True
        dense[m] = (x, valid)
    text = dense.get("text")
    image = dense.get("image")
    feats = QueryFeatures.build(
        rec["title"],
        rec["image_phash"],
        text=None if text is None else text[0],
        image=None if image is None else image[0],
        image_valid=None if image is None else image[1],
    )
    if text is not None:
        feats.text_valid = text[1]
    live.upsert(rec["posting_id"], rec["image"], feats)


@dataclass
class LogState:
    """What the metrics and /readyz show of the log."""

    records: int = 0  # records since the last snapshot
    bytes: int = 0
    segment: int = 1


class WriteAheadLog:
    """Appends records to the newest segment under `root`, each fsynced.

    Not thread-safe: the caller serialises writes (the engine's catalogue lock).
    """

    def __init__(self, root: str | Path, start: int = 1) -> None:
        self.root = Path(root)
        self.state = LogState(segment=start)
        self._f: Any = None

    def open(self, first: int) -> Iterator[dict[str, Any]]:
        """Open for appending after replay: yields the intact records of segments >= `first`
        (oldest first), cuts a torn tail, removes segments before `first` (a snapshot holds
        them) and appends to the newest segment from then on."""
        segs = segments(self.root)
        for seq, p in segs:
            if seq < first:
                p.unlink(missing_ok=True)
        segs = [(s, p) for s, p in segs if s >= first]
        for i, (_, p) in enumerate(segs):
            recs, good = read_records(p, last=i == len(segs) - 1)
            if good < p.stat().st_size:
                with open(p, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
            self.state.records += len(recs)
            self.state.bytes += good
            yield from recs
        self.state.segment = segs[-1][0] if segs else first
        self._open_segment()

    def _open_segment(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / segment_name(self.state.segment)
        new = not path.exists()
        self._f = open(path, "ab")  # noqa: SIM115 - kept open for appends
        if new:
            fsync_dir(self.root)

    def append(self, payload: dict[str, Any]) -> None:
        """Write one record and fsync it (the write is durable when this returns)."""
        assert self._f is not None, "open the log first"
        data = encode_record(payload)
        self._f.write(data)
        self._f.flush()
        os.fsync(self._f.fileno())
        self.state.records += 1
        self.state.bytes += len(data)

    def rotate(self) -> int:
        """Start a new segment; returns its number (a snapshot of the state now will name it
        as `wal_next`). The counters restart: they count what no snapshot holds yet."""
        self.close()
        self.state = LogState(segment=self.state.segment + 1)
        self._open_segment()
        return self.state.segment

    def drop_before(self, seq: int) -> None:
        """Remove the segments before `seq` (held by a committed snapshot)."""
        for s, p in segments(self.root):
            if s < seq:
                p.unlink(missing_ok=True)
        fsync_dir(self.root)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
