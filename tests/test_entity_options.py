"""Issue 16: sources, model-code tokens and char n-grams, text fields, links with scores,
reporting only the signals some row has."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from index.cli.parser import main
from index.data.listings import read_catalogue
from index.data.pairs import read_pair_folder
from index.errors import CatalogueError
from index.features.text import distinct_words, mark_codes, model_codes
from index.features.tfidf import TfidfConfig, TitleTfidf
from index.matching.fusion import FusionConfig, link_sources
from index.matching.selfmatch import match_catalogue, self_match
from index.store.model import read_fusion, write_fusion

# -- model codes and the TF-IDF options ----------------------------------------------------


def test_model_codes_lose_their_separators() -> None:
    assert model_codes("Sony DSC-W120 camera") == ["dscw120"]
    assert model_codes("sony dscw120") == ["dscw120"]
    assert model_codes("XTA-3510-73-GB-10K sun") == ["xta351073gb10k"]
    assert model_codes("xta-3510-73gb-10k") == ["xta351073gb10k"]
    assert model_codes("cli8c and cli-8c") == ["cli8c"]  # unique, in order
    # plain words, plain numbers and codes under 4 characters joined are not codes
    assert model_codes("sony camera 2020 a7") == []
    assert model_codes("a-1b") == ["a1b"][:0]  # 3 characters
    assert model_codes("ab-1c") == ["ab1c"]  # exactly 4


def test_mark_codes_brackets_exactly_the_runs_model_codes_reads() -> None:
    assert mark_codes("hp 388504-B21 drive") == "hp [ 388504-B21 ] drive"
    assert mark_codes("XTA-3510-73-GB-10K sun 2020") == "[ XTA-3510-73-GB-10K ] sun 2020"
    assert mark_codes("a-1b ab-1c") == "a-1b [ ab-1c ]"  # 3 characters joined, then 4
    assert mark_codes("sony camera 2020 a7") == "sony camera 2020 a7"


def test_distinct_words_keeps_each_word_run_once_in_order() -> None:
    assert distinct_words('"Null", 388504-B21 Price 388504-B21" null') == "null 388504-b21 price"
    assert distinct_words("XTA-3510-73-GB-10K (540-5629)") == "xta-3510-73-gb-10k 540-5629"
    assert distinct_words("") == ""


def test_a_bundle_tfidf_saved_before_code_tokens_loads_without_them(tmp_path: Path) -> None:
    t = TitleTfidf(TfidfConfig(code_tokens=False)).fit(["sony dscw120", "canon ixus"])
    t.save(tmp_path)
    meta = json.loads((tmp_path / "tfidf.json").read_text())
    del meta["config"]["code_tokens"]
    (tmp_path / "tfidf.json").write_text(json.dumps(meta))
    assert TitleTfidf.load(tmp_path).config.code_tokens is False


def _cos(cfg: TfidfConfig, a: str, b: str, others: list[str]) -> float:
    t = TitleTfidf(cfg).fit([a, b, *others])
    X = t.transform([a, b])
    return float(X[0].multiply(X[1]).sum())


OTHERS = ["canon ixus 100 camera", "nikon coolpix l20 camera", "sony tx1 camera"]


def test_code_tokens_make_dsc_w120_meet_dscw120() -> None:
    a, b = "Sony DSC-W120 camera", "Sony DSCW120 camera"
    plain = _cos(TfidfConfig(code_tokens=False), a, b, OTHERS)
    codes = _cos(TfidfConfig(code_tokens=True), a, b, OTHERS)
    assert codes > plain + 0.05
    t = TitleTfidf(TfidfConfig(code_tokens=True)).fit([a])
    assert t.word is not None and "dscw120" in t.word.vocabulary_
    plain_vocab = TitleTfidf(TfidfConfig(code_tokens=False)).fit([a]).word.vocabulary_  # type: ignore[union-attr]
    assert "dscw120" not in plain_vocab


def test_char_ngrams_make_spelling_variants_meet() -> None:
    a, b = "samsung galaxy charger", "samsung galaxi charger"
    plain = _cos(TfidfConfig(code_tokens=False), a, b, OTHERS)
    char = _cos(TfidfConfig(code_tokens=False, char_ngrams=(3, 5)), a, b, OTHERS)
    assert char > plain


def test_tfidf_options_round_trip_through_a_bundle_folder(tmp_path: Path) -> None:
    cfg = TfidfConfig(code_tokens=True, char_ngrams=(3, 4))
    t = TitleTfidf(cfg).fit(["Sony DSC-W120", "other thing 12"])
    t.save(tmp_path)
    back = TitleTfidf.load(tmp_path)
    assert back.config == cfg
    q = ["sony dscw120"]
    assert np.allclose(back.transform(q).toarray(), t.transform(q).toarray())


def test_documented_defaults_and_fusion_json_round_trip(tmp_path: Path) -> None:
    d = FusionConfig()
    assert d.sources == "cross_first"
    assert d.tfidf.code_tokens is True
    assert d.tfidf.char_ngrams is None
    assert d.tfidf.char_weight == 0.5
    cfg = d.with_(sources="cross", tfidf={"code_tokens": True, "char_ngrams": (3, 5)})
    write_fusion(tmp_path / "fusion.json", cfg)
    assert read_fusion(tmp_path / "fusion.json") == cfg
    # a fusion.json written before these fields existed keeps its old meaning
    old = json.loads(d.model_dump_json())
    del old["tfidf"], old["sources"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_fusion(tmp_path / "old.json") == d.with_(
        sources="any", tfidf={"code_tokens": False}
    )
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(CatalogueError, match="JSON object"):
        read_fusion(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text('{"sources": "sideways"}')
    with pytest.raises(CatalogueError, match="not a valid fusion config"):
        read_fusion(tmp_path / "bad.json")


def test_self_match_uses_the_configs_tfidf() -> None:
    from index.data.listings import Catalogue

    cat = Catalogue(
        posting_id=["p1", "p2", "p3", "p4"],
        title=["Sony DSC-W120", "sony dscw120", "canon ixus 100", "nikon coolpix l20"],
    )
    base = FusionConfig(thresholds={"tfidf": 0.5}, min2=False, tfidf={"code_tokens": False})
    plain, _ = match_catalogue(cat, base)
    codes, _ = match_catalogue(cat, base.with_(tfidf={"code_tokens": True}))
    assert plain[0] == ["p1"]  # "dsc w 120" and "dscw 120" share "sony" and "120" only
    assert codes[0] == ["p1", "p2"] and codes[1] == ["p2", "p1"]


# -- sources ---------------------------------------------------------------------------


def _fused() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    # rows 0, 1 of source 0 (near-duplicates), row 2 of source 1; row 3 unknown source
    I = np.array([[0, 1, -1], [1, 0, -1], [2, -1, -1], [3, -1, -1]])
    empty = [np.inf, -np.inf, -np.inf]
    S = np.array([[np.inf, 0.9, -np.inf], [np.inf, 0.9, -np.inf], empty, empty], np.float32)
    src = np.array([0, 0, 1, -1])
    # the at-least-one-match signal's neighbours: 0 -> 1 (0.9), 2 (0.6); 2 -> 0 (0.6)
    D2 = np.array([[1, 0.9, 0.6], [1, 0.9, 0.5], [1, 0.6, 0.5], [1, 0.4, -1]], np.float32)
    I2 = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1], [3, 0, -1]])
    return I, S, src, (D2, I2)


def test_cross_drops_same_source_links_and_takes_the_nearest_other_source() -> None:
    I, S, src, fb = _fused()
    J, T = link_sources(I, S, src, "cross", fb, floor=0.5)
    assert J[0].tolist() == [0, 2, -1]  # the duplicate 1 is gone, 2 took the slot
    assert J[1].tolist() == [1, 2, -1]  # 0.5 >= floor 0.5: taken
    assert J[2].tolist() == [2, 0, -1]
    assert J[3].tolist() == [3, -1, -1]  # unknown source: 0.4 < floor
    assert T[0, 1] == pytest.approx(0.6)
    K, _ = link_sources(I, S, src, "cross", fb, floor=0.51)
    assert K[1].tolist() == [1, -1, -1]  # 0.5 < 0.51: nothing from another source


def test_cross_first_keeps_the_duplicate_behind_the_other_source() -> None:
    I, S, src, fb = _fused()
    J, _ = link_sources(I, S, src, "cross_first", fb, floor=0.5)
    assert J[0].tolist() == [0, 2, 1]  # other source first, though its score is lower
    assert J[1].tolist() == [1, 2, 0]
    # a full row: the other-source neighbour replaces the last (lowest) same-source link
    full = np.array([[0, 1], [1, 0], [2, -1]])
    s = np.array([[np.inf, 0.9], [np.inf, 0.9], [np.inf, -np.inf]], np.float32)
    fb = (np.array([[1, 0.9, 0.7]] * 3, np.float32), np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]]))
    J, _ = link_sources(full, s, np.array([0, 0, 1]), "cross_first", fb, 0.0)
    assert J[0].tolist() == [0, 2]


def test_any_mode_or_no_sources_changes_nothing() -> None:
    I, S, src, fb = _fused()
    for mode, s in (("any", src), ("cross", None)):
        J, T = link_sources(I, S, s, mode, fb, 0.0)  # type: ignore[arg-type]
        assert np.array_equal(J, I) and np.array_equal(T, S)


def two_shops(root: Path) -> Path:
    """Shop a has two near-identical offers of one camera; shop b the same camera written
    differently; the labelled pair is the cross-shop one."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tableA.csv").write_text(
        "id,title,description\n"
        "1,sony cyber-shot dsc-w120 silver camera,great compact camera with zoom lens\n"
        "2,sony cyber-shot dsc-w120 silver camera new,great compact camera with zoom lens\n"
        "3,canon ixus 100 is,compact camera\n"
    )
    (root / "tableB.csv").write_text(
        "id,title,description\n"
        "7,dscw120 sony camera,pocket camera\n"
        "8,nikon coolpix l20,compact camera with zoom lens\n"
        "9,canon ixus100,great compact camera with zoom lens\n"
    )
    (root / "train.csv").write_text("ltable_id,rtable_id,label\n1,7,1\n3,8,0\n")
    (root / "valid.csv").write_text("ltable_id,rtable_id,label\n2,7,1\n3,9,1\n")
    return root


def test_a_same_source_duplicate_does_not_take_the_cross_source_place(tmp_path: Path) -> None:
    data = read_pair_folder(two_shops(tmp_path / "er"))
    cat = data.catalogue
    assert cat.source == ["a", "a", "a", "b", "b", "b"]
    cfg = FusionConfig(thresholds={"tfidf": 0.5}, min2_floor=0.05, sources="any")
    anym = self_match(cat, cfg).matches
    assert anym[0] == ["a-1", "a-2"]  # the duplicate takes the at-least-one-match slot
    cross = self_match(cat, cfg.with_(sources="cross")).matches
    assert cross[0] == ["a-1", "b-7"] and cross[1] == ["a-2", "b-7"]
    first = self_match(cat, cfg.with_(sources="cross_first")).matches
    assert first[0] == ["a-1", "b-7", "a-2"]


def test_source_column_of_a_csv(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("posting_id,title,source\nx,a,shop1\ny,b,\nz,c,shop2\n")
    cat = read_catalogue(p)
    assert cat.source == ["shop1", "", "shop2"]
    assert cat.source_codes is not None and cat.source_codes.tolist() == [0, -1, 1]
    p.write_text("posting_id,title\nx,a\n")
    assert read_catalogue(p).source_codes is None


# -- fields ----------------------------------------------------------------------------


def test_fields_choose_and_order_the_text(tmp_path: Path) -> None:
    root = two_shops(tmp_path / "er")
    default = read_pair_folder(root).catalogue
    assert default.title[3] == "dscw120 sony camera"  # a title attribute: it alone
    both = read_pair_folder(root, ["description", "title"]).catalogue
    assert both.title[3] == "pocket camera dscw120 sony camera"
    with pytest.raises(CatalogueError, match="no field"):
        read_pair_folder(root, ["name"])
    p = tmp_path / "l.csv"
    p.write_text("posting_id,name,brand\nx,galaxy s9,samsung\ny,,apple\n")
    cat = read_catalogue(p, fields=["brand", "name"])
    assert cat.title == ["samsung galaxy s9", "apple"]
    with pytest.raises(CatalogueError, match="missing required column"):
        read_catalogue(p)  # no title column and no fields
    with pytest.raises(CatalogueError, match="distinct"):
        read_catalogue(p, fields=["name", "name"])


def test_fields_change_the_match(tmp_path: Path) -> None:
    # the shared description "great compact camera with zoom lens" drowns the names
    data = read_pair_folder(two_shops(tmp_path / "er"), ["title", "description"])
    cfg = FusionConfig(
        thresholds={"tfidf": 0.35}, min2=False, sources="cross", tfidf={"code_tokens": False}
    )
    with_desc = self_match(data.catalogue, cfg).matches
    assert "b-9" in with_desc[0]  # a-1 (sony) joins b-9 (canon) through the description
    titles = self_match(read_pair_folder(tmp_path / "er").catalogue, cfg).matches
    assert "b-9" not in titles[0]


# -- the CLI: options, links, honest reporting -------------------------------------------


def test_cli_options_reach_the_match_and_the_saved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = two_shops(tmp_path / "er")
    out, cfg = tmp_path / "sub.csv", tmp_path / "fusion.json"
    argv = ["evaluate", str(root), "-q", "--sources", "cross", "--tfidf-codes", "on"]
    assert main([*argv, "--tfidf-char", "3-5", "--save-config", str(cfg)]) == 0
    saved = read_fusion(cfg)
    assert saved.sources == "cross"
    assert saved.tfidf.code_tokens and saved.tfidf.char_ngrams == (3, 5)
    capsys.readouterr()
    assert main(["match", str(root), "-q", "--config", str(cfg), "-o", str(out)]) == 0
    assert "sources cross" in capsys.readouterr().out
    with open(out) as f:
        sub = {r["posting_id"]: r["matches"].split() for r in csv.DictReader(f)}
    assert sub["a-1"][0] == "a-1" and "a-2" not in sub["a-1"]


@pytest.mark.parametrize("spec", ["3", "5-3", "a-b", "0-2", "3-11"])
def test_bad_tfidf_char_is_a_clear_error(
    tmp_path: Path, spec: str, capsys: pytest.CaptureFixture
) -> None:
    root = two_shops(tmp_path / "er")
    argv = ["match", str(root), "-q", "-o", str(tmp_path / "s.csv"), "--tfidf-char", spec]
    assert main(argv) == 2
    assert "--tfidf-char" in capsys.readouterr().err


def test_evaluate_tune_on_train_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = two_shops(tmp_path / "er")
    rep = tmp_path / "r.json"
    assert main(["evaluate", str(root), "-q", "--tune", "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    assert "fused (tuned on train)" in out and "thresholds tuned on the train pairs" in out
    rows = {r["name"]: r for r in json.loads(rep.read_text())["rows"]}
    assert rows["fused (tuned on train)"]["f1"] >= rows["fused"]["f1"] - 1e-9


def test_links_file_has_scores_and_signals(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, links = tmp_path / "sub.csv", tmp_path / "links.csv"
    argv = ["match", str(synth / "listings.csv"), "-q", "-o", str(out), "--links", str(links)]
    assert main(argv) == 0
    assert "links with scores" in capsys.readouterr().out
    with open(out) as f:
        sub = {r["posting_id"]: r["matches"].split() for r in csv.DictReader(f)}
    with open(links) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["posting_id", "match", "score", "decided_by", "tfidf", "phash"]
        rows = list(reader)
    # exactly the submission's links, the row itself left out
    want = sorted((p, m) for p, ms in sub.items() for m in ms if m != p)
    assert sorted((r["posting_id"], r["match"]) for r in rows) == want
    cfg = FusionConfig()
    for r in rows:
        sims = {s: float(r[s]) for s in ("tfidf", "phash") if r[s]}
        passing = [s for s in ("tfidf", "phash") if s in sims and sims[s] >= cfg.thresholds[s]]  # type: ignore[index]
        assert r["decided_by"] == ("+".join(passing) or "nearest")
        if passing:  # the score is the best similarity of the signals that matched
            assert float(r["score"]) == pytest.approx(max(sims[s] for s in passing), abs=1e-4)


def test_only_signals_some_row_has_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    p = tmp_path / "l.csv"
    rows = ["posting_id,title,image_phash,label_group"]
    rows += [f"p{i},red shoe size {i % 3},,g{i % 3}" for i in range(9)]
    p.write_text("\n".join(rows) + "\n")
    assert main(["match", str(p), "-q", "-o", str(tmp_path / "s.csv")]) == 0
    assert "signals tfidf;" in capsys.readouterr().out
    assert main(["evaluate", str(p), "-q"]) == 0
    out = capsys.readouterr().out
    assert "tfidf alone" in out and "phash" not in out


def test_feature_cache_skips_the_encoder_on_a_rerun(
    synth: Path, model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from index.features.encoders import Encoder

    cache = tmp_path / "cache"
    base = ["match", str(synth / "listings.csv"), "--model", str(model_dir), "-q"]
    argv = [*base, "--cache", str(cache)]
    assert main([*argv, "-o", str(tmp_path / "a.csv")]) == 0
    assert len(list(cache.glob("text-*.npz"))) == 1
    calls: list[int] = []
    real = {c: c.encode for c in Encoder.__subclasses__()}  # type: ignore[attr-defined]

    def counting(self: Encoder, items: list, **kw: object) -> np.ndarray:
        calls.append(len(items))
        return real[type(self)](self, items, **kw)  # type: ignore[arg-type]

    mp = pytest.MonkeyPatch()
    for c in real:
        mp.setattr(c, "encode", counting)
    try:
        with caplog.at_level(logging.INFO, logger="pricematch"):
            assert main([*argv, "--tfidf-codes", "on", "-o", str(tmp_path / "b.csv")]) == 0
        assert calls == []  # the text embeddings came from the cache
        assert "from the cache" in caplog.text
        assert main([*base, "-o", str(tmp_path / "c.csv")]) == 0  # without --cache: encodes
        assert calls
    finally:
        mp.undo()
    # the cached run's submission is the uncached one's
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "c.csv").read_text()


def test_feature_cache_key_follows_the_inputs(tmp_path: Path) -> None:
    from index.store.cache import FeatureCache

    fp = {"dim": 4, "sha256": "x"}
    k = FeatureCache.key("text", fp, ["a", "b"])
    assert k == FeatureCache.key("text", fp, ["a", "b"])
    assert k != FeatureCache.key("text", fp, ["a", "c"])
    assert k != FeatureCache.key("text", fp, ["ab"])  # no ambiguity in the joining
    assert k != FeatureCache.key("text", {"dim": 4, "sha256": "y"}, ["a", "b"])
    c = FeatureCache(tmp_path / "c")
    assert c.load("text", k, 2) is None
    c.save("text", k, np.ones((2, 4), np.float32), np.array([True, False]))
    x, valid = c.load("text", k, 2)  # type: ignore[misc]
    assert x.shape == (2, 4) and valid.tolist() == [True, False]
    assert c.load("text", k, 3) is None  # another row count is a miss
    c.path("text", k).write_bytes(b"garbage")
    assert c.load("text", k, 2) is None  # unreadable: re-encoded, not an error


def test_live_catalogue_refits_with_the_models_tfidf() -> None:
    from index.features.embed import QueryFeatures
    from index.store.live import LiveCatalogue

    live = LiveCatalogue(dims={}, device="cpu", tfidf_config=TfidfConfig(code_tokens=True))
    titles = ["Sony DSC-W120", "canon ixus 100"]
    live.upsert(["a", "b"], ["", ""], QueryFeatures.build(titles, ["", ""]))
    tfidf, *_ = live.features()
    assert tfidf.config.code_tokens
    assert tfidf.word is not None and "dscw120" in tfidf.word.vocabulary_


def test_text_options_benchmark_helpers() -> None:
    from benchmarks.text_options import pick_rows, variant_flags

    assert variant_flags("base") == []
    assert variant_flags("codes+cross") == ["--tfidf-codes", "on", "--sources", "cross"]
    assert variant_flags("fields=title,brand") == ["--fields", "title,brand"]
    with pytest.raises(SystemExit, match="unknown option"):
        variant_flags("codez")
    rep = {"rows": [{"name": "fused", "f1": 0.5}, {"name": "fused (tuned on train)", "f1": 0.6}]}
    assert pick_rows(rep) == (
        {"name": "fused", "f1": 0.5},
        {"name": "fused (tuned on train)", "f1": 0.6},
    )
    assert pick_rows({"rows": [{"name": "fused", "f1": 0.5}]})[1] is None


def test_ranker_code_features_see_codes_without_separators() -> None:
    from index.matching.ranker import feature_names, pair_features
    from tests.fakes import no_vector_features

    titles = ["sony dsc-w120 silver", "sony dscw120 black", "sony dsc-w130 silver"]
    feats = no_vector_features(3)
    X = pair_features(np.array([[0, 1], [0, 2]]), feats, {}, titles, [])
    col = {n: X[:, i] for i, n in enumerate(feature_names([]))}
    assert col["code_shared"].tolist() == [1.0, 0.0]
    assert col["code_conflict"].tolist() == [0.0, 1.0]


def test_the_tuned_fusion_never_ends_below_its_best_single_signal(
    synth: Path, tmp_path: Path
) -> None:
    from index.tuning.grids import never_below_single

    a, b = FusionConfig(thresholds={"tfidf": 0.5}), FusionConfig(thresholds={"text": 0.5})
    assert never_below_single((a, 0.5), [(b, 0.6)]) == (b, 0.6)
    assert never_below_single((a, 0.5), [(b, 0.5)])[0] is a  # a tie keeps the fusion
    rep = tmp_path / "r.json"
    assert (
        main(["evaluate", str(synth / "listings.csv"), "-q", "--tune", "--report", str(rep)]) == 0
    )
    rows = {r["name"]: r for r in json.loads(rep.read_text())["rows"]}
    singles = [r["f1"] for n, r in rows.items() if n.endswith("alone (tuned)")]
    assert singles and rows["fused (tuned)"]["f1"] >= max(singles) - 1e-9


def test_an_encoder_the_pipeline_does_not_use_is_not_loaded(
    model_dir: Path,
    synth: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    import shutil

    from index.store.model import needed_modalities

    d = FusionConfig()
    assert needed_modalities(d.with_(thresholds={"tfidf": 0.5})) == set()
    assert needed_modalities(d) == {"text", "image"}
    combined = d.with_(thresholds={"tfidf": 0.5, "combined": 0.6}).with_stages(
        combined_weights={"tfidf": 1.0, "text": 1.0}
    )
    assert needed_modalities(combined) == {"text"}
    m = tmp_path / "m"
    shutil.copytree(model_dir, m)
    write_fusion(m / "fusion.json", d.with_(thresholds={"tfidf": 0.6, "phash": 0.9}))
    argv = ["match", str(synth / "listings.csv"), "--model", str(m), "-q"]
    with caplog.at_level(logging.INFO, logger="pricematch"):
        assert main([*argv, "-o", str(tmp_path / "a.csv")]) == 0
    assert "signals tfidf+phash;" in capsys.readouterr().out
    assert "the text encoder is not loaded" in caplog.text
    # --signals naming it forces it, at the default threshold
    assert main([*argv, "--signals", "tfidf,phash,text", "-o", str(tmp_path / "b.csv")]) == 0
    assert "signals tfidf+phash+text;" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text_gain", "left_out"), [(0.002, ["phash"]), (0.0009, ["phash", "text"])]
)
def test_signals_that_earn_under_0_001_are_left_out(text_gain: float, left_out: list[str]) -> None:
    from index.tuning.grids import MARGINAL_MIN, drop_weak

    assert MARGINAL_MIN == 0.001
    w = {"tfidf": 0.1, "phash": 0.0005, "text": text_gain}

    def tuner(c: FusionConfig) -> tuple[FusionConfig, float]:
        return c, sum(w[s] for s in c.thresholds)

    best = FusionConfig(thresholds={"tfidf": 0.6, "phash": 0.9, "text": 0.9}, min2_signal="text")
    kept, score, dropped, first = drop_weak(tuner, best, sum(w.values()))
    assert [s for s, _ in dropped] == left_out
    assert set(kept.thresholds) == set(w) - set(left_out)
    assert score == pytest.approx(sum(w[s] for s in kept.thresholds))
    assert first == pytest.approx(w)
    assert kept.min2_signal in kept.thresholds  # moved off a signal left out
    # exactly at the floor: kept (>=)
    w["phash"] = 0.001
    kept, _, dropped, _ = drop_weak(tuner, best, sum(w.values()))
    assert "phash" in kept.thresholds


def test_evaluate_tune_reports_marginals_and_saves_without_weak_signals(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rep, cfg = tmp_path / "r.json", tmp_path / "f.json"
    argv = ["evaluate", str(synth / "listings.csv"), "-q", "--tune", "--report", str(rep)]
    assert main([*argv, "--save-config", str(cfg)]) == 0
    assert "marginal F1 of each signal" in capsys.readouterr().out
    r = json.loads(rep.read_text())
    assert set(r["marginal"]) == {"tfidf", "phash"}
    saved = read_fusion(cfg)
    assert set(saved.thresholds) == {"tfidf", "phash"} - set(r["left_out"])
    assert all(g < 0.001 for g in r["left_out"].values())


@pytest.mark.parametrize(
    "cfg", [TfidfConfig(), TfidfConfig(char_ngrams=(3, 5)), TfidfConfig(code_tokens=False)]
)
def test_fit_transform_is_fit_then_transform(cfg: TfidfConfig) -> None:
    titles = ["Sony DSC-W120 kamera", "sony dscw120", "", "kaos polos 500ml &amp; 2pcs"] * 3
    a = TitleTfidf(cfg).fit(titles).transform(titles).toarray()
    t = TitleTfidf(cfg)
    b = t.fit_transform(titles).toarray()
    assert np.array_equal(a, b)  # bit for bit (the Ray engine fits, then transforms)
    assert np.array_equal(t.transform(titles).toarray(), a)  # fitted as by fit
    assert TitleTfidf(cfg).fit_transform(["", ""]).shape[0] == 2  # all empty: zero rows


def test_field_weights_weigh_each_fields_words(tmp_path: Path) -> None:
    root = two_shops(tmp_path / "er")
    data = read_pair_folder(root, ["title", "description"])
    cat = data.catalogue
    assert cat.fields is not None
    assert cat.fields["description"][3] == "pocket camera"
    assert cat.fields["title"][3] == "dscw120 sony camera"

    def sim(weights: dict[str, float]) -> float:
        cfg = FusionConfig(thresholds={"tfidf": 0.99}, min2=False, tfidf={"field_weights": weights})
        feats = self_match(cat, cfg).features
        return float(feats.pair_similarity("tfidf", np.array([0]), np.array([5]))[0])

    # a-1 (sony) and b-9 (canon) share only their description
    full, light, none = (
        sim({"title": 1, "description": 1}),
        sim({"title": 1, "description": 0.2}),
        sim({"title": 1, "description": 0}),
    )
    assert full > light > none
    assert none == pytest.approx(0.0, abs=1e-6)
    # weight 0 on the description is the title alone (the vocabulary of both fields)
    t = TitleTfidf(TfidfConfig(field_weights={"title": 1.0})).fit(cat.title)
    assert np.allclose(
        t.transform_fields(cat.fields).toarray(), t.transform(cat.fields["title"]).toarray()
    )


def test_field_weights_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = two_shops(tmp_path / "er")
    cfg = tmp_path / "f.json"
    argv = ["evaluate", str(root), "-q", "--fields", "title:1,description:0.3"]
    assert main([*argv, "--save-config", str(cfg)]) == 0
    assert read_fusion(cfg).tfidf.field_weights == {"title": 1.0, "description": 0.3}
    capsys.readouterr()
    bad = ["match", str(root), "-q", "-o", str(tmp_path / "s.csv"), "--fields", "title:x"]
    assert main(bad) == 2
    assert "--fields: the weight of 'title'" in capsys.readouterr().err
    # a config with weights but listings read without those fields: a clear error
    assert (
        main(["match", str(root), "-q", "-o", str(tmp_path / "s.csv"), "--config", str(cfg)]) == 2
    )
    assert "field weights name" in capsys.readouterr().err
    listings = tmp_path / "l.csv"
    listings.write_text("posting_id,title,description\np1,sony camera,compact\np2,canon,zoom\n")
    build = ["build-index", str(listings), "--out", str(tmp_path / "b"), *argv[3:5]]
    assert main(build) == 2  # a bundle's /match queries carry one title: refused
    assert "field weights apply to match" in capsys.readouterr().err
    assert main([*build[:-1], "title,description"]) == 0  # without weights: fine


@pytest.mark.parametrize(
    "cfg",
    [
        TfidfConfig(),
        TfidfConfig(code_tokens=False),
        TfidfConfig(binary=False),
        TfidfConfig(binary=False, sublinear_tf=True),
        TfidfConfig(min_df=2),
    ],
)
def test_the_fast_word_transform_equals_scikit_learns(cfg: TfidfConfig) -> None:
    titles = [
        "Sony DSC-W120 kamera kamera",
        "sony dscw120",
        "",
        "kaos polos 500ml &amp; 2pcs kaos",
        "unknown words only zzz",
    ] * 3
    t = TitleTfidf(cfg).fit(titles[:9])
    norm = t._texts(titles)
    assert t.word is not None
    ref = t._stack(t.word.transform(norm), None).toarray()
    fast = t.transform(titles)
    assert fast.dtype == np.float32 and fast.shape == ref.shape
    assert np.allclose(fast.toarray(), ref, atol=1e-6)
    assert (fast.toarray() != 0).sum() == (ref != 0).sum()
