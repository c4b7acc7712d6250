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

from trainers.data.sar import db_per_x, knot_x, x_to_db

ArrayLike = np.ndarray | torch.Tensor

#: PSNR reported for identical images (MSE = 0) and the ceiling for any other value, so that averages
#: and logged values stay finite. 100 dB is far above anything a lossy 8-bit-scale codec reaches.
PSNR_CAP_DB = 100.0

# Gaussian SSIM window of Wang et al. (2004), the same as skimage's gaussian_weights=True.
SSIM_WIN_SIZE = 11
SSIM_WIN_SIGMA = 1.5

# ENL ratio (see ``enl_ratio``): box size, the low quantile of the local CVs taken as the image's speckle CV,
# how far above it a box still counts as homogeneous, the largest share of clipped pixels a box may hold, the
# fewest usable boxes an estimate needs, and the roughest speckle CV accepted (single-look intensity speckle
# has CV 1; 25% above that no part of the image looks like speckle over a flat reflectivity).
ENL_WINDOW = 15
ENL_STRIDE = 4  # boxes on a 4-pixel grid: neighbours overlap by 11 pixels, denser sampling adds only time
ENL_CV_QUANTILE = 0.1
ENL_CV_MARGIN = 1.3
ENL_MAX_CLIPPED = 0.05
ENL_MIN_WINDOWS = 20
ENL_MAX_SPECKLE_CV = 1.25
#: The input's ENL over the boxes chosen must be at least this: fully developed speckle has ENL >= 1 (one
#: look); below it the boxes hold texture, not speckle over a flat reflectivity, and a ratio to it means
#: nothing (real crops gave 0.55-1.7; a flat output's ratio was then the 8-bit cap over that, issue 22).
ENL_MIN_INPUT = 0.9
#: PSNR in a fixed dB window (``psnr_db``): both images mapped back to dB with the input's own knots and
#: clipped to this window of sigma-nought, peak = its width. Unlike the per-image normalised PSNR (where one
#: unit of x spans 23-38 dB depending on the image), it compares across images and data sets of calibrated
#: sigma-nought; the brightest scatterers (above +5 dB) and the noise floor (below -25 dB) are clipped.
PSNR_DB_WINDOW = (-25.0, 5.0)

# EPI: a Laplacian with an RMS below this is flat (nothing to correlate); float rounding of a constant image's
# Laplacian stays far below it, the smallest 8-bit step (1/255) far above.
EPI_FLAT_RMS = 1e-10


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

    Per-image averaging (not the PSNR of the pooled MSE) is how image-compression results are
    usually reported. Identical images give ``PSNR_CAP_DB`` (100 dB) rather than inf; every value is
    capped there.
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
    """Training loss mse_weight*MSE + ssim_weight*(1 - SSIM) on [0, 1] images (defaults 0.7 / 0.3)."""
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


def _enl_max(db_span: float) -> float:
    """Largest ENL an 8-bit display of the normalised image can show: 1 / the relative variance floor.

    One 8-bit step of x is ``db_span/255`` dB, a relative intensity step of ``ln(10)/10 * db_span/255``;
    uniform rounding noise of that step has relative variance ``step^2/12``.
    """
    step = math.log(10.0) / 10.0 * db_span / 255.0
    return 12.0 / (step * step)


def _as_valid_stack(valid: ArrayLike | None, shape: tuple[int, ...], name: str = "valid") -> np.ndarray:
    """Boolean (N, H, W) no-data mask matching an image stack's (N, H, W) shape (all valid when None)."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    v, _ = _as_image_stack(valid, name)
    if v.shape != shape:
        raise ValueError(f"{name}: mask shape {v.shape} must match the images' shape {shape}")
    return v > 0.5


def _db_ranges(db_range: ArrayLike, n: int) -> np.ndarray:
    """Float64 (N, K) rows of dB knots (K = 2: the old affine [db_lo, db_hi]) from a (K,) or (N, K) array."""
    r = _as_float64(db_range, "db_range")
    if r.ndim == 1:
        r = np.broadcast_to(r, (n, r.shape[0]))
    if r.ndim != 2 or r.shape[0] != n:
        raise ValueError(f"db_range: expected shape (K,) or ({n}, K) of dB knots per image, got {r.shape}")
    knot_x(r.shape[1])  # a clear error for a K that is no map
    return r


def _enl_ratio_ref_one(x: np.ndarray, y: np.ndarray, valid: np.ndarray, knots: np.ndarray) -> float:
    """numpy/scipy reference of one image's ENL ratio (same rule as ``sar_metrics_per_image``)."""
    w, h = ENL_WINDOW, ENL_WINDOW // 2
    span = db_per_x(knots)
    if not math.isfinite(span) or min(x.shape) < w:
        return math.nan
    xs = knot_x(len(knots))  # intensity relative to the top knot, by np.interp (torch: x_to_db)
    ix = 10.0 ** ((np.interp(np.clip(x, 0, 1), xs, knots) - knots[-1]) / 10.0)
    iy = 10.0 ** ((np.interp(np.clip(y, 0, 1), xs, knots) - knots[-1]) / 10.0)

    def box(a: np.ndarray) -> np.ndarray:  # means of the boxes lying wholly inside the image
        out = ndimage.uniform_filter(a, size=w, mode="constant")[h : a.shape[0] - h, h : a.shape[1] - h]
        return out[::ENL_STRIDE, ::ENL_STRIDE]

    mx, my = box(ix), box(iy)
    vx, vy = np.maximum(box(ix * ix) - mx * mx, 0.0), np.maximum(box(iy * iy) - my * my, 0.0)
    usable = (box(valid.astype(np.float64)) > 1.0 - 1e-9) & (
        box(((x <= 0) | (x >= 1)).astype(np.float64)) <= ENL_MAX_CLIPPED
    )
    if usable.sum() < ENL_MIN_WINDOWS:
        return math.nan
    cv = np.sqrt(vx) / mx
    q = float(np.quantile(cv[usable], ENL_CV_QUANTILE, method="lower"))
    if q > ENL_MAX_SPECKLE_CV:
        return math.nan
    sel = usable & (cv <= ENL_CV_MARGIN * q)
    cap = _enl_max(span)
    enl_x = min(np.mean(mx[sel] ** 2) / max(np.mean(vx[sel]), 1e-300), cap)
    enl_y = min(np.mean(my[sel] ** 2) / max(np.mean(vy[sel]), 1e-300), cap)
    if enl_x < ENL_MIN_INPUT:
        return math.nan
    return float(enl_y / enl_x)


def _psnr_db_ref_one(x: np.ndarray, y: np.ndarray, valid: np.ndarray, knots: np.ndarray) -> float:
    """numpy reference of ``psnr_db``: dB by np.interp over the knots, clipped to the window."""
    if not np.isfinite(knots).all():
        return math.nan
    lo, hi = PSNR_DB_WINDOW
    xs = knot_x(len(knots))
    dx = np.clip(np.interp(np.clip(x, 0, 1), xs, knots), lo, hi)
    dy = np.clip(np.interp(np.clip(y, 0, 1), xs, knots), lo, hi)
    mse = float(np.mean((dx[valid] - dy[valid]) ** 2))
    return min(PSNR_CAP_DB, 10 * math.log10((hi - lo) ** 2 / mse)) if mse > 0 else PSNR_CAP_DB


def _epi_ref_one(x: np.ndarray, y: np.ndarray, valid: np.ndarray) -> float:
    cross = ndimage.generate_binary_structure(2, 1)
    m = ndimage.minimum_filter(valid, footprint=cross, mode="nearest")
    n = int(m.sum())
    if n == 0:
        return math.nan
    lx = ndimage.laplace(x)[m]
    ly = ndimage.laplace(y)[m]
    lx, ly = lx - lx.mean(), ly - ly.mean()
    sxx, syy = float(lx @ lx), float(ly @ ly)
    if sxx <= n * EPI_FLAT_RMS**2:
        return math.nan
    if syy <= n * EPI_FLAT_RMS**2:
        return 0.0
    return float(lx @ ly / math.sqrt(sxx * syy))


def _ssim_ref_one(x: np.ndarray, y: np.ndarray, valid: np.ndarray) -> float:
    coords = np.arange(SSIM_WIN_SIZE, dtype=np.float64) - SSIM_WIN_SIZE // 2
    g = np.exp(-(coords**2) / (2 * SSIM_WIN_SIGMA**2))
    g /= g.sum()
    h = SSIM_WIN_SIZE // 2

    def filt(a: np.ndarray) -> np.ndarray:  # Gaussian means of the windows lying wholly inside the image
        out = ndimage.correlate1d(
            ndimage.correlate1d(a, g, axis=0, mode="constant"), g, axis=1, mode="constant"
        )
        return out[h : a.shape[0] - h, h : a.shape[1] - h]

    c1, c2 = 0.01**2, 0.03**2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    full = ndimage.minimum_filter(valid, size=SSIM_WIN_SIZE, mode="constant", cval=False)
    full = full[h : x.shape[0] - h, h : x.shape[1] - h]
    return float(smap[full].mean()) if full.any() else math.nan


def sar_metrics_reference(
    x: ArrayLike,
    x_hat: ArrayLike,
    z: ArrayLike | tuple[int, ...],
    valid: ArrayLike | None = None,
    db_range: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """numpy/scipy reference of ``sar_metrics_per_image`` (a per-image loop; slow, for tests and checks).

    Same keys, definitions and masking, computed by a separate code path (scipy filters instead of torch
    convolutions and pooling), so the two checking each other catches an error in either.
    """
    xs, shape = _as_image_stack(x, "x")
    ys, _ = _as_image_stack(x_hat, "x_hat")
    if xs.shape != ys.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {xs.shape} and {ys.shape}")
    vs = _as_valid_stack(valid, xs.shape)
    n = len(xs)
    ranges = None if db_range is None else _db_ranges(db_range, n)
    zshape = tuple(z) if isinstance(z, tuple) else tuple(_as_tensor(z, "z").shape)
    keys = ("psnr", "psnr_db", "psnr_8bit", "ssim", "enl_ratio", "epi", "mse")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(n):
        xi, yi, vi = xs[i], ys[i], vs[i]
        if not vi.any():
            for values in out.values():
                values.append(math.nan)
            continue
        mse = float(np.mean((xi[vi] - yi[vi]) ** 2))
        q = np.round(np.clip(xi, 0, 1) * 255) / 255 - np.round(np.clip(yi, 0, 1) * 255) / 255
        mse8 = float(np.mean(q[vi] ** 2))
        out["mse"].append(mse)
        out["psnr"].append(min(PSNR_CAP_DB, 10 * math.log10(1 / mse)) if mse > 0 else PSNR_CAP_DB)
        out["psnr_8bit"].append(min(PSNR_CAP_DB, 10 * math.log10(1 / mse8)) if mse8 > 0 else PSNR_CAP_DB)
        out["ssim"].append(_ssim_ref_one(xi, yi, vi))
        out["epi"].append(_epi_ref_one(xi, yi, vi))
        knots = np.full(2, math.nan) if ranges is None else ranges[i]
        out["enl_ratio"].append(_enl_ratio_ref_one(xi, yi, vi, knots))
        out["psnr_db"].append(_psnr_db_ref_one(xi, yi, vi, knots))
    result = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    for key, bits in (("bpp_float32", 32), ("bpp_8bit", 8)):
        result[key] = np.full(n, latent_bits_per_pixel(zshape, (n, 1, *shape[-2:]), bits=bits))
    return result


def enl_ratio(inp: ArrayLike, recon: ArrayLike, db_range: ArrayLike, valid: ArrayLike | None = None) -> float:
    """ENL(recon) / ENL(input) on intensity, NaN-ignoring mean over the batch (numpy/scipy reference).

    See ``sar_metrics_per_image`` for the definition; NaN when no image has a usable homogeneous region.
    """
    x, _ = _as_image_stack(inp, "inp")
    y, _ = _as_image_stack(recon, "recon")
    if x.shape != y.shape:
        raise ValueError(f"enl_ratio: inp and recon must have the same shape, got {x.shape} and {y.shape}")
    v = _as_valid_stack(valid, x.shape)
    r = _db_ranges(db_range, len(x))
    vals = [_enl_ratio_ref_one(x[i], y[i], v[i], r[i]) for i in range(len(x))]
    return _nanmean(vals)


def epi(inp: ArrayLike, recon: ArrayLike, valid: ArrayLike | None = None) -> float:
    """Edge Preservation Index (Sattar et al. 1997): correlation of the Laplacians of input and recon.

    Per image, the Pearson correlation of ``scipy.ndimage.laplace`` (edges reflected) of both over the pixels
    whose Laplacian sees only valid pixels, NaN-ignoring mean over the batch. 1 means every edge kept. An
    image whose input has no edges (flat Laplacian) is skipped, since there is nothing to preserve; a
    reconstruction without edges scores 0. nan when all images are skipped.
    """
    x, _ = _as_image_stack(inp, "inp")
    y, _ = _as_image_stack(recon, "recon")
    if x.shape != y.shape:
        raise ValueError(f"epi: inp and recon must have the same shape, got {x.shape} and {y.shape}")
    v = _as_valid_stack(valid, x.shape)
    return _nanmean([_epi_ref_one(x[i], y[i], v[i]) for i in range(len(x))])


def _nanmean(values: list[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


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


# ------------------------------------------------------------------------------ on the device, per image

SAR_METRIC_KEYS: tuple[str, ...] = (
    "psnr",
    "psnr_8bit",
    "ssim",
    "enl_ratio",
    "epi",
    "mse",
    "bpp_float32",
    "bpp_8bit",
)


def _batch(a: ArrayLike, name: str) -> torch.Tensor:
    t = _as_tensor(a, name)
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(
            f"{name}: expected a batch of single-channel images (B, 1, H, W), got {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ValueError(f"{name}: expected non-empty images, got shape {tuple(t.shape)}")
    return t


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean of ``values`` over ``mask`` (both (B, 1, h, w)) and the count; NaN for a count of 0."""
    m = mask.to(values.dtype)
    n = m.flatten(1).sum(1)
    total = (values * m).flatten(1).sum(1)
    return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, math.nan)), n


def _psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    psnr = 10.0 * torch.log10(1.0 / mse)  # mse == 0 -> inf, capped below; NaN stays NaN
    return psnr.clamp(max=PSNR_CAP_DB)


def _filter_valid(t: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable filter of (..., H, W) with the same taps along both axes, 'valid' windows only.

    Written as a sum of shifted slices rather than a convolution: float64 convolutions have no fast CPU
    kernel, and 11 fused multiply-adds per axis are as fast as one on a GPU.
    """
    g = [float(v) for v in taps]
    k = len(g)
    h, w = t.shape[-2] - k + 1, t.shape[-1] - k + 1
    rows = t[..., 0:h, :] * g[0]
    for i in range(1, k):
        rows.add_(t[..., i : i + h, :], alpha=g[i])
    out = rows[..., :, 0:w] * g[0]
    for i in range(1, k):
        out.add_(rows[..., :, i : i + w], alpha=g[i])
    return out


def _box_mean(t: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of every k x k box lying wholly inside (..., H, W), from cumulative sums (O(1) per box)."""
    c = F.pad(t, (1, 0, 1, 0)).cumsum(-2).cumsum(-1)
    s = c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
    return s / (k * k)


def _ssim_per_image(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean SSIM map over the 11x11 Gaussian windows lying wholly inside the image and the valid pixels.

    Without no-data pixels this is pytorch_msssim's / skimage's value (their 'valid' region); windows that
    touch a no-data pixel are left out, rather than letting the zeros there fake structure.
    """
    coords = torch.arange(SSIM_WIN_SIZE, dtype=x.dtype, device=x.device) - SSIM_WIN_SIZE // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_WIN_SIGMA**2))
    g = g / g.sum()
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5, H, W), filtered as separate channels
    f = _filter_valid(stack, g)
    mx, my, exx, eyy, exy = f.unbind(1)
    c1, c2 = 0.01**2, 0.03**2
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    full = _box_mean(valid, SSIM_WIN_SIZE) > 1.0 - 1e-9
    return _masked_mean(smap.unsqueeze(1), full)[0]


def _epi_per_image(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the 5-point Laplacians (edges replicated, as scipy's 'reflect' at one pixel)
    over the pixels whose Laplacian sees only valid pixels. NaN for a flat input Laplacian, 0 for a flat
    reconstruction's."""

    def cross(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (4 neighbours' sum, centre)
        p = F.pad(t, (1, 1, 1, 1), mode="replicate")
        return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:], t

    around, centre = cross(torch.cat([x, y], dim=1))
    lap = around - 4.0 * centre
    around_v, centre_v = cross(valid)
    seen = (around_v + centre_v) > 5.0 - 1e-9  # the pixel and its 4 neighbours are valid
    m = seen.to(x.dtype)
    n = m.flatten(1).sum(1)
    lx, ly = lap[:, :1], lap[:, 1:]
    mean_x, _ = _masked_mean(lx, seen)
    mean_y, _ = _masked_mean(ly, seen)
    cx = (lx - mean_x.view(-1, 1, 1, 1)) * m
    cy = (ly - mean_y.view(-1, 1, 1, 1)) * m
    sxx, syy, sxy = (cx * cx).flatten(1).sum(1), (cy * cy).flatten(1).sum(1), (cx * cy).flatten(1).sum(1)
    flat = n * EPI_FLAT_RMS**2
    r = sxy / torch.sqrt((sxx * syy).clamp(min=1e-300))
    r = torch.where(syy <= flat, torch.zeros_like(r), r)
    return torch.where((n == 0) | (sxx <= flat), torch.full_like(r, math.nan), r)


def _db_range_tensor(db_range: ArrayLike, b: int, device: torch.device) -> torch.Tensor:
    if not isinstance(db_range, np.ndarray | torch.Tensor):
        db_range = np.asarray(db_range, dtype=np.float64)
    r = _as_tensor(db_range, "db_range").to(device=device, dtype=torch.float64)
    if r.ndim == 1:
        r = r.expand(b, r.shape[0])
    if r.ndim != 2 or r.shape[0] != b:
        raise ValueError(
            f"db_range: expected shape (K,) or ({b}, K) of dB knots per image, got {tuple(r.shape)}"
        )
    knot_x(r.shape[1])  # a clear error for a K that is no map
    return r


def _enl_ratio_per_image(
    x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """ENL(recon) / ENL(input) on intensity; the rule is documented in ``sar_metrics_per_image``."""
    b, _, h, w = x.shape
    nan = torch.full((b,), math.nan, dtype=x.dtype, device=x.device)
    if h < ENL_WINDOW or w < ENL_WINDOW:
        return nan
    xs = knot_x(r.shape[1])
    ok = torch.isfinite(r).all(1) & (r.diff(dim=1) > 0).all(1)
    r = torch.where(ok.view(b, 1), r, torch.tensor(xs, dtype=r.dtype, device=r.device).expand_as(r))
    widest = int(np.argmax(np.diff(xs)))
    span = (r[:, widest + 1] - r[:, widest]) / (xs[widest + 1] - xs[widest])  # dB per x in the bulk
    top = r[:, -1].view(b, 1, 1, 1)
    # Intensity relative to the image's top knot: ENL is scale-free, and this keeps the values in (0, 1].
    ix = torch.pow(10.0, (x_to_db(x.clamp(0, 1), r) - top) / 10.0)
    iy = torch.pow(10.0, (x_to_db(y.clamp(0, 1), r) - top) / 10.0)
    stack = torch.cat([ix, ix * ix, iy, iy * iy, valid, ((x <= 0) | (x >= 1)).to(x.dtype)], 1)
    k, st = ENL_WINDOW, ENL_STRIDE
    pooled = F.avg_pool2d(F.avg_pool2d(stack, (k, 1), stride=(st, 1)), (1, k), stride=(1, st))
    mx, my = pooled[:, 0:1], pooled[:, 2:3]
    vx = (pooled[:, 1:2] - mx * mx).clamp(min=0)
    vy = (pooled[:, 3:4] - my * my).clamp(min=0)
    usable = (pooled[:, 4:5] > 1.0 - 1e-9) & (pooled[:, 5:6] <= ENL_MAX_CLIPPED)
    cv = torch.sqrt(vx) / mx
    n_usable = usable.flatten(1).sum(1)
    ordered = torch.where(usable, cv, torch.full_like(cv, math.inf)).flatten(1).sort(dim=1).values
    k = torch.floor(ENL_CV_QUANTILE * (n_usable - 1).clamp(min=0).to(x.dtype)).long()
    q = ordered.gather(1, k.view(b, 1)).view(b)
    sel = usable & (cv <= (ENL_CV_MARGIN * q).view(b, 1, 1, 1))
    m2x, _ = _masked_mean(mx * mx, sel)
    m2y, _ = _masked_mean(my * my, sel)
    mvx, _ = _masked_mean(vx, sel)
    mvy, _ = _masked_mean(vy, sel)
    step = math.log(10.0) / 10.0 * span / 255.0
    cap = 12.0 / (step * step)  # ENL an 8-bit display of the normalised image can show at most
    enl_x = torch.minimum(m2x / mvx.clamp(min=1e-300), cap)
    enl_y = torch.minimum(m2y / mvy.clamp(min=1e-300), cap)
    missing = ~ok | (n_usable < ENL_MIN_WINDOWS) | ~(q <= ENL_MAX_SPECKLE_CV) | ~(enl_x >= ENL_MIN_INPUT)
    return torch.where(missing, nan, enl_y / enl_x)


def _psnr_db_window(
    x: torch.Tensor,
    y: torch.Tensor,
    vmask: torch.Tensor,
    db_range: ArrayLike | None,
    b: int,
    device: torch.device,
) -> torch.Tensor:
    """PSNR in dB of sigma-nought within ``PSNR_DB_WINDOW`` (NaN without knots to map back to dB)."""
    if db_range is None:
        return torch.full((b,), math.nan, dtype=torch.float64, device=device)
    r = _db_range_tensor(db_range, b, device)
    lo, hi = PSNR_DB_WINDOW
    dx = x_to_db(x.clamp(0, 1), r).clamp(lo, hi)
    dy = x_to_db(y.clamp(0, 1), r).clamp(lo, hi)
    mse, _ = _masked_mean((dx - dy) ** 2, vmask)
    return (10.0 * torch.log10((hi - lo) ** 2 / mse)).clamp(max=PSNR_CAP_DB)


@torch.no_grad()
def sar_metrics_per_image(
    x: ArrayLike,
    x_hat: ArrayLike,
    z: ArrayLike | tuple[int, ...],
    valid: ArrayLike | None = None,
    db_range: ArrayLike | None = None,
) -> dict[str, torch.Tensor]:
    """Every SAR metric of each image, computed in float64 torch on the tensors' device.

    ``x`` / ``x_hat``: (B, 1, H, W) input and reconstruction in the normalised [0, 1] dB domain; ``z``: the
    latent batch (or its shape), for bits per pixel; ``valid``: (B, 1, H, W), 1 for real data, 0 for no-data
    (None: all valid); ``db_range``: (B, K) or (K,) dB knots that map x back to intensity
    ``I = 10**(x_to_db(x, knots)/10)`` (``trainers.data.sar.x_to_db``: K = 2 the older affine map
    [db_lo, db_hi], K = 4 the piecewise-linear one). Returns (B,) float64 tensors keyed psnr, psnr_8bit,
    ssim, enl_ratio, epi, mse, bpp_float32, bpp_8bit; NaN marks a value missing for that image (the
    registry says why). No-data pixels never count:

    - mse / psnr / psnr_8bit (data range 1, capped at ``PSNR_CAP_DB``): over the valid pixels.
    - ssim: mean SSIM map (Gaussian 11x11, sigma 1.5) over the windows wholly inside the image that touch
      no invalid pixel (NaN if none).
    - epi: correlation of the Laplacians over pixels whose 3x3 cross is valid; NaN if the input has no edges.
    - enl_ratio = ENL(recon) / ENL(input), ENL = mean^2/var of the INTENSITY (both mapped back with the
      input's db_range), over homogeneous boxes of the input. The textbook homogeneity test "local CV < 0.3"
      cannot be used as it stands: L-look intensity speckle has CV 1/sqrt(L), so it selects nothing for
      L <= 8 (measured on gamma speckle in 15x15 boxes: 0% at L = 1, 2, 4; 0.1% at L = 8; 51% at L = 11).
      Instead, over the 15x15 boxes (on a 4-pixel grid) wholly inside the image that hold only valid pixels
      and at most 5% clipped ones (x at 0 or 1: clipped pixels are flat and would look homogeneous), the
      image's speckle CV is estimated as the 10% quantile of the boxes' CVs, and a box is homogeneous if its
      CV is at most 1.3 times that. ENL pools the moments of those boxes (mean of squared box means over mean
      box variance; brightness differences between regions do not count as speckle) and is capped at what
      8-bit quantisation of the normalised image can show, 12 / (ln(10)/10 * s/255)^2 with s the dB per
      unit x of the map's bulk (``db_per_x``; about 16,000 for 30 dB), so a flat reconstruction gives a
      large but finite ratio. NaN when db_range is None or its knots do not increase, the image has fewer
      than 20 usable boxes, its smoothest 10% of boxes are rougher than single-look speckle (CV > 1.25), or
      the input's ENL over the boxes chosen is under 0.9 (texture, not fully developed speckle): then there
      is no homogeneous region.
    """
    xt, yt = _batch(x, "x"), _batch(x_hat, "x_hat")
    if xt.shape != yt.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    _check_ssim_size(xt)
    device = xt.device
    xd, yd = xt.to(torch.float64), yt.to(device=device, dtype=torch.float64)
    b = xd.shape[0]
    if valid is None:
        vd = torch.ones_like(xd)
    else:
        vt = _as_tensor(valid, "valid") if not isinstance(valid, torch.Tensor) else valid.detach()
        if tuple(vt.shape) != tuple(xd.shape):
            raise ValueError(
                f"valid: mask shape {tuple(vt.shape)} must match the images' shape {tuple(xd.shape)}"
            )
        vd = (vt.to(device=device, dtype=torch.float64) > 0.5).to(torch.float64)
    if isinstance(z, tuple):
        zshape = z
    else:
        zshape = tuple(_as_tensor(z, "z").shape)
        if len(zshape) < 2 or zshape[0] != b:
            raise ValueError(f"z: the latent must be a batch of the same size {b} as x, got shape {zshape}")
    if not (torch.isfinite(xd).all() and torch.isfinite(yd).all()):
        raise ValueError(
            "x and x_hat must be finite (invalid pixels are marked by `valid`, with x = 0 there)"
        )

    vmask = vd > 0.5
    mse, _ = _masked_mean((xd - yd) ** 2, vmask)
    q = torch.round(xd.clamp(0, 1) * 255) / 255 - torch.round(yd.clamp(0, 1) * 255) / 255
    mse8, _ = _masked_mean(q * q, vmask)
    if db_range is None:
        enl = torch.full((b,), math.nan, dtype=torch.float64, device=device)
    else:
        enl = _enl_ratio_per_image(xd, yd, vd, _db_range_tensor(db_range, b, device))
    out = {
        "psnr": _psnr_from_mse(mse),
        "psnr_db": _psnr_db_window(xd, yd, vmask, db_range, b, device),
        "psnr_8bit": _psnr_from_mse(mse8),
        "ssim": _ssim_per_image(xd, yd, vd),
        "enl_ratio": enl,
        "epi": _epi_per_image(xd, yd, vd),
        "mse": mse,
    }
    for key, bits in (("bpp_float32", 32), ("bpp_8bit", 8)):
        bpp = latent_bits_per_pixel(zshape, tuple(xd.shape), bits=bits)
        out[key] = torch.full((b,), bpp, dtype=torch.float64, device=device)
    return out


def sar_metrics(
    x: ArrayLike,
    x_hat: ArrayLike,
    z: ArrayLike | tuple[int, ...],
    valid: ArrayLike | None = None,
    db_range: ArrayLike | None = None,
) -> dict[str, float]:
    """NaN-ignoring batch means of ``sar_metrics_per_image`` (NaN where every image misses the value)."""
    per = sar_metrics_per_image(x, x_hat, z, valid, db_range)
    stacked = torch.stack([per[k] for k in SAR_METRIC_KEYS])  # one transfer off the device
    means = torch.nanmean(stacked, dim=1).cpu().tolist()
    return dict(zip(SAR_METRIC_KEYS, (float(v) for v in means), strict=True))
