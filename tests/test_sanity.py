"""trainers.metrics.sanity: the checks that flag a useless model, against reference formulas and at the
edges of their thresholds."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from trainers.metrics import sanity
from trainers.metrics.audio import log_spectral_distance, spectral_convergence


def _scene(seed: int = 0, n: int = 1, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Speckled [0, 1] images (n, 1, size, size) with a no-data border on the left."""
    rng = np.random.default_rng(seed)
    x = np.clip(0.5 + 0.15 * rng.standard_normal((n, 1, size, size)), 0, 1).astype(np.float32)
    valid = np.ones_like(x)
    valid[..., :4] = 0
    x[..., :4] = 0
    return torch.from_numpy(x), torch.from_numpy(valid)


def _scaled(x: torch.Tensor, valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """mean + alpha (x - mean) per image over the valid pixels: the input at a fraction of its contrast."""
    v = valid > 0
    out = x.clone()
    for i in range(x.shape[0]):
        mean = x[i][v[i]].double().mean()
        out[i] = (mean + alpha * (x[i].double() - mean)).float()
    return out


def _psnr_ssim(x, y, valid):
    from trainers.metrics.sar import sar_metrics_per_image

    m = sar_metrics_per_image(x, y, tuple(x.shape), valid=valid)
    return m["psnr"].numpy(), m["ssim"].numpy()


# ---------------------------------------------------------------------------------------------------- SAR
def test_mean_image_psnr_is_the_variance_of_the_valid_pixels():
    x, valid = _scene(1, n=3)
    scores = sanity.sar_mean_image_scores(x, valid, torch.tensor([[-20.0, 5.0]] * 3))
    for i in range(3):
        pixels = x[i, 0][valid[i, 0] > 0].double().numpy()
        assert scores["psnr"][i] == pytest.approx(10 * np.log10(1 / np.var(pixels)), rel=1e-6)
    assert np.all((scores["ssim"] > -1) & (scores["ssim"] < 0.2))  # a flat image keeps no structure
    spread = sanity.sar_spread(x, x, valid)
    expected = [np.std(x[i, 0][valid[i, 0] > 0].numpy()) for i in range(3)]
    np.testing.assert_allclose(spread["input_std"], expected, rtol=1e-5)
    np.testing.assert_array_equal(spread["output_std"], spread["input_std"])


@pytest.mark.parametrize("alpha, flagged", [(0.04, True), (0.06, False), (1.0, False)])
def test_constant_output_threshold_and_the_baseline_is_strict(alpha, flagged):
    """Below 5 % of the input's spread the output is constant; just above, it still beats the mean image
    (any contrast in the right direction lowers the squared error), so no flag at all."""
    x, valid = _scene(2)
    y = _scaled(x, valid, alpha)
    psnr, ssim = _psnr_ssim(x, y, valid)
    baseline = sanity.sar_mean_image_scores(x, valid)
    flags = sanity.sar_flags(psnr, ssim, sanity.sar_spread(x, y, valid), baseline)
    assert [f.short for f in flags] == (["constant output"] if flagged else [])
    assert psnr[0] > baseline["psnr"][0]
    # The reason given for the 5 % threshold: aligned with the input, it gains at most 0.45 dB.
    if alpha < 1:
        gain = psnr[0] - baseline["psnr"][0]
        assert gain == pytest.approx(-20 * np.log10(1 - alpha), abs=0.02)
    if flagged:
        assert flags[0].text == (
            f"constant output: its spread over the valid pixels is {alpha:.1%} of the input's (under 5%)"
        )


def test_a_model_at_or_below_the_mean_image_is_flagged_with_the_figures():
    x, valid = _scene(3)
    baseline = sanity.sar_mean_image_scores(x, valid)
    inverted = _scaled(x, valid, -1.0)  # full contrast, wrong way round: far worse than the mean image
    psnr, ssim = _psnr_ssim(x, inverted, valid)
    [flag] = sanity.sar_flags(psnr, ssim, sanity.sar_spread(x, inverted, valid), baseline)
    assert flag.short == "no better than the mean-value image"
    assert flag.detail == (
        f"PSNR {psnr[0]:.2f} dB ≤ {baseline['psnr'][0]:.2f} dB, SSIM {ssim[0]:.4f} ≤ "
        f"{baseline['ssim'][0]:.4f} of the input's mean value everywhere"
    )
    # Exactly at the baseline is flagged too ("at or below").
    at = sanity.sar_flags(baseline["psnr"], [1.0], sanity.sar_spread(x, x, valid), baseline)
    assert [f.short for f in at] == ["no better than the mean-value image"] and "SSIM" not in at[0].detail


def test_constant_on_half_the_images_flags_the_model():
    x, valid = _scene(4, n=6)
    for n_flat, flagged in ((3, True), (2, False)):
        y = x.clone()
        y[:n_flat] = _scaled(x[:n_flat], valid[:n_flat], 0.0)
        spread = sanity.sar_spread(x, y, valid)
        psnr, ssim = _psnr_ssim(x, y, valid)
        flags = sanity.sar_flags(psnr, ssim, spread, sanity.sar_mean_image_scores(x, valid))
        assert [f.short for f in flags] == (["constant output"] if flagged else [])
        if flagged:
            assert flags[0].detail.startswith("on 3 of 6 images its spread")


def test_an_image_without_valid_pixels_or_spread_is_not_judged():
    x, valid = _scene(5)
    flat_input = torch.full_like(x, 0.3)  # nothing to reproduce: a flat output is right
    spread = sanity.sar_spread(flat_input, flat_input, valid)
    assert spread["input_std"][0] == 0
    assert sanity.sar_flags([100.0], [1.0], spread, {"psnr": [np.nan], "ssim": [np.nan]}) == []
    empty = sanity.sar_spread(x, x, torch.zeros_like(valid))
    assert np.isnan(empty["input_std"][0])
    with pytest.raises(ValueError, match="same shape"):
        sanity.sar_spread(x, x[..., :16], valid)


# -------------------------------------------------------------------------------------------------- audio
def _brute_flat_lsd(wav: np.ndarray, n_fft: int, hop: int) -> float:
    s = np.abs(
        librosa.stft(wav.astype(np.float64), n_fft=n_fft, hop_length=hop, center=True, pad_mode="constant")
    )
    p = s**2
    floor = p.max() * 1e-8  # 80 dB below the peak, over the bins up to the clip's bandwidth
    top = np.nonzero(p.mean(axis=1) > floor)[0][-1] + 1
    logp = 10 * np.log10(np.maximum(p[:top], floor))
    grid = np.linspace(logp.min(), logp.max(), 4001)
    return min(float(np.sqrt(np.mean((logp - c) ** 2, axis=0)).mean()) for c in grid)


@pytest.mark.parametrize("kind", ["tone", "noise"])
def test_flat_spectrum_lsd_is_the_best_constant_power(kind):
    rate, n_fft, hop = 8000, 256, 64
    rng = np.random.default_rng(0)
    t = np.arange(rate // 2) / rate
    wav = 0.3 * np.sin(2 * np.pi * 440 * t) if kind == "tone" else 0.1 * rng.standard_normal(t.size)
    flat = sanity.flat_spectrum_lsd(wav, n_fft, hop)
    assert flat == pytest.approx(_brute_flat_lsd(wav, n_fft, hop), abs=0.01)
    # No waveform of one constant power can do better; white noise is nearly flat, a tone far from it.
    assert (flat < 8) if kind == "noise" else (flat > 12)
    quieter = sanity.flat_spectrum_lsd(0.5 * wav, n_fft, hop)
    batch = sanity.flat_spectrum_lsd(np.stack([wav, 0.5 * wav]), n_fft, hop)
    assert batch == pytest.approx((flat + quieter) / 2)  # a batch: the mean over its clips
    with pytest.raises(ValueError, match="at least n_fft=256"):
        sanity.flat_spectrum_lsd(wav[:100], n_fft, hop)


def test_audio_flags_at_silence_and_at_the_flat_spectrum():
    rate = 8000
    wav = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)).astype(np.float32)
    # Silence scores spectral convergence exactly 1: the threshold is that figure.
    assert spectral_convergence(wav, np.zeros_like(wav), 256, 64) == pytest.approx(1.0)
    assert sanity.SILENCE_SPECTRAL_CONVERGENCE == 1.0
    flat = sanity.flat_spectrum_lsd(wav, 256, 64)
    assert [f.short for f in sanity.audio_flags(1.0, flat - 1, flat)] == ["no better than silence"]
    assert [f.short for f in sanity.audio_flags(0.999, flat, flat)] == ["no better than a flat spectrum"]
    assert sanity.audio_flags(0.999, flat - 0.01, flat) == []
    assert sanity.audio_flags(np.nan, np.nan, flat) == []  # nothing scored: nothing to judge
    # A faithful estimate (the signal itself, slightly attenuated) passes both checks.
    est = 0.9 * wav
    sc, lsd = spectral_convergence(wav, est, 256, 64), log_spectral_distance(wav, est, 256, 64)
    assert sanity.audio_flags(sc, lsd, flat) == []


# ---------------------------------------------------------------------------------------------- fragments
def test_fragment_repair_must_beat_the_identity_baseline():
    assert sanity.fragments_flags(0.951, 0.95) == []
    [flag] = sanity.fragments_flags(0.95, 0.95)  # equal is not above
    assert flag.text == (
        "does not beat the identity baseline: "
        "byte accuracy 95.00% ≤ 95.00% of the corrupted input left as it is"
    )
    assert sanity.fragments_flags(np.array([0.9, 0.8]), np.array([0.9, 0.9]))[0].detail.startswith(
        "byte accuracy 85.00% ≤ 90.00%"
    )  # means over the fragments
    assert sanity.fragments_flags(np.nan, 0.9) == []


# -------------------------------------------------------------------------------------------------- cells
def test_cells_show_the_flags_in_words():
    flags = [sanity.Flag("constant output", "spread 0.1%"), sanity.Flag("no better than x", "PSNR 1 ≤ 2")]
    assert sanity.flag_cell(flags) == "constant output: spread 0.1%; no better than x: PSNR 1 ≤ 2"
    assert sanity.flag_cell([]) == "none" and sanity.flag_cell([], none="–") == "–"
    assert sanity.qualified("214.900", flags) == "214.900 ⚠ constant output"
    assert sanity.qualified("214.900", [f.text for f in flags]) == "214.900 ⚠ constant output"  # JSON form
    assert sanity.qualified("1.020", []) == "1.020" and sanity.qualified("n/a", flags) == "n/a"
