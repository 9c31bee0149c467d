"""Milvus: `MilvusStore` (a `VectorStore` on a Milvus collection) and `MilvusVectors`, a
`LiveCatalogue`'s text/image vectors kept in Milvus in step with its snapshots (issue 6).

One Milvus collection per store: an INT64 primary key `id` and a FLOAT_VECTOR `vec`,
indexed FLAT with metric IP, so a search is exact and its scores are the inner products
FAISS's `IndexFlatIP` gives (cosine, since every vector here is L2-normalised).

Searching is top-k only (`limit=k`, 51 for matching) and thresholds are applied by the
caller, as for FAISS (`index.matching.fusion.threshold`): Milvus's range search treats its radius
as exclusive, so it would drop a neighbour whose score equals the threshold, and GPU
indexes do not support it.

`uri` is a local file path ending in `.db` (milvus-lite: an in-process server on
127.0.0.1, for development and tests) or a cluster's address (`http://host:19530`, with
`token` for authentication). pymilvus (and milvus-lite for local files) come with the
`[scale]` extra; this module is imported only when a Milvus store is asked for.

## Catalogue vectors in Milvus

The snapshot (`index.store.snapshots.save_snapshot`) stays the source of truth. For a
modality `m` in Milvus it holds `{m}.milvus.json` (the collection's uri, name, dim and
count) and `{m}.milvus-ids.npy` (the ids it holds) instead of the vectors. A change goes
to Milvus only once it is durable elsewhere, so a crash can always re-apply it by id
(delete, upsert: doing it twice is doing it once):

- **On the write-ahead log** (`PRICEMATCH_WAL`, the default; `index.store.wal`): the
  engine appends the write's record (its vectors included) and fsyncs it, then
  `LiveCatalogue.upsert`/`remove` record the change in the `JournaledStore` (pending) and
  `MilvusVectors.apply` sends it at once, without a flush. Milvus may then be ahead of
  the snapshot, never of the log: a start replays the log's records after the snapshot
  onto it (their changes pending again) and applies them, and only then compares each
  collection's size with the ids the catalogue says it holds. A compaction's snapshot
  flushes the collections first (it lets go of the log segments before it) and saves
  any change still pending (Milvus failed) as its journal.
- **Without the log**: each write records the change as pending, `save_snapshot` writes
  it with the snapshot (`{m}.pending.npz`) and commits it (`CURRENT`, one atomic rename),
  then `MilvusVectors.apply` sends it, flushes, and deletes the journal file. A crash
  before the commit leaves the old snapshot and an untouched Milvus; after it, a journal
  that the next start applies again.

Either way a change Milvus refused (an outage) stays pending, answered 503 by searches
until the next search, write or start applies it (`StoreError`). A catalogue whose stores
are FAISS ones (a bundle's on a first start, a new empty one, or a snapshot saved with
FAISS) moves into empty collections the same way: its vectors become pending upserts,
saved with a new snapshot, then applied; so a restart never duplicates or loses vectors.
On start each collection's size must be the catalogue's count, which catches a
collection changed behind the service's back.

pymilvus (and milvus-lite for a local `.db` file) come with the `[scale]` extra.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from index.errors import BundleError, StoreError
from index.search.knn import as_f32, pad_results
from index.search.stores import VectorStore
from index.store.atomic import fsync_dir
from index.store.live import LiveCatalogue
from index.store.snapshots import open_faiss, save_snapshot
from index.store.wal import WriteAheadLog

#: Rows per insert/upsert/get call, and queries per search call (well under the gRPC
#: message limit at 1280 float32 dimensions).
BATCH = 1024

log = logging.getLogger("pricematch.milvus")


class MilvusStore:
    """Exact inner-product store in a Milvus collection (FLAT index, metric IP).

    Args:
        dim: vector size.
        uri: a `.db` file path (milvus-lite) or a Milvus server address.
        collection: the collection's name; created if absent, reused (dimension checked)
            if present, so a store reopened on the same uri and name sees its vectors.
        token: credentials for a server ("user:password" or an API key); "" for none.
        client: an already connected `pymilvus.MilvusClient` (uri and token are then only
            recorded, for `save`).
    """

    def __init__(
        self,
        dim: int,
        uri: str | Path,
        collection: str = "vectors",
        token: str = "",
        client: Any = None,
    ) -> None:
        from pymilvus import DataType, MilvusClient

        if "://" not in str(uri) and not str(uri).endswith(".db"):
            raise ValueError(f"Milvus uri {uri!r}: a milvus-lite file must end in .db")
        self.dim = int(dim)
        self.uri = str(Path(uri).resolve()) if _is_local(uri) else str(uri)
        if _is_local(uri):
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        self.collection = collection
        self._token = token
        self.client = client if client is not None else MilvusClient(uri=self.uri, token=token)
        c = self.client
        if c.has_collection(collection):
            info = c.describe_collection(collection)
            dims = [
                int(f.get("params", {}).get("dim", -1))
                for f in info["fields"]
                if f["name"] == "vec"
            ]
            if dims != [self.dim]:
                raise ValueError(
                    f"Milvus collection {collection!r} at {self.uri} holds vectors of "
                    f"dimension {dims}, not {self.dim}"
                )
        else:
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vec", DataType.FLOAT_VECTOR, dim=self.dim)
            index = c.prepare_index_params()
            index.add_index("vec", index_type="FLAT", metric_type="IP")
            # Strong consistency: an upsert or delete is seen by the very next search.
            c.create_collection(
                collection, schema=schema, index_params=index, consistency_level="Strong"
            )
        try:
            c.load_collection(collection)
        except Exception as e:  # pymilvus raises MilvusException
            if not _is_local(self.uri) or not drop_index_cache(self.uri, collection):
                raise
            log.warning(
                "Milvus collection %r at %s did not load (%s): its index files were "
                "rebuilt from its segments",
                collection,
                self.uri,
                _message(e),
            )
            c.load_collection(collection)

    # -- the VectorStore protocol --------------------------------------------------------

    def __len__(self) -> int:
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Add or replace (upsert) vectors `x` (n, dim) under int64 `ids` (n,)."""
        x = as_f32(x)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        assert x.shape == (ids.shape[0], self.dim), (x.shape, ids.shape, self.dim)
        assert np.unique(ids).size == ids.size, "ids of one add must be distinct"
        for s in range(0, ids.size, BATCH):
            rows = [
                {"id": int(i), "vec": v}
                for i, v in zip(ids[s : s + BATCH].tolist(), x[s : s + BATCH], strict=True)
            ]
            self.client.upsert(self.collection, rows)

    def remove(self, ids: np.ndarray) -> int:
        """Remove `ids`; returns how many were present."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        present = ids[self.contains(ids)]
        for s in range(0, present.size, BATCH):
            self.client.delete(self.collection, ids=present[s : s + BATCH].tolist())
        return int(present.size)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest by inner product: D (nq, k) descending, I (nq, k) ids, -1 padded."""
        xq = as_f32(xq)
        assert xq.shape[1] == self.dim, (xq.shape, self.dim)
        nq = xq.shape[0]
        D = np.full((nq, k), -np.inf, np.float32)
        I = np.full((nq, k), -1, np.int64)
        for s in range(0, nq, BATCH):
            hits = self.client.search(
                self.collection,
                data=[v for v in xq[s : s + BATCH]],
                limit=k,
                anns_field="vec",
                search_params={"metric_type": "IP"},
                output_fields=["id"],
            )
            for j, row in enumerate(hits):
                n = min(len(row), k)
                if n:
                    D[s + j, :n] = [h["distance"] for h in row[:n]]
                    I[s + j, :n] = [h["id"] for h in row[:n]]
        o = np.argsort(-D, axis=1, kind="stable")  # descending, whatever the server's order
        return pad_results(np.take_along_axis(D, o, axis=1), np.take_along_axis(I, o, axis=1), k)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which of `ids` are stored."""
        ids = np.asarray(ids, dtype=np.int64)
        found: set[int] = set()
        uniq = np.unique(ids)
        for s in range(0, uniq.size, BATCH):
            rows = self.client.get(self.collection, ids=uniq[s : s + BATCH].tolist())
            found.update(int(r["id"]) for r in rows)
        return np.array([int(i) in found for i in ids.tolist()], bool)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `ids`, shape (n, dim). Raises KeyError for an unknown id."""
        ids = np.asarray(ids, dtype=np.int64)
        got: dict[int, np.ndarray] = {}
        uniq = np.unique(ids)
        for s in range(0, uniq.size, BATCH):
            rows = self.client.get(
                self.collection, ids=uniq[s : s + BATCH].tolist(), output_fields=["vec"]
            )
            got.update({int(r["id"]): np.asarray(r["vec"], np.float32) for r in rows})
        missing = [int(i) for i in ids.tolist() if int(i) not in got]
        if missing:
            raise KeyError(f"ids not in the store: {missing[:5]}")
        if not ids.size:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([got[int(i)] for i in ids.tolist()])

    def flush(self) -> None:
        """Make every change so far durable in Milvus."""
        self.client.flush(self.collection)

    def save(self, path: Path) -> None:
        """Make every change durable (flush) and write a pointer to the collection at `path`.

        The vectors stay in Milvus; `MilvusStore.load(path)` reconnects to them.
        """
        self.client.flush(self.collection)
        ref = {"store": "milvus", "uri": self.uri, "collection": self.collection, "dim": self.dim}
        Path(path).write_text(json.dumps(ref, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path, token: str = "") -> MilvusStore:
        """Reconnect to the collection a `save` pointed at."""
        ref = json.loads(Path(path).read_text(encoding="utf-8"))
        if ref.get("store") != "milvus":
            raise ValueError(f"{path} is not a Milvus store reference")
        return cls(int(ref["dim"]), ref["uri"], collection=ref["collection"], token=token)

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        self.client.drop_collection(self.collection)

    def close(self) -> None:
        self.client.close()


def _is_local(uri: str | Path) -> bool:
    """A milvus-lite file (a path ending in .db) rather than a server address."""
    s = str(uri)
    return "://" not in s and s.endswith(".db")


def drop_index_cache(uri: str | Path, collection: str) -> bool:
    """Delete a milvus-lite collection's index files; True if there were any.

    milvus-lite writes a segment's index (`partitions/*/indexes/*.idx`, a cache it builds
    from the segment when absent) in place, not by an atomic rename, so a `kill -9` in the
    middle of that write leaves a truncated file that fails every later load. The
    segments and the manifest are written crash-safely; the indexes can always go.
    """
    root = Path(uri) / "collections" / collection / "partitions"
    files = sorted(root.glob("*/indexes/*.idx")) if root.is_dir() else []
    for f in files:
        f.unlink()
    return bool(files)


SUFFIX = ".milvus.json"  #: the store reference in a snapshot: `{m}.milvus.json`
JOURNAL = ".pending.npz"  #: the changes not yet applied: `{m}.pending.npz`
IDS = ".milvus-ids.npy"  #: the ids the collection holds: `{m}.milvus-ids.npy`
T = TypeVar("T")


class JournaledStore:
    """A `VectorStore` on a Milvus collection whose changes wait until they are durable.

    `add`/`remove` only record pending changes; `contains`, `vectors` and `len` see them;
    `search` applies them first. A change may go to Milvus only once it is durable: saved
    in a committed snapshot (`save`, then `saved(journal)`), or, with `logged`, already in
    the write-ahead log (`index.store.wal`), which the caller appends before the change.

    The ids the collection holds once the pending changes are applied are kept here
    (`ids`, saved with the snapshot), so counting and `contains` never ask Milvus, which
    may be ahead of the snapshot on the log; None for a snapshot saved before they were
    (`attach` reads them from Milvus once).

    Args:
        store: the collection.
        count: how many vectors the collection holds once the pending changes are applied.
        ids: those vectors' ids (None: unknown, ask Milvus).
        logged: changes are durable in a write-ahead log before they are recorded here;
            they are applied without a flush per change (`flush` makes them durable in
            Milvus, before a snapshot lets the log go).
    """

    file_suffix = SUFFIX

    def __init__(
        self,
        store: MilvusStore,
        count: int,
        ids: set[int] | None = None,
        logged: bool = False,
    ) -> None:
        self.store = store
        self.dim = store.dim
        self.ids = ids
        self._count = count if ids is None else len(ids)
        self.logged = logged
        self.upserts: dict[int, np.ndarray] = {}
        self.deletes: set[int] = set()
        self.journal: Path | None = None  # the saved file that holds every pending change

    @property
    def count(self) -> int:
        return self._count if self.ids is None else len(self.ids)

    @property
    def pending(self) -> int:
        """Number of ids with a change not applied to Milvus yet."""
        return len(self.upserts) + len(self.deletes)

    def __len__(self) -> int:
        return self.count

    def clone(self) -> JournaledStore:
        """A copy of the ids and pending changes on the same collection (a snapshot's view
        of this store while it keeps changing: `LiveCatalogue.copy`)."""
        out = JournaledStore(
            self.store,
            self._count,
            None if self.ids is None else set(self.ids),
            self.logged,
        )
        out.upserts, out.deletes = dict(self.upserts), set(self.deletes)
        return out

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Record an upsert of vectors `x` (n, dim) under distinct int64 `ids` (n,)."""
        x = as_f32(x)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        assert x.shape == (ids.size, self.dim), (x.shape, ids.shape, self.dim)
        assert np.unique(ids).size == ids.size, "ids of one add must be distinct"
        if self.ids is None:
            self._count += int((~self.contains(ids)).sum())
        else:
            self.ids.update(ids.tolist())
        for i, v in zip(ids.tolist(), x, strict=True):
            self.upserts[i] = v.copy()
            self.deletes.discard(i)
        self.journal = None

    def remove(self, ids: np.ndarray) -> int:
        """Record the deletion of `ids`; returns how many were present."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        present = ids[self.contains(ids)].tolist()
        for i in present:
            self.upserts.pop(i, None)
            self.deletes.add(i)
        if self.ids is None:
            self._count -= len(present)
        else:
            self.ids.difference_update(present)
        if present:
            self.journal = None
        return len(present)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which of `ids` are stored once the pending changes are applied."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.ids is not None:
            known = self.ids
            return np.fromiter((i in known for i in ids.tolist()), bool, ids.size)
        out = self.store.contains(ids)
        for j, i in enumerate(ids.tolist()):
            if i in self.upserts or i in self.deletes:
                out[j] = i in self.upserts
        return out

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of `ids` (n, dim), pending upserts included. Raises KeyError if unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        gone = [i for i in ids.tolist() if i in self.deletes]
        if gone:
            raise KeyError(f"ids not in the store: {gone[:5]}")
        out = np.zeros((ids.size, self.dim), np.float32)
        stored = [j for j, i in enumerate(ids.tolist()) if i not in self.upserts]
        for j, i in enumerate(ids.tolist()):
            if i in self.upserts:
                out[j] = self.upserts[i]
        if stored:
            out[stored] = self.store.vectors(ids[stored])
        return out

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Apply any durable pending changes, then search the collection (top-k, by IP)."""
        self.apply()
        return _milvus_call(self.store, "search", lambda: self.store.search(xq, k))

    def save(self, path: Path) -> None:
        """Write the reference at `path` (`{m}.milvus.json`), the ids beside it
        (`{m}.milvus-ids.npy`) and the pending changes (`{m}.pending.npz`); those are
        applied once the snapshot is committed. On the log, the changes already applied
        are flushed first: the snapshot lets go of the log that holds them."""
        if self.logged:
            _milvus_call(self.store, "flush", self.store.flush)
        ref = {
            "store": "milvus",
            "uri": self.store.uri,
            "collection": self.store.collection,
            "dim": self.dim,
            "count": self.count,
        }
        Path(path).write_text(json.dumps(ref, indent=2), encoding="utf-8")
        if self.ids is not None:
            with open(ids_of(Path(path)), "wb") as f:
                np.save(f, np.fromiter(sorted(self.ids), np.int64, len(self.ids)))
        if self.pending:
            up = np.fromiter(self.upserts, np.int64, len(self.upserts))
            vec = [self.upserts[i] for i in up.tolist()]
            with open(journal_of(Path(path)), "wb") as f:
                np.savez(
                    f,
                    upsert_ids=up,
                    upsert_vectors=np.stack(vec) if vec else np.zeros((0, self.dim), np.float32),
                    delete_ids=np.fromiter(sorted(self.deletes), np.int64, len(self.deletes)),
                )

    def load_journal(self, journal: Path) -> None:
        """Take the pending changes saved in `journal` (a snapshot's `{m}.pending.npz`)."""
        with np.load(journal) as z:
            ids, vecs = z["upsert_ids"].tolist(), z["upsert_vectors"]
            self.upserts = {i: vecs[j] for j, i in enumerate(ids)}
            self.deletes = set(z["delete_ids"].tolist())
        self.journal = journal

    def saved(self, journal: Path) -> None:
        """Note that every pending change is in `journal`, part of a committed snapshot."""
        self.journal = journal

    def apply(self) -> None:
        """Send the pending changes to Milvus (by id: applying twice is applying once),
        and when they came from a journal, flush and delete it (applied). Logged changes
        are not flushed one by one: the log holds them until a snapshot is saved.

        Raises:
            StoreError: there are pending changes that neither a snapshot nor the log
                holds, or Milvus failed (the changes stay pending, for the next try).
        """
        if self.pending:
            if self.journal is None and not self.logged:
                raise StoreError(
                    f"{self.pending} vector changes of collection {self.store.collection!r} "
                    "are not saved in a snapshot; Milvus is changed only after that"
                )

            def send() -> None:
                if self.deletes:
                    self.store.remove(np.fromiter(self.deletes, np.int64, len(self.deletes)))
                if self.upserts:
                    ids = np.fromiter(self.upserts, np.int64, len(self.upserts))
                    self.store.add(ids, np.stack([self.upserts[i] for i in ids.tolist()]))
                if self.journal is not None:  # it is deleted next: Milvus must hold them
                    self.store.flush()

            _milvus_call(self.store, "write", send)
            self.upserts, self.deletes = {}, set()
        if self.journal is not None and self.journal.exists():
            self.journal.unlink()
            fsync_dir(self.journal.parent)
        self.journal = None


def _milvus_call(store: MilvusStore, what: str, fn: Callable[[], T]) -> T:
    """`fn()`, a Milvus failure raised as a StoreError (503) naming the collection."""
    try:
        return fn()
    except StoreError:
        raise
    except Exception as e:  # pymilvus raises MilvusException, gRPC and milvus-lite others
        raise StoreError(
            f"Milvus {what} on collection {store.collection!r} failed: {_message(e)}"
        ) from e


def journal_of(ref: Path) -> Path:
    """`{m}.pending.npz` beside the reference `{m}.milvus.json`."""
    return ref.with_name(ref.name.removesuffix(SUFFIX) + JOURNAL)


def ids_of(ref: Path) -> Path:
    """`{m}.milvus-ids.npy` beside the reference `{m}.milvus.json`."""
    return ref.with_name(ref.name.removesuffix(SUFFIX) + IDS)


class MilvusVectors:
    """One Milvus connection for a catalogue's dense vectors: collection `{prefix}_{m}`
    per modality `m` ("text", "image").

    Args:
        uri: a milvus-lite `.db` path or a server address (`http://host:19530`).
        token: credentials for a server ("user:password" or an API key); "" for none.
        prefix: collection name prefix.
        logged: the catalogue's writes go through a write-ahead log first
            (`JournaledStore.logged`); False: each write saves a snapshot first.

    Raises:
        StoreError: pymilvus (or milvus-lite, for a `.db` file) is not installed, the uri
            is malformed, or Milvus cannot be reached.
    """

    def __init__(
        self,
        uri: str | Path,
        token: str = "",
        prefix: str = "pricematch",
        logged: bool = False,
    ) -> None:
        try:
            from pymilvus import MilvusClient
        except ImportError as e:
            raise StoreError(
                "the Milvus vector store needs pymilvus: pip install -e '.[scale]'"
            ) from e
        s = str(uri)
        if "://" not in s:
            if not s.endswith(".db"):
                raise StoreError(
                    f"Milvus uri {s!r}: a local milvus-lite file must end in .db; "
                    "a server is http://host:19530"
                )
            try:
                import milvus_lite  # noqa: F401
            except ImportError as e:
                raise StoreError(
                    f"Milvus uri {s!r} is a local file, which needs milvus-lite: "
                    "pip install -e '.[scale]'"
                ) from e
            Path(s).resolve().parent.mkdir(parents=True, exist_ok=True)
            s = str(Path(s).resolve())
        self.uri, self.prefix, self.logged = s, prefix, logged
        try:
            self.client: Any = MilvusClient(uri=s, token=token)
        except Exception as e:  # pymilvus raises MilvusException, milvus-lite others
            raise StoreError(f"cannot connect to Milvus at {s}: {_message(e)}") from e

    def collection(self, m: str) -> str:
        return f"{self.prefix}_{m}"

    def _store(self, m: str, dim: int) -> MilvusStore:
        return MilvusStore(dim, self.uri, collection=self.collection(m), client=self.client)

    def open(self, m: str, snap: Path, dim: int) -> VectorStore:
        """The store of modality `m` in snapshot `snap` (the `load_snapshot` hook): its
        collection with the snapshot's ids and pending changes, or its FAISS store (moved
        into Milvus by `attach`)."""
        ref_path = snap / f"{m}{SUFFIX}"
        if not ref_path.is_file():
            return open_faiss(m, snap, dim, device="cpu")
        ref = json.loads(ref_path.read_text(encoding="utf-8"))
        if ref["collection"] != self.collection(m):
            raise StoreError(
                f"the catalogue in {snap.parent} keeps its {m} vectors in Milvus collection "
                f"{ref['collection']!r}, not {self.collection(m)!r}: set "
                "PRICEMATCH_MILVUS_COLLECTION to its prefix"
            )
        if ref["uri"] != self.uri:
            log.warning("catalogue saved with Milvus at %s, now at %s", ref["uri"], self.uri)
        ids: set[int] | None = None
        if ids_of(ref_path).is_file():
            ids = set(np.load(ids_of(ref_path)).tolist())
            if len(ids) != int(ref["count"]):
                raise BundleError(f"{ids_of(ref_path)}: {len(ids)} ids, count {ref['count']}")
        store = JournaledStore(self._store(m, dim), int(ref["count"]), ids, self.logged)
        journal = journal_of(ref_path)
        if journal.is_file():
            store.load_journal(journal)  # applied by `attach`
        return store

    def attach(
        self,
        live: LiveCatalogue,
        root: str | Path,
        meta: dict[str, Any],
        wal: WriteAheadLog | None = None,
    ) -> None:
        """Bring Milvus in step with `live` on start (`live` from `load_snapshot(open_store=
        self.open)` with the log replayed onto it, or a bundle's or a new catalogue when
        there is no snapshot yet).

        FAISS stores move into their collections, which must be empty: their vectors
        become pending upserts, saved with a new snapshot under `root` (the log, if any,
        rotated: the snapshot holds what it held), then applied. A snapshot saved before
        stores kept their ids gets them from Milvus, and a new snapshot. Pending changes
        (the snapshot's journal, the log's records replayed) are applied again, by id.
        Then every collection must hold the number of vectors the catalogue says.

        Raises:
            StoreError: a collection to move into is not empty, or a collection's size is
                not the catalogue's count.
        """
        resave = False
        for m, store in list(live.stores.items()):
            if isinstance(store, JournaledStore):
                if store.ids is None:  # saved before the ids were: Milvus + the journal
                    ids = set(live.ids[store.contains(live.ids)].tolist())
                    if len(ids) != store.count:
                        raise StoreError(
                            f"Milvus collection {store.store.collection!r} at {self.uri} "
                            f"holds {len(ids)} of the catalogue's vectors, the catalogue in "
                            f"{root} expects {store.count}: it was changed outside this "
                            "service, or PRICEMATCH_MILVUS_URI points at another Milvus"
                        )
                    store.ids = ids
                    resave = True
                continue
            target = JournaledStore(self._store(m, store.dim), 0, set(), self.logged)
            if len(target.store):
                raise StoreError(
                    f"Milvus collection {target.store.collection!r} at {self.uri} holds "
                    f"{len(target.store)} vectors that the catalogue in {root} does not "
                    "know of (it has no snapshot, or one saved with FAISS stores): drop "
                    "the collection or set PRICEMATCH_MILVUS_COLLECTION to another prefix"
                )
            ids = live.ids[store.contains(live.ids)]
            if ids.size:
                target.add(ids, store.vectors(ids))
            live.stores[m] = target
            resave = True
        snap = None
        if resave:
            if wal is None:
                snap = save_snapshot(root, live, meta)
            else:
                seq = wal.rotate()
                snap = save_snapshot(root, live, meta, wal_next=seq)
                wal.drop_before(seq)
        self.apply(live, snap)
        for store in _journaled(live):
            n = len(store.store)
            if n != store.count:
                raise StoreError(
                    f"Milvus collection {store.store.collection!r} at {self.uri} holds {n} "
                    f"vectors, the catalogue in {root} expects {store.count}: it was "
                    "changed outside this service, or PRICEMATCH_MILVUS_URI points at "
                    "another Milvus"
                )
        if live.stores:
            log.info(
                "vectors in Milvus at %s: %s",
                self.uri,
                ", ".join(f"{s.store.collection} ({len(s)})" for s in _journaled(live)),
            )

    def apply(self, live: LiveCatalogue, snap: Path | None = None) -> None:
        """Apply `live`'s pending vector changes to Milvus.

        Args:
            snap: the snapshot just saved with them (`save_snapshot`); None: the changes are
                already known to be durable (loaded from the current snapshot, or logged).

        Raises:
            StoreError: Milvus failed; the changes stay pending (the next search, write or
                start applies them).
        """
        journaled = {m: s for m, s in live.stores.items() if isinstance(s, JournaledStore)}
        if snap is not None:  # all of them first: one failing leaves the others retryable
            for m, store in journaled.items():
                store.saved(snap / f"{m}{JOURNAL}")
        for store in journaled.values():
            store.apply()

    def close(self) -> None:
        self.client.close()


def _journaled(live: LiveCatalogue) -> list[JournaledStore]:
    return [s for s in live.stores.values() if isinstance(s, JournaledStore)]


def _message(e: Exception) -> str:
    return str(getattr(e, "message", "") or e)
