"""Frozen training configs; each is saved as JSON next to the artifact it produced."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by image and text training.

    Attributes:
        epochs: passes over the training rows.
        batch_size: rows per step.
        lr: learning rate of the model (backbone/encoder/projection).
        head_lr: learning rate of the margin head (higher: it starts from random).
        weight_decay: AdamW weight decay.
        warmup: fraction of all steps with a linear warm-up, then cosine decay to 0.
        grad_clip: max gradient norm (0: off).
        head: "arcface" or "curricularface" (or "pair": a pair scorer's binary logit).
        scale, margin: the head's logit scale and angular margin.
        margin_warmup_epochs: grow the margin linearly from 0 over this many epochs.
        amp: mixed precision (bfloat16) on CUDA; ignored on CPU.
        compile: wrap the model in torch.compile.
        seed: for initialisation and shuffling.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    head_lr: float = 1e-2
    weight_decay: float = 1e-4
    warmup: float = 0.1
    grad_clip: float = 5.0
    head: Literal["arcface", "curricularface", "pair"] = "arcface"
    scale: float = 30.0
    margin: float = 0.5
    margin_warmup_epochs: int = 0
    amp: bool = True
    compile: bool = False
    seed: int = 0


@dataclass(frozen=True)
class TextModelConfig:
    """Text encoder to train.

    Attributes:
        base: a transformers model folder; "" means the packaged all-MiniLM-L6-v2.
        mode: "projection" trains a projection on the frozen encoder (fast on CPU: the
            encoder runs once); "top" fine-tunes the top `top_layers` transformer layers
            and the projection on cached states of the frozen layers below (BERT-like
            encoders; a CPU run fine-tunes the encoder at a fraction of the cost);
            "full" fine-tunes the whole encoder (GPU); "static" fine-tunes a static-text
            encoder's token table (`base` = its folder, from `pricematch compress static`)
            and a projection, exported as a static-text encoder (no ONNX).
        top_layers: layers trained in "top" mode.
        layer_lr_mult: learning rate of the pretrained layers relative to the projection's
            ("top" mode).
        dim: output embedding size (0 keeps the encoder's size, no projection).
        max_length: tokens per title.
        normalize_titles: train (and run) on `index.features.text.normalize_title` output
            (lower-case, HTML entities, numbers split from units).
    """

    base: str = ""
    mode: Literal["projection", "top", "full", "static"] = "top"
    top_layers: int = 1
    layer_lr_mult: float = 0.05
    dim: int = 512
    max_length: int = 64
    normalize_titles: bool = True


@dataclass(frozen=True)
class CrossConfig:
    """The cross-encoder pair scorer (`training.cross`): a transformer reading both titles.

    Attributes:
        base: a transformers model folder; "" means the packaged all-MiniLM-L6-v2.
        max_length: tokens per pair (both titles; the longer one is cut first).
        top_layers: transformer layers fine-tuned (on cached states of the frozen ones
            below, so a CPU epoch costs only these; every layer when the base has fewer).
            6, all of MiniLM's: alone on WDC computers' valid pairs F1 0.851 and AUC 0.961
            against 0.638 and 0.881 with 2 (docs/BENCHMARKS.md), at ~3.5x the fit's CPU.
        epochs, batch_size, lr: optimisation (lr of the classifier layer).
        layer_lr_mult: learning rate of the pretrained layers relative to lr.
        max_pairs: the most pairs one fit trains on (a random sample beyond).
        seed: initialisation, shuffling and the sample.
        mark_codes: bracket model codes before tokenizing (Ditto's marking;
            `index.features.text.mark_codes`), saved in the scorer's config.json.
        distinct_words: keep each word of a title once, punctuation dropped, before
            tokenizing (`index.features.text.distinct_words`), saved likewise. On by
            default: at 64 tokens it cuts the WDC computers train pairs that overflow from
            71% to 25%, and the cascade with it wins out of fold where the plain titles'
            does not (docs/BENCHMARKS.md, "The band derived from the stack").
    """

    base: str = ""
    max_length: int = 64
    top_layers: int = 6
    epochs: int = 4
    batch_size: int = 32
    lr: float = 2e-3
    layer_lr_mult: float = 0.05
    max_pairs: int = 20000
    seed: int = 0
    mark_codes: bool = False
    distinct_words: bool = True


@dataclass(frozen=True)
class ImageModelConfig:
    """Image encoder to train.

    Attributes:
        backbone: a timm model name; "tf_efficientnet_lite0" starts from the packaged
            ImageNet weights, others from timm's own weights where `pretrained` and
            available locally.
        pretrained: start from pretrained weights.
        pooling: "gem" (generalised mean) or "avg".
        dim: embedding size after the BatchNorm'd projection.
        input_size: (height, width).
        freeze_bn: keep the backbone's BatchNorm statistics (small batches, little data).
        backbone_lr_mult: the backbone learns at this fraction of the learning rate.
    """

    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    pooling: Literal["gem", "avg"] = "gem"
    dim: int = 512
    input_size: tuple[int, int] = (224, 224)
    freeze_bn: bool = True
    backbone_lr_mult: float = 0.1


@dataclass(frozen=True)
class CVConfig:
    """Cross-validation: GroupKFold on label_group, then a final fit on all rows."""

    folds: int = 5
    final_fit: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def save_config(obj: Any, path: Path) -> None:
    """Write a frozen config dataclass as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(obj), indent=2), encoding="utf-8")


def load_config(cls: type[T], path: Path) -> T:
    """Read a config dataclass written by `save_config` (lists become tuples)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return cls(**kw)


#: The default budget: about 30 CPU-minutes, what the 27k dev rows' search needs on 2 cores.
DEFAULT_BUDGET_MINUTES = 30.0
#: The default match cost cap, CPU seconds per 1,000 rows matched: a third of the reference
#: pipeline's (benchmarks/reference_pipeline.py: 226-258 CPU-s for the 27,206 dev rows, so
#: 8.3-9.5 per 1k; docs/BENCHMARKS.md). A part whose model matches slower is not kept.
DEFAULT_MATCH_CPU_PER_1K = 2.8


@dataclass(frozen=True)
class AutoConfig:
    """The search's settings (saved in the report)."""

    folds: int = 5
    budget_minutes: float = DEFAULT_BUDGET_MINUTES
    match_cpu_per_1k: float = DEFAULT_MATCH_CPU_PER_1K
    seed: int = 0
    device: str = "cpu"
    cross: CrossConfig = CrossConfig()


#: How a static-text encoder is fine-tuned (`train text --mode static`'s defaults, and the
#: fine-tuned candidate of `pricematch train`).
STATIC_TRAIN: dict[str, Any] = {"epochs": 10, "batch_size": 256, "lr": 1e-2, "head_lr": 3e-2}
#: How MiniLM's top layers are fine-tuned (`train text --mode top`'s defaults, and that
#: candidate of `pricematch train`).
TOP_TRAIN: dict[str, Any] = {"epochs": 5, "batch_size": 256, "lr": 2e-3, "head_lr": 3e-2}
