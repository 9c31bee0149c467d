"""Service settings: one pydantic-settings class, read from `PRICEMATCH_*` variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 1 << 20


class Settings(BaseSettings):
    """Everything the service reads from the environment (prefix `PRICEMATCH_`).

    With `bundle` set, the bundle's encoders, thresholds and catalogue are served; without
    it, the encoders of `model_dir` (none: TF-IDF and phash only) and an empty catalogue
    that `POST /listings` fills. Catalogue changes persist under `data_dir` either way.
    The text/image vectors are kept in process (FAISS) or, with `vector_store="milvus"`,
    in Milvus collections (`index.store.milvus`).
    """

    model_config = SettingsConfigDict(
        env_prefix="PRICEMATCH_", extra="ignore", env_ignore_empty=True
    )

    bundle: Path | None = Field(default=None, description="bundle folder (pricematch build-index)")
    model_dir: Path | None = Field(
        default=None,
        description="model folder (text/, image/, fusion.json) without a bundle",
    )
    data_dir: Path = Field(
        default=Path("data/catalogue"), description="where the catalogue persists"
    )
    images_dir: Path | None = Field(
        default=None, description="server-side folder /batch-match resolves image names under"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    text_batch_size: int = Field(default=64, ge=1, description="encoder batch for bulk work")
    image_batch_size: int = Field(default=32, ge=1)
    max_batch: int = Field(default=64, ge=1, description="most /match queries encoded together")
    batch_wait_ms: float = Field(default=3.0, ge=0, description="how long /match waits to batch")
    max_request_mb: float = Field(
        default=20, gt=0, description="body limit of every route but batch"
    )
    max_upload_mb: float = Field(
        default=512, gt=0, description="body limit of /batch-match (CSV + images zip)"
    )
    max_csv_mb: float = Field(default=32, gt=0, description="limit of a /batch-match CSV")
    max_batch_rows: int = Field(default=100_000, ge=1, description="rows of a /batch-match CSV")
    max_image_mb: float = Field(default=10, gt=0, description="limit of one image (decoded bytes)")
    max_unzipped_mb: float = Field(default=1024, gt=0, description="limit of a zip's content")
    max_zip_files: int = Field(default=100_000, ge=1, description="files in an images zip")
    max_zip_ratio: float = Field(
        default=50, gt=1, description="largest unpacked/packed size of one zip member"
    )
    max_listings: int = Field(default=10_000, ge=1, description="listings per POST /listings")
    batch_jobs: int = Field(default=1, ge=1, description="concurrent /batch-match jobs")
    shutdown_grace_s: int = Field(
        default=5,
        ge=0,
        description="on SIGTERM, how long requests in flight may finish before they are "
        "cancelled (a /batch-match stops at its next step)",
    )
    api_key: SecretStr | None = Field(
        default=None, description="if set, write routes need X-API-Key"
    )
    warm_up: bool = Field(
        default=True, description="run the encoders once before /readyz says ready"
    )
    wal: bool = Field(
        default=True,
        description="writes append to a write-ahead log (fsynced) and snapshots are written "
        "in the background (FAISS and Milvus); off: every write saves a whole snapshot",
    )
    wal_max_mb: float = Field(
        default=64, gt=0, description="compact (write a snapshot) when the log passes this size"
    )
    wal_max_records: int = Field(
        default=10_000, ge=1, description="compact when the log passes this many records"
    )
    vector_store: Literal["faiss", "milvus"] = Field(
        default="faiss",
        description="where text/image vectors live: in process (faiss) or Milvus ([scale])",
    )
    milvus_uri: str | None = Field(
        default=None,
        description="milvus-lite .db file or http://host:19530; default <data_dir>/milvus.db",
    )
    milvus_token: SecretStr | None = Field(
        default=None, description="Milvus credentials (user:password or API key)"
    )
    milvus_collection: str = Field(
        default="pricematch",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$",
        description="collection name prefix: PREFIX_text, PREFIX_image",
    )
    # Ray Serve (`pricematch serve --engine ray`, service/ray_serve.py):
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join (HOST:PORT); none: start a local Ray"
    )
    ray_replicas: int = Field(
        default=1, ge=1, description="replicas (over 1: the catalogue is read-only)"
    )
    ray_num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per replica")
    ray_num_gpus: float = Field(
        default=0.0, ge=0, description="GPUs per replica (fractions share one GPU)"
    )

    def limit(self, mb: float) -> int:
        return int(mb * MB)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
