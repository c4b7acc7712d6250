"""The metric registry: every logged metric is registered, and each direction agrees with its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from trainers.metrics import registry
from trainers.metrics.audio import feature_mse, log_spectral_distance, spectral_convergence
from trainers.metrics.fragments import fragment_metrics
from trainers.metrics.registry import arrow, best_value, format_value, is_better, metric_info
from trainers.metrics.sar import sar_metrics

AUDIO_KEYS = (
    "loss",
    "mse",
    "kl",
    "spectral_convergence",
    "lsd",
    "roundtrip_spectral_convergence",
    "roundtrip_lsd",
)


def sar_scene(seed: int = 0, looks: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scene = np.kron(rng.random((4, 4)) + 0.2, np.ones((16, 16)))
    db = 10 * np.log10(scene * rng.gamma(looks, 1 / looks, scene.shape))
    lo, hi = np.percentile(db, [0.5, 99.5])
    return np.clip((db - lo) / (hi - lo), 0, 1)[None, None], np.array([lo, hi])


def test_every_logged_metric_is_registered() -> None:
    x, r = sar_scene()
    sar_keys = sar_metrics(torch.from_numpy(x), torch.from_numpy(x), (1, 16, 4, 4), None, r)
    clean = np.arange(64, dtype=np.uint8)[None]
    frag_keys = fragment_metrics(clean, clean ^ 1, clean)
    for name in (*sar_keys, *frag_keys, *AUDIO_KEYS):
        info = metric_info(name)
        assert info is not None, name
        assert info.direction in ("max", "min", "band", "info") and info.description, name
        assert (info.band is not None) == (info.direction == "band"), name
        format(1.2345, info.fmt)  # a valid format spec
    assert metric_info("val/psnr") is metric_info("psnr") is metric_info("PSNR")
    assert metric_info("val_loss") is metric_info("loss")
    assert metric_info("mse", domain="sar").description != metric_info("mse", domain="audio").description


def test_unknown_metrics_are_not_guessed() -> None:
    # Substrings used to decide: "byte_accuracy" read as higher-better, "recon_loss" as lower-better.
    for name in ("byte_accuracy", "recon_loss", "val/only_nan", "ssim2"):
        assert metric_info(name) is None and arrow(name) == "" and best_value(name, [1.0, 2.0]) is None
        with pytest.raises(ValueError, match="unknown metric"):
            is_better(name, 1.0, 2.0)
        assert registry.better_text(name) == "unknown metric"
    with pytest.raises(ValueError, match="no better side"):
        is_better("kl", 1.0, 2.0)


def test_arrows_bands_and_best_values() -> None:
    assert arrow("psnr") == "↑" and arrow("val/loss") == "↓" and arrow("broken_fraction") == "↓"
    assert arrow("enl_ratio") == "target 0.7–1.3" and arrow("identity_accuracy") == "" and arrow("kl") == ""
    assert best_value("psnr", [20.0, math.nan, 23.0, math.inf, None]) == 23.0
    assert best_value("loss", [0.5, 0.3, math.nan]) == 0.3
    assert best_value("enl_ratio", [0.5, 2.5, 1.45, 1e32]) == 1.45  # closest to the band, not the max
    assert best_value("enl_ratio", [0.75, 1.2, 1.02]) == 1.02  # inside the band: closest to its centre
    assert best_value("enl_ratio", [math.nan]) is None and best_value("identity_ber", [0.1, 0.2]) is None
    assert is_better("enl_ratio", 1.5, 0.3) and not is_better("enl_ratio", 0.3, 1.5)
    assert is_better("psnr", 10.0, math.nan) and not is_better("psnr", math.nan, 10.0)
    assert registry.band_distance("enl_ratio", 2.0) == pytest.approx(0.7)


def test_format_value_is_finite_and_rounded() -> None:
    assert format_value("psnr", 23.456) == "23.46"
    assert format_value("ssim", 0.123456) == "0.1235"
    assert format_value("enl_ratio", 1.23456) == "1.235"
    for bad in (math.nan, math.inf, -math.inf, None):
        assert format_value("psnr", bad) == "n/a"
    assert format_value("not_a_metric", 1234567.0) == "1.235e+06"
    assert registry.missing_reason("enl_ratio").startswith("no usable homogeneous region")
    assert registry.missing_reason("mystery").startswith("unknown metric")


def _check_better(values_good: dict[str, float], values_bad: dict[str, float], names) -> None:
    for name in names:
        assert is_better(name, values_good[name], values_bad[name]), (
            name,
            values_good[name],
            values_bad[name],
        )
        assert not is_better(name, values_bad[name], values_good[name]), name


def test_sar_directions_agree_with_the_definitions() -> None:
    x, r = sar_scene(1)
    rng = np.random.default_rng(2)
    xt = torch.from_numpy(x)
    mild = torch.from_numpy(np.clip(x + 0.02 * rng.standard_normal(x.shape), 0, 1))
    noisy = torch.from_numpy(np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1))
    good = sar_metrics(xt, mild, (1, 16, 4, 4), None, r)
    bad = sar_metrics(xt, noisy, (1, 16, 4, 4), None, r)
    assert bad["enl_ratio"] < 0.7 < good["enl_ratio"]  # the noisy output is out of the band, below it
    _check_better(good, bad, ("psnr", "psnr_8bit", "ssim", "epi", "mse", "enl_ratio"))
    # Over-smoothing is also out of the band (above it) and worse than a faithful output.
    smooth = torch.from_numpy(ndimage.uniform_filter(x, (1, 1, 9, 9)))
    over = sar_metrics(xt, smooth, (1, 16, 4, 4), None, r)
    assert over["enl_ratio"] > 1.3 and is_better("enl_ratio", good["enl_ratio"], over["enl_ratio"])
    # Fewer bits per pixel is the better compression.
    assert is_better("bpp_8bit", 0.25, 0.5) and is_better("bpp_float32", 1.0, 2.0)


def test_audio_directions_agree_with_the_definitions() -> None:
    t = np.arange(16000) / 16000
    ref = np.sin(2 * np.pi * 440 * t) * np.exp(-t)
    rng = np.random.default_rng(3)
    est = {s: ref + s * rng.standard_normal(ref.shape) for s in (0.01, 0.3)}
    for prefix in ("", "roundtrip_"):
        good = {prefix + "spectral_convergence": spectral_convergence(ref, est[0.01]),
                prefix + "lsd": log_spectral_distance(ref, est[0.01])}  # fmt: skip
        bad = {prefix + "spectral_convergence": spectral_convergence(ref, est[0.3]),
               prefix + "lsd": log_spectral_distance(ref, est[0.3])}  # fmt: skip
        _check_better(good, bad, good)
    feats = rng.random((2, 8, 8))
    _check_better(
        {"mse": feature_mse(feats + 0.01, feats), "loss": 0.1},
        {"mse": feature_mse(feats + 0.1, feats), "loss": 0.2},
        ("mse", "loss"),
    )


def test_fragment_directions_agree_with_the_definitions() -> None:
    rng = np.random.default_rng(4)
    clean = rng.integers(0, 256, (8, 512), dtype=np.uint8)
    corrupted = clean.copy()
    hit = rng.random(clean.shape) < 0.1
    corrupted[hit] ^= 0xFF

    def repaired(error_rate: float, seed: int) -> np.ndarray:
        out = clean.copy()
        wrong = np.random.default_rng(seed).random(clean.shape) < error_rate
        out[wrong] ^= 0x0F
        return out

    good = fragment_metrics(clean, corrupted, repaired(0.01, 5))
    bad = fragment_metrics(clean, corrupted, repaired(0.2, 6))
    _check_better(good, bad, ("accuracy", "accuracy_corrupted", "ber", "fixed_fraction", "broken_fraction"))
    # The identity baselines do not depend on the repair: no direction to rank runs by.
    assert good["identity_accuracy"] == bad["identity_accuracy"]
    assert all(metric_info(k).direction == "info" for k in good if k.startswith("identity_"))


def test_model_card_table_reads_the_registry() -> None:
    from trainers.hub.model_card import CardInfo, metrics_table

    info = CardInfo(
        run_id="r", variant="fragment-dae", domain="fragments", kind="best", step=10, epoch=1,
        status="completed", run_config={}, model_config={}, parameters={}, model_class="m",
        checkpoint_metrics={"broken_fraction": 0.01, "accuracy_corrupted": math.nan, "identity_ber": 0.2,
                            "mystery": math.inf},
        best_metrics={"broken_fraction": 0.01},
    )  # fmt: skip
    rows = {line.split(" | ")[0].strip("| "): line for line in metrics_table(info).splitlines()[2:]}
    assert rows["broken_fraction"].endswith("| lower |") and "| 0.0100 |" in rows["broken_fraction"]
    assert "n/a: the noise changed no byte" in rows["accuracy_corrupted"]
    assert rows["identity_ber"].endswith("| no direction |")
    assert "unknown metric" in rows["mystery"] and "inf" not in rows["mystery"].replace("info", "")
