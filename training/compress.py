"""Smaller, faster text encoders made from an exported one, each with a parity report
(issue 14): `quantize_int8` (ONNX Runtime dynamic int8, per channel, MatMul weights only),
`convert_fp16` (float16 graph, for CUDA) and `distill_static` (model2vec-style static token
embeddings: `static-text` encoders).

Neither needs torch: both read an `onnx-text` artifact folder (the packaged MiniLM from
`export-default`, or a fine-tuned encoder from `train text`) and write a new artifact
folder. `parity_report` compares the new encoder with its source on a labelled CSV: cosine
of the embeddings (same dimension only), encoding speed (titles per second, measured in
turn in one process) and mean F1 of the text signal alone and fused with TF-IDF and
phash, each with its thresholds tuned on that CSV.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.data.listings import Catalogue
from index.errors import EncoderError
from index.features.embed import embed
from index.features.encoders import (
    Device,
    Encoder,
    OnnxTextEncoder,
    StaticTextEncoderConfig,
    TextEncoderConfig,
    load_encoder,
    prepare_titles,
    read_encoder_config,
)
from index.matching.cross import KIND as PAIR_KIND
from index.matching.cross import PairScorerConfig
from index.matching.fusion import FusionConfig
from index.matching.selfmatch import self_neighbours
from index.progress import progress
from index.search.knn import order_ties, self_knn
from index.tuning.grids import single_signal, tune

#: A compressed encoder is kept as a replacement only if its fused F1 on the check CSV is
#: at most this far below its source's (issue 14).
F1_TOLERANCE = 0.002
#: SIF weight a / (a + p(token)) of `distill_static` with a corpus (model2vec's value).
SIF_A = 1e-3


def _source(src: Path, device: Device = "cpu") -> OnnxTextEncoder:
    enc = load_encoder(src, device=device)
    if not isinstance(enc, OnnxTextEncoder):
        raise EncoderError(
            f"{src}: an onnx-text encoder folder is needed, not {type(enc).__name__}"
        )
    return enc


def _copy_tokenizer(enc: OnnxTextEncoder, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(enc.folder / enc.config.tokenizer, out / "tokenizer.json")


def _onnx_variant(src: Path, out: Path, what: str, write: Callable[[Path, Path], None]) -> Path:
    """A copy of the onnx-text encoder or onnx-pair scorer artifact `src` in `out` whose
    graph `write(src_graph, out_graph)` makes (int8, fp16): the same tokenizer and config,
    `what` in its source."""
    raw = read_encoder_config(src)
    kinds: dict[str, type[TextEncoderConfig] | type[PairScorerConfig]] = {
        "onnx-text": TextEncoderConfig,
        PAIR_KIND: PairScorerConfig,
    }
    if raw.get("encoder") not in kinds:
        raise EncoderError(
            f"{src}: an onnx-text encoder or {PAIR_KIND} scorer folder is needed, "
            f"not {raw.get('encoder')}"
        )
    cfg = kinds[raw["encoder"]].model_validate(raw)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / cfg.tokenizer, out / "tokenizer.json")
    write(src / cfg.onnx, out / "model.onnx")
    new = cfg.model_copy(
        update={
            "onnx": "model.onnx",
            "tokenizer": "tokenizer.json",
            "source": f"{what} of {cfg.source or src}",
        }
    )
    (out / "config.json").write_text(new.model_dump_json(indent=2), encoding="utf-8")
    return out


def quantize_int8(src: Path, out: Path, per_channel: bool = True) -> Path:
    """Dynamic int8 quantisation of `src`'s ONNX graph into the artifact folder `out`.

    Only MatMul weights are quantised (per output channel), activations quantised at run
    time; the embedding tables (Gather), LayerNorm and the pooling stay float32: a plain
    `quantize_dynamic` of every op was measured too lossy for MiniLM (cosine 0.95 mean).

    Returns:
        `out`, holding model.onnx (int8), tokenizer.json and config.json.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(graph: Path, to: Path) -> None:
        quantize_dynamic(
            str(graph),
            str(to),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},
        )

    return _onnx_variant(src, out, f"int8 (MatMul, per channel={per_channel})", write)


def convert_fp16(src: Path, out: Path) -> Path:
    """`src`'s ONNX graph with float16 weights and arithmetic (inputs and outputs stay
    int64 / float32), for CUDA, where it halves the memory traffic; ONNX Runtime also runs
    it on a CPU, slower, which is where its parity report is measured here.

    Returns:
        `out`, holding model.onnx (float16), tokenizer.json and config.json.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    def write(graph: Path, to: Path) -> None:
        onnx.save(convert_float_to_float16(onnx.load(str(graph)), keep_io_types=True), str(to))

    return _onnx_variant(src, out, "fp16", write)


def token_frequencies(enc: OnnxTextEncoder, corpus: Sequence[str], vocab: int) -> np.ndarray:
    """(vocab,) relative frequency of each token in `corpus` (tokenized as the encoder
    tokenizes, special tokens left out)."""
    texts = prepare_titles(corpus, enc.config.lowercase, enc.config.normalize_titles)
    counts: Counter[int] = Counter()
    for e in enc.tokenizer.encode_batch(texts, add_special_tokens=False):
        counts.update(e.ids)
    freq = np.zeros(vocab, np.float64)
    for i, c in counts.items():
        if i < vocab:
            freq[i] = c
    return freq / max(1.0, freq.sum())


def distill_static(
    src: Path,
    out: Path,
    dims: int | None = None,
    corpus: Sequence[str] | None = None,
    batch_size: int = 512,
    device: Device = "cpu",
    show_progress: bool = False,
) -> Path:
    """Distil `src` into static token embeddings (a `static-text` artifact in `out`).

    Each vocabulary token's vector is `src`'s embedding of the token alone (`[CLS] token
    [SEP]`, the encoder's own pooling); then optionally PCA to `dims` and, with a `corpus`
    (titles), SIF weights a / (a + p(token)) so frequent tokens count less in a title's
    mean. A title's embedding is then the mean of its tokens' rows
    (`index.features.encoders.StaticTextEncoder`).

    Returns:
        `out`, holding embeddings.npy (vocab, dim) float32, tokenizer.json, config.json.
    """
    enc = _source(src, device)
    vocab = int(enc.tokenizer.get_vocab_size())
    specials = enc.tokenizer.encode("", add_special_tokens=True).ids  # e.g. [CLS, SEP]
    if len(specials) > 2:
        raise EncoderError(f"{src}: unexpected special tokens {specials}")
    head, tail = specials[:1], specials[1:]
    table = np.zeros((vocab, enc.dim), np.float32)
    starts = range(0, vocab, batch_size)
    for s in progress(starts, desc="distil tokens", unit="batch", disable=not show_progress):
        tok = np.arange(s, min(vocab, s + batch_size), dtype=np.int64)[:, None]  # (b, 1)
        ids = np.hstack(
            [
                np.full((tok.shape[0], len(head)), head, np.int64)[:, : len(head)],
                tok,
                np.full((tok.shape[0], len(tail)), tail, np.int64)[:, : len(tail)],
            ]
        )  # (b, 3)
        table[s : s + tok.shape[0]] = enc.embed_ids(ids)  # (b, dim), not normalised
    if dims is not None and dims < enc.dim:
        centred = table - table.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt (dim, dim)
        table = (centred @ vt[:dims].T).astype(np.float32)  # (vocab, dims)
    if corpus:
        p = token_frequencies(enc, corpus, vocab)
        table *= (SIF_A / (SIF_A + p)).astype(np.float32)[:, None]
    _copy_tokenizer(enc, out)
    np.save(out / "embeddings.npy", table.astype(np.float32))
    extra = f", PCA {dims}" if dims is not None and dims < enc.dim else ""
    extra += f", SIF on {len(corpus)} titles" if corpus else ""
    cfg = StaticTextEncoderConfig(
        dim=int(table.shape[1]),
        max_length=enc.config.max_length,
        lowercase=enc.config.lowercase,
        normalize_titles=enc.config.normalize_titles,
        source=f"static distillation of {enc.config.source or src}{extra}",
    )
    (out / "config.json").write_text(cfg.model_dump_json(indent=2), encoding="utf-8")
    return out


def encoding_speeds(
    encs: dict[str, Encoder], titles: list[str], rounds: int = 3
) -> dict[str, float]:
    """Titles per second of each encoder on `titles`: best of `rounds`, the encoders run in
    turn within each round (A B A B ...), so a noisy machine loads them alike."""
    best = dict.fromkeys(encs, float("inf"))
    for _ in range(rounds):
        for name, enc in encs.items():
            t = time.perf_counter()
            enc.encode(titles, batch_size=64 if isinstance(enc, OnnxTextEncoder) else 4096)
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: len(titles) / max(s, 1e-9) for name, s in best.items()}


def parity_report(
    src: Path,
    new: Path,
    cat: Catalogue,
    device: Device = "cpu",
    speed_rows: int = 2000,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Compare the encoder in `new` with its source `src` on the labelled catalogue `cat`.

    Returns:
        {"rows", "cosine": {mean, min, p01} (None when the dimensions differ),
        "titles_per_s": {source, new, ratio}, "f1": {source: {text, fused}, new: {...}},
        "f1_delta" (new - source, fused), "within_tolerance" (f1_delta >= -F1_TOLERANCE)}.
    """
    if cat.label_group is None:
        raise EncoderError("the parity check needs a labelled CSV (label_group)")
    labels = cat.labels
    encs = {"source": load_encoder(src, device=device), "new": load_encoder(new, device=device)}
    base = embed(cat, None, show_progress=show_progress)  # TF-IDF and phash, shared
    nb0 = self_neighbours(base, device=device)
    sample = cat.title[:speed_rows]
    report: dict[str, Any] = {"rows": len(cat), "source": str(src), "new": str(new)}
    speeds = encoding_speeds(encs, sample)
    f1: dict[str, dict[str, Any]] = {}
    emb: dict[str, np.ndarray] = {}
    for name, enc in encs.items():
        emb[name] = enc.encode(cat.title, show_progress=show_progress)
        nb = {**nb0, "text": order_ties(*self_knn(emb[name], None, device=device))}
        cfg = FusionConfig()
        alone = tune(nb, labels, single_signal("text", cfg), min2_signals=("text",))
        fused = tune(nb, labels, cfg)
        f1[name] = {
            "text": round(alone[1], 4),
            "fused": round(fused[1], 4),
            "text_threshold": alone[0].thresholds.get("text"),
            "fused_thresholds": dict(fused[0].thresholds),
        }
    a, b = emb["source"], emb["new"]
    if a.shape == b.shape:
        cos = np.sum(a * b, axis=1)  # (n,) both L2-normalised
        report["cosine"] = {
            "mean": round(float(cos.mean()), 5),
            "min": round(float(cos.min()), 5),
            "p01": round(float(np.percentile(cos, 1)), 5),
        }
    else:
        report["cosine"] = None
    report["titles_per_s"] = {
        "source": round(speeds["source"], 1),
        "new": round(speeds["new"], 1),
        "ratio": round(speeds["new"] / speeds["source"], 2),
    }
    report["f1"] = f1
    delta = float(f1["new"]["fused"]) - float(f1["source"]["fused"])
    report["f1_delta"] = round(delta, 4)
    report["tolerance"] = F1_TOLERANCE
    report["within_tolerance"] = keeps_f1(delta)
    return report


def keeps_f1(delta: float) -> bool:
    """Whether a fused-F1 change `delta` (new - source) is within `F1_TOLERANCE`."""
    return round(delta, 6) >= -F1_TOLERANCE


#: The parity report beside a compressed artifact (export's own `parity.json` compares the
#: ONNX graph with PyTorch).
REPORT = "compression.json"


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """`compression.json` in the artifact folder `out`."""
    path = out / REPORT
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return path


def adopt_int8(model: Path, cat: Catalogue, device: Device = "cpu") -> dict[str, Any]:
    """Quantise the model folder's text encoder to int8 and make it the folder's `text/`
    only if its fused F1 on the labelled `cat` stays within `F1_TOLERANCE` of the fp32
    one (which is then kept as `text-fp32/`); otherwise the int8 encoder is left in
    `text-int8/` and `text/` is unchanged. Returns the parity report (with "adopted")."""
    import os

    text, q = model / "text", model / "text-int8"
    shutil.rmtree(q, ignore_errors=True)
    quantize_int8(text, q)
    report = parity_report(text, q, cat, device=device)
    report["adopted"] = bool(report["within_tolerance"])
    write_report(q, report)
    if report["adopted"]:
        keep = model / "text-fp32"
        shutil.rmtree(keep, ignore_errors=True)
        os.replace(text, keep)
        os.replace(q, text)
    return report
