from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PRICEMATCH_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic catalogue folder: listings.csv (with label_group) and images/."""
    from index.synthetic import SyntheticSpec, make_catalogue

    root = tmp_path_factory.mktemp("synth")
    make_catalogue(root, SyntheticSpec(products=30, singletons=3, seed=1))
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with tiny real ONNX text and image encoders."""
    from tests.fakes import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("model"))
