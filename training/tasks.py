"""What differs between image and text training, behind one small interface.

A `Task` builds a fresh model, gives a training loader for some rows, embeds rows with a
model, and exports a trained model to an ONNX artifact. The trainer and the
cross-validation recipe only see this interface.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from index.encoders import (
    ImageEncoderConfig,
    load_tokenizer,
    open_image,
    preprocess_image,
    tokenize_texts,
)
from index.errors import ImageError
from index.progress import progress
from training.config import ImageModelConfig, TextModelConfig, TrainConfig
from training.export import (
    ExportResult,
    ImageEmbedder,
    TextEmbedder,
    export_image_encoder,
    export_text_encoder,
)
from training.models import ImageNetwork, create_backbone, projection
from training.trainer import embed

log = logging.getLogger(__name__)


class Task(ABC):
    """One modality's model, data and export."""

    modality: str
    dim: int

    @abstractmethod
    def build(self) -> nn.Module:
        """A fresh trainable model on the task's device."""

    @abstractmethod
    def loader(self, rows: np.ndarray, labels: np.ndarray, config: TrainConfig) -> DataLoader:
        """Shuffled training batches `(inputs, labels)` of `rows`."""

    @abstractmethod
    def embed(self, model: nn.Module, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) L2-normalised embeddings of `rows`."""

    @abstractmethod
    def export(self, model: nn.Module, out_dir: Path) -> ExportResult:
        """Write the trained encoder (head stripped) as an ONNX artifact folder."""

    def baseline(self, rows: np.ndarray) -> np.ndarray | None:
        """Embeddings of the untrained starting point, where cheap (for comparisons)."""
        return None


def shuffled_loader(ds: Any, config: TrainConfig, **kw: Any) -> DataLoader:
    """Seeded shuffled batches; the last partial batch dropped (BatchNorm needs > 1 row)."""
    return DataLoader(
        ds,
        config.batch_size,
        shuffle=True,
        drop_last=len(ds) > config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
        **kw,
    )


class TextTask(Task):
    """Text encoder: frozen encoder + trained projection, or full fine-tuning.

    In "projection" mode the encoder's pooled features are computed once for all rows and
    the trainer only sees them, so a CV on CPU takes minutes.
    """

    modality = "text"

    def __init__(
        self,
        titles: Sequence[str],
        config: TextModelConfig,
        device: torch.device,
        encoder_batch: int = 128,
        show_progress: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        from training.export import load_minilm

        self.cache_dir = cache_dir
        self.titles = [str(t) for t in titles]
        self.config = config
        self.device = device
        self.show_progress = show_progress
        if config.base:
            from transformers import AutoModel

            base = TextEmbedder(AutoModel.from_pretrained(config.base, local_files_only=True))
            self.tokenizer_json = Path(config.base) / "tokenizer.json"
        else:
            base, self.tokenizer_json = load_minilm()
        self.base = base.to(device).eval()
        self.tokenizer = load_tokenizer(self.tokenizer_json, config.max_length)
        hf_config: Any = getattr(self.base.model, "config")  # noqa: B009
        self.hidden = int(hf_config.hidden_size)
        self.dim = config.dim or self.hidden
        self.encoder_batch = encoder_batch
        self._pooled: torch.Tensor | None = None

    def _tokens(self, idx: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        feeds = tokenize_texts(self.tokenizer, [self.titles[i] for i in idx], lowercase=True)
        return {k: torch.from_numpy(v) for k, v in feeds.items()}

    def pooled(self) -> torch.Tensor:
        """Mean-pooled frozen-encoder features of every title, (n, hidden), on CPU.

        Cached in memory, and on disk in `cache_dir` (keyed by the titles and the encoder),
        so a resumed or repeated run does not encode again.
        """
        path = None
        if self._pooled is None and self.cache_dir is not None:
            import hashlib

            h = hashlib.sha256("\n".join(self.titles).encode())
            h.update(f"{self.config.base}|{self.config.max_length}".encode())
            path = self.cache_dir / f"text_features_{h.hexdigest()[:16]}.npy"
            if path.is_file():
                self._pooled = torch.from_numpy(np.load(path))
        if self._pooled is None:
            n = len(self.titles)
            out = torch.zeros((n, self.hidden))
            order = np.argsort([len(t) for t in self.titles], kind="stable")
            starts = range(0, n, self.encoder_batch)
            with torch.no_grad():
                for s in progress(starts, desc="encode titles", disable=not self.show_progress):
                    idx = order[s : s + self.encoder_batch]
                    t = {k: v.to(self.device) for k, v in self._tokens(idx).items()}
                    out[torch.from_numpy(idx)] = self.base.pool(**t).float().cpu()
            self._pooled = out
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, out.numpy())
        return self._pooled

    def build(self) -> nn.Module:
        if self.config.mode == "projection":
            return projection(self.hidden, self.dim).to(self.device)
        import copy

        proj = projection(self.hidden, self.dim) if self.config.dim else None
        return TextEmbedder(copy.deepcopy(self.base.model), proj).to(self.device)

    def loader(self, rows: np.ndarray, labels: np.ndarray, config: TrainConfig) -> DataLoader:
        y = torch.from_numpy(labels.astype(np.int64))
        if self.config.mode == "projection":
            ds: Dataset[Any] = TensorDataset(self.pooled()[torch.from_numpy(rows)], y)
            return shuffled_loader(ds, config)

        def collate(batch: list[tuple[int, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            idx = [i for i, _ in batch]
            return self._tokens(idx), torch.tensor([label for _, label in batch])

        pairs: Any = list(zip(rows.tolist(), labels.tolist(), strict=True))
        return shuffled_loader(pairs, config, collate_fn=collate)

    def embed(self, model: nn.Module, rows: np.ndarray) -> np.ndarray:
        if self.config.mode == "projection":
            x = self.pooled()[torch.from_numpy(rows)]
            return embed(model, [x[s : s + 4096] for s in range(0, len(rows), 4096)])
        batches = [
            self._tokens(rows[s : s + self.encoder_batch].tolist())
            for s in range(0, len(rows), self.encoder_batch)
        ]
        return embed(model, batches)

    def baseline(self, rows: np.ndarray) -> np.ndarray:
        x = torch.nn.functional.normalize(self.pooled()[torch.from_numpy(rows)], dim=1)
        return x.numpy().astype(np.float32)

    def export(self, model: nn.Module, out_dir: Path) -> ExportResult:
        if self.config.mode == "projection":
            full = TextEmbedder(self.base.model, model)
        else:
            assert isinstance(model, TextEmbedder)
            full = model
        src = f"fine-tuned ({self.config.mode}) from {self.config.base or 'all-MiniLM-L6-v2'}"
        return export_text_encoder(
            full.eval(), self.tokenizer_json, out_dir, max_length=self.config.max_length, source=src
        )


def augment(img: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Training augmentation: random resized crop, flip, rotation, colour jitter."""
    from PIL import ImageEnhance

    w, h = img.size
    s = float(rng.uniform(0.6, 1.0))
    cw, ch = max(1, int(w * np.sqrt(s))), max(1, int(h * np.sqrt(s)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.rotate(float(rng.uniform(-15, 15)))
    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enh(img).enhance(float(rng.uniform(0.75, 1.25)))
    return img.resize((size[1], size[0]), Image.Resampling.BILINEAR)


class _ImageRows(Dataset[Any]):
    def __init__(
        self, task: ImageTask, rows: np.ndarray, labels: np.ndarray | None, seed: int
    ) -> None:
        self.task, self.rows, self.labels, self.seed = task, rows, labels, seed
        self.calls = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        img = self.task.image(int(self.rows[i]))
        if self.labels is None:
            return torch.from_numpy(preprocess_image(img, self.task.artifact))
        self.calls += 1
        rng = np.random.default_rng((self.seed, int(self.rows[i]), self.calls))
        img = augment(img, self.task.artifact.input_size, rng)
        return torch.from_numpy(preprocess_image(img, self.task.artifact)), int(self.labels[i])


class ImageTask(Task):
    """Image encoder: timm backbone + GeM + BatchNorm'd embedding, fully fine-tuned."""

    modality = "image"

    def __init__(
        self,
        images: Sequence[str],
        config: ImageModelConfig,
        device: torch.device,
        workers: int = 0,
        show_progress: bool = False,
    ) -> None:
        self.images = list(images)
        self.config = config
        self.device = device
        self.dim = config.dim
        self.workers = workers
        self.show_progress = show_progress
        _, _, mean, std = create_backbone(config)  # the backbone's input normalisation
        self.artifact = ImageEncoderConfig(
            dim=config.dim,
            input_size=config.input_size,
            mean=mean,
            std=std,
        )
        self._cache: dict[int, Image.Image] = {}

    def image(self, row: int) -> Image.Image:
        """Row `row`'s image (decoded once, kept small in memory). Raises `ImageError`."""
        if row not in self._cache:
            img = open_image(self.images[row])
            h, w = self.artifact.input_size
            img.thumbnail((2 * w, 2 * h))
            self._cache[row] = img
        return self._cache[row]

    def readable(self) -> np.ndarray:
        """(n,) bool: rows whose image can be read (others are left out of training)."""
        ok = np.zeros(len(self.images), bool)
        for i in range(len(self.images)):
            try:
                self.image(i)
                ok[i] = True
            except ImageError as e:
                log.warning("skipping row %d: %s", i, e)
        return ok

    def build(self) -> nn.Module:
        backbone, features, _, _ = create_backbone(self.config)
        return ImageNetwork(backbone, features, self.config).to(self.device)

    def loader(self, rows: np.ndarray, labels: np.ndarray, config: TrainConfig) -> DataLoader:
        ds = _ImageRows(self, rows, labels, config.seed)
        return shuffled_loader(ds, config, num_workers=self.workers)

    def embed(self, model: nn.Module, rows: np.ndarray) -> np.ndarray:
        dl = DataLoader(_ImageRows(self, rows, None, 0), batch_size=32, num_workers=self.workers)
        return embed(model, dl)

    def baseline(self, rows: np.ndarray) -> np.ndarray:
        backbone, _, _, _ = create_backbone(self.config)
        net = ImageEmbedder(backbone.to(self.device))
        dl = DataLoader(_ImageRows(self, rows, None, 0), batch_size=32, num_workers=self.workers)
        return embed(net, dl)

    def export(self, model: nn.Module, out_dir: Path) -> ExportResult:
        a = self.artifact
        parity = [self.image(i) for i in range(min(4, len(self.images)))]
        return export_image_encoder(
            ImageEmbedder(model).eval(),
            out_dir,
            input_size=a.input_size,
            mean=a.mean,
            std=a.std,
            source=f"fine-tuned {self.config.backbone} ({self.config.pooling})",
            parity_images=parity,
        )
