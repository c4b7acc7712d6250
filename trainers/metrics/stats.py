"""Statistics of the leaderboard: intervals over independent units, paired differences, Bjøntegaard deltas.

Examples cut from one image, recording or file are correlated, so a bootstrap that resamples examples
understates the uncertainty (2-3x on real SAR crops). Here whole units are resampled (a cluster bootstrap:
each unit carries the sum and the count of its examples' values, and the statistic is the pooled mean), with
``scipy.stats.bootstrap``'s percentile interval. Paired differences between two rows use the same units: the
difference of the pooled means, its cluster-bootstrap interval, and a Wilcoxon signed-rank p-value over the
per-unit mean differences (``scipy.stats.wilcoxon``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 1000


def _pooled_mean(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


def _per_unit(values: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit labels, sum, count) over the finite values of each unit that has any."""
    ok = np.isfinite(values)
    labels, inverse = np.unique(units[ok], return_inverse=True)
    sums = np.bincount(inverse, weights=values[ok], minlength=labels.size)
    counts = np.bincount(inverse, minlength=labels.size).astype(np.float64)
    return labels, sums, counts


def _interval(sums: np.ndarray, counts: np.ndarray, seed: Any, resamples: int) -> list[float] | None:
    """Percentile 95 % interval of the pooled mean, resampling units; None with fewer than two units."""
    from scipy.stats import bootstrap

    if sums.size < 2:
        return None
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate (all equal) sample gives a zero-width interval
        res = bootstrap(
            (sums, counts),
            _pooled_mean,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            method="percentile",
            random_state=rng,
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return [lo, hi]


def _as_units(values: np.ndarray, units: Sequence[Any] | np.ndarray | None) -> np.ndarray:
    if units is None:
        return np.arange(values.size)
    u = np.asarray(units).reshape(-1)
    if u.size != values.size:
        raise ValueError(f"{values.size} values but {u.size} unit labels")
    return u


def summary(
    values: Sequence[float] | np.ndarray,
    seed: Any,
    units: Sequence[Any] | np.ndarray | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """``{"mean", "ci95", "n", "n_units"}``: the mean of the finite values and its 95 % interval over the
    units (each example its own unit when `units` is None). ci95 is None with fewer than two units."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    u = _as_units(arr, units)
    labels, sums, counts = _per_unit(arr, u)
    n = int(counts.sum())
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0, "n_units": 0}
    mean = float(sums.sum() / n)
    return {
        "mean": mean,
        "ci95": _interval(sums, counts, seed, resamples),
        "n": n,
        "n_units": int(labels.size),
    }


def paired(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    units: Sequence[Any] | np.ndarray | None,
    seed: Any,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Paired difference a - b over the examples where both are finite: ``{"diff", "ci95", "p", "n_units"}``,
    the interval over units, p of the two-sided Wilcoxon signed-rank test on the per-unit mean differences
    (1.0 when every difference is zero; None with fewer than two units)."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"paired rows hold {x.size} and {y.size} values")
    d = np.where(np.isfinite(x) & np.isfinite(y), x - y, np.nan)
    labels, sums, counts = _per_unit(d, _as_units(d, units))
    if counts.sum() == 0:
        return {"diff": None, "ci95": None, "p": None, "n_units": 0}
    unit_means = sums / counts
    p = None
    if labels.size >= 2:
        if np.all(unit_means == 0):
            p = 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = float(wilcoxon(unit_means, zero_method="zsplit").pvalue)
    return {
        "diff": float(sums.sum() / counts.sum()),
        "ci95": _interval(sums, counts, seed, resamples),
        "p": p,
        "n_units": int(labels.size),
    }


# ------------------------------------------------------------------------------------------- Bjøntegaard
def _curve(rate: Sequence[float], dist: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    r, d = np.asarray(rate, np.float64), np.asarray(dist, np.float64)
    ok = np.isfinite(r) & np.isfinite(d) & (r > 0)
    r, d = r[ok], d[ok]
    order = np.argsort(r)
    r, d = np.log10(r[order]), d[order]
    # Bjøntegaard needs distinct points; ties (the same bytes) would make the fit singular.
    _, keep = np.unique(r, return_index=True)
    r, d = r[np.sort(keep)], d[np.sort(keep)]
    return (r, d) if r.size >= 4 else None


def _avg_gap(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> float | None:
    """Mean of poly2(x) - poly1(x) over the overlap of the x ranges (cubic fits of y on x), None if none."""
    lo, hi = max(x1.min(), x2.min()), min(x1.max(), x2.max())
    if not hi > lo:
        return None
    p1, p2 = np.polyint(np.polyfit(x1, y1, 3)), np.polyint(np.polyfit(x2, y2, 3))
    area = (np.polyval(p2, hi) - np.polyval(p2, lo)) - (np.polyval(p1, hi) - np.polyval(p1, lo))
    return float(area / (hi - lo))


def bd_rate(
    ref_rate: Sequence[float], ref_psnr: Sequence[float], rate: Sequence[float], psnr: Sequence[float]
) -> tuple[float | None, str]:
    """Bjøntegaard delta rate (%) of a curve against a reference (negative: fewer bits for the same
    quality), from cubic fits of log-rate on PSNR over the overlapping PSNR range; (None, why) when a
    curve has under 4 distinct points or the curves do not overlap. Hand-written: the formula (VCEG-M33)
    is a dozen lines and no maintained library exports it."""
    ref, test = _curve(ref_rate, ref_psnr), _curve(rate, psnr)
    if ref is None or test is None:
        return None, "a curve has fewer than 4 distinct points"
    gap = _avg_gap(ref[1], ref[0], test[1], test[0])
    if gap is None:
        return None, "the curves' quality ranges do not overlap"
    return float((10.0**gap - 1.0) * 100.0), ""


def bd_psnr(
    ref_rate: Sequence[float], ref_psnr: Sequence[float], rate: Sequence[float], psnr: Sequence[float]
) -> tuple[float | None, str]:
    """Bjøntegaard delta PSNR (dB; positive: better quality at the same rate) over the overlapping
    log-rate range; (None, why) as :func:`bd_rate`."""
    ref, test = _curve(ref_rate, ref_psnr), _curve(rate, psnr)
    if ref is None or test is None:
        return None, "a curve has fewer than 4 distinct points"
    gap = _avg_gap(ref[0], ref[1], test[0], test[1])
    if gap is None:
        return None, "the curves' rate ranges do not overlap"
    return gap, ""


__all__ = ["BOOTSTRAP_RESAMPLES", "bd_psnr", "bd_rate", "paired", "summary"]
