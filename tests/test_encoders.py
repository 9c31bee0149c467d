import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.errors import EncoderError, ImageError
from index.features import encoders as E
from index.features import images


def test_registry_lists_valid_names(model_dir: Path) -> None:
    assert {"onnx-text", "onnx-image"} <= set(E.list_encoders())
    with pytest.raises(EncoderError, match="unknown encoder 'clip'.*onnx-image, onnx-text"):
        E.create_encoder("clip", model_dir / "text")
    enc = E.create_encoder("onnx-text", model_dir / "text", device="cpu")
    assert enc.dim == 16 and enc.providers == ["CPUExecutionProvider"]


def test_text_encoder_is_normalised_and_batch_independent(model_dir: Path) -> None:
    enc = E.load_encoder(model_dir / "text")
    titles = ["wardah lipstick matte", "mie goreng 2 kg ready", "kabel data usb", "sabun"]
    x = enc.encode(titles, batch_size=3)
    assert x.shape == (4, 16) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # padding inside a batch must not change an embedding
    single = np.vstack([enc.encode([t]) for t in titles])
    np.testing.assert_allclose(x, single, atol=1e-5)


def test_preprocessing_comes_from_the_config(tmp_path: Path, model_dir: Path) -> None:
    import shutil

    folder = tmp_path / "img"
    shutil.copytree(model_dir / "image", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["mean"], cfg["std"] = [0, 0, 0], [255, 255, 255]
    (folder / "config.json").write_text(json.dumps(cfg))
    enc = E.load_encoder(folder)
    x = enc.preprocess(Image.new("RGB", (10, 20), (255, 0, 51)))  # type: ignore[attr-defined]
    assert x.shape == (3, 32, 32)
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_title_normalisation_comes_from_the_config(tmp_path: Path, model_dir: Path) -> None:
    import shutil

    folder = tmp_path / "text"
    shutil.copytree(model_dir / "text", folder)
    plain = E.load_encoder(folder)
    a, b = "mie goreng 2kg", "MIE goreng 2 kg"
    assert not np.allclose(plain.encode([a]), plain.encode([b]), atol=1e-3)  # "2kg" unknown
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "normalize_titles": True}))
    norm = E.load_encoder(folder)
    np.testing.assert_allclose(norm.encode([a]), norm.encode([b]), atol=1e-6)


def test_broken_artifacts(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="no config.json"):
        E.load_encoder(tmp_path)
    (tmp_path / "config.json").write_text('{"encoder": "onnx-image", "dim": 4}')
    with pytest.raises(EncoderError, match="ONNX model not found"):
        E.load_encoder(tmp_path)


def test_cuda_request_without_cuda_is_clear() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA present")
    with pytest.raises(EncoderError, match="no CUDAExecutionProvider"):
        E.onnx_providers("cuda")
    assert E.onnx_providers("auto") == ["CPUExecutionProvider"]


def test_open_image_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        images.open_image(tmp_path / "none.jpg")
    with pytest.raises(ImageError, match="not a readable image"):
        images.open_image(b"hello")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    truncated = buf.getvalue()[:60]
    with pytest.raises(ImageError):
        images.open_image(truncated)
    assert images.open_image(buf.getvalue()).size == (64, 64)


def test_decompression_bomb_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    Image.new("L", (300, 300)).save(buf, format="PNG")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageError, match="300x300 pixels is over the 10,000-pixel limit"):
        images.open_image(buf.getvalue())

    def png(w: int, h: int) -> bytes:
        b = io.BytesIO()
        Image.new("L", (w, h)).save(b, format="PNG")
        return b.getvalue()

    assert images.open_image(png(100, 100)).size == (100, 100)  # exactly at the limit: kept
    with pytest.raises(ImageError, match="100x101 pixels"):
        images.open_image(png(100, 101))


def test_documented_pixel_limit_and_messages_without_reprs() -> None:
    assert images.MAX_IMAGE_PIXELS == 64_000_000
    assert Image.MAX_IMAGE_PIXELS == 64_000_000  # PIL's own guard refuses at twice this
    with pytest.raises(ImageError) as e:
        images.open_image(b"hello")
    assert "0x" not in str(e.value) and "<_io" not in str(e.value)
    assert str(e.value) == "<bytes>: not a readable image (unknown image format)"
