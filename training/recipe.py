"""The training recipe: GroupKFold CV with out-of-fold embeddings, out-of-fold threshold
tuning (every signal and the fusion), the pool-size study, a final fit on all rows, and
export to a model folder that `pricematch match --model` uses directly.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.data.listings import Catalogue
from index.data.oof import write_oof
from index.features.embed import Encoders
from index.features.embed import embed as embed_features
from index.features.tfidf import TfidfConfig
from index.matching.fusion import FusionConfig, Neighbours
from index.matching.selfmatch import self_neighbours
from index.search.knn import self_knn
from index.store.model import write_model
from index.tuning.grids import GRIDS, Pool, group_folds, score_pools, sub_pools, tune_pools
from index.tuning.metrics import mean_f1
from training.config import CVConfig, TrainConfig, save_config
from training.tasks import Task
from training.trainer import Trainer

log = logging.getLogger(__name__)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels as 0..classes-1."""
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def embedding_f1(x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best mean F1 (and its threshold) of an embedding alone on one pool."""
    D, I = self_knn(x, None, device="cpu")
    best = (0.0, 0.0)
    for t in GRIDS["text"] + GRIDS["image"]:
        keep = np.where(t <= D, I, -1)
        f = mean_f1(keep, labels)
        if f > best[0]:
            best = (f, t)
    return best


@dataclass
class CVResult:
    """Out-of-fold embeddings and logs of a cross-validation."""

    oof: np.ndarray  # (n, dim) each row embedded by the fold model that did not train on it
    folds: list[tuple[np.ndarray, np.ndarray]]
    logs: list[list[dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0
    #: per fold, the `embed_rows` embedded by that fold's model (when asked for)
    fold_embeddings: list[np.ndarray] = field(default_factory=list)


def cross_validate(
    task: Task,
    labels: np.ndarray,
    train: TrainConfig,
    cv: CVConfig,
    workdir: Path,
    rows: np.ndarray | None = None,
    show_progress: bool = False,
    groups: np.ndarray | None = None,
    score: Callable[[np.ndarray, np.ndarray], float] | None = None,
    embed_rows: np.ndarray | None = None,
) -> CVResult:
    """Train one model per GroupKFold fold; embed each validation fold with its model.

    Args:
        task: the modality's model/data.
        labels: (n,) class of every row (the ArcFace head's).
        rows: rows to use (default all); others get zero embeddings.
        workdir: per-fold checkpoints (resumable).
        groups: (n,) what the folds split by (default `labels`); for pairwise data the
            connected components of every labelled pair, so no pair straddles two folds.
        score: (embeddings (m, d) of validation rows, those rows (m,)) -> the metric logged
            after each epoch (default: `embedding_f1` on `labels`).
        embed_rows: rows every fold model also embeds (`CVResult.fold_embeddings`).
    """
    t0 = time.perf_counter()
    rows = np.arange(len(labels)) if rows is None else rows
    groups = labels if groups is None else groups
    folds = [(rows[tr], rows[va]) for tr, va in group_folds(groups[rows], cv.folds, train.seed)]
    oof = np.zeros((len(labels), task.dim), np.float32)
    logs = []
    per_fold: list[np.ndarray] = []
    for f, (tr, va) in enumerate(folds):
        log.info(
            "fold %d/%d: %d train rows, %d validation rows", f + 1, len(folds), len(tr), len(va)
        )
        torch.manual_seed(train.seed + f)  # its first weights (projection), run to run
        model = task.build()
        y = relabel(labels[tr])
        trainer = Trainer(model, int(y.max()) + 1, task.dim, train, workdir / f"fold{f}.pt")

        def evaluate(m: Any, va: np.ndarray = va) -> float:
            x = task.embed(m, va)
            return score(x, va) if score is not None else embedding_f1(x, labels[va])[0]

        hist = trainer.fit(
            task.loader(tr, y, train), evaluate=evaluate, show_progress=show_progress
        )
        logs.append([h.__dict__ for h in hist])
        oof[va] = task.embed(model, va)
        if embed_rows is not None:
            per_fold.append(task.embed(model, embed_rows))
    return CVResult(
        oof=oof,
        folds=folds,
        logs=logs,
        seconds=time.perf_counter() - t0,
        fold_embeddings=per_fold,
    )


def pool_signals(
    cat: Catalogue, rows: np.ndarray, dense: dict[str, np.ndarray], tfidf: TfidfConfig | None = None
) -> dict[str, Neighbours]:
    """Neighbours of `rows` matched among themselves: TF-IDF fitted on the pool, phash, and
    the given dense embeddings (name -> (n_all, d), indexed by row)."""
    sub = cat.subset(rows)
    sub.image = None  # images only through `dense`; phash from the column
    feats = embed_features(sub, Encoders(), tfidf_config=tfidf)
    nb = self_neighbours(feats, device="cpu")
    for name, x in dense.items():
        nb[name] = self_knn(x[rows], None, device="cpu")
    return nb


def pool_study(
    cat: Catalogue,
    labels: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    dense: dict[str, np.ndarray],
    start: FusionConfig,
) -> dict[str, Any]:
    """How the best thresholds move with pool size.

    Each validation fold is one model's embedding space, so pools are made inside folds:
    the fold split into 4 (size N/4 of the fold, "N"), 2 (2N) and 1 (4N) group-disjoint
    pools. Thresholds are tuned on each size and those tuned on the smallest pools are
    carried to the larger ones.

    Returns:
        Per size: rows, tuned thresholds and F1; F1 of the smallest-pool thresholds carried
        up; and a per-signal slope of threshold against log2(pool size).
    """
    sizes: dict[int, list[Pool]] = {4: [], 2: [], 1: []}
    for f, (_, va) in enumerate(folds):
        for parts in sizes:
            # min_rows: a tiny fold can leave a sub-pool empty
            for p in sub_pools(va, labels, parts, seed=f, min_rows=2):
                sizes[parts].append((pool_signals(cat, p, dense), labels[p]))
    out: dict[str, Any] = {"sizes": []}
    tuned: dict[int, FusionConfig] = {}
    for parts, pools in sizes.items():
        cfg, f1 = tune_pools(pools, start, rounds=1, tune_min2=False)
        tuned[parts] = cfg
        out["sizes"].append({"rows": cfg.tuned_rows, "f1": f1, "thresholds": dict(cfg.thresholds)})
    small = tuned[4]
    out["carried_from_smallest"] = [
        {
            "rows": tuned[parts].tuned_rows,
            "f1_carried": score_pools(pools, small),
            "f1_own": score_pools(pools, tuned[parts]),
        }
        for parts, pools in sizes.items()
    ]
    x = np.log2([tuned[p].tuned_rows or 1 for p in sizes])
    slopes = {}
    for s in small.thresholds:
        y = np.array([tuned[p].thresholds[s] for p in sizes])
        slopes[s] = float(np.polyfit(x, y, 1)[0]) if len(set(x.tolist())) > 1 else 0.0
    out["slope_per_doubling"] = slopes
    return out


def write_model_dir(
    out: Path,
    fusion: FusionConfig,
    configs: dict[str, Any],
    report: dict[str, Any],
    artifacts: dict[str, Path],
) -> None:
    """Assemble a model folder (`index.store.model.write_model`: encoder artifacts and
    fusion.json), then the training configs and the CV report beside them."""
    write_model(out, fusion, artifacts)
    for name, cfg in configs.items():
        save_config(cfg, out / f"{name}.json")
    (out / "cv_report.json").write_text(
        json.dumps(report, indent=2, default=float), encoding="utf-8"
    )


def final_fit(
    task: Task,
    labels: np.ndarray,
    rows: np.ndarray,
    train: TrainConfig,
    work: Path,
    show_progress: bool = False,
) -> tuple[Any, list[dict[str, Any]]]:
    """The final fit on `rows` (classes `labels[rows]`), resumable from `work/final.pt`;
    returns the model and its epoch logs."""
    torch.manual_seed(train.seed)
    model = task.build()
    y = relabel(labels[rows])
    trainer = Trainer(model, int(y.max()) + 1, task.dim, train, work / "final.pt")
    hist = trainer.fit(task.loader(rows, y, train), show_progress=show_progress)
    return model, [h.__dict__ for h in hist]


def write_trained(
    out: Path,
    modality: str,
    res: CVResult,
    posting_ids: list[str],
    fusion: FusionConfig,
    configs: dict[str, Any],
    report: dict[str, Any],
    artifacts: dict[str, Path],
    other: dict[str, Any],
) -> None:
    """Finish a training run: export the other modalities' default encoders (`other`: name
    -> callable(folder)), write the out-of-fold embeddings and the model folder
    (`write_model_dir`), then remove the exported copies from `out/work`."""
    work = out / "work"
    artifacts = {
        **artifacts,
        **{name: export(work / name).folder for name, export in other.items()},
    }
    write_oof(out / "oof", modality, res.oof, res.folds, posting_ids)
    write_model_dir(out, fusion, configs, report, artifacts)
    for name in artifacts:
        shutil.rmtree(work / name, ignore_errors=True)


def _table(name: str, pools: list[Pool], start: FusionConfig, signal: str) -> list[dict[str, Any]]:
    """Tuned out-of-fold rows: `signal` alone, and fused with TF-IDF and phash."""
    alone = start.with_(thresholds={signal: start.thresholds[signal]}, min2_signal=signal)  # type: ignore[index]
    cfg_a, f_a = tune_pools(pools, alone, min2_signals=(signal,))
    cfg_f, f_f = tune_pools(pools, start)
    return [
        _row(f"{signal} alone ({name})", pools, cfg_a, f_a),
        _row(f"tfidf+phash+{signal} ({name})", pools, cfg_f, f_f),
    ]


def _row(name: str, pools: list[Pool], cfg: FusionConfig, f1: float) -> dict[str, Any]:
    """One OOF table row: the F1 over all pools, and each fold's pool scored on its own."""
    per_fold = [score_pools([p], cfg) for p in pools]
    return {"pipeline": name, "f1": f1, "per_fold": per_fold, "config": cfg.model_dump()}


def run(
    task: Task,
    cat: Catalogue,
    out: Path,
    train: TrainConfig,
    cv: CVConfig,
    model_config: Any,
    other: dict[str, Any],
    rows: np.ndarray | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """The whole recipe for one modality; writes the model folder `out`.

    Args:
        task: the modality being trained.
        cat: labelled training listings.
        out: model folder to write (`out/work` keeps resumable checkpoints).
        other: name -> callable(folder) exporting the other modality's default encoder.
        rows: rows usable for this modality (e.g. readable images); default all.

    Returns:
        The report written to `out/cv_report.json`.
    """
    t0 = time.perf_counter()
    labels = cat.labels
    rows = np.arange(len(cat)) if rows is None else rows
    work = out / "work"
    m = task.modality
    res = cross_validate(task, labels, train, cv, work, rows=rows, show_progress=show_progress)
    folds = res.folds
    base = task.baseline(np.arange(len(cat)))
    start = FusionConfig().with_(
        thresholds={
            k: v for k, v in FusionConfig().thresholds.items() if k in ("tfidf", "phash", m)
        }
    )
    table: list[dict[str, Any]] = []
    # TF-IDF and phash neighbours of each validation pool, computed once; the dense
    # signal (untrained or trained) is added per table.
    shared = [(pool_signals(cat, va, {}), va) for _, va in folds]

    def with_dense(x: np.ndarray) -> list[Pool]:
        return [({**nb, m: self_knn(x[va], None, device="cpu")}, labels[va]) for nb, va in shared]

    tfidf_only = [(nb, labels[va]) for nb, va in shared]
    cfg_t, f_t = tune_pools(
        tfidf_only, start.with_(thresholds={"tfidf": start.thresholds["tfidf"]})
    )
    table.append(_row("tfidf alone", tfidf_only, cfg_t, f_t))
    if base is not None:
        table += _table("untrained", with_dense(base), start, m)
    pools = with_dense(res.oof)
    trained = _table("trained", pools, start, m)
    table += trained
    fused = FusionConfig.model_validate(trained[1]["config"])
    study = pool_study(cat, labels, folds, {m: res.oof}, fused)
    # The thresholds tuned on the validation pools, with the study's slopes: matching a
    # pool of another size moves them (`FusionConfig.for_pool`). Signals this run did not
    # tune keep the default thresholds.
    final = fused.with_(
        thresholds={**FusionConfig().thresholds, **fused.thresholds},
        pool_slopes=study["slope_per_doubling"],
    )

    artifacts: dict[str, Path] = {}
    final_log: list[dict[str, Any]] = []
    if cv.final_fit:
        log.info("final fit on all %d rows", len(rows))
        model, final_log = final_fit(task, labels, rows, train, work, show_progress)
        artifacts[m] = task.export(model, work / m).folder
    report = {
        "modality": m,
        "rows": len(rows),
        "groups": len(np.unique(labels[rows])),
        "folds": cv.folds,
        "oof": table,
        "pool_study": study,
        "fusion": final.model_dump(),
        "cv_logs": res.logs,
        "final_log": final_log,
        "cv_seconds": res.seconds,
        "seconds": time.perf_counter() - t0,
    }
    configs = {"train_config": train, "model_config": model_config, "cv_config": cv}
    write_trained(out, m, res, cat.posting_id, final, configs, report, artifacts, other)
    return report
