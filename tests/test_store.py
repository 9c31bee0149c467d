"""The format owners: the model folder (`index.store.model`), out-of-fold files
(`index.data.oof`) and atomic writes (`index.store.atomic`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.data.oof import read_oof, write_oof
from index.errors import CatalogueError, EncoderError
from index.matching.fusion import FusionConfig
from index.store.atomic import write_atomic, write_file_atomic
from index.store.model import (
    fingerprint,
    load_encoders,
    load_model,
    read_fusion,
    write_fusion,
    write_model,
)


def test_no_model_folder_is_tfidf_and_phash_with_the_default_config() -> None:
    m = load_model(None)
    assert m.encoders.text is None and m.encoders.image is None
    assert m.fusion == FusionConfig() and m.folder is None


def test_model_folder_roundtrip(model_dir: Path, tmp_path: Path) -> None:
    cfg = FusionConfig().with_(thresholds={"tfidf": 0.5, "text": 0.9})
    out = write_model(tmp_path / "m", cfg, {"text": model_dir / "text"})
    assert sorted(p.name for p in out.iterdir()) == ["fusion.json", "text"]
    assert json.loads((out / "fusion.json").read_text())["thresholds"] == {
        "tfidf": 0.5,
        "text": 0.9,
    }
    m = load_model(out, device="cpu")
    assert m.fusion == cfg and m.encoders.text is not None and m.encoders.image is None
    # an artifact already in place is kept, not copied onto itself
    write_model(out, FusionConfig(), {"text": out / "text"})
    assert (out / "text" / "config.json").is_file() and load_model(out).fusion == FusionConfig()


def test_a_model_folder_without_fusion_json_gets_the_defaults(
    model_dir: Path, tmp_path: Path
) -> None:
    out = write_model(tmp_path / "m", FusionConfig(), {"text": model_dir / "text"})
    (out / "fusion.json").unlink()
    assert load_model(out, device="cpu").fusion == FusionConfig()


def test_model_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="model folder not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="holds no encoder"):
        load_encoders(tmp_path / "empty")
    with pytest.raises(CatalogueError, match="config file not found"):
        read_fusion(tmp_path / "fusion.json")


def test_load_encoders_of_some_modalities_only(model_dir: Path) -> None:
    both = load_encoders(model_dir, device="cpu")
    assert both.text is not None and both.image is not None
    only = load_encoders(model_dir, device="cpu", modalities=["image"])
    assert only.text is None and only.image is not None


def test_fingerprint_changes_with_the_artifact(model_dir: Path, tmp_path: Path) -> None:
    out = write_model(tmp_path / "m", FusionConfig(), {"text": model_dir / "text"})
    before = fingerprint(load_encoders(out, device="cpu"))
    assert set(before) == {"text"} and len(before["text"]["sha256"]) == 64
    with open(out / "text" / "config.json", "a", encoding="utf-8") as f:
        f.write(" ")
    assert fingerprint(load_encoders(out, device="cpu")) != before


def test_fusion_json_is_indented_and_reads_back(tmp_path: Path) -> None:
    cfg = FusionConfig().with_(max_matches=7)
    p = write_fusion(tmp_path / "f.json", cfg)
    assert p.read_text().startswith('{\n  "thresholds"')
    assert read_fusion(p) == cfg


def test_oof_roundtrip_and_the_documented_checksum(tmp_path: Path) -> None:
    ids = ["a", "b", "c", "d"]
    x = np.arange(8, dtype=np.float64).reshape(4, 2)
    folds = [(np.array([0, 1]), np.array([2, 3])), (np.array([2, 3]), np.array([0]))]
    write_oof(tmp_path / "oof", "text", x, folds, ids)
    meta = json.loads((tmp_path / "oof" / "meta.json").read_text())
    assert meta == {
        "rows": 4,
        "posting_id_sha256": hashlib.sha256(b"a\nb\nc\nd").hexdigest(),
        "folds": 2,
    }
    dense, fold_of = read_oof(tmp_path, ids)  # the model folder: its oof/ is read
    assert dense["text"].dtype == np.float32 and np.array_equal(dense["text"], x)
    assert fold_of.tolist() == [1, -1, 0, 0]
    with pytest.raises(CatalogueError, match="belong to another CSV"):
        read_oof(tmp_path / "oof", ["a", "b", "d", "c"])
    with pytest.raises(CatalogueError, match="no oof/meta.json"):
        read_oof(tmp_path / "elsewhere", ids)


def test_write_atomic_syncs_every_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])

    def fill(d: Path) -> None:
        (d / "a").write_text("1")
        (d / "sub").mkdir()
        (d / "sub" / "b").write_text("2")

    out = write_atomic(tmp_path / "out", fill)
    assert (out / "sub" / "b").read_text() == "2"
    # 2 files, 2 folders of the new tree, the parent after the rename
    assert len(synced) >= 5


def test_write_atomic_leaves_the_old_folder_on_failure(tmp_path: Path) -> None:
    write_atomic(tmp_path / "out", lambda d: (d / "v").write_text("old"))

    def boom(d: Path) -> Any:
        (d / "v").write_text("new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "out", boom)
    assert (tmp_path / "out" / "v").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_write_file_atomic_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    write_file_atomic(tmp_path / "CURRENT", "snap-000001\n")
    write_file_atomic(tmp_path / "CURRENT", "snap-000002\n")
    assert (tmp_path / "CURRENT").read_text() == "snap-000002\n"
    assert [p.name for p in tmp_path.iterdir()] == ["CURRENT"]
