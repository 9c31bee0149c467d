"""`pricematch match --engine ray`: features and top-51 neighbours as a Ray Data pipeline.

The pipeline (Ray is imported lazily; install with `pip install -e ".[scale]"`):

1. the validated catalogue rows (`read_catalogue`) become a Ray dataset;
2. `map_batches` with encoder actors (`_EncodeActor`: the ONNX Runtime encoders of the model
   folder, loaded once per actor) adds text and image embeddings;
3. `map_batches` with CPU tasks adds each row's TF-IDF vector (the vectorizer is fitted once
   on the driver, over all titles, and shipped with `ray.put`) and phash code;
4. the catalogue's features are split into `shards` contiguous slices, each held by a
   long-lived `_ShardActor`; a `map_batches` k-NN join scatters every query batch to every
   shard, takes each shard's top-51 per signal and merges them into the global top-51
   (`merge_topk`: by score, equal scores by row number).

The driver then runs the rest of `index.matching.selfmatch.self_match` (this module is its neighbour
step): `apply_stages` (stages that need the whole pool, e.g. the combined embedding or INB,
run there on the gathered features) and `fuse_stages`. For an exact search the merged
top-51 holds the same rows and scores as the single-process search, up to the order of
equal scores.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from index.errors import CatalogueError
from index.features.images import fill_phash, phash_codes
from index.features.tfidf import TfidfConfig, TitleTfidf
from index.search.knn import (
    K,
    hamming_index,
    hamming_search,
    knn,
    no_neighbours,
    order_ties,
    sparse_knn,
    sparse_topk,
)

if TYPE_CHECKING:
    from index.data.listings import Catalogue
    from index.features.embed import Features
    from index.matching.fusion import Neighbours

# Imports are kept light (no sklearn, ONNX Runtime, encoders at module level): every Ray
# worker that runs a shard actor or a k-NN join imports this module.
log = logging.getLogger(__name__)

#: Rows per batch through the pipeline (encoders, TF-IDF, k-NN join).
BATCH_SIZE = 64
DENSE = ("text", "image")


def init_ray(address: str | None = None, num_cpus: int = 2) -> None:
    """Connect to a Ray cluster at `address`, or start a local one (no dashboard)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)


def _chunks(cat: Catalogue, size: int = BATCH_SIZE) -> list[dict[str, Any]]:
    """The catalogue as chunks of `size` rows in the order the single-process text encoder
    batches them (by title length, stably): each chunk is encoded as one batch, padded as
    there, so the embeddings are the same bit for bit."""
    order = np.argsort([len(t) for t in cat.title], kind="stable")
    out = []
    for s in range(0, len(order), size):
        rows = [int(i) for i in order[s : s + size]]
        out.append(
            {
                "row": rows,
                "title": [cat.title[i] for i in rows],
                "image_path": [cat.image[i] for i in rows]
                if cat.image is not None
                else [""] * len(rows),
                "phash": [cat.image_phash[i] for i in rows]
                if cat.image_phash is not None
                else [""] * len(rows),
            }
        )
    return out


def _explode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Chunks (lists of rows) -> one row each."""
    row = np.concatenate([np.asarray(list(c), np.int64) for c in batch["row"]])
    out: dict[str, np.ndarray] = {"row": row}
    for c in ("title", "image_path", "phash"):
        out[c] = np.array([str(v) for chunk in batch[c] for v in chunk], dtype=object)
    return out


class _EncodeActor:
    """Holds the ONNX encoders of a model folder; turns chunks into rows with `text`/`image`
    embeddings (each chunk encoded as one batch)."""

    def __init__(self, folder: str, text: bool, image: bool, device: str) -> None:
        from index.store.model import load_encoders

        wanted = [m for m, on in (("text", text), ("image", image)) if on]
        encoders = load_encoders(folder, device=device, modalities=wanted)  # type: ignore[arg-type]
        self.text, self.image = encoders.text, encoders.image

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from index.features.embed import embed_images, title_mask

        rows = _explode(batch)
        titles = [str(t) for t in rows["title"]]
        sizes = [len(c) for c in batch["row"]]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        if self.text is not None:
            rows["text"] = np.concatenate(
                [
                    self.text.encode(titles[a:b], batch_size=BATCH_SIZE)
                    for a, b in itertools.pairwise(bounds)
                ]
            )
            rows["text_valid"] = title_mask(titles)
        if self.image is not None:
            images = [str(p) for p in rows["image_path"]]
            rows["image"], rows["image_valid"] = embed_images(self.image, images)
        return rows


def _tfidf_phash(
    batch: dict[str, np.ndarray], tfidf_ref: list[Any], has_images: bool
) -> dict[str, np.ndarray]:
    """CPU task: each row's TF-IDF vector (as index/value bytes) and phash code."""
    import ray

    tfidf: TitleTfidf = ray.get(tfidf_ref[0])
    X = tfidf.transform([str(t) for t in batch["title"]])
    batch["tf_idx"] = np.array(
        [
            X.indices[X.indptr[i] : X.indptr[i + 1]].astype(np.int32).tobytes()
            for i in range(X.shape[0])
        ],
        dtype=object,
    )
    batch["tf_val"] = np.array(
        [
            X.data[X.indptr[i] : X.indptr[i + 1]].astype(np.float32).tobytes()
            for i in range(X.shape[0])
        ],
        dtype=object,
    )
    given = [str(h) for h in batch["phash"]]
    images = [str(p) for p in batch["image_path"]] if has_images else None
    hashes, _ = fill_phash(given, images)
    batch["phash_code"], batch["phash_valid"] = phash_codes(hashes)
    # an image given but no phash computed from it: unreadable (as `embed` counts them)
    batch["phash_failed"] = np.array(
        [not h and bool(p) for h, p in zip(hashes, images or [""] * len(hashes), strict=True)]
    )
    return batch


def _csr(tf_idx: np.ndarray, tf_val: np.ndarray, width: int) -> sp.csr_matrix:
    """CSR rows from per-row index/value bytes."""
    idx = [np.frombuffer(b, np.int32) for b in tf_idx]
    val = [np.frombuffer(b, np.float32) for b in tf_val]
    indptr = np.zeros(len(idx) + 1, np.int64)
    indptr[1:] = np.cumsum([len(i) for i in idx])
    return sp.csr_matrix(
        (
            np.concatenate(val) if val else np.zeros(0, np.float32),
            np.concatenate(idx) if idx else np.zeros(0, np.int32),
            indptr,
        ),
        shape=(len(idx), width),
        dtype=np.float32,
    )


def merge_topk(parts: list[Neighbours], k: int = K) -> Neighbours:
    """Global top-k from per-shard top-k lists (ids already global): by score descending,
    equal scores by row number ascending, padding (-1 / -inf) last."""
    D, I = order_ties(np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts]))
    return D[:, :k], I[:, :k]


class _ShardActor:
    """One slice of the catalogue (rows offset..offset+n): its dense vectors, TF-IDF rows
    and phash codes; `search` gives a query batch's top-k per signal in this slice."""

    def __init__(self, offset: int, data: dict[str, Any], device: str) -> None:
        self.offset = offset
        self.device = device
        self.dense: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for s in DENSE:
            if s in data:
                x, valid = data[s], data[f"{s}_valid"]
                brows = np.flatnonzero(valid)
                self.dense[s] = (np.ascontiguousarray(x[brows]), brows)
        self.XbT = sp.csr_matrix(data["X"].T)
        self.hindex, self.hrows = hamming_index(data["phash"], data["phash_valid"])

    def search(self, q: dict[str, Any], k: int) -> dict[str, Neighbours]:
        out: dict[str, Neighbours] = {}
        D, I = sparse_topk(q["X"], self.XbT, k)
        out["tfidf"] = D, np.where(I >= 0, I + self.offset, -1)
        D, I = hamming_search(self.hindex, self.hrows, q["phash"], q["phash_valid"], k)
        out["phash"] = D, np.where(I >= 0, I + self.offset, -1)
        for s, (xb, brows) in self.dense.items():
            D, I = no_neighbours(q[s].shape[0], k)
            qrows = np.flatnonzero(q[f"{s}_valid"])
            if qrows.size and brows.size:
                Dv, Iv = knn(q[s][qrows], xb, k, device=self.device)
                D[qrows] = Dv
                I[qrows] = np.where(Iv >= 0, brows[np.maximum(Iv, 0)] + self.offset, -1)
            out[s] = D, I
        return out


def _join(
    batch: dict[str, np.ndarray], shards: list[Any], width: int, k: int
) -> dict[str, np.ndarray]:
    """k-NN join task: scatter the query batch to every shard, merge to the global top-k."""
    import ray

    q: dict[str, Any] = {
        "X": _csr(batch["tf_idx"], batch["tf_val"], width),
        "phash": np.ascontiguousarray(batch["phash_code"], dtype=np.uint8),
        "phash_valid": np.asarray(batch["phash_valid"], bool),
    }
    for s in DENSE:
        if f"{s}_valid" in batch:
            q[s] = np.ascontiguousarray(batch[s], dtype=np.float32)
            q[f"{s}_valid"] = np.asarray(batch[f"{s}_valid"], bool)
    q_ref = ray.put(q)
    results = ray.get([h.search.remote(q_ref, k) for h in shards])
    out: dict[str, np.ndarray] = {"row": batch["row"]}
    for s in results[0]:
        D, I = merge_topk([r[s] for r in results], k)
        out[f"D_{s}"], out[f"I_{s}"] = D, I
    return out


def ray_neighbours(
    cat: Catalogue,
    model_folder: Path | None,
    text: bool,
    image: bool,
    tfidf_config: TfidfConfig | None = None,
    shards: int = 1,
    device: str = "auto",
    k: int = K,
) -> tuple[Features, dict[str, Neighbours]]:
    """Features and self-neighbours of `cat` computed by the Ray Data pipeline.

    Same results as `embed` + `self_neighbours` (up to the order of equal scores).
    Ray must be initialised (`init_ray`).

    Args:
        cat: the validated catalogue.
        model_folder: the folder holding text/ and image/ (None: TF-IDF and phash only).
        text, image: which encoders to run (image only when `cat.image` holds paths).
        shards: catalogue slices, one shard actor each.
    """
    import ray

    from index.features.embed import build_features

    n = len(cat)
    has_images = cat.image is not None
    image = image and has_images
    ds: Any = ray.data.from_items(_chunks(cat))
    if (text or image) and model_folder is not None:
        ds = ds.map_batches(
            _EncodeActor,
            fn_constructor_kwargs={
                "folder": str(model_folder),
                "text": text,
                "image": image,
                "device": device,
            },
            batch_size=1,  # one chunk of BATCH_SIZE rows
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
            num_cpus=0.5,
        )
    else:
        ds = ds.map_batches(_explode, batch_size=1, num_cpus=0.25)
    if tfidf_config is not None and tfidf_config.field_weights:
        raise CatalogueError(
            "--engine ray does not take field weights (its shards transform titles): use "
            "the default engine, or --fields without weights"
        )
    tfidf = TitleTfidf(tfidf_config).fit(cat.title)  # fitted once, on every title
    width = int(tfidf.transform([""]).shape[1])
    ds = ds.map_batches(
        _tfidf_phash,
        fn_kwargs={"tfidf_ref": [ray.put(tfidf)], "has_images": has_images},
        batch_size=BATCH_SIZE,
        num_cpus=0.5,
    )
    feats_ds = ds.materialize()

    # The whole pool's features on the driver (in row order): shards are cut from them,
    # and apply_stages needs them.
    cols: dict[str, list[np.ndarray]] = {}
    for b in feats_ds.iter_batches(batch_size=None, batch_format="numpy"):
        for c, v in b.items():
            cols.setdefault(c, []).append(v)
    whole = {c: np.concatenate(v) for c, v in cols.items()}
    order = np.argsort(whole["row"], kind="stable")
    whole = {c: v[order] for c, v in whole.items()}
    assert np.array_equal(whole["row"], np.arange(n)), "rows lost in the pipeline"
    X = _csr(whole["tf_idx"], whole["tf_val"], width)
    failed = int(whole["phash_failed"].sum()) if has_images else 0
    phash = (
        np.ascontiguousarray(whole["phash_code"], dtype=np.uint8),
        whole["phash_valid"].astype(bool),
    )
    dense = {
        s: (np.ascontiguousarray(whole[s], dtype=np.float32), whole[f"{s}_valid"].astype(bool))
        for s in DENSE
        if f"{s}_valid" in whole
    }
    feats = build_features(cat, tfidf, X, phash, failed, dense)

    # Long-lived shard actors, each holding one contiguous slice of the catalogue.
    shards = max(1, min(shards, n))
    bounds = np.linspace(0, n, shards + 1).astype(int)
    Shard = ray.remote(num_cpus=0.25)(_ShardActor)
    handles: list[Any] = []
    for a, b in itertools.pairwise(bounds):
        data: dict[str, Any] = {
            "X": X[a:b],
            "phash": feats.phash[a:b],
            "phash_valid": feats.phash_valid[a:b],
        }
        for s, (x, valid) in feats.dense().items():
            data[s], data[f"{s}_valid"] = x[a:b], valid[a:b]
        handles.append(Shard.remote(int(a), ray.put(data), device))
    nb_ds = feats_ds.map_batches(
        _join,
        fn_kwargs={"shards": handles, "width": width, "k": k},
        batch_size=BATCH_SIZE,
        num_cpus=0.25,
    )
    got: dict[str, list[np.ndarray]] = {}
    for b in nb_ds.iter_batches(batch_size=None, batch_format="numpy"):
        for c, v in b.items():
            got.setdefault(c, []).append(v)
    res = {c: np.concatenate(v) for c, v in got.items()}
    order = np.argsort(res["row"], kind="stable")
    res = {c: v[order] for c, v in res.items()}
    for h in handles:
        ray.kill(h)
    names = ["tfidf", "phash", *(s for s in DENSE if getattr(feats, s) is not None)]
    nb = {s: (res[f"D_{s}"].astype(np.float32), res[f"I_{s}"].astype(np.int64)) for s in names}
    if feats.C is not None:  # the char source: one sparse self-join on the driver
        nb["char"] = order_ties(*sparse_knn(feats.C, feats.C, k))
    return feats, nb
