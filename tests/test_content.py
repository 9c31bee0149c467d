"""Hostile *content* inside valid requests (issue 26): whole catalogues generated from a
grammar of degenerate titles (no word token, emoji, digits only, mixed scripts, zero-width
and control characters, very long, all identical), odd phash values and image names that
name nothing go through `pricematch match|evaluate|build-index|train ranker`, `POST
/batch-match`, `POST /listings` + `POST /match` and a restart. Never a 5xx, never a
traceback: every posting_id is answered and matches itself, in the Kaggle format."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from index.cli import main
from index.errors import BundleError, ConfigurationError, EncoderError, StoreError
from service.errors import status_of
from tests.test_service import clients

# -- the grammar ------------------------------------------------------------------------------

WORDS = ["wardah", "lipstick", "matte", "indomie", "goreng", "kabel", "usb", "200gr", "1kg"]
PIECES = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(["!!!", "???", "...", "-", "/", "#"]),  # no word token
    st.sampled_from(["😀", "🎉🎉", "🙂"]),  # emoji only
    st.from_regex(r"[0-9]{1,6}", fullmatch=True),  # digits only
    st.sampled_from(["手机壳", "чехол", "เคส", "غطاء", "ko\u0301pi"]),  # mixed scripts
    st.sampled_from(["\u200b", "\u200d", "\ufeff", "\u202e", "\x01", "\x7f"]),  # invisible
    st.sampled_from(["x" * 3000, "kabel " * 800]),  # very long
)
TITLES = st.lists(PIECES, max_size=4).map(" ".join)
PHASHES = st.one_of(
    st.just(""),
    st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    st.sampled_from(["zz", "ffff", "f" * 17, "G" * 16, " 94974f937d4c2433"]),
)


@st.composite
def catalogues(draw: Any) -> list[dict[str, str]]:
    """1-60 rows; sometimes every title the same (one product over the cap of 50)."""
    n = draw(st.integers(1, 60))
    same = draw(st.booleans()) and n > 1
    title = draw(TITLES)
    return [
        {
            "posting_id": f"p{i}",
            "image": draw(st.sampled_from(["", f"none{i}.jpg", "../../etc/passwd", "a.jpg"])),
            "image_phash": draw(PHASHES),
            "title": title if same else draw(TITLES),
            "label_group": str(draw(st.integers(0, 6))),
        }
        for i in range(n)
    ]


def csv_bytes(rows: list[dict[str, str]], labelled: bool = True) -> bytes:
    cols = ["posting_id", "image", "image_phash", "title"] + (["label_group"] if labelled else [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def check_submission(text: str, ids: list[str]) -> None:
    """Kaggle format: header, each id once in input order, itself first, at most 50."""
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["posting_id", "matches"]
    assert [r[0] for r in rows[1:]] == ids
    for pid, matches in rows[1:]:
        m = matches.split(" ")
        assert m[0] == pid and len(m) <= 50 and len(set(m)) == len(m), (pid, matches)
        assert set(m) <= set(ids)


PROPS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def ranked(strict_model: Path, synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake model with a pair re-ranker trained on the synthetic catalogue."""
    out = tmp_path_factory.mktemp("ranked") / "model"
    shutil.copytree(strict_model, out)
    argv = ["train", "ranker", str(synth / "listings.csv"), "--model", str(out), "-q"]
    assert main([*argv, "--keep-anyway"]) == 0
    assert (out / "ranker").is_dir()
    return out


# -- the CLI ----------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    """Exit 0, or 2 with one error line; never an exception (a traceback)."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    if code == 2:
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1, err
    else:
        assert code == 0, err
    return code


@given(rows=catalogues())
@PROPS
def test_cli_on_degenerate_catalogues(
    rows: list[dict[str, str]],
    ranked: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    d = tmp_path_factory.mktemp("cli")
    (d / "images").mkdir()
    (d / "t.csv").write_bytes(csv_bytes(rows))
    ids = [r["posting_id"] for r in rows]
    t, sub = str(d / "t.csv"), d / "sub.csv"
    for extra in ([], ["--images", str(d / "images")]):
        assert (
            run_cli(["match", t, "--model", str(ranked), "-o", str(sub), "-q", *extra], capsys) == 0
        )
        check_submission(sub.read_text(encoding="utf-8"), ids)
    run_cli(["evaluate", t, "--model", str(ranked), "-q"], capsys)
    run_cli(["build-index", t, "--model", str(ranked), "--out", str(d / "b"), "-q"], capsys)
    model = d / "m"
    shutil.copytree(ranked, model)
    run_cli(["train", "ranker", t, "--model", str(model), "--folds", "2", "-q"], capsys)


def test_punctuation_only_titles_match_themselves(
    strict_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: no title has a word token (TF-IDF has no vocabulary to fit)."""
    rows = [
        {"posting_id": f"p{i}", "image": "", "image_phash": "", "title": t}
        for i, t in enumerate(["!!!", "???", "...", "😀😀"])
    ]
    (tmp_path / "t.csv").write_bytes(csv_bytes(rows, labelled=False))
    sub = tmp_path / "sub.csv"
    argv = ["match", str(tmp_path / "t.csv"), "--model", str(strict_model), "-o", str(sub)]
    # the fake text encoder reads every such title as [UNK] (one vector): TF-IDF alone here
    assert run_cli([*argv, "--signals", "tfidf", "-q"], capsys) == 0
    assert sub.read_text().splitlines() == [
        "posting_id,matches",
        "p0,p0",
        "p1,p1",
        "p2,p2",
        "p3,p3",
    ]


# -- the service ------------------------------------------------------------------------------


@pytest.fixture
def services(tmp_path: Path, ranked: Path) -> Iterator[Any]:
    yield from clients(tmp_path, ranked)


def _no_5xx(r: Any) -> Any:
    assert r.status_code < 500, r.text
    return r


@given(rows=catalogues())
@PROPS
def test_service_on_degenerate_catalogues(rows: list[dict[str, str]], services: Any) -> None:
    c: TestClient = services()
    ids = [r["posting_id"] for r in rows]
    r = _no_5xx(c.post("/batch-match", files={"csv": ("t.csv", csv_bytes(rows, False))}))
    assert r.status_code == 200, r.text
    check_submission(r.text, ids)
    # the JSON API validates phash strictly (a 422 naming the field); the rows it takes are
    # written, then matched; the restart replays them
    body = {
        "listings": [
            {"posting_id": r["posting_id"], "title": r["title"][:5000], "image_phash": p}
            for r in rows
            if (p := r["image_phash"] or "0" * 16)
            and len(p) == 16
            and all(ch in "0123456789abcdef" for ch in p)
        ]
    }
    if body["listings"]:
        assert _no_5xx(c.post("/listings", json=body)).status_code == 200
    for q in rows[:3]:
        got = _no_5xx(c.post("/match", json={"title": q["title"][:5000] or "x"}))
        assert got.status_code == 200, got.text
    again: TestClient = services()  # a restart on the same data folder
    ready = again.get("/readyz").json()
    assert ready["ready"] and ready["detail"]["listings"] >= len(body["listings"])
    assert _no_5xx(again.post("/match", json={"title": "!!!"})).status_code == 200


# -- statuses of the server's own problems ------------------------------------------------------


@pytest.mark.parametrize(
    "exc", [BundleError("log damaged"), EncoderError("x"), ConfigurationError("x"), StoreError("x")]
)
def test_server_side_problems_are_503_never_4xx(exc: Exception) -> None:
    assert status_of(exc) == 503  # type: ignore[arg-type]


def test_a_damaged_log_on_a_write_answers_503(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    c: TestClient = services()
    engine = c.app.state.engine  # type: ignore[attr-defined]

    def damaged(*a: Any, **k: Any) -> None:
        raise BundleError("data/wal/000001.log: a record whose checksum fails (the log is damaged)")

    monkeypatch.setattr(engine.wal, "append", damaged)
    r = c.post("/listings", json={"listings": [{"posting_id": "a", "title": "kabel usb"}]})
    assert r.status_code == 503 and "damaged" in r.json()["detail"], r.text
    assert c.get("/healthz").status_code == 200


def test_live_ranker_without_its_signals_is_a_configuration_error(ranked: Path) -> None:
    from index.features.embed import QueryFeatures
    from index.matching.ranker import Ranker
    from index.store.live import LiveCatalogue
    from index.store.live_match import rank_queries

    ranker = Ranker.load(ranked / "ranker")
    live = LiveCatalogue(dims={})  # searches no dense signal
    assert set(ranker.signals) - {"tfidf", "phash"}, ranker.signals
    with pytest.raises(ConfigurationError, match="does not search"):
        rank_queries(live, QueryFeatures.__new__(QueryFeatures), ranker, [None])
