"""`MilvusStore`: the `VectorStore` of `index.search` on Milvus (issue 6, scale-out).

One Milvus collection per store: an INT64 primary key `id` and a FLOAT_VECTOR `vec`,
indexed FLAT with metric IP, so a search is exact and its scores are the inner products
FAISS's `IndexFlatIP` gives (cosine, since every vector here is L2-normalised).

Searching is top-k only (`limit=k`, 51 for matching) and thresholds are applied by the
caller, as for FAISS (`index.fusion.threshold`): Milvus's range search treats its radius
as exclusive, so it would drop a neighbour whose score equals the threshold, and GPU
indexes do not support it.

`uri` is a local file path ending in `.db` (milvus-lite: an in-process server on
127.0.0.1, for development and tests) or a cluster's address (`http://host:19530`, with
`token` for authentication). pymilvus (and milvus-lite for local files) come with the
`[scale]` extra; this module is imported only when a Milvus store is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from index.search import as_f32, pad_results

#: Rows per insert/upsert/get call, and queries per search call (well under the gRPC
#: message limit at 1280 float32 dimensions).
BATCH = 1024


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
