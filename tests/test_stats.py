"""fastcifar.study.stats: the scipy-based t quantile and Welch interval against the hand-written code they replaced,
the paired interval, and "pretraining is worth k x the labelled images" with its seed bootstrap."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pytest
from scipy import stats as sps

from fastcifar.study import stats
from fastcifar.study.stats import GapCI, mean_std

# ------------------------------------------------------------------------------------------------ reference oracle
# The module's pre-scipy code, moved here verbatim (git history: fastcifar/study/stats.py before the scipy rewrite):
# regularized incomplete beta by Numerical Recipes' continued fraction (modified Lentz), t CDF through it, t quantile
# by bisection, Welch's interval on top. It is independent of scipy, so agreement to ~1e-8 checks the rewrite.

_FPMIN = 1e-300  # keeps Lentz's recurrences away from division by zero


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    def guard(v: float) -> float:
        return v if abs(v) >= _FPMIN else _FPMIN

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 500):
        even = m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m))
        d = 1.0 / guard(1.0 + even * d)
        c = guard(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))
        d = 1.0 / guard(1.0 + odd * d)
        c = guard(1.0 + odd / c)
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast only for x < (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 - I_1-x(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` (> 0, fractional allowed) degrees of freedom."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def welch_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> GapCI | None:
    """Confidence interval of mean(a) - mean(b) by Welch's t (unequal variances); None if either n < 2."""
    if len(a) < 2 or len(b) < 2:
        return None
    (mean_a, sd_a), (mean_b, sd_b) = mean_std(a), mean_std(b)
    va, vb = sd_a ** 2 / len(a), sd_b ** 2 / len(b)
    gap, se = mean_a - mean_b, math.sqrt(va + vb)
    if se == 0.0:  # identical results within each arm: no spread to put a t interval on
        return GapCI(gap=gap, low=gap, high=gap, df=None, se=0.0, level=level)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(0.5 + level / 2.0, df) * se
    return GapCI(gap=gap, low=gap - half, high=gap + half, df=df, se=se, level=level)




# ------------------------------------------------------------------------------------------------- t and Welch

P_GRID = [0.001, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.6, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999]
DF_GRID = [0.5, 0.75, 1, 1.5, 2, 2.7, 3.7, 5, 7.3, 10, 17.5, 30, 50.5, 120, 200]  # Welch's df are fractional


@pytest.mark.parametrize("df", DF_GRID)
def test_t_quantile_agrees_with_the_bisection_oracle(df):
    for p in P_GRID:
        # abs for p = 0.5, where the oracle's bisection stops a hair off the exact 0
        assert stats.t_quantile(p, df) == pytest.approx(t_quantile(p, df), rel=1e-8, abs=1e-9), (p, df)


@pytest.mark.parametrize("p, df", [(0.0, 3), (1.0, 3), (-0.1, 3), (1.5, 3), (0.5, 0), (0.5, -1), (0.5, math.nan),
                                   (math.nan, 3)])
def test_t_quantile_refuses_bad_p_or_df(p, df):
    with pytest.raises(ValueError, match="t_quantile needs"):
        stats.t_quantile(p, df)


def test_t_quantile_returns_a_python_float():
    assert type(stats.t_quantile(0.975, 4.5)) is float  # results.json is written by json, which refuses numpy scalars


def _samples():
    rng = np.random.default_rng(1234)
    cases = [([1, 2, 3], [4, 5, 6]), ([94.1, 93.8, 94.4, 94.0], [93.0, 94.6]), ([0.9, 0.9], [0.8, 0.8]),
             ([0.9, 0.9], [0.8, 0.81]), ([94.0], [93.0, 93.5])]
    for n_a, n_b, sd_a, sd_b in [(2, 2, 0.5, 0.5), (3, 5, 0.1, 1.0), (5, 3, 2.0, 0.3), (10, 10, 1.0, 1.0),
                                 (2, 30, 0.01, 3.0), (40, 7, 1.5, 0.2)]:
        cases.append((list(rng.normal(93.0, sd_a, n_a)), list(rng.normal(92.0, sd_b, n_b))))
    return cases


@pytest.mark.parametrize("a, b", _samples())
@pytest.mark.parametrize("level", [0.8, 0.95, 0.99])
def test_welch_ci_agrees_with_the_oracle(a, b, level):
    new, old = stats.welch_ci(a, b, level), welch_ci(a, b, level)
    if old is None:
        assert new is None
        return
    assert isinstance(new, GapCI) and new.level == level
    if old.df is None:
        assert new.df is None and new.se == 0.0 and new.low == new.high == new.gap == pytest.approx(old.gap)
        return
    for field in ("gap", "low", "high", "df", "se"):
        assert getattr(new, field) == pytest.approx(getattr(old, field), rel=1e-8, abs=1e-10), field


def test_welch_ci_matches_scipys_own_welch_test():
    a, b = [94.1, 93.8, 94.4, 94.0], [93.0, 94.6, 93.3]
    ci, res = stats.welch_ci(a, b), sps.ttest_ind(a, b, equal_var=False)
    assert ci.df == pytest.approx(float(res.df), rel=1e-10)
    if hasattr(res, "confidence_interval"):  # scipy >= 1.11
        ref = res.confidence_interval(0.95)
        assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_zero_spread_and_one_seed_keep_their_meaning():
    flat = stats.welch_ci([0.9, 0.9], [0.8, 0.8])
    assert (flat.low, flat.high, flat.df, flat.se) == (pytest.approx(0.1), pytest.approx(0.1), None, 0.0)
    assert flat.to_dict() == {"gap": flat.gap, "low": flat.low, "high": flat.high, "df": None, "se": 0.0,
                              "level": 0.95}
    assert stats.welch_ci([94.0], [93.0, 93.5]) is None and stats.verdict(None) == "no CI"
    assert stats.verdict(flat) == "pretrained ahead" and stats.verdict(flat, "lower") == "random ahead"
    assert mean_std([]) == (None, None) and mean_std([2.0]) == (2.0, None)


# ------------------------------------------------------------------------------------------------------- paired


def test_paired_ci_by_hand():
    a, b = [1.0, 2.0, 3.5], [0.0, 1.2, 2.0]  # differences 1.0, 0.8, 1.5: mean 1.1, sd sqrt(0.13), df 2
    ci = stats.paired_ci(a, b)
    se = math.sqrt(0.13) / math.sqrt(3)
    assert ci.gap == pytest.approx(1.1) and ci.df == 2 and ci.se == pytest.approx(se) and ci.level == 0.95
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * se  # t_{0.975} at df 2 in closed form: (2p - 1) / sqrt(2p(1 - p))
    assert (ci.low, ci.high) == pytest.approx((1.1 - half, 1.1 + half), rel=1e-12)
    res = sps.ttest_rel(a, b)
    if hasattr(res, "confidence_interval"):
        ref = res.confidence_interval(0.9)
        ci90 = stats.paired_ci(a, b, level=0.9)
        assert (ci90.low, ci90.high) == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_paired_ci_edges():
    assert stats.paired_ci([0.9], [0.8]) is None and stats.paired_ci([], []) is None
    with pytest.raises(ValueError, match="one b per a"):
        stats.paired_ci([0.9, 0.91], [0.8])
    flat = stats.paired_ci([0.9, 0.95, 0.97], [0.8, 0.85, 0.87])  # every pair 0.1 apart: no spread in the differences
    assert (flat.low, flat.high, flat.df, flat.se) == (pytest.approx(0.1), pytest.approx(0.1), None, 0.0)
    assert flat.low == flat.high == flat.gap


def test_paired_is_much_narrower_than_welch_when_the_seed_moves_both_arms():
    # Each seed's data order shifts both arms alike (spread ~1 point), the arms differ by ~0.3 with little noise:
    # Welch sees the seed-to-seed spread and calls it noise, the paired interval cancels it.
    rng = np.random.default_rng(7)
    seed_luck = rng.normal(0.0, 1.0, 5)
    a = list(90.3 + seed_luck + rng.normal(0.0, 0.05, 5))
    b = list(90.0 + seed_luck + rng.normal(0.0, 0.05, 5))
    welch, paired = stats.welch_ci(a, b), stats.paired_ci(a, b)
    assert paired.gap == pytest.approx(welch.gap)
    assert (paired.high - paired.low) < 0.2 * (welch.high - welch.low)
    assert stats.verdict(welch) == "within noise" and stats.verdict(paired) == "pretrained ahead"


# ----------------------------------------------------------------------------------------------- worth k x


def test_worth_multiple_interpolates_in_log_size():
    out = stats.worth_multiple(100, 0.5, [100, 1000, 10000], [0.2, 0.4, 0.6])
    assert out["relation"] == "=" and out["images"] == pytest.approx(10 ** 3.5, rel=1e-12)
    assert out["multiple"] == pytest.approx(10 ** 1.5, rel=1e-12)  # 31.62...
    quarter = stats.worth_multiple(200, 0.25, [100, 1000, 10000], [0.2, 0.4, 0.6])  # 1/4 of the way in log
    assert quarter["images"] == pytest.approx(10 ** 2.25, rel=1e-12) and quarter["multiple"] == pytest.approx(
        10 ** 2.25 / 200, rel=1e-12)


def test_a_measured_point_equal_to_the_target_is_the_crossing():
    out = stats.worth_multiple(100, 0.4, [100, 1000, 10000], [0.2, 0.4, 0.6])
    assert out == {"multiple": 10.0, "images": 1000.0, "relation": "="}
    last = stats.worth_multiple(100, 0.6, [100, 1000, 10000], [0.2, 0.4, 0.6])
    assert last == {"multiple": 100.0, "images": 10000.0, "relation": "="}  # reached, exactly at the last size


def test_never_reaching_is_more_than_the_range_and_is_not_extrapolated():
    out = stats.worth_multiple(100, 0.65, [100, 1000, 10000], [0.2, 0.4, 0.6])
    assert out == {"multiple": 100.0, "images": 10000.0, "relation": ">"}


def test_already_there_at_the_smallest_size_is_at_most():
    assert stats.worth_multiple(50, 0.15, [100, 1000], [0.2, 0.4]) == {"multiple": 2.0, "images": 100.0,
                                                                       "relation": "<="}
    assert stats.worth_multiple(50, 0.2, [100, 1000], [0.2, 0.4])["relation"] == "<="  # equal at sizes[0] too


def test_a_non_monotone_curve_gives_its_first_crossing():
    # up past the target between 100 and 1000, down below it at 10000, up again at 100000: the first crossing counts
    out = stats.worth_multiple(10, 0.5, [100, 1000, 10000, 100000], [0.2, 0.8, 0.3, 0.9])
    assert out["relation"] == "=" and out["images"] == pytest.approx(10 ** 2.5, rel=1e-12)
    # a dip before the crossing is scanned through, not taken as the end of the curve
    dip = stats.worth_multiple(10, 0.5, [100, 1000, 10000], [0.3, 0.2, 0.7])
    assert dip["images"] == pytest.approx(10 ** (3 + 0.6), rel=1e-12)


@pytest.mark.parametrize("args, match", [
    ((0, 0.5, [100, 1000], [0.2, 0.4]), "n_target"),
    ((100, 0.5, [100, 1000], [0.2]), "one accuracy per size"),
    ((100, 0.5, [], []), "one accuracy per size"),
    ((100, 0.5, [1000, 100], [0.2, 0.4]), "ascending"),
    ((100, 0.5, [100, 100], [0.2, 0.4]), "ascending"),
    ((100, 0.5, [100, 1000], [0.2, math.nan]), "finite"),
])
def test_worth_multiple_refuses_bad_curves(args, match):
    with pytest.raises(ValueError, match=match):
        stats.worth_multiple(*args)


SIZES = [100, 1000, 10000]


def test_interval_is_deterministic_contains_the_point_and_reports_its_settings():
    target = [0.48, 0.50, 0.52]
    curve = [[0.18, 0.20, 0.22], [0.38, 0.40, 0.42], [0.58, 0.60, 0.62]]
    out = stats.worth_multiple_interval(100, target, curve, SIZES, n_resamples=500, seed=3)
    assert out == stats.worth_multiple_interval(100, target, curve, SIZES, n_resamples=500, seed=3)
    assert out["multiple"] == pytest.approx(10 ** 1.5) and out["relation"] == "="
    assert out["low_relation"] == out["high_relation"] == "="
    assert out["low"] < out["multiple"] < out["high"]
    assert 10 <= out["low"] and out["high"] <= 100  # the target lies between the middle and last sizes' seed ranges
    assert {k: out[k] for k in ("level", "n_resamples", "method", "seed")} == {
        "level": 0.95, "n_resamples": 500, "method": "percentile", "seed": 3}
    other = stats.worth_multiple_interval(100, target, curve, SIZES, n_resamples=500, seed=4)
    assert (other["low"], other["high"]) != (out["low"], out["high"])  # the seed drives the resampling
    narrow = stats.worth_multiple_interval(100, target, curve, SIZES, level=0.5, n_resamples=500, seed=3)
    assert out["low"] <= narrow["low"] <= narrow["high"] <= out["high"]


def test_interval_upper_end_is_unbounded_when_resamples_never_reach():
    # the largest size's seeds straddle the target: resamples whose mean there stays below it never reach
    target = [0.55, 0.56, 0.57]
    curve = [[0.18, 0.20, 0.22], [0.38, 0.40, 0.42], [0.50, 0.60, 0.64]]
    out = stats.worth_multiple_interval(100, target, curve, SIZES, n_resamples=1000, seed=0)
    assert out["relation"] == "=" and 10 < out["multiple"] < 100
    assert (out["high"], out["high_relation"]) == (100.0, ">")  # "more than 100x"
    assert out["low_relation"] == "=" and 10 < out["low"] < out["multiple"]


def test_interval_lower_end_is_at_most_when_resamples_start_above():
    target = [0.19, 0.20, 0.21]
    curve = [[0.15, 0.20, 0.24], [0.38, 0.40, 0.42], [0.58, 0.60, 0.62]]
    out = stats.worth_multiple_interval(50, target, curve, SIZES, n_resamples=1000, seed=0)
    assert (out["low"], out["low_relation"]) == (2.0, "<=")  # "at most 2x"
    assert out["high_relation"] == "=" and out["high"] > 2.0


def test_one_seed_in_a_cell_gives_no_interval():
    out = stats.worth_multiple_interval(100, [0.5], [[0.2, 0.21], [0.4, 0.41], [0.6, 0.61]], SIZES)
    assert out["multiple"] == pytest.approx(stats.worth_multiple(100, 0.5, SIZES, [0.205, 0.405, 0.605])["multiple"])
    assert (out["low"], out["high"], out["low_relation"], out["high_relation"]) == (None, None, None, None)
    assert out["n_resamples"] == 0 and out["method"] is None
    one_everywhere = stats.worth_multiple_interval(100, [0.5], [[0.2], [0.4], [0.6]], SIZES)
    assert one_everywhere["multiple"] == pytest.approx(10 ** 1.5) and one_everywhere["low"] is None


def test_interval_refuses_mismatched_seeds():
    with pytest.raises(ValueError, match="one list of seeds per size"):
        stats.worth_multiple_interval(100, [0.5, 0.5], [[0.2, 0.2], [0.4, 0.4]], SIZES)
    with pytest.raises(ValueError, match="level"):
        stats.worth_multiple_interval(100, [0.5, 0.5], [[0.2, 0.2]] * 3, SIZES, level=95)


def test_cells_may_hold_different_numbers_of_seeds():
    out = stats.worth_multiple_interval(100, [0.49, 0.51], [[0.2, 0.21, 0.19, 0.2], [0.4, 0.41, 0.39], [0.6, 0.61]],
                                        SIZES, n_resamples=300)
    assert out["relation"] == "=" and out["low"] <= out["multiple"] <= out["high"] and out["n_resamples"] == 300


def test_percentiles_over_inf_need_order_statistics():
    # Why the module picks order statistics of the bootstrap distribution rather than np.percentile: linear
    # interpolation next to an infinite resample is nan.
    dist = np.array([-np.inf, 0.5, 1.0, np.inf, np.inf])
    with np.errstate(invalid="ignore"):
        assert math.isnan(np.percentile(dist, 90))
    assert np.percentile(dist, 90, method="higher") == np.inf
