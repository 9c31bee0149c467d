"""`pricematch train DATA --out MODEL` (issue 24): the out-of-fold search over the parts,
its budget, --resume, entity-matching folders, and the model `match` then uses."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.cli.parser import build_parser, main, with_default_part
from index.features.encoders import Encoder, register_encoder
from index.matching.ranker import RankerConfig
from index.search.knn import l2_normalize
from training import auto


@register_encoder("noise-text")
class NoiseTextEncoder(Encoder):
    """A text 'encoder' of pure noise: each title a random unit vector (seeded by its text,
    so runs agree), unrelated to its product."""

    modality = "text"

    def __init__(self, folder: Path, device: str = "auto") -> None:
        self.folder, self.dim = folder, 16

    def encode(self, items: Sequence[Any], batch_size: int = 64, show_progress: bool = False
               ) -> np.ndarray:
        rows = []
        for t in items:
            seed = int(hashlib.sha256(str(t).encode()).hexdigest()[:8], 16)
            rows.append(np.random.default_rng(seed).normal(size=self.dim))
        return l2_normalize(np.asarray(rows, np.float32).reshape(len(rows), self.dim))


@pytest.fixture(scope="module")
def noise_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("noise") / "base"
    (base / "text").mkdir(parents=True)
    (base / "text" / "config.json").write_text(json.dumps({"encoder": "noise-text"}))
    return base


@pytest.fixture(scope="module")
def trained(synth: Path, model_dir: Path, cross_base: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "m"
    args = ["train", str(synth / "listings.csv"), "--out", str(out), "--base", str(model_dir),
            "--cross-base", str(cross_base)]
    assert main([*args, "-q"]) == 0
    return out


def _report(out: Path) -> dict[str, Any]:
    return json.loads((out / auto.REPORT).read_text())


def test_train_names_data_or_a_part() -> None:
    build_parser()  # the commands register their default parts
    assert with_default_part(["train", "x.csv", "--out", "m"]) == [
        "train", "all", "x.csv", "--out", "m"
    ]
    assert with_default_part(["-v", "train", "x.csv"]) == ["-v", "train", "all", "x.csv"]
    for argv in (["train", "text", "x.csv"], ["train", "ranker", "x"], ["train", "--help"],
                 ["train"], ["match", "x.csv"]):
        assert with_default_part(argv) == argv


def test_documented_defaults() -> None:
    assert auto.DEFAULT_BUDGET_MINUTES == 30.0
    assert auto.AutoConfig() == auto.AutoConfig(folds=5, budget_minutes=30.0, seed=0,
                                                device="cpu")


def test_the_start_pipeline_and_what_a_change_prints() -> None:
    start = auto.Pipeline()
    assert start == auto.Pipeline(char_ngrams=False, text=None, image=False, unit_rule=False,
                                  reciprocal=0, ranker=False, top_k=20, floors=True,
                                  two_hop=False, char_source=False, graph=False,
                                  graph_hops=False, cross=False)
    assert start.changes() == []
    p = auto.Pipeline(text="static", ranker=True, floors=False, top_k=50)
    assert p.changes() == ["text=static", "ranker", "top_k=50", "floors=False"]
    assert p.ranker_config().top_k == 50 and p.ranker_config().floors == {}
    assert auto.Pipeline(ranker=True).ranker_config().floors["tfidf"] == 0.2
    assert auto.Pipeline(two_hop=True).ranker_config().two_hop
    assert not auto.Pipeline().ranker_config().two_hop
    assert auto.Pipeline(graph=True, graph_hops=True).ranker_config().graph_hops
    assert not auto.Pipeline(graph=True).ranker_config().graph_hops


def test_a_part_wins_on_every_fold_or_on_most_beyond_the_noise() -> None:
    v = auto.verdict
    assert v([0.9, 0.8, 0.7], [0.85, 0.75, 0.65]) is None  # above on every fold
    assert v([1.0, 0.8], [1.0, 0.7]) is None  # a fold at 1.0 cannot tell
    assert v([1.0, 1.0], [1.0, 1.0]) == "no fold can tell (F1 1.0 on all)"
    assert v([0.9, 0.75, 0.65], [0.85, 0.75, 0.65]) == "above on 1 of 3 folds"
    assert v([0.9, 0.8], [0.9, 0.7]) == "above on 1 of 2 folds"  # half is not most
    # most folds above, one below: the mean gain must exceed its standard error
    assert v([0.86, 0.86, 0.86, 0.86, 0.84], [0.85, 0.85, 0.85, 0.85, 0.85]) is None
    got = v([0.851, 0.851, 0.851, 0.80], [0.85, 0.85, 0.85, 0.85])
    assert got == "mean gain -0.0117 not above its standard error 0.0127"
    # gains +0.2, +0.2, -0.2: mean 0.067 under its standard error 0.133
    assert v([0.2, 0.2, 0.0], [0.0, 0.0, 0.2]) == (
        "mean gain +0.0667 not above its standard error 0.1333")


def test_carry_verdict_strictly_above_on_every_check() -> None:
    v = auto.carry_verdict
    assert v([], [0.8, 0.8]) is None and v([0.7, 0.7], []) is None  # a fusion has no check
    assert v([0.81, 0.8001], [0.8, 0.8]) is None
    assert v([0.8, 0.9], [0.8, 0.7]) == "loses carried to a bigger pool (0.8000 vs 0.8000)"
    assert v([0.9, 0.69], [0.8, 0.7]) == "loses carried to a bigger pool (0.6900 vs 0.7000)"


def test_a_change_that_wins_out_of_fold_but_loses_carried_is_not_kept(
    synth: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every change wins out of fold here (the verdict is forced); the carry check decides:
    no floors loses it, two hops ties it, so neither is kept and the ranker stays as it is."""
    checked: list[RankerConfig] = []

    def carry(pool, fold_of, signals, config, sub_pool, show_progress=False):  # type: ignore[no-untyped-def]
        checked.append(config)
        assert len(pool.titles) == len(fold_of)
        return [0.7, 0.9] if config.floors == {} else [0.8, 0.8]

    monkeypatch.setattr(auto, "carry_f1", carry)
    monkeypatch.setattr(auto, "verdict", lambda new, old: None)
    out = tmp_path / "m"
    assert main(["train", str(synth / "listings.csv"), "--base", str(model_dir), "-q",
                 "--budget", "2", "--out", str(out)]) == 0
    rep = _report(out)
    by = {t["name"]: t for t in rep["trials"]}
    assert by["pair re-ranker"]["kept"] and by["pair re-ranker"]["carry_f1"] == [0.8, 0.8]
    assert by["TF-IDF + phash fusion (start)"]["carry_f1"] == []
    floors = by["candidates: no similarity floors"]
    assert not floors["kept"]
    assert floors["note"] == "not kept: loses carried to a bigger pool (0.7000 vs 0.8000)"
    hops = by["candidates: two hops through confident matches"]
    assert not hops["kept"] and hops["note"].endswith("(0.8000 vs 0.8000)")
    assert rep["chosen"]["ranker"] and rep["chosen"]["floors"] and not rep["chosen"]["two_hop"]
    assert [c.floors == {} for c in checked[:2]] == [False, True]


def test_train_writes_a_model_match_uses_with_no_flags(
    trained: Path, synth: Path, cross_base: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    rep = _report(trained)
    kept = [t for t in rep["trials"] if t["kept"]]
    assert kept[0]["name"].startswith("TF-IDF + phash") and len(rep["fold_f1"]) == 5
    assert rep["fold_f1"] == kept[-1]["fold_f1"] and rep["chosen"] == kept[-1]["pipeline"]
    for t in rep["trials"][1:]:  # the table: every candidate tried or skipped, with why
        assert t["note"].startswith(("kept", "not kept", "skipped")), t
    parts = [t["part"] for t in rep["trials"][1:]]  # ranker, options, signals, stages
    assert parts == sorted(parts, key=lambda x: auto.PART_ORDER[x]) and parts[0] == "ranker"
    assert auto.PART_ORDER == {
        "ranker": 0, "candidates": 1, "tfidf": 2, "signal": 3, "stage": 4, "cascade": 5
    }
    from index.features.embed import Encoders

    names = [c.name for c in auto.candidates(Encoders(), False)]
    assert [n for n in names if n.startswith("candidates")] == [
        "candidates: no similarity floors", "candidates: char n-gram source",
        "candidates: two hops through confident matches",
        "candidates: two hops in the graph pass"]
    assert "decision: a graph pass over the first pass's scores" in names
    # the cascade is a candidate on label groups too (behind a kept ranker)
    assert "cascade: cross-encoder on the uncertain band" in names
    assert rep["config"]["cross"]["base"] == str(cross_base)
    # with the ranker kept the fusion's stages are not tried (the ranker decides instead)
    assert ("stage" in parts) != rep["chosen"]["ranker"]
    # the model is the fusion (and ranker) of the winner: match needs no flag, and the
    # winner's F1 is at least the start's on every fold
    assert all(a >= b for a, b in zip(rep["fold_f1"], kept[0]["fold_f1"], strict=True))
    sub = tmp_path / "s.csv"
    assert main(["match", str(synth / "listings.csv"), "--model", str(trained), "-o",
                 str(sub), "-q"]) == 0
    with sub.open() as f:
        assert sum(1 for _ in csv.DictReader(f)) == len(
            (synth / "listings.csv").read_text().splitlines()) - 1
    assert (trained / "ranker").is_dir() == rep["chosen"]["ranker"]
    # the ranker's candidates are tried exactly when the ranker was kept
    ranker_kept = any(t["kept"] for t in rep["trials"] if t["part"] == "ranker")
    cands = [t for t in rep["trials"] if t["part"] == "candidates"]
    assert len(cands) == (3 if ranker_kept else 0)
    # each ranker row says how many true pairs reached its candidates, per fold
    ranker = next(t for t in rep["trials"] if t["name"] == "pair re-ranker")
    assert len(ranker["candidate_recall"]) == 5
    assert all(0.0 < r <= 1.0 for r in ranker["candidate_recall"])
    assert rep["trials"][0]["candidate_recall"] == []  # the fusion has no candidates


def test_a_wider_candidate_pool_reports_at_least_the_recall_of_a_narrower_one(
    synth: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Top 50 without floors holds every candidate pair of top 2 with them (a superset on
    every fold), so its candidate recall cannot be lower on any fold, and it is higher on
    some (top 2 cannot hold every pair of the fixture's larger groups)."""
    from index.data.listings import read_catalogue

    cat = read_catalogue(synth / "listings.csv")
    base = auto.load_base(model_dir, tmp_path / "work")
    search = auto.Search(cat, base, tmp_path / "m", auto.AutoConfig(folds=3), None, False)
    narrow = search.trial("narrow", "test", auto.Pipeline(ranker=True, top_k=2))
    wide = search.trial("wide", "test", auto.Pipeline(ranker=True, top_k=50, floors=False))
    assert len(narrow.candidate_recall) == len(wide.candidate_recall) == 3
    assert all(w >= n for w, n in zip(wide.candidate_recall, narrow.candidate_recall,
                                      strict=True))
    assert wide.candidate_recall != narrow.candidate_recall
    again = auto.Search(cat, base, tmp_path / "m", auto.AutoConfig(folds=3), None, False,
                        resume=True).trial("narrow", "test", auto.Pipeline(ranker=True, top_k=2))
    assert again.candidate_recall == narrow.candidate_recall  # saved for --resume


def test_the_written_folder_holds_what_the_winner_needs(
    synth: Path, model_dir: Path, tmp_path: Path
) -> None:
    """A winner with a distilled static text encoder and a ranker: both land in the model
    folder, and `match --model` runs them (it fails on a missing encoder or ranker)."""
    from index.data.listings import read_catalogue

    cat = read_catalogue(synth / "listings.csv")
    base = auto.load_base(model_dir, tmp_path / "work")
    out = tmp_path / "m"
    search = auto.Search(cat, base, out, auto.AutoConfig(folds=3), None, False)
    p = auto.Pipeline(text="static", ranker=True)
    t = search.trial("forced", "test", p)
    search.write(t, [t], 0.0)
    cfg = json.loads((out / "text" / "config.json").read_text())
    assert cfg["encoder"] == "static-text"
    assert (out / "ranker" / "model.txt").is_file()
    sub = tmp_path / "s.csv"
    assert main(["match", str(synth / "listings.csv"), "--model", str(out), "-o", str(sub),
                 "-q", "--links", str(tmp_path / "l.csv")]) == 0
    with (tmp_path / "l.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["decided_by"] for r in rows} == {"ranker"}


def test_a_pure_noise_signal_is_not_kept(synth: Path, noise_base: Path, cross_base: Path,
                                        tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["train", str(synth / "listings.csv"), "--out", str(out), "--base",
                 str(noise_base), "--cross-base", str(cross_base), "-q"]) == 0
    rep = _report(out)
    noise = [t for t in rep["trials"] if t["pipeline"]["text"] == "base"]
    assert len(noise) == 1 and noise[0]["fold_f1"] and not noise[0]["kept"]
    assert noise[0]["note"].startswith("not kept")
    assert rep["chosen"]["text"] is None and not (out / "text").exists()
    assert "text" not in json.loads((out / "fusion.json").read_text())["thresholds"]
    # the static candidate needs a transformer to distil: not offered for this encoder
    assert not any(t["pipeline"]["text"] == "static" for t in rep["trials"])


def test_the_budget_skips_the_expensive_candidate(
    synth: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    # 15 CPU-s: the static encoder's distillation alone is estimated at 30 s
    assert auto.COSTS["static"][0] == 30.0
    assert main(["train", str(synth / "listings.csv"), "--out", str(out), "--base",
                 str(model_dir), "--budget", "0.25", "-q"]) == 0
    rep = _report(out)
    by = {t["name"]: t for t in rep["trials"]}
    static = by["text: static, distilled from the base encoder"]
    assert static["note"].startswith("skipped: needs ~") and not static["fold_f1"]
    assert by["unit rule"]["fold_f1"]  # a cheap one ran
    assert "skipped: needs" in capsys.readouterr().out
    # no budget at all: the start only, and still a model
    out0 = tmp_path / "m0"
    assert main(["train", str(synth / "listings.csv"), "--out", str(out0), "--base",
                 str(model_dir), "--budget", "0", "-q"]) == 0
    rep0 = _report(out0)
    assert all(t["note"].startswith("skipped") for t in rep0["trials"][1:])
    assert (out0 / "fusion.json").is_file()


def test_a_resumed_run_gives_the_same_model(
    synth: Path, model_dir: Path, cross_base: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [str(synth / "listings.csv"), "--base", str(model_dir), "-q", "--folds", "3",
            "--cross-base", str(cross_base)]
    whole = tmp_path / "whole"
    assert main(["train", *args, "--out", str(whole)]) == 0
    real = auto.Search.score
    calls: list[auto.Pipeline] = []

    def dies_on_the_fourth(self: auto.Search, p: auto.Pipeline) -> Any:
        calls.append(p)
        if len(calls) == 4:
            raise KeyboardInterrupt  # a kill in the middle of a candidate
        return real(self, p)

    monkeypatch.setattr(auto.Search, "score", dies_on_the_fourth)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        main(["train", *args, "--out", str(cut)])
    assert not (cut / "fusion.json").exists()
    calls.clear()
    monkeypatch.setattr(auto.Search, "score", lambda self, p: (calls.append(p), real(self, p))[1])
    assert main(["train", *args, "--out", str(cut), "--resume"]) == 0
    n_trials = sum(1 for t in _report(whole)["trials"] if t["fold_f1"])
    assert len(calls) == n_trials - 3  # the three finished candidates were not scored again
    a, b = _report(whole), _report(cut)
    assert [t["fold_f1"] for t in a["trials"]] == [t["fold_f1"] for t in b["trials"]]
    assert a["chosen"] == b["chosen"]
    assert (whole / "fusion.json").read_text() == (cut / "fusion.json").read_text()
    if (whole / "ranker").exists():
        assert (whole / "ranker" / "model.txt").read_bytes() == (
            cut / "ranker" / "model.txt").read_bytes()
    # --resume on other data refuses instead of mixing results
    other = tmp_path / "other.csv"
    lines = (synth / "listings.csv").read_text().splitlines()
    other.write_text("\n".join(lines[:-5]) + "\n")
    assert main(["train", str(other), "--base", str(model_dir), "-q", "--folds", "3",
                 "--out", str(cut), "--resume"]) == 2


def _pair_folder(synth: Path, root: Path) -> Path:
    """The synthetic catalogue as an entity-matching folder: even rows tableA, odd rows
    tableB; train/valid pairs: every same-group A-B pair, and as many random others."""
    with (synth / "listings.csv").open() as f:
        rows = list(csv.DictReader(f))
    root.mkdir(parents=True)
    for name, part in (("tableA", rows[0::2]), ("tableB", rows[1::2])):
        with (root / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "title"])
            w.writerows([r["posting_id"], r["title"]] for r in part)
    a, b = rows[0::2], rows[1::2]
    pos = [(x, y) for x in a for y in b if x["label_group"] == y["label_group"]]
    rng = np.random.default_rng(0)
    neg = [(a[i], b[j]) for i, j in zip(rng.integers(0, len(a), 3 * len(pos)),
                                        rng.integers(0, len(b), 3 * len(pos)), strict=True)
           if a[i]["label_group"] != b[j]["label_group"]]
    pairs = [(x["posting_id"], y["posting_id"], 1) for x, y in pos] + [
        (x["posting_id"], y["posting_id"], 0) for x, y in neg]
    rng.shuffle(pairs)  # type: ignore[arg-type]
    cut = int(len(pairs) * 0.8)
    for name, part in (("train", pairs[:cut]), ("valid", pairs[cut:])):
        with (root / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ltable_id", "rtable_id", "label"])
            w.writerows(part)
    return root


def test_an_entity_matching_folder_goes_through_the_same_command(
    synth: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fakes import make_pair_base

    folder = _pair_folder(synth, tmp_path / "er")
    out = tmp_path / "m"
    cross = make_pair_base(tmp_path / "cross-base")  # the packaged MiniLM costs minutes
    args = ["--out", str(out), "--base", str(model_dir), "--cross-base", str(cross), "-q"]
    assert main(["train", str(folder), *args]) == 0
    rep = _report(out)
    assert rep["mode"] == "pairs" and len(rep["fold_f1"]) == 5
    assert "pairwise F1 of the train pairs" in capsys.readouterr().out
    ran = [t for t in rep["trials"] if t["fold_f1"]]
    assert any(t["pipeline"]["ranker"] for t in ran)
    # the cascade candidate ran out of fold on the same folds, with the base asked for
    (casc,) = [t for t in rep["trials"] if t["part"] == "cascade"]
    assert casc["pipeline"]["cross"] and len(casc["fold_f1"]) == 5, casc
    assert rep["config"]["cross"]["base"] == str(cross)
    assert main(["evaluate", str(folder), "--model", str(out), "--split", "valid"]) == 0
    assert main(["train", str(folder), "--out", str(out), "--images", str(synth)]) == 2
    assert main(["train", str(folder), "--out", str(out), "--cross-base", str(tmp_path)]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_train_needs_label_groups(tmp_path: Path, model_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("posting_id,title\na,x\nb,y\n")
    assert main(["train", str(csv_path), "--out", str(tmp_path / "m"), "--base",
                 str(model_dir)]) == 2
    assert "label_group" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "m", ignore_errors=True)


def test_a_part_that_wins_but_matches_too_slowly_is_not_kept(
    synth: Path, model_dir: Path, tmp_path: Path
) -> None:
    assert auto.DEFAULT_MATCH_CPU_PER_1K == 2.8 and auto.CAP_MIN_ROWS == 5000
    args = [str(synth / "listings.csv"), "--base", str(model_dir), "-q", "--budget", "3"]
    free = tmp_path / "free"
    assert main(["train", *args, "--out", str(free), "--match-cap", "1000"]) == 0
    won = [t for t in _report(free)["trials"][1:] if t["kept"]]
    assert won, "the synthetic catalogue has a part that wins on every fold"
    assert all(t["match_cpu_per_1k"] > 0 for t in won)
    tight = tmp_path / "tight"
    assert main(["train", *args, "--out", str(tight), "--match-cap", "0"]) == 0
    rep = _report(tight)
    assert not any(t["kept"] for t in rep["trials"][1:])
    first = next(t for t in rep["trials"] if t["name"] == won[0]["name"])
    assert "over the cap of 0" in first["note"]
    assert rep["chosen"] == _report(free)["trials"][0]["pipeline"]  # the start
    # --resume reads the candidates named over the cap (a ranker's among them) as they were
    over = [t["name"] for t in rep["trials"] if "over the cap" in t["note"]]
    assert any(t["pipeline"]["ranker"] for t in rep["trials"] if t["name"] in over)
    assert main(["train", *args, "--out", str(tight), "--match-cap", "0", "--resume"]) == 0
    again = _report(tight)
    assert again["chosen"] == rep["chosen"]
    assert [t["name"] for t in again["trials"] if "over the cap" in t["note"]] == over


def test_a_wider_top_k_of_a_pure_noise_signal_is_not_kept(
    synth: Path, noise_base: Path, tmp_path: Path
) -> None:
    """Issue 27: with a noise text signal among the ranker's sources, its top 50 instead of
    its top 20 adds only unrelated candidates; out of fold that does not win."""
    from index.data.listings import read_catalogue

    cat = read_catalogue(synth / "listings.csv")
    base = auto.load_base(noise_base, tmp_path / "work")
    search = auto.Search(cat, base, tmp_path / "m", auto.AutoConfig(), None, False)
    narrow = search.trial("top 20", "test", auto.Pipeline(text="base", ranker=True))
    wide = search.trial("top 50", "candidates",
                        auto.Pipeline(text="base", ranker=True, top_k=50))
    assert len(wide.fold_f1) == len(narrow.fold_f1) == 5
    assert auto.verdict(wide.fold_f1, narrow.fold_f1) is not None
    assert wide.ranker is not None and wide.ranker.config.top_k == 50
    assert "text" in wide.ranker.signals  # the noise is one of its sources


def test_no_encoder_fine_tuned_on_the_data_is_a_candidate(model_dir: Path,
                                                           tmp_path: Path) -> None:
    """Scored in one pool, each fold embedded by the model fine-tuned on the other folds,
    a fine-tuned encoder wins out of fold by matching each fold as if alone (rows of other
    folds are in other spaces) and then loses on a real catalogue: it is not tried."""
    base = auto.load_base(model_dir, tmp_path / "work")
    names = [c.name for c in auto.candidates(base, True)]
    assert [n for n in names if n.startswith(("text", "image"))] == [
        "text: static, distilled from the base encoder",
        "text: base encoder (onnx-text, as given)",
        "image: base encoder (as given)",
    ]
    assert not any("fine-tuned" in n for n in names)

def test_a_two_hop_ranker_is_scored_out_of_fold_and_saved_with_it(
    synth: Path, model_dir: Path, tmp_path: Path
) -> None:
    from index.data.listings import read_catalogue
    from index.matching.ranker import Ranker

    cat = read_catalogue(synth / "listings.csv")
    base = auto.load_base(model_dir, tmp_path / "work")
    search = auto.Search(cat, base, tmp_path / "m", auto.AutoConfig(folds=3), None, False)
    t = search.trial("hops", "candidates", auto.Pipeline(ranker=True, two_hop=True))
    assert len(t.fold_f1) == 3 and t.ranker is not None and t.ranker.config.two_hop
    assert Ranker.load(t.ranker.save(tmp_path / "r")).config.two_hop
    # on an entity-matching folder (pairwise folds) it is not offered
    names = [c.name for c in auto.candidates(base, False, groups=False)]
    assert "candidates: two hops through confident matches" not in names
    assert "candidates: two hops in the graph pass" not in names
    # the graph pass's hop pairs: offered behind a graph pass only, recall counting them
    order = [c.name for c in search.order(auto.candidates(base, False))]
    assert order.index("decision: a graph pass over the first pass's scores") < order.index(
        "candidates: two hops in the graph pass")
    hop = next(c for c in auto.candidates(base, False) if c.name.endswith("in the graph pass"))
    assert not hop.applies(auto.Pipeline(ranker=True)) and hop.applies(
        auto.Pipeline(ranker=True, graph=True))
    g = search.trial("g", "candidates", auto.Pipeline(ranker=True, graph=True))
    gh = search.trial("gh", "candidates", auto.Pipeline(ranker=True, graph=True, graph_hops=True))
    assert gh.ranker is not None and gh.ranker.config.graph_hops
    assert all(a >= b for a, b in zip(gh.candidate_recall, g.candidate_recall, strict=True))


def test_the_cascade_estimate_on_label_groups_grows_with_the_pairs_a_fit_reads() -> None:
    from training.config import CrossConfig

    assert auto.COSTS["cross_groups"] == (60.0, 64.0)
    assert (auto.CROSS_PAIRS_PER_ROW, auto.CROSS_FIT_CPU_PER_PAIR) == (3.2, 0.15)
    # the measured run: 7,969 rows, 2,000 pairs a fit, 5 folds (2,302 CPU-s measured)
    assert auto.cross_cost(7969, CrossConfig(max_pairs=2000), 5) == pytest.approx(2370.016)
    # the default fit reads up to 20,000: 10x the fits' cost
    assert auto.cross_cost(7969, CrossConfig(), 5) == pytest.approx(18570.016)
    # 400 rows: 1,024 band pairs a fit (under the cap), 6 fits; half the epochs, half
    assert auto.cross_cost(400, CrossConfig(), 5) == pytest.approx(60 + 25.6 + 921.6)
    assert auto.cross_cost(400, CrossConfig(epochs=2), 5) == pytest.approx(60 + 25.6 + 460.8)


def test_the_cascade_on_label_groups_is_scored_out_of_fold_and_saved_with_it(
    synth: Path, model_dir: Path, cross_base: Path, tmp_path: Path
) -> None:
    """Issue 25: on a group-labelled pool the cascade candidate fits its cross-encoder out
    of fold on the pool's candidate pairs; it has no carry check of its own (its trees are
    the ranker's), and --resume reads it back as it was."""
    from index.data.listings import read_catalogue
    from training.config import CrossConfig

    cat = read_catalogue(synth / "listings.csv")
    base = auto.load_base(model_dir, tmp_path / "work")
    cfg = auto.AutoConfig(folds=3, cross=CrossConfig(base=str(cross_base), epochs=1))
    search = auto.Search(cat, base, tmp_path / "m", cfg, None, False)
    trees = search.trial("ranker", "ranker", auto.Pipeline(ranker=True))
    t = search.trial("cascade", "cascade", auto.Pipeline(ranker=True, cross=True))
    assert len(t.fold_f1) == 3 and t.carry_f1 == [] and len(trees.carry_f1) == 2
    assert t.ranker is not None
    rep = t.ranker.report["cascade"]
    assert rep["readable_pairs"] > 0 and 0 <= rep["folds_with_a_band"] <= 3
    assert (t.ranker.cascade is None) == (t.ranker.scorer is None)
    assert search.estimate(auto.Pipeline(ranker=True, cross=True)) >= auto.cross_cost(
        len(cat), cfg.cross, 3)
    again = auto.Search(cat, base, tmp_path / "m", cfg, None, False, resume=True).trial(
        "cascade", "cascade", auto.Pipeline(ranker=True, cross=True))
    assert again.fold_f1 == t.fold_f1 and again.note.startswith("resumed")
