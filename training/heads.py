"""Margin heads for metric learning: ArcFace and CurricularFace.

A head maps embeddings (n, d) and labels (n,) to scaled logits (n, classes) for a
cross-entropy loss. It exists only in training: exported encoders end at the embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ArcFace(nn.Module):
    """Additive angular margin (Deng et al. 2019): target logit s*cos(theta + m).

    Args:
        dim: embedding size.
        classes: number of training classes (label groups).
        scale: logit scale s.
        margin: angular margin m in radians; `margin` may be changed during training
            (margin warm-up).
    """

    def __init__(self, dim: int, classes: int, scale: float = 30.0, margin: float = 0.5) -> None:
        super().__init__()
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """Cosine between each embedding and each class centre, (n, classes), float32."""
        return F.linear(F.normalize(emb.float()), F.normalize(self.weight.float()))

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        """cos(theta + m), kept monotonic past theta = pi - m (as in insightface)."""
        m = self.margin
        sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp(min=1e-7))
        phi = cos_t * math.cos(m) - sin_t * math.sin(m)
        return torch.where(cos_t > math.cos(math.pi - m), phi, cos_t - math.sin(math.pi - m) * m)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(emb)  # (n, C)
        idx = labels.view(-1, 1)
        cos_t = cos.gather(1, idx)  # (n, 1)
        logits = cos.scatter(1, idx, self.target_logit(cos_t))
        return logits * self.scale


class CurricularFace(ArcFace):
    """CurricularFace (Huang et al. 2020): ArcFace target plus adaptive weighting of hard
    negatives, cos -> cos * (t + cos) for negatives harder than the target, with t an EMA of
    the mean target cosine (easy negatives and the non-hard ones are left as they are)."""

    def __init__(
        self,
        dim: int,
        classes: int,
        scale: float = 30.0,
        margin: float = 0.5,
        momentum: float = 0.01,
    ) -> None:
        super().__init__(dim, classes, scale, margin)
        self.momentum = momentum
        self.t: torch.Tensor
        self.register_buffer("t", torch.zeros(1))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(emb)  # (n, C)
        idx = labels.view(-1, 1)
        cos_t = cos.gather(1, idx)  # (n, 1)
        target = self.target_logit(cos_t)  # (n, 1)
        if self.training:
            with torch.no_grad():
                self.t.mul_(1 - self.momentum).add_(self.momentum * cos_t.mean())
        hard = cos > target
        cos = torch.where(hard, cos * (self.t + cos), cos)
        logits = cos.scatter(1, idx, target)
        return logits * self.scale


class PairHead(ArcFace):
    """The binary head of a pair scorer: the model's (n, 1) match logit z as the (n, 2)
    logits [0, z], so that the cross-entropy over labels 0/1 is the logistic loss of z.
    No parameters: the model's own last layer is the classifier (exported with it)."""

    def __init__(self, dim: int, classes: int, scale: float = 1.0, margin: float = 0.0) -> None:
        nn.Module.__init__(self)
        if dim != 1 or classes != 2:
            raise ValueError(f"the pair head takes one logit and two classes, not {dim}, {classes}")
        self.scale = 1.0
        self.margin = 0.0

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = emb.float().reshape(-1, 1)  # (n, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)  # (n, 2)


HEADS: dict[str, type[ArcFace]] = {
    "arcface": ArcFace,
    "curricularface": CurricularFace,
    "pair": PairHead,
}


def create_head(kind: str, dim: int, classes: int, scale: float, margin: float) -> ArcFace:
    """Build a head by name ("arcface", "curricularface" or "pair")."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; valid: {', '.join(sorted(HEADS))}")
    return HEADS[kind](dim, classes, scale=scale, margin=margin)
