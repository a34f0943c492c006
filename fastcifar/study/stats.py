"""Small-sample statistics for the compare report, on scipy.stats.

This module owns: the mean and std over seeds (`mean_std`), the confidence interval of a gap between two arms -
Welch's t for independent seeds (`welch_ci`), the paired t for arms run on the same seeds (`paired_ci`), both as a
`GapCI` - the report's verdict on such an interval (`verdict`), Student's t quantile (`t_quantile`), and "pretraining
is worth k x the labelled images" (`worth_multiple`, with a seed bootstrap interval in `worth_multiple_interval`).

Every function takes plain sequences of floats and returns plain Python floats, so results.json stays serialisable.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample std with n-1) - std is None for fewer than 2 values (a spread needs two points)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` (> 0, fractional allowed) degrees of freedom."""
    # scipy answers nan for these instead of raising; a nan would travel silently into the report's interval.
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    return float(sps.t.ppf(p, df))


@dataclass(frozen=True)
class GapCI:
    """mean(a) - mean(b) with its confidence interval (same units as the inputs)."""

    gap: float
    low: float
    high: float
    df: float | None  # Welch-Satterthwaite df (welch_ci) or n - 1 (paired_ci); None when there is no spread at all
    se: float
    level: float

    def to_dict(self) -> dict:
        return asdict(self)


def _t_interval(gap: float, se: float, df: float, level: float) -> GapCI:
    if se == 0.0:  # identical results: no spread to put a t interval on, and t would divide by zero
        return GapCI(gap=gap, low=gap, high=gap, df=None, se=0.0, level=level)
    half = t_quantile(0.5 + level / 2.0, df) * se
    return GapCI(gap=gap, low=gap - half, high=gap + half, df=df, se=se, level=level)


def welch_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> GapCI | None:
    """Confidence interval of mean(a) - mean(b) by Welch's t (unequal variances); None if either n < 2."""
    if len(a) < 2 or len(b) < 2:
        return None
    (mean_a, sd_a), (mean_b, sd_b) = mean_std(a), mean_std(b)
    va, vb = sd_a ** 2 / len(a), sd_b ** 2 / len(b)
    se = math.sqrt(va + vb)
    # Written out rather than scipy's ttest_ind: it gives neither se nor a finite answer when both arms are flat.
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else math.nan
    return _t_interval(mean_a - mean_b, se, df, level)


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> GapCI | None:
    """Confidence interval of mean(a - b) over pairs (a[i], b[i]) - the two arms of seed i share data order and
    augmentation, so the seed's luck cancels in the difference - by the paired t with n - 1 df; None if n < 2.

    Raises ValueError when the lengths differ: unequal arms are not pairs, and a silent None would hide the bug."""
    if len(a) != len(b):
        raise ValueError(f"paired_ci needs one b per a, got {len(a)} and {len(b)} values")
    if len(a) < 2:
        return None
    gap, sd = mean_std([x - y for x, y in zip(a, b)])
    return _t_interval(gap, sd / math.sqrt(len(a)), float(len(a) - 1), level)


def verdict(ci: GapCI | None, better: str = "higher", names: tuple[str, str] = ("pretrained", "random")) -> str:
    """'no CI' (one seed), 'pretrained ahead', 'random ahead' or 'within noise' (the interval contains 0) for a gap
    pretrained - random of a metric where `better` ('higher' or 'lower': loss, NLL, calibration error) wins;
    `names` are the two sides of the gap (the study's other comparisons: a - b)."""
    if ci is None:
        return "no CI"
    low, high = (ci.low, ci.high) if better == "higher" else (-ci.high, -ci.low)
    if low > 0:
        return f"{names[0]} ahead"
    if high < 0:
        return f"{names[1]} ahead"
    return "within noise"


# ------------------------------------------------------------------------- pretraining is worth k x the images


def _check_curve(n_target: int, sizes: Sequence[int], accs: Sequence[float]) -> None:
    if not n_target > 0:
        raise ValueError(f"n_target must be > 0, got {n_target}")
    if len(sizes) == 0 or len(sizes) != len(accs):
        raise ValueError(f"need one accuracy per size and at least one size, got {len(sizes)} sizes, {len(accs)} accs")
    if sizes[0] <= 0 or any(s >= t for s, t in zip(sizes, sizes[1:])):
        raise ValueError(f"sizes must be positive and strictly ascending, got {list(sizes)}")


def _crossing(target_acc: float, sizes: Sequence[int], accs: Sequence[float]) -> tuple[float, str]:
    """(images, relation) where the scratch curve first reaches target_acc; see worth_multiple."""
    if not all(math.isfinite(v) for v in (target_acc, *accs)):
        raise ValueError(f"accuracies must be finite, got target {target_acc} and curve {list(accs)}")
    if accs[0] >= target_acc:  # the crossing may lie below the smallest measured size: only an upper bound is known
        return float(sizes[0]), "<="
    for (s0, a0), (s1, a1) in zip(zip(sizes, accs), zip(sizes[1:], accs[1:])):
        if a1 >= target_acc:  # first crossing; a0 < target here, else the previous step (or the check above) returned
            if a1 == target_acc:  # the measured point itself, exactly, not exp(log(s1)) with its rounding
                return float(s1), "="
            frac = (target_acc - a0) / (a1 - a0)
            return math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))), "="
    return float(sizes[-1]), ">"  # never reached: the measured range is all that is known, nothing is extrapolated


def worth_multiple(n_target: int, target_acc: float, sizes: Sequence[int], accs: Sequence[float]) -> dict:
    """How many labelled images the scratch arm needs to match `target_acc` (the pretrained arm's accuracy with
    `n_target` images), as a multiple of `n_target`.

    `sizes` are the training-set sizes (ascending) where the scratch arm was measured, `accs` its mean accuracy at
    each. The scratch curve is interpolated linearly in log(size) between consecutive measured points - accuracy
    grows roughly linearly in log data - and n* is its first crossing of the target scanning up from sizes[0] (a
    measured point equal to the target counts). Nothing is extrapolated beyond the measured range:

    - {"multiple": n*/n_target, "images": n*, "relation": "="} when the curve crosses within the range;
    - {"multiple": sizes[-1]/n_target, "images": sizes[-1], "relation": ">"} when it never reaches the target
      ("worth more than k x");
    - {"multiple": sizes[0]/n_target, "images": sizes[0], "relation": "<="} when it is at or above the target already
      at sizes[0] ("worth at most k x").
    """
    _check_curve(n_target, sizes, accs)
    images, relation = _crossing(float(target_acc), sizes, [float(a) for a in accs])
    return {"multiple": images / n_target, "images": images, "relation": relation}


def _log_multiple(n_target: int, target_acc: float, sizes: Sequence[int], accs: Sequence[float]) -> float:
    """log(multiple) with "never reaches" as +inf and "at most" as -inf: one ordered scale for the bootstrap."""
    images, relation = _crossing(target_acc, sizes, accs)
    return {"=": math.log(images / n_target), ">": math.inf, "<=": -math.inf}[relation]


def _decode(value: float, n_target: int, sizes: Sequence[int]) -> tuple[float, str]:
    if value == math.inf:
        return sizes[-1] / n_target, ">"
    if value == -math.inf:
        return sizes[0] / n_target, "<="
    return math.exp(value), "="


def worth_multiple_interval(n_target: int, target_seeds: Sequence[float], curve_seeds: Sequence[Sequence[float]],
                           sizes: Sequence[int], level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """worth_multiple on the seed means, with a percentile bootstrap interval over the seeds.

    `target_seeds` are the pretrained arm's accuracies at `n_target` (one per seed), `curve_seeds[i]` the scratch
    arm's at sizes[i]. Each cell's seeds are resampled independently (separate runs, so separate samples) and the
    multiple recomputed from the resampled means. Returns worth_multiple's keys ("multiple", "images", "relation")
    plus "low", "low_relation", "high", "high_relation", "level", "n_resamples", "method", "seed".

    An end that falls where the resampled curve never reaches the target is {"high": sizes[-1]/n_target,
    "high_relation": ">"} ("more than k x"), one where it starts at or above the target is relation "<=" ("at most
    k x"); finite ends have relation "=". Either end may carry any of the three relations.

    With fewer than 2 seeds in any cell there is no interval: low/high and their relations are None, n_resamples 0,
    method None (a one-seed cell has no spread, and resampling it would pretend it is exact). With 2-3 seeds per cell
    the bootstrap is coarse: a cell's resampled mean takes only a handful of distinct values, and the percentile
    interval of so few points is too narrow for the stated level - read it as a rough range, not a 95 % guarantee.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if len(curve_seeds) != len(sizes) or len(target_seeds) == 0 or any(len(c) == 0 for c in curve_seeds):
        raise ValueError("need seeds for the target and for every size, one list of seeds per size")
    point = worth_multiple(n_target, float(np.mean(target_seeds)), sizes, [float(np.mean(c)) for c in curve_seeds])
    out = {**point, "low": None, "low_relation": None, "high": None, "high_relation": None, "level": level,
           "n_resamples": 0, "method": None, "seed": seed}
    if min(len(target_seeds), *(len(c) for c in curve_seeds)) < 2:
        return out

    def statistic(target: np.ndarray, *curve: np.ndarray) -> float:
        return _log_multiple(n_target, float(np.mean(target)), sizes, [float(np.mean(c)) for c in curve])

    data = (np.asarray(target_seeds, dtype=float), *(np.asarray(c, dtype=float) for c in curve_seeds))
    # scipy 1.15 renamed random_state to rng (a Generator); the older name is deprecated there.
    rng_kw = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        # scipy's own interval and standard error over the +-inf resamples are nan (with warnings); neither is used.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        res = sps.bootstrap(data, statistic, n_resamples=n_resamples, vectorized=False, method="percentile",
                            confidence_level=level, **{rng_kw: np.random.default_rng(seed)})
    dist = np.sort(np.asarray(res.bootstrap_distribution, dtype=float))
    # The ends are order statistics rounded outwards, not np.percentile's linear interpolation: interpolating between
    # a finite and an infinite resample is undefined (numpy gives nan), and rounding outwards never narrows the range.
    alpha = (1.0 - level) / 2.0
    last = len(dist) - 1
    low = dist[int(math.floor(alpha * last + 1e-9))]
    high = dist[int(math.ceil((1.0 - alpha) * last - 1e-9))]
    (out["low"], out["low_relation"]), (out["high"], out["high_relation"]) = (
        _decode(float(low), n_target, sizes), _decode(float(high), n_target, sizes))
    out.update(n_resamples=n_resamples, method="percentile")
    return out
