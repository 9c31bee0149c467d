"""The pair re-ranker (issue 13): pairwise-labelled data, pairwise metrics, candidates,
pair features, the decision rule, the saved ranker, `train ranker`, and the ranker used by
`match`, `evaluate` and `/match`."""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.cli.parser import main
from index.data.listings import read_catalogue
from index.data.pairs import Pairs, pair_components, read_pair_folder
from index.errors import CatalogueError, EncoderError
from index.features.embed import embed
from index.features.tfidf import TfidfConfig
from index.matching.ranker import (
    Ranker,
    RankerConfig,
    candidate_pairs,
    feature_names,
    pair_features,
    rank_matches,
)
from index.matching.selfmatch import match_catalogue, self_neighbours
from index.store.model import load_encoders, load_model
from index.tuning.metrics import pair_prf, pair_report, predicted_pairs
from index.tuning.ranker import fit
from tests.fakes import no_vector_features, write_tables


def write_pair_folder(root: Path, with_b: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tableA.csv").write_text('id,title\n1,"hp 388504-b21 internal"\n2,sun xta 73gb\n')
    if with_b:
        (root / "tableB.csv").write_text("id,name,brand\n10,hp 388504-b21,hp\n11,other,x\n")
    (root / "train.csv").write_text("ltable_id,rtable_id,label\n1,10,1\n2,11,0\n")
    (root / "valid.csv").write_text("ltable_id,rtable_id,label\n2,10,0\n")
    return root


def test_pair_folder_becomes_one_catalogue_and_row_pairs(tmp_path: Path) -> None:
    data = read_pair_folder(write_pair_folder(tmp_path / "er"))
    cat = data.catalogue
    assert cat.posting_id == ["a-1", "a-2", "b-10", "b-11"]
    # tableA has a title; tableB has none: its attributes are joined
    assert cat.title == ["hp 388504-b21 internal", "sun xta 73gb", "hp 388504-b21 hp", "other x"]
    tr = data.splits["train"]
    assert tr.left.tolist() == [0, 1] and tr.right.tolist() == [2, 3]
    assert tr.label.tolist() == [True, False]
    both = data.pairs("train", "valid")
    assert len(both) == 3 and both.right.tolist() == [2, 3, 2]
    with pytest.raises(CatalogueError, match="no test pairs"):
        data.pairs("test")


def test_one_table_with_pairs(tmp_path: Path) -> None:
    root = write_pair_folder(tmp_path / "er", with_b=False)
    (root / "train.csv").write_text("ltable_id,rtable_id,label\n1,2,0\n")
    (root / "valid.csv").unlink()
    data = read_pair_folder(root)
    assert data.catalogue.posting_id == ["a-1", "a-2"]
    assert data.splits["train"].right.tolist() == [1]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ("ltable_id,rtable_id,label\n1,99,1\n", "unknown id"),
        ("ltable_id,rtable_id,label\n1,10,2\n", "unknown id or label"),
        ("l,r,label\n1,10,1\n", "header must start"),
        ("ltable_id,rtable_id,label\n1,10\n", "expected ltable_id"),
    ],
)
def test_bad_pair_files_name_the_problem(tmp_path: Path, pairs: str, message: str) -> None:
    root = write_pair_folder(tmp_path / "er")
    (root / "train.csv").write_text(pairs)
    with pytest.raises(CatalogueError, match=message):
        read_pair_folder(root)


def test_not_a_pair_folder(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="no tableA.csv"):
        read_pair_folder(tmp_path)


def test_components_of_the_positive_pairs() -> None:
    p = Pairs(np.array([0, 1, 3]), np.array([1, 2, 4]), np.array([True, True, False]))
    comp = pair_components(5, p)
    assert comp[0] == comp[1] == comp[2]
    assert len({comp[0], comp[3], comp[4]}) == 3  # a negative pair joins nothing


def test_pair_prf_counts_only_labelled_pairs() -> None:
    pred = np.array([True, True, False, False, True])
    y = np.array([True, False, True, False, True])
    r = pair_prf(pred, y)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3) and r["pairs"] == 5 and r["positives"] == 3
    assert pair_prf(np.zeros(2, bool), np.zeros(2, bool))["f1"] == 0.0


def test_predicted_pairs_either_direction() -> None:
    I = np.array([[0, 2, -1], [1, -1, -1], [2, -1, -1]])
    got = predicted_pairs(I, np.array([0, 2, 0]), np.array([2, 0, 1]))
    assert got.tolist() == [True, True, False]
    rep = pair_report(I, np.array([2, 0]), np.array([0, 1]), np.array([1, 1]))
    assert rep["recall"] == 0.5 and rep["precision"] == 1.0


def test_candidates_are_unordered_distinct_and_floored_inclusively() -> None:
    D = np.array([[1.0, 0.5, 0.2], [1.0, 0.5, 0.19], [1.0, 0.2, -np.inf]], np.float32)
    I = np.array([[0, 1, 2], [1, 0, 2], [2, 0, -1]])
    cfg = RankerConfig(top_k=2, floors={"tfidf": 0.2})
    got = candidate_pairs({"tfidf": (D, I)}, 3, cfg)
    assert got.tolist() == [[0, 1], [0, 2]]  # (1, 2) at 0.19 is below the floor
    assert candidate_pairs({"tfidf": (D, I)}, 3, RankerConfig(top_k=1, floors={})).tolist() == [
        [0, 1],
        [0, 2],
    ]


def test_rank_matches_threshold_single_and_cap() -> None:
    pairs = np.array([[0, 1], [0, 2], [1, 2], [3, 4]])
    p = np.array([0.9, 0.5, 0.49, 0.3], np.float32)
    cfg = RankerConfig(threshold=0.5, single_threshold=0.3, max_matches=50)
    I, S = rank_matches(pairs, p, 5, cfg)
    rows = [[j for j in r if j >= 0] for r in I.tolist()]
    assert rows[0] == [0, 1, 2]  # 0.5 >= 0.5 is kept
    assert rows[2] == [2, 0]  # 0.49 < 0.5, but 0.5 to row 0 passes
    assert rows[3] == [3, 4] and rows[4] == [4, 3]  # alone: best at 0.3 >= single 0.3
    assert S[0, 0] == np.inf and S[0, 1] == pytest.approx(0.9)
    I, _ = rank_matches(pairs, p, 5, RankerConfig(threshold=0.5, single_threshold=0.31))
    assert [j for j in I[3] if j >= 0] == [3]
    I, _ = rank_matches(pairs, p, 5, RankerConfig(threshold=0.1, max_matches=2))
    assert I.shape == (5, 2) and I[0].tolist() == [0, 1]


def test_pair_features_exact_similarities(synth: Path, model_dir: Path) -> None:
    cat = read_catalogue(synth / "listings.csv")
    feats = embed(cat, load_encoders(model_dir, device="cpu"), tfidf_config=TfidfConfig())
    nb = self_neighbours(feats, device="cpu")
    pairs = np.array([[0, 1], [2, 7], [3, 3 + 1]])
    signals = ["tfidf", "phash", "text"]
    X = pair_features(pairs, feats, nb, cat.title, signals)
    names = feature_names(signals)
    assert X.shape == (3, len(names)) and X.dtype == np.float32
    col = {n: X[:, i] for i, n in enumerate(names)}
    want_tfidf = [float(feats.X[a].multiply(feats.X[b]).sum()) for a, b in pairs]
    assert np.allclose(col["tfidf_sim"], want_tfidf, atol=1e-6)
    assert feats.text is not None
    want_text = [float(feats.text[a] @ feats.text[b]) for a, b in pairs]
    assert np.allclose(col["text_sim"], want_text, atol=1e-5)
    want_ham = [
        bin(int(cat.image_phash[a], 16) ^ int(cat.image_phash[b], 16)).count("1") for a, b in pairs
    ]
    assert col["phash_distance"].tolist() == want_ham


def test_title_features_numbers_and_codes() -> None:
    titles = ["lipstick 3gr red a12b", "lipstick 5gr red a12b", "bag"]
    feats = no_vector_features(3)
    names = feature_names([])
    X = pair_features(np.array([[0, 1], [0, 2]]), feats, {}, titles, [])
    col = {n: X[:, i] for i, n in enumerate(names)}
    assert col["num_conflict"].tolist() == [1.0, 0.0]  # 3 vs 5; "bag" states no number
    assert col["unit_conflict"].tolist() == [1.0, 0.0]
    assert col["code_shared"].tolist() == [1.0, 0.0]
    # tokens of the normalised titles (numbers split from units): 6 shared of 8
    assert col["jaccard"][0] == pytest.approx(6 / 8)


def test_density_is_read_at_the_pools_scale_of_the_ranks() -> None:
    """The density columns read rank 1 (the nearest other row) as listed at any scale and
    rank 9 at 9 * density_at: a rank between two whole ranks interpolates, one under 1
    reads the nearest other row, one past the list is NaN; the row itself and -1 are no
    neighbours."""
    titles = ["a", "b", "c"]
    feats = no_vector_features(3)
    # row 0's other neighbours: 0.9, 0.7, 0.5 (itself listed first); rows 1, 2: two others
    I = np.array([[0, 1, 2, 1], [1, 0, 2, -1], [2, 1, 0, -1]])
    D = np.array([[1.0, 0.9, 0.7, 0.5], [1.0, 0.8, 0.6, 0.0], [1.0, 0.4, 0.2, 0.0]], np.float32)
    names = feature_names(["combined"])
    col = lambda X, name: X[:, names.index(name)]  # noqa: E731
    pairs = np.array([[0, 1], [1, 2]])
    X1 = pair_features(pairs, feats, {"combined": (D, I)}, titles, ["combined"])
    assert col(X1, "combined_density2_min").tolist() == pytest.approx([0.8, 0.4])
    assert col(X1, "combined_density2_max").tolist() == pytest.approx([0.9, 0.8])
    assert np.isnan(col(X1, "combined_density10_max")).all()  # nobody lists 9 others
    # at 4x: the nearest other row still at rank 1, rank 9 at 36 (past every list)
    X4 = pair_features(pairs, feats, {"combined": (D, I)}, titles, ["combined"],
                       density_at=2.0)
    assert col(X4, "combined_density2_min").tolist() == pytest.approx([0.8, 0.4])
    assert col(X4, "combined_density2_max").tolist() == pytest.approx([0.9, 0.8])
    assert np.isnan(col(X4, "combined_density10_max")).all()
    # at a quarter: rank 1 (as listed) and 9/4 (a quarter of the way from 2 to 3)
    Xq = pair_features(pairs, feats, {"combined": (D, I)}, titles, ["combined"],
                       density_at=0.25)
    assert col(Xq, "combined_density2_max").tolist() == pytest.approx([0.9, 0.8])
    # row 0: 0.75 * 0.7 + 0.25 * 0.5; rows 1 and 2 have no 3rd: their 2nd
    assert col(Xq, "combined_density10_max").tolist() == pytest.approx([0.65, 0.6])
    assert col(Xq, "combined_density10_min").tolist() == pytest.approx([0.6, 0.2])
    # at 1/9: rank 9 reads the nearest other row as rank 1 does
    X9 = pair_features(pairs, feats, {"combined": (D, I)}, titles, ["combined"],
                       density_at=1 / 9)
    assert np.array_equal(col(X9, "combined_density10_min"), col(X9, "combined_density2_min"))


def test_neighbour_ranks_are_read_at_the_pools_scale() -> None:
    """A pair's rank columns (its place in each side's list) are divided by rank_at: in
    a pool 4x the ranker's (rank_at 2) a rank of 3 reads as 1.5; NaN where unlisted."""
    titles = ["a", "b", "c"]
    feats = no_vector_features(3)
    I = np.array([[0, 1, -1], [1, 0, 2], [2, 1, -1]])
    D = np.array([[1.0, 0.9, 0.0], [1.0, 0.8, 0.6], [1.0, 0.4, 0.0]], np.float32)
    names = feature_names(["combined"])
    col = lambda X, name: X[:, names.index(name)]  # noqa: E731
    pairs = np.array([[0, 1], [1, 2], [0, 2]])
    X1 = pair_features(pairs, feats, {"combined": (D, I)}, titles, ["combined"])
    assert col(X1, "combined_rank_min")[:2].tolist() == [2.0, 2.0]
    assert col(X1, "combined_rank_max")[:2].tolist() == [2.0, 3.0]
    assert np.isnan(col(X1, "combined_rank_min")[2])  # neither lists the other
    X2 = pair_features(pairs, feats, {"combined": (D, I)}, titles, ["combined"],
                       rank_at=2.0)
    assert col(X2, "combined_rank_min")[:2].tolist() == [1.0, 1.0]
    assert col(X2, "combined_rank_max")[:2].tolist() == [1.0, 1.5]
    Xq = pair_features(pairs, feats, {"combined": (D, I)}, titles, ["combined"],
                       rank_at=0.5)
    assert col(Xq, "combined_rank_max")[:2].tolist() == [4.0, 6.0]
    # the density is read at its own scale, whatever rank_at is
    assert np.array_equal(col(Xq, "combined_density2_min"), col(X1, "combined_density2_min"))


def test_the_density_scale_is_the_square_root_of_the_pool_ratio() -> None:
    cfg = RankerConfig(density_rows=1000)
    assert cfg.density_scale(1000) == 1.0
    assert cfg.density_scale(4000) == 2.0 and cfg.density_scale(250) == 0.5
    assert cfg.density_scale(0) == 1.0
    assert RankerConfig().density_rows == 0 and RankerConfig().density_scale(10**6) == 1.0
    from index.matching.ranker import DENSITY_RANKS, density_rank

    assert DENSITY_RANKS == (1, 9)
    assert density_rank(1, 2.0) == 1.0 and density_rank(1, 0.25) == 1.0  # as listed
    assert density_rank(9, 2.0) == 18.0 and density_rank(9, 0.5) == 4.5
    assert density_rank(2, 1.5) == 3.0


def test_a_saved_ranker_predicts_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    signals = ["tfidf"]
    X = rng.random((400, len(feature_names(signals)))).astype(np.float32)
    y = X[:, 0] > 0.5
    r = Ranker(fit(X, y, rounds=20), signals, RankerConfig(threshold=0.4))
    back = Ranker.load(r.save(tmp_path / "ranker"))
    assert np.array_equal(back.predict(X), r.predict(X))
    assert back.config == r.config and back.signals == signals
    (tmp_path / "ranker" / "model.txt").unlink()
    with pytest.raises(EncoderError, match="not a ranker folder"):
        Ranker.load(tmp_path / "ranker")


def test_rank_matches_decides_only_the_rows_asked_for() -> None:
    pairs = np.array([[0, 1], [0, 2], [3, 4]])
    p = np.array([0.9, 0.8, 0.7], np.float32)
    cfg = RankerConfig(threshold=0.5)
    I, _ = rank_matches(pairs, p, 5, cfg, rows=np.array([0, 4]))
    rows = [[j for j in r if j >= 0] for r in I.tolist()]
    assert rows == [[0, 1, 2], [1], [2], [3], [4, 3]]  # 1, 2, 3: only themselves


def test_f1_report_of_some_rows_counts_their_matches_anywhere() -> None:
    from index.tuning.metrics import f1_report

    labels = np.array([0, 0, 1, 1])
    I = np.array([[0, 1], [1, 2], [2, 3], [3, -1]])
    rep = f1_report(I, labels, rows=np.array([1, 3]))
    # row 1: 2 predicted (1 true) of a group of 2: F1 0.5; row 3: 1 of 2: F1 2/3
    assert rep["rows"] == 2 and rep["f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert rep["mean_matches"] == pytest.approx(1.5)


def test_whole_pool_training_keeps_each_fold_unseen_by_its_model(
    synth: Path, strict_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fold f's pairs are scored by a model whose training pairs touch no row of fold f:
    its scores do not change when fold f's labels do (the other folds' models' may)."""
    import index.tuning.ranker as tr
    from index.matching.fusion import FusionConfig

    cat = read_catalogue(synth / "listings.csv")
    m = load_model(strict_model, device="cpu")
    pools, fold_of = tr.group_pools(cat, m.encoders, m.fusion, 3, "cpu", pooling="whole")
    assert fold_of is not None and len(pools) == 1 and len(pools[0].titles) == len(cat)
    assert sorted(set(fold_of.tolist())) == [0, 1, 2]
    pool = pools[0]
    signals = ["tfidf", "phash", "text"]
    predicted: list[np.ndarray] = []
    fitted: list[int] = []
    real_predict, real_fit = tr._predict, tr.fit
    monkeypatch.setattr(
        tr, "_predict", lambda b, X: predicted.append(real_predict(b, X)) or predicted[-1]
    )
    monkeypatch.setattr(
        tr, "fit", lambda X, y, *a, **k: fitted.append(len(y)) or real_fit(X, y, *a, **k)
    )
    ranker, rep = tr.train_on_whole(pool, fold_of, signals)
    first = predicted[:3]
    # each fold's model saw exactly the candidate pairs away from its fold
    pairs = candidate_pairs({s: pool.nb[s] for s in signals}, len(cat), RankerConfig())
    fa, fb = fold_of[pairs[:, 0]], fold_of[pairs[:, 1]]
    assert fitted[:3] == [int(((fa != f) & (fb != f)).sum()) for f in range(3)]
    assert [len(x) for x in first] == [int(((fa == f) | (fb == f)).sum()) for f in range(3)]
    assert rep["mode"] == "whole" and [r["rows"] for r in rep["folds"]] == [
        int((fold_of == f).sum()) for f in range(3)
    ]
    assert ranker.config.pool_rows == 0 and ranker.config.measured_for(10**9)  # no rule asked
    # fold 0's labels scrambled (each of its rows a group of its own): its scores stay
    rows0 = np.flatnonzero(fold_of == 0)
    labels = pool.labels.copy()
    labels[rows0] = labels.max() + 1 + np.arange(len(rows0))
    predicted.clear()
    tr.train_on_whole(replace(pool, labels=labels), fold_of, signals)
    assert np.array_equal(predicted[0], first[0])
    assert not all(np.array_equal(a, b) for a, b in zip(predicted[1:3], first[1:3], strict=True))
    # with the pool-size rule: tuned at the whole pool's size
    ranker, rep = tr.train_on_whole(
        pool, fold_of, signals, sub_pool=tr.sub_pool_maker(FusionConfig(), "cpu")
    )
    assert ranker.config.pool_rows == len(cat)
    assert ranker.config.measured_for(4 * len(cat))
    assert not ranker.config.measured_for(4 * len(cat) + 1)
    assert (len(cat), rep["pool_rule"]["points"][0][1]) == tuple(rep["pool_rule"]["points"][0])


def test_the_carry_check_trains_on_one_fold_and_decides_the_others(
    synth: Path, strict_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24's carry case out of fold: fold f's rows alone are the training sample, the
    other folds' rows (matched as one pool) the catalogue it decides and is scored on."""
    import index.tuning.ranker as tr
    from index.matching.fusion import FusionConfig

    cat = read_catalogue(synth / "listings.csv")
    m = load_model(strict_model, device="cpu")
    (pool,), fold_of = tr.group_pools(cat, m.encoders, m.fusion, 3, "cpu", pooling="whole")
    assert fold_of is not None and pool.labels is not None
    signals = ["tfidf", "phash", "text"]
    sub = tr.sub_pool_maker(FusionConfig(), "cpu")
    real = tr.carry_f1(pool, fold_of, signals, RankerConfig(), sub, folds=2)
    trained_on: list[list[str]] = []
    decided: list[list[str]] = []

    class SelfOnly:  # each row matched to itself only
        def match(self, feats, nb, titles):  # type: ignore[no-untyped-def]
            decided.append(list(titles))
            n = len(titles)
            return np.arange(n)[:, None], np.ones((n, 1), np.float32)

    def fake_train(sample, inner, sigs, config, sub_pool=None, **kw):  # type: ignore[no-untyped-def]
        trained_on.append(list(sample.titles))
        assert sorted(set(inner.tolist())) == [0, 1, 2] and sub_pool is sub
        return SelfOnly(), {}

    monkeypatch.setattr(tr, "train_on_whole", fake_train)
    got = tr.carry_f1(pool, fold_of, signals, RankerConfig(), sub, folds=2)
    assert len(got) == len(real) == 2
    titles = np.array(pool.titles)
    for f in (0, 1):
        assert sorted(trained_on[f]) == sorted(titles[fold_of == f].tolist())
        assert sorted(decided[f]) == sorted(titles[fold_of != f].tolist())
        rest = pool.labels[fold_of != f]
        size = {g: int((rest == g).sum()) for g in rest.tolist()}
        # a row matched to itself alone: F1 2 / (1 + its group's size)
        assert got[f] == pytest.approx(float(np.mean([2 / (1 + size[g]) for g in rest.tolist()])))
        assert real[f] > got[f] + 0.1  # a real ranker finds the other rows of its group
    assert tr.CARRY_FOLDS == 2


@pytest.fixture(scope="module")
def ranked_model(synth: Path, strict_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The strict fake model with a ranker trained by `pricematch train ranker`."""
    out = tmp_path_factory.mktemp("ranked") / "model"
    shutil.copytree(strict_model, out)
    rep = out.parent / "report.json"
    args = ["train", "ranker", str(synth / "listings.csv"), "--model", str(out), "--folds", "2"]
    assert main([*args, "-q", "--device", "cpu", "--report", str(rep), "--keep-anyway"]) == 0
    return out


def test_train_ranker_writes_it_with_an_out_of_fold_report(ranked_model: Path) -> None:
    meta = json.loads((ranked_model / "ranker" / "ranker.json").read_text())
    assert meta["signals"] == ["tfidf", "phash", "text"]
    assert len(meta["features"]) == len(feature_names(meta["signals"], weighted=True))
    assert meta["features"][-2:] == ["diff_idf_max", "diff_idf_share"]
    assert meta["word_weights"]["rows"] == sum(r["rows"] for r in json.loads(
        (ranked_model.parent / "report.json").read_text())["folds"])
    report = json.loads((ranked_model.parent / "report.json").read_text())
    assert len(report["folds"]) == 2 and len(report["fusion_f1"]) == 2
    assert all(0.0 <= f <= 1.0 for f in report["oof_f1"])
    assert load_model(ranked_model).ranker is not None
    # the default pooling: the whole CSV as one pool, so the ranker is tuned at its size
    rows = sum(r["rows"] for r in report["folds"])
    assert report["mode"] == "whole" and meta["config"]["pool_rows"] == rows
    assert meta["config"]["density_rows"] == rows  # its density read at its own ranks
    assert meta["config"]["scaled_ranks"] is False  # its pairs' ranks as listed (no graph)


def test_train_ranker_pool_folds_matches_each_fold_on_its_own(
    synth: Path, strict_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    shutil.copytree(strict_model, out)
    rep = tmp_path / "report.json"
    args = ["train", "ranker", str(synth / "listings.csv"), "--model", str(out), "--folds", "2"]
    argv = [*args, "--pool", "folds", "-q", "--device", "cpu", "--report", str(rep)]
    assert main([*argv, "--keep-anyway"]) == 0
    report = json.loads(rep.read_text())
    assert report["mode"] == "groups" and len(report["pool_rows"]) == 2
    meta = json.loads((out / "ranker" / "ranker.json").read_text())
    assert meta["config"]["pool_rows"] == int(np.ceil(np.mean(report["pool_rows"])))
    with pytest.raises(SystemExit) as e:  # argparse names the choices
        main([*args, "--pool", "all", "-q"])
    assert e.value.code == 2


def test_a_ranker_that_loses_is_not_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from index.cli.ranker import write_if_won

    rng = np.random.default_rng(0)
    X = rng.random((100, len(feature_names(["tfidf"])))).astype(np.float32)
    r = Ranker(fit(X, X[:, 0] > 0.5, rounds=5), ["tfidf"], RankerConfig())
    args = argparse.Namespace(model=str(tmp_path), keep_anyway=False)
    assert not write_if_won(args, r, False, "it lost")
    assert not (tmp_path / "ranker").exists()
    assert "not written: it lost" in capsys.readouterr().out
    assert write_if_won(args, r, True, "it lost") and (tmp_path / "ranker" / "model.txt").is_file()
    args.keep_anyway = True
    assert write_if_won(args, r, False, "it lost")
    assert "(it lost)" in capsys.readouterr().out


def test_match_uses_the_ranker_unless_told_not_to(
    ranked_model: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    csv_path = str(synth / "listings.csv")
    base = ["match", csv_path, "--model", str(ranked_model), "-q", "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "r.csv")]) == 0
    assert "(pair re-ranker)" in capsys.readouterr().out
    assert main([*base, "--no-ranker", "-o", str(tmp_path / "f.csv")]) == 0
    assert "(pair re-ranker)" not in capsys.readouterr().out
    m = load_model(ranked_model, device="cpu")
    cat = read_catalogue(synth / "listings.csv")
    want, _ = match_catalogue(cat, m.fusion, m.encoders, device="cpu", ranker=m.ranker)
    with open(tmp_path / "r.csv", newline="") as f:
        got = [row["matches"].split() for row in csv.DictReader(f)]
    assert got == want


def test_evaluate_an_entity_matching_folder(
    synth: Path, strict_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The synthetic catalogue as two tables and labelled pairs: pairwise scores."""
    cat = read_catalogue(synth / "listings.csv")
    root = tmp_path / "er"
    half = len(cat) // 2
    write_tables(cat.title, root, half)
    assert cat.label_group is not None
    pairs = [
        (a, b, int(cat.label_group[a] == cat.label_group[b]))
        for a in range(half)
        for b in range(half, len(cat))
    ]
    with open(root / "valid.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ltable_id", "rtable_id", "label"])
        w.writerows(pairs)
    rep = tmp_path / "rep.json"
    args = ["evaluate", str(root), "--model", str(strict_model), "--device", "cpu", "-q"]
    assert main([*args, "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    assert f"{len(pairs)} labelled valid pairs" in out and "scored on those pairs only" in out
    rows = {r["name"]: r for r in json.loads(rep.read_text())["rows"]}
    assert {"fused", "tfidf alone"} <= set(rows)
    assert rows["fused"]["pairs"] == len(pairs)
    assert rows["fused"]["positives"] == sum(p[2] for p in pairs)


def test_match_endpoint_uses_the_ranker_on_the_querys_candidates(
    ranked_model: Path, synth: Path, tmp_path: Path
) -> None:
    """Each catalogue listing asked by id gets what the ranker's self-match gives it among
    the listing's own candidates (a pair found only from the other side is not one)."""
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    cat = read_catalogue(synth / "listings.csv")
    m = load_model(ranked_model, device="cpu")
    assert m.ranker is not None
    want, feats = match_catalogue(cat, m.fusion, m.encoders, device="cpu", ranker=m.ranker)
    nb = self_neighbours(feats, device="cpu")
    cfg = m.ranker.config
    own_side = []
    for i in range(len(cat)):
        c = set()
        for name in m.ranker.signals:
            D, I = nb[name]
            top = cfg.top_k + 1
            c |= {
                cat.posting_id[j]
                for j, d in zip(I[i, :top], D[i, :top], strict=True)
                if j >= 0 and d >= cfg.floors.get(name, -np.inf)
            }
        own_side.append(c)
    s = Settings(model_dir=ranked_model, data_dir=tmp_path / "data", device="cpu")
    with TestClient(create_app(s)) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.02)
        phash = cat.image_phash or [""] * len(cat)
        body = [
            {"posting_id": p, "title": t, "image_phash": h}
            for p, t, h in zip(cat.posting_id, cat.title, phash, strict=True)
        ]
        assert c.post("/listings", json={"listings": body}).status_code == 200
        one_sided = 0
        for i, (q, w) in enumerate(zip(body, want, strict=True)):
            got = c.post("/match", json=q).json()["matches"]
            assert got[0]["posting_id"] == q["posting_id"] and got[0]["signals"] == ["self"]
            assert all(x["signals"] == ["ranker"] for x in got[1:])
            expected = {p for p in w if p == q["posting_id"] or p in own_side[i]}
            assert {x["posting_id"] for x in got} == expected, q["posting_id"]
            one_sided += len(expected) < len(w)
        assert one_sided < len(body) // 10  # most rows find all their partners themselves
        # a per-request threshold asks for the fusion
        got = c.post("/match", json={**body[0], "threshold": {"tfidf": 0.5}}).json()
        assert all(x["signals"] != ["ranker"] for x in got["matches"])


def test_the_pool_size_rule_moves_both_thresholds_by_the_slope() -> None:
    cfg = RankerConfig(threshold=0.5, single_threshold=0.3, pool_rows=1000, pool_slope=0.05)
    assert cfg.for_pool(1000) == cfg
    big = cfg.for_pool(4000)  # two doublings
    assert big.threshold == pytest.approx(0.6) and big.single_threshold == pytest.approx(0.4)
    small = cfg.for_pool(500)
    assert small.threshold == pytest.approx(0.45)
    # past the measured range (1/4x to 4x) the thresholds stay at its end
    assert cfg.for_pool(10**9) == cfg.for_pool(4000)
    assert cfg.for_pool(4001) == cfg.for_pool(4000) and cfg.for_pool(3999) != big
    assert cfg.for_pool(1) == cfg.for_pool(250) and cfg.for_pool(251) != cfg.for_pool(250)
    steep = replace(cfg, pool_slope=0.5)
    assert steep.for_pool(4000).threshold == 0.99  # clipped
    assert RankerConfig(threshold=0.5).for_pool(10**6).threshold == 0.5  # no rule: as tuned


class ConstantBooster:
    """Stands in for a LightGBM booster: every pair gets probability `p`."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict(self, X: np.ndarray, num_threads: int = 1) -> np.ndarray:
        return np.full(X.shape[0], self.p)


def test_ranker_match_applies_the_rule_for_the_pools_size(synth: Path) -> None:
    cat = read_catalogue(synth / "listings.csv")
    feats = embed(cat, tfidf_config=TfidfConfig())
    nb = self_neighbours(feats, device="cpu")
    n = len(cat)
    at = RankerConfig(threshold=0.5, single_threshold=0.5, pool_rows=n, pool_slope=0.2)
    r = Ranker(ConstantBooster(0.55), ["tfidf", "phash"], at)
    I, _ = r.match(feats, nb, cat.title)
    assert (I[:, 1] >= 0).any()  # 0.55 >= 0.5 at the tuned size
    tuned_small = replace(at, pool_rows=n // 2)
    I, _ = Ranker(ConstantBooster(0.55), ["tfidf", "phash"], tuned_small).match(
        feats, nb, cat.title
    )
    assert (I[:, 1] < 0).all()  # one doubling: 0.7 > 0.55, nothing kept


def test_a_ranker_reads_the_density_at_the_scale_of_the_rows_searched(
    synth: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A self-match of n rows reads the density at sqrt(n / density_rows); /match's small
    pool (the query and its candidates) at the catalogue's n, not at its own few rows."""
    from index.features.embed import QueryFeatures
    from index.matching import ranker as ranker_mod
    from index.store.live import LiveCatalogue
    from index.store.live_match import rank_queries

    cat = read_catalogue(synth / "listings.csv")
    n = len(cat)
    feats = embed(cat, tfidf_config=TfidfConfig())
    nb = self_neighbours(feats, device="cpu")
    seen: list[tuple[float, float]] = []
    real = ranker_mod.pair_features

    def recording(*args: Any, **kwargs: Any) -> np.ndarray:
        seen.append((args[6] if len(args) > 6 else kwargs.get("density_at", 1.0),
                     args[7] if len(args) > 7 else kwargs.get("rank_at", 1.0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(ranker_mod, "pair_features", recording)
    fixed = Ranker(ConstantBooster(0.9), ["tfidf", "phash"], RankerConfig(density_rows=n * 4))
    fixed.match(feats, nb, cat.title)
    assert seen == [(0.5, 1.0)]  # a quarter of the trained pool: density at half the ranks
    seen.clear()
    r = Ranker(ConstantBooster(0.9), ["tfidf", "phash"],
               RankerConfig(density_rows=n * 4, scaled_ranks=True))
    r.match(feats, nb, cat.title)
    assert seen == [(0.5, 0.5)]  # and its pairs' ranks over that scale
    seen.clear()
    live = LiveCatalogue(dims={}, tfidf_config=TfidfConfig())
    hexes = list(cat.image_phash or [""] * n)
    live.upsert(cat.posting_id, [""] * n, QueryFeatures.build(cat.title, hexes))
    got = rank_queries(live, QueryFeatures.build(cat.title[:3], hexes[:3]), r,
                       list(cat.posting_id[:3]))
    assert any(len(m) > 1 for m in got) and seen == [(0.5, 0.5)] * 3


def test_features_subset_keeps_rows_and_masks(synth: Path, model_dir: Path) -> None:
    cat = read_catalogue(synth / "listings.csv")
    feats = embed(cat, load_encoders(model_dir, device="cpu"), tfidf_config=TfidfConfig())
    rows = np.array([5, 2, 9])
    sub = feats.subset(rows)
    assert len(sub) == 3 and sub.tfidf is feats.tfidf
    assert (feats.X[rows] != sub.X).nnz == 0
    assert np.array_equal(sub.phash, feats.phash[rows])
    assert feats.text is not None and sub.text is not None
    assert np.array_equal(sub.text, feats.text[rows])


def test_a_pool_far_larger_than_the_tuned_ones_is_still_decided_by_the_ranker(
    ranked_model: Path, synth: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from index.matching.ranker import POOL_RANGE

    assert POOL_RANGE == (0.25, 4.0)
    cfg = RankerConfig(pool_rows=100)
    assert cfg.measured_for(400) and not cfg.measured_for(401)
    assert cfg.measured_for(25) and not cfg.measured_for(24)
    assert RankerConfig().measured_for(10**9)  # no tuned size known: any pool
    m = load_model(ranked_model, device="cpu")
    assert m.ranker is not None
    cat = read_catalogue(synth / "listings.csv")
    small = replace(m.ranker, config=replace(m.ranker.config, pool_rows=len(cat) // 5))
    from index.matching.selfmatch import self_match

    with caplog.at_level("WARNING"):
        r = self_match(cat, m.fusion, m.encoders, device="cpu", ranker=small)
    assert r.ranked and "more than 4x" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        at4 = replace(small, config=replace(small.config, pool_rows=len(cat) // 4 + 1))
        assert self_match(cat, m.fusion, m.encoders, device="cpu", ranker=at4).ranked
    assert "more than 4x" not in caplog.text
    # the thresholds past 4x are those at 4x
    assert small.config.for_pool(len(cat)) == replace(
        small.config.for_pool(4 * small.config.pool_rows))


def test_ranker_marginals_leave_out_the_weakest_signal_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import index.tuning.ranker as tuning_ranker

    # designed OOF F1 of each signal set: text adds 0.0005 (< 0.001: out); then, among
    # tfidf + phash, phash adds exactly 0.001 (kept: the floor is inclusive)
    oof = {
        ("phash", "text", "tfidf"): 0.9000,
        ("phash", "tfidf"): 0.8995,
        ("phash", "text"): 0.80,
        ("text", "tfidf"): 0.85,
        ("tfidf",): 0.8985,
        ("phash",): 0.70,
    }
    calls: list[tuple[str, ...]] = []

    def fake_train(pools: object, signals: list[str], **kw: object) -> tuple[None, dict]:
        key = tuple(sorted(signals))
        calls.append(key)
        return None, {"oof_f1": [oof[key]] * 2}

    monkeypatch.setattr(tuning_ranker, "train_on_pools", fake_train)
    kept, left, first = tuning_ranker.ranker_marginals([], ["tfidf", "phash", "text"])
    assert kept == ["tfidf", "phash"] and left == [("text", 0.0005)]
    assert first == {"tfidf": 0.1, "phash": 0.05, "text": 0.0005}
    assert len(calls) == 1 + 3 + 2  # all, each left out, then each of the two left out
    # "combined" is made of text and image: it goes with either of them
    assert tuning_ranker.without(["tfidf", "text", "combined"], "text") == ["tfidf"]
    assert tuning_ranker.without(["tfidf", "text", "combined"], "tfidf") == ["text", "combined"]


def test_evaluate_tune_on_a_model_with_a_ranker_reports_the_rankers_marginals(
    synth: Path,
    ranked_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    import index.tuning.ranker as tuning_ranker

    signals = json.loads((ranked_model / "ranker" / "ranker.json").read_text())["signals"]
    assert {"tfidf", "phash", "text"} <= set(signals)
    # designed OOF F1: all 0.9; without tfidf 0.8, without phash 0.85, without text 0.8992
    # (text adds 0.0008 < 0.001); then without tfidf / phash from tfidf+phash(+the rest)
    seen: list[tuple[int, int, tuple[str, ...]]] = []

    def fake_train(pools: list, sigs: list[str], fold_of: np.ndarray, show: bool) -> tuple:
        seen.append((len(pools), int(fold_of.max()) + 1, tuple(sigs)))
        base = {"tfidf", "phash", "text", "image"} & set(sigs)
        f1 = 0.9 - 0.1 * ("tfidf" not in base) - 0.05 * ("phash" not in base)
        f1 -= 0.0008 * ("text" not in base and "text" in signals)
        return None, {"oof_f1": [f1, f1]}

    monkeypatch.setattr(tuning_ranker, "train_grouped", fake_train)
    rep = tmp_path / "r.json"
    argv = ["evaluate", str(synth / "listings.csv"), "--model", str(ranked_model), "--tune"]
    assert main([*argv, "-q", "--device", "cpu", "--folds", "3", "--report", str(rep)]) == 0
    r = json.loads(rep.read_text())
    assert r["ranker_marginal"]["tfidf"] == pytest.approx(0.1)
    assert r["ranker_marginal"]["phash"] == pytest.approx(0.05)
    assert r["ranker_marginal"]["text"] == pytest.approx(0.0008)
    assert r["ranker_left_out"] == {"text": pytest.approx(0.0008)}
    # pooled as the ranker was trained (one whole pool), in --folds group-disjoint folds
    assert {(n, k) for n, k, _ in seen} == {(1, 3)}
    assert seen[0][2] == tuple(signals)  # the ranker's own signals first
    out = capsys.readouterr().out
    assert "marginal F1 of each signal with the pair re-ranker" in out
    assert "train ranker --marginals` retrains it without it" in out


def test_train_ranker_marginals_on_the_synthetic_catalogue(
    synth: Path, strict_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "model"
    shutil.copytree(strict_model, out)
    rep = tmp_path / "report.json"
    args = ["train", "ranker", str(synth / "listings.csv"), "--model", str(out), "--folds", "2"]
    argv = [*args, "-q", "--device", "cpu", "--report", str(rep), "--keep-anyway", "--marginals"]
    assert main(argv) == 0
    report = json.loads(rep.read_text())
    assert set(report["marginal_f1"]) == {"tfidf", "phash", "text"}
    gone = {x["signal"] for x in report["left_out"]}
    assert all(report["marginal_f1"][s] < 0.001 for s in gone)
    meta = json.loads((out / "ranker" / "ranker.json").read_text())
    assert set(meta["signals"]) == {"tfidf", "phash", "text"} - gone
    printed = capsys.readouterr().out
    assert "marginal F1 of each signal" in printed
    pairs = write_pair_folder(tmp_path / "pairs")
    assert main(["train", "ranker", str(pairs), "--model", str(out), "-q", "--marginals"]) == 2
    assert "--marginals needs label groups" in capsys.readouterr().err


def _two_pair_pools():  # type: ignore[no-untyped-def]
    from index.tuning.grids import PairPool

    # pool A: rows 0-1 at 0.7 (a labelled match), 0-2 and 1-2 at 0.4 (0-2 a labelled
    # non-match); pool B: rows 0-1 at 0.6, a labelled non-match
    a = (
        np.array([[1.0, 0.7, 0.4], [1.0, 0.7, 0.4], [1.0, 0.4, 0.4]], np.float32),
        np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]]),
    )
    b = (np.array([[1.0, 0.6], [1.0, 0.6]], np.float32), np.array([[0, 1], [1, 0]]))
    pa = PairPool({"tfidf": a}, (np.array([0, 0]), np.array([1, 2]), np.array([True, False])))
    pb = PairPool({"tfidf": b}, (np.array([0]), np.array([1]), np.array([False])))
    return pa, pb


def test_pair_pools_prf_pools_the_pairs_and_keeps_threshold_inclusive() -> None:
    from index.matching.fusion import FusionConfig
    from index.tuning.grids import pair_pools_prf

    pa, pb = _two_pair_pools()
    cfg = FusionConfig(thresholds={"tfidf": 0.6}, min2=False, sources="any")
    r = pair_pools_prf([pa, pb], cfg)
    # A: 0-1 matched (tp); B: 0-1 at exactly 0.6 matched too (fp): pooled P 1/2, R 1/1
    # (the mean of each pool's F1 would be (1 + 0) / 2 = 0.5 instead of 2/3)
    assert (r["precision"], r["recall"]) == (0.5, 1.0)
    assert r["f1"] == pytest.approx(2 / 3) and r["pairs"] == 3
    assert pair_pools_prf([pa, pb], cfg.with_(thresholds={"tfidf": 0.601}))["f1"] == 1.0


def test_tune_pair_pools_counts_only_labelled_pairs() -> None:
    """Row 1-2 of pool A (0.4) is unlabelled: a threshold that links it costs nothing,
    while 0-2 (also 0.4, a labelled non-match) does; the tuned threshold lies above 0.6
    (B's non-match) and at most 0.7 (A's match)."""
    from index.matching.fusion import FusionConfig
    from index.tuning.grids import tune_pair_pools

    pa, pb = _two_pair_pools()
    start = FusionConfig(thresholds={"tfidf": 0.3}, min2=False, sources="any")
    cfg, f1 = tune_pair_pools([pa, pb], start)
    assert f1 == 1.0 and 0.6 < cfg.thresholds["tfidf"] <= 0.7
    assert cfg.tuned_rows == round((3 + 2) / 2)


def _service_match_first(bundle: Path, synth: Path, tmp_path: Path) -> list[dict]:
    """The service on `bundle` answers /match for the catalogue's first listing: its
    matches."""
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    cat = read_catalogue(synth / "listings.csv")
    s = Settings(bundle=bundle, data_dir=tmp_path / "data", device="cpu")
    with TestClient(create_app(s)) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.02)
        q = {"posting_id": cat.posting_id[0], "title": cat.title[0]}
        if cat.image_phash:
            q["image_phash"] = cat.image_phash[0]
        return list(c.post("/match", json=q).json()["matches"])


def test_a_bundle_carries_the_ranker_to_match_and_the_service(
    ranked_model: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """build-index from a model with a ranker: the bundle holds it (checksummed), `match
    --bundle` decides with it as `match --model` does, and a service on the bundle answers
    /match with it."""

    from index.errors import BundleError
    from index.store.bundle import load_bundle, verify_bundle

    csv_path = str(synth / "listings.csv")
    bundle = tmp_path / "bundle"
    argv = ["build-index", csv_path, "--model", str(ranked_model), "--out", str(bundle), "-q"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "(with the pair re-ranker)" in capsys.readouterr().out
    assert {"ranker/model.txt", "ranker/ranker.json"} <= set(verify_bundle(bundle)["files"])
    b = load_bundle(bundle, device="cpu")
    assert b.ranker is not None and b.ranker.signals == load_model(ranked_model).ranker.signals
    by_model, by_bundle = tmp_path / "m.csv", tmp_path / "b.csv"
    base = [csv_path, "-q", "--device", "cpu"]
    assert main(["match", *base, "--model", str(ranked_model), "-o", str(by_model)]) == 0
    assert main(["match", *base, "--bundle", str(bundle), "-o", str(by_bundle)]) == 0
    assert "(pair re-ranker)" in capsys.readouterr().out
    assert by_bundle.read_text() == by_model.read_text()
    assert main(["match", *base, "--bundle", str(bundle), "--no-ranker", "-o", str(by_bundle)]) == 0
    assert "(pair re-ranker)" not in capsys.readouterr().out
    got = _service_match_first(bundle, synth, tmp_path)
    assert len(got) > 1 and got[0]["signals"] == ["self"]
    assert all(x["signals"] == ["ranker"] for x in got[1:])
    (bundle / "ranker" / "ranker.json").write_text("{}")
    with pytest.raises(BundleError, match="ranker/ranker.json"):
        verify_bundle(bundle)


def test_a_kept_cascade_decides_in_match_the_bundle_and_the_service(
    ranked_model: Path, synth: Path, tmp_path: Path
) -> None:
    """Issue 25: a ranker whose cascade re-decides every pair with a cross-encoder that
    vetoes them all (band [0, 1.01), stack bias -20) leaves every row matched to itself
    alone, in `match --model`, `match --bundle` and the service's /match; without the
    cascade the same ranker matches. The bundle checksums the scorer's files."""
    pytest.importorskip("transformers")

    from index.errors import BundleError
    from index.matching.cross import Cascade
    from index.store.bundle import verify_bundle
    from tests.fakes import make_pair_base
    from training.config import CrossConfig
    from training.cross import PairStates

    model = tmp_path / "model"
    shutil.copytree(ranked_model, model)
    ranker = load_model(model).ranker
    assert ranker is not None
    base = make_pair_base(tmp_path / "base")
    states = PairStates(["a 1", "b 2"], ["a 1", "c 3"], CrossConfig(base=str(base), epochs=1))
    scorer = states.export(states.fit(np.arange(2), np.array([1, 0])), tmp_path / "cross")
    veto = Cascade(lo=0.0, hi=1.01, w_tree=0.0, w_cross=0.0, bias=-20.0)
    replace(ranker, cascade=veto, scorer=scorer).save(model / "ranker")
    csv_path = str(synth / "listings.csv")
    run = [csv_path, "-q", "--device", "cpu"]

    def matches(out: Path) -> list[list[str]]:
        rows = list(csv.DictReader(out.open(newline="")))
        return [r["matches"].split() for r in rows]

    assert main(["match", *run, "--model", str(ranked_model), "-o", str(tmp_path / "r.csv")]) == 0
    assert any(len(m) > 1 for m in matches(tmp_path / "r.csv"))  # the trees alone match
    assert main(["match", *run, "--model", str(model), "-o", str(tmp_path / "m.csv")]) == 0
    assert all(len(m) == 1 for m in matches(tmp_path / "m.csv"))
    bundle = tmp_path / "bundle"
    assert main(["build-index", *run, "--model", str(model), "--out", str(bundle)]) == 0
    assert "ranker/cross/model.onnx" in verify_bundle(bundle)["files"]
    assert main(["match", *run, "--bundle", str(bundle), "-o", str(tmp_path / "b.csv")]) == 0
    assert all(len(m) == 1 for m in matches(tmp_path / "b.csv"))
    got = _service_match_first(bundle, synth, tmp_path)
    assert [x["signals"] for x in got] == [["self"]]
    (bundle / "ranker" / "cross" / "model.onnx").write_bytes(b"changed")
    with pytest.raises(BundleError, match="ranker/cross/model.onnx"):
        verify_bundle(bundle)


def _valid_f1(out: str, name: str) -> str:
    """The F1 column (3 decimals, as printed) of the line starting with `name`."""
    line = next(ln for ln in out.splitlines() if ln.startswith(name))
    return line.split()[-1]


def test_train_ranker_valid_line_equals_evaluate_on_a_lopsided_folder(
    strict_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 28: table B ten times table A (each product once in A, its other listings and
    many unmatched records in B), sources cross_first. What `train ranker` prints for the
    valid pairs equals `evaluate --split valid` on the written model, to the third decimal.
    (The cause was the fusion's at-least-one-match of `link_sources`, applied after the
    ranker by `evaluate` and `match` only, adding back links the ranker left out.)"""
    import random

    from index.data.synthetic import SyntheticSpec, make_catalogue

    make_catalogue(tmp_path / "syn", SyntheticSpec(products=40, singletons=330, seed=5), False)
    cat = read_catalogue(tmp_path / "syn" / "listings.csv")
    assert cat.label_group is not None
    first: dict[str, int] = {}
    for i, g in enumerate(cat.label_group):
        first.setdefault(g, i)
    a_rows = sorted(first.values())[:36]
    b_rows = [i for i in range(len(cat)) if i not in set(a_rows)]
    assert len(b_rows) >= 9 * len(a_rows)
    order = a_rows + b_rows  # tableA = the first len(a_rows) rows
    titles = [cat.title[i] for i in order]
    labels = [cat.label_group[i] for i in order]
    root = tmp_path / "er"
    write_tables(titles, root, len(a_rows))
    rng = random.Random(0)
    pairs = []
    for a in range(len(a_rows)):
        bs = range(len(a_rows), len(order))
        pairs += [(a, b, 1) for b in bs if labels[a] == labels[b]]
        pairs += [(a, b, 0) for b in rng.sample(list(bs), 8) if labels[a] != labels[b]]
    rng.shuffle(pairs)
    cut = int(len(pairs) * 0.6)
    for split, part in (("train", pairs[:cut]), ("valid", pairs[cut:])):
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ltable_id", "rtable_id", "label"])
            w.writerows(part)
    model = tmp_path / "m"
    shutil.copytree(strict_model, model)
    cfg = json.loads((model / "fusion.json").read_text())
    (model / "fusion.json").write_text(json.dumps({**cfg, "sources": "cross_first"}))
    capsys.readouterr()
    argv = ["train", "ranker", str(root), "--model", str(model), "--keep-anyway", "-q"]
    assert main([*argv, "--device", "cpu"]) == 0
    trained = _valid_f1(capsys.readouterr().out, "valid, ranker")
    assert main(["evaluate", str(root), "--model", str(model), "--split", "valid", "-q"]) == 0
    evaluated = _valid_f1(capsys.readouterr().out, "pair re-ranker")
    assert trained == evaluated
    # a pool past the measured range: still the ranker, said on stderr and in --report
    meta = json.loads((model / "ranker" / "ranker.json").read_text())
    # out of fold, a labelled pair that is no candidate is never matched (as in `match`)
    rep_oof = meta["report"]
    assert 0.0 < rep_oof["candidate_recall"] <= 1.0
    assert rep_oof["train_oof"]["recall"] <= rep_oof["candidate_recall"]
    meta["config"]["pool_rows"] = 10  # tuned on 10 rows: 4 x 10 < this folder
    (model / "ranker" / "ranker.json").write_text(json.dumps(meta))
    rep = tmp_path / "rep.json"
    args = ["evaluate", str(root), "--model", str(model), "--split", "valid", "-q"]
    assert main([*args, "--report", str(rep)]) == 0
    out = capsys.readouterr()
    assert "pair re-ranker" in out.out
    assert json.loads(rep.read_text())["decided_by"] == "ranker"
    assert "more than 4x" in caplog.text


def test_train_ranker_in_sample_line_equals_evaluate_on_the_same_csv(
    synth: Path, strict_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 28 for label groups: the fold table is out of fold; the line `train ranker`
    prints as in sample is what `evaluate` of the same CSV on the written model prints."""
    model = tmp_path / "m"
    shutil.copytree(strict_model, model)
    listings = str(synth / "listings.csv")
    capsys.readouterr()
    assert main(["train", "ranker", listings, "--model", str(model), "--keep-anyway", "-q"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("in sample"))
    trained = line.split("prints): ")[1].split(";")[0]
    assert main(["evaluate", listings, "--model", str(model), "-q"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pair re-"))
    assert row.split()[2] == trained, (row, trained)


def _loop_title_features(titles: list[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The title features pair by pair, with Python sets (the vectorised code's oracle)."""
    import re

    from index.features.text import model_codes, normalize_title, parse_quantities, unit_conflict

    num = re.compile(r"(?<![a-z\d.,])\d+(?:[.,]\d+)?")
    rows = []
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        wi, wj = set(normalize_title(titles[i]).split()), set(normalize_title(titles[j]).split())
        ni, nj = set(num.findall(titles[i].lower())), set(num.findall(titles[j].lower()))
        ci, cj = set(model_codes(titles[i])), set(model_codes(titles[j]))
        union = len(wi | wj)
        rows.append([
            min(len(wi), len(wj)),
            max(len(wi), len(wj)),
            len(wi & wj) / union if union else 0.0,
            len(ni & nj),
            float(bool(ni) and bool(nj) and not ni & nj),
            len(ci & cj),
            float(bool(ci) and bool(cj) and not ci & cj),
            float(unit_conflict(parse_quantities(titles[i]), parse_quantities(titles[j]))),
        ])
    return np.asarray(rows, np.float32).reshape(len(rows), 8)


def test_vectorised_title_features_equal_the_pair_by_pair_sets() -> None:
    from index.matching.ranker import _title_features

    rng = np.random.default_rng(3)
    pieces = ["200gr", "400 gr", "1kg", "1000 gram", "2pcs", "3 pcs", "500ml", "1,5 L", "hp",
              "DSC-W120", "dscw120", "xta-3510", "64gb", "128 GB", "!!!", "", "susu", "bubuk",
              "v2", "3.5", "12", "Kaos &amp; celana", "iphone 11"]
    titles = [" ".join(rng.choice(pieces, rng.integers(0, 6))) for _ in range(80)]
    a, b = rng.integers(0, 80, 600), rng.integers(0, 80, 600)
    got = _title_features(titles, a, b)
    want = _loop_title_features(titles, a, b)
    np.testing.assert_allclose(np.stack(list(got.values()), axis=1), want, rtol=1e-6)
    assert want[:, 7].sum() > 10 and want[:, 4].sum() > 10 and want[:, 6].sum() > 5
    assert all(len(v) == 0 for v in _title_features(titles, a[:0], b[:0]).values())
    # with word weights: the same word rows give what `WordWeights.differences` gives
    from index.features.text import WordWeights

    w = WordWeights.fit(titles[:40])
    got_w = _title_features(titles, a, b, w)
    big, share = w.differences(titles, a, b)
    assert np.array_equal(got_w["diff_idf_max"], big)
    assert np.array_equal(got_w["diff_idf_share"], share)
    assert len(_title_features(titles, a[:0], b[:0], w)) == len(want[0]) + 2


def _loop_rank_matches(pairs: np.ndarray, p: np.ndarray, n: int, cfg: RankerConfig) -> np.ndarray:
    """`rank_matches` row by row (the vectorised code's oracle); probabilities compared in
    float32, as the ranker's are."""
    t, single = np.float32(cfg.threshold), np.float32(cfg.single_threshold)
    out = np.full((n, cfg.max_matches), -1, np.int64)
    for i in range(n):
        part = [(np.float32(pr), int(y if x == i else x))
                for (x, y), pr in zip(pairs, p, strict=True) if i in (x, y)]
        part.sort(key=lambda t: (-t[0], t[1]))
        keep = [j for pr, j in part if pr >= t]
        if not keep and part and part[0][0] >= single:
            keep = [part[0][1]]
        row = [i, *keep][: cfg.max_matches]
        out[i, : len(row)] = row
    return out


@pytest.mark.parametrize("cap", [1, 2, 4, 50])
def test_vectorised_rank_matches_equal_the_row_by_row_rule(cap: int) -> None:
    rng = np.random.default_rng(cap)
    n = 40
    pairs = np.unique(np.sort(rng.integers(0, n, (300, 2)), axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    p = np.round(rng.random(len(pairs)), 1).astype(np.float32)  # ties on purpose
    cfg = RankerConfig(threshold=0.7, single_threshold=0.4, max_matches=cap)
    I, S = rank_matches(pairs, p, n, cfg)
    np.testing.assert_array_equal(I, _loop_rank_matches(pairs, p, n, cfg))
    assert (S[:, 0] == np.inf).all()
    assert np.array_equal(I >= 0, np.isfinite(S) | np.isposinf(S))


def test_word_weights_by_hand() -> None:
    from index.features.text import WordWeights

    w = WordWeights.fit(["a b", "a c", "A  b", ""])
    n = 4
    idf = {"a": np.log(5 / 4) + 1, "b": np.log(5 / 3) + 1, "c": np.log(5 / 2) + 1}
    assert w.idf == pytest.approx(idf) and w.unseen == pytest.approx(np.log(1 + n) + 1)
    titles = ["a b", "a c", "a b", "", "a zz"]
    big, share = w.differences(titles, np.array([0, 0, 3, 0, 3]), np.array([1, 2, 3, 4, 0]))
    # (0,1): b and c in one only; (0,2) equal; (3,3) both empty; (0,4) b and unseen zz;
    # (3,0) every word in one only
    assert big.tolist() == pytest.approx([idf["c"], 0.0, 0.0, w.unseen, idf["b"]])
    a, b, c = idf["a"], idf["b"], idf["c"]
    assert share.tolist() == pytest.approx(
        [(b + c) / (a + b + c), 0.0, 0.0, (b + w.unseen) / (a + b + w.unseen), 1.0], rel=1e-6
    )
    back = WordWeights.from_json(json.loads(json.dumps(w.to_json())))
    assert back.idf == w.idf and back.rows == 4  # exact: what was trained on is served


def test_word_weight_features_do_not_depend_on_the_pool() -> None:
    """The same pair gets the same columns among 3 titles as among just its 2 (one
    listing against its candidates at /match): the weights are the ranker's, not the
    pool's."""
    from index.features.text import WordWeights, normalize_title

    rng = np.random.default_rng(5)
    words = ["susu", "bubuk", "200gr", "dscw120", "hp", "xta", "kaos", "v2", "merah"]
    titles = [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(60)]
    w = WordWeights.fit(titles)
    a, b = rng.integers(0, 60, 200), rng.integers(0, 60, 200)
    big, share = w.differences(titles, a, b)
    for p in range(0, 200, 17):
        two = [titles[a[p]], titles[b[p]]]
        g_big, g_share = w.differences(two, np.array([0]), np.array([1]))
        ta, tb = (set(normalize_title(t).split()) for t in two)
        only = ta ^ tb
        want = max((w.idf[x] for x in only), default=0.0)
        assert big[p] == pytest.approx(want, rel=1e-6) == pytest.approx(g_big[0], rel=1e-6)
        assert share[p] == pytest.approx(g_share[0], rel=1e-6)


def test_a_ranker_with_word_weights_saves_them_and_an_old_one_still_loads(
    tmp_path: Path,
) -> None:
    from index.features.text import WordWeights

    rng = np.random.default_rng(0)
    signals = ["tfidf"]
    weights = WordWeights.fit(["a b", "a c"])
    X = rng.random((300, len(feature_names(signals, weighted=True)))).astype(np.float32)
    r = Ranker(fit(X, X[:, -1] > 0.5, rounds=10), signals, RankerConfig(), weights=weights)
    back = Ranker.load(r.save(tmp_path / "new"))
    assert back.weights is not None and back.weights.idf == pytest.approx(weights.idf)
    assert np.array_equal(back.predict(X), r.predict(X))
    X0 = X[:, : len(feature_names(signals))]
    old = Ranker(fit(X0, X0[:, 0] > 0.5, rounds=10), signals, RankerConfig())
    assert Ranker.load(old.save(tmp_path / "old")).weights is None
    # a ranker.json from before density_rows reads its density at fixed ranks
    old_meta = json.loads((tmp_path / "old" / "ranker.json").read_text())
    del old_meta["config"]["density_rows"], old_meta["config"]["scaled_ranks"]
    (tmp_path / "old" / "ranker.json").write_text(json.dumps(old_meta))
    loaded = Ranker.load(tmp_path / "old").config
    assert loaded.density_scale(10**6) == 1.0 and loaded.scaled_ranks is False
    assert RankerConfig().scaled_ranks is False
    meta = json.loads((tmp_path / "new" / "ranker.json").read_text())
    meta["word_weights"] = {"rows": "many"}
    (tmp_path / "new" / "ranker.json").write_text(json.dumps(meta))
    with pytest.raises(EncoderError, match="word_weights"):
        Ranker.load(tmp_path / "new")
    del meta["word_weights"]  # a model of weighted features read as unweighted
    (tmp_path / "new" / "ranker.json").write_text(json.dumps(meta))
    with pytest.raises(EncoderError, match="do not match its signals"):
        Ranker.load(tmp_path / "new")


def test_is_candidate_equals_a_set_lookup() -> None:
    from index.tuning.ranker import is_candidate

    rng = np.random.default_rng(2)
    raw = rng.integers(0, 40, (300, 2))
    raw = raw[raw[:, 0] != raw[:, 1]]
    cands = np.unique(np.sort(raw[:150], axis=1), axis=0)
    asked = rng.integers(0, 45, (500, 2))  # some rows past every candidate's
    asked[:50] = raw[:50][:, ::-1]  # candidates asked the other way round
    want = {tuple(x) for x in cands.tolist()}
    got = is_candidate(asked, cands)
    assert got.tolist() == [(min(a, b), max(a, b)) in want for a, b in asked.tolist()]
    assert got[:50].all() and not got[50:].all()
    assert is_candidate(asked, cands[:0]).tolist() == [False] * len(asked)
    assert len(is_candidate(asked[:0], cands)) == 0


def test_two_hop_pairs_equal_a_loop_over_shared_neighbours() -> None:
    """Issue 27: a pair only reachable in two hops (a - x - c) is proposed; pairs that are
    edges or already candidates are not."""
    from index.matching.ranker import two_hop_pairs

    edges = np.array([[0, 1], [1, 2], [2, 3], [5, 4], [4, 6], [1, 0]])
    got = two_hop_pairs(edges, 8)
    assert got.tolist() == [[0, 2], [1, 3], [5, 6]]
    assert two_hop_pairs(edges, 8, exclude=np.array([[1, 3]])).tolist() == [[0, 2], [5, 6]]
    assert two_hop_pairs(edges[:0], 8).shape == (0, 2)
    rng = np.random.default_rng(4)
    e = rng.integers(0, 30, (60, 2))
    e = e[e[:, 0] != e[:, 1]]
    nbrs: dict[int, set[int]] = {}
    for x, y in e.tolist():
        nbrs.setdefault(x, set()).add(y)
        nbrs.setdefault(y, set()).add(x)
    want = sorted({(min(i, j), max(i, j)) for x in nbrs for i in nbrs[x] for j in nbrs[x]
                   if i != j and j not in nbrs[i]})
    assert [tuple(r) for r in two_hop_pairs(e, 30).tolist()] == want


def test_hop_rounds_reach_pairs_four_matches_apart() -> None:
    """Issue 27, `RankerConfig.hop_rounds`: on the chain 0-1-2-3-4, round 1 adds the pairs
    two apart, round 2 (through them) those three and four apart, and a third round none;
    a hop pair scored under the threshold is no edge of the next round; p at the
    threshold is one."""
    from index.matching.ranker import add_two_hops

    chain = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])
    p = np.full(4, 0.5, np.float32)
    asked: list[list[list[int]]] = []

    def sure(hop: np.ndarray) -> np.ndarray:
        asked.append(hop.tolist())
        return np.full(len(hop), 0.9, np.float32)

    pairs, q = add_two_hops(chain, p, 0.5, 6, sure, rounds=1)
    assert pairs[4:].tolist() == [[0, 2], [1, 3], [2, 4]] and (q[4:] == np.float32(0.9)).all()
    asked.clear()
    pairs, q = add_two_hops(chain, p, 0.5, 6, sure, rounds=3)
    assert asked == [[[0, 2], [1, 3], [2, 4]], [[0, 3], [0, 4], [1, 4]]]  # round 3: none
    assert len(pairs) == 10 and q.dtype == np.float32
    pairs, _ = add_two_hops(chain, p, 0.5, 6, lambda h: np.full(len(h), 0.49, np.float32),
                            rounds=2)
    assert pairs[4:].tolist() == [[0, 2], [1, 3], [2, 4]]  # no hop under 0.5 hops again
    pairs, _ = add_two_hops(chain, np.nextafter(p, 0), 0.5, 6, sure, rounds=2)
    assert len(pairs) == 4
    with pytest.raises(ValueError, match="hop_rounds must be at least 1"):
        RankerConfig(two_hop=True, hop_rounds=0)
    assert RankerConfig().hop_rounds == 1


def _hop_catalogue(tmp_path: Path) -> tuple[Any, Any, Any]:
    """Rows 0 and 2 share no word (no candidate), each shares words with row 1."""
    titles = ["alpha beta gamma delta", "gamma delta epsilon zeta", "epsilon zeta eta theta",
              "kucing merah", "sepatu lari", "tas kulit", "botol minum"]
    csv_path = tmp_path / "h.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["posting_id", "image_phash", "title"])
        w.writerows([[f"p{i}", "", t] for i, t in enumerate(titles)])
    cat = read_catalogue(csv_path)
    feats = embed(cat, tfidf_config=TfidfConfig())
    return cat, feats, self_neighbours(feats, device="cpu")


def test_two_hops_at_decision_time_reach_a_pair_no_signal_proposes(tmp_path: Path) -> None:
    """Issue 27: rows 0 and 2 share no word (TF-IDF 0, under its floor: no candidate), but
    each is confidently matched to row 1; with `two_hop` the pair is scored and kept."""
    cat, feats, nb = _hop_catalogue(tmp_path)
    cfg = RankerConfig(threshold=0.5, single_threshold=0.99)
    assert [0, 2] not in candidate_pairs({"tfidf": nb["tfidf"]}, len(cat), cfg).tolist()
    plain, _ = Ranker(ConstantBooster(0.9), ["tfidf"], cfg).match(feats, nb, cat.title)
    hops, _ = Ranker(ConstantBooster(0.9), ["tfidf"], replace(cfg, two_hop=True)).match(
        feats, nb, cat.title)
    assert set(plain[0][plain[0] >= 0]) == {0, 1} and set(hops[0][hops[0] >= 0]) == {0, 1, 2}
    assert set(hops[2][hops[2] >= 0]) == {0, 1, 2}
    # the hop pair is scored like any other: a model that rejects it (TF-IDF 0) leaves it
    class BySimilarity:
        def predict(self, X: np.ndarray, num_threads: int = 1) -> np.ndarray:
            return np.where(X[:, 0] > 0, 0.9, 0.1)

    picky = Ranker(BySimilarity(), ["tfidf"], replace(cfg, two_hop=True))
    I, _ = picky.match(feats, nb, cat.title)
    assert set(I[0][I[0] >= 0]) == {0, 1} and set(I[1][I[1] >= 0]) == {0, 1, 2}


def test_the_graph_pass_decides_its_hop_pairs(tmp_path: Path) -> None:
    """Issue 27, `graph_hops`: the pair joined by two of the first pass's confident
    matches (0-1, 1-2; p at or above CONFIDENT) is scored by the graph pass with the
    candidates and kept; a first pass under CONFIDENT makes no hop pair; the second
    booster's verdict decides it; the candidates' own probabilities do not change."""
    from index.matching.ranker import CONFIDENT, hop_pairs

    cat, feats, nb = _hop_catalogue(tmp_path)
    cfg = RankerConfig(threshold=0.5, single_threshold=0.99, graph_pass=True)
    use = {"tfidf": nb["tfidf"]}
    cands = candidate_pairs(use, len(cat), cfg)
    assert [0, 2] not in cands.tolist() and [0, 1] in cands.tolist()

    def ranker(first: float, second: Any, hops: bool) -> Ranker:
        return Ranker(ConstantBooster(first), ["tfidf"], replace(cfg, graph_hops=hops),
                      graph=second)

    plain, _ = ranker(CONFIDENT, ConstantBooster(0.9), False).match(feats, nb, cat.title)
    hops, _ = ranker(CONFIDENT, ConstantBooster(0.9), True).match(feats, nb, cat.title)
    assert set(plain[0][plain[0] >= 0]) == {0, 1}
    assert set(hops[0][hops[0] >= 0]) == {0, 1, 2} and set(hops[2][hops[2] >= 0]) == {0, 1, 2}
    # just under CONFIDENT (in float32) the first pass links nothing: no hop pair
    under, _ = ranker(float(np.nextafter(np.float32(CONFIDENT), np.float32(0))),
                      ConstantBooster(0.9), True).match(
        feats, nb, cat.title)
    assert set(under[0][under[0] >= 0]) == {0, 1}
    p_first = np.full(len(cands), CONFIDENT, np.float32)
    assert hop_pairs(cands, p_first, len(cat)).tolist() == [[0, 2]]
    assert len(hop_pairs(cands, p_first - 1e-3, len(cat))) == 0

    class HopsRejected:  # the second booster rejects pairs no signal lists (rank NaN)
        def predict(self, X: np.ndarray, num_threads: int = 1) -> np.ndarray:
            return np.where(np.isnan(X[:, 1]), 0.1, 0.9)

    picky = ranker(0.9, HopsRejected(), True)
    pairs, p = picky.score_pool(cands, feats, use, cat.title)
    assert pairs.tolist() == [*cands.tolist(), [0, 2]] and p[-1] == pytest.approx(0.1)
    assert np.array_equal(p[:-1], picky.score(cands, feats, use, cat.title))
    I, _ = picky.match(feats, nb, cat.title)
    assert set(I[0][I[0] >= 0]) == {0, 1}


def test_the_pool_rule_tunes_one_threshold_per_size_class() -> None:
    """Each class's threshold is tuned on all its pools together: two small pools whose
    own best thresholds differ (0.45 and 0.65 alone) share the one that is best for both
    rows together; the slope is against log2 of each class's rows."""
    from index.matching.ranker import RankerConfig
    from index.tuning.ranker import pool_rule_slope

    def pool(true_p: float, false_p: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # rows 0, 1: one product (their pair scored true_p); rows 2, 3: two others
        pairs = np.array([[0, 1], [2, 3]], np.int64)
        return pairs, np.array([true_p, false_p]), np.array([7, 7, 8, 9])

    base = RankerConfig()
    slope, points = pool_rule_slope(
        [(100, [pool(0.7, 0.4)]), (400, [pool(0.9, 0.6)])], base)
    # the lowest threshold of the 0.05 grid above the look-alike and at most the match
    assert points == [(100.0, 0.45), (400.0, 0.65)]
    assert slope == pytest.approx(0.1)  # 0.2 over two doublings
    # one class of both pools: 0.45 (A's best alone) lets B's look-alike (0.6) in; 0.65
    # keeps both matches and neither look-alike
    _, joint = pool_rule_slope([(100, [pool(0.7, 0.4), pool(0.9, 0.6)])], base)
    assert joint == [(100.0, 0.65)]
    assert pool_rule_slope([(100, [pool(0.7, 0.4)])], base)[0] == 0.0  # one size: no slope
