"""pricematch's library: listings, features, search, matching, stores, tuning (no torch).

The public API is `from index import ...` of the names in `__all__`; each loads its module
on first use, so `import index` stays cheap. Layers, bottom up (each imports only those
below it; see docs/ARCHITECTURE.md): `errors`/`progress` · `data` · `search` · `features` ·
`matching` · `store` / `tuning` · `scale` · `cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
API: dict[str, str] = {
    **dict.fromkeys(
        [
            "PricematchError",
            "CatalogueError",
            "ImageError",
            "EncoderError",
            "BundleError",
            "NotFoundError",
            "StoreError",
            "CancelledError",
        ],
        "index.errors",
    ),
    **dict.fromkeys(
        ["Catalogue", "read_catalogue", "write_submission", "check_posting_id"],
        "index.data.listings",
    ),
    **dict.fromkeys(["SyntheticSpec", "make_catalogue"], "index.data.synthetic"),
    **dict.fromkeys(["read_oof", "write_oof"], "index.data.oof"),
    **dict.fromkeys(["normalize_title", "parse_quantities"], "index.features.text"),
    **dict.fromkeys(["open_image", "compute_phash", "phash_codes"], "index.features.images"),
    **dict.fromkeys(
        ["Encoder", "create_encoder", "list_encoders", "load_encoder", "register_encoder"],
        "index.features.encoders",
    ),
    **dict.fromkeys(["TfidfConfig", "TitleTfidf"], "index.features.tfidf"),
    **dict.fromkeys(["Encoders", "Features", "QueryFeatures", "embed"], "index.features.embed"),
    **dict.fromkeys(
        ["K", "knn", "self_knn", "sparse_knn", "hamming_knn", "hamming_self_knn"],
        "index.search.knn",
    ),
    **dict.fromkeys(["VectorStore", "FaissFlatStore"], "index.search.stores"),
    **dict.fromkeys(["FusionConfig", "fuse"], "index.matching.fusion"),
    **dict.fromkeys(["apply_stages", "fuse_stages"], "index.matching.stages"),
    **dict.fromkeys(
        ["SelfMatch", "self_match", "match_catalogue", "local_neighbours", "self_neighbours"],
        "index.matching.selfmatch",
    ),
    **dict.fromkeys(
        ["Model", "load_model", "load_encoders", "write_model", "read_fusion", "write_fusion"],
        "index.store.model",
    ),
    **dict.fromkeys(["Bundle", "save_bundle", "load_bundle"], "index.store.bundle"),
    "LiveCatalogue": "index.store.live",
    **dict.fromkeys(
        ["CatalogueMatch", "match_queries", "rank_queries"], "index.store.live_match"
    ),
    **dict.fromkeys(["save_snapshot", "load_snapshot"], "index.store.snapshots"),
    "write_atomic": "index.store.atomic",
    **dict.fromkeys(["f1_report", "mean_f1"], "index.tuning.metrics"),
    "tune": "index.tuning.grids",
}

__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    module = API.get(name)
    if module is None:
        raise AttributeError(f"module 'index' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
