import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from index.cli.parser import main
from index.matching.fusion import FusionConfig


def read_sub(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as f:
        r = csv.reader(f)
        assert next(r) == ["posting_id", "matches"]
        return {row[0]: row[1].split(" ") for row in r}


def test_match_titles_and_phash(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub.csv"
    assert main(["match", str(synth / "listings.csv"), "-o", str(out), "-q"]) == 0
    sub = read_sub(out)
    with open(synth / "listings.csv") as f:
        ids = [r["posting_id"] for r in csv.DictReader(f)]
    assert list(sub) == ids  # every row, input order
    assert all(p in m and len(m) <= 50 and len(set(m)) == len(m) for p, m in sub.items())
    assert "signals tfidf+phash;" in capsys.readouterr().out


def test_match_with_model_uses_image_encoder(
    synth: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "sub.csv"
    args = ["match", str(synth / "listings.csv"), "--model", str(model_dir), "-o", str(out), "-q"]
    assert main([*args, "--images", str(synth / "images")]) == 0
    assert "signals tfidf+phash+text+image;" in capsys.readouterr().out
    assert main(args) == 0  # without --images: no image signal
    assert "signals tfidf+phash+text;" in capsys.readouterr().out


def test_evaluate_tune_beats_untuned_and_writes_report(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rep = tmp_path / "r.json"
    cfg = tmp_path / "fusion.json"
    argv = [
        "evaluate",
        str(synth / "listings.csv"),
        "--tune",
        "-q",
        "--report",
        str(rep),
        "--save-config",
        str(cfg),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tfidf alone" in out and "fused (tuned)" in out and "best config" in out
    rows = {r["name"]: r for r in json.loads(rep.read_text())["rows"]}
    assert rows["fused (tuned)"]["f1"] >= rows["fused"]["f1"]
    assert rows["fused (tuned)"]["f1"] > 0.8
    saved = json.loads(cfg.read_text())
    assert saved["tuned_rows"] == rows["fused"]["rows"]
    # the saved config is accepted back
    assert main(["evaluate", str(synth / "listings.csv"), "-q", "--config", str(cfg)]) == 0


def test_build_index_then_match_with_bundle(synth: Path, model_dir: Path, tmp_path: Path) -> None:
    b = tmp_path / "bundle"
    assert (
        main(
            [
                "build-index",
                str(synth / "listings.csv"),
                "--model",
                str(model_dir),
                "--images",
                str(synth / "images"),
                "--out",
                str(b),
                "-q",
            ]
        )
        == 0
    )
    assert (b / "manifest.json").is_file() and (b / "encoders" / "text" / "model.onnx").is_file()
    s1, s2 = tmp_path / "s1.csv", tmp_path / "s2.csv"
    assert (
        main(["match", str(synth / "listings.csv"), "--bundle", str(b), "-o", str(s1), "-q"]) == 0
    )
    assert (
        main(
            [
                "match",
                str(synth / "listings.csv"),
                "--model",
                str(model_dir),
                "--config",
                str(b / "fusion.json"),
                "-o",
                str(s2),
                "-q",
            ]
        )
        == 0
    )
    assert read_sub(s1) == read_sub(s2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("posting_id,image\na,b\n", "missing required column(s) title"),
        ("posting_id,title\na,x\na,y\n", "duplicate posting_id"),
        (b"posting_id,title\na,\xff\n", "not UTF-8"),
    ],
)
def test_bad_csv_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str | bytes, message: str
) -> None:
    p = tmp_path / "bad.csv"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["match", str(p), "-o", str(tmp_path / "o.csv"), "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()


def test_unknown_signal_and_missing_model(tmp_path: Path, synth: Path, capsys) -> None:
    csv_ = str(synth / "listings.csv")
    assert main(["match", csv_, "--signals", "tfidf,smell", "-o", str(tmp_path / "o.csv")]) == 2
    assert "unknown signal(s) smell" in capsys.readouterr().err
    assert main(["match", csv_, "--model", str(tmp_path / "none"), "-o", str(tmp_path / "o")]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_evaluate_needs_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = tmp_path / "t.csv"
    p.write_text("posting_id,title\na,x\nb,y\n")
    assert main(["evaluate", str(p), "-q"]) == 2
    assert "needs a label_group column" in capsys.readouterr().err


def test_console_script_runs(tmp_path: Path) -> None:
    exe = shutil.which("pricematch")
    cmd = [exe] if exe else [sys.executable, "-m", "index.cli"]
    r = subprocess.run(
        [*cmd, "sample", "--out", str(tmp_path / "s"), "--products", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s" / "listings.csv").is_file()


def test_a_layer_that_fails_to_load_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A broken layer's commands are missing with a message, the others still work."""
    import index.cli.parser as cli

    class Broken:
        name, value = "imaging", "imaging.cli:register"

        def load(self) -> None:
            raise ImportError("No module named 'torch'")

    real = cli.entry_points

    def eps(group: str) -> list[object]:
        return [*real(group=group), Broken()]

    monkeypatch.setattr(cli, "entry_points", eps)
    parser = cli.build_parser()
    assert "the imaging commands are unavailable (No module named 'torch')" in (
        capsys.readouterr().err
    )
    assert parser.parse_args(["sample", "--out", "x"]).command == "sample"


def test_faiss_cuda_without_a_gpu_is_a_clear_error() -> None:
    from index.errors import StoreError
    from index.search.knn import gpu_available
    from index.search.stores import FaissFlatStore

    if gpu_available():
        pytest.skip("this host has a GPU faiss")
    with pytest.raises(StoreError, match="device 'cuda' requested but faiss has no GPU"):
        FaissFlatStore(4, device="cuda")
    assert FaissFlatStore(4, device="auto").device == "auto"  # auto falls back to the CPU


def test_match_bundle_of_a_pipeline_without_encoders(
    synth: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 29: a model whose fusion uses no encoder builds a bundle without encoders/;
    `match --bundle` on it works (and equals `match --model`), and a flipped byte in any of
    its files is refused with one line naming the file, exit 2."""
    model = tmp_path / "tfidf_phash"
    shutil.copytree(model_dir, model)
    cfg = FusionConfig(thresholds={"tfidf": 0.6, "phash": 0.85})
    (model / "fusion.json").write_text(cfg.model_dump_json())
    listings, b = str(synth / "listings.csv"), tmp_path / "bundle"
    assert main(["build-index", listings, "--model", str(model), "--out", str(b), "-q"]) == 0
    assert not (b / "encoders").exists()
    s1, s2 = tmp_path / "s1.csv", tmp_path / "s2.csv"
    assert main(["match", listings, "--bundle", str(b), "-o", str(s1), "-q"]) == 0
    assert main(["match", listings, "--model", str(model), "-o", str(s2), "-q"]) == 0
    assert read_sub(s1) == read_sub(s2) and len(read_sub(s1)) > 0
    for name in ("listings.csv", "tfidf.npz", "fusion.json"):
        bad = tmp_path / f"bad_{name}"
        shutil.copytree(b, bad)
        data = bytearray((bad / name).read_bytes())
        data[len(data) // 2] ^= 1
        (bad / name).write_bytes(bytes(data))
        capsys.readouterr()
        for argv in (
            ["match", listings, "--bundle", str(bad), "-o", str(s1), "-q"],
            ["serve", "--bundle", str(bad), "--port", "1"],  # refused before it listens
        ):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"checksum mismatch for {name}" in err[0], err
