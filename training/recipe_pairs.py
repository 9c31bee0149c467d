"""The training recipe on pairwise-labelled data (the entity-matching layout,
`index.data.pairs`): the records of the train pairs are the training rows, the connected
components of their positive pairs the ArcFace classes, and the folds split by the
components of *every* labelled pair, so each pair lies inside one fold and is scored by a
model that never trained on either record. Thresholds are tuned on pairwise F1 over the
labelled pairs only (an unlabelled pair is unknown, never a non-match), at the size the
folder is matched at: per fold, *every* record embedded by that fold's model and matched as
one pool, the fold's pairs scored (as `train ranker --pool whole` does). The final model is
scored on the valid pairs (when the folder has them) over every record, never used for
training or thresholds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from index.data.pairs import PairData, Pairs, pair_components
from index.matching.fusion import FusionConfig
from index.search.knn import self_knn
from index.tuning.grids import (
    GRIDS,
    PairPool,
    drop_weak,
    never_below_single,
    pair_pools_prf,
    single_signal,
    tune_pair_pools,
)
from index.tuning.metrics import pair_prf
from training.config import CVConfig, TrainConfig
from training.recipe import cross_validate, final_fit, pool_signals, write_trained
from training.tasks import Task

log = logging.getLogger(__name__)


def local_pairs(
    rows: np.ndarray, pairs: Pairs, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled pairs with both records in `rows` (sorted or not), as positions in
    `rows`: (left, right, label)."""
    loc = np.full(n, -1, np.int64)
    loc[rows] = np.arange(len(rows))
    keep = (loc[pairs.left] >= 0) & (loc[pairs.right] >= 0)
    return loc[pairs.left[keep]], loc[pairs.right[keep]], pairs.label[keep]


def embedding_pair_f1(
    x: np.ndarray, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[float, float]:
    """Best pairwise F1 (and its cosine threshold, from the text grid) of embeddings x
    (m, d), unit rows, on labelled pairs given as positions in x."""
    left, right, label = pairs
    if not len(label):
        return 0.0, 0.0
    cos = np.einsum("ij,ij->i", x[left], x[right])  # (pairs,)
    best = (0.0, 0.0)
    for t in GRIDS["text"]:
        f = pair_prf(cos >= t, label.astype(bool))["f1"]
        if f > best[0]:
            best = (f, t)
    return best


def pair_pool(cat: Any, rows: np.ndarray, dense: dict[str, np.ndarray], pairs: Pairs) -> PairPool:
    """`rows` of the catalogue matched among themselves (`pool_signals`: TF-IDF fitted on
    the pool, phash, the `dense` embeddings) with the labelled pairs inside them."""
    codes = cat.source_codes
    return PairPool(
        pool_signals(cat, rows, dense),
        local_pairs(rows, pairs, len(cat)),
        [cat.title[i] for i in rows],
        None if codes is None else codes[rows],
    )


def _row(name: str, pools: list[PairPool], cfg: FusionConfig) -> dict[str, Any]:
    """One table row: pairwise P/R/F1 over every pool's pairs, and each pool's F1."""
    r = pair_pools_prf(pools, cfg)
    per_fold = [pair_pools_prf([p], cfg)["f1"] for p in pools]
    return {
        "pipeline": name,
        "f1": r["f1"],
        "precision": r["precision"],
        "recall": r["recall"],
        "per_fold": per_fold,
        "config": cfg.model_dump(mode="json"),
    }


def run_pairs(
    task: Task,
    data: PairData,
    out: Path,
    train: TrainConfig,
    cv: CVConfig,
    model_config: Any,
    other: dict[str, Any],
    show_progress: bool = False,
) -> dict[str, Any]:
    """The recipe on an entity-matching folder's train pairs; writes the model folder.

    Args:
        task: the modality being trained, over every record of `data.catalogue`.
        data: the folder read (`read_pair_folder`); needs train pairs.
        out: model folder to write (`out/work` keeps resumable checkpoints).
        other: name -> callable(folder) exporting another modality's default encoder.

    Returns:
        The report written to `out/cv_report.json`: the out-of-fold table (pairwise P/R/F1
        on the train pairs), the fusion written, and the valid pairs' scores.
    """
    t0 = time.perf_counter()
    cat = data.catalogue
    n, m = len(cat), task.modality
    pairs = data.pairs("train")
    rows = np.unique(np.concatenate([pairs.left, pairs.right]))
    classes = pair_components(n, pairs)
    every = pair_components(n, dataclasses.replace(pairs, label=np.ones(len(pairs), bool)))
    everyone = np.arange(n)
    res = cross_validate(
        task,
        classes,
        train,
        cv,
        out / "work",
        rows=rows,
        show_progress=show_progress,
        groups=every,
        score=lambda x, va: embedding_pair_f1(x, local_pairs(va, pairs, n))[0],
        embed_rows=everyone,
    )
    # Every record as one pool (TF-IDF fitted on all of them, computed once); per fold the
    # fold model's embeddings of every record and only the fold's pairs, which it never saw.
    whole = pair_pool(cat, everyone, {}, pairs)

    def fold_pools(signals: list[dict[str, Any]]) -> list[PairPool]:
        """Per fold: the whole pool with these signals, scored on the fold's pairs only."""
        out = []
        for nb, (_, va) in zip(signals, res.folds, strict=True):
            left, right, label = whole.pairs
            inside = np.isin(left, va)  # both ends: a pair never straddles folds
            fold = (left[inside], right[inside], label[inside])
            out.append(dataclasses.replace(whole, signals=nb, pairs=fold))
        return out

    def with_dense(x: np.ndarray) -> dict[str, Any]:
        return {**whole.signals, m: self_knn(x, None, device="cpu")}

    n_folds = len(res.folds)
    start = FusionConfig().with_(
        thresholds={k: v for k, v in FusionConfig().thresholds.items() if k in ("tfidf", m)}
    )
    shared = fold_pools([whole.signals] * n_folds)
    tfidf = tune_pair_pools(shared, single_signal("tfidf", start))
    table = [_row("tfidf alone", shared, tfidf[0])]
    base = task.baseline(everyone)
    if base is not None:
        pools0 = fold_pools([with_dense(base)] * n_folds)
        alone0 = tune_pair_pools(pools0, single_signal(m, start))
        table.append(_row(f"{m} alone (untrained)", pools0, alone0[0]))
        table.append(_row(f"tfidf+{m} (untrained)", pools0, tune_pair_pools(pools0, start)[0]))
    pools = fold_pools([with_dense(x) for x in res.fold_embeddings])
    alone = tune_pair_pools(pools, single_signal(m, start))
    fused = tune_pair_pools(pools, start)
    table.append(_row(f"{m} alone (trained)", pools, alone[0]))
    table.append(_row(f"tfidf+{m} (trained)", pools, fused[0]))
    kept, score = never_below_single(fused, [tfidf, alone])
    # A signal adding under MARGINAL_MIN pair F1 (the others re-tuned) is left out.
    kept, _, dropped, marginal = drop_weak(lambda c: tune_pair_pools(pools, c), kept, score)
    # Tuned at the size the folder is matched at: no pool-size rule. Other modalities (e.g.
    # phash) keep the default thresholds; TF-IDF and this one only where the tuning kept
    # them (a signal that loses is left out, its encoder not loaded).
    final = kept.with_(
        thresholds={
            **{k: v for k, v in FusionConfig().thresholds.items() if k not in ("tfidf", m)},
            **kept.thresholds,
        },
        tuned_rows=n,
        pool_slopes={},
    )

    artifacts: dict[str, Path] = {}
    final_log: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    if cv.final_fit:
        log.info("final fit on the %d records of the train pairs", len(rows))
        model, final_log = final_fit(task, classes, rows, train, out / "work", show_progress)
        artifacts[m] = task.export(model, out / "work" / m).folder
        held = _held_out(task, model, data, whole, final, tfidf[0])
    report = {
        "modality": m,
        "layout": "pairs",
        "rows": len(rows),
        "records": n,
        "train_pairs": len(pairs),
        "classes": len(np.unique(classes[rows])),
        "folds": cv.folds,
        "oof": table,
        "fusion": final.model_dump(mode="json"),
        "signals": list(kept.thresholds),
        "marginal": marginal,
        "left_out": dict(dropped),
        "held_out": held,
        "cv_logs": res.logs,
        "final_log": final_log,
        "cv_seconds": res.seconds,
        "seconds": time.perf_counter() - t0,
    }
    configs = {"train_config": train, "model_config": model_config, "cv_config": cv}
    write_trained(out, m, res, cat.posting_id, final, configs, report, artifacts, other)
    return report


def _held_out(
    task: Task,
    model: Any,
    data: PairData,
    whole: PairPool,
    final: FusionConfig,
    tfidf: FusionConfig,
) -> list[dict[str, Any]]:
    """Pairwise P/R/F1 on each split other than train (valid, test where present) of the
    final model's matches over every record (`whole`: the pool of every record, its TF-IDF
    and phash neighbours reused), and of TF-IDF alone, both as tuned."""
    splits = [s for s in data.splits if s != "train"]
    if not splits:
        return []
    x = task.embed(model, np.arange(len(data.catalogue)))
    nb = {**whole.signals, task.modality: self_knn(x, None, device="cpu")}
    out = []
    for s in splits:
        p = data.splits[s]  # row ids of the catalogue: those of the whole pool
        pool = dataclasses.replace(whole, signals=nb, pairs=(p.left, p.right, p.label))
        for name, cfg in (("tfidf alone", tfidf), ("final", final)):
            out.append({"split": s, "pipeline": name, **pair_pools_prf([pool], cfg)})
    return out
