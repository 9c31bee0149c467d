"""Exact boundaries and documented defaults, pinned to literal values (not to the code's own
constants), and the integrity checks that must refuse damage: bundle checksums through
`load_bundle`, and a crash between any two steps of a snapshot commit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.errors import BundleError
from index.features.embed import QueryFeatures
from index.features.images import phash_codes
from index.features.tfidf import TfidfConfig, TitleTfidf
from index.matching.fusion import FusionConfig, fuse
from index.search.knn import hamming_self_knn
from index.store.bundle import load_bundle
from index.store.live import LiveCatalogue
from index.store.snapshots import load_snapshot, save_snapshot
from tests.test_fusion import nb, sets


def codes_at_distance(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit phashes `d` bits apart, as packed codes."""
    a = 0x94974F937D4C2433
    b = a ^ ((1 << d) - 1)
    return phash_codes([f"{a:016x}", f"{b:016x}"])


def test_documented_fusion_defaults() -> None:
    cfg = FusionConfig()
    assert cfg.thresholds == {"tfidf": 0.625, "phash": 0.90625, "text": 0.92, "image": 0.8}
    assert (cfg.min2, cfg.min2_signal, cfg.min2_floor) == (True, "tfidf", 0.35)
    assert (cfg.min2_reciprocal, cfg.max_matches, cfg.pool_slopes) == (0, 50, {})
    t = TfidfConfig()
    assert (t.word_ngrams, t.char_ngrams, t.binary, t.sublinear_tf) == ((1, 1), None, True, False)
    assert (t.min_df, t.max_df) == (1, 1.0)


@pytest.mark.parametrize(("distance", "matched"), [(5, True), (6, True), (7, False)])
def test_phash_threshold_keeps_hamming_6_and_drops_7(distance: int, matched: bool) -> None:
    """The default phash threshold is Hamming <= 6: the comparison is `>=`, not `>`."""
    codes, valid = codes_at_distance(distance)
    D, I = hamming_self_knn(codes, valid, k=51)
    cfg = FusionConfig().with_(min2=False)
    fused, _ = fuse({"phash": (D, I)}, cfg, 2)
    assert sets(fused) == ([{0, 1}, {0, 1}] if matched else [{0}, {1}])


@pytest.mark.parametrize(("t", "kept"), [(0.8, True), (0.80001, False)])
def test_threshold_is_inclusive(t: float, kept: bool) -> None:
    D, I = nb({0: [(0, 1.0), (1, np.float32(0.8))], 1: [(1, 1.0)]}, 2)
    fused, _ = fuse({"text": (D, I)}, FusionConfig(thresholds={"text": t}, min2=False), 2)
    assert (1 in sets(fused)[0]) is kept


@pytest.mark.parametrize(("sim", "taken"), [(0.35, True), (0.3499, False)])
def test_at_least_one_match_floor_is_inclusive(sim: float, taken: bool) -> None:
    """A lone row takes its nearest TF-IDF neighbour at exactly the 0.35 floor."""
    D, I = nb({0: [(0, 1.0), (1, np.float32(sim))], 1: [(1, 1.0)]}, 2)
    fused, _ = fuse({"tfidf": (D, I)}, FusionConfig(thresholds={"tfidf": 0.9}), 2)
    assert (1 in sets(fused)[0]) is taken


def test_tfidf_is_binary_by_default() -> None:
    """Repeated words do not count twice: 'a a b' is the same vector as 'a b'."""
    tf = TitleTfidf().fit(["kabel kabel usb", "kabel usb", "power bank"])
    X = tf.transform(["kabel kabel usb", "kabel usb"])
    assert float((X[0] @ X[1].T).toarray()[0, 0]) == pytest.approx(1.0)
    counted = TitleTfidf(TfidfConfig(binary=False)).fit(["kabel kabel usb", "kabel usb", "x"])
    Y = counted.transform(["kabel kabel usb", "kabel usb"])
    assert float((Y[0] @ Y[1].T).toarray()[0, 0]) < 0.99


# -- bundle checksums ------------------------------------------------------------------------


def test_load_bundle_refuses_a_flipped_byte_in_any_file(
    synth: Path, strict_model: Path, tmp_path: Path
) -> None:
    from index.cli.parser import main as cli_main

    bundle = tmp_path / "b"
    args = ["build-index", str(synth / "listings.csv"), "--model", str(strict_model)]
    assert cli_main([*args, "--out", str(bundle), "-q", "--device", "cpu"]) == 0
    assert len(load_bundle(bundle, device="cpu").catalogue) > 0
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert len(files) >= 8
    for p in files:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(bundle, copy)
        target = copy / p.relative_to(bundle)
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        with pytest.raises(BundleError, match="checksum mismatch"):
            load_bundle(copy, device="cpu")


# -- snapshot commit: a crash between any two steps ------------------------------------------


class Crash(BaseException):
    """Stands for the process dying at that point."""


def small_catalogue(titles: list[str]) -> LiveCatalogue:
    cat = LiveCatalogue(dims={"text": 4}, device="cpu")
    rng = np.random.default_rng(len(titles))
    text = rng.normal(size=(len(titles), 4)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    feats = QueryFeatures.build(titles, [""] * len(titles), text=text)
    cat.upsert([f"p{i}" for i in range(len(titles))], [""] * len(titles), feats)
    return cat


def steps_of_a_save(root: Path, cat: LiveCatalogue, monkeypatch: pytest.MonkeyPatch) -> int:
    calls = {"n": 0}
    _instrument(monkeypatch, calls, crash_at=None)
    save_snapshot(root, cat, {})
    monkeypatch.undo()
    return calls["n"]


def _instrument(
    monkeypatch: pytest.MonkeyPatch, calls: dict[str, int], crash_at: int | None
) -> None:
    """Count (and crash at) every file-system step a commit makes."""
    for name in ("rename", "replace", "fsync", "mkdir"):
        real = getattr(os, name)

        def step(*a: Any, _real: Any = real, **k: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise Crash
            return _real(*a, **k)

        monkeypatch.setattr(os, name, step)


def test_a_crash_between_any_two_commit_steps_leaves_old_or_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = small_catalogue(["satu", "dua"]), small_catalogue(["satu", "dua", "tiga"])
    probe = tmp_path / "probe"
    save_snapshot(probe, old, {})
    n = steps_of_a_save(probe, new, monkeypatch)
    assert n >= 6  # mkdir, fsyncs, rename, CURRENT write, replace, directory fsync
    for k in range(1, n + 1):
        root = tmp_path / f"r{k}"
        save_snapshot(root, old, {})
        calls = {"n": 0}
        _instrument(monkeypatch, calls, crash_at=k)
        with pytest.raises(Crash):
            save_snapshot(root, new, {})
        monkeypatch.undo()
        back = load_snapshot(root, {}, device="cpu")  # the next start
        assert back is not None, k
        assert back.posting_id in (old.posting_id, new.posting_id), (k, back.posting_id)
        save_snapshot(root, new, {})  # and the next write works
        again = load_snapshot(root, {}, device="cpu")
        assert again is not None and again.posting_id == new.posting_id, k
