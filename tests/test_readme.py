"""Every command block of the README runs (issue 29): each `pricematch ...` line of every
```bash block, with the README's own flags, run in a temporary folder on synthetic data
(train.csv/test.csv with photos, an entity-matching folder), in README order, asserting exit
0 and what the command promises (a Kaggle-format file, a bundle, a fusion.json, a report).

What cannot run here is listed in `SKIPS` with the reason (and the test fails if a README
line matches neither a runner nor a skip): installs, the test command itself, Docker, curl
against a running server, long training, and the real pretrained weights (the fake ONNX
encoders of `tests/fakes.py` stand in for `export-default`'s; the real export is the slow
test in tests/test_export.py). A README edit that breaks a command fails this test.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from index.cli.parser import main
from index.data.listings import read_catalogue
from index.data.synthetic import SyntheticSpec, make_catalogue
from index.store.model import write_fusion
from tests.fakes import make_pair_base, write_tables

README = Path(__file__).resolve().parents[1] / "README.md"

#: (pattern a command line matches, why it is not run here)
SKIPS: list[tuple[str, str]] = [
    (r"^pip ", "installs (CI runs it)"),
    (r"^python -m pytest", "the test command itself"),
    (r"^docker ", "needs Docker (CI lints the Dockerfile and validates the compose file)"),
    (r"^curl ", "needs a running server (tests/test_service.py posts the same bodies)"),
    (r"^PRICEMATCH_\w+=", "a server setting (tests/test_service_milvus.py, test_ray_serve.py)"),
    (r"^pricematch serve ", "a long-running server (tests/test_service_uvicorn.py starts one)"),
    (r"^pricematch train (text|image) ", "long training (tests/test_training.py, slow)"),
    (r"^pricematch compress ", "needs the real exported encoder (tests/test_compress.py)"),
    (r"--engine ray", "Ray (tests/test_ray_engine.py)"),
    (r"models/shopee", "the output of `train text`, skipped above"),
]


def readme_commands(text: str) -> list[str]:
    """Each command line of the ```bash blocks: continuations joined, comments dropped,
    `&&` chains split."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        pending = ""  # a quoted argument over several lines (curl -d '{...}')
        for raw in joined.splitlines():
            line = pending + re.sub(r"(^|\s)#.*$", "", raw).strip()
            try:
                shlex.split(line)
            except ValueError:  # no closing quotation yet
                pending = line + "\n"
                continue
            pending = ""
            out += [c.strip() for c in line.split("&&") if c.strip()]
    return out


def skip_reason(cmd: str) -> str | None:
    return next((why for pat, why in SKIPS if re.search(pat, cmd)), None)


def ids_of(path: str | Path) -> set[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["posting_id"] for r in csv.DictReader(f)}


def check_submission(path: Path, ids: set[str]) -> None:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["posting_id", "matches"], rows[:1]
    got = {r[0]: r[1].split(" ") for r in rows[1:]}
    assert set(got) == ids, path
    assert all(m[0] == p and len(m) <= 50 for p, m in got.items()), path


def _pair_folder(cat_csv: Path, root: Path) -> None:
    """The catalogue as tableA/tableB and labelled train/valid pairs."""
    cat = read_catalogue(cat_csv)
    assert cat.label_group is not None
    half = len(cat) // 2
    write_tables(cat.title, root, half)
    pairs = [
        (a, b, int(cat.label_group[a] == cat.label_group[b]))
        for a in range(half)
        for b in range(half, len(cat))
        if cat.label_group[a] == cat.label_group[b] or (a + b) % 7 == 0
    ]
    for split, part in (("train", pairs[0::2]), ("valid", pairs[1::2])):
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ltable_id", "rtable_id", "label"])
            w.writerows(part)


@pytest.fixture
def workdir(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_catalogue(tmp_path / "syn", SyntheticSpec(products=14, singletons=3, seed=4))
    shutil.copy(tmp_path / "syn" / "listings.csv", tmp_path / "train.csv")
    with open(tmp_path / "syn" / "listings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "test.csv", "w", newline="") as f:
        w = csv.DictWriter(
            f, ["posting_id", "image", "image_phash", "title"], extrasaction="ignore"
        )
        w.writeheader()
        w.writerows(rows)
    for d in ("train_images", "test_images"):
        shutil.copytree(tmp_path / "syn" / "images", tmp_path / d)
    (tmp_path / "out").mkdir()
    _pair_folder(tmp_path / "train.csv", tmp_path / "er_folder")
    # stands in for `train text er_folder/ --out models/er` (skipped: long training)
    shutil.copytree(model_dir, tmp_path / "models" / "er")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_readme_command_runs(
    workdir: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = pytest.importorskip("training.export", reason="the [train] extra")
    commands = readme_commands(README.read_text(encoding="utf-8"))
    cross_base = make_pair_base(workdir / "cross-base")
    ids = ids_of(workdir / "test.csv")
    ran, skipped = [], []
    for cmd in commands:
        why = skip_reason(cmd)
        if why is not None:
            skipped.append((cmd, why))
            continue
        assert cmd.startswith("pricematch "), f"README line neither run nor skipped: {cmd}"
        argv = shlex.split(cmd)[1:]
        argv = [a.replace("../shared/data/shopee_dev.csv", "train.csv") for a in argv]
        if argv[0] == "train" and argv[1] not in ("text", "image", "ranker") and (
                "--cross-base" not in argv):
            argv += ["--cross-base", str(cross_base)]  # a tiny BERT stands in for MiniLM
        if argv[0] == "export-default":  # the fake encoders stand in for the real weights
            out = Path(argv[argv.index("--out") + 1])
            shutil.copytree(model_dir, out, dirs_exist_ok=True)
            write_fusion(out / "fusion.json", export.zero_shot_fusion())  # what it writes
            ran.append(cmd)
            continue
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"{cmd}\n{err[-2000:]}"
        ran.append(cmd)
        if "-o" in argv:
            target = Path(argv[argv.index("-o") + 1])
            source = argv[1]
            if source.endswith(".csv") and "posting_id" in Path(source).read_text()[:100]:
                check_submission(target, ids_of(source))
            else:
                assert target.is_file() and target.stat().st_size > 0
        if argv[0] == "build-index":
            assert (Path(argv[argv.index("--out") + 1]) / "manifest.json").is_file()
        for flag in ("--save-config", "--report"):
            if flag in argv:
                json.loads(Path(argv[argv.index(flag) + 1]).read_text())
    assert ids  # the synthetic test.csv is not empty
    # the blocks the issue names ran: the first run and the Kaggle block, bundle included
    must = [
        "pricematch train sample/listings.csv --images sample/images --base models/default",
        "pricematch match sample-new/listings.csv --images sample-new/images --model models/sample",
        "pricematch train train.csv --images train_images --base models/default",
        "pricematch train er_folder/ --base models/default",
        "pricematch build-index train.csv --images train_images --model models/default",
        "pricematch match test.csv --bundle bundles/train -o submission.csv",
        "pricematch train ranker train.csv --model models/default",
        "pricematch evaluate er_folder/ --model models/er --split valid",
    ]
    for m in must:
        assert any(c.startswith(m) for c in ran), (m, ran)
    print(f"README: {len(ran)} commands ran, {len(skipped)} skipped")
    for cmd, why in skipped:
        print(f"  skipped: {cmd}  ({why})")
