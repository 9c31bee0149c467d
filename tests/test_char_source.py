"""The "char" signal (`TfidfConfig.char_source`): a TF-IDF of character n-grams with its own
neighbour list, one more candidate source and feature of the pair re-ranker, carried by
`match`, bundles, the live catalogue (`/match`) and `pricematch train`."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from index.cli.parser import main
from index.data.listings import read_catalogue
from index.errors import BundleError
from index.features.embed import QueryFeatures, embed
from index.features.tfidf import TfidfConfig, TitleTfidf
from index.matching.names import BASE_SIGNALS, SIGNALS
from index.matching.ranker import (
    CONFIDENT,
    GRAPH_FEATURES,
    RankerConfig,
    candidate_pairs,
    feature_names,
    graph_features,
)
from index.matching.selfmatch import self_neighbours
from index.store.live import LiveCatalogue
from index.store.model import load_model
from training import auto

CHAR = TfidfConfig(char_source=(3, 5))


def _exact_top(C: sp.csr_matrix, Q: sp.csr_matrix, k: int) -> np.ndarray:
    """(nq, k) the k largest similarities of each query row by a dense product."""
    S = (Q @ C.T).toarray()
    return -np.sort(-S, axis=1)[:, :k]


def test_documented_defaults() -> None:
    assert TfidfConfig().char_source is None
    assert auto.CHAR_SOURCE == (3, 5) and auto.CHAR_WIDE == 1.5
    assert auto.Pipeline().char_source is False
    assert "char" in SIGNALS and "char" in BASE_SIGNALS


def test_char_rows_join_spellings_that_share_no_word(tmp_path: Path) -> None:
    titles = ["powerbank xiaomi", "power bank xiaomi", "kabel data", "charger kabel", ""]
    t = TitleTfidf(CHAR).fit(titles)
    assert t.has_source and not TitleTfidf(TfidfConfig()).fit(titles).has_source
    X, C = t.transform(titles), t.transform_source(titles)
    assert C.dtype == np.float32 and C.shape[0] == 5
    norms = np.sqrt(np.asarray(C.multiply(C).sum(axis=1)).ravel())
    assert np.allclose(norms[:4], 1.0, atol=1e-6) and norms[4] == 0.0  # the empty title
    # "powerbank" and "power bank": no word in common beyond the brand, n-grams shared
    a, b = t.transform_source(["powerbank"]), t.transform_source(["power bank"])
    assert float(t.transform(["powerbank"]).multiply(t.transform(["power bank"])).sum()) == 0
    assert float(a.multiply(b).sum()) > 0.3
    # the word rows are not changed by the char source
    assert (TitleTfidf(TfidfConfig()).fit(titles).transform(titles) != X).nnz == 0
    t.save(tmp_path)
    back = TitleTfidf.load(tmp_path)
    assert back.config.char_source == (3, 5)
    assert (back.transform_source(titles) != C).nnz == 0


def test_features_list_the_char_signal_as_exact_search(synth: Path) -> None:
    cat = read_catalogue(synth / "listings.csv")
    feats = embed(cat, tfidf_config=CHAR)
    assert feats.C is not None and "char" in feats.present() and "char" in feats.parts()
    assert embed(cat, tfidf_config=TfidfConfig()).C is None
    nb = self_neighbours(feats, k=8, device="cpu")
    assert "char" in nb
    D, I = nb["char"]
    assert np.allclose(D, _exact_top(feats.C, feats.C, 8), atol=1e-5)
    got = np.einsum("ij,ij->i", feats.C[np.arange(len(cat))].toarray(),
                    feats.C[np.maximum(I[:, 3], 0)].toarray())
    assert np.allclose(got, D[:, 3], atol=1e-5)
    a, b = np.array([0, 1, 5]), np.array([1, 7, 9])
    want = [float(feats.C[i].multiply(feats.C[j]).sum()) for i, j in zip(a, b, strict=True)]
    assert np.allclose(feats.pair_similarity("char", a, b), want, atol=1e-6)
    sub = feats.subset(np.array([5, 9]))
    assert sub.C is not None and (feats.C[[5, 9]] != sub.C).nnz == 0


def test_a_pair_only_the_char_source_lists_becomes_a_candidate() -> None:
    from index.data.listings import Catalogue

    titles = ["powerbank xiaomi 10000mah", "power bank xiaomi 10.000 mah", "kabel data",
              "charger samsung", "casing iphone", "tas ransel", "sepatu lari", "kaos polos"]
    cat = Catalogue(posting_id=[f"p{i}" for i in range(8)], title=titles)
    feats = embed(cat, tfidf_config=CHAR)
    nb = self_neighbours(feats, device="cpu")
    cfg = RankerConfig(top_k=1, floors={"tfidf": 0.9, "char": 0.3})
    words = candidate_pairs({"tfidf": nb["tfidf"]}, 8, cfg)
    both = candidate_pairs({"tfidf": nb["tfidf"], "char": nb["char"]}, 8, cfg)
    assert [0, 1] not in words.tolist() and [0, 1] in both.tolist()


def test_the_live_catalogue_searches_the_char_signal_as_it_changes(synth: Path) -> None:
    cat = read_catalogue(synth / "listings.csv")
    live = LiveCatalogue(dims={}, tfidf_config=CHAR)
    assert live.searched() == ["tfidf", "char", "phash"]
    hexes = list(cat.image_phash or [""] * len(cat))
    live.upsert(cat.posting_id, [""] * len(cat), QueryFeatures.build(cat.title, hexes))
    q = QueryFeatures.build(cat.title[:5], hexes[:5])
    D, _ = live.query_neighbours(q, k=6)["char"]
    C = live.char_rows()
    assert C is not None and C.shape[0] == len(cat)
    assert np.allclose(D, _exact_top(C, live.tfidf.transform_source(cat.title[:5]), 6),  # type: ignore[union-attr]
                       atol=1e-5)
    live.remove(cat.posting_id[0])
    C2 = live.char_rows()
    assert C2 is not None and C2.shape[0] == len(cat) - 1
    D2, I2 = live.query_neighbours(q, k=6)["char"]
    assert 0 <= I2.max() < len(cat) - 1
    assert np.allclose(D2, _exact_top(C2, live.tfidf.transform_source(cat.title[:5]), 6),  # type: ignore[union-attr]
                       atol=1e-5)
    assert "char" not in LiveCatalogue(dims={}).searched()


def test_char_source_flag_errors_name_it(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for bad, what in (("3", "takes MIN-MAX"), ("0-4", "needs 1 <= MIN <= MAX <= 10")):
        rc = main(["match", str(synth / "listings.csv"), "--char-source", bad, "-q",
                   "-o", str(tmp_path / "x.csv")])
        assert rc != 0 and f"--char-source {what}" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


@pytest.fixture(scope="module")
def char_model(synth: Path, strict_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The strict fake model with a ranker trained with `--char-source 3-5`."""
    out = tmp_path_factory.mktemp("char") / "model"
    shutil.copytree(strict_model, out)
    args = ["train", "ranker", str(synth / "listings.csv"), "--model", str(out), "--folds", "2",
            "--char-source", "3-5", "-q", "--device", "cpu", "--keep-anyway"]
    assert main(args) == 0
    return out


def test_a_char_ranker_decides_in_match_the_bundle_and_the_service(
    char_model: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`train ranker --char-source` writes the setting beside the ranker; `match --model`,
    `match --bundle` (its char rows checksummed) and `/match` on the bundle use it."""
    from fastapi.testclient import TestClient

    from index.store.bundle import CHAR as CHAR_FILE
    from index.store.bundle import load_bundle, verify_bundle
    from service.config import Settings
    from service.main import create_app

    fusion = json.loads((char_model / "fusion.json").read_text())
    assert fusion["tfidf"]["char_source"] == [3, 5]
    meta = json.loads((char_model / "ranker" / "ranker.json").read_text())
    assert "char" in meta["signals"]
    assert meta["features"] == feature_names(meta["signals"], weighted=True)
    csv_path = str(synth / "listings.csv")
    bundle = tmp_path / "bundle"
    assert main(["build-index", csv_path, "--model", str(char_model), "--out", str(bundle),
                 "-q", "--device", "cpu"]) == 0
    manifest = verify_bundle(bundle)
    assert CHAR_FILE in manifest["files"] and "char" in manifest["signals"]
    b = load_bundle(bundle, device="cpu")
    assert b.C is not None and b.C.shape[0] == len(b.catalogue)
    by_model, by_bundle = tmp_path / "m.csv", tmp_path / "b.csv"
    base = [csv_path, "-q", "--device", "cpu"]
    assert main(["match", *base, "--model", str(char_model), "-o", str(by_model)]) == 0
    assert main(["match", *base, "--bundle", str(bundle), "-o", str(by_bundle)]) == 0
    assert "(pair re-ranker)" in capsys.readouterr().out
    assert by_bundle.read_text() == by_model.read_text()
    cat = read_catalogue(synth / "listings.csv")
    s = Settings(bundle=bundle, data_dir=tmp_path / "data", device="cpu")
    with TestClient(create_app(s)) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.02)
        q = {"posting_id": cat.posting_id[0], "title": cat.title[0]}
        if cat.image_phash:
            q["image_phash"] = cat.image_phash[0]
        assert c.get("/readyz").json()["detail"]["signals"][:3] == ["tfidf", "char", "phash"]
        got = c.post("/match", json=q).json()["matches"]
        assert got[0]["signals"] == ["self"] and len(got) > 1
        assert all(x["signals"] == ["ranker"] for x in got[1:])
        new = {"posting_id": "new-1", "title": cat.title[3] + " baru"}
        assert c.post("/listings", json={"listings": [new]}).status_code == 200
        got = c.post("/match", json=new).json()["matches"]
        assert got[0]["posting_id"] == "new-1"
    (bundle / CHAR_FILE).write_bytes(b"not the rows")
    with pytest.raises(BundleError, match=CHAR_FILE):
        verify_bundle(bundle)


def test_a_model_without_the_char_source_refuses_a_char_ranker(char_model: Path) -> None:
    """A ranker trained with the char signal on features without it: a clear error."""
    from index.data.listings import Catalogue
    from index.errors import EncoderError

    m = load_model(char_model, device="cpu")
    assert m.ranker is not None
    titles = ["kabel data", "kabel data usb"]
    feats = embed(Catalogue(posting_id=["a", "b"], title=titles), tfidf_config=TfidfConfig())
    with pytest.raises(EncoderError, match="char"):
        m.ranker.match(feats, self_neighbours(feats, device="cpu"), titles)


def test_train_tries_the_char_source_as_a_candidate(model_dir: Path) -> None:
    from index.features.embed import Encoders

    names = {c.name: c for c in auto.candidates(Encoders(), images=False)}
    c = names["candidates: char n-gram source"]
    assert c.part == "candidates"
    p = c.change(auto.Pipeline(ranker=True))
    assert p.char_source and c.applies(auto.Pipeline(ranker=True))
    assert not c.applies(auto.Pipeline()) and not c.applies(p)
    assert p.signals() != auto.Pipeline(ranker=True).signals()  # a pool of its own


def _loop_graph(pairs: np.ndarray, p: np.ndarray, n: int,
                extra: np.ndarray | None = None, p_extra: np.ndarray | None = None
                ) -> np.ndarray:
    """The graph features pair by pair from dictionaries (the oracle); the `extra` pairs
    read against the graph of `pairs` alone."""
    w: dict[int, dict[int, float]] = {i: {} for i in range(n)}
    for (a, b), v in zip(pairs.tolist(), p.tolist(), strict=True):
        w[a][b] = w[b][a] = v
    out = []
    every = pairs.tolist() + ([] if extra is None else extra.tolist())
    probs = p.tolist() + ([] if p_extra is None else p_extra.tolist())
    for (a, b), v in zip(every, probs, strict=True):
        shared = (set(w[a]) & set(w[b])) - {a, b}
        soft = sum(w[a][x] * w[b][x] for x in shared)
        conf = sum(1 for x in shared if w[a][x] >= CONFIDENT and w[b][x] >= CONFIDENT)
        da = sum(1 for x in w[a].values() if x >= CONFIDENT)
        db = sum(1 for x in w[b].values() if x >= CONFIDENT)
        sa, sb = sum(w[a].values()), sum(w[b].values())
        ba, bb = max(w[a].values(), default=0.0), max(w[b].values(), default=0.0)
        out.append([v, soft / max(1e-6, min(sa, sb)), conf / max(1, min(da, db)),
                    v / max(1e-6, min(ba, bb)), soft / max(1e-6, max(sa, sb)),
                    conf / max(1, max(da, db)), v / max(1e-6, max(ba, bb))])
    return np.array(out, np.float32)


def _random_pairs(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1)[a != b], axis=0)
    return pairs, rng.random(len(pairs)).astype(np.float32)


def test_graph_features_equal_a_loop_over_the_pairs() -> None:
    pairs, p = _random_pairs(30, 200, 3)
    p[:5] = CONFIDENT  # at the confident threshold counts as confident
    got = graph_features(pairs, p, 30)
    assert got.shape == (len(pairs), len(GRAPH_FEATURES)) and got.dtype == np.float32
    assert np.allclose(got, _loop_graph(pairs, p, 30), atol=1e-5)
    assert graph_features(np.zeros((0, 2), np.int64), np.zeros(0), 4).shape == (0, 7)
    assert CONFIDENT == 0.5 and RankerConfig().graph_pass is False
    assert RankerConfig().graph_hops is False
    with pytest.raises(ValueError, match="graph_hops are decided by the graph pass"):
        RankerConfig(graph_hops=True)
    # hop pairs read against the candidates' graph, which they do not change
    extra, pe = _random_pairs(30, 40, 4)
    both = graph_features(pairs, p, 30, extra, pe)
    assert both.shape == (len(pairs) + len(extra), 7)
    assert np.array_equal(both[: len(pairs)], got)
    assert np.allclose(both, _loop_graph(pairs, p, 30, extra, pe), atol=1e-5)
    assert graph_features(np.zeros((0, 2), np.int64), np.zeros(0), 30, extra, pe).shape == (
        len(extra), 7)


def test_graph_features_are_shares_whatever_the_pool_size() -> None:
    """The graph pass carries to a bigger pool: no feature grows with the pool's rows or a
    row's partners; each stays in [0, 1] from 20 rows to 4,000 rows with 60 partners each."""
    for n, m in [(20, 60), (4000, 120_000)]:
        pairs, p = _random_pairs(n, m, n)
        G = graph_features(pairs, p, n)
        assert G.min() >= 0.0 and G.max() <= 1.0 + 1e-6, (n, G.min(0), G.max(0))
    # a sure triangle: each pair's sides share one of their two partners (the other is
    # the pair itself), and each p is its rows' best
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    assert np.allclose(graph_features(pairs, np.ones(3, np.float32), 3),
                       [1.0, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0])
    # a path 0-1-2 and a tail 2-3: pair (1, 2) has the sides 1 (degree 2) and 2 (degree 3),
    # so the smaller-side shares and the larger-side ones differ
    pairs = np.array([[0, 1], [1, 2], [0, 2], [2, 3]])
    got = graph_features(pairs, np.array([1.0, 1.0, 1.0, 0.6], np.float32), 4)
    assert np.allclose(got[1], [1.0, 0.5, 0.5, 1.0, 1 / 2.6, 1 / 3, 1.0], atol=1e-6)


def test_a_graph_pass_is_trained_out_of_fold_saved_and_decides(
    synth: Path, tmp_path: Path
) -> None:
    """`train_on_whole` with `graph_pass`: a second booster per fold, the final one saved
    beside the first; a loaded ranker decides as the trained one; /match's small pool
    scores through it."""
    from index.features.embed import Encoders
    from index.matching.fusion import FusionConfig
    from index.matching.ranker import GRAPH, Ranker
    from index.tuning.ranker import group_pools, ranker_signals, train_on_whole

    cat = read_catalogue(synth / "listings.csv")
    fusion = FusionConfig(tfidf=CHAR)
    (pool,), fold_of = group_pools(cat, Encoders(), fusion, 3, "cpu", pooling="whole")
    assert fold_of is not None
    signals = ranker_signals([pool], fusion)
    one, rep1 = train_on_whole(pool, fold_of, signals, RankerConfig())
    two, rep2 = train_on_whole(pool, fold_of, signals, RankerConfig(graph_pass=True))
    assert one.graph is None and two.graph is not None and rep2["graph_pass"]
    assert len(rep2["oof_f1"]) == 3 and rep2["oof_f1"] != rep1["oof_f1"]
    two.save(tmp_path / "r")
    assert (tmp_path / "r" / GRAPH).is_file()
    back = Ranker.load(tmp_path / "r")
    assert back.graph is not None
    I1, _ = two.match(pool.features, pool.nb, pool.titles)
    I2, _ = back.match(pool.features, pool.nb, pool.titles)
    assert np.array_equal(I1, I2)
    meta_path = tmp_path / "r" / "ranker.json"
    meta = json.loads(meta_path.read_text())
    assert meta["graph"] == [
        "p_first", "common_soft_share", "common_share", "p_over_best",
        "common_soft_share_max", "common_share_max", "p_over_best_max",
    ]
    meta_path.write_text(json.dumps({**meta, "graph": [*meta["graph"], "degree_min"]}))
    with pytest.raises(Exception, match="graph pass's features do not match this version"):
        Ranker.load(tmp_path / "r")
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "r" / GRAPH).unlink()
    with pytest.raises(Exception, match="graph.txt is missing"):
        Ranker.load(tmp_path / "r")
    with pytest.raises(ValueError, match="graph pass"):
        from index.tuning.ranker import train_on_pools

        train_on_pools([pool], signals, RankerConfig(graph_pass=True))


def test_graph_hops_are_trained_out_of_fold_and_saved(synth: Path, tmp_path: Path) -> None:
    """`train_on_whole` with `graph_hops`: each fold decides its candidates and its own hop
    pairs (the decided recall counts both, so it is at least the candidates'), the final
    graph booster is trained on the hop pairs too, and a loaded ranker decides as the
    trained one."""
    from index.features.embed import Encoders
    from index.matching.fusion import FusionConfig
    from index.matching.ranker import Ranker
    from index.tuning.ranker import group_pools, ranker_signals, train_on_whole

    cat = read_catalogue(synth / "listings.csv")
    fusion = FusionConfig(tfidf=CHAR)
    (pool,), fold_of = group_pools(cat, Encoders(), fusion, 3, "cpu", pooling="whole")
    assert fold_of is not None
    signals = ranker_signals([pool], fusion)
    # each signal's nearest row only: a product of three rows or more misses pairs
    cfg = RankerConfig(top_k=1, graph_pass=True)
    _, rep0 = train_on_whole(pool, fold_of, signals, cfg)
    hops, rep = train_on_whole(pool, fold_of, signals, replace(cfg, graph_hops=True))
    assert "decided_recall" not in rep0["folds"][0]
    assert hops.config.scaled_ranks is True  # the graph pass reads ranks at the pool's scale
    for f in rep["folds"]:
        assert f["decided_recall"] >= f["candidate_recall"]
    assert any(f["decided_recall"] > f["candidate_recall"] for f in rep["folds"])
    assert np.mean(rep["oof_f1"]) > np.mean(rep0["oof_f1"])
    # two hops at decision time: the hop pairs each fold's model scores count as decided
    _, rep2 = train_on_whole(pool, fold_of, signals, replace(cfg, two_hop=True))
    for f in rep2["folds"]:
        assert f["decided_recall"] >= f["candidate_recall"]
    assert any(f["decided_recall"] > f["candidate_recall"] for f in rep2["folds"])
    hops.save(tmp_path / "r")
    back = Ranker.load(tmp_path / "r")
    assert back.config.graph_hops
    meta_path = tmp_path / "r" / "ranker.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "config": {**meta["config"], "graph_pass": False}}))
    with pytest.raises(Exception, match="unreadable config in ranker.json: graph_hops"):
        Ranker.load(tmp_path / "r")
    meta_path.write_text(json.dumps(meta))
    I1, _ = hops.match(pool.features, pool.nb, pool.titles)
    I2, _ = back.match(pool.features, pool.nb, pool.titles)
    assert np.array_equal(I1, I2)


def test_match_against_the_live_catalogue_decides_through_the_graph_pass(
    synth: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/match's small pool (`rank_queries`) with a graph ranker: the second booster decides
    (one that says 0 everywhere leaves each query its own row alone), and its graph features
    read the pairs among the query's candidates too, not the query's pairs alone."""
    from index.features.embed import Encoders
    from index.matching import ranker as ranker_mod
    from index.matching.fusion import FusionConfig
    from index.store.live_match import rank_queries
    from index.tuning.ranker import group_pools, ranker_signals, train_on_whole

    cat = read_catalogue(synth / "listings.csv")
    fusion = FusionConfig(tfidf=CHAR)
    (pool,), fold_of = group_pools(cat, Encoders(), fusion, 3, "cpu", pooling="whole")
    assert fold_of is not None
    two, _ = train_on_whole(pool, fold_of, ranker_signals([pool], fusion),
                            RankerConfig(graph_pass=True))
    live = LiveCatalogue(dims={}, tfidf_config=CHAR)
    hexes = list(cat.image_phash or [""] * len(cat))
    live.upsert(cat.posting_id, [""] * len(cat), QueryFeatures.build(cat.title, hexes))
    q = QueryFeatures.build(cat.title[:6], hexes[:6])
    ids: list[str | None] = list(cat.posting_id[:6])

    seen: list[np.ndarray] = []
    real = ranker_mod.graph_features

    def recording(pairs: np.ndarray, p: np.ndarray, n: int, *extra: Any) -> np.ndarray:
        seen.append(pairs.copy())
        return real(pairs, p, n, *extra)

    monkeypatch.setattr(ranker_mod, "graph_features", recording)
    got = rank_queries(live, q, two, ids)
    assert len(seen) == 6 and any(len(m) > 1 for m in got)
    assert all(m[0].is_self and m[0].posting_id == ids[j] for j, m in enumerate(got))
    assert all(s.signals == ["ranker"] for m in got for s in m[1:])
    assert any((s[:, 0] > 0).any() for s in seen)  # candidate-candidate pairs were read

    class Never:
        def predict(self, X: np.ndarray, num_threads: int = 1) -> np.ndarray:
            return np.zeros(len(X))

    two.graph = Never()  # type: ignore[assignment]
    assert all(len(m) == 1 for m in rank_queries(live, q, two, ids))
