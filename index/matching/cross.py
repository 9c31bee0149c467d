"""The cross-encoder cascade: a transformer that reads both titles of a pair at once.

The trees (`index.matching.ranker.Ranker`) decide most pairs confidently; the pairs whose
probability falls in the uncertain band `Cascade.lo <= p < Cascade.hi` are read by a
cross-encoder (`[CLS] title A [SEP] title B [SEP]` -> match logit) and decided by a
logistic stack of both scores (`Cascade.refine`); the others keep the trees' probability.

A pair scorer artifact is a folder::

    config.json     {"encoder": "onnx-pair", "max_length": 64, ...}
    model.onnx      input_ids, attention_mask, token_type_ids (n, seq) -> (n,) logit
    tokenizer.json  a Hugging Face `tokenizers` file

No torch: the graph runs in ONNX Runtime (`training.cross` trains and exports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from index.errors import EncoderError
from index.features.encoders import Device, load_tokenizer, onnx_session, read_encoder_config
from index.features.text import distinct_words, mark_codes
from index.progress import progress

#: The artifact's kind in its config.json.
KIND = "onnx-pair"


class PairScorerConfig(BaseModel):
    """`config.json` of a pair scorer artifact."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    encoder: Literal["onnx-pair"] = "onnx-pair"
    max_length: int = Field(default=64, gt=2)
    tokenizer: str = "tokenizer.json"
    onnx: str = "model.onnx"
    lowercase: bool = True
    mark_codes: bool = False
    distinct_words: bool = False
    source: str = ""


def tokenize_pairs(
    tokenizer: Any,
    a: Sequence[str],
    b: Sequence[str],
    lowercase: bool = True,
    mark: bool = False,
    distinct: bool = False,
) -> dict[str, np.ndarray]:
    """Tokenize title pairs as one sequence each, padded to the batch's longest:
    `input_ids`, `attention_mask`, `token_type_ids` (n, seq) int64 (types 0 for A, 1 for
    B). Truncation (the tokenizer's max length) takes from the longer title first. Before
    it, `distinct` keeps each word once (`index.features.text.distinct_words`), then
    `mark` brackets model codes (`index.features.text.mark_codes`). The one pair
    tokenization used at run time and in training."""

    def prep(ts: Sequence[str]) -> list[str]:
        out = ["" if t is None else str(t) for t in ts]
        out = [distinct_words(t) for t in out] if distinct else out
        out = [mark_codes(t) for t in out] if mark else out
        return [t.lower() for t in out] if lowercase else out

    encs = tokenizer.encode_batch(list(zip(prep(a), prep(b), strict=True)))
    seq = max(1, max((len(e.ids) for e in encs), default=1))
    ids = np.zeros((len(encs), seq), np.int64)
    mask = np.zeros((len(encs), seq), np.int64)
    types = np.zeros((len(encs), seq), np.int64)
    for r, e in enumerate(encs):
        n = len(e.ids)
        ids[r, :n], mask[r, :n], types[r, :n] = e.ids, 1, e.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def pair_tokenizer(path: Path, max_length: int) -> Any:
    """The tokenizer of a pair scorer: truncating pairs longest-first at `max_length`."""
    tok = load_tokenizer(path, max_length)
    tok.enable_truncation(max_length, strategy="longest_first")
    return tok


class PairScorer:
    """A cross-encoder in ONNX Runtime: title pairs -> match logits."""

    def __init__(self, folder: str | Path, device: Device = "auto") -> None:
        self.folder = Path(folder)
        raw = read_encoder_config(self.folder)
        if raw.get("encoder") != KIND:
            raise EncoderError(f"{self.folder}: encoder {raw.get('encoder')!r}, expected {KIND!r}")
        try:
            self.config = PairScorerConfig.model_validate(raw)
        except ValueError as e:
            raise EncoderError(f"{self.folder}/config.json: {e}") from e
        self.tokenizer = pair_tokenizer(self.folder / self.config.tokenizer, self.config.max_length)
        self._session = onnx_session(self.folder / self.config.onnx, device)

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def tokenize(self, a: Sequence[str], b: Sequence[str]) -> dict[str, np.ndarray]:
        c = self.config
        return tokenize_pairs(self.tokenizer, a, b, c.lowercase, c.mark_codes, c.distinct_words)

    def logits(
        self,
        a: Sequence[str],
        b: Sequence[str],
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> np.ndarray:
        """(m,) float32 match logit of each pair (a[i], b[i])."""
        if len(a) != len(b):
            raise ValueError(f"{len(a)} left titles, {len(b)} right titles")
        out = np.zeros(len(a), np.float32)
        order = np.argsort([len(x or "") + len(y or "") for x, y in zip(a, b, strict=True)])
        starts = range(0, len(a), batch_size)
        for s in progress(starts, desc="cross-encoder", unit="batch", disable=not show_progress):
            idx = order[s : s + batch_size]
            feeds = self.tokenize([a[i] for i in idx], [b[i] for i in idx])
            (z,) = self._session.run(None, feeds)  # (b,)
            out[idx] = np.asarray(z, np.float32).reshape(-1)
        return out


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, p clipped to [1e-6, 1 - 1e-6]."""
    q = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


@dataclass(frozen=True)
class Cascade:
    """Which pairs the cross-encoder reads, and how its logit joins the trees'.

    Attributes:
        lo, hi: the band: pairs with the trees' probability p in [lo, hi) are read.
        w_tree, w_cross, bias: the stack, p' = sigmoid(w_tree * logit(p) + w_cross * z
            + bias) for the cross-encoder's logit z.
    """

    lo: float
    hi: float
    w_tree: float
    w_cross: float
    bias: float

    def band(self, p: np.ndarray) -> np.ndarray:
        """(m,) bool: the pairs the cross-encoder reads."""
        return (p >= self.lo) & (p < self.hi)

    def combine(self, p: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The stacked probability of pairs with trees' `p` and cross logits `z`."""
        s = self.w_tree * logit(p) + self.w_cross * np.asarray(z, np.float64) + self.bias
        return (1.0 / (1.0 + np.exp(-s))).astype(np.float32)

    def refine(
        self, p: np.ndarray, pairs: np.ndarray, titles: Sequence[str], scorer: PairScorer
    ) -> tuple[np.ndarray, int]:
        """`p` with the band's pairs re-decided; and how many pairs the scorer read."""
        take = np.flatnonzero(self.band(p))
        if len(take) == 0:
            return p, 0
        a = [titles[i] for i in pairs[take, 0]]
        b = [titles[j] for j in pairs[take, 1]]
        out = np.asarray(p, np.float32).copy()
        out[take] = self.combine(p[take], scorer.logits(a, b))
        return out, len(take)
