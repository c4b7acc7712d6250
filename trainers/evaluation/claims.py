"""Statistics of a study: means over training seeds with intervals over seeds × evaluation units, paired
differences between variants on the same seeds and units, and claims (``A − B ≥ δ on METRIC``) answered
"supported", "not supported" or "inconclusive" from the interval.

Seeds and units (images, recordings, files) are crossed: every seed's model is scored on every unit. Both
are random samples (another seed, another image would give another figure), so a replicate resamples
seeds and units independently and averages the resampled block. Hand-written because
``scipy.stats.bootstrap`` resamples one axis of independent observations; resampling only units would
ignore the seed-to-seed spread that a claim about a variant must survive, and resampling only seeds
would ignore the test set's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95


def crossed_bootstrap(
    values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(mean, low, high) of a seeds × units matrix, the percentile interval of ``resamples`` replicates that
    resample seeds and units independently. NaN cells (a unit a metric is undefined on) are left out of
    each replicate's mean; an all-NaN matrix gives NaNs."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"expected a seeds × units matrix, got shape {values.shape}")
    if not np.isfinite(values).any():
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    n_seeds, n_units = values.shape
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    units = rng.integers(0, n_units, size=(resamples, n_units))
    means = np.empty(resamples)
    for i in range(resamples):
        block = values[np.ix_(seeds[i], units[i])]
        means[i] = np.nanmean(block) if np.isfinite(block).any() else np.nan
    means = means[np.isfinite(means)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(np.nanmean(values)), float(low), float(high)


def paired_permutation_p(diff: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of a zero mean difference: sign flips of whole seeds and whole units (under the null
    each pairing's sign is arbitrary); the observed statistic counts as one of the permutations."""
    diff = np.asarray(diff, dtype=np.float64)
    if not np.isfinite(diff).any():  # a metric undefined on every unit: no test (it once gave p = 1/10001)
        return float("nan")
    observed = abs(np.nanmean(diff))
    rng = np.random.default_rng(seed)
    n_seeds, n_units = diff.shape
    hits = 1
    for _ in range(resamples):
        signs = rng.choice((-1.0, 1.0), size=(n_seeds, 1)) * rng.choice((-1.0, 1.0), size=(1, n_units))
        hits += abs(np.nanmean(diff * signs)) >= observed - 1e-12
    return hits / (resamples + 1)


@dataclass(frozen=True)
class Claim:
    """``a − b ≥ delta`` on ``metric`` (metric values as reported, in their own unit)."""

    a: str
    b: str
    delta: float
    metric: str

    @property
    def text(self) -> str:
        return f"{self.a} − {self.b} ≥ {self.delta:g} on {self.metric}"


# The design's two SAR claims (seeds 000–002): Variant B beats the baseline by 1.5 dB, C beats B by 0.5.
BUILT_IN_CLAIMS: tuple[Claim, ...] = (
    Claim("sar-residual", "sar-baseline", 1.5, "psnr"),
    Claim("sar-attention", "sar-residual", 0.5, "psnr"),
)

_CLAIM = re.compile(r"^\s*(\S+)\s*[-−]\s*(\S+)\s*>=?\s*([-+0-9.eE]+)\s+on\s+(\S+)\s*$")
_CLAIM_ALT = re.compile(r"^\s*(\S+)\s*[-−]\s*(\S+)\s*≥\s*([-+0-9.eE]+)\s+on\s+(\S+)\s*$")


def parse_claim(text: str) -> Claim:
    """``"sar-attention - sar-residual >= 0.5 on psnr"`` (``≥`` and ``−`` work too)."""
    match = _CLAIM.match(text) or _CLAIM_ALT.match(text)
    if not match:
        example = "sar-attention - sar-residual >= 0.5 on psnr"
        raise ValueError(f"a claim reads 'A - B >= DELTA on METRIC', e.g. '{example}'; got {text!r}")
    a, b, delta, metric = match.groups()
    try:
        value = float(delta)
    except ValueError:
        raise ValueError(f"claim {text!r}: {delta!r} is not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"claim {text!r}: delta must be finite")
    return Claim(a, b, value, metric)


def verdict(low: float, high: float, delta: float) -> str:
    """Supported when the whole interval of A − B is at or above δ, not supported when it is all below,
    inconclusive when it straddles δ (more seeds or units would be needed to tell)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low >= delta:
        return "supported"
    if high < delta:
        return "not supported"
    return "inconclusive"


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Mean of A − B over matched (seed, unit) cells, its crossed-bootstrap interval and permutation p."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired matrices differ in shape: {a.shape} vs {b.shape}")
    diff = a - b
    mean, low, high = crossed_bootstrap(diff, seed=seed)
    return {"diff": mean, "ci95": [low, high], "p": paired_permutation_p(diff, seed=seed)}


Scores = dict[str, dict[str, dict[int, np.ndarray]]]


def _matrix(by_seed: dict[int, np.ndarray], seeds: list[int]) -> np.ndarray:
    return np.asarray([np.asarray(by_seed[s], dtype=np.float64) for s in seeds])


def study_statistics(
    scores: Scores, claims: tuple[Claim, ...] | list[Claim] = BUILT_IN_CLAIMS, seed: int = 0
) -> dict[str, Any]:
    """``scores[group][metric][training seed]`` is that run's per-unit values (units in the same order for
    every run). Returns rows (mean and interval over the group's seeds × units), pairs (every two groups,
    every metric, on the seeds both have) and claims (answered on the seeds both sides have; "not
    applicable", with the reason, when a side or its metric is missing)."""
    rows = []
    for group, metrics in scores.items():
        row: dict[str, Any] = {"name": group, "seeds": 0, "metrics": {}}
        for metric, by_seed in metrics.items():
            matrix = _matrix(by_seed, sorted(by_seed))
            mean, low, high = crossed_bootstrap(matrix, seed=seed)
            row["metrics"][metric] = {"mean": mean, "ci95": [low, high], "n": int(np.isfinite(matrix).sum())}
            row["seeds"] = len(by_seed)
        rows.append(row)
    groups = list(scores)
    pairs = []
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            for metric in scores[a]:
                paired = _paired(scores, a, b, metric, seed)
                if "diff" in paired:
                    pairs.append({"a": a, "b": b, "metric": metric, **paired})
    answered = []
    for claim in claims:
        entry = {
            "claim": claim.text,
            "a": claim.a,
            "b": claim.b,
            "delta": claim.delta,
            "metric": claim.metric,
        }
        paired = _paired(scores, claim.a, claim.b, claim.metric, seed)
        if "diff" in paired:
            entry.update(paired, verdict=verdict(*paired["ci95"], claim.delta))
        else:
            entry.update(paired, verdict="not applicable")
        answered.append(entry)
    return {"rows": rows, "pairs": pairs, "claims": answered}


def _paired(scores: Scores, a: str, b: str, metric: str, seed: int) -> dict[str, Any]:
    """Paired difference a − b on the seeds both groups ran, or {"reason"} why there is none."""
    if metric not in scores.get(a, {}) or metric not in scores.get(b, {}):
        return {"reason": f"the study has no runs of both {a} and {b} with {metric}"}
    common = sorted(set(scores[a][metric]) & set(scores[b][metric]))
    if not common:
        return {"reason": f"{a} and {b} share no training seed"}
    out = paired_difference(_matrix(scores[a][metric], common), _matrix(scores[b][metric], common), seed)
    return {**out, "seeds": len(common)}
