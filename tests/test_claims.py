"""Study statistics (trainers.evaluation.claims): the crossed seeds × units bootstrap against its reference
behaviour, paired differences, and claims answered from the interval."""

from __future__ import annotations

import numpy as np
import pytest

from trainers.evaluation.claims import (
    BUILT_IN_CLAIMS,
    Claim,
    crossed_bootstrap,
    paired_difference,
    parse_claim,
    study_statistics,
    verdict,
)


def test_interval_covers_the_mean_and_widens_with_seed_spread():
    rng = np.random.default_rng(0)
    units = rng.normal(20, 0.3, size=12)  # image difficulty, shared by all seeds
    tight = units[None, :] + rng.normal(0, 0.01, size=(5, 1))
    loose = units[None, :] + rng.normal(0, 1.0, size=(5, 1))  # seeds move the whole model by ~1 dB
    mean, lo, hi = crossed_bootstrap(tight)
    assert lo < mean < hi and mean == pytest.approx(tight.mean())
    _, lo2, hi2 = crossed_bootstrap(loose)
    assert hi2 - lo2 > (hi - lo) * 1.5  # the seed-to-seed spread is not ignored


def test_a_single_seed_reduces_to_the_unit_bootstrap():
    values = np.arange(10, dtype=float)[None, :]
    mean, lo, hi = crossed_bootstrap(values, resamples=4000)
    # percentile bootstrap of the mean of 0..9: sd of the mean ~ 0.91, so about 4.5 ± 1.8
    assert mean == 4.5 and 2.4 < lo < 3.2 and 5.8 < hi < 6.6


def test_nan_cells_are_left_out_and_all_nan_is_nan():
    values = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    assert crossed_bootstrap(values)[0] == pytest.approx(2.0)
    assert all(np.isnan(crossed_bootstrap(np.full((2, 2), np.nan))))
    # A difference undefined everywhere has no p-value, not the smallest one a permutation can give.
    nan_pair = paired_difference(np.full((2, 3), np.nan), np.ones((2, 3)))
    assert np.isnan(nan_pair["diff"]) and np.isnan(nan_pair["p"]) and all(np.isnan(nan_pair["ci95"]))
    with pytest.raises(ValueError, match="seeds × units"):
        crossed_bootstrap(np.ones(3))


def test_paired_difference_sees_a_small_consistent_gain_that_unpaired_intervals_hide():
    rng = np.random.default_rng(1)
    base = rng.normal(20, 3, size=(3, 10))  # large spread between images
    better = base + 0.3 + rng.normal(0, 0.05, size=base.shape)
    paired = paired_difference(better, base)
    assert paired["diff"] == pytest.approx(0.3, abs=0.05)
    assert paired["ci95"][0] > 0 and paired["p"] < 0.01
    _, lo_a, hi_a = crossed_bootstrap(better)
    _, lo_b, hi_b = crossed_bootstrap(base)
    assert lo_a < hi_b  # the two unpaired intervals overlap


def test_no_difference_gives_a_large_p():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, size=(3, 20))
    assert paired_difference(a, a + rng.normal(0, 0.5, size=a.shape) * 0)["p"] == 1.0
    b = a + rng.normal(0, 1, size=a.shape)
    assert paired_difference(a, b)["p"] > 0.05


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (0.6, 0.9, "supported"),
        (0.1, 0.4, "not supported"),
        (0.3, 0.7, "inconclusive"),
        (np.nan, 1, "inconclusive"),
    ],
)
def test_verdicts(low, high, expected):
    assert verdict(low, high, 0.5) == expected


def test_claims_parse_in_ascii_and_in_maths():
    assert parse_claim("sar-attention - sar-residual >= 0.5 on psnr") == BUILT_IN_CLAIMS[1]
    assert parse_claim("a − b ≥ -1e-2 on lsd") == Claim("a", "b", -0.01, "lsd")
    for bad in ("a > b", "a - b >= x on psnr", "a - b >= inf on psnr"):
        with pytest.raises(ValueError, match="claim"):
            parse_claim(bad)


def _by_seed(matrix):
    return {seed: row for seed, row in enumerate(matrix)}


def test_study_statistics_answer_the_built_in_claims():
    rng = np.random.default_rng(3)
    images = rng.normal(15, 2, size=8)
    baseline = images + rng.normal(0, 0.1, size=(3, 8))
    residual = baseline + 2.0  # B beats the baseline by 2 dB: supported
    attention = residual + 0.05  # C is level with B: 0.5 dB not reached
    scores = {
        "sar-baseline": {"psnr": _by_seed(baseline)},
        "sar-residual": {"psnr": _by_seed(residual)},
        "sar-attention": {"psnr": _by_seed(attention)},
    }
    out = study_statistics(scores)
    verdicts = {c["claim"]: c["verdict"] for c in out["claims"]}
    assert verdicts == {
        "sar-residual − sar-baseline ≥ 1.5 on psnr": "supported",
        "sar-attention − sar-residual ≥ 0.5 on psnr": "not supported",
    }
    assert {r["name"]: r["seeds"] for r in out["rows"]} == dict.fromkeys(scores, 3)
    assert len(out["pairs"]) == 3
    missing = study_statistics({"sar-baseline": {"psnr": _by_seed(baseline)}})["claims"]
    assert all(c["verdict"] == "not applicable" and "no runs of both" in c["reason"] for c in missing)


def test_pairs_use_only_the_seeds_both_variants_ran():
    a = {0: np.array([2.0, 3.0]), 1: np.array([2.0, 3.0]), 2: np.array([9.0, 9.0])}
    b = {0: np.array([1.0, 2.0]), 1: np.array([1.0, 2.0])}  # seed 2 failed for b
    out = study_statistics({"a": {"psnr": a}, "b": {"psnr": b}}, claims=[Claim("a", "b", 0.5, "psnr")])
    [pair] = out["pairs"]
    assert pair["diff"] == pytest.approx(1.0) and pair["seeds"] == 2
    assert out["claims"][0]["verdict"] == "supported"
    assert [r["seeds"] for r in out["rows"]] == [3, 2]
    none = study_statistics({"a": {"psnr": {5: a[0]}}, "b": {"psnr": b}}, claims=[Claim("a", "b", 0, "psnr")])
    assert (
        none["claims"][0]["verdict"] == "not applicable"
        and "share no training seed" in none["claims"][0]["reason"]
    )
