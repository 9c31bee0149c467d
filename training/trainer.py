"""One trainer for image and text encoders: margin head, AdamW, warm-up + cosine, clipping,
AMP on CUDA, optional torch.compile, resumable checkpoints.

The device is the model's: move the model where it should run (CPU in tests, a GPU when
present) and the trainer follows; nothing is hard-coded.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from index.progress import progress
from training.config import TrainConfig
from training.heads import ArcFace, create_head

log = logging.getLogger(__name__)

Batch = tuple[Any, torch.Tensor]  # (inputs: tensor or dict of tensors, labels (n,))


def to_device(x: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors of a dict/list/tuple, to `device`."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(to_device(v, device) for v in x)
    return x


def call(model: nn.Module, inputs: Any) -> torch.Tensor:
    """model(**inputs) for a dict of tensors, model(inputs) otherwise."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class EpochLog:
    """One line of the training log."""

    epoch: int
    loss: float
    lr: float
    seconds: float
    margin: float
    metric: float | None = None

    def line(self) -> str:
        m = f" oof_f1 {self.metric:.4f}" if self.metric is not None else ""
        return (
            f"epoch {self.epoch + 1} loss {self.loss:.4f} lr {self.lr:.2e} "
            f"margin {self.margin:.2f} {self.seconds:.1f}s{m}"
        )


def lr_lambda(total: int, warmup: float) -> Callable[[int], float]:
    """Linear warm-up over `warmup` of `total` steps, then cosine decay to 0."""
    warm = max(1, round(warmup * total))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return f


class Trainer:
    """Trains `model` (inputs -> (n, d) embeddings) with a margin head over `classes` labels.

    Args:
        model: the encoder being trained, already on its device.
        classes: number of distinct labels (0..classes-1).
        config: optimisation settings.
        dim: the model's embedding size.
        checkpoint: file for resumable checkpoints (written after every epoch).
    """

    def __init__(
        self,
        model: nn.Module,
        classes: int,
        dim: int,
        config: TrainConfig,
        checkpoint: Path | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.device = model_device(model)
        torch.manual_seed(config.seed)
        self.head: ArcFace = create_head(config.head, dim, classes, config.scale, config.margin)
        self.head.to(self.device)
        self.checkpoint = checkpoint
        self.forward_model: nn.Module = model
        if config.compile:
            self.forward_model = torch.compile(model)  # type: ignore[assignment]

    def _amp(self) -> Any:
        on = self.config.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=on)

    def fit(
        self,
        loader: Iterable[Batch],
        evaluate: Callable[[nn.Module], float] | None = None,
        show_progress: bool = False,
    ) -> list[EpochLog]:
        """Train for `config.epochs` epochs; `evaluate(model)` (e.g. OOF F1) after each.

        Resumes from `checkpoint` when it exists and was written with the same config.
        """
        c = self.config
        steps = len(loader) if isinstance(loader, Sized) else 0
        assert steps > 0, "the loader must have a length (batches per epoch)"
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = getattr(self.model, "param_groups", None)  # a model may split its own lr
        model_groups = groups(c.lr) if callable(groups) else [{"params": params, "lr": c.lr}]
        opt = torch.optim.AdamW(
            [*model_groups, {"params": list(self.head.parameters()), "lr": c.head_lr}],
            weight_decay=c.weight_decay,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(c.epochs * steps, c.warmup))
        start, history = self._resume(opt, sched)
        for epoch in range(start, c.epochs):
            t0 = time.perf_counter()
            if c.margin_warmup_epochs > 0:
                self.head.margin = c.margin * min(1.0, (epoch + 1) / c.margin_warmup_epochs)
            self.model.train()
            self.head.train()
            losses = []
            bar = progress(loader, desc=f"epoch {epoch + 1}/{c.epochs}", disable=not show_progress)
            for inputs, labels in bar:
                inputs = to_device(inputs, self.device)
                labels = labels.to(self.device)
                with self._amp():
                    emb = call(self.forward_model, inputs)  # (n, d)
                logits = self.head(emb.float(), labels)  # (n, classes), float32
                loss = F.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip > 0:
                    nn.utils.clip_grad_norm_([*params, *self.head.parameters()], c.grad_clip)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            metric = evaluate(self.model) if evaluate is not None else None
            entry = EpochLog(
                epoch=epoch,
                loss=float(np.mean(losses)),
                lr=float(opt.param_groups[len(model_groups) - 1]["lr"]),  # the main model lr
                seconds=time.perf_counter() - t0,
                margin=float(self.head.margin),
                metric=metric,
            )
            history.append(entry)
            log.info("%s", entry.line())
            self._save(epoch, opt, sched, history)
        return history

    def _save(self, epoch: int, opt: Any, sched: Any, history: list[EpochLog]) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "epoch": epoch,
            "config": dataclasses.asdict(self.config),
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "history": [dataclasses.asdict(h) for h in history],
        }
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint)

    def _resume(self, opt: Any, sched: Any) -> tuple[int, list[EpochLog]]:
        if self.checkpoint is None or not self.checkpoint.is_file():
            return 0, []
        state = torch.load(self.checkpoint, map_location=self.device, weights_only=False)
        if state.get("config") != dataclasses.asdict(self.config):
            log.warning("checkpoint %s has another config: starting afresh", self.checkpoint)
            return 0, []
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        log.info("resumed from %s after epoch %d", self.checkpoint, state["epoch"] + 1)
        return state["epoch"] + 1, [EpochLog(**h) for h in state["history"]]


@torch.no_grad()
def embed(model: nn.Module, batches: Iterable[Any], show_progress: bool = False) -> np.ndarray:
    """Embeddings of `batches` (inputs only) in eval mode, L2-normalised, (n, d) float32."""
    model.eval()
    device = model_device(model)
    out = []
    for inputs in progress(batches, desc="embed", disable=not show_progress):
        emb = call(model, to_device(inputs, device)).float()  # (b, d)
        out.append(F.normalize(emb, dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
