import numpy as np
import pytest

from index.tuning.metrics import f1_report, group_sizes, mean_f1, row_scores


def test_row_f1_hand_computed() -> None:
    # groups: a = {0, 1, 2}, b = {3}
    labels = np.array([0, 0, 0, 1])
    I = np.array(
        [
            [0, 1, -1],  # tp 2, pred 2, true 3 -> 2*2/(2+3) = 0.8
            [1, 3, -1],  # tp 1, pred 2, true 3 -> 2/5 = 0.4
            [2, 0, 1],  # perfect -> 1.0
            [3, 0, -1],  # tp 1, pred 2, true 1 -> 2/3
        ]
    )
    f1, p, r = row_scores(I, labels)
    np.testing.assert_allclose(f1, [0.8, 0.4, 1.0, 2 / 3])
    np.testing.assert_allclose(p, [1.0, 0.5, 1.0, 0.5])
    np.testing.assert_allclose(r, [2 / 3, 1 / 3, 1.0, 1.0])
    assert mean_f1(I, labels) == pytest.approx((0.8 + 0.4 + 1.0 + 2 / 3) / 4)


def test_report_by_group_size() -> None:
    labels = np.array([0, 0, 1])
    I = np.array([[0, 1], [1, -1], [2, -1]])
    rep = f1_report(I, labels)
    assert rep["by_group_size"]["2"]["rows"] == 2
    assert rep["by_group_size"]["2"]["f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert rep["by_group_size"]["1"]["f1"] == 1.0
    assert rep["mean_matches"] == pytest.approx(4 / 3)
    np.testing.assert_array_equal(group_sizes(labels), [2, 2, 1])
