"""Match-quality stages: INB, combined embedding, alpha-QE, unit rule, pool rule, fast tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from index.features.text import parse_quantities, unit_conflict
from index.matching.fusion import FusionConfig, fuse, phash_similarity
from index.matching.stages import (
    alpha_qe,
    apply_stages,
    blend,
    combine,
    drop_unit_conflicts,
    make_space,
    space_self_knn,
)
from index.search.knn import knn_numpy, l2_normalize
from index.store.model import load_encoders
from index.tuning.grids import PairTable, fit_pool_slopes, tune_tables
from index.tuning.metrics import mean_f1
from tests.test_fusion import nb, sets


def unit(deg: float, z: float = 0.0) -> list[float]:
    r = np.deg2rad(deg)
    return [float(np.cos(r)), float(np.sin(r)), z]


def neighbours_at(space: list, t: float) -> list[set[int]]:
    D, I = space_self_knn(space, k=8, device="cpu")
    return [set(I[i][(I[i] >= 0) & (t <= D[i])].tolist()) for i in range(len(I))]


def test_inb_merges_a_chain_but_not_an_unrelated_group() -> None:
    # A(0°)~B(30°)~C(60°): cos 0.866 each, but A-C only 0.5 < 0.8. F(100°) and G(110°) form
    # another group, 40° from C (cos 0.766 < 0.8); H sits alone on the z axis.
    x = np.array([unit(0), unit(30), unit(60), unit(100), unit(110), [0, 0, 1]], np.float32)
    space = make_space([(x, 1.0)])
    before = neighbours_at(space, 0.8)
    assert 2 not in before[0] and 0 not in before[2]
    D, I = space_self_knn(space, k=8, device="cpu")
    after = neighbours_at(blend(space, D, I, 0.8), 0.8)
    assert {0, 1, 2} <= after[0] and {0, 1, 2} <= after[2]  # the chain merged
    assert after[3] == {3, 4} and after[4] == {3, 4}  # F, G stay their own group
    assert not (after[2] & {3, 4}) and after[5] == {5}  # nothing leaks across groups


def test_inb_threshold_above_every_neighbour_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    x = l2_normalize(rng.normal(size=(20, 8)))
    space = make_space([(x, 1.0)])
    D, I = space_self_knn(space, k=5, device="cpu")
    out = blend(space, np.where(np.arange(20)[:, None] == I, D, 0.1), I, 0.5)[0]
    np.testing.assert_allclose(l2_normalize(out), x, atol=1e-6)


def test_combined_embedding_equals_exact_search() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(60, 5))
    x = combine([a, b], [1.0, 2.0])
    ref = np.hstack([l2_normalize(a), 2 * l2_normalize(b)])
    np.testing.assert_allclose(x, l2_normalize(ref), atol=1e-6)
    D, _I = space_self_knn(make_space([(a, 1.0), (b, 2.0)]), k=10, device="cpu")
    Dr, _ = knn_numpy(x, x, 10)
    np.testing.assert_allclose(D, Dr, atol=1e-5)
    # a sparse part (TF-IDF) goes through the chunked path and gives the same neighbours
    S = sp.random(60, 40, density=0.2, random_state=2, format="csr", dtype=np.float32)
    S = S + sp.eye(60, 40, format="csr", dtype=np.float32)  # no empty rows
    D2, I2 = space_self_knn(make_space([(S, 1.0), (b, 0.5)]), k=10, chunk=16, device="cpu")
    dense = combine([S.toarray(), b], [1.0, 0.5])
    Dr2, Ir2 = knn_numpy(dense, dense, 10)
    np.testing.assert_allclose(D2, Dr2, atol=1e-5)
    assert (I2[:, 0] == np.arange(60)).all() and (Ir2 == I2).mean() > 0.98


def test_alpha_qe_pulls_rows_towards_their_neighbours() -> None:
    x = np.array([unit(0), unit(20), unit(90)], np.float32)
    space = make_space([(x, 1.0)])
    D, I = space_self_knn(space, k=3, device="cpu")
    same = alpha_qe(space, D, I, alpha=3.0, k=1)[0]  # k=1: only itself
    np.testing.assert_allclose(l2_normalize(same), x, atol=1e-6)
    q = l2_normalize(alpha_qe(space, D, I, alpha=3.0, k=2)[0])
    assert q[0] @ q[1] > x[0] @ x[1]  # the pair moved together
    # a large alpha weighs the nearer neighbours only: row 2's weak neighbour hardly counts
    assert q[2] @ x[2] > 0.999


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Kopi Kapal Api 200gr", {"g": {200}}),
        ("kopi 400 gram murah", {"g": {400}}),
        ("Gula 1kg", {"g": {1000}}),
        ("beras 1,5 kg", {"g": {1500}}),
        ("Susu UHT 500ml", {"ml": {500}}),
        ("minyak 2 L", {"ml": {2000}}),
        ("air mineral 1.5ltr", {"ml": {1500}}),
        ("masker 2pcs", {"pcs": {2}}),
        ("isi 3 pc", {"pcs": {3}}),
        ("telur 10 biji", {"pcs": {10}}),
        ("powerbank 10000mAh", {"mah": {10000}}),
        ("flashdisk 32GB", {"gb": {32}}),
        ("serum 20ml + toner 100 ml", {"ml": {20, 100}}),
        ("kaos polos size M", {}),
        ("iphone 11 pro", {}),
        ("Paket 2x", {}),
    ],
)
def test_parse_quantities(title: str, expected: dict[str, set[float]]) -> None:
    assert {u: set(v) for u, v in parse_quantities(title).items()} == expected


def test_unit_conflict_and_rule() -> None:
    q = parse_quantities
    assert unit_conflict(q("kopi 200gr"), q("kopi 400 gram"))
    assert not unit_conflict(q("gula 1kg"), q("gula 1000 gr"))  # same weight
    assert not unit_conflict(q("kopi 200gr"), q("kopi 500ml"))  # different units
    assert not unit_conflict(q("kopi 200gr"), q("kopi sachet"))  # one has no quantity
    titles = ["kopi 200gr", "kopi 400gr", "kopi 200 gram"]
    text = nb({i: [(j, 0.9) for j in range(3)] for i in range(3)}, 3)
    cfg = FusionConfig(thresholds={"text": 0.8}, min2=False)
    I, S = fuse({"text": text}, cfg, 3)
    I2, _, dropped = drop_unit_conflicts(I, S, titles, {"text": text}, {"phash": 0.97})
    assert sets(I2) == [{0, 2}, {1}, {0, 2}] and dropped == 4
    # a very strong image signal keeps the pair
    ph = nb({0: [(0, 1.0), (1, 1.0)], 1: [(1, 1.0), (0, 1.0)]}, 3)
    I3, _, _ = drop_unit_conflicts(I, S, titles, {"text": text, "phash": ph}, {"phash": 0.97})
    assert sets(I3) == [{0, 1, 2}, {0, 1}, {0, 2}]


@pytest.mark.parametrize("slope", [0.06, -0.03, 0.0])
def test_pool_rule_is_monotone_and_clipped(slope: float) -> None:
    cfg = FusionConfig(
        thresholds={"tfidf": 0.5, "text": 0.6}, tuned_rows=8000, pool_slopes={"tfidf": slope}
    )
    sizes = [500, 1000, 2000, 4000, 6000, 8000, 12000, 16000, 32000, 64000, 10**6]
    th = [cfg.for_pool(n).thresholds["tfidf"] for n in sizes]
    diffs = np.diff(th) * np.sign(slope or 1)
    assert (diffs >= -1e-12).all()  # monotone in the direction of the slope
    assert cfg.for_pool(8000) == cfg
    assert cfg.for_pool(32000).thresholds["tfidf"] == pytest.approx(0.5 + 2 * slope)
    assert cfg.for_pool(2000).thresholds["tfidf"] == pytest.approx(0.5 - 2 * slope)
    assert cfg.for_pool(10**6).thresholds == cfg.for_pool(32000).thresholds  # clipped at 4x
    assert cfg.for_pool(500).thresholds == cfg.for_pool(2000).thresholds  # and at 1/4
    assert all(c.for_pool(4).thresholds["text"] == 0.6 for c in (cfg,))  # no slope, no move
    assert FusionConfig(thresholds={"tfidf": 0.5}).for_pool(10) == FusionConfig(
        thresholds={"tfidf": 0.5}
    )


def test_pool_rule_moves_inb_thresholds_monotonically() -> None:
    cfg = FusionConfig(
        thresholds={"combined": 0.9}, tuned_rows=1000, pool_slopes={"inb": 0.05, "combined": 0.01}
    ).with_stages(combined_weights={"tfidf": 1.0, "text": 1.0}, inb=(0.5, 0.98))
    sizes = [100, 250, 500, 1000, 2000, 4000, 8000]
    inb = np.array([cfg.for_pool(n).stages.inb for n in sizes])
    assert (np.diff(inb, axis=0) >= 0).all()  # stricter blending in bigger pools
    assert cfg.for_pool(2000).stages.inb == pytest.approx((0.55, 1.0))  # clipped at 1
    assert cfg.for_pool(500).stages.inb == pytest.approx((0.45, 0.93))
    assert cfg.for_pool(100).stages.inb == cfg.for_pool(250).stages.inb  # a quarter at most
    assert cfg.for_pool(1000) == cfg


def test_apply_stages_blends_with_the_moved_inb_thresholds() -> None:
    rng = np.random.default_rng(1)
    centres = l2_normalize(rng.normal(size=(6, 16)))
    x = l2_normalize(np.repeat(centres, 5, axis=0) + 0.6 * rng.normal(size=(30, 16)))
    t = l2_normalize(x + 0.3 * rng.normal(size=x.shape))
    parts = {"tfidf": x.astype(np.float32), "text": t.astype(np.float32)}
    nb = {s: space_self_knn(make_space([(v, 1.0)]), k=10, device="cpu") for s, v in parts.items()}
    base = FusionConfig(thresholds={"combined": 0.8}).with_stages(
        combined_weights={"tfidf": 1.0, "text": 1.0}, inb=(0.5,)
    )
    sloped = base.with_(tuned_rows=120, pool_slopes={"inb": 0.1})  # 30 rows: 2 halvings
    got = apply_stages(parts, nb, sloped, k=10, device="cpu")["combined"]
    want = apply_stages(parts, nb, base.with_stages(inb=(0.3,)), k=10, device="cpu")["combined"]
    unmoved = apply_stages(parts, nb, base, k=10, device="cpu")["combined"]
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    assert not np.allclose(got[0], unmoved[0], atol=1e-4)  # the move changed the blending


def test_slopes_of_fits_thresholds_and_inb() -> None:
    from index.tuning.grids import slopes_of

    tuned = [
        FusionConfig(thresholds={"tfidf": 0.4 + 0.05 * i, "combined": 0.9}, tuned_rows=1000 * 2**i)
        .with_stages(inb=(0.5 + 0.1 * i, 0.7 + 0.1 * i))
        for i in range(3)
    ]
    got = slopes_of(tuned)
    assert got == pytest.approx({"tfidf": 0.05, "combined": 0.0, "inb": 0.1})
    assert slopes_of(tuned[:1]) == {}  # one pool size: no rule
    assert "inb" not in slopes_of([c.with_stages(inb=()) for c in tuned])


def test_old_fusion_json_loads_and_defaults_keep_behaviour() -> None:
    old = {
        "thresholds": {"tfidf": 0.625, "phash": phash_similarity(6), "text": 0.92},
        "min2": True,
        "min2_signal": "tfidf",
        "min2_floor": 0.35,
        "max_matches": 50,
        "tuned_rows": 27206,
    }
    cfg = FusionConfig.model_validate_json(json.dumps(old))
    st = cfg.stages
    assert not st.inb and st.qe_alpha is None and not st.unit_rule and not st.combined_weights
    assert cfg.min2_reciprocal == 0 and cfg.pool_slopes == {} and cfg.for_pool(1000) == cfg
    t = nb({0: [(0, 1), (1, 0.7)], 1: [(1, 1), (0, 0.7)]}, 2)
    parts = {"tfidf": sp.csr_matrix(np.eye(2, dtype=np.float32))}
    assert apply_stages(parts, {"tfidf": t}, cfg) == {"tfidf": t}
    with pytest.raises(ValueError):
        cfg.with_stages(inb=(0.5, 0.5, 0.5, 0.5))


def test_min2_reciprocal_rank_check() -> None:
    # 0's nearest is 1, but 1's nearest others are 2 then 0: rank 2, not rank 1.
    t = nb({0: [(0, 1), (1, 0.6)], 1: [(1, 1), (2, 0.7), (0, 0.6)], 2: [(2, 1), (1, 0.7)]}, 3)
    base = FusionConfig(thresholds={"tfidf": 0.9}, min2_signal="tfidf", min2_floor=0.5)
    assert sets(fuse({"tfidf": t}, base, 3)[0])[0] == {0, 1}
    assert sets(fuse({"tfidf": t}, base.with_(min2_reciprocal=1), 3)[0])[0] == {0}
    assert sets(fuse({"tfidf": t}, base.with_(min2_reciprocal=2), 3)[0])[0] == {0, 1}


def _random_pool(n: int, groups: int, seed: int) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, groups, n)
    centres = rng.normal(size=(groups, 16))
    x = l2_normalize(centres[labels] + rng.normal(scale=0.9, size=(n, 16)))
    y = l2_normalize(centres[labels] + rng.normal(scale=1.2, size=(n, 16)))
    return {"text": knn_numpy(x, x, 51), "image": knn_numpy(y, y, 51)}, labels


def test_pair_table_scores_like_fuse() -> None:
    signals, labels = _random_pool(300, 60, 0)
    table = PairTable(signals, labels)
    for cfg in (
        FusionConfig(thresholds={"text": 0.7, "image": 0.8}),
        FusionConfig(thresholds={"text": 0.8}, min2_signal="image", min2_floor=0.3),
        FusionConfig(thresholds={"text": 0.9}, min2_signal="text", min2_reciprocal=1),
    ):
        assert table.score(cfg) == pytest.approx(mean_f1(fuse(signals, cfg, 300)[0], labels))
    _tuned, f = tune_tables([table], FusionConfig(thresholds={"text": 0.9, "image": 0.9}))
    assert f > table.score(FusionConfig(thresholds={"text": 0.9, "image": 0.9})) + 0.01


def test_fitted_pool_slopes_rise_with_pool_size() -> None:
    # The same density of groups in bigger pools: more impostors near each row, so the best
    # threshold rises with the pool size.
    sizes = {
        n: [PairTable(*_random_pool(n, n // 5, s)) for s in range(2)] for n in (100, 200, 400, 800)
    }
    slopes, tuned = fit_pool_slopes(sizes, FusionConfig(thresholds={"text": 0.5}))
    assert set(tuned) == set(sizes) and slopes["text"] > 0


def test_evaluate_ablation_cli(synth: Path, model_dir: Path, tmp_path: Path, capsys) -> None:
    from index.cli.parser import main

    rep, cfg_path = tmp_path / "ablation.json", tmp_path / "fusion.json"
    args = ["evaluate", str(synth / "listings.csv"), "--model", str(model_dir), "--ablation"]
    assert (
        main([*args, "--folds", "3", "-q", "--report", str(rep), "--save-config", str(cfg_path)])
        == 0
    )
    out = capsys.readouterr().out
    for row in (
        "TF-IDF alone",
        "fused TF-IDF ∪ phash ∪ text",
        "+ combined embedding",
        "+ INB stage 1",
        "+ INB stage 2",
        "alternative: αQE instead of INB",
        "+ min-2 rank-2 reciprocal",
        "+ title unit rule",
        "final (stages kept on the training folds)",
        "+ pair re-ranker",
    ):
        assert row in out, row
    assert "F1 by true group size" in out and "pool rule" in out
    data = json.loads(rep.read_text())
    assert len(data["table"]) == 10
    final, ranker = data["table"][-2], data["table"][-1]
    assert final["role"] == "final" and ranker["role"] == "ranker"
    # the ranker's gain is over the final row, fold by fold
    want = [a - b for a, b in zip(ranker["f1"], final["f1"], strict=True)]
    assert ranker["gain"] == pytest.approx(want)
    for row in data["table"]:
        assert len(row["f1"]) == 3 and all(0 <= f <= 1 for f in row["f1"])
        assert set(row) >= {"precision", "recall", "matches", "gain", "by_group_size"}
    assert len(data["pool_study"]) == 3
    saved = FusionConfig.model_validate_json(cfg_path.read_text())
    assert saved.tuned_rows
    inb = {"inb"} if saved.stages.inb else set()
    assert set(saved.pool_slopes) == set(saved.thresholds) | inb


def test_match_applies_stages_from_config(synth: Path, model_dir: Path, tmp_path: Path) -> None:
    import csv

    from index.cli.parser import main
    from index.data.listings import read_catalogue
    from index.features.embed import Encoders, embed
    from index.matching.fusion import to_lists
    from index.matching.selfmatch import self_neighbours
    from index.matching.stages import fuse_stages

    cfg = FusionConfig(
        thresholds={"tfidf": 0.6, "phash": phash_similarity(6), "combined": 0.5},
        min2_reciprocal=2,
    ).with_stages(combined_weights={"tfidf": 1.0, "text": 1.0}, inb=(0.7,), unit_rule=True)
    path = tmp_path / "fusion.json"
    path.write_text(cfg.model_dump_json())
    out = tmp_path / "sub.csv"
    args = ["match", str(synth / "listings.csv"), "--model", str(model_dir), "-o", str(out)]
    assert main([*args, "--config", str(path), "-q", "--device", "cpu"]) == 0
    with open(out) as f:
        sub = {r["posting_id"]: r["matches"].split() for r in csv.DictReader(f)}
    # the CLI gives the library's staged matches, and the stages change them
    cat = read_catalogue(synth / "listings.csv")
    enc = load_encoders(model_dir, device="cpu")
    feats = embed(cat, Encoders(text=enc.text))
    nb = self_neighbours(feats, device="cpu")
    staged = apply_stages(feats.parts(), nb, cfg, device="cpu")
    assert set(staged) == {"tfidf", "phash", "text", "combined"}
    lists = to_lists(fuse_stages(staged, cfg, cat.title)[0], cat.posting_id)
    assert [sub[p] for p in cat.posting_id] == lists
    plain = to_lists(fuse_stages(nb, cfg, cat.title)[0], cat.posting_id)
    assert plain != lists


def test_ablation_with_saved_oof_keeps_pools_within_folds(
    synth: Path, model_dir: Path, tmp_path: Path, capsys
) -> None:
    """Saved out-of-fold embeddings come from one model per fold, so no pool may mix folds
    (the pool study then fits its slopes on sub-pools of single folds)."""
    import hashlib

    from index.cli.parser import main
    from index.data.listings import read_catalogue
    from index.features.encoders import load_encoder
    from index.tuning.grids import group_folds

    cat = read_catalogue(synth / "listings.csv")
    oof = tmp_path / "model" / "oof"
    oof.mkdir(parents=True)
    np.save(oof / "text.npy", load_encoder(model_dir / "text").encode(cat.title))
    fold_of = np.full(len(cat), -1, np.int64)
    folds = group_folds(cat.labels, 3, seed=0)
    for f, (_, va) in enumerate(folds):
        fold_of[va] = f
    np.save(oof / "folds.npy", fold_of)
    ids = hashlib.sha256("\n".join(cat.posting_id).encode()).hexdigest()
    (oof / "meta.json").write_text(json.dumps({"rows": len(cat), "posting_id_sha256": ids}))
    rep = tmp_path / "ablation.json"
    args = ["evaluate", str(synth / "listings.csv"), "--ablation", "--oof", str(oof.parent)]
    assert main([*args, "-q", "--report", str(rep)]) == 0
    assert "quarter-fold sub-pools" in capsys.readouterr().out
    biggest_fold = max(len(va) for _, va in folds)
    for study in json.loads(rep.read_text())["pool_study"]:
        assert max(int(rows) for rows in study["sizes"]) <= biggest_fold


def test_stage_slopes_cover_the_combined_threshold(synth: Path, model_dir: Path) -> None:
    """The pool-size rule of a stages config fits the combined threshold too (with the
    stages on), not only the per-signal ones."""
    from index.data.listings import read_catalogue
    from index.features.encoders import load_encoder
    from index.tuning.ablation import make_pool, stage_slopes
    from index.tuning.grids import group_folds

    cat = read_catalogue(synth / "listings.csv")
    dense = {"text": load_encoder(model_dir / "text").encode(cat.title)}
    fold_rows = [va for _, va in group_folds(cat.labels, 2, seed=0)]
    pools = [make_pool(cat, r, dense, "cpu") for r in fold_rows]
    cfg = FusionConfig(thresholds={"tfidf": 0.6, "text": 0.9, "combined": 0.8}).with_stages(
        combined_weights={"tfidf": 1.0, "text": 1.0}, inb=(0.7,)
    )
    slopes = stage_slopes(cat, dense, fold_rows, pools, cfg)
    assert set(slopes) == {"tfidf", "text", "combined", "inb"}
    assert all(-1.0 <= v <= 1.0 for v in slopes.values())


def test_a_stage_is_on_only_where_it_won_on_every_fold() -> None:
    from index.tuning.ablation import unanimous_only

    cfg = (
        FusionConfig()
        .with_(
            thresholds={**FusionConfig().thresholds, "combined": 0.6},
            min2_reciprocal=2,
            pool_slopes={"tfidf": 0.01, "combined": 0.02, "inb": 0.01},
        )
        .with_stages(combined_weights={"tfidf": 1.0, "text": 1.0}, inb=(0.6, 0.7), unit_rule=True)
    )

    def row(key: str, kept: list[bool]) -> dict:
        return {"key": key, "cumulative": True, "folds": [{"kept": k} for k in kept]}

    every = [row(k, [True, True]) for k in ("combined", "inb1", "inb2", "reciprocal", "unit_rule")]
    assert unanimous_only(cfg, every) == cfg
    split = [row("combined", [True, True]), row("inb1", [True, True]), row("inb2", [True, False]),
             row("reciprocal", [False, True]), row("unit_rule", [True, True])]
    got = unanimous_only(cfg, split)
    assert got.stages.inb == (0.6,) and got.min2_reciprocal == 0 and got.stages.unit_rule
    assert got.thresholds["combined"] == 0.6
    no_combined = unanimous_only(cfg, [row("combined", [False, True]), *every[1:]])
    assert "combined" not in no_combined.thresholds and not no_combined.stages.combined_weights
    assert no_combined.stages.inb == () and set(no_combined.pool_slopes) == {"tfidf"}


def test_the_vectorised_unit_rule_equals_the_pairwise_one() -> None:
    """`Quantities.conflicts` (the one vectorised unit rule) against `unit_conflict` of
    each pair's parsed quantities."""
    from index.features.text import Quantities, parse_quantities, unit_conflict

    rng = np.random.default_rng(5)
    pieces = ["200gr", "400 gr", "1kg", "1000 gram", "2pcs", "3 pcs", "500ml", "1,5 L",
              "0.5 l", "64gb", "1 tb", "10 cm", "100 mm", "susu", "", "5 inch"]
    titles = [" ".join(rng.choice(pieces, rng.integers(0, 4))) for _ in range(60)]
    a, b = rng.integers(0, 60, 800), rng.integers(0, 60, 800)
    q = [parse_quantities(t) for t in titles]
    want = np.array([unit_conflict(q[i], q[j]) for i, j in zip(a, b, strict=True)])
    got = Quantities(titles).conflicts(a, b)
    assert want.sum() > 30 and (~want).sum() > 30
    np.testing.assert_array_equal(got, want)
    assert Quantities(titles).conflicts(a[:0], b[:0]).shape == (0,)
