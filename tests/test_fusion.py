import numpy as np
import pytest

from index.matching.fusion import FusionConfig, fuse, phash_similarity, to_lists


def nb(
    rows: dict[int, list[tuple[int, float]]], n: int, k: int = 51
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours from {row: [(id, sim), ...]} (sorted by sim here)."""
    D = np.full((n, k), -np.inf, np.float32)
    I = np.full((n, k), -1, np.int64)
    for r, lst in rows.items():
        lst = sorted(lst, key=lambda t: -t[1])
        for j, (i, s) in enumerate(lst):
            I[r, j], D[r, j] = i, s
    return D, I


def sets(I: np.ndarray) -> list[set[int]]:
    return [set(int(j) for j in row if j >= 0) for row in I]


def test_union_of_signals_and_thresholds() -> None:
    n = 4
    text = nb({0: [(0, 1), (1, 0.9), (2, 0.5)], 1: [(1, 1), (0, 0.9)], 2: [(2, 1)], 3: [(3, 1)]}, n)
    img = nb({0: [(0, 1), (3, 0.95)], 3: [(3, 1), (0, 0.95)], 2: [(2, 1), (0, 0.6)]}, n)
    cfg = FusionConfig(thresholds={"text": 0.8, "image": 0.9}, min2=False)
    I, S = fuse({"text": text, "image": img}, cfg, n)
    assert sets(I) == [{0, 1, 3}, {0, 1}, {2}, {0, 3}]
    # each row's own id comes first, then by score
    assert I[0, 0] == 0 and I[0, 1] == 3 and S[0, 1] == pytest.approx(0.95)
    # a signal without a threshold is not used
    I2, _ = fuse(
        {"text": text, "image": img}, FusionConfig(thresholds={"text": 0.8}, min2=False), n
    )
    assert sets(I2)[0] == {0, 1}


def test_self_always_included_even_without_neighbours() -> None:
    n = 3
    empty = (np.full((n, 51), -np.inf, np.float32), np.full((n, 51), -1, np.int64))
    I, _ = fuse({"tfidf": empty}, FusionConfig(thresholds={"tfidf": 0.5}), n)
    assert sets(I) == [{0}, {1}, {2}]
    assert (I[:, 0] == np.arange(n)).all()


def test_duplicates_across_signals_counted_once() -> None:
    n = 2
    a = nb({0: [(0, 1), (1, 0.9)], 1: [(1, 1), (0, 0.9)]}, n)
    I, _ = fuse({"text": a, "tfidf": a}, FusionConfig(thresholds={"text": 0.5, "tfidf": 0.5}), n)
    assert (I >= 0).sum(1).tolist() == [2, 2]


def test_min2_takes_nearest_unless_below_floor() -> None:
    n = 3
    t = nb({0: [(0, 1), (1, 0.6)], 1: [(1, 1), (0, 0.6)], 2: [(2, 1), (0, 0.2)]}, n)
    cfg = FusionConfig(thresholds={"tfidf": 0.8}, min2=True, min2_signal="tfidf", min2_floor=0.5)
    I, _ = fuse({"tfidf": t}, cfg, n)
    assert sets(I) == [{0, 1}, {0, 1}, {2}]  # row 2's nearest (0.2) is under the floor
    I, _ = fuse({"tfidf": t}, cfg.with_(min2=False), n)
    assert sets(I) == [{0}, {1}, {2}]
    # a row that already has a match gets nothing more from min2
    t2 = nb({0: [(0, 1), (1, 0.9), (2, 0.7)], 1: [(1, 1)], 2: [(2, 1)]}, n)
    I, _ = fuse({"tfidf": t2}, cfg, n)
    assert sets(I)[0] == {0, 1}


def test_min2_skips_itself_when_not_first() -> None:
    # a duplicate listing can rank before the row itself in its own neighbour list
    n = 2
    t = nb({0: [(1, 0.95), (0, 0.95)]}, n)
    cfg = FusionConfig(thresholds={"tfidf": 1.0}, min2_signal="tfidf", min2_floor=0.5)
    I, _ = fuse({"tfidf": t}, cfg, n)
    assert sets(I)[0] == {0, 1}


def test_cap_of_50_keeps_self_and_best() -> None:
    n = 60
    D = np.tile(np.linspace(1.0, 0.9, 51, dtype=np.float32), (n, 1))
    I = np.array([[(r + j) % n for j in range(51)] for r in range(n)], np.int64)
    I_, _ = fuse({"text": (D, I)}, FusionConfig(thresholds={"text": 0.5}), n)
    assert I_.shape == (n, 50)
    assert ((I_ >= 0).sum(1) == 50).all()
    assert (I_[:, 0] == np.arange(n)).all()
    # the dropped one is the farthest neighbour
    assert all(((r + 50) % n) not in set(I_[r].tolist()) for r in range(n))
    assert len(to_lists(I_, [str(i) for i in range(n)])[0]) == 50


def test_phash_similarity_threshold() -> None:
    assert phash_similarity(0) == 1.0
    assert phash_similarity(8) == pytest.approx(0.875)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        FusionConfig(thresholds={"tfidf": 2.0})
    with pytest.raises(ValueError):
        FusionConfig(thresholds={"nope": 0.5})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        FusionConfig(max_matches=51)
    c = FusionConfig()
    assert FusionConfig.model_validate_json(c.model_dump_json()) == c
