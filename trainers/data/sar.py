"""SAR images: reading real products, the per-image dB normalisation, and simulated speckled scenes.

Real SAR spans many orders of magnitude across products (calibrated σ⁰ around 1e-3 … 50, uncalibrated
DN² up to 1e7 and more, dB values, complex SLC samples), so no single stored constant can map them all
onto the models' [0, 1] scale. Every image is therefore normalised on its own, in the dB domain where
speckle is additive with a fixed variance, by a monotone piecewise-linear map (:func:`normalize_db`)::

    dB percentile of the valid pixels    0.25 %    1 %    99 %    99.75 %
    x                                     0        0.04    0.96    1          (clipped outside)

linear in dB between the knots, so the bulk of the histogram (1st-99th percentile) is mapped affinely onto
92 % of [0, 1] and the tails are compressed into 4 % each. An affine map of two percentiles cannot both
fill [0, 1] and clip little on heavy-tailed data (single-look speckle's dark tail, urban point targets).
Each example carries its knots (``db_range``, the K dB values at ``KNOT_X``) so a reconstruction inverts
exactly to the input's own units (:func:`x_to_db`, :func:`denormalize_db`); a 2-vector [db_lo, db_hi]
still means the older affine map. Amplitude and intensity differ by a factor 2 in dB, which the
per-image map absorbs: both give the same ``x``, only the units of the knots differ.

No-data pixels (zeros, NaN, ±inf, a GeoTIFF's GDAL_NODATA value) are not errors: they form the ``valid``
mask, get ``x = 0``, and take no part in the statistics, the loss or the metrics.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError, DecompressionBombWarning
from scipy import ndimage
from scipy.ndimage import gaussian_filter
from torch.utils.data import Dataset

from trainers.data.cached import CachedDataset
from trainers.data.files import folder_files

SAR_EXTENSIONS = (".npy", ".tif", ".tiff", ".png")
#: What real-valued pixels hold; "complex" also reads I/Q pairs stored as two real bands.
INPUT_KINDS = ("auto", "intensity", "amplitude", "db", "complex")
#: The ``preprocessing["kind"]`` of checkpoints trained with this normalisation, and of older ones:
#: "sar-db-per-image" was the affine map of the 0.5/99.5 % dB percentiles to 0/1, "sar-log-intensity" one
#: global log-intensity scale for a whole training set.
PREPROCESSING_KIND = "sar-db-piecewise"
AFFINE_PREPROCESSING_KIND = "sar-db-per-image"
LEGACY_PREPROCESSING_KINDS = (AFFINE_PREPROCESSING_KIND, "sar-log-intensity")
#: The normalisation's knots: the KNOT_PCTS percentiles of an image's valid dB values map to x = KNOT_X,
#: linearly in dB between them. The bulk (1st-99th percentile) keeps 92 % of [0, 1], linear in dB, so the
#: normalised image fills 0.92 of [0, 1] between its 1st and 99th percentiles whatever its histogram (an
#: affine map cannot: single-look speckle's dark tail leaves it 86-89 %); the 0.75 % of pixels in each tail
#: between the inner and outer knots share 4 % of [0, 1], and 0.25 % at each end clip (0.5 % in all,
#: ties included). Measured per product type in the README's "SAR normalisation" section.
KNOT_PCTS = (0.25, 1.0, 99.0, 99.75)
KNOT_X = (0.0, 0.04, 0.96, 1.0)
#: A folder patch with fewer valid pixels than this fraction is not used.
MIN_VALID_FRACTION = 0.5
#: dB values below this are fill values (-9999, -inf …), i.e. no-data.
DB_FILL_BELOW = -200.0
#: "auto" reads floats as dB when at least this fraction of the finite non-zero values is negative...
AUTO_DB_NEGATIVE_FRACTION = 0.05
#: ... and their 1st-99th percentiles lie within this plausible dB range.
AUTO_DB_RANGE = (-100.0, 100.0)
#: Stated or detected intensity/amplitude may hold a few negative values (thermal-noise removal leaves
#: some in calibrated σ⁰); they are masked as no-data. More than this fraction is refused.
MAX_NEGATIVE_FRACTION = 0.05
#: A multi-band array's band axis is at most this long (otherwise it is not a band axis).
MAX_BANDS = 64
_STATS_SAMPLES = 1 << 20  # at most this many valid pixels enter the percentiles
_ROWS = 512  # images are converted to float32 intensity this many rows at a time
#: Largest decoded image (bytes of its stored samples) :func:`read_sar_patch` decodes into memory; larger
#: PNGs and compressed TIFFs are refused from their header, before decoding (a 140 KB all-zero PNG can
#: hold 12000² pixels). .npy files and uncompressed TIFFs are memory-mapped instead, at any size.
MAX_DECODE_BYTES = 256 * 2**20  # PIL holds a decoded PNG twice (image + array): ~3x this at peak
# Above this many pixels, read_sar_patch takes the dB range from an evenly strided sample of the image
# and converts only the patch; below it the whole image is converted (the exact range, as in training).
_WHOLE_PIXELS = 4 * _STATS_SAMPLES
_NPY_MAGIC = b"\x93NUMPY"


def _db(x: np.ndarray | float) -> np.ndarray:
    """dB -> linear power."""
    return np.power(10.0, np.asarray(x) / 10.0)


# --------------------------------------------------------------------------------------- normalisation
def knot_x(k: int) -> tuple[float, ...]:
    """The x positions of ``k`` knots: (0, 1) for the old affine map, :data:`KNOT_X` for the current one."""
    if k == 2:
        return (0.0, 1.0)
    if k == len(KNOT_X):
        return KNOT_X
    raise ValueError(
        f"db_range must hold 2 dB values (the old affine [db_lo, db_hi]) or {len(KNOT_X)} (the dB knots at "
        f"x = {', '.join(f'{v:g}' for v in KNOT_X)}), got {k}"
    )


def db_per_x(db_range: Any) -> float:
    """dB per unit of x in the bulk (the widest segment in x) of one knot vector: for 2 knots db_hi - db_lo.

    One 8-bit step of x is ``db_per_x/255`` dB there; NaN unless the knots are finite and increase.
    """
    k = np.asarray(db_range, np.float64).ravel()
    xs = np.asarray(knot_x(k.size))
    if not (np.isfinite(k).all() and (np.diff(k) > 0).all()):
        return math.nan
    j = int(np.argmax(np.diff(xs)))
    return float((k[j + 1] - k[j]) / (xs[j + 1] - xs[j]))


def _check_pcts(pcts: Any) -> tuple[float, ...]:
    try:
        p = tuple(float(v) for v in pcts)
    except (TypeError, ValueError):
        raise ValueError(f"knot percentiles must be a sequence of numbers, got {pcts!r}") from None
    knot_x(len(p))
    if not all(math.isfinite(v) for v in p) or not (
        p[0] >= 0.0 and p[-1] <= 100.0 and all(a < b for a, b in zip(p, p[1:], strict=False))
    ):
        raise ValueError(f"knot percentiles must increase strictly within 0 … 100, got {pcts!r}")
    return p


def _robust_knots(values: np.ndarray, pcts: tuple[float, ...]) -> tuple[float, ...]:
    """The dB knots of the map at the percentiles ``pcts`` of the valid pixels' dB values.

    The outer two are each placed in the gap between two levels: half-way between the last value allowed to
    clip and the first that must not, and below (above) a level that many pixels share, so integer products
    (8-bit quick-looks, DN) whose levels hold many pixels each clip at most ``pcts[0]`` % of the pixels to 0
    and ``100 - pcts[-1]`` % to 1, exactly, ties included. Inner knots sit on the percentile's own value, so
    the ``pcts[1]``-th percentile of x is exactly ``KNOT_X[1]`` (and likewise at the top). Where ties make
    two inner knots equal (one level holds the whole bulk, e.g. a constant image), the map falls back to the
    affine one between the outer knots, so the knots always increase strictly (a constant image: x = 0.5).
    """
    s = np.sort(values.astype(np.float64, copy=False))
    m = s.size

    def below(v: float) -> float:  # half-way to the next lower level, or half a step under the lowest
        k = int(np.searchsorted(s, v, "left"))
        if k > 0:
            return (float(s[k - 1]) + v) / 2
        j = int(np.searchsorted(s, v, "right"))
        return v - ((float(s[j]) - v) / 2 if j < m else 0.5)

    def above(v: float) -> float:
        k = int(np.searchsorted(s, v, "right"))
        if k < m:
            return (v + float(s[k])) / 2
        j = int(np.searchsorted(s, v, "left"))
        return v + ((v - float(s[j - 1])) / 2 if j > 0 else 0.5)

    def at(p: float) -> float:  # the value with p % of the pixels below it (from the bottom or the top)
        if p <= 50.0:
            return float(s[min(m - 1, int(p / 100 * m))])
        return float(s[max(0, m - 1 - int((100 - p) / 100 * m))])

    knots = [below(at(pcts[0]))] + [at(p) for p in pcts[1:-1]] + [above(at(pcts[-1]))]
    if any(b <= a for a, b in zip(knots, knots[1:], strict=False)):
        lo, hi = knots[0], knots[-1]
        knots = [lo + (hi - lo) * v for v in knot_x(len(knots))]
    return tuple(float(v) for v in knots)


def _db_to_x(db: np.ndarray, knots: tuple[float, ...]) -> np.ndarray:
    """dB -> x by the piecewise-linear map through (knots, x positions), clipped to [0, 1] (float32)."""
    return np.interp(db, knots, knot_x(len(knots))).astype(np.float32)


def normalize_db(
    intensity: np.ndarray, valid: np.ndarray | None = None, pcts: Any = KNOT_PCTS
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Linear intensity -> (x float32 in [0, 1], valid bool, dB knots), per image in dB.

    ``x`` is the monotone piecewise-linear map of ``10·log10(I)`` through the knots: the ``pcts``
    percentiles of the valid pixels' dB values go to :data:`KNOT_X` (see the module docstring), below the
    first knot x = 0, above the last x = 1. Two ``pcts`` give the older affine map (0.5/99.5 % -> 0/1).
    Valid pixels are those that ``valid`` allows (all if None) and whose intensity is finite and > 0;
    the others get x = 0.
    """
    pcts = _check_pcts(pcts)
    i = np.asarray(intensity)
    if i.dtype.kind not in "biuf":
        raise ValueError(
            f"intensity must be a real-valued array, got dtype {i.dtype} "
            "(complex data: read it with read_sar_image)"
        )
    if i.size == 0:
        raise ValueError(f"the image has no pixels (shape {i.shape})")
    i = i.astype(np.float32, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(i) & (i > 0)
    if valid is not None:
        v = np.asarray(valid)
        if v.shape != i.shape:
            raise ValueError(f"the valid mask has shape {v.shape}, the image {i.shape}")
        ok &= v.astype(bool, copy=False)
    n = int(ok.sum())
    if n == 0:
        raise ValueError("the image has no valid pixel: every pixel is no-data (zero, NaN or infinite)")
    db = np.zeros(i.shape, dtype=np.float32)
    np.log10(i, out=db, where=ok)
    db *= 10.0
    sample = db[ok]
    knots = _robust_knots(sample[:: max(1, n // _STATS_SAMPLES)], pcts)
    x = _db_to_x(db, knots)
    x[~ok] = 0.0
    return x, ok, knots


def _knot_parts(x: Any, db_range: Any) -> tuple[Any, tuple[float, ...]]:
    """The knots as a (K,) or (B, K) array/tensor shaped to broadcast against ``x``, and their x positions."""
    is_t = isinstance(x, torch.Tensor)
    r = (
        torch.as_tensor(db_range, dtype=x.dtype, device=x.device)
        if is_t
        else np.asarray(db_range, np.float64)
    )
    if r.ndim not in (1, 2) or r.shape[-1] < 2:
        raise ValueError(
            "db_range must be one vector of dB knots ([db_lo, db_hi], or the "
            f"{len(KNOT_X)} knots) or a (B, K) batch of them, got shape {tuple(r.shape)}"
        )
    xs = knot_x(int(r.shape[-1]))
    if r.ndim == 2:
        if x.ndim < 1 or x.shape[0] != r.shape[0]:
            raise ValueError(f"{r.shape[0]} dB ranges for a batch of shape {tuple(x.shape)}")
        r = r.reshape((r.shape[0],) + (1,) * (x.ndim - 1) + (r.shape[1],))
    return r, xs


def x_to_db(x: Any, db_range: Any) -> Any:
    """Model scale -> dB of the input's own units (numpy or torch): the inverse of :func:`normalize_db`.

    ``db_range``: one knot vector, (K,), or a (B, K) batch of them for a batch ``x`` of shape (B, ...); K = 2
    is the older affine map ``x·(db_hi − db_lo) + db_lo``, K = len(KNOT_X) the piecewise-linear one. The
    end segments extend linearly beyond [0, 1].
    """
    r, xs = _knot_parts(x, db_range)
    k = len(xs)
    db = r[..., 0]
    for j in range(k - 1):
        dx = xs[j + 1] - xs[j]
        t = x - xs[j]
        if j > 0:
            t = t.clamp(min=0.0) if isinstance(t, torch.Tensor) else np.maximum(t, 0.0)
        if j < k - 2:
            t = t.clamp(max=dx) if isinstance(t, torch.Tensor) else np.minimum(t, dx)
        db = db + t * ((r[..., j + 1] - r[..., j]) / dx)
    return db


def denormalize_db(x: Any, db_range: Any) -> Any:
    """The inverse of :func:`normalize_db` between its outer knots: intensity ``I = 10^(x_to_db(x)/10)``.

    ``x`` is a numpy array or a tensor; ``db_range`` one knot vector or a (B, K) batch of them for a batch
    ``x`` of shape (B, ...) (see :func:`x_to_db`). Returns intensity in the input's units (float32 for numpy
    input).
    """
    db = x_to_db(x, db_range)
    if isinstance(db, torch.Tensor):
        return torch.pow(10.0, db / 10.0)
    return np.power(10.0, np.asarray(db, np.float64) / 10.0).astype(np.float32)


def legacy_preprocessing_note(preprocessing: dict[str, Any] | None) -> str:
    """A note for checkpoints whose training normalisation differs from the current one, else ""."""
    prep = preprocessing or {}
    kind = prep.get("kind")
    if kind == PREPROCESSING_KIND:
        return ""
    now = (
        "inputs are now normalised per image with a piecewise-linear map in dB (its "
        + ", ".join(f"{p:g}" for p in KNOT_PCTS)
        + " % percentiles to x = "
        + ", ".join(f"{v:g}" for v in KNOT_X)
        + "), so its figures may be lower than on the data it was trained on"
    )
    if kind == AFFINE_PREPROCESSING_KIND:
        lo, hi = prep.get("low_pct", 0.5), prep.get("high_pct", 99.5)
        return (
            "this checkpoint was trained with the older affine per-image normalisation (dB "
            f"{lo:g}-{hi:g} % percentiles mapped linearly to 0 … 1); " + now
        )
    if kind in LEGACY_PREPROCESSING_KINDS or prep.get("log_min") is not None:
        return (
            "this checkpoint was trained with a different normalisation (one global log-intensity scale for "
            "its whole training set); " + now
        )
    return ""


# ------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class SARImage:
    """One SAR image as read from disk: linear intensity, its valid mask, and how the pixels were read."""

    intensity: np.ndarray  # float32 (H, W), linear intensity in the file's own units; 0 where not valid
    valid: np.ndarray  # bool (H, W): False for no-data (zeros, NaN, inf, the file's no-data value)
    kind: str  # how the pixels were read: "intensity", "amplitude", "db" or "complex"
    detected: bool  # True when "auto" chose the kind
    dtype: str  # the stored sample type, e.g. "uint16" or "complex int16 I/Q"
    band: int | None = None  # 0-based band read from a multi-band file; None for a single band
    n_bands: int = 1
    negative_fraction: float = 0.0  # negative intensity/amplitude values masked as no-data
    sampled_nodata: float | None = None  # the whole image's no-data share when only a patch is held

    @property
    def nodata_fraction(self) -> float:
        if self.sampled_nodata is not None:
            return float(self.sampled_nodata)
        return float(1.0 - self.valid.mean())

    def describe(self) -> str:
        """How the pixels were read, e.g. "amplitude (uint16, detected), band 2 of 3, 4.1 % no-data"."""
        what = {
            "complex": "complex SLC samples read as |z|² intensity",
            "db": "dB values",
            "amplitude": "amplitude, squared to intensity",
            "intensity": "intensity",
        }[self.kind]
        text = f"{what} ({self.dtype}{', detected' if self.detected else ''})"
        if self.band is not None:
            text += f", band {self.band + 1} of {self.n_bands}"
        text += f", {100 * self.nodata_fraction:.1f} % no-data"
        if self.negative_fraction:
            text += f" (incl. {100 * self.negative_fraction:.2f} % negative values)"
        return text


def _gdal_nodata(tif: tifffile.TiffFile) -> float | None:
    tag = tif.pages[0].tags.get("GDAL_NODATA")
    if tag is None:
        return None
    try:
        return float(str(tag.value).strip().strip("\x00"))
    except ValueError:
        return None


def _too_large(path: Path, shape: tuple[int, ...], itemsize: int, max_bytes: int) -> ValueError:
    size = "x".join(str(int(n)) for n in shape)
    return ValueError(
        f"{path}: the image is {size} pixels ({int(np.prod(shape, dtype=np.float64)) * itemsize / 2**20:.0f} "
        f"MB decoded), more than the {max_bytes / 2**20:.0f} MB read here; crop it first (or save it as "
        "an uncompressed GeoTIFF or .npy, which are read a patch at a time)"
    )


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if head != _NPY_MAGIC:
        raise ValueError(
            f"{path}: not a NumPy array file (.npy files start with the NumPy header; this one does not, "
            "so it is probably text or another format named .npy): save the image with numpy.save"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "Python objects" in str(exc):
            raise ValueError(
                f"{path}: could not read the file as .npy: it holds Python objects, not numbers (not loaded)"
            ) from exc
        raise


def _read_raw(
    path: Path, ext: str, max_bytes: int | None = None
) -> tuple[np.ndarray, str | None, float | None]:
    """The stored array (native dtype; .npy memory-mapped), its axes if the file says, its no-data value.

    With ``max_bytes``, a PNG or TIFF whose header promises more decoded bytes than that is refused before
    decoding, unless the TIFF is uncompressed and can be memory-mapped."""
    if ext == ".npy":
        return _read_npy(path), None, None
    if ext in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            nbytes = int(np.prod(series.shape, dtype=np.float64)) * series.dtype.itemsize
            if max_bytes is not None and nbytes > max_bytes:
                try:
                    mapped = tifffile.memmap(str(path), series=0, mode="r")
                except (ValueError, OSError):
                    raise _too_large(path, series.shape, series.dtype.itemsize, max_bytes) from None
                return mapped, series.axes, _gdal_nodata(tif)
            return series.asarray(), series.axes, _gdal_nodata(tif)
    # Pillow warns from 89 M pixels ("possible decompression bomb") and refuses from twice that. A 12000 x
    # 12000 SAR scene is an ordinary raster, not a bomb: the warning is silenced here, where max_bytes and
    # Pillow's refusal (DecompressionBombError, above ~179 M pixels, e.g. 30000 x 30000) are the limits.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecompressionBombWarning)
        opened = Image.open(path)
    with opened as im:
        if max_bytes is not None:
            itemsize = 2 if im.mode.startswith("I;16") else 4 if im.mode in ("I", "F") else 1
            if im.width * im.height * itemsize > max_bytes:
                raise _too_large(path, (im.height, im.width), itemsize, max_bytes)
        if im.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
            warnings.warn(
                f"{path}: {im.mode} image converted to luminance (SAR is single-band)", stacklevel=3
            )
            im = im.convert("L")
        return np.array(im), "YX", None


def _band_axis(a: np.ndarray, axes: str | None, path: Path) -> int | None:
    """Which axis of a 3-D array holds bands (None for a 2-D image): the file's axes, else the short end."""
    if a.ndim == 2:
        return None
    if a.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D image or a stack of bands, got an array of shape {a.shape}")
    if axes is not None and len(axes) == 3:
        others = [k for k, c in enumerate(axes) if c not in "YX"]
        if len(others) == 1:
            return others[0]
    axis = 0 if a.shape[0] <= a.shape[-1] else 2
    if a.shape[axis] > MAX_BANDS:
        raise ValueError(
            f"{path}: expected a 2-D image or a stack of at most {MAX_BANDS} bands, got shape {a.shape}"
        )
    return axis


def _auto_real_kind(a: np.ndarray, nodata: float | None, path: Path) -> str:
    """The "auto" rule for real samples: integers are amplitude DN; floats are dB when a good share of
    them is negative and they lie in a plausible dB range, and intensity otherwise."""
    if a.dtype.kind in "biu":
        return "amplitude"
    if a.flags.c_contiguous:
        flat = a.reshape(-1)
        sample = np.asarray(flat[:: max(1, flat.size // _STATS_SAMPLES)], dtype=np.float64)
    else:  # a band of a (H, W, bands) memory map: a strided grid, not a copy of the whole band
        step = max(1, math.isqrt(a.size // _STATS_SAMPLES))
        sample = np.asarray(a[::step, ::step], dtype=np.float64).reshape(-1)
    keep = np.isfinite(sample) & (sample != 0) & (sample > DB_FILL_BELOW)
    if nodata is not None:
        keep &= sample != nodata
    sample = sample[keep]
    if sample.size == 0 or (sample < 0).mean() < AUTO_DB_NEGATIVE_FRACTION:
        return "intensity"
    p1, p99 = np.percentile(sample, [1, 99])
    if AUTO_DB_RANGE[0] <= p1 and p99 <= AUTO_DB_RANGE[1]:
        return "db"
    raise ValueError(
        f"{path}: {100 * (sample < 0).mean():.0f} % of the values are negative, but they span "
        f"{p1:.3g} … {p99:.3g}, not a plausible dB range: state what the pixels are (kind)"
    )


def _convert(
    a: np.ndarray, kind: str, iq_axis: int | None, nodata: float | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(float32 intensity, valid mask, number of negative values) of a 2-D array, or of I/Q pairs along
    ``iq_axis``, a block of rows at a time (no float64 copy of a large image is ever made whole)."""
    h = a.shape[1] if iq_axis == 0 else a.shape[0]
    w = a.shape[2] if iq_axis == 0 else a.shape[1]
    out = np.empty((h, w), dtype=np.float32)
    valid = np.empty((h, w), dtype=bool)
    negatives = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for r0 in range(0, h, _ROWS):
            r1 = min(h, r0 + _ROWS)
            if iq_axis is not None:
                i_, q_ = (a[0, r0:r1], a[1, r0:r1]) if iq_axis == 0 else (a[r0:r1, :, 0], a[r0:r1, :, 1])
                i_, q_ = np.asarray(i_, np.float32), np.asarray(q_, np.float32)
                block, raw_ok = i_ * i_ + q_ * q_, np.ones(i_.shape, bool)
            else:
                raw = np.asarray(a[r0:r1])
                raw_ok = np.ones(raw.shape, bool) if nodata is None else raw != nodata
                if np.iscomplexobj(raw):
                    re, im = raw.real.astype(np.float32), raw.imag.astype(np.float32)
                    block = re * re + im * im
                elif kind == "db":
                    f = raw.astype(np.float32)
                    raw_ok &= (f != 0) & (f > DB_FILL_BELOW)
                    block = np.power(np.float32(10.0), f / np.float32(10.0))
                else:
                    f = raw.astype(np.float32)
                    neg = (f < 0) & raw_ok & np.isfinite(f)
                    negatives += int(neg.sum())
                    raw_ok &= ~neg
                    block = f * f if kind == "amplitude" else f
            ok = raw_ok & np.isfinite(block) & (block > 0)
            block[~ok] = 0.0
            out[r0:r1] = block
            valid[r0:r1] = ok
    return out, valid, negatives


@dataclass
class _Opened:
    a: np.ndarray  # 2-D samples, or I/Q pairs along iq_axis (possibly memory-mapped)
    kind: str
    iq_axis: int | None
    nodata: float | None
    dtype: str
    band: int | None
    n_bands: int
    detected: bool

    @property
    def shape(self) -> tuple[int, int]:
        a = self.a
        return (a.shape[1], a.shape[2]) if self.iq_axis == 0 else (a.shape[0], a.shape[1])

    def region(self, rows: slice, cols: slice) -> np.ndarray:
        """The samples of a window (or a strided grid) of the image, I/Q axis kept."""
        if self.iq_axis == 0:
            return self.a[:, rows, cols]
        if self.iq_axis is not None:
            return self.a[rows, cols, :]
        return self.a[rows, cols]


def read_sar_image(path: str | Path, input_kind: str = "auto", band: int | None = None) -> SARImage:
    """Read one SAR image (GeoTIFF, .npy, 8/16-bit PNG) as float32 linear intensity with a valid mask.

    ``input_kind``: "intensity", "amplitude" (squared), "db" (10^(v/10)), "complex" (|z|², from complex
    samples or from I/Q pairs: a leading or trailing axis of two real values), or "auto":

    - complex samples -> complex; signed integers with a leading/trailing axis of 2 -> I/Q pairs;
    - other integers (DN, PNG grey levels) -> amplitude;
    - floats of which >= 5 % (of the finite, non-zero values) are negative, with their 1st-99th
      percentiles inside -100 … 100 -> dB; other floats -> intensity.

    A stated kind always wins. Multi-band arrays, (bands, H, W) or (H, W, bands) (a GeoTIFF's own axes
    decide), give ``band`` (0-based; default the first). No-data - zeros, NaN, ±inf, the GeoTIFF's
    GDAL_NODATA value, dB fill values below -200, a few negative intensities - is masked, not an error;
    an image with no valid pixel at all is.
    """
    o = _open_sar(Path(path), input_kind, band)
    return _finish(Path(path), o, *_convert(o.a, o.kind, o.iq_axis, o.nodata))


def _finish(path: Path, o: _Opened, intensity: np.ndarray, valid: np.ndarray, negatives: int) -> SARImage:
    n = valid.size
    if o.kind in ("intensity", "amplitude") and negatives > MAX_NEGATIVE_FRACTION * n:
        raise ValueError(
            f"{path}: {100 * negatives / n:.0f} % of the values are negative, which {o.kind} cannot be "
            "(is the image in dB? choose 'db')"
        )
    if not valid.any():
        raise ValueError(
            f"{path}: every pixel is no-data (zeros, NaN, infinite or the file's no-data value): "
            "there is no signal to read"
        )
    return SARImage(intensity, valid, o.kind, o.detected, o.dtype, o.band, o.n_bands, negatives / n)


def _open_sar(path: Path, input_kind: str, band: int | None, max_bytes: int | None = None) -> _Opened:
    """The checked samples of one image, not yet converted (see :func:`read_sar_image`)."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    if band is not None and (isinstance(band, bool) or not isinstance(band, (int, np.integer)) or band < 0):
        raise ValueError(f"band must be a band number >= 0 (0 is the first band), got {band!r}")
    if not path.exists():
        raise FileNotFoundError(f"SAR image not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    ext = path.suffix.lower()
    if ext not in SAR_EXTENSIONS:
        raise ValueError(
            f"{path}: unsupported SAR image type '{ext}'; expected one of {', '.join(SAR_EXTENSIONS)}"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty")
    try:
        a, axes, nodata = _read_raw(path, ext, max_bytes)
    except DecompressionBombError as e:
        raise ValueError(
            f"{path}: the image has too many pixels to decode safely ({e}); crop it first"
        ) from e
    except (OSError, ValueError, IndexError, UnidentifiedImageError, EOFError, tifffile.TiffFileError) as e:
        if str(e).startswith(str(path)):  # our own message (not a .npy, too large): already says it all
            raise ValueError(str(e)) from e
        raise ValueError(f"{path}: could not read the file as {ext} ({e or type(e).__name__})") from e
    if not isinstance(a, np.ndarray) or a.dtype == object or a.dtype.kind not in "biufc":
        raise ValueError(f"{path}: expected a numeric array, got {getattr(a, 'dtype', type(a).__name__)}")
    if a.size == 0:
        raise ValueError(f"{path}: the image has no pixels (shape {a.shape})")
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]) and min(a.shape[0], a.shape[-1]) == 1:
        a = a[0] if a.shape[0] == 1 else a[..., 0]
    axis = _band_axis(a, axes, path)
    n_bands = 1 if axis is None else a.shape[axis]
    if axis == 1:
        raise ValueError(f"{path}: bands in the middle axis are not supported (shape {a.shape})")

    iq_axis = None
    complex_dtype = a.dtype.kind == "c"
    iq_possible = axis is not None and n_bands == 2 and not complex_dtype and band is None
    if iq_possible and (input_kind == "complex" or (input_kind == "auto" and a.dtype.kind == "i")):
        iq_axis = axis
    elif axis is not None:
        b = 0 if band is None else int(band)
        if b >= n_bands:
            raise ValueError(
                f"{path}: band {b} asked for, but the file has {n_bands} bands (0 … {n_bands - 1})"
            )
        a = a[b] if axis == 0 else a[..., b]
    elif band not in (None, 0):
        raise ValueError(f"{path}: band {band} asked for, but the file has a single band")

    if iq_axis is not None or complex_dtype:
        if input_kind not in ("auto", "complex"):
            what = "I/Q pairs" if iq_axis is not None else "complex samples"
            warnings.warn(
                f"{path}: {what} are always read as |z|² intensity, not as {input_kind}", stacklevel=2
            )
        kind = "complex"
    elif input_kind == "complex":
        raise ValueError(
            f"{path}: 'complex' needs complex samples or I/Q pairs (a leading or trailing axis of 2), "
            f"got {a.dtype} of shape {a.shape}"
        )
    else:
        kind = _auto_real_kind(a, nodata, path) if input_kind == "auto" else input_kind

    dtype = f"complex {a.dtype} I/Q" if iq_axis is not None else str(a.dtype)
    band_read = None if axis is None or iq_axis is not None else (0 if band is None else int(band))
    return _Opened(a, kind, iq_axis, nodata, dtype, band_read, n_bands, input_kind == "auto")


@dataclass
class SARPatch:
    """A model-scale patch of a (possibly huge) image, normalised with the whole image's dB range."""

    x: np.ndarray  # float32 (h, w) in [0, 1], 0 at no-data
    valid: np.ndarray  # bool (h, w)
    db_range: tuple[float, ...]  # the whole image's dB knots (see normalize_db)
    image: SARImage  # how the pixels were read; its arrays hold the patch only
    shape: tuple[int, int]  # the whole image's (H, W)


def read_sar_patch(
    path: str | Path,
    window: Any,
    input_kind: str = "auto",
    band: int | None = None,
    max_bytes: int = MAX_DECODE_BYTES,
) -> SARPatch:
    """Read one patch of a SAR image, normalised with the whole image's robust dB range, in bounded memory.

    ``window(shape) -> (rows, cols)`` picks the patch from the image's (H, W). The header is checked before
    anything is decoded (``max_bytes``; .npy and uncompressed TIFFs are memory-mapped at any size). Images
    of up to a few million pixels are converted whole (the exact range, as :func:`normalize_db`); larger
    ones take the range from an evenly strided grid of about a million pixels and convert only the patch,
    so a 20000² image costs megabytes, not the gigabytes of a float copy.
    """
    path = Path(path)
    o = _open_sar(path, input_kind, band, max_bytes)
    h, w = o.shape
    rows, cols = window((h, w))
    if h * w <= _WHOLE_PIXELS:
        img = _finish(path, o, *_convert(o.a, o.kind, o.iq_axis, o.nodata))
        x, valid, db_range = normalize_db(img.intensity, img.valid)
        return SARPatch(x[rows, cols], valid[rows, cols], db_range, img, (h, w))
    step = max(1, math.isqrt(h * w // _STATS_SAMPLES))
    grid = _finish(
        path,
        o,
        *_convert(o.region(slice(None, None, step), slice(None, None, step)), o.kind, o.iq_axis, o.nodata),
    )
    _, _, db_range = normalize_db(grid.intensity, grid.valid)
    intensity, valid, negatives = _convert(o.region(rows, cols), o.kind, o.iq_axis, o.nodata)
    db = np.zeros(intensity.shape, np.float32)
    np.log10(intensity, out=db, where=valid)
    db *= np.float32(10.0)
    x = _db_to_x(db, db_range)
    x[~valid] = 0.0
    img = SARImage(
        intensity, valid, o.kind, o.detected, o.dtype, o.band, o.n_bands, grid.negative_fraction,
        sampled_nodata=grid.nodata_fraction,
    )  # fmt: skip
    return SARPatch(x, valid, db_range, img, (h, w))


def load_sar_image(path: str | Path, input_kind: str = "auto", band: int | None = None) -> np.ndarray:
    """Read one SAR image as float32 intensity (H, W), 0 at no-data; :func:`read_sar_image` also says how."""
    return read_sar_image(path, input_kind, band).intensity


# ------------------------------------------------------------------------------------------- simulation
def _nearest_seed(pts: tuple[np.ndarray, np.ndarray], seeds: np.ndarray) -> np.ndarray:
    """Voronoi labels of a grid: a running argmin over the few seeds (4x faster than a k-d tree here)."""
    u, v = pts
    best = np.full(u.shape, np.inf, dtype=u.dtype)
    labels = np.zeros(u.shape, dtype=np.int64)
    for k, (su, sv) in enumerate(seeds.astype(u.dtype)):
        d = (u - su) ** 2 + (v - sv) ** 2
        closer = d < best
        best = np.where(closer, d, best)
        labels[closer] = k
    return labels


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer of at least 16 pixels, got {size!r}")
    return int(size)


def _add_point_targets(refl: np.ndarray, rng: np.random.Generator, low_db: float = 15.0) -> None:
    """Point targets (ships, pylons, corner reflectors) with the cross-shaped sidelobes of a SAR response."""
    size = refl.shape[0]
    scale = size / 256.0
    n_points = int(rng.integers(2, 10) * max(scale**2, 0.25)) + 1
    for y, x in rng.integers(1, size - 1, (n_points, 2)):
        peak = _db(rng.uniform(low_db, low_db + 10.0))
        refl[y, x] = max(refl[y, x], peak)
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            refl[y + dy, x + dx] = max(refl[y + dy, x + dx], 0.05 * peak)


def simulate_reflectivity(size: int, rng: np.random.Generator) -> np.ndarray:
    """A geometric noise-free reflectivity (σ⁰, linear) scene of ``size``×``size`` pixels, float32 and > 0.

    Agricultural parcels (polygons and rectangles of different backscatter with mild texture), possibly a
    river (very dark meandering band), roads (dark lines), urban blocks (bright rectangles with strong
    double-bounce edges) and a few point targets. Backscatter levels follow typical C-band σ⁰ in dB.
    """
    size = _check_size(size)
    scale = size / 256.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0

    def rotated(angle: float, cx: float = c, cy: float = c) -> tuple[np.ndarray, np.ndarray]:
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        return u, v

    # Fields: Voronoi parcels in a stretched frame (elongated like real field patterns).
    n_fields = max(4, int(rng.integers(12, 32) * scale**2))
    u, v = rotated(rng.uniform(0, np.pi))
    stretch = rng.uniform(1.0, 2.5)
    pts = (u / stretch, v)
    seeds = rng.uniform(-size / 2, size / 2, (n_fields, 2)) * np.array([1 / stretch, 1.0])
    labels = _nearest_seed(pts, seeds)
    refl = _db(rng.uniform(-17.0, -6.0, n_fields))[labels]
    # A few rectangular parcels on top.
    for _ in range(int(rng.integers(2, 7))):
        h, w = rng.uniform(12, 60, 2) * scale
        y0, x0 = rng.uniform(0, size - h), rng.uniform(0, size - w)
        box = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        refl[box] = _db(rng.uniform(-16.0, -5.0))
    # Mild texture inside parcels (vegetation): smooth log-normal modulation of about ±0.7 dB.
    tex = gaussian_filter(rng.standard_normal((size, size)), sigma=rng.uniform(1.5, 4.0))
    refl *= np.exp(0.15 * tex / (tex.std() + 1e-12))

    # River: calm water is a specular reflector, so it is the darkest thing in the scene.
    if rng.random() < 0.6:
        u, v = rotated(rng.uniform(0, np.pi))
        offset = rng.uniform(-0.3, 0.3) * size
        centre = offset
        for _ in range(2):
            centre = centre + rng.uniform(4, 20) * scale * np.sin(
                2 * np.pi * u / (rng.uniform(60, 200) * scale) + rng.uniform(0, 2 * np.pi)
            )
        width = (
            rng.uniform(5, 14) * scale * (1 + 0.3 * np.sin(2 * np.pi * u / (150 * scale) + rng.uniform(0, 6)))
        )
        refl[np.abs(v - centre) < width / 2] = _db(rng.uniform(-25.0, -21.0))

    # Roads: narrow dark straight lines.
    for _ in range(int(rng.integers(1, 4))):
        _, v = rotated(rng.uniform(0, np.pi), *rng.uniform(0, size, 2))
        refl[np.abs(v) < rng.uniform(0.8, 1.8) * max(scale, 0.5)] = _db(rng.uniform(-22.0, -18.0))

    # Urban blocks: a rotated grid of bright rectangles separated by dark streets, with a double-bounce
    # edge (wall-ground dihedral) on one side of each block.
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        u, v = rotated(rng.uniform(0, np.pi / 2), cx, cy)
        ext_u, ext_v = rng.uniform(20, 60, 2) * scale
        period = rng.uniform(8, 16) * max(scale, 0.5)
        street = rng.uniform(2, 4) * max(scale, 0.5)
        inside = (np.abs(u) < ext_u) & (np.abs(v) < ext_v)
        pu, pv = np.mod(u, period), np.mod(v, period)
        block = inside & (pu >= street) & (pv >= street)
        levels = _db(rng.uniform(-4.0, 6.0, (64, 64)))
        iu = np.floor(u / period).astype(np.int64) % 64
        iv = np.floor(v / period).astype(np.int64) % 64
        refl[inside & ~block] = _db(-15.0)
        refl[block] = levels[iu, iv][block]
        edge = block & (pu < street + 1.0)
        refl[edge] = _db(rng.uniform(8.0, 14.0))

    _add_point_targets(refl, rng)
    return np.maximum(refl, 1e-4).astype(np.float32)


#: Natural grey images shipped inside scikit-image (no download), used as reflectivity maps as in the
#: despeckling literature: they bring the irregular textures and edges that geometric scenes lack.
NATURAL_IMAGES = (
    "camera",
    "astronaut",
    "moon",
    "grass",
    "gravel",
    "brick",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "clock",
    "text",
    "page",
    "hubble_deep_field",
)


#: Which natural images each use may draw from. The built-in test set (``trainers eval`` / ``compare`` on
#: the synthetic source) uses source images that training and validation never see, so a model cannot
#: score well on it by having learned these particular photographs.
HELD_OUT_IMAGES = ("camera", "coins", "clock", "page")
IMAGE_POOLS = {
    "all": tuple(range(len(NATURAL_IMAGES))),
    "train": tuple(i for i, n in enumerate(NATURAL_IMAGES) if n not in HELD_OUT_IMAGES),
    "test": tuple(i for i, n in enumerate(NATURAL_IMAGES) if n in HELD_OUT_IMAGES),
}
#: Simulated scene families: "mixed" (L drawn from 1-4, K texture in half the scenes) and "single-look".
SCENES = ("mixed", "single-look")


@functools.lru_cache(maxsize=1)
def natural_images() -> tuple[np.ndarray, ...]:
    """The scikit-image sample images as float32 grey levels in [0, 1] (loaded once per process)."""
    from skimage import data

    out = []
    for name in NATURAL_IMAGES:
        a = np.asarray(getattr(data, name)(), dtype=np.float32)
        if a.ndim == 3:
            a = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        out.append(np.ascontiguousarray(a / 255.0))
    return tuple(out)


def natural_reflectivity(size: int, rng: np.random.Generator, pool: str = "all") -> np.ndarray:
    """A reflectivity (σ⁰, linear) of ``size``×``size`` from a random crop of a scikit-image sample image.

    A crop of 0.5-2x the output size (so scales vary), randomly flipped and turned, resampled bilinearly;
    its grey levels map linearly onto dB around a random mean level (-16 … -4 dB) over a random
    dynamic range (15 … 30 dB), float32 and > 0. ``pool`` picks the source images (:data:`IMAGE_POOLS`).
    """
    size = _check_size(size)
    if pool not in IMAGE_POOLS:
        raise ValueError(f"pool must be one of {', '.join(IMAGE_POOLS)}, got {pool!r}")
    images = natural_images()
    indices = IMAGE_POOLS[pool]
    img = images[indices[int(rng.integers(len(indices)))]]
    h, w = img.shape
    side = int(min(h, w, max(16, round(size * rng.uniform(0.5, 2.0)))))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = img[y0 : y0 + side, x0 : x0 + side]
    crop = np.rot90(crop, int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    g = ndimage.zoom(np.ascontiguousarray(crop), size / side, order=1, grid_mode=True, mode="nearest")
    g = g[:size, :size]
    if g.shape != (size, size):  # zoom's rounding can leave a pixel short
        g = np.pad(g, ((0, size - g.shape[0]), (0, size - g.shape[1])), mode="edge")
    spread = float(g.std()) + 1e-3
    db = rng.uniform(-16.0, -4.0) + rng.uniform(15.0, 30.0) / 4.0 * (g - g.mean()) / spread
    return _db(np.clip(db, -35.0, 20.0)).astype(np.float32)


def apply_speckle(reflectivity: np.ndarray, looks: float, rng: np.random.Generator) -> np.ndarray:
    """Fully developed L-look speckle: intensity = reflectivity · Gamma(shape=L, scale=1/L) (mean 1)."""
    if isinstance(looks, bool) or not isinstance(looks, (int, float, np.integer, np.floating)):
        raise ValueError(f"looks must be a number >= 1, got {looks!r}")
    if not (math.isfinite(looks) and looks >= 1):
        raise ValueError(f"looks must be a number >= 1, got {looks!r}")
    r = np.asarray(reflectivity)
    if not np.isrealobj(r) or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError("reflectivity must be real, finite and non-negative")
    return (r * rng.gamma(shape=looks, scale=1.0 / looks, size=r.shape)).astype(np.float32)


@dataclass(frozen=True)
class SARScene:
    """One simulated scene: what was drawn, and the speckled intensity a sensor would measure."""

    reflectivity: np.ndarray  # float32 (H, W): noise-free σ⁰ including the K texture
    intensity: np.ndarray  # float32 (H, W): reflectivity · speckle; 0 in no-data borders
    valid: np.ndarray  # bool (H, W)
    looks: float
    kind: str  # "geometric", "natural" or "blend"
    texture_shape: float | None  # ν of the Gamma texture (K-distributed clutter), None if none


def simulate_scene(
    size: int, rng: np.random.Generator, looks: float | None = None, pool: str = "all"
) -> SARScene:
    """A speckled scene closer to real SAR than geometric shapes alone.

    Reflectivity: a geometric scene (30 %), a natural image (35 %) or the geometric scene with a natural
    image's texture on top (35 %); then extra bright point targets, and in half the scenes a Gamma(ν, 1/ν)
    texture multiplier per pixel (ν 1.5 … 20), which makes the intensity K-distributed (the heavy tails
    of sea clutter, forest, urban areas). Speckle: fully developed, ``looks`` looks (default: L drawn from
    1 … 4). One scene in ten has a no-data border (zeros) along one side, as at a swath edge. ``pool``
    picks the natural source images (:data:`IMAGE_POOLS`).
    """
    size = _check_size(size)
    refl, kind = _base_reflectivity(size, rng, pool)
    _add_point_targets(refl, rng, low_db=20.0)
    nu = None
    if rng.random() < 0.5:
        nu = float(np.exp(rng.uniform(np.log(1.5), np.log(20.0))))
        refl = (refl * rng.gamma(nu, 1.0 / nu, refl.shape)).astype(np.float32)
    L = float(rng.integers(1, 5)) if looks is None else float(looks)
    return _speckled(refl, L, kind, nu, rng)


def _base_reflectivity(size: int, rng: np.random.Generator, pool: str) -> tuple[np.ndarray, str]:
    """A geometric scene (30 %), a natural image (35 %) or both blended (35 %), and which."""
    mode = rng.choice(3, p=[0.3, 0.35, 0.35])
    if mode == 0:
        return simulate_reflectivity(size, rng), "geometric"
    if mode == 1:
        refl = natural_reflectivity(size, rng, pool)
        _add_point_targets(refl, rng)
        return refl, "natural"
    geo = simulate_reflectivity(size, rng)
    nat = natural_reflectivity(size, rng, pool)
    w = rng.uniform(0.3, 0.8)
    log_nat = np.log(nat)
    return (geo * np.exp(w * (log_nat - log_nat.mean()))).astype(np.float32), "blend"


def simulate_single_look_scene(size: int, rng: np.random.Generator, pool: str = "all") -> SARScene:
    """A scene with the statistics of real single-look crops (Sentinel-1, AIRSAR, PiSAR: ENL near 1,
    heavy tails, bright isolated scatterers), which the mixed scenes (L 1-4, texture in half) lack.

    Reflectivity as :func:`simulate_scene`'s, then always a Gamma(ν, 1/ν) texture with ν log-uniform in
    0.8 … 12 (K-distributed intensity; ν of a few is typical of urban areas, forest and sea clutter), a
    cluster of very bright point targets (+25 … +40 dB, with sidelobes) as ships, pylons and building
    corners give, and single-look speckle (L = 1, exponential intensity): the intensity's ENL over a
    homogeneous area is ≈ 1 or below (texture lowers it). One scene in ten has a no-data border.
    """
    size = _check_size(size)
    refl, kind = _base_reflectivity(size, rng, pool)
    _add_point_targets(refl, rng, low_db=25.0)
    _add_point_targets(refl, rng, low_db=30.0)
    nu = float(np.exp(rng.uniform(np.log(0.8), np.log(12.0))))
    refl = (refl * rng.gamma(nu, 1.0 / nu, refl.shape)).astype(np.float32)
    return _speckled(refl, 1.0, kind, nu, rng)


def _speckled(refl: np.ndarray, L: float, kind: str, nu: float | None, rng: np.random.Generator) -> SARScene:
    """The scene of a reflectivity: L-look speckle, and in one scene of ten a no-data border."""
    size = refl.shape[0]
    intensity = apply_speckle(np.maximum(refl, 1e-6), L, rng)
    valid = np.ones((size, size), dtype=bool)
    if rng.random() < 0.1:
        yy, xx = np.mgrid[0:size, 0:size]
        edge = rng.uniform(0.05, 0.3) * size + rng.uniform(-0.1, 0.1) * (yy - size / 2)
        valid = xx >= edge
        for _ in range(int(rng.integers(4))):  # turn to a random side
            valid = np.rot90(valid)
        valid = np.ascontiguousarray(valid)
        intensity[~valid] = 0.0
    return SARScene(refl.astype(np.float32), intensity, valid, L, kind, nu)


# ------------------------------------------------------------------------------------------------ patches
def patchify(image: np.ndarray, size: int, stride: int | None = None) -> list[np.ndarray]:
    """Square ``size`` patches of a 2-D image in row-major order (``stride`` defaults to ``size``:
    non-overlapping). Rows and columns past the last full patch are dropped."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"patch size must be a positive integer, got {size!r}")
    stride = size if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    h, w = image.shape
    if h < size or w < size:
        raise ValueError(f"image is {h}x{w} pixels; need at least {size}x{size} for one patch")
    return [
        np.ascontiguousarray(image[y : y + size, x : x + size])
        for y, x in _patch_origins(image.shape, size, stride)
    ]


def _patch_origins(shape: tuple[int, ...], size: int, stride: int) -> list[tuple[int, int]]:
    h, w = shape
    return [(y, x) for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]


def _item(x: np.ndarray, valid: np.ndarray, db_range: tuple[float, ...]) -> tuple[torch.Tensor, ...]:
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)[None]),
        torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32)[None]),
        torch.tensor(db_range, dtype=torch.float32),
    )


def normalize_patches(
    intensity: np.ndarray,
    valid: np.ndarray | None = None,
    size: int = 256,
    stride: int | None = None,
    pcts: Any = KNOT_PCTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An intensity image -> batches x (N, 1, s, s), valid (N, 1, s, s), db_range (N, K) of its patches,
    all normalised with the whole image's dB knots (patches with under half valid pixels are kept here:
    a caller choosing patches decides)."""
    x, ok, rng = normalize_db(intensity, valid, pcts)
    xs = patchify(x, size, stride)
    vs = patchify(ok, size, stride)
    return (
        torch.from_numpy(np.stack(xs))[:, None],
        torch.from_numpy(np.stack(vs).astype(np.float32))[:, None],
        torch.tensor([rng] * len(xs), dtype=torch.float32),
    )


# ----------------------------------------------------------------------------------------------- datasets
def _prep_kind(pcts: tuple[float, ...]) -> dict[str, Any]:
    """The checkpoint's record of the normalisation: its kind and knots (the older affine one for 2 pcts)."""
    if len(pcts) == 2:
        return {"kind": AFFINE_PREPROCESSING_KIND, "low_pct": pcts[0], "high_pct": pcts[1]}
    return {"kind": PREPROCESSING_KIND, "knot_pcts": list(pcts), "knot_x": list(knot_x(len(pcts)))}


class SyntheticSARDataset(CachedDataset[tuple[np.ndarray, np.ndarray, tuple[float, ...]]]):
    """Simulated speckled scenes (:func:`simulate_scene`), each normalised on its own in dB.

    Item ``i`` is ``(x, valid, db_range)`` (see :func:`normalize_db`), a pure function of (seed, i).
    ``looks`` fixes L for every scene; None draws L from 1 … 4 per scene. ``scene="single-look"`` draws
    :func:`simulate_single_look_scene` instead (L = 1; ``looks`` must then be None or 1). ``pool`` picks
    the natural source images (:data:`IMAGE_POOLS`): training and validation use "train", the built-in
    test set "test".
    """

    ITEM_NAME = "image"

    def __init__(
        self,
        n_images: int = 64,
        image_size: int = 256,
        looks: float | None = None,
        seed: int = 0,
        cache: bool | None = None,
        pcts: Any = KNOT_PCTS,
        scene: str = "mixed",
        pool: str = "all",
    ) -> None:
        if scene not in SCENES:
            raise ValueError(f"scene must be one of {', '.join(SCENES)}, got {scene!r}")
        if pool not in IMAGE_POOLS:
            raise ValueError(f"pool must be one of {', '.join(IMAGE_POOLS)}, got {pool!r}")
        if scene == "single-look" and looks not in (None, 1, 1.0):
            raise ValueError(f"single-look scenes have L = 1; looks={looks!r} contradicts scene=single-look")
        self.scene_kind, self.pool = scene, pool
        if int(n_images) < 1:
            raise ValueError(f"n_images must be at least 1, got {n_images}")
        if int(image_size) < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        if looks is not None and not (
            isinstance(looks, (int, float)) and math.isfinite(looks) and looks >= 1
        ):
            raise ValueError(f"looks must be a number >= 1 (or None: drawn from 1 … 4), got {looks!r}")
        self.pcts = _check_pcts(pcts)
        self.n_images = int(n_images)
        self.image_size = int(image_size)
        self.looks = None if looks is None else float(looks)
        self.seed = int(seed)
        # Simulating a 256x256 scene costs ~20 ms of CPU; keeping the items makes later epochs free. By
        # default only sets up to 512 MiB are kept (each DataLoader worker keeps its own copy).
        self._init_cache(
            cache if cache is not None else self.n_images * self.image_size**2 * 5 <= 512 * 2**20
        )

    def __len__(self) -> int:
        return self.n_images

    def scene(self, i: int) -> SARScene:
        """Everything simulated for image ``i``."""
        rng = np.random.default_rng([self.seed, self._index(i)])
        if self.scene_kind == "single-look":
            return simulate_single_look_scene(self.image_size, rng, self.pool)
        return simulate_scene(self.image_size, rng, self.looks, self.pool)

    def clean_intensity(self, i: int) -> np.ndarray:
        """The noise-free reflectivity of image ``i`` (float32, H×W)."""
        return self.scene(i).reflectivity

    def intensity(self, i: int) -> np.ndarray:
        """The speckled intensity of image ``i`` (float32, H×W; 0 at no-data), before normalisation."""
        return self.scene(i).intensity

    def compute(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        """Image ``i`` as :func:`normalize_db` returns it: (x, valid, db_range) in numpy."""
        s = self.scene(i)
        return normalize_db(s.intensity, s.valid, self.pcts)

    def to_tensors(
        self, item: tuple[np.ndarray, np.ndarray, tuple[float, ...]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _item(*item)

    def preprocessing(self) -> dict[str, Any]:
        return {
            **_prep_kind(self.pcts),
            "looks": 1.0 if self.scene_kind == "single-look" else (self.looks or "1-4"),
            "scene": self.scene_kind,
        }


class SARFolderDataset(Dataset):
    """Every ``image_size`` patch of the .npy/.tif/.tiff/.png images in a folder (recursively).

    Item ``i`` is ``(x, valid, db_range)``: each image is normalised on its own (:func:`normalize_db`)
    and its patches carry its dB range. Patches with fewer than half valid pixels are not used; unreadable
    images and images smaller than one patch are skipped with a warning. Images are read once and kept in
    memory on the model's scale (float32 plus a mask).
    """

    def __init__(
        self,
        folder: str | Path,
        image_size: int = 256,
        input_kind: str = "auto",
        stride: int | None = None,
        band: int | None = None,
        pcts: Any = KNOT_PCTS,
    ) -> None:
        self.folder = Path(folder)
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
        if isinstance(image_size, bool) or int(image_size) < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if stride is not None and int(stride) < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        self.pcts = _check_pcts(pcts)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"SAR image folder not found: {self.folder}")
        self.image_size = int(image_size)
        self.stride = int(stride) if stride is not None else self.image_size
        self.input_kind = input_kind
        self.band = band

        files = sorted(
            p
            for p in folder_files(self.folder)
            if p.suffix.lower() in SAR_EXTENSIONS and not p.name.startswith(".")
        )
        s = self.image_size
        self.files: list[Path] = []
        self.descriptions: list[str] = []
        self.db_ranges: list[tuple[float, ...]] = []
        self._images: list[tuple[np.ndarray, np.ndarray]] = []
        self._index: list[tuple[int, int, int]] = []
        for p in files:
            try:
                img = read_sar_image(p, input_kind, band)
            except (ValueError, OSError) as e:
                warnings.warn(f"skipping {p}: {e}", stacklevel=2)
                continue
            h, w = img.intensity.shape
            if h < s or w < s:
                warnings.warn(
                    f"skipping {p}: it is {h}x{w} pixels, smaller than one {s}x{s} patch", stacklevel=2
                )
                continue
            x, valid, rng = normalize_db(img.intensity, img.valid, self.pcts)
            origins = [
                (y, x0)
                for y, x0 in _patch_origins(x.shape, s, self.stride)
                if valid[y : y + s, x0 : x0 + s].mean() >= MIN_VALID_FRACTION
            ]
            if not origins:
                warnings.warn(
                    f"skipping {p}: no {s}x{s} patch has at least {MIN_VALID_FRACTION:.0%} valid pixels "
                    f"({100 * img.nodata_fraction:.0f} % of the image is no-data)",
                    stacklevel=2,
                )
                continue
            k = len(self.files)
            self.files.append(p)
            self.descriptions.append(img.describe())
            self.db_ranges.append(rng)
            self._images.append((x, valid))
            self._index += [(k, y, x0) for y, x0 in origins]
        if not self._images:
            raise ValueError(
                f"no usable SAR image in {self.folder}: need {', '.join(SAR_EXTENSIONS)} files of at least "
                f"{s}x{s} pixels, at least half of them valid"
            )

    def __len__(self) -> int:
        return len(self._index)

    def patch_image(self, i: int) -> int:
        """Which image (index into ``files``) patch ``i`` comes from."""
        return self._index[i][0]

    def patch_origin(self, i: int) -> tuple[Path, int, int]:
        """(file, row, column) of patch ``i``'s top-left corner."""
        k, y, x = self._index[i]
        return self.files[k], y, x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k, y, x0 = self._index[i]
        s = self.image_size
        x, valid = self._images[k]
        return _item(x[y : y + s, x0 : x0 + s], valid[y : y + s, x0 : x0 + s], self.db_ranges[k])

    def preprocessing(self) -> dict[str, Any]:
        return {
            **_prep_kind(self.pcts),
            "input_kind": self.input_kind,
            "band": self.band,
        }


__all__ = [
    "INPUT_KINDS",
    "KNOT_PCTS",
    "KNOT_X",
    "db_per_x",
    "knot_x",
    "MIN_VALID_FRACTION",
    "NATURAL_IMAGES",
    "PREPROCESSING_KIND",
    "SAR_EXTENSIONS",
    "SARFolderDataset",
    "SARImage",
    "HELD_OUT_IMAGES",
    "IMAGE_POOLS",
    "SCENES",
    "SARScene",
    "SyntheticSARDataset",
    "apply_speckle",
    "denormalize_db",
    "legacy_preprocessing_note",
    "load_sar_image",
    "natural_images",
    "natural_reflectivity",
    "normalize_db",
    "normalize_patches",
    "patchify",
    "read_sar_image",
    "read_sar_patch",
    "simulate_reflectivity",
    "simulate_scene",
    "simulate_single_look_scene",
    "x_to_db",
]
