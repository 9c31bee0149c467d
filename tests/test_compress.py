"""Compressed text encoders (issue 14): the `static-text` encoder kind, its distillation
from an ONNX encoder, int8 quantisation, and `pricematch compress` with its parity report.

The fake ONNX text model (tests/fakes.py) mean-pools rows of a seeded random table and its
tokenizer adds no special tokens, so the distilled table must be that table exactly and the
static encoder must give the ONNX encoder's embeddings: an oracle independent of the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index.errors import EncoderError
from index.features.encoders import StaticTextEncoder, create_encoder, load_encoder
from index.search.knn import l2_normalize
from tests.fakes import WORDS, make_text_encoder

TITLES = ["wardah lipstick matte", "kabel data usb 1 m", "", "zzz unknown", "kaos polos kaos"]


def seed_table(dim: int = 16, seed: int = 0) -> np.ndarray:
    """The fake model's embedding table, rebuilt as tests/fakes.py draws it."""
    return np.random.default_rng(seed).normal(size=(len(WORDS) + 11, dim)).astype(np.float32)


@pytest.fixture
def onnx_text(tmp_path: Path) -> Path:
    return make_text_encoder(tmp_path / "src")


def test_static_distillation_of_the_fake_model_is_its_table(
    onnx_text: Path, tmp_path: Path
) -> None:
    from training.compress import distill_static

    out = distill_static(onnx_text, tmp_path / "static", batch_size=7)
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), seed_table(), atol=1e-6)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"] == "static-text" and cfg["dim"] == 16 and cfg["max_length"] == 32
    enc = load_encoder(out)
    assert isinstance(enc, StaticTextEncoder) and enc.providers == ["numpy"]
    got = enc.encode(TITLES, batch_size=2)  # batches cut across the titles
    want = load_encoder(onnx_text, device="cpu").encode(TITLES)
    np.testing.assert_allclose(got, want, atol=1e-5)
    t = seed_table()
    vocab = {w: i + 1 for i, w in enumerate(WORDS)}
    first = l2_normalize(t[[vocab["wardah"], vocab["lipstick"], vocab["matte"]]].mean(0)[None])
    np.testing.assert_allclose(got[0], first[0], atol=1e-5)
    assert not got[2].any()  # an empty title: no tokens, the zero vector
    kaos = l2_normalize(((2 * t[vocab["kaos"]] + t[vocab["polos"]]) / 3)[None])[0]
    np.testing.assert_allclose(got[4], kaos, atol=1e-5)  # a repeated token counts twice


def test_static_pca_and_sif_weights(onnx_text: Path, tmp_path: Path) -> None:
    from training.compress import SIF_A, distill_static

    pca = load_encoder(distill_static(onnx_text, tmp_path / "pca", dims=4))
    assert pca.dim == 4 and pca.encode(TITLES).shape == (5, 4)
    t = seed_table()
    centred = t - t.mean(0)
    var = np.linalg.svd(centred, compute_uv=False) ** 2
    table = np.load(tmp_path / "pca" / "embeddings.npy")
    np.testing.assert_allclose(
        np.sort(np.linalg.svd(table, compute_uv=False) ** 2)[::-1], var[:4], rtol=1e-3
    )  # the 4 largest components kept
    corpus = ["kaos kaos kaos polos", "kaos"]  # 'kaos' 4 of 5 tokens, 'polos' 1 of 5
    sif = np.load(distill_static(onnx_text, tmp_path / "sif", corpus=corpus) / "embeddings.npy")
    vocab = {w: i + 1 for i, w in enumerate(WORDS)}
    for word, p in (("kaos", 0.8), ("polos", 0.2), ("wardah", 0.0)):
        i = vocab[word]
        np.testing.assert_allclose(sif[i], t[i] * SIF_A / (SIF_A + p), rtol=1e-5)


def test_static_encoder_artifact_errors(onnx_text: Path, tmp_path: Path) -> None:
    from training.compress import distill_static

    out = distill_static(onnx_text, tmp_path / "s")
    with pytest.raises(EncoderError, match="static-text"):
        create_encoder("no-such", out)  # the message lists the valid names
    np.save(out / "embeddings.npy", np.zeros((5, 16), np.float32))
    with pytest.raises(EncoderError, match="5 rows for a vocabulary of 49"):
        load_encoder(out)
    np.save(out / "embeddings.npy", np.zeros((49, 8), np.float32))
    with pytest.raises(EncoderError, match=r"shape \(49, 8\), config dim 16"):
        load_encoder(out)
    (out / "embeddings.npy").unlink()
    with pytest.raises(EncoderError, match="static embeddings not found"):
        load_encoder(out)
    static = distill_static(onnx_text, tmp_path / "again")
    with pytest.raises(EncoderError, match="onnx-text encoder folder is needed"):
        distill_static(static, tmp_path / "x")  # only an ONNX encoder can be distilled


def test_int8_keeps_a_loadable_encoder_with_its_tokenizer(model_dir: Path, tmp_path: Path) -> None:
    from training.compress import quantize_int8

    out = quantize_int8(model_dir / "text", tmp_path / "q")
    enc = load_encoder(out, device="cpu")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"] == "onnx-text" and cfg["source"].startswith("int8 (MatMul")
    a = load_encoder(model_dir / "text", device="cpu").encode(TITLES)
    np.testing.assert_allclose(enc.encode(TITLES), a, atol=1e-5)  # no MatMul in the fake


def test_keeps_f1_boundary() -> None:
    from training.compress import F1_TOLERANCE, keeps_f1

    assert F1_TOLERANCE == 0.002
    assert keeps_f1(0.0) and keeps_f1(0.01) and keeps_f1(-0.002)
    assert keeps_f1(0.7438 - 0.7458)  # exactly 0.002 lost (float noise rounded off)
    assert not keeps_f1(-0.0021) and not keeps_f1(0.7437 - 0.7458)


def test_compress_cli_writes_the_parity_report_and_fails_on_an_f1_drop(
    onnx_text: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from index.cli.parser import main

    csv = str(synth / "listings.csv")
    out = tmp_path / "static"
    assert (
        main(["compress", "static", str(onnx_text), "--out", str(out), "--check", csv, "-q"]) == 0
    )
    rep = json.loads((out / "compression.json").read_text())
    assert rep["cosine"]["min"] > 0.9999  # the same embeddings as the fake ONNX model
    assert rep["f1"]["new"] == rep["f1"]["source"] and rep["within_tolerance"]
    assert rep["f1_delta"] == 0 and rep["titles_per_s"]["new"] > 0
    assert "F1 new   : text alone" in capsys.readouterr().out
    # One dimension keeps almost nothing: the fused F1 drops, the command says so and fails.
    bad = tmp_path / "bad"
    argv = ["compress", "static", str(onnx_text), "--out", str(bad), "--dims", "1", "-q"]
    assert main([*argv, "--check", csv]) == 1
    rep = json.loads((bad / "compression.json").read_text())
    assert rep["cosine"] is None and rep["f1_delta"] < -0.002 and not rep["within_tolerance"]
    assert "more than 0.002 lost" in capsys.readouterr().out
    assert main([*argv, "--check", csv, "--keep-anyway"]) == 0
    with pytest.raises(SystemExit):
        main(["compress", "int9", str(onnx_text), "--out", str(bad)])
    assert main(["compress", "int8", str(onnx_text), "--out", str(bad), "--dims", "4"]) == 2


def test_fp16_keeps_float32_io_and_the_embeddings(model_dir: Path, tmp_path: Path) -> None:
    import onnx

    from training.compress import convert_fp16

    out = convert_fp16(model_dir / "text", tmp_path / "h")
    graph = onnx.load(str(out / "model.onnx")).graph
    table = next(t for t in graph.initializer if t.name == "table")
    assert table.data_type == onnx.TensorProto.FLOAT16  # the weights are float16
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io float32
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"].startswith("fp16 of") and (out / "tokenizer.json").is_file()
    a = load_encoder(model_dir / "text", device="cpu").encode(TITLES)
    np.testing.assert_allclose(load_encoder(out, device="cpu").encode(TITLES), a, atol=2e-3)


def test_int8_becomes_the_text_encoder_only_within_the_f1_tolerance(
    model_dir: Path, synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import training.compress as compress
    from index.data.listings import read_catalogue

    cat = read_catalogue(synth / "listings.csv")
    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    rep = compress.adopt_int8(model, cat)  # the fake has no MatMul: same F1, adopted
    assert rep["adopted"] and rep["f1_delta"] == 0
    assert json.loads((model / "text" / "config.json").read_text())["source"].startswith("int8")
    assert (model / "text" / "compression.json").is_file() and (model / "text-fp32").is_dir()
    assert not (model / "text-int8").exists()
    # An F1 drop past the tolerance: text/ untouched, the int8 encoder left aside.
    model2 = tmp_path / "m2"
    shutil.copytree(model_dir, model2)
    real = compress.parity_report

    def losing(*a, **kw):  # type: ignore[no-untyped-def]
        r = real(*a, **kw)
        return {**r, "f1_delta": -0.0021, "within_tolerance": compress.keeps_f1(-0.0021)}

    monkeypatch.setattr(compress, "parity_report", losing)
    rep = compress.adopt_int8(model2, cat)
    assert not rep["adopted"] and (model2 / "text-int8" / "compression.json").is_file()
    assert json.loads((model2 / "text" / "config.json").read_text())["source"] == "tests.fakes"
    assert not (model2 / "text-fp32").exists()
