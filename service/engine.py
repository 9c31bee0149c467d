"""The serving engine: encoders, thresholds and the live catalogue behind the routes.

Everything CPU-bound (decoding, encoding, search, persistence, batch matching) runs in
worker threads; `/match` queries go through per-encoder micro-batchers. One lock orders
catalogue reads and writes; a write is persisted (atomically) before it is answered.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import faiss
import numpy as np
from PIL import Image

from index.data.listings import read_catalogue
from index.errors import CatalogueError, StoreError
from index.features.embed import Encoders, QueryFeatures
from index.features.encoders import Encoder
from index.matching.fusion import FusionConfig
from index.matching.ranker import Ranker
from index.matching.selfmatch import match_catalogue
from index.store.atomic import sha256
from index.store.bundle import load_bundle
from index.store.live import LiveCatalogue
from index.store.live_match import match_queries, rank_queries
from index.store.milvus import MilvusVectors
from index.store.model import fingerprint, load_model, load_some_encoders, needed_modalities
from index.store.snapshots import load_snapshot, save_snapshot, snapshot_wal_next
from index.store.wal import WriteAheadLog, apply_record, delete_record, segments, upsert_record
from service.batching import Batcher, BatcherFactory, MicroBatcher, run_batches
from service.config import Settings
from service.jobs import Jobs
from service.metrics import Metrics

log = logging.getLogger("pricematch.service")


@dataclass
class Listing:
    """One decoded listing from a request."""

    posting_id: str | None
    title: str
    image: Image.Image | None = None
    image_phash: str = ""
    image_name: str = ""


@dataclass
class Match:
    posting_id: str
    title: str
    score: float
    signals: list[str]
    similarities: dict[str, float]
    is_self: bool


def open_vectors(settings: Settings) -> MilvusVectors | None:
    """The Milvus connection for the catalogue's vectors on `vector_store="milvus"`, else None
    (FAISS stores in process, saved in the snapshots)."""
    if settings.vector_store != "milvus":
        return None
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    uri = settings.milvus_uri or settings.data_dir / "milvus.db"
    return MilvusVectors(uri, token=token, prefix=settings.milvus_collection, logged=settings.wal)


def open_log(
    settings: Settings,
    live: LiveCatalogue,
    meta: dict[str, Any],
    vectors: MilvusVectors | None = None,
) -> WriteAheadLog | None:
    """Replay the write-ahead log onto the loaded snapshot `live` and open it for appends
    (settings.wal); without a log from now on, a log left by an earlier run is replayed
    into a snapshot once and removed. With Milvus (`vectors`), the replayed vector
    changes are pending in the stores: `MilvusVectors.attach` applies them next.

    Raises:
        BundleError: a damaged log (not a torn last record), or one that does not follow
            the snapshot.
    """
    root = settings.data_dir
    if not settings.wal and not segments(root):
        return None
    first = snapshot_wal_next(root) if (root / "CURRENT").is_file() else 1
    wal = WriteAheadLog(root)
    t0 = time.perf_counter()
    n = 0
    for rec in wal.open(first):
        apply_record(live, rec)
        n += 1
    if n:
        log.info("replayed %d log records in %.2fs", n, time.perf_counter() - t0)
    if not (root / "CURRENT").is_file() or not settings.wal:
        # the base every later record follows (a bundle's catalogue, or the empty one), or
        # without a log from now on: the replayed writes folded into a snapshot
        seq = wal.rotate()
        snap = save_snapshot(root, live, meta, wal_next=seq if settings.wal else 0)
        wal.drop_before(seq)
        if vectors is not None and not settings.wal:
            vectors.apply(live, snap)  # the journal of the snapshot just saved
    if not settings.wal:
        wal.close()
        for _, p in segments(root):
            p.unlink(missing_ok=True)
        return None
    return wal


class Engine:
    """Loaded models and the catalogue; what `app.state.engine` holds.

    `batcher` makes the `/match` encoders' batchers: `MicroBatcher` (in process) by
    default, `service.ray_serve.ServeBatcher` (Ray Serve's `serve.batch`) on Ray Serve.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        encoders: Encoders,
        fusion: FusionConfig,
        catalogue: LiveCatalogue,
        meta: dict[str, Any],
        source: str,
        batcher: BatcherFactory = MicroBatcher,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.encoders = encoders
        self.fusion = fusion
        self.catalogue = catalogue
        self.meta = meta
        self.source = source
        self.vectors: MilvusVectors | None = None  # set by `load` on vector_store=milvus
        self.ranker: Ranker | None = None  # the model's pair re-ranker (set by `load`)
        self.match_ranker = False  # whether /match uses it (its signals are all searched)
        self.lock = threading.Lock()
        self.wal: WriteAheadLog | None = None  # set by `load` when settings.wal (FAISS)
        self.compaction: threading.Thread | None = None
        self.last_compaction: dict[str, float] | None = None
        self.ready = False
        self.batch_slots = anyio.Semaphore(settings.batch_jobs)
        self.jobs = Jobs()
        self.batchers: dict[str, Batcher[Any]] = {}
        for m in ("text", "image"):
            enc = getattr(encoders, m)
            if enc is not None:
                self.batchers[m] = batcher(
                    self._encode_fn(m, enc),
                    max_batch=settings.max_batch,
                    wait_ms=settings.batch_wait_ms,
                    observe=self._observe(m),
                )
        metrics.catalogue_size.set(len(catalogue))

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(
        cls, settings: Settings, metrics: Metrics, batcher: BatcherFactory = MicroBatcher
    ) -> Engine:
        """Load the bundle (or model folder) and the persisted catalogue, if any."""
        dev = settings.device
        if settings.bundle is not None:
            bundle = load_bundle(settings.bundle, device=dev)
            encoders, fusion, tfidf = bundle.encoders, bundle.fusion, bundle.tfidf
            meta: dict[str, Any] = {"bundle": sha256(bundle.folder / "manifest.json")}
            initial: LiveCatalogue | None = LiveCatalogue.from_bundle(bundle, device=dev)
            source = f"bundle {bundle.folder}"
            ranker: Ranker | None = bundle.ranker
        else:
            # only the encoders the model's pipeline uses (fusion.json, stages, ranker)
            model = load_model(settings.model_dir, device=dev, modalities=())
            fusion, folder, ranker = model.fusion, model.folder, model.ranker
            need = sorted(needed_modalities(fusion, ranker))
            encoders = load_some_encoders(folder, dev, need) if folder else Encoders()
            tfidf = None
            meta = {"encoders": fingerprint(encoders)}
            initial = None
            source = f"model {folder}" if folder else "no encoders (TF-IDF and phash only)"
        vectors = open_vectors(settings)
        opener = vectors.open if vectors is not None else None
        try:
            live = load_snapshot(settings.data_dir, meta, tfidf, dev, open_store=opener)
            if live is None:
                encs = {m: getattr(encoders, m) for m in ("text", "image")}
                dims = {m: e.dim for m, e in encs.items() if e is not None}
                live = initial or LiveCatalogue(dims=dims, device=dev)
            live.tfidf_config = fusion.tfidf
            wal = open_log(settings, live, meta, vectors)
            if vectors is not None:  # first start: vectors into Milvus; else pending re-applied
                vectors.attach(live, settings.data_dir, meta, wal)
        except BaseException:
            if vectors is not None:
                vectors.close()
            raise
        log.info("serving %s; catalogue of %d listings in %s", source, len(live), settings.data_dir)
        engine = cls(settings, metrics, encoders, fusion, live, meta, source, batcher)
        engine.ranker = ranker
        if ranker is not None:
            searched = set(live.searched())
            engine.match_ranker = set(ranker.signals) <= searched
            if not engine.match_ranker:
                log.warning(
                    "the ranker uses stage signals (%s): /batch-match uses it, /match decides "
                    "by the fusion thresholds",
                    ", ".join(sorted(set(ranker.signals) - searched)),
                )
        engine.vectors = vectors
        engine.wal = wal
        engine.update_log_metrics()
        return engine

    def warm_up(self) -> None:
        """Run each encoder once (first calls allocate), then mark the engine ready."""
        if self.settings.warm_up:
            if self.encoders.text is not None:
                self.encoders.text.encode(["warm up"])
            if self.encoders.image is not None:
                self.encoders.image.encode([Image.new("RGB", (64, 64))])
            with self.lock:
                self.catalogue.features()
        self.ready = True

    async def start(self) -> None:
        for b in self.batchers.values():
            await b.start()

    async def stop(self) -> None:
        """Cancel running jobs (their folders removed), stop the batchers, close stores."""
        await anyio.to_thread.run_sync(self.jobs.stop)
        for b in self.batchers.values():
            await b.stop()
        if self.compaction is not None:  # a snapshot in progress: let it finish (or crash safe)
            await anyio.to_thread.run_sync(self.compaction.join, 30.0)
        if self.vectors is not None:  # after the compaction: its snapshot flushes Milvus
            self.vectors.close()
        if self.wal is not None:
            with self.lock:
                self.wal.close()

    def _observe(self, modality: str) -> Any:
        def observe(n: int, seconds: float) -> None:
            self.metrics.encoder_batch.labels(modality).observe(n)
            self.metrics.encoder_seconds.labels(modality).observe(seconds)

        return observe

    @staticmethod
    def _encode_fn(modality: str, enc: Encoder) -> Any:
        def fn(items: Sequence[Any]) -> np.ndarray:
            return enc.encode(list(items), batch_size=max(1, len(items)))

        return fn

    # -- features ------------------------------------------------------------------------

    @property
    def signals(self) -> list[str]:
        out = ["tfidf", *(["char"] if "char" in self.catalogue.searched() else []), "phash"]
        return out + [m for m in ("text", "image") if getattr(self.encoders, m) is not None]

    def _features(
        self,
        listings: list[Listing],
        text: np.ndarray | None,
        image: tuple[np.ndarray, np.ndarray] | None,
    ) -> QueryFeatures:
        """The one feature builder: titles and phashes of `listings`, with the embeddings
        computed for them (text (n, d); image (n, d) and its (n,) validity)."""
        x, valid = image if image is not None else (None, None)
        return QueryFeatures.build(
            [x.title for x in listings],
            [x.image_phash for x in listings],
            text=text,
            image=x,
            image_valid=valid,
        )

    def _image_slots(self, listings: list[Listing]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Zero image embeddings, their validity, and the rows that have a photo to fill."""
        enc = self.encoders.image
        assert enc is not None
        rows = [i for i, x in enumerate(listings) if x.image is not None]
        valid = np.zeros(len(listings), bool)
        valid[rows] = True
        return np.zeros((len(listings), enc.dim), np.float32), valid, rows

    async def _query_features(self, listings: list[Listing]) -> QueryFeatures:
        """Features of a few listings, the encoders micro-batched with other requests."""
        text = image = None
        if "text" in self.batchers:
            b = self.batchers["text"]
            text = np.stack([await b.submit(x.title) for x in listings])
        if "image" in self.batchers:
            x, valid, rows = self._image_slots(listings)
            for i in rows:
                x[i] = await self.batchers["image"].submit(listings[i].image)
            image = (x, valid)
        return self._features(listings, text, image)

    def _bulk_features(self, listings: list[Listing]) -> QueryFeatures:
        """Features of many listings at once (POST /listings), in the calling thread."""
        s = self.settings
        text = image = None
        t = time.perf_counter()
        if self.encoders.text is not None:
            enc = self.encoders.text
            text = enc.encode([x.title for x in listings], batch_size=s.text_batch_size)
            self.metrics.encoder_seconds.labels("text").observe(time.perf_counter() - t)
        if self.encoders.image is not None:
            ienc = self.encoders.image
            x, valid, rows = self._image_slots(listings)
            if rows:
                t = time.perf_counter()
                imgs = [listings[i].image for i in rows]
                x[rows] = run_batches(ienc.encode, imgs, s.image_batch_size)
                self.metrics.encoder_seconds.labels("image").observe(time.perf_counter() - t)
            image = (x, valid)
        return self._features(listings, text, image)

    # -- the routes' work ----------------------------------------------------------------

    async def match(
        self,
        listing: Listing,
        threshold: dict[Any, float] | None = None,
        max_matches: int = 50,
    ) -> tuple[list[Match], FusionConfig]:
        """Catalogue listings matching `listing`, best first (see `index.store.live`)."""
        config = self.fusion
        if threshold:
            config = config.with_(thresholds={**config.thresholds, **threshold})
        t0 = time.perf_counter()
        feats = await self._query_features([listing])
        stage = self.metrics.match_stage_seconds
        stage.labels("features").observe(time.perf_counter() - t0)

        def search() -> list[Match]:
            # One query is a small search: OpenMP threads in it would only fight the other
            # requests' threads (the setting is per thread; batch_match sets its own).
            faiss.omp_set_num_threads(1)
            with self.lock:
                t = time.perf_counter()
                self.catalogue.last_timings = {}
                ranker = self.ranker if self.match_ranker and not threshold else None
                if ranker is not None:
                    found = rank_queries(self.catalogue, feats, ranker, [listing.posting_id])[0]
                else:
                    found = match_queries(self.catalogue, feats, config, [listing.posting_id])[0]
                total = time.perf_counter() - t
                searched = dict(self.catalogue.last_timings)
            for name, secs in searched.items():
                stage.labels(name).observe(secs)
            stage.labels("fuse").observe(max(0.0, total - sum(searched.values())))
            return [
                Match(
                    posting_id=m.posting_id,
                    title=m.title,
                    score=1.0 if m.is_self or not math.isfinite(m.score) else round(m.score, 6),
                    signals=m.signals,
                    similarities={k: round(v, 6) for k, v in m.similarities.items()},
                    is_self=m.is_self,
                )
                for m in found[:max_matches]
            ]

        return await anyio.to_thread.run_sync(search), config

    async def upsert(self, listings: list[Listing]) -> tuple[int, int, int]:
        """Add or replace listings; persisted before returning (added, replaced, total)."""
        ids = [x.posting_id or "" for x in listings]
        dups = [p for p, n in Counter(ids).items() if n > 1]
        if dups:
            raise CatalogueError(f"duplicate posting_id(s) in this request: {', '.join(dups[:5])}")

        def work() -> tuple[int, int, int]:
            feats = self._bulk_features(listings)
            images = [x.image_name for x in listings]
            with self.lock:
                if self.wal is not None:  # logged (fsynced) before it is applied
                    self.wal.append(upsert_record(self.catalogue, ids, images, feats))
                added, replaced = self.catalogue.upsert(ids, images, feats)
                self._persist()
                return added, replaced, len(self.catalogue)

        return await anyio.to_thread.run_sync(work)

    async def delete(self, posting_id: str) -> int:
        def work() -> int:
            with self.lock:
                if self.wal is not None:
                    self.catalogue.row(posting_id)  # an unknown id is refused before logging
                    self.wal.append(delete_record(self.catalogue, posting_id))
                self.catalogue.remove(posting_id)
                self._persist()
                return len(self.catalogue)

        return await anyio.to_thread.run_sync(work)

    async def get(self, posting_id: str) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with self.lock:
                return self.catalogue.get(posting_id)

        return await anyio.to_thread.run_sync(work)

    def update_log_metrics(self) -> None:
        if self.wal is not None:
            self.metrics.wal_records.set(self.wal.state.records)
            self.metrics.wal_bytes.set(self.wal.state.bytes)

    def log_status(self) -> dict[str, Any] | None:
        """The log as /readyz shows it (None without a log)."""
        if self.wal is None:
            return None
        s = self.wal.state
        return {
            "records": s.records,
            "bytes": s.bytes,
            "segment": s.segment,
            "compacting": self.compaction is not None and self.compaction.is_alive(),
            "last_compaction": self.last_compaction,
        }

    def _maybe_compact(self) -> None:
        """Start a background snapshot when the log passes its limits (lock held): the
        catalogue is copied and the log rotated under the lock; the snapshot is written
        outside it, then the old segments are removed."""
        assert self.wal is not None
        s, cfg = self.wal.state, self.settings
        if s.records < cfg.wal_max_records and s.bytes < cfg.wal_max_mb * 2**20:
            return
        if self.compaction is not None and self.compaction.is_alive():
            return
        t0 = time.perf_counter()
        state = self.catalogue.copy()
        seq = self.wal.rotate()
        held = time.perf_counter() - t0
        self.compaction = threading.Thread(
            target=self._compact, args=(state, seq, held), name="compaction", daemon=True
        )
        self.compaction.start()

    def _compact(self, state: LiveCatalogue, seq: int, held: float) -> None:
        assert self.wal is not None
        t0 = time.perf_counter()
        try:
            save_snapshot(self.settings.data_dir, state, self.meta, wal_next=seq)
            self.wal.drop_before(seq)
        except Exception:  # the log still holds every write; the next compaction retries
            log.exception("compaction failed; the log keeps the writes")
            return
        took = time.perf_counter() - t0
        self.last_compaction = {
            "at": time.time(),
            "seconds": round(took, 3),
            "lock_seconds": round(held, 4),
            "listings": len(state),
        }
        self.metrics.compactions.inc()
        self.metrics.compaction_seconds.set(took)
        self.metrics.compaction_time.set(self.last_compaction["at"])
        log.info("compaction: snapshot of %d listings in %.2fs", len(state), took)

    def _persist(self) -> None:
        """Make the write durable (lock held): with the log it already is (it was appended
        before the change) and a background snapshot may start; without, save the whole
        catalogue, and on failure go back to the last saved state.

        With Milvus, a vector change is applied once durable (`index.store.milvus`): on the
        log right away; without it after the snapshot that holds it is committed. If
        Milvus fails, the change is kept and applied again by the next search, write or
        start (searches answer 503 meanwhile); on the log the write is still answered, it
        is durable.
        """
        if self.wal is not None:
            self.metrics.catalogue_size.set(len(self.catalogue))
            self.update_log_metrics()
            if self.vectors is not None:
                try:
                    self.vectors.apply(self.catalogue)
                except StoreError as e:
                    log.warning("%s; the change is logged and applied later", e)
            self._maybe_compact()
            return
        try:
            snap = save_snapshot(self.settings.data_dir, self.catalogue, self.meta)
        except BaseException:
            log.exception("saving the catalogue failed; reloading the last saved state")
            tfidf = self.catalogue.tfidf if self.catalogue.fixed_vocabulary else None
            opener = self.vectors.open if self.vectors is not None else None
            old = load_snapshot(
                self.settings.data_dir, self.meta, tfidf, self.settings.device, opener
            )
            if old is not None:
                self.catalogue = old
            raise
        finally:
            self.metrics.catalogue_size.set(len(self.catalogue))
        if self.vectors is not None:
            self.vectors.apply(self.catalogue, snap)

    def batch_match(self, csv: bytes, images_dir: Path | None) -> tuple[list[str], list[list[str]]]:
        """Kaggle semantics over an uploaded CSV: `index.matching.selfmatch.match_catalogue`, as
        `pricematch match` runs it (rows matched among themselves; the image encoder only
        with images, which are only ever read inside `images_dir`)."""
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # per thread: a pooled one may be at 1
        cat = read_catalogue(
            csv, images_dir=images_dir, source="uploaded CSV", max_rows=self.settings.max_batch_rows
        )
        for line in cat.issue_lines():
            log.info("batch-match: %s", line)
        enc = Encoders(text=self.encoders.text, image=self.encoders.image if images_dir else None)
        matches, _ = match_catalogue(
            cat,
            self.fusion,
            enc,
            device=self.settings.device,
            # a ranker trained with photos decides only batches that come with photos
            ranker=self.ranker
            if self.ranker is not None and ("image" not in self.ranker.signals or images_dir)
            else None,
        )
        self.metrics.batch_rows.inc(len(cat))
        return cat.posting_id, matches

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "vector_store": self.settings.vector_store,
            "listings": len(self.catalogue),
            "signals": self.signals,
            "thresholds": self.fusion.thresholds,
            "log": self.log_status(),
            "batching": {m: b.kind for m, b in self.batchers.items()},
            "providers": {
                m: getattr(self.encoders, m).providers
                for m in ("text", "image")
                if getattr(self.encoders, m) is not None
            },
        }
