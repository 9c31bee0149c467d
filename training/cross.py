"""The cross-encoder pair scorer: fine-tuning a transformer on title pairs, out of fold.

A pair is tokenized as one sequence (`index.matching.cross.tokenize_pairs`). The frozen
lower layers run once for every pair (`PairStates`); each fit then trains only the top
`CrossConfig.top_layers` layers and a linear classifier on the masked mean of the last
states (`training.trainer.Trainer` with the binary "pair" head), so a CPU fit costs a
fraction of a full fine-tune. `PairStates.export` puts the trained layers back into the
whole transformer and writes the ONNX artifact `index.matching.cross.PairScorer` runs.

`CrossFit` is what `index.tuning.ranker.train_on_pairs` calls (it knows no torch): the
logits of some pairs from a scorer fitted on others, and the final scorer's folder.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from index.matching.cross import PairScorer, pair_tokenizer, tokenize_pairs
from index.progress import progress
from training.config import CrossConfig, TrainConfig
from training.models import TopLayers, bert_layers, run_layers
from training.trainer import Trainer

log = logging.getLogger(__name__)


def load_pair_base(base: str) -> tuple[nn.Module, Path]:
    """The transformers model a scorer starts from, and its tokenizer.json: `base` (a
    model folder) or, for "", the packaged all-MiniLM-L6-v2."""
    if base:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(base, local_files_only=True)
        return model, Path(base) / "tokenizer.json"
    from training.export import load_minilm

    embedder, tok = load_minilm()
    return embedder.model, tok


def augment_pairs(
    a: Sequence[str], b: Sequence[str], seed: int = 0
) -> tuple[list[str], list[str]]:
    """One augmented copy of each pair, Ditto's operators (the label is kept): the two
    sides swapped with probability 1/2, then a random span of 1 or 2 words deleted from
    one random side that has more than 2 words."""
    rng = np.random.default_rng(seed)
    out_a, out_b = [], []
    for x, y in zip(a, b, strict=True):
        x, y = (y, x) if rng.random() < 0.5 else (x, y)
        side = rng.integers(2)
        words = (x if side == 0 else y).split()
        if len(words) > 2:
            span = int(rng.integers(1, 3))
            start = int(rng.integers(0, len(words) - span + 1))
            cut = " ".join(words[:start] + words[start + span :])
            x, y = (cut, y) if side == 0 else (x, cut)
        out_a.append(x)
        out_b.append(y)
    return out_a, out_b


def closure_negatives(left: np.ndarray, right: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(m, 2) int64 hard negatives implied by labelled pairs: where x matches p and does
    not match n, p and n are not the same product (a product is one entity), so (p, n)
    is a non-match that differs from a match by what tells p from n. Unique pairs, each
    (smaller, larger), none already labelled; an empty (0, 2) array when none."""
    pos: dict[int, set[int]] = {}
    neg: dict[int, set[int]] = {}
    for a, b, y in zip(np.asarray(left).tolist(), np.asarray(right).tolist(),
                       np.asarray(label).astype(bool).tolist(), strict=True):
        for x, o in ((a, b), (b, a)):
            (pos if y else neg).setdefault(x, set()).add(o)
    seen = {(min(a, b), max(a, b)) for a, b in zip(np.asarray(left).tolist(),
                                                      np.asarray(right).tolist(), strict=True)}
    out: set[tuple[int, int]] = set()
    for x, ps in pos.items():
        for p in ps:
            for n in neg.get(x, ()):
                if p != n and (min(p, n), max(p, n)) not in seen:
                    out.add((min(p, n), max(p, n)))
    return np.array(sorted(out), np.int64).reshape(-1, 2)


class PairGraph(nn.Module):
    """The whole scorer: token ids, mask and token types (n, seq) -> (n,) match logit
    (every layer, the masked mean of the last states, the classifier)."""

    def __init__(self, model: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.classifier = classifier

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        m: Any = self.model
        h = m.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (n, seq, hid)
        h = run_layers(h, attention_mask, bert_layers(m))
        w = attention_mask.unsqueeze(-1).to(h.dtype)  # (n, seq, 1)
        x = (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)  # (n, hid)
        return self.classifier(x).reshape(-1)  # (n,)


class PairStates:
    """The frozen lower-layer states of a fixed list of title pairs, computed once.

    Args:
        a, b: the pairs' titles (pair i is a[i], b[i]).
        config: the scorer's settings (base, max_length, top_layers).
        device: where the transformer runs.
    """

    def __init__(
        self,
        a: Sequence[str],
        b: Sequence[str],
        config: CrossConfig,
        device: torch.device | str = "cpu",
        show_progress: bool = False,
        batch_size: int = 128,
    ) -> None:
        self.a, self.b = [str(x) for x in a], [str(x) for x in b]
        self.config = config
        self.device = torch.device(device)
        model, self.tokenizer_json = load_pair_base(config.base)
        self.model = model.to(self.device).eval()
        layers = bert_layers(self.model)
        if config.top_layers < 1:
            raise ValueError(f"top_layers must be at least 1, got {config.top_layers}")
        self.split = len(layers) - min(config.top_layers, len(layers))
        self.hidden = int(getattr(self.model, "config").hidden_size)  # noqa: B009
        self.tokenizer = pair_tokenizer(self.tokenizer_json, config.max_length)
        n, L = len(self.a), config.max_length
        self.states = torch.zeros((n, L, self.hidden), dtype=torch.float16)  # (m, L, hid)
        self.mask = torch.zeros((n, L), dtype=torch.int64)  # (m, L)
        order = np.argsort([len(x) + len(y) for x, y in zip(self.a, self.b, strict=True)])
        starts = range(0, n, batch_size)
        m: Any = self.model
        with torch.no_grad():
            bar = progress(starts, desc="cross-encoder: lower layers", disable=not show_progress)
            for s in bar:
                idx = order[s : s + batch_size]
                f = tokenize_pairs(self.tokenizer, [self.a[i] for i in idx],
                                   [self.b[i] for i in idx], mark=config.mark_codes,
                                   distinct=config.distinct_words)
                ids, mask, types = (torch.from_numpy(f[k]).to(self.device) for k in
                                    ("input_ids", "attention_mask", "token_type_ids"))
                h = m.embeddings(input_ids=ids, token_type_ids=types)  # (b, seq, hid)
                h = run_layers(h, mask, bert_layers(m)[: self.split])
                rows = torch.from_numpy(idx)
                self.states[rows, : h.shape[1]] = h.cpu().to(torch.float16)
                self.mask[rows, : h.shape[1]] = mask.cpu()

    def new_model(self) -> TopLayers:
        """Fresh trainable top: copies of the pretrained top layers and a linear classifier."""
        torch.manual_seed(self.config.seed)
        top = copy.deepcopy(bert_layers(self.model)[self.split :])
        return TopLayers(top, nn.Linear(self.hidden, 1), self.config.layer_lr_mult).to(
            self.device
        )

    def fit(self, rows: np.ndarray, y: np.ndarray, show_progress: bool = False) -> TopLayers:
        """A scorer trained on the pairs `rows` with labels `y` (0/1), at most
        `max_pairs` of them (a seeded sample)."""
        c = self.config
        rows, y = np.asarray(rows), np.asarray(y).astype(np.int64)
        if len(rows) > c.max_pairs:
            keep = np.random.default_rng(c.seed).choice(len(rows), c.max_pairs, replace=False)
            rows, y = rows[keep], y[keep]
        model = self.new_model()
        train = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, head_lr=c.lr,
                            weight_decay=0.01, head="pair", margin=0.0, seed=c.seed)
        trainer = Trainer(model, classes=2, dim=1, config=train)
        trainer.fit(_Batches(self, rows, y, c.batch_size, c.seed), show_progress=show_progress)
        return model

    @torch.no_grad()
    def logits(self, model: TopLayers, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(len(rows),) float32 match logits of the pairs `rows` by a fitted top."""
        model.eval()
        out = []
        for s in range(0, len(rows), batch_size):
            r = torch.from_numpy(np.asarray(rows[s : s + batch_size]))
            z = model(self.states[r].to(self.device), self.mask[r].to(self.device))  # (b, 1)
            out.append(z.float().reshape(-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def graph(self, model: TopLayers) -> PairGraph:
        """The whole transformer with the fitted top layers, and its classifier."""
        whole = copy.deepcopy(self.model)
        layers = bert_layers(whole)
        for i, layer in enumerate(model.layers):
            layers[self.split + i] = copy.deepcopy(layer)
        assert model.projection is not None
        return PairGraph(whole, copy.deepcopy(model.projection)).eval()

    def export(self, model: TopLayers, folder: Path, source: str = "") -> PairScorer:
        """Write the scorer artifact (ONNX, parity-checked on these pairs) and load it."""
        from training.export import export_pair_scorer

        n = min(16, len(self.a))
        export_pair_scorer(self.graph(model), self.tokenizer_json, folder,
                           self.config.max_length, self.a[:n], self.b[:n], source=source,
                           mark_codes=self.config.mark_codes,
                           distinct_words=self.config.distinct_words)
        return PairScorer(folder, device="cpu" if self.device.type == "cpu" else "auto")


class _Batches:
    """Shuffled training batches of cached pairs: ({"hidden", "mask"}, labels)."""

    def __init__(self, states: PairStates, rows: np.ndarray, y: np.ndarray, size: int,
                 seed: int) -> None:
        self.states, self.rows, self.y, self.size = states, rows, y, size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return max(1, -(-len(self.rows) // self.size))

    def __iter__(self) -> Any:
        order = self.rng.permutation(len(self.rows))
        for s in range(0, len(order), self.size):
            pick = order[s : s + self.size]
            r = torch.from_numpy(self.rows[pick])
            inputs = {"hidden": self.states.states[r], "mask": self.states.mask[r]}
            yield inputs, torch.from_numpy(self.y[pick])


class CrossFit:
    """The scorer fits `index.tuning.ranker.train_on_pairs` asks for, on its labelled
    pairs (a[i], b[i]) with labels y: the lower layers computed once for all."""

    def __init__(
        self,
        a: Sequence[str],
        b: Sequence[str],
        y: np.ndarray,
        config: CrossConfig | None = None,
        device: str = "cpu",
        show_progress: bool = False,
    ) -> None:
        self.config = config or CrossConfig()
        self.y = np.asarray(y).astype(np.int64)
        self.show = show_progress
        self.states = PairStates(a, b, self.config, device, show_progress)

    def fold_logits(self, train: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Logits of the pairs `score` by a scorer fitted on the pairs `train`."""
        model = self.states.fit(train, self.y[train], self.show)
        return self.states.logits(model, score)

    def final(self, train: np.ndarray, folder: Path) -> PairScorer:
        """The scorer fitted on the pairs `train`, written to `folder` and loaded."""
        model = self.states.fit(train, self.y[train], self.show)
        src = f"cross-encoder fine-tuned from {self.config.base or 'all-MiniLM-L6-v2'}"
        return self.states.export(model, folder, source=src)
