"""Small-sample statistics for the compare report: mean and std over seeds, Welch's t confidence interval.

scipy is not a dependency, so Student's t quantile is computed here: the CDF through the regularized incomplete
beta function (Numerical Recipes' continued fraction, modified Lentz), inverted by bisection. It is exact to
~1e-10 for any real df > 0, which Welch's fractional degrees of freedom need (an integer-df table would not do).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

_FPMIN = 1e-300  # keeps Lentz's recurrences away from division by zero


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample std with n-1) - std is None for fewer than 2 values (a spread needs two points)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


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


@dataclass(frozen=True)
class GapCI:
    """mean(a) - mean(b) with its confidence interval (same units as the inputs)."""

    gap: float
    low: float
    high: float
    df: float | None  # Welch-Satterthwaite degrees of freedom; None when both samples have zero spread
    se: float
    level: float

    def to_dict(self) -> dict:
        return asdict(self)


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


def verdict(ci: GapCI | None, better: str = "higher") -> str:
    """'no CI' (one seed), 'pretrained ahead', 'random ahead' or 'within noise' (the interval contains 0) for a gap
    pretrained - random of a metric where `better` ('higher' or 'lower': loss, NLL, calibration error) wins."""
    if ci is None:
        return "no CI"
    low, high = (ci.low, ci.high) if better == "higher" else (-ci.high, -ci.low)
    if low > 0:
        return "pretrained ahead"
    if high < 0:
        return "random ahead"
    return "within noise"
