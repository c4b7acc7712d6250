"""Quality metrics for SAR reconstructions in the normalised [0, 1] domain the models see.

Images are batches ``(B, 1, H, W)``; the local-statistics metrics (ENL, EPI) also take a single ``(H, W)``
image or a ``(B, H, W)`` stack, as torch tensors or numpy arrays. Every metric is computed per image and
then averaged over the batch, so a batch of one image and the image itself give the same number.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _msssim_ssim
from scipy import ndimage

ArrayLike = np.ndarray | torch.Tensor

#: PSNR reported for identical images (MSE = 0) and the ceiling for any other value, so that averages
#: and logged values stay finite. 100 dB is far above anything a lossy 8-bit-scale codec reaches.
PSNR_CAP_DB = 100.0

# Gaussian SSIM window of Wang et al. (2004), the same as skimage's gaussian_weights=True.
SSIM_WIN_SIZE = 11
SSIM_WIN_SIGMA = 1.5

# Floor on the speckle variance in the ENL ratio: the variance of rounding to 8 bits, (1/255)^2/12, in the
# normalised [0, 1] domain. Texture below it cannot be shown on an 8-bit display, so an output that flat
# counts as perfectly smooth; it keeps the ratio of a constant reconstruction finite (a few thousand for a
# 4-look input) instead of infinite, and loud enough to flag the over-smoothing.
ENL_VAR_FLOOR = (1.0 / 255.0) ** 2 / 12.0


def _as_tensor(a: ArrayLike, name: str) -> torch.Tensor:
    """Detached tensor of a tensor (kept on its device) or a real-valued numpy array (as float64)."""
    if isinstance(a, torch.Tensor):
        if a.is_complex() or a.dtype == torch.bool:
            raise ValueError(f"{name}: expected a real-valued image, got dtype {a.dtype}")
        return a.detach()
    return torch.from_numpy(_as_float64(a, name))


def _check_batch_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what}: expected image batches of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(
            f"{what}: the two batches must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"{what}: expected non-empty image batches, got shape {tuple(x.shape)}")


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _check_data_range(data_range: float) -> None:
    if not (_is_real(data_range) and data_range > 0):
        raise ValueError(f"data_range: expected a positive finite number, got {data_range!r}")


def _as_float64(a: ArrayLike, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        if a.is_complex() or a.dtype == torch.bool:
            raise ValueError(f"{name}: expected a real-valued image, got dtype {a.dtype}")
        return a.detach().cpu().double().numpy()
    if isinstance(a, np.ndarray):
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise ValueError(f"{name}: expected a real-valued image, got dtype {a.dtype}")
        return a.astype(np.float64)
    raise ValueError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(a).__name__}")


def _as_image_stack(a: ArrayLike, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Float64 ``(N, H, W)`` stack from ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``, and the input shape."""
    arr = _as_float64(a, name)
    shape = arr.shape
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 4:
        if arr.shape[1] != 1:
            raise ValueError(f"{name}: expected single-channel images (B, 1, H, W), got shape {shape}")
        arr = arr[:, 0]
    elif arr.ndim != 3:
        raise ValueError(
            f"{name}: expected an image (H, W), a stack (B, H, W) or a batch (B, 1, H, W), got shape {shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: expected non-empty images, got shape {shape}")
    return arr, shape


def _check_window(window: int, cv_threshold: float) -> None:
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise ValueError(f"window: expected a positive integer box size, got {window!r}")
    if not (_is_real(cv_threshold) and cv_threshold > 0):
        raise ValueError(f"cv_threshold: expected a positive number, got {cv_threshold!r}")


def _local_moments(stack: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and (population) variance in a window x window box, per image of an (N, H, W) stack."""
    size = (1, window, window)
    mean = ndimage.uniform_filter(stack, size=size, mode="reflect")
    mean_sq = ndimage.uniform_filter(stack * stack, size=size, mode="reflect")
    # E[x^2] - E[x]^2 can dip below zero by rounding on flat areas.
    return mean, np.maximum(mean_sq - mean * mean, 0.0)


# --------------------------------------------------------------------------------------------- PSNR / SSIM


def _psnr_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    psnr = 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 -> +inf, capped below
    return psnr.clamp(max=PSNR_CAP_DB)


def psnr(x: ArrayLike, y: ArrayLike, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, 10*log10(R^2/MSE) per image, averaged over the batch.

    Per-image averaging (not the PSNR of the pooled MSE) matches how the seeds report it. Identical images
    give ``PSNR_CAP_DB`` (100 dB) rather than inf; every value is capped there.
    """
    xt, yt = _as_tensor(x, "x"), _as_tensor(y, "y")
    _check_batch_pair(xt, yt, "psnr")
    _check_data_range(data_range)
    return float(_psnr_per_image(xt, yt, float(data_range)).mean())


def quantize_8bit(x: ArrayLike) -> torch.Tensor:
    """round(v*255)/255 after clipping to [0, 1], i.e. what an 8-bit image file would store."""
    xt = _as_tensor(x, "x").double()
    return torch.round(xt.clamp(0.0, 1.0) * 255.0) / 255.0


def psnr_8bit(x: ArrayLike, y: ArrayLike) -> float:
    """PSNR (data range 1) after rounding both batches to 8 bits, as if saved to 8-bit image files."""
    xt, yt = _as_tensor(x, "x"), _as_tensor(y, "y")
    _check_batch_pair(xt, yt, "psnr_8bit")
    return float(_psnr_per_image(quantize_8bit(xt), quantize_8bit(yt), 1.0).mean())


def _check_ssim_size(x: torch.Tensor) -> None:
    if x.shape[-2] < SSIM_WIN_SIZE or x.shape[-1] < SSIM_WIN_SIZE:
        raise ValueError(
            f"ssim: images must be at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} pixels for the "
            f"{SSIM_WIN_SIZE}-tap Gaussian window, got {tuple(x.shape[-2:])}"
        )


def ssim_tensor(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Differentiable mean SSIM (Gaussian window 11, sigma 1.5) as a 0-d tensor, for training losses."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("ssim_tensor: expected two torch.Tensor batches (B, C, H, W)")
    _check_batch_pair(x, y, "ssim_tensor")
    _check_ssim_size(x)
    _check_data_range(data_range)
    if not x.is_floating_point() or not y.is_floating_point():
        raise ValueError(f"ssim_tensor: expected floating-point images, got {x.dtype} and {y.dtype}")
    return _msssim_ssim(
        x, y, data_range=data_range, size_average=True, win_size=SSIM_WIN_SIZE, win_sigma=SSIM_WIN_SIGMA
    )


def ssim(x: ArrayLike, y: ArrayLike, data_range: float = 1.0) -> float:
    """Mean SSIM over the batch (Gaussian window 11, sigma 1.5, K = 0.01, 0.03; valid region only).

    Computed in float64 so that it agrees with skimage's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``, which also averages over the window-valid interior.
    """
    xt, yt = _as_tensor(x, "x"), _as_tensor(y, "y")
    _check_batch_pair(xt, yt, "ssim")
    with torch.no_grad():
        return float(ssim_tensor(xt.double(), yt.double(), data_range=data_range))


def sar_loss(
    x_hat: torch.Tensor, x: torch.Tensor, mse_weight: float = 0.7, ssim_weight: float = 0.3
) -> torch.Tensor:
    """Training loss mse_weight*MSE + ssim_weight*(1 - SSIM) on [0, 1] images (SPEC: 0.7 / 0.3)."""
    if not isinstance(x_hat, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise ValueError("sar_loss: expected two torch.Tensor batches (B, 1, H, W)")
    _check_batch_pair(x_hat, x, "sar_loss")
    for name, w in (("mse_weight", mse_weight), ("ssim_weight", ssim_weight)):
        if not (_is_real(w) and w >= 0):
            raise ValueError(f"{name}: expected a non-negative finite number, got {w!r}")
    return mse_weight * F.mse_loss(x_hat, x) + ssim_weight * (1.0 - ssim_tensor(x_hat, x, data_range=1.0))


# ----------------------------------------------------------------------------------------------- ENL / EPI


def enl(image: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Equivalent number of looks mean^2/var (population variance) over all or the masked pixels.

    For L-look intensity speckle over a constant reflectivity this estimates L. Returns nan for an empty
    mask and inf for a constant non-zero region (zero variance).
    """
    values = _as_float64(image, "image")
    if values.size == 0:
        raise ValueError("enl: expected a non-empty image")
    if mask is not None:
        if not isinstance(mask, np.ndarray | torch.Tensor):
            raise ValueError(f"enl: expected a boolean numpy/torch mask, got {type(mask).__name__}")
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask
        if m.dtype != np.bool_:
            raise ValueError(f"enl: expected a boolean mask, got dtype {m.dtype}")
        if m.shape != values.shape:
            raise ValueError(f"enl: mask shape {m.shape} must match the image shape {values.shape}")
        values = values[m]
        if values.size == 0:
            return float("nan")
    mean, var = values.mean(), values.var()
    if var == 0.0:
        return float("nan") if mean == 0.0 else float("inf")
    return float(mean * mean / var)


def homogeneous_mask(image: ArrayLike, window: int = 15, cv_threshold: float = 0.3) -> np.ndarray:
    """Pixels whose local coefficient of variation std/mean in a window x window box is below the threshold.

    Accepts (H, W), (B, H, W) or (B, 1, H, W) and returns a boolean array of the same shape; the box never
    mixes images of a batch (edges reflect). Pixels with a non-positive local mean are never homogeneous,
    since their CV is undefined.
    """
    _check_window(window, cv_threshold)
    stack, orig_shape = _as_image_stack(image, "image")
    mean, var = _local_moments(stack, int(window))
    positive = mean > 0
    cv = np.sqrt(var, out=np.full_like(var, np.inf), where=positive) / np.where(positive, mean, 1.0)
    return (positive & (cv < cv_threshold)).reshape(orig_shape)


def enl_ratio(inp: ArrayLike, recon: ArrayLike, window: int = 15, cv_threshold: float = 0.3) -> float:
    """ENL(recon) / ENL(input) over the pixels that are homogeneous in the input (SPEC target 0.7-1.3).

    ENL = mean^2 / var over the homogeneous pixels, where both moments are pooled from the window x window
    boxes centred on those pixels (the same boxes that decided homogeneity, and the same boxes in the
    reconstruction): mean^2 is the average squared local mean and var the average local variance. Pooling
    within boxes keeps brightness differences between separate homogeneous regions from counting as speckle,
    and pooling the moments before dividing (not averaging per-box ENLs) keeps a few nearly flat boxes from
    dominating: per-box ENL is unbounded as a box's variance goes to zero. Variances are floored at
    ``ENL_VAR_FLOOR`` (8-bit rounding noise in the [0, 1] domain). Computed per image and averaged over the
    batch; images with no homogeneous pixel are skipped, nan when none has one. Above 1 the reconstruction
    is smoother than the input (speckle removed), below 1 it is noisier.
    """
    _check_window(window, cv_threshold)
    x, _ = _as_image_stack(inp, "inp")
    y, _ = _as_image_stack(recon, "recon")
    if x.shape != y.shape:
        raise ValueError(f"enl_ratio: inp and recon must have the same shape, got {x.shape} and {y.shape}")
    mask = homogeneous_mask(x, window, cv_threshold)
    mean_x, var_x = _local_moments(x, int(window))
    mean_y, var_y = _local_moments(y, int(window))
    ratios = []
    for i in range(len(x)):
        m = mask[i]
        if not m.any():
            continue
        enl_x = np.mean(mean_x[i][m] ** 2) / max(float(np.mean(var_x[i][m])), ENL_VAR_FLOOR)
        enl_y = np.mean(mean_y[i][m] ** 2) / max(float(np.mean(var_y[i][m])), ENL_VAR_FLOOR)
        ratios.append(enl_y / enl_x)
    return float(np.mean(ratios)) if ratios else float("nan")


def epi(inp: ArrayLike, recon: ArrayLike) -> float:
    """Edge Preservation Index (Sattar et al. 1997): correlation of the Laplacians of input and recon.

    Per image, the Pearson correlation of ``scipy.ndimage.laplace`` of both, averaged over the batch. 1 means
    every edge kept. An image whose input has no edges (flat Laplacian) is skipped, since there is nothing
    to preserve; a reconstruction without edges (flat Laplacian) scores 0. nan when all images are skipped.
    """
    x, _ = _as_image_stack(inp, "inp")
    y, _ = _as_image_stack(recon, "recon")
    if x.shape != y.shape:
        raise ValueError(f"epi: inp and recon must have the same shape, got {x.shape} and {y.shape}")
    scores = []
    for xi, yi in zip(x, y, strict=True):
        lx = ndimage.laplace(xi).ravel()
        ly = ndimage.laplace(yi).ravel()
        lx, ly = lx - lx.mean(), ly - ly.mean()
        nx, ny = np.sqrt(lx @ lx), np.sqrt(ly @ ly)
        if nx == 0.0:
            continue
        scores.append(0.0 if ny == 0.0 else float(lx @ ly / (nx * ny)))
    return float(np.mean(scores)) if scores else float("nan")


# ------------------------------------------------------------------------------------------------- latent


def latent_bits_per_pixel(
    latent_shape: tuple[int, ...], image_shape: tuple[int, ...], bits: int = 32
) -> float:
    """Bits per image pixel spent on the latent: bits * latent values per image / (H * W).

    ``image_shape`` is (H, W), (C, H, W) or (B, C, H, W); with a batch, ``latent_shape`` must start with the
    same B, otherwise it is the latent of one image. Pixels are H*W whatever the channel count. The SAR
    latent (16, 16, 16) of a (1, 256, 256) image is 2.0 bpp as float32 and 0.5 bpp at 8 bits.
    """
    lat = tuple(int(d) for d in latent_shape)
    img = tuple(int(d) for d in image_shape)
    if not lat or any(d <= 0 for d in lat):
        raise ValueError(f"latent_shape: expected a non-empty shape of positive sizes, got {latent_shape!r}")
    if len(img) not in (2, 3, 4) or any(d <= 0 for d in img):
        raise ValueError(
            f"image_shape: expected (H, W), (C, H, W) or (B, C, H, W) with positive sizes, "
            f"got {image_shape!r}"
        )
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits <= 0:
        raise ValueError(f"bits: expected a positive integer, got {bits!r}")
    if len(img) == 4:
        if lat[0] != img[0] or len(lat) < 2:
            raise ValueError(
                f"latent_shape {latent_shape!r} must start with the batch size {img[0]} of "
                f"image_shape {image_shape!r}"
            )
        lat = lat[1:]
    return float(bits * math.prod(lat) / (img[-2] * img[-1]))


def sar_metrics(x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor) -> dict[str, float]:
    """All SAR validation metrics of one batch: input ``x``, reconstruction ``x_hat``, latent ``z``."""
    xt, yt = _as_tensor(x, "x"), _as_tensor(x_hat, "x_hat")
    _check_batch_pair(xt, yt, "sar_metrics")
    zt = _as_tensor(z, "z")
    if zt.ndim < 2 or zt.shape[0] != xt.shape[0]:
        raise ValueError(
            f"sar_metrics: latent z must be a batch with the same size {xt.shape[0]} as x, "
            f"got shape {tuple(zt.shape)}"
        )
    xn, yn = xt.cpu().double(), yt.cpu().double()
    return {
        "psnr": psnr(xn, yn),
        "psnr_8bit": psnr_8bit(xn, yn),
        "ssim": ssim(xn, yn),
        "enl_ratio": enl_ratio(xn, yn),
        "epi": epi(xn, yn),
        "bpp_float32": latent_bits_per_pixel(tuple(zt.shape), tuple(xt.shape), bits=32),
        "bpp_8bit": latent_bits_per_pixel(tuple(zt.shape), tuple(xt.shape), bits=8),
        "mse": float((xn - yn).pow(2).mean()),
    }
