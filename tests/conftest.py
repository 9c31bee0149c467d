from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PRICEMATCH_NO_PROGRESS", "1")
# OpenMP threads (LightGBM, faiss, torch) sleep when idle instead of spinning: on a shared
# machine spinning counts as CPU time, and `pricematch train` spends its budget by CPU time
# (measured: the ranker of the budget test 2.9 CPU-s passive, 36.5 spinning, beside two
# busy processes on 2 cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic catalogue folder: listings.csv (with label_group) and images/."""
    from index.data.synthetic import SyntheticSpec, make_catalogue

    root = tmp_path_factory.mktemp("synth")
    make_catalogue(root, SyntheticSpec(products=30, singletons=3, seed=1))
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with tiny real ONNX text and image encoders."""
    from tests.fakes import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def cross_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT for the cross-encoder cascade (`train --cross-base`): the packaged
    MiniLM costs minutes per fit."""
    from tests.fakes import make_pair_base

    return make_pair_base(tmp_path_factory.mktemp("cross-base"))


@pytest.fixture(scope="session")
def strict_model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake encoders with stricter thresholds (the tiny text model knows few words)."""
    import shutil

    from index.matching.fusion import FusionConfig

    out = tmp_path_factory.mktemp("strict") / "model"
    shutil.copytree(model_dir, out)
    cfg = FusionConfig(thresholds={"tfidf": 0.6, "phash": 0.85, "text": 0.97, "image": 0.9})
    (out / "fusion.json").write_text(cfg.model_dump_json())
    return out
