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

from index.errors import ImageError
from index.features.encoders import (
    ImageEncoderConfig,
    load_tokenizer,
    prepare_titles,
    preprocess_image,
    tokenize_texts,
)
from index.features.images import open_image
from index.progress import progress
from training.config import ImageModelConfig, TextModelConfig, TrainConfig
from training.export import (
    ExportResult,
    ImageEmbedder,
    TextEmbedder,
    check_parity,
    export_image_encoder,
    export_text_encoder,
)
from training.models import (
    ImageNetwork,
    TopLayers,
    bert_layers,
    create_backbone,
    projection,
    run_layers,
)
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
        self._lower_states: tuple[torch.Tensor, torch.Tensor] | None = None

    def _tokens(self, idx: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        titles = [self.titles[i] for i in idx]
        feeds = tokenize_texts(self.tokenizer, titles, True, self.config.normalize_titles)
        return {k: torch.from_numpy(v) for k, v in feeds.items()}

    def _cache_path(self, kind: str) -> Path | None:
        """Disk cache file for features of all titles, keyed by titles, encoder and `kind`."""
        if self.cache_dir is None:
            return None
        import hashlib

        h = hashlib.sha256("\n".join(self.titles).encode())
        c = self.config
        h.update(f"{c.base}|{c.max_length}|{c.normalize_titles}".encode())
        return self.cache_dir / f"{kind}_{h.hexdigest()[:16]}.npy"

    def _encode_all(self, fn: Any, out: torch.Tensor, desc: str) -> torch.Tensor:
        """Fill `out[i]` with `fn(tokens)` for every title, in batches of similar length."""
        n = len(self.titles)
        order = np.argsort([len(t) for t in self.titles], kind="stable")
        starts = range(0, n, self.encoder_batch)
        with torch.no_grad():
            for s in progress(starts, desc=desc, disable=not self.show_progress):
                idx = order[s : s + self.encoder_batch]
                t = {k: v.to(self.device) for k, v in self._tokens(idx).items()}
                y = fn(**t).cpu()
                out[torch.from_numpy(idx), : y.shape[1]] = y.to(out.dtype)
        return out

    def pooled(self) -> torch.Tensor:
        """Mean-pooled frozen-encoder features of every title, (n, hidden), on CPU.

        Cached in memory, and on disk in `cache_dir` (keyed by the titles and the encoder),
        so a resumed or repeated run does not encode again.
        """
        if self._pooled is None:
            path = self._cache_path("text_features")
            if path is not None and path.is_file():
                self._pooled = torch.from_numpy(np.load(path))
            else:
                out = torch.zeros((len(self.titles), self.hidden))
                self._pooled = self._encode_all(self.base.pool, out, "encode titles")
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, self._pooled.numpy())
        return self._pooled

    def _split(self) -> int:
        """Index of the first trained layer in "top" mode."""
        layers = bert_layers(self.base.model)
        k = self.config.top_layers
        if not 1 <= k <= len(layers):
            raise ValueError(f"top_layers must be in 1..{len(layers)}, got {k}")
        return len(layers) - k

    def _lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states below the trained layers: (n, seq) ids, mask -> (n, seq, hidden)."""
        model: Any = self.base.model
        h = model.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return run_layers(h, attention_mask, bert_layers(model)[: self._split()])

    def lower_states(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ "top" mode inputs of every title: frozen hidden states below the trained layers
        (n, max_length, hidden) float16 and the attention mask (n, max_length) int64.

        Computed once (cached on disk like `pooled`); each epoch then runs only the top
        layers.
        """
        if self._lower_states is None:
            n, seq = len(self.titles), self.config.max_length
            mask = torch.zeros((n, seq), dtype=torch.int64)
            for s in range(0, n, 4096):
                idx = np.arange(s, min(n, s + 4096))
                m = self._tokens(idx)["attention_mask"]
                mask[s : s + len(idx), : m.shape[1]] = m
            path = self._cache_path(f"text_layer{self._split()}")
            if path is not None and path.is_file():
                hidden = torch.from_numpy(np.load(path))
            else:
                hidden = torch.zeros((n, seq, self.hidden), dtype=torch.float16)
                self._encode_all(self._lower, hidden, f"encode titles (layers 1-{self._split()})")
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, hidden.numpy())
            self._lower_states = (hidden, mask)
        return self._lower_states

    def _top_batches(self, rows: np.ndarray, size: int) -> tuple[list[Any], np.ndarray]:
        """Inference batches of `rows` in order of length, and that order."""
        hidden, mask = self.lower_states()
        order = np.argsort(mask[torch.from_numpy(rows)].sum(1).numpy(), kind="stable")
        sel = torch.from_numpy(rows[order])
        batches = [
            {"hidden": hidden[sel[s : s + size]], "mask": mask[sel[s : s + size]]}
            for s in range(0, len(rows), size)
        ]
        return batches, order

    def build(self) -> nn.Module:
        import copy

        if self.config.mode == "projection":
            return projection(self.hidden, self.dim).to(self.device)
        proj = projection(self.hidden, self.dim) if self.config.dim else None
        if self.config.mode == "top":
            top = copy.deepcopy(bert_layers(self.base.model)[self._split() :])
            return TopLayers(top, proj, self.config.layer_lr_mult).to(self.device)
        return TextEmbedder(copy.deepcopy(self.base.model), proj).to(self.device)

    def loader(self, rows: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Any:
        y = torch.from_numpy(labels.astype(np.int64))
        if self.config.mode == "projection":
            ds: Dataset[Any] = TensorDataset(self.pooled()[torch.from_numpy(rows)], y)
            return shuffled_loader(ds, config)
        if self.config.mode == "top":
            hidden, mask = self.lower_states()
            r = torch.from_numpy(rows)
            return LengthBatches(
                lambda b: ({"hidden": hidden[r[b]], "mask": mask[r[b]]}, y[b]),
                mask[r].sum(1).numpy(),
                config.batch_size,
                config.seed,
            )

        def collate(batch: list[tuple[int, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            idx = [i for i, _ in batch]
            return self._tokens(idx), torch.tensor([label for _, label in batch])

        pairs: Any = list(zip(rows.tolist(), labels.tolist(), strict=True))
        return shuffled_loader(pairs, config, collate_fn=collate)

    def embed(self, model: nn.Module, rows: np.ndarray) -> np.ndarray:
        if self.config.mode == "projection":
            x = self.pooled()[torch.from_numpy(rows)]
            return embed(model, [x[s : s + 4096] for s in range(0, len(rows), 4096)])
        if self.config.mode == "top":
            batches, order = self._top_batches(rows, 256)
            out = np.empty((len(rows), self.dim), np.float32)
            out[order] = embed(model, batches)
            return out
        batches = [
            self._tokens(rows[s : s + self.encoder_batch].tolist())
            for s in range(0, len(rows), self.encoder_batch)
        ]
        return embed(model, batches)

    def baseline(self, rows: np.ndarray) -> np.ndarray:
        if self.config.mode == "top" and self._pooled is None:
            # The frozen top layers over the cached states: the untrained encoder, at the
            # cost of the top layers only.
            frozen = TopLayers(bert_layers(self.base.model)[self._split() :], None)
            batches, order = self._top_batches(rows, 256)
            out = np.empty((len(rows), self.hidden), np.float32)
            out[order] = embed(frozen, batches)
            return out
        x = torch.nn.functional.normalize(self.pooled()[torch.from_numpy(rows)], dim=1)
        return x.numpy().astype(np.float32)

    def export(self, model: nn.Module, out_dir: Path) -> ExportResult:
        if self.config.mode == "projection":
            full = TextEmbedder(self.base.model, model)
        elif self.config.mode == "top":
            import copy

            assert isinstance(model, TopLayers)
            encoder = copy.deepcopy(self.base.model)
            layers = bert_layers(encoder)
            for i, layer in enumerate(model.layers):
                layers[self._split() + i] = layer
            full = TextEmbedder(encoder, model.projection)
        else:
            assert isinstance(model, TextEmbedder)
            full = model
        src = f"fine-tuned ({self.config.mode}) from {self.config.base or 'all-MiniLM-L6-v2'}"
        return export_text_encoder(
            full.eval(),
            self.tokenizer_json,
            out_dir,
            max_length=self.config.max_length,
            source=src,
            normalize_titles=self.config.normalize_titles,
        )


class StaticTextModel(nn.Module):
    """A static-text encoder in torch: the mean of a title's token vectors (EmbeddingBag,
    the table trained too), then an optional projection (Linear + BatchNorm)."""

    def __init__(self, table: torch.Tensor, proj: nn.Module | None) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag.from_pretrained(table, freeze=False, mode="mean")
        self.projection = proj

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        x = self.bag(ids, offsets)  # (b, d): a title without tokens is the zero vector
        return x if self.projection is None else self.projection(x)

    def table(self) -> torch.Tensor:
        """The exported token table (vocab, dim): the projection is affine, so it commutes
        with the mean and is folded into every row (eval mode: BatchNorm's running
        statistics)."""
        self.eval()
        with torch.no_grad():
            t = self.bag.weight
            if self.projection is None:
                return t.detach().clone()
            return torch.cat([self.projection(t[s : s + 8192]) for s in range(0, len(t), 8192)])


class StaticTextTask(Task):
    """Fine-tune a static-text encoder (`pricematch compress static`) with the same trainer:
    the titles tokenized once, batches of token ids; exported as a static-text folder."""

    modality = "text"

    def __init__(self, titles: Sequence[str], config: TextModelConfig, device: torch.device):
        from index.features.encoders import StaticTextEncoder, load_encoder

        if not config.base:
            raise ValueError("--mode static needs --base: a static-text encoder folder")
        enc = load_encoder(config.base, device="cpu")
        if not isinstance(enc, StaticTextEncoder):
            raise ValueError(f"--mode static: {config.base} is not a static-text encoder")
        self.source = enc
        self.config = config
        self.device = device
        self.dim = config.dim or enc.dim
        c = enc.config
        self.titles = [str(t) for t in titles]
        self.normalize = config.normalize_titles or c.normalize_titles  # as exported
        texts = prepare_titles(self.titles, c.lowercase, self.normalize)
        encs = enc.tokenizer.encode_batch(texts, add_special_tokens=False)
        self.tokens = [torch.tensor(e.ids, dtype=torch.int64) for e in encs]

    def _batch(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        parts = [self.tokens[i] for i in rows]
        lens = torch.tensor([len(p) for p in parts], dtype=torch.int64)
        offsets = torch.cumsum(lens, 0) - lens
        ids = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        return {"ids": ids, "offsets": offsets}

    def build(self) -> nn.Module:
        table = torch.from_numpy(self.source.table.copy())
        proj = projection(self.source.dim, self.dim) if self.config.dim else None
        return StaticTextModel(table, proj).to(self.device)

    def loader(self, rows: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Any:
        pairs: Any = list(zip(rows.tolist(), labels.tolist(), strict=True))

        def collate(batch: list[tuple[int, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            return self._batch([i for i, _ in batch]), torch.tensor([y for _, y in batch])

        return shuffled_loader(pairs, config, collate_fn=collate)

    def embed(self, model: nn.Module, rows: np.ndarray) -> np.ndarray:
        batches = [self._batch(rows[s : s + 4096].tolist()) for s in range(0, len(rows), 4096)]
        return embed(model, batches)

    def baseline(self, rows: np.ndarray) -> np.ndarray:
        return self.embed(StaticTextModel(torch.from_numpy(self.source.table.copy()), None), rows)

    def export(self, model: nn.Module, out_dir: Path) -> ExportResult:
        """A static-text folder: the trained table with the projection folded in, checked
        by encoding titles with the exported encoder against the trained model."""
        import shutil

        from index.features.encoders import StaticTextEncoderConfig, load_encoder

        assert isinstance(model, StaticTextModel)
        out_dir.mkdir(parents=True, exist_ok=True)
        table = model.table().cpu().numpy().astype(np.float32)  # (vocab, dim)
        np.save(out_dir / "embeddings.npy", table)
        src = self.source
        shutil.copyfile(src.folder / src.config.tokenizer, out_dir / "tokenizer.json")
        cfg = StaticTextEncoderConfig(
            dim=int(table.shape[1]),
            max_length=src.config.max_length,
            lowercase=src.config.lowercase,
            normalize_titles=self.normalize,
            source=f"fine-tuned (static) from {src.config.source or src.folder}",
        )
        (out_dir / "config.json").write_text(cfg.model_dump_json(indent=2), encoding="utf-8")
        rows = np.arange(min(64, len(self.titles)))
        want = self.embed(model, rows)
        got = load_encoder(out_dir, device="cpu").encode([self.titles[i] for i in rows])
        diff = float(np.abs(got - want).max()) if len(rows) else 0.0
        return check_parity(out_dir, diff, len(rows), int(table.shape[1]))


class LengthBatches:
    """Training batches of rows of similar length, reshuffled every epoch.

    Rows are sorted by length plus noise and cut into batches, whose order is shuffled, so
    a batch pads to little more than its own longest row.

    Args:
        make: maps a batch's positions (b,) into `lengths` to `(inputs, labels)`.
        lengths: (n,) tokens per row.
    """

    def __init__(
        self, make: Any, lengths: np.ndarray, batch_size: int, seed: int, noise: float = 4.0
    ) -> None:
        self.make, self.lengths, self.batch_size = make, lengths, batch_size
        self.seed, self.noise, self.epoch = seed, noise, 0

    def __len__(self) -> int:
        return max(1, -(-len(self.lengths) // self.batch_size))

    def __iter__(self) -> Any:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        key = self.lengths + rng.uniform(0, self.noise, len(self.lengths))
        batches = np.array_split(np.argsort(key, kind="stable"), len(self))  # all rows used
        for b in rng.permutation(len(batches)):
            yield self.make(torch.from_numpy(np.sort(batches[b])))


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
