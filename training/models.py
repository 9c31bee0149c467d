"""Trainable encoders: a projection for frozen text features, and a timm image network.

Both end in an un-normalised (n, dim) embedding; the margin head and the exported graph
normalise it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ImageModelConfig

log = logging.getLogger(__name__)


def projection(in_dim: int, dim: int) -> nn.Module:
    """Linear then BatchNorm: the trained part on top of pooled encoder features."""
    return nn.Sequential(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim))


def bert_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-like transformers model (``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "embeddings"):
        raise ValueError(
            f"{type(model).__name__} is not BERT-like (embeddings + encoder.layer); "
            "use --mode full or --mode projection"
        )
    return layers


def run_layers(h: torch.Tensor, mask: torch.Tensor, layers: Iterable[nn.Module]) -> torch.Tensor:
    """BERT layers on (n, seq, hidden) states with the (n, seq) 0/1 attention mask."""
    additive = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
    for layer in layers:  # additive: (n, 1, 1, seq)
        out = layer(h, attention_mask=additive)
        h = out[0] if isinstance(out, tuple) else out
    return h


class TopLayers(nn.Module):
    """The top transformer layers of a text encoder, run on cached hidden states of the
    layer below them, then masked mean pooling and an optional projection.

    Trained in "top" mode: the frozen lower layers run once for all titles, so an epoch
    costs only the top layers. `training.tasks.TextTask.export` puts the trained layers
    back into the full encoder.
    """

    def __init__(
        self, layers: nn.ModuleList, projection: nn.Module | None, layer_lr_mult: float = 1.0
    ) -> None:
        super().__init__()
        self.layers = layers
        self.projection = projection
        self.layer_lr_mult = layer_lr_mult

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        """Optimizer groups: the pretrained layers at `layer_lr_mult * lr`, the projection at lr."""
        rest = list(self.projection.parameters()) if self.projection is not None else []
        return [
            {"params": list(self.layers.parameters()), "lr": lr * self.layer_lr_mult},
            {"params": rest, "lr": lr},
        ]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(n, seq, hidden) states and (n, seq) mask -> (n, dim), not normalised."""
        seq = max(1, int(mask.sum(dim=1).max()))  # drop the padding every row has
        h = hidden[:, :seq].float()  # (n, seq, hidden)
        m = mask[:, :seq].to(h.dtype)  # (n, seq)
        h = run_layers(h, m, self.layers)
        w = m.unsqueeze(-1)  # (n, seq, 1)
        x = (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)  # (n, hidden)
        return self.projection(x) if self.projection is not None else x


class GeM(nn.Module):
    """Generalised-mean pooling over H, W with a learnt exponent p: (n, c, h, w) -> (n, c)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(min=self.eps).pow(self.p)
        return F.adaptive_avg_pool2d(x, 1).pow(1.0 / self.p).flatten(1)


class ImageNetwork(nn.Module):
    """timm backbone (features) -> GeM or average pooling -> Linear -> BatchNorm -> (n, dim).

    `num_classes = 0` marks it as classifier-free for `training.export.ImageEmbedder`.
    """

    num_classes = 0

    def __init__(self, backbone: nn.Module, features: int, config: ImageModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool: nn.Module = GeM() if config.pooling == "gem" else nn.AdaptiveAvgPool2d(1)
        self.neck = projection(features, config.dim)
        self.freeze_bn = config.freeze_bn
        self.backbone_lr_mult = config.backbone_lr_mult

    def train(self, mode: bool = True) -> ImageNetwork:
        """As `nn.Module.train`, but the backbone's BatchNorm layers stay in eval mode when
        `freeze_bn`: fine-tuning with small batches keeps the pretrained statistics."""
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        """Optimizer groups: the pretrained backbone at `backbone_lr_mult * lr`, the rest at lr."""
        rest = [*self.pool.parameters(), *self.neck.parameters()]
        return [
            {"params": list(self.backbone.parameters()), "lr": lr * self.backbone_lr_mult},
            {"params": rest, "lr": lr},
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone.forward_features(x)  # type: ignore[operator]  # (n, c, h, w)
        return self.neck(self.pool(f).flatten(1))  # (n, dim)


Stats = tuple[float, float, float]


def create_backbone(config: ImageModelConfig) -> tuple[nn.Module, int, Stats, Stats]:
    """A timm backbone without classifier, its feature count, and its input mean/std (0..255).

    `tf_efficientnet_lite0` with `pretrained` loads the packaged ImageNet weights (offline);
    other names use timm's own pretrained weights, which must be available locally.
    """
    import timm

    mean: Stats = (127.0, 127.0, 127.0)
    std: Stats = (128.0, 128.0, 128.0)
    if config.backbone == "tf_efficientnet_lite0" and config.pretrained:
        from training.export import load_efficientnet_lite0

        model = load_efficientnet_lite0(num_classes=0)
    else:
        model = timm.create_model(config.backbone, pretrained=config.pretrained, num_classes=0)
        cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}) or {})
        m, s = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        mean = (255.0 * m[0], 255.0 * m[1], 255.0 * m[2])
        std = (255.0 * s[0], 255.0 * s[1], 255.0 * s[2])
    features: Any = getattr(model, "num_features")  # noqa: B009
    return model, int(features), mean, std
