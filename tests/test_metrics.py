"""The paper's metrics against hand-computed values and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import pytest

from kopt import metrics as M
from kopt.records import EvalResult, Status


def ok(speedup: float) -> EvalResult:
    return EvalResult(status=Status.CORRECT, runtime_ms=1.0 / speedup, speedup=speedup)


BAD = EvalResult(status=Status.INCORRECT)


def test_fast_1_is_strict_at_exactly_one():
    assert M.is_fast(ok(1.0)) is False
    assert M.is_fast(ok(1.0000001)) is True
    assert M.is_fast(ok(0.5)) is False
    assert M.is_fast(BAD.replace(speedup=3.0)) is False  # fast but wrong is not fast
    assert M.is_fast(None) is False
    assert M.is_fast(EvalResult(status=Status.CORRECT)) is False  # untimed
    assert M.fast_p([ok(1.0), ok(2.0), BAD, ok(0.9)]) == 0.25
    assert M.fast_p([ok(1.0), ok(2.0), BAD, ok(0.9)], p=0.95) == 0.5
    assert M.fast_p([]) is None


def test_sample_fast_1_counts_duplicates_per_sample():
    first = ok(2.0)
    # sample 0 and its duplicate sample 2 share a verdict: 2 of 4 samples are fast
    assert M.sample_fast_1([first, BAD, first, ok(1.0)]) == 0.5


def test_correctness_mean_geomean():
    assert M.correctness_rate([ok(1.0), BAD, None, ok(3.0)]) == 0.5
    assert M.mean([1.0, 2.0, 6.0]) == 3.0
    assert M.geomean([1.0, 4.0, 16.0]) == pytest.approx(4.0)
    assert M.geomean([]) is None and M.mean([]) is None
    assert M.geomean([0.0, 2.0]) is None


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    items = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 9])
def test_pass_at_k_matches_closed_form_and_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            got = M.pass_at_k(n, c, k)
            closed = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert got == pytest.approx(closed, abs=1e-12)
            assert got == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_hand_values_and_errors():
    assert M.pass_at_k(64, 0, 64) == 0.0
    assert M.pass_at_k(64, 1, 1) == pytest.approx(1 / 64)
    assert M.pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert M.pass_at_k(64, 1, 64) == 1.0
    with pytest.raises(ValueError):
        M.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        M.pass_at_k(4, 1, 5)


def test_scaling_curve_ks():
    assert M.curve_ks(64) == [1, 2, 4, 8, 16, 32, 64]
    assert M.curve_ks(6) == [1, 2, 4, 6]
    assert M.curve_ks(1) == [1]
    curve = M.scaling_curve(4, 2)
    assert curve == [(1, pytest.approx(0.5)), (2, pytest.approx(5 / 6)), (4, 1.0)]
    assert M.mean_curve([[(1, 0.2), (2, 0.4)], [(1, 0.4), (2, 0.8)]]) == [(1, pytest.approx(0.3)), (2, pytest.approx(0.6))]
    with pytest.raises(ValueError):
        M.mean_curve([[(1, 0.2)], [(1, 0.4), (2, 0.8)]])


CURVE = [(1, 0.2), (2, 0.4), (4, 0.6), (8, 0.6), (16, 0.9)]


def test_equivalent_k_log2_interpolation():
    assert M.equivalent_k(0.5, CURVE).k == pytest.approx(2 ** 1.5)  # halfway between k=2 and 4 in log2
    assert M.equivalent_k(0.75, CURVE).k == pytest.approx(2 ** 3.5)
    assert M.equivalent_k(0.6, CURVE).k == pytest.approx(4.0)  # flat stretch: smallest k reaching it
    assert M.equivalent_k(0.2, CURVE) == M.EquivalentK(1.0, "=")
    assert M.equivalent_k(0.9, CURVE) == M.EquivalentK(16.0, "=")
    below = M.equivalent_k(0.1, CURVE)
    assert below == M.EquivalentK(1.0, "<") and str(below) == "<1"
    above = M.equivalent_k(0.95, CURVE)
    assert above == M.EquivalentK(16.0, ">") and str(above) == ">16"
    assert M.equivalent_k(0.5, []) is None


def test_average_ranks_with_ties():
    assert M.average_ranks([5, 6, 7, 8, 7]) == [1, 2, 3.5, 5, 3.5]
    assert M.average_ranks([3, 3, 3]) == [2, 2, 2]


def test_spearman_hand_worked():
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6*2/60 = 0.8
    assert M.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks y = [1, 2, 3.5, 5, 3.5]; sum dxdy = 8, sxx = 10, syy = 9.5 -> 8 / sqrt(95)
    assert M.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert M.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert M.spearman([1, 2, 3], [7, 7, 7]) is None
    assert M.spearman([1], [2]) is None


def test_partial_spearman_hand_worked():
    x, y, z = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [1, 2, 3, 5, 4]
    # r_xy = 1 - 6*4/120 = 0.8; r_xz = 1 - 6*2/120 = 0.9; r_yz = 1 - 6*8/120 = 0.6
    expected = (0.8 - 0.9 * 0.6) / math.sqrt((1 - 0.81) * (1 - 0.36))
    assert M.partial_spearman(x, y, z) == pytest.approx(expected)
    assert expected == pytest.approx(0.7456, abs=1e-4)
    # controlling for a constant changes nothing
    assert M.partial_spearman(x, y, [7] * 5) == pytest.approx(0.8)
    # x is a monotone function of z: nothing is left
    assert M.partial_spearman(x, y, [10, 20, 30, 40, 50]) is None


def test_surprisal_quartiles():
    surprisal = [0.8, 0.1, 0.5, 0.3, 0.7, 0.2, 0.6, 0.4, 0.9]
    speedup = [3.0, 0.5, 1.0, 0.9, 2.0, 1.5, 1.2, 1.1, 4.0]
    tokens = [800, 100, 500, 300, 700, 200, 600, None, 900]
    qs = M.surprisal_quartiles(surprisal, speedup, tokens)
    # sorted by surprisal: 0.1 0.2 0.3 | 0.4 0.5 | 0.6 0.7 | 0.8 0.9  (9 = 3 + 2 + 2 + 2)
    assert [q.n for q in qs] == [3, 2, 2, 2]
    q1, q2, q3, q4 = qs
    assert (q1.surprisal_min, q1.surprisal_max) == (0.1, 0.3)
    assert q1.fast_1 == pytest.approx(1 / 3)  # 0.5, 1.5, 0.9
    assert q1.mean_speedup == pytest.approx((0.5 + 1.5 + 0.9) / 3)
    assert q1.mean_tokens == pytest.approx(200)
    assert q2.fast_1 == 0.5 and q2.mean_tokens == 500  # 1.1 is fast, 1.0 is not; one token count missing
    assert q3.fast_1 == 1.0 and q3.mean_speedup == pytest.approx(1.6)
    assert q4.fast_1 == 1.0 and q4.mean_tokens == 850
    assert [q.quartile for q in M.surprisal_quartiles([1.0, 2.0], [1.0, 2.0], [1, 2])] == [1, 2]


def test_aggregate_over_tasks_and_seeds():
    agg = M.aggregate({("a", 1): 1.0, ("b", 1): 0.0, ("a", 2): 1.0, ("b", 2): 1.0, ("c", 2): None})
    assert agg.mean == 0.75 and agg.n == 4
    assert agg.per_seed == ((1, 0.5), (2, 1.0))
    assert agg.seed_std == pytest.approx(0.25)
    assert (agg.seed_min, agg.seed_max) == (0.5, 1.0)
    one = M.aggregate({("a", 1): 2.0})
    assert one.seed_std is None and one.mean == 2.0
    assert M.aggregate({}).mean is None
