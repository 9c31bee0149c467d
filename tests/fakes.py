"""Tiny real ONNX encoders built with onnx.helper (no torch), for pipeline tests.

The text model embeds word ids with a random table and mean-pools over the mask; the image
model averages each channel over space and projects to `dim`. Both are genuine ONNX graphs
run by ONNX Runtime through the production `OnnxTextEncoder`/`OnnxImageEncoder`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

WORDS = [
    "wardah",
    "emina",
    "lemonilo",
    "indomie",
    "samsung",
    "xiaomi",
    "maybelline",
    "pigeon",
    "lipstick",
    "matte",
    "mie",
    "instant",
    "goreng",
    "serum",
    "wajah",
    "kabel",
    "data",
    "usb",
    "botol",
    "minum",
    "kaos",
    "polos",
    "masker",
    "sabun",
    "cuci",
    "muka",
    "power",
    "bank",
    "ready",
    "original",
    "murah",
    "promo",
    "cod",
    "ml",
    "kg",
    "gr",
    "pcs",
    "cm",
]


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    for d in range(10):
        vocab.setdefault(str(d), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def make_text_encoder(folder: Path, dim: int = 16, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder / "tokenizer.json")
    vocab = len(WORDS) + 11
    table = np.random.default_rng(seed).normal(size=(vocab, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),  # (n, s, d)
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),  # (n, s, 1)
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),  # (n, d)
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),  # (n, 1)
        helper.make_node("Max", ["count", "one"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "s"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "s"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    cfg = {"encoder": "onnx-text", "dim": dim, "max_length": 32, "source": "tests.fakes"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def make_image_encoder(folder: Path, dim: int = 8, size: int = 32, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    # Average 4x4 patches of each channel, flatten, project: a crude but real image embedding.
    proj = np.random.default_rng(seed).normal(size=(3 * 4 * 4, dim)).astype(np.float32)
    k = size // 4
    nodes = [
        helper.make_node(
            "AveragePool", ["pixel_values"], ["pooled"], kernel_shape=[k, k], strides=[k, k]
        ),  # (n, 3, 4, 4)
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),  # (n, 48)
        helper.make_node("MatMul", ["flat", "proj"], ["embedding"]),  # (n, dim)
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])],
        initializer=[numpy_helper.from_array(proj, "proj")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    cfg = {
        "encoder": "onnx-image",
        "dim": dim,
        "input_size": [size, size],
        "mean": [127.0, 127.0, 127.0],
        "std": [128.0, 128.0, 128.0],
        "source": "tests.fakes",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def make_model_dir(folder: Path) -> Path:
    """A model folder as export-default writes it: text/ and image/."""
    make_text_encoder(folder / "text")
    make_image_encoder(folder / "image")
    return folder


def write_tables(titles: list[str], root: Path, half: int) -> None:
    """An entity-matching folder's two tables: rows [0, half) as tableA, the rest tableB
    (`id,title`, ids the row numbers)."""
    import csv

    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("tableA", range(half)), ("tableB", range(half, len(titles)))):
        with open(root / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "title"])
            w.writerows([[i, titles[i]] for i in rows])


def make_pair_base(folder: Path, words: Sequence[str] = ()) -> Path:
    """A transformers folder for the cross-encoder: a 2-layer BERT of hidden size 32 and
    a pair tokenizer whose vocabulary is `words`, then single characters (any word else
    splits into them)."""
    import torch
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    for c in [*chars, *(f"##{c}" for c in chars)]:
        vocab.setdefault(c, len(vocab))
    bert_tokenizer(vocab).save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder


def bert_tokenizer(vocab: dict[str, int]) -> Any:
    """An uncased WordPiece `tokenizers.Tokenizer` over `vocab` (which holds [CLS] and
    [SEP]), as BERT's: `[CLS] A [SEP]`, and for a pair `[CLS] A [SEP] B [SEP]`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tok


def no_vector_features(n: int) -> Any:
    """`Features` of `n` rows with no TF-IDF, vectors or valid phash: for pair features
    that read only titles and neighbour lists."""
    from index.features.embed import Features

    return Features(tfidf=None, X=None, phash=np.zeros((n, 8), np.uint8),  # type: ignore[arg-type]
                    phash_valid=np.zeros(n, bool))
