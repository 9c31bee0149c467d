"""`pricematch match --engine ray` (index/scale/ray_engine.py): the Ray Data pipeline gives the
single-process submission, and 4 catalogue shards give what 1 shard gives.

Ray's processes bind every interface, so the Ray part runs in a subprocess inside a
loopback-only network namespace (`unshare -rn`); the comparisons run here. Scores must be
equal exactly; ids are compared as sets among equal scores (the order of equal scores, and
which of them a cut keeps, is not fixed by either search).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="--engine ray needs Ray (pip install -e '.[scale]')")

from index.cli.commands import resolve_model
from index.cli.parser import build_parser, main
from index.data.listings import read_catalogue
from index.features.embed import embed
from index.features.tfidf import TfidfConfig
from index.matching.fusion import Neighbours, to_lists
from index.matching.selfmatch import self_neighbours
from index.matching.stages import apply_stages, fuse_stages
from tests.test_cli import read_sub

ROOT = Path(__file__).resolve().parents[1]


def _netns_ok() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    r = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30
    )
    return r.returncode == 0


def run_in_netns(args: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    """`python ARGS` from the repo root in a loopback-only network namespace (Ray's
    processes listen on every interface); skips the test where that is not available."""
    if not _netns_ok():
        pytest.skip("needs `unshare -rn` (a loopback-only network namespace) to run Ray")
    cmd = " ".join(["ip link set lo up && exec", sys.executable, *args])
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["unshare", "-rn", "sh", "-c", cmd],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def ray_out(synth: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Submissions and neighbours of the Ray engine with 1 and 4 shards."""
    out = tmp_path_factory.mktemp("ray")
    args = [str(out), str(synth / "listings.csv"), str(synth / "images"), str(model_dir)]
    r = run_in_netns(["-m", "tests.ray_run", *args], timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def _args(synth: Path, model_dir: Path, out: Path) -> list[str]:
    csv_, images = str(synth / "listings.csv"), str(synth / "images")
    return ["match", csv_, "--images", images, "--model", str(model_dir), "-q", "-o", str(out)]


def _load_nb(path: Path) -> dict[str, Neighbours]:
    z = np.load(path)
    names = [k[2:] for k in z.files if k.startswith("D_")]
    return {s: (z[f"D_{s}"], z[f"I_{s}"]) for s in names}


def assert_same_up_to_ties(
    Ia: np.ndarray, Sa: np.ndarray, Ib: np.ndarray, Sb: np.ndarray, what: str
) -> None:
    """Scores equal exactly, rank by rank; the ids scoring above a row's lowest score equal
    as sets; at the lowest score (where a cut may choose among equal scores) counts equal.
    A row that was not cut (padding left) must hold the same ids."""
    assert Sa.shape == Sb.shape and Ia.shape == Ib.shape, what
    assert np.array_equal(Sa, Sb), f"{what}: scores differ"
    for i in range(Sa.shape[0]):
        ok = Ia[i] >= 0
        assert np.array_equal(ok, Ib[i] >= 0), (what, i)
        if not ok.any():
            continue
        low = Sa[i][ok].min()
        above = ok & (Sa[i] > low)
        assert set(Ia[i][above]) == set(Ib[i][above]), (what, i)
        if not ok.all():  # not cut: every neighbour there
            assert set(Ia[i][ok]) == set(Ib[i][ok]), (what, i)


def _local(synth: Path, model_dir: Path, tmp_path: Path) -> tuple[list[str], dict, object]:
    args = build_parser().parse_args(_args(synth, model_dir, tmp_path / "local.csv"))
    cat = read_catalogue(args.input, images_dir=args.images)
    model = resolve_model(args)
    encoders, config = model.encoders, model.fusion
    feats = embed(cat, encoders, tfidf_config=TfidfConfig(char_source=(3, 5)))
    nb = self_neighbours(feats, device=args.device)
    return cat.title, apply_stages(feats.parts(), nb, config), config


def _check_submissions(
    sub_a: dict[str, list[str]],
    sub_b: dict[str, list[str]],
    fused_a: tuple[np.ndarray, np.ndarray],
    fused_b: tuple[np.ndarray, np.ndarray],
    ids: list[str],
) -> None:
    assert list(sub_a) == list(sub_b) == ids
    assert [sub_a[p] for p in ids] == to_lists(fused_a[0], ids)
    assert [sub_b[p] for p in ids] == to_lists(fused_b[0], ids)
    assert_same_up_to_ties(*fused_a, *fused_b, "fused")


def test_ray_match_equals_single_process(
    ray_out: Path, synth: Path, model_dir: Path, tmp_path: Path
) -> None:
    assert main(_args(synth, model_dir, tmp_path / "local.csv")) == 0
    titles, nb_local, config = _local(synth, model_dir, tmp_path)
    nb_ray = _load_nb(ray_out / "nb1.npz")
    assert set(nb_ray) == set(nb_local) == {"tfidf", "char", "phash", "text", "image"}
    for s in nb_local:
        assert_same_up_to_ties(nb_local[s][1], nb_local[s][0], nb_ray[s][1], nb_ray[s][0], s)
    local, ray1 = read_sub(tmp_path / "local.csv"), read_sub(ray_out / "ray1.csv")
    ids = list(local)
    same = sum(set(local[p]) == set(ray1[p]) for p in ids)
    assert same >= len(ids) - 10  # differences only where a cap cuts equal scores
    _check_submissions(
        local,
        ray1,
        fuse_stages(nb_local, config, titles),  # type: ignore[arg-type]
        fuse_stages(nb_ray, config, titles),  # type: ignore[arg-type]
        ids,
    )


def test_ray_four_shards_equal_one(ray_out: Path, synth: Path, model_dir: Path, tmp_path: Path):
    titles, _, config = _local(synth, model_dir, tmp_path)
    nb1, nb4 = _load_nb(ray_out / "nb1.npz"), _load_nb(ray_out / "nb4.npz")
    assert set(nb1) == set(nb4)
    for s in nb1:
        assert_same_up_to_ties(nb1[s][1], nb1[s][0], nb4[s][1], nb4[s][0], s)
    ray1, ray4 = read_sub(ray_out / "ray1.csv"), read_sub(ray_out / "ray4.csv")
    _check_submissions(
        ray1,
        ray4,
        fuse_stages(nb1, config, titles),  # type: ignore[arg-type]
        fuse_stages(nb4, config, titles),  # type: ignore[arg-type]
        list(ray1),
    )
