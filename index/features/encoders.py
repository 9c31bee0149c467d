"""Run-time encoders: ONNX models behind one `Encoder` interface and a registry.

An encoder artifact is a folder::

    config.json   {"encoder": "onnx-text" | "onnx-image" | "static-text", "dim": 384, ...}
    model.onnx    graph whose single output is an (n, dim) float32 embedding
    tokenizer.json  (text encoders only, a Hugging Face `tokenizers` file)
    embeddings.npy  (static-text only: one (vocab, dim) vector per token, no ONNX)

Preprocessing settings (input size, mean/std, max length) travel in `config.json`;
callers never hard-code them. `load_encoder(folder)` reads the config and builds the
registered class; `create_encoder(name, folder)` does the same by registry name.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from index.errors import EncoderError
from index.features.images import ImageInput, open_image
from index.features.text import normalize_title
from index.progress import progress
from index.search.knn import l2_normalize

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


class TextEncoderConfig(BaseModel):
    """`config.json` of a text encoder artifact."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    encoder: Literal["onnx-text"] = "onnx-text"
    dim: int = Field(gt=0)
    max_length: int = Field(default=64, gt=0)
    tokenizer: str = "tokenizer.json"
    onnx: str = "model.onnx"
    pooling: Literal["mean", "cls"] = "mean"
    normalized: bool = True
    lowercase: bool = True
    # Title normalisation before tokenizing (`index.features.text.normalize_title`: lower-case,
    # HTML entities, numbers split from units); trained encoders set it.
    normalize_titles: bool = False
    source: str = ""


class StaticTextEncoderConfig(BaseModel):
    """`config.json` of a static-embedding text encoder: a title's embedding is the mean of
    its tokens' rows of `embeddings` (special tokens left out), L2-normalised."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    encoder: Literal["static-text"] = "static-text"
    dim: int = Field(gt=0)
    max_length: int = Field(default=64, gt=0)
    tokenizer: str = "tokenizer.json"
    embeddings: str = "embeddings.npy"
    lowercase: bool = True
    normalize_titles: bool = False
    source: str = ""


class ImageEncoderConfig(BaseModel):
    """`config.json` of an image encoder artifact. mean/std are in 0..255 pixel units."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    encoder: Literal["onnx-image"] = "onnx-image"
    dim: int = Field(gt=0)
    input_size: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    resize: Literal["squash", "center_crop"] = "squash"
    onnx: str = "model.onnx"
    normalized: bool = True
    source: str = ""


def onnx_providers(device: Device = "auto") -> list[str]:
    """ONNX Runtime execution providers for `device`; CUDA only where it is available.

    Args:
        device: "auto" picks CUDA when the installed onnxruntime offers it, "cpu" forces
            CPU, "cuda" requires CUDA and fails clearly without it.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise EncoderError(
            "device 'cuda' requested but onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install the [gpu] extra or use device 'cpu'"
        )
    if device != "cpu" and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(path: Path, device: Device) -> Any:
    """An ONNX Runtime session of `path` on `device` (`onnx_providers`)."""
    import onnxruntime as ort

    if not path.is_file():
        raise EncoderError(f"ONNX model not found: {path}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=onnx_providers(device))


class Encoder(ABC):
    """Maps inputs to L2-normalised float32 embeddings of shape (n, dim)."""

    modality: ClassVar[str]
    dim: int
    folder: Path

    @abstractmethod
    def encode(
        self, items: Sequence[Any], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Embed `items` (titles or images) into an (n, dim) float32 array."""

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    _session: Any


_REGISTRY: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator adding an encoder class to the registry under `name`."""

    def wrap(cls: type[Encoder]) -> type[Encoder]:
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_encoders() -> list[str]:
    return sorted(_REGISTRY)


def create_encoder(name: str, folder: str | Path, device: Device = "auto") -> Encoder:
    """Build the registered encoder `name` from an artifact folder.

    Raises:
        EncoderError: unknown name (the message lists the valid ones) or a broken folder.
    """
    if name not in _REGISTRY:
        raise EncoderError(f"unknown encoder {name!r}; valid names: {', '.join(list_encoders())}")
    return _REGISTRY[name](Path(folder), device=device)


def read_encoder_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise EncoderError(f"encoder folder {folder} has no config.json")
    try:
        cfg: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EncoderError(f"{path}: invalid JSON ({e})") from e
    if "encoder" not in cfg:
        raise EncoderError(f"{path}: missing key 'encoder'; valid: {', '.join(list_encoders())}")
    return cfg


def load_encoder(folder: str | Path, device: Device = "auto") -> Encoder:
    """Load an encoder artifact folder, dispatching on its config's `encoder` name."""
    return create_encoder(read_encoder_config(folder)["encoder"], folder, device=device)


def load_tokenizer(path: Path, max_length: int) -> Any:
    """A `tokenizers.Tokenizer` truncating at `max_length`, unpadded (batches pad themselves)."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise EncoderError(f"tokenizer not found: {path}")
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length)
    tok.no_padding()
    return tok


def prepare_titles(texts: Sequence[str], lowercase: bool, normalize: bool = False) -> list[str]:
    """Titles as a text encoder tokenizes them: `normalize_title` first when `normalize`
    (it lower-cases too), then lower-cased when `lowercase`. The one place for it."""
    out = ["" if t is None else str(t) for t in texts]
    if normalize:
        out = [normalize_title(t) for t in out]
    return [t.lower() for t in out] if lowercase else out


def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], lowercase: bool, normalize: bool = False
) -> dict[str, np.ndarray]:
    """Tokenize a batch, padded to its longest member: `input_ids`, `attention_mask` (n, seq).

    The one tokenization used at run time and in training. `normalize` applies
    `index.features.text.normalize_title` first (which lower-cases too).
    """
    encs = tokenizer.encode_batch(prepare_titles(texts, lowercase, normalize))
    seq = max(1, max((len(e.ids) for e in encs), default=1))
    ids = np.zeros((len(encs), seq), dtype=np.int64)
    mask = np.zeros((len(encs), seq), dtype=np.int64)
    for r, e in enumerate(encs):
        ids[r, : len(e.ids)] = e.ids
        mask[r, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def preprocess_image(img: Image.Image, config: ImageEncoderConfig) -> np.ndarray:
    """RGB image -> (3, H, W) float32, resized and normalised as `config` says.

    The one preprocessing used at run time and in training (validation side).
    """
    h, w = config.input_size
    if config.resize == "center_crop":
        s = min(img.size)
        left, top = (img.width - s) // 2, (img.height - s) // 2
        img = img.crop((left, top, left + s, top + s))
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    mean, std = np.array(config.mean, np.float32), np.array(config.std, np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1), dtype=np.float32)


@register_encoder("onnx-text")
class OnnxTextEncoder(Encoder):
    """Transformer encoder in ONNX: input_ids, attention_mask[, token_type_ids] -> (n, dim)."""

    modality = "text"

    def __init__(self, folder: Path, device: Device = "auto") -> None:
        self.folder = folder
        self.config = TextEncoderConfig.model_validate(read_encoder_config(folder))
        self.dim = self.config.dim
        self.tokenizer = load_tokenizer(folder / self.config.tokenizer, self.config.max_length)
        self._session = onnx_session(folder / self.config.onnx, device)
        self._inputs = {i.name for i in self._session.get_inputs()}

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize a batch, padded to its longest member: arrays of shape (n, seq)."""
        c = self.config
        return self._typed(tokenize_texts(self.tokenizer, texts, c.lowercase, c.normalize_titles))

    def _typed(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`feeds` plus all-zero token_type_ids where the graph takes them."""
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return feeds

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        """The model's pooled output for token ids (n, seq), all attended: (n, dim), not
        normalised (`training.compress.distill_static` embeds single tokens with it)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        feeds = self._typed({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        (emb,) = self._session.run(None, feeds)  # (n, dim)
        return np.asarray(emb, np.float32)

    def encode(
        self, items: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        texts = ["" if t is None else str(t) for t in items]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sort by length so each batch pads little; results go back to input order.
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        for s in progress(starts, desc="text encoder", unit="batch", disable=not show_progress):
            idx = order[s : s + batch_size]
            feeds = self.tokenize([texts[i] for i in idx])
            (emb,) = self._session.run(None, feeds)  # (b, dim)
            out[idx] = emb
        return l2_normalize(out)


@register_encoder("static-text")
class StaticTextEncoder(Encoder):
    """Static token embeddings (model2vec-style, `training.compress.distill_static`): the
    mean of a title's token vectors, in numpy; no ONNX session, the same on CPU and GPU."""

    modality = "text"

    def __init__(self, folder: Path, device: Device = "auto") -> None:
        self.folder = folder
        self.config = StaticTextEncoderConfig.model_validate(read_encoder_config(folder))
        self.dim = self.config.dim
        self.tokenizer = load_tokenizer(folder / self.config.tokenizer, self.config.max_length)
        path = folder / self.config.embeddings
        if not path.is_file():
            raise EncoderError(f"static embeddings not found: {path}")
        table = np.load(path, allow_pickle=False)
        if table.ndim != 2 or table.shape[1] != self.dim:
            raise EncoderError(f"{path}: shape {table.shape}, config dim {self.dim}")
        if table.shape[0] < self.tokenizer.get_vocab_size():
            raise EncoderError(
                f"{path}: {table.shape[0]} rows for a vocabulary of "
                f"{self.tokenizer.get_vocab_size()} tokens"
            )
        self.table = np.ascontiguousarray(table, dtype=np.float32)  # (vocab, dim)

    @property
    def providers(self) -> list[str]:
        return ["numpy"]

    def encode(
        self, items: Sequence[str], batch_size: int = 4096, show_progress: bool = False
    ) -> np.ndarray:
        texts = list(items)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), max(1, batch_size))
        for s in progress(starts, desc="text encoder", unit="batch", disable=not show_progress):
            toks = self.token_ids(texts[s : s + batch_size])
            lens = np.array([len(t) for t in toks], np.int64)  # (b,)
            if not lens.sum():
                continue
            ids = np.concatenate([t for t in toks if t]).astype(np.int64)  # (tokens,)
            nz = lens > 0
            first = (np.cumsum(lens) - lens)[nz]  # where each non-empty title's tokens start
            sums = np.add.reduceat(self.table[ids], first, axis=0)  # (non-empty, dim)
            out[s : s + len(toks)][nz] = sums / lens[nz, None]
        return l2_normalize(out)

    def token_ids(self, titles: Sequence[str]) -> list[list[int]]:
        """Each title's token ids as this encoder averages them (special tokens left out)."""
        c = self.config
        texts = prepare_titles(titles, c.lowercase, c.normalize_titles)
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


@register_encoder("onnx-image")
class OnnxImageEncoder(Encoder):
    """CNN image encoder exported to ONNX (input NCHW float32, normalised per config)."""

    modality = "image"

    def __init__(self, folder: Path, device: Device = "auto") -> None:
        self.folder = folder
        self.config = ImageEncoderConfig.model_validate(read_encoder_config(folder))
        self.dim = self.config.dim
        self._session = onnx_session(folder / self.config.onnx, device)
        self._input = self._session.get_inputs()[0].name

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB image -> (3, H, W) float32 normalised as the artifact's config says."""
        return preprocess_image(img, self.config)

    def encode(
        self, items: Sequence[ImageInput], batch_size: int = 32, show_progress: bool = False
    ) -> np.ndarray:
        """Embed images (paths, bytes or PIL images). Unreadable ones raise `ImageError`."""
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        starts = range(0, len(items), batch_size)
        for s in progress(starts, desc="image encoder", unit="batch", disable=not show_progress):
            xb = np.stack([self.preprocess(open_image(i)) for i in items[s : s + batch_size]])
            (emb,) = self._session.run(None, {self._input: xb})  # (b, dim)
            out[s : s + len(xb)] = emb
        return l2_normalize(out)
