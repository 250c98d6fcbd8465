"""avg@k and the unbiased pass@k estimator, checked against hand-computed values."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archer.evaluation.metrics import aggregate, avg_at_k, pass_at_k


def test_pass_at_k_hand_computed():
    # n=4 samples, c=1 correct, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n=8, c=2, k=4: 1 - C(6,4)/C(8,4) = 1 - 15/70
    assert pass_at_k(8, 2, 4) == pytest.approx(55 / 70)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 3, 1) == pytest.approx(0.75)  # pass@1 = c / n


def test_pass_at_k_is_not_first_k():
    # the "any of the first k" shortcut would give 0 for [0, 0, 1, 1] at k=2; the estimator counts all pairs
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)


@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_subset_probability(nck):
    n, c, k = nck
    # probability that a uniformly drawn k-subset of the n samples holds at least one correct one
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)
    if k > 1:
        assert pass_at_k(n, c, k) >= pass_at_k(n, c, k - 1)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_aggregate_hand_computed():
    scores = [[1, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]]
    out = aggregate(scores, pass_ks=[1, 2])
    # avg@4: (1/4 + 3/4 + 0) / 3 = 1/3
    assert out["avg@4"] == pytest.approx(100 / 3)
    assert out["pass@1"] == pytest.approx(100 / 3)
    # pass@2: (1 - C(3,2)/C(4,2) = 1/2, 1 - 0 = 1, 0) / 3 = 1/2
    assert out["pass@2"] == pytest.approx(50.0)
    # pass@4: (1, 1, 0) / 3
    assert out["pass@4"] == pytest.approx(200 / 3)
    assert set(out) == {"avg@4", "pass@1", "pass@2", "pass@4"}


def test_aggregate_partial_scores_count_in_avg_not_in_pass():
    out = aggregate([[0.5, 1.0]])
    assert out["avg@2"] == pytest.approx(75.0)
    assert out["pass@2"] == pytest.approx(100.0)
    assert aggregate([[0.5, 0.5]])["pass@2"] == 0.0
    assert avg_at_k([0.5, 0.5]) == 0.5


def test_aggregate_needs_equal_sample_counts():
    with pytest.raises(ValueError):
        aggregate([[1, 0], [1]])
    with pytest.raises(ValueError):
        aggregate([])
