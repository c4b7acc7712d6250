"""Metrics against closed-form values, hand-computed examples and independent reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.metrics import structural_similarity

from trainers.data.sar import KNOT_X, normalize_db
from trainers.metrics import (
    PSNR_CAP_DB,
    bit_error_rate,
    byte_accuracy,
    enl,
    epi,
    feature_mse,
    fragment_metrics,
    fragment_metrics_per_fragment,
    homogeneous_mask,
    latent_bits_per_pixel,
    log_spectral_distance,
    psnr,
    psnr_8bit,
    sar_loss,
    sar_metrics,
    sar_metrics_per_image,
    sar_metrics_reference,
    spectral_convergence,
    ssim,
    ssim_tensor,
    to_bytes,
)


def speckle(shape: tuple[int, ...], looks: int, seed: int, level: float = 0.5) -> np.ndarray:
    """Constant reflectivity times L-look intensity speckle Gamma(L, 1/L) (unit mean)."""
    rng = np.random.default_rng(seed)
    return level * rng.gamma(shape=looks, scale=1.0 / looks, size=shape)


def correlated_pair(b: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images and noisy copies, both in [0, 1], so that SSIM sits well inside (0, 1)."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((b, 1, h, w)), sigma=(0, 0, 1.5, 1.5))
    x = (x - x.min()) / (x.max() - x.min())
    y = np.clip(x + 0.08 * rng.standard_normal(x.shape), 0.0, 1.0)
    return torch.from_numpy(x), torch.from_numpy(y)


# ------------------------------------------------------------------------------------------------ PSNR


def test_psnr_of_known_mse() -> None:
    x = torch.from_numpy(np.random.default_rng(0).random((2, 1, 16, 16)) * 0.9)
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    assert psnr(x, x + 0.1, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2.0), abs=1e-9)
    # Averaged per image, not the PSNR of the pooled MSE: offsets 0.1 and 0.01 -> 20 and 40 dB.
    y = x.clone()
    y[0] += 0.1
    y[1] += 0.01
    assert psnr(x, y) == pytest.approx(30.0, abs=1e-9)
    assert psnr(x.numpy(), y.numpy()) == pytest.approx(30.0, abs=1e-9)


def test_psnr_identical_is_capped_and_finite() -> None:
    x = torch.rand(3, 1, 8, 8)
    assert psnr(x, x) == PSNR_CAP_DB
    assert psnr_8bit(x, x) == PSNR_CAP_DB


def test_psnr_8bit_rounds_to_8_bit_levels() -> None:
    rng = np.random.default_rng(1)
    levels = rng.integers(0, 255, size=(2, 1, 12, 12))
    # Jitter below half a step disappears on rounding; a shift of one step becomes an exact 1/255 error.
    x = torch.from_numpy(levels / 255.0 + rng.uniform(-0.4, 0.4, levels.shape) / 255.0)
    y = torch.from_numpy((levels + 1) / 255.0)
    assert psnr_8bit(x, y) == pytest.approx(20 * math.log10(255.0), abs=1e-9)
    assert psnr_8bit(x, torch.from_numpy(levels / 255.0)) == PSNR_CAP_DB
    assert psnr(x, y) < 20 * math.log10(255.0)  # the unrounded error is larger on average


# ------------------------------------------------------------------------------------------------ SSIM


def test_ssim_identical_is_one() -> None:
    x, _ = correlated_pair(2, 32, 32, seed=2)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_skimage_gaussian() -> None:
    x, y = correlated_pair(3, 48, 40, seed=3)
    ours = ssim(x, y)
    reference = np.mean(
        [
            structural_similarity(
                a[0], b[0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
            )
            for a, b in zip(x.numpy(), y.numpy(), strict=True)
        ]
    )
    assert 0.2 < reference < 0.95
    assert ours == pytest.approx(reference, abs=1e-3)
    # float32 training path agrees with the float64 metric.
    assert float(ssim_tensor(x.float(), y.float())) == pytest.approx(ours, abs=1e-4)


def test_ssim_tensor_is_differentiable_and_sar_loss_formula() -> None:
    x, y = correlated_pair(2, 32, 32, seed=4)
    x, y = x.float(), y.float()
    x_hat = y.clone().requires_grad_(True)
    loss = sar_loss(x_hat, x)
    expected = 0.7 * F.mse_loss(y, x) + 0.3 * (1.0 - ssim(x, y))
    assert loss.item() == pytest.approx(float(expected), abs=1e-5)
    loss.backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = x_hat - 0.005 * x_hat.grad / x_hat.grad.abs().max()
    assert float(sar_loss(stepped, x)) < loss.item()  # the gradient points downhill
    assert float(sar_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    only_mse = sar_loss(y, x, mse_weight=1.0, ssim_weight=0.0)
    assert float(only_mse) == pytest.approx(float(F.mse_loss(y, x)), rel=1e-6)


def test_ssim_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 8, 32), torch.rand(1, 1, 8, 32))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        psnr(torch.rand(16, 16), torch.rand(16, 16))
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), data_range=0)
    with pytest.raises(ValueError, match="torch.Tensor or numpy.ndarray"):
        psnr([[1.0]], [[1.0]])


# --------------------------------------------------------------------------------------------- ENL / EPI


@pytest.mark.parametrize("looks", [1, 4, 16])
def test_enl_of_simulated_speckle_estimates_looks(looks: int) -> None:
    image = speckle((256, 256), looks, seed=looks)
    assert enl(image) == pytest.approx(looks, rel=0.05)
    assert enl(torch.from_numpy(image)) == pytest.approx(enl(image), rel=1e-12)


def test_enl_with_mask_and_edge_cases() -> None:
    image = np.concatenate([speckle((128, 64), 4, seed=5, level=0.2), speckle((128, 64), 16, seed=6)], axis=1)
    right = np.zeros(image.shape, dtype=bool)
    right[:, 64:] = True
    assert enl(image, right) == pytest.approx(16, rel=0.05)
    assert enl(image, ~right) == pytest.approx(4, rel=0.05)
    assert math.isnan(enl(image, np.zeros(image.shape, dtype=bool)))
    assert enl(np.full((4, 4), 0.3)) == math.inf
    with pytest.raises(ValueError, match="boolean mask"):
        enl(image, right.astype(int))
    with pytest.raises(ValueError, match="must match"):
        enl(image, right[:10])


def test_homogeneous_mask_flat_vs_edge() -> None:
    step = np.full((40, 40), 0.2)
    step[:, 20:] = 0.8
    mask = homogeneous_mask(step, window=15, cv_threshold=0.3)
    assert mask.dtype == bool and mask.shape == step.shape
    assert mask[:, :8].all() and mask[:, 33:].all()  # the box sees one level only
    assert not mask[:, 19:21].any()  # half 0.2, half 0.8: CV = 0.3/0.5 = 0.6
    # L=16 speckle has CV 1/4 < 0.3 (homogeneous); single-look speckle has CV 1 (not).
    assert homogeneous_mask(speckle((64, 64), 16, seed=7)).mean() > 0.95
    assert not homogeneous_mask(speckle((64, 64), 1, seed=8)).any()


def test_homogeneous_mask_matches_brute_force_windows() -> None:
    batch = speckle((2, 1, 14, 17), 6, seed=9)
    window = 5
    mask = homogeneous_mask(torch.from_numpy(batch), window=window, cv_threshold=0.35)
    assert mask.shape == batch.shape
    r = window // 2
    for b in range(2):
        padded = np.pad(batch[b, 0], r, mode="symmetric")  # scipy's "reflect" mode
        for i in range(14):
            for j in range(17):
                box = padded[i : i + window, j : j + window]
                assert mask[b, 0, i, j] == (box.std() / box.mean() < 0.35)


def two_field_scene(size: int, looks: int, seed: int) -> np.ndarray:
    """Two fields of reflectivity 0.3 and 0.7 (left / right) under L-look intensity speckle."""
    level = np.where(np.arange(size) < size // 2, 0.3, 0.7)[None, :] * np.ones((size, 1))
    return level * np.random.default_rng(seed).gamma(looks, 1.0 / looks, (size, size))


def db_unit(intensity: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[np.ndarray, np.ndarray]:
    """The contract's per-image dB normalisation: x in [0, 1] and [db_lo, db_hi] (robust percentiles)."""
    db = 10.0 * np.log10(intensity)
    lo, hi = np.percentile(db, [low, high])
    return np.clip((db - lo) / (hi - lo), 0.0, 1.0), np.array([lo, hi])


def in_range(intensity: np.ndarray, db_range: np.ndarray) -> np.ndarray:
    """Another image's intensity on a given dB range (how a reconstruction maps back)."""
    return np.clip((10.0 * np.log10(intensity) - db_range[0]) / (db_range[1] - db_range[0]), 0.0, 1.0)


def enl_cap(db_range: np.ndarray) -> float:
    step = math.log(10) / 10 * (db_range[1] - db_range[0]) / 255
    return 12 / step**2


def per_image(x, y, valid=None, db_range=None, z=(1, 16, 4, 4)) -> dict[str, np.ndarray]:
    """sar_metrics_per_image on numpy images (H, W) or stacks, as numpy (B,) arrays."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(-1, 1, *np.shape(x)[-2:]))
    yt = torch.from_numpy(np.asarray(y, dtype=np.float64).reshape(xt.shape))
    vt = None if valid is None else torch.from_numpy(np.asarray(valid, dtype=np.float64).reshape(xt.shape))
    out = sar_metrics_per_image(xt, yt, (xt.shape[0], *z[1:]), vt, db_range)
    return {k: v.numpy() for k, v in out.items()}


def test_spec_cv_rule_selects_nothing_for_few_looks() -> None:
    # Why enl_ratio does not use "CV < 0.3": L-look intensity speckle has CV 1/sqrt(L) > 0.3 for L <= 11.
    for looks in (1, 2, 4):
        assert not homogeneous_mask(speckle((96, 96), looks, seed=looks), cv_threshold=0.3).any()


@pytest.mark.parametrize("looks", [1, 4])
def test_enl_ratio_identity_smoothed_and_constant(looks: int) -> None:
    x, r = db_unit(two_field_scene(128, looks, seed=30 + looks))
    assert per_image(x, x, db_range=r)["enl_ratio"][0] == pytest.approx(1.0, abs=1e-12)
    smoothed = ndimage.uniform_filter(x, 3)  # a despeckled reconstruction: ENL rises
    assert per_image(x, smoothed, db_range=r)["enl_ratio"][0] > 1.5
    flat = np.full_like(x, x.mean())
    ratio = per_image(x, flat, db_range=r)["enl_ratio"][0]
    # A flat output hits the 8-bit cap on ENL: cap / ENL(input), with ENL(input) near L.
    assert math.isfinite(ratio) and 0.5 * enl_cap(r) / looks < ratio < 2 * enl_cap(r) / looks < 1e5


def test_enl_ratio_of_known_looks_on_intensity() -> None:
    # 4-look speckle in, 16-look speckle of the same field out (in the input's dB range): ENL 4 -> 16.
    for size in (64, 256):
        x, r = db_unit(speckle((size, size), 4, seed=size))
        y = in_range(speckle((size, size), 16, seed=size + 1), r)
        assert per_image(x, y, db_range=r)["enl_ratio"][0] == pytest.approx(4.0, rel=0.1)
    # Two fields: boxes across the 0.3 / 0.7 step weigh more in the smoother output, so a little below 4.
    x, r = db_unit(two_field_scene(256, 4, seed=3))
    y = in_range(two_field_scene(256, 16, seed=4), r)
    assert 3.0 < per_image(x, y, db_range=r)["enl_ratio"][0] < 4.4


def test_enl_ratio_missing_when_no_usable_region() -> None:
    x, r = db_unit(two_field_scene(64, 4, seed=40))
    assert math.isnan(per_image(x, x)["enl_ratio"][0])  # no db_range: intensity unknown
    assert math.isnan(per_image(x, x, db_range=np.array([3.0, 3.0]))["enl_ratio"][0])
    assert math.isnan(per_image(x, x, valid=np.zeros_like(x), db_range=r)["enl_ratio"][0])
    assert math.isnan(per_image(x[:14, :20], x[:14, :20], db_range=r)["enl_ratio"][0])  # smaller than a box
    # Heavy texture everywhere (K-like: gamma texture times single-look speckle): nothing is homogeneous.
    rng = np.random.default_rng(41)
    textured = rng.gamma(0.3, 1 / 0.3, (64, 64)) * rng.exponential(1.0, (64, 64))
    xt, rt = db_unit(textured)
    assert math.isnan(per_image(xt, xt, db_range=rt)["enl_ratio"][0])


def test_enl_ratio_with_dark_clipped_areas_stays_bounded() -> None:
    # A dark no-return area clipped to x = 0 (not marked invalid), as in issue 10's 6.8e32 case.
    intensity = two_field_scene(128, 2, seed=50)
    intensity[:, :40] = 1e-9
    x, r = db_unit(intensity, low=20.0)  # the 20th percentile falls inside the dark area: it clips to 0
    assert (x[:, :40] == 0).all()
    y = x.copy()
    y[:, :40] = 0.02 + 0.01 * np.random.default_rng(51).random((128, 40))  # the model invents texture there
    ratio = per_image(x, y, db_range=r)["enl_ratio"][0]
    assert ratio == pytest.approx(1.0, abs=0.05)  # the clipped boxes are not homogeneous regions
    assert 0 < per_image(x, np.full_like(x, 0.01), db_range=r)["enl_ratio"][0] < enl_cap(r)


def test_enl_ratio_through_the_piecewise_knots() -> None:
    """The current per-image map (dB knots at KNOT_X): ENL is taken on the intensity the knots give back,
    so known looks come out as before, and the torch metric equals the numpy/scipy reference."""
    xs, ys, ks = [], [], []
    for i, (looks_in, looks_out) in enumerate(((4, 16), (1, 4), (2, 2))):
        x, valid, knots = normalize_db(two_field_scene(128, looks_in, seed=70 + i))
        assert valid.all() and len(knots) == len(KNOT_X)
        db_out = 10 * np.log10(two_field_scene(128, looks_out, seed=80 + i))
        xs.append(x), ys.append(np.interp(db_out, knots, KNOT_X)), ks.append(knots)
    x, y, k = (np.stack(a) for a in (xs, ys, ks))
    got = per_image(x, y, db_range=k)["enl_ratio"]
    assert got[0] == pytest.approx(4.0, rel=0.12) and got[1] == pytest.approx(4.0, rel=0.15)
    assert got[2] == pytest.approx(1.0, rel=0.1)
    assert per_image(x[0], x[0], db_range=k[0])["enl_ratio"][0] == pytest.approx(1.0, abs=1e-12)
    ref = sar_metrics_reference(x[:, None], y[:, None], (3, 16, 4, 4), None, k)["enl_ratio"]
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    with pytest.raises(ValueError, match="2 dB values"):
        per_image(x, y, db_range=k[:, :3])


def sar_cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Input, reconstruction, valid mask and dB range of varied batches (masks, clipping, 1 to 8 looks)."""
    rng = np.random.default_rng(60)
    xs, ys, vs, rs = [], [], [], []
    for i, looks in enumerate((1, 2, 4, 8)):
        scene = np.kron(rng.random((6, 6)) + 0.2, np.ones((12, 12)))[:70, :70]
        x, r = db_unit(scene * rng.gamma(looks, 1 / looks, scene.shape))
        y = np.clip(ndimage.gaussian_filter(x, 0.7 * i) + 0.03 * rng.standard_normal(x.shape), 0, 1)
        v = np.ones_like(x)
        if i == 1:
            v[:, :9] = 0  # a no-data border
        if i == 2:
            v[30:40, 30:40] = 0  # a hole
        xs.append(x), ys.append(y), vs.append(v), rs.append(r)
    return [np.stack(a)[:, None] if a[0].ndim == 2 else np.stack(a) for a in (xs, ys, vs, rs)]


def test_sar_metrics_per_image_match_the_numpy_reference() -> None:
    # Tolerance: 1e-9 absolute (both float64; they differ only by the order of the sums).
    x, y, v, r = sar_cases()
    z = torch.zeros(4, 16, 4, 4)
    got = sar_metrics_per_image(torch.from_numpy(x).float(), torch.from_numpy(y).float(), z, v, r)
    ref = sar_metrics_reference(torch.from_numpy(x).float(), torch.from_numpy(y).float(), z, v, r)
    assert (
        set(got)
        == set(ref)
        == {"psnr", "psnr_db", "psnr_8bit", "ssim", "enl_ratio", "epi", "mse", "bpp_float32", "bpp_8bit"}
    )
    for key, value in got.items():
        assert value.dtype == torch.float64 and value.shape == (4,), key
        assert np.isfinite(ref[key]).all(), key
        np.testing.assert_allclose(value.numpy(), ref[key], rtol=1e-9, atol=1e-9, err_msg=key)
    # Without a mask, SSIM is the skimage / pytorch_msssim value and EPI the reference's.
    full = sar_metrics_per_image(torch.from_numpy(x), torch.from_numpy(y), z)
    for i in range(4):
        sk = structural_similarity(
            x[i, 0], y[i, 0], data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert float(full["ssim"][i]) == pytest.approx(sk, abs=1e-7)
        assert float(full["epi"][i]) == pytest.approx(epi(x[i, 0], y[i, 0]), abs=1e-12)
        assert float(full["psnr"][i]) == pytest.approx(psnr(x[i : i + 1], y[i : i + 1]), abs=1e-9)
    assert math.isnan(full["enl_ratio"][0])  # no db_range given


def test_invalid_pixels_never_count() -> None:
    x, y, v, r = sar_cases()
    z = (4, 16, 4, 4)
    base = sar_metrics_per_image(torch.from_numpy(x), torch.from_numpy(y), z, v, r)
    rng = np.random.default_rng(61)
    garbage = np.where(v > 0, y, rng.random(y.shape))
    garbage_x = np.where(v > 0, x, 0.0)
    other = sar_metrics_per_image(torch.from_numpy(garbage_x), torch.from_numpy(garbage), z, v, r)
    for key in base:
        np.testing.assert_allclose(base[key].numpy(), other[key].numpy(), rtol=1e-12, err_msg=key)
    assert float(base["psnr"][1]) != pytest.approx(
        float(sar_metrics_per_image(torch.from_numpy(x), torch.from_numpy(garbage), z, None, r)["psnr"][1]),
        abs=1e-3,
    )


def test_sar_metrics_is_the_nan_ignoring_mean() -> None:
    x, y, v, r = sar_cases()
    v[3] = 0  # the last image has no valid pixel: every value missing
    per = sar_metrics_per_image(torch.from_numpy(x), torch.from_numpy(y), (4, 16, 4, 4), v, r)
    assert all(math.isnan(float(per[k][3])) for k in ("psnr", "ssim", "enl_ratio", "epi", "mse"))
    means = sar_metrics(torch.from_numpy(x), torch.from_numpy(y), torch.zeros(4, 16, 4, 4), v, r)
    assert all(isinstance(val, float) for val in means.values())
    for key, val in means.items():
        assert val == pytest.approx(float(np.nanmean(per[key].numpy())), rel=1e-12), key
    assert means["bpp_float32"] == 32 * 256 / 4900 and means["bpp_8bit"] == 8 * 256 / 4900


def test_sar_metrics_reject_bad_inputs() -> None:
    x = torch.rand(2, 1, 32, 32)
    z = torch.zeros(2, 4, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        sar_metrics(x, x[:, :, :30], z)
    with pytest.raises(ValueError, match="single-channel"):
        sar_metrics(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), z)
    with pytest.raises(ValueError, match="latent"):
        sar_metrics(x, x, torch.zeros(3, 4, 4, 4))
    with pytest.raises(ValueError, match="valid"):
        sar_metrics(x, x, z, valid=torch.ones(2, 1, 16, 16))
    with pytest.raises(ValueError, match="db_range"):
        sar_metrics(x, x, z, db_range=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="finite"):
        sar_metrics(x, torch.full_like(x, math.nan), z)
    with pytest.raises(ValueError, match="at least 11x11"):
        sar_metrics(x[..., :8, :8], x[..., :8, :8], z)


def test_epi_identity_blur_monotone_and_reference() -> None:
    rng = np.random.default_rng(13)
    scene = np.kron(rng.random((8, 8)), np.ones((8, 8)))  # blocks with sharp edges
    image = scene * speckle((64, 64), 8, seed=14, level=1.0)
    assert epi(image, image) == pytest.approx(1.0, abs=1e-12)
    scores = [epi(image, ndimage.gaussian_filter(image, s)) for s in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False)) and scores[0] < 1.0
    # Independent computation with np.corrcoef on a batch of two.
    other = ndimage.gaussian_filter(image, 1.0) + 0.05 * rng.standard_normal(image.shape)
    ref = [
        np.corrcoef(ndimage.laplace(a).ravel(), ndimage.laplace(b).ravel())[0, 1]
        for a, b in ((image, image), (image, other))
    ]
    batch_in = torch.from_numpy(np.stack([image, image])[:, None])
    batch_out = torch.from_numpy(np.stack([image, other])[:, None])
    assert epi(batch_in, batch_out) == pytest.approx(np.mean(ref), abs=1e-12)
    assert epi(image, np.full_like(image, 0.5)) == 0.0  # every edge lost
    assert math.isnan(epi(np.full((16, 16), 0.5), image[:16, :16]))  # no edge to preserve


# ------------------------------------------------------------------------------------------ bpp / bundle


def test_latent_bits_per_pixel() -> None:
    # SAR: 256*256 pixels -> 16*16*16 latent values: compression ratio 16, 32/16 = 2 bpp as float32.
    assert latent_bits_per_pixel((16, 16, 16), (1, 256, 256)) == 2.0
    assert latent_bits_per_pixel((16, 16, 16), (1, 256, 256), bits=8) == 0.5
    assert latent_bits_per_pixel((4, 16, 16, 16), (4, 1, 256, 256), bits=8) == 0.5
    assert latent_bits_per_pixel((8, 4, 4), (32, 32)) == 32 * 128 / 1024
    with pytest.raises(ValueError, match="batch size"):
        latent_bits_per_pixel((3, 16, 16, 16), (4, 1, 256, 256))
    with pytest.raises(ValueError, match="bits"):
        latent_bits_per_pixel((16, 16, 16), (1, 256, 256), bits=0)


# ----------------------------------------------------------------------------------------------- audio


def test_spectral_metrics_zero_for_identical_and_scale_closed_form() -> None:
    rng = np.random.default_rng(16)
    wave = rng.standard_normal(8192)
    assert spectral_convergence(wave, wave) == 0.0
    assert log_spectral_distance(wave, wave) == 0.0
    # |S_est| = |S| / 2: SC = 1/2 exactly and every bin differs by 20*log10(2) dB.
    assert spectral_convergence(wave, 0.5 * wave) == pytest.approx(0.5, abs=1e-12)
    assert log_spectral_distance(wave, 0.5 * wave) == pytest.approx(20 * math.log10(2.0), abs=1e-6)


def test_spectral_convergence_grows_with_noise() -> None:
    rng = np.random.default_rng(17)
    t = np.arange(16384) / 16000
    tone = np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 1320 * t)
    noise = rng.standard_normal(t.shape)
    sc = [spectral_convergence(tone, tone + a * noise) for a in (0.01, 0.1, 0.5)]
    lsd = [log_spectral_distance(tone, tone + a * noise) for a in (0.01, 0.1, 0.5)]
    assert 0 < sc[0] < sc[1] < sc[2]
    assert 0 < lsd[0] < lsd[1] < lsd[2]


def test_spectral_metrics_hand_computed_tiny_example() -> None:
    # n_fft 4, hop 2, centred with 2 zeros each side; periodic Hann [0, .5, 1, .5].
    # ref = impulse at 0: frames [0,0,1,0] -> |X| = [1,1,1]; [1,0,0,0] -> 0; [0,0,0,0] -> 0.
    # est = impulse at 1: frames [0,0,0,1] -> |X| = [.5,.5,.5]; [0,1,0,0] -> [.5,.5,.5]; zeros.
    ref = np.array([1.0, 0.0, 0.0, 0.0])
    est = np.array([0.0, 1.0, 0.0, 0.0])
    # SC = sqrt(6 * 0.25) / sqrt(3) = sqrt(1/2).
    assert spectral_convergence(ref, est, n_fft=4, hop_length=2) == pytest.approx(math.sqrt(0.5), abs=1e-12)
    # Textbook form: frame dB gaps 10log10(1/0.25) = 6.02 and 10log10(0.25/1e-10) = 93.98, then 0: 100/3.
    assert log_spectral_distance(ref, est, n_fft=4, hop_length=2, floor_db=None) == pytest.approx(
        100 / 3, abs=1e-6
    )
    # Default: powers floored 80 dB below the reference's peak (1): the second gap is 10log10(0.25/1e-8).
    assert log_spectral_distance(ref, est, n_fft=4, hop_length=2) == pytest.approx(80 / 3, abs=1e-6)


def test_spectral_metrics_batch_cropping_and_bad_input() -> None:
    rng = np.random.default_rng(18)
    a, b = rng.standard_normal((2, 4096)), rng.standard_normal((2, 4096))
    per_clip = [spectral_convergence(a[i], b[i], n_fft=512, hop_length=128) for i in range(2)]
    assert spectral_convergence(a, b, n_fft=512, hop_length=128) == pytest.approx(np.mean(per_clip))
    longer = np.concatenate([b, rng.standard_normal((2, 100))], axis=1)  # extra tail is ignored
    assert log_spectral_distance(torch.from_numpy(a), longer, n_fft=512, hop_length=128) == pytest.approx(
        log_spectral_distance(a, b, n_fft=512, hop_length=128)
    )
    assert math.isnan(spectral_convergence(np.zeros(4096), b[0]))  # silent reference: undefined
    # Nearly silent (-180 dBFS): the ratio would read ~1e9 for an ordinary estimate; it is missing instead.
    assert math.isnan(spectral_convergence(1e-9 * a[0], b[0]))
    kw = {"n_fft": 512, "hop_length": 128}
    assert spectral_convergence(np.stack([1e-9 * a[0], a[1]]), b, **kw) == pytest.approx(per_clip[1])
    assert 0 < log_spectral_distance(1e-9 * a[0], b[0]) < 300  # eps bounds the log-power gap
    with pytest.raises(ValueError, match="too short"):
        spectral_convergence(a[0, :100], b[0, :100])
    with pytest.raises(ValueError, match="same number of clips"):
        spectral_convergence(a, b[:1])
    with pytest.raises(ValueError, match="NaN"):
        log_spectral_distance(a[0], np.full(4096, np.nan))


def test_feature_mse() -> None:
    rng = np.random.default_rng(19)
    a, b = rng.random((2, 2, 8, 6)), rng.random((2, 2, 8, 6))
    assert feature_mse(a, b) == pytest.approx(np.mean((a - b) ** 2), rel=1e-12)
    assert feature_mse(torch.from_numpy(a).float(), b) == pytest.approx(np.mean((a - b) ** 2), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        feature_mse(a, b[:1])


# ------------------------------------------------------------------------------------------- fragments


def test_one_flipped_bit() -> None:
    clean = np.random.default_rng(20).integers(0, 256, size=(1, 1, 512), dtype=np.uint8)
    repaired = clean.copy()
    repaired[0, 0, 100] ^= 0b0001_0000
    assert bit_error_rate(clean, repaired) == 1 / (8 * 512)
    assert byte_accuracy(clean, repaired) == 511 / 512
    assert bit_error_rate(np.array([0x00]), np.array([0xFF])) == 1.0
    assert bit_error_rate(torch.from_numpy(clean), torch.from_numpy(clean)) == 0.0


def test_byte_accuracy_with_mask() -> None:
    clean = np.array([1, 2, 3, 4], dtype=np.uint8)
    repaired = torch.tensor([1, 9, 3, 9], dtype=torch.int64)
    assert byte_accuracy(clean, repaired) == 0.5
    assert byte_accuracy(clean, repaired, np.array([True, True, True, False])) == pytest.approx(2 / 3)
    assert byte_accuracy(clean, repaired, torch.tensor([0, 1, 0, 1])) == 0.0
    assert math.isnan(byte_accuracy(clean, repaired, np.zeros(4, dtype=bool)))


def test_fragment_metrics_hand_computed() -> None:
    clean = np.array([10, 20, 30, 40, 50, 60, 70, 80], dtype=np.uint8)
    corrupted = clean.copy()
    corrupted[1] = 21  # one bit flipped (20 = 0b10100)
    corrupted[3] = 255  # 40 = 0b00101000 -> 6 bits wrong
    changed = np.zeros(8, dtype=bool)
    changed[[1, 3, 5]] = True  # byte 5 was "substituted" by its own value
    repaired = clean.copy()
    repaired[3] = 41  # still wrong, by one bit
    repaired[7] = 81  # an intact byte broken, by one bit
    m = fragment_metrics(clean, corrupted, repaired, changed)
    assert m == pytest.approx(
        {
            "accuracy": 6 / 8,
            "accuracy_corrupted": 2 / 3,
            "identity_accuracy": 6 / 8,
            "identity_accuracy_corrupted": 1 / 3,
            "ber": 2 / 64,
            "identity_ber": 7 / 64,
            "fixed_fraction": 1 / 2,
            "broken_fraction": 1 / 6,
        }
    )
    derived = fragment_metrics(clean, corrupted, repaired)  # changed = corrupted != clean
    assert derived["accuracy_corrupted"] == 1 / 2 and derived["identity_accuracy_corrupted"] == 0.0


def test_to_bytes_round_trip_and_fragment_bad_input() -> None:
    every = np.arange(256, dtype=np.uint8)
    assert (to_bytes(torch.from_numpy(every).float() / 255.0) == every).all()
    assert (to_bytes(np.array([-0.2, 1.3])) == [0, 255]).all()
    with pytest.raises(ValueError, match="to_bytes"):
        byte_accuracy(every / 255.0, every)
    with pytest.raises(ValueError, match="0..255"):
        byte_accuracy(np.array([0, 256]), np.array([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        bit_error_rate(every, every[:10])
    with pytest.raises(ValueError, match="boolean"):
        byte_accuracy(every, every, np.full(256, 2))
    with pytest.raises(ValueError, match="at least one byte"):
        byte_accuracy(np.array([], dtype=np.uint8), np.array([], dtype=np.uint8))


def test_fragment_metrics_per_fragment_and_pooled_agree_with_the_numpy_parts() -> None:
    rng = np.random.default_rng(70)
    clean = rng.integers(0, 256, (6, 512), dtype=np.uint8)
    corrupted = clean.copy()
    hit = rng.random(clean.shape) < 0.05
    hit[5] = False  # one fragment the noise left alone: its corrupted-byte figures are missing
    corrupted[hit] = rng.integers(0, 256, int(hit.sum()), dtype=np.uint8)  # may redraw the same value
    repaired = np.where(rng.random(clean.shape) < 0.9, clean, corrupted).astype(np.uint8)
    per = fragment_metrics_per_fragment(torch.from_numpy(clean), torch.from_numpy(corrupted), repaired, hit)
    for i in range(6):
        assert float(per["accuracy"][i]) == pytest.approx(byte_accuracy(clean[i], repaired[i]), abs=1e-15)
        assert float(per["ber"][i]) == pytest.approx(bit_error_rate(clean[i], repaired[i]), abs=1e-15)
        assert float(per["identity_ber"][i]) == pytest.approx(
            bit_error_rate(clean[i], corrupted[i]), abs=1e-15
        )
        single = fragment_metrics(clean[i], corrupted[i], repaired[i], hit[i])
        for key, value in single.items():
            assert float(per[key][i]) == pytest.approx(value, abs=1e-15, nan_ok=True), key
    assert math.isnan(float(per["accuracy_corrupted"][5])) and math.isnan(float(per["fixed_fraction"][5]))
    # Pooled over the batch: byte-weighted, the same as the numpy byte_accuracy over every byte.
    pooled = fragment_metrics(
        torch.from_numpy(clean), torch.from_numpy(corrupted), torch.from_numpy(repaired)
    )
    assert pooled["accuracy"] == pytest.approx(byte_accuracy(clean, repaired), abs=1e-15)
    assert pooled["accuracy_corrupted"] == pytest.approx(byte_accuracy(clean, repaired, corrupted != clean))
    assert pooled["ber"] == pytest.approx(bit_error_rate(clean, repaired), abs=1e-15)
    assert all(0.0 <= v <= 1.0 for v in pooled.values())
    with pytest.raises(ValueError, match="integer byte values"):
        fragment_metrics(
            torch.rand(2, 8), torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, 8, dtype=torch.uint8)
        )
    with pytest.raises(ValueError, match="mask shape"):
        fragment_metrics(clean, corrupted, repaired, torch.zeros(3, 3, dtype=torch.bool))
