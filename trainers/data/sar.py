"""SAR images: simulated speckled scenes, real image files, and the log-intensity normalisation.

Speckle in SAR is multiplicative: an L-look intensity image is reflectivity × Gamma(L, 1/L). Taking the
log turns it into additive noise of fixed variance, which is why the models see ln(intensity) mapped to
[0, 1]. The two constants of that map travel with each checkpoint (``preprocessing()``), so a model
trained on one data set reads new images on the same scale.

8/16-bit PNG/TIFF quick-looks are the exception: their grey levels are amplitude times an unknown display
gain, an unknown offset in the log domain. They are flagged when read (:func:`read_sar_image`) and brought
onto a checkpoint's scale by :func:`quicklook_gain` unless the checkpoint was itself trained on such grey
levels (``preprocessing()["scale"] == "display"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError
from scipy.ndimage import gaussian_filter
from torch.utils.data import Dataset

SAR_EXTENSIONS = (".npy", ".tif", ".tiff", ".png")
INPUT_KINDS = ("auto", "intensity", "amplitude")
#: What a checkpoint's normaliser was fitted on: linear backscatter, or the grey levels of quick-looks.
SCALES = ("calibrated", "display")


def _db(x: np.ndarray | float) -> np.ndarray:
    return np.power(10.0, np.asarray(x) / 10.0)


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


def simulate_reflectivity(size: int, rng: np.random.Generator) -> np.ndarray:
    """A noise-free reflectivity (σ⁰, linear) scene of ``size``×``size`` pixels, float32 and > 0.

    Agricultural parcels (polygons and rectangles of different backscatter with mild texture), possibly a
    river (very dark meandering band), roads (dark lines), urban blocks (bright rectangles with strong
    double-bounce edges) and a few point targets. Backscatter levels follow typical C-band σ⁰ in dB.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer of at least 16 pixels, got {size!r}")
    size = int(size)
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

    # Point targets (ships, pylons, corner reflectors) with the cross-shaped sidelobes of a SAR response.
    n_points = int(rng.integers(2, 10) * max(scale**2, 0.25)) + 1
    for y, x in rng.integers(1, size - 1, (n_points, 2)):
        peak = _db(rng.uniform(15.0, 25.0))
        refl[y, x] = max(refl[y, x], peak)
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            refl[y + dy, x + dx] = max(refl[y + dy, x + dx], 0.05 * peak)

    return np.maximum(refl, 1e-4).astype(np.float32)


def apply_speckle(reflectivity: np.ndarray, looks: int, rng: np.random.Generator) -> np.ndarray:
    """Fully developed L-look speckle: intensity = reflectivity · Gamma(shape=L, scale=1/L) (mean 1)."""
    if isinstance(looks, bool) or not isinstance(looks, (int, np.integer)) or looks < 1:
        raise ValueError(f"looks must be a positive integer, got {looks!r}")
    r = np.asarray(reflectivity)
    if not np.isrealobj(r) or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError("reflectivity must be real, finite and non-negative")
    return (r * rng.gamma(shape=looks, scale=1.0 / looks, size=r.shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------- normaliser
@dataclass(frozen=True)
class SARNormalizer:
    """Maps intensity to the model's [0, 1] scale: x = clip((ln(I + eps) − log_min) / (log_max − log_min))."""

    log_min: float
    log_max: float
    eps: float = 1e-6

    def __post_init__(self) -> None:
        vals = (self.log_min, self.log_max, self.eps)
        if not all(isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v) for v in vals):
            raise ValueError(f"SARNormalizer needs finite numbers, got {asdict(self)}")
        if not self.log_max > self.log_min:
            raise ValueError(f"SARNormalizer needs log_max > log_min, got {self.log_min} and {self.log_max}")
        if not self.eps > 0:
            raise ValueError(f"SARNormalizer needs eps > 0, got {self.eps}")

    def to_model(self, intensity: np.ndarray) -> np.ndarray:
        """Intensity (≥ 0) → float32 in [0, 1]."""
        i = np.asarray(intensity, dtype=np.float64)
        if not np.all(np.isfinite(i)):
            raise ValueError("intensity contains NaN or infinite values")
        if np.any(i < 0):
            raise ValueError(f"intensity must be non-negative, found a minimum of {i.min():.4g}")
        x = (np.log(i + self.eps) - self.log_min) / (self.log_max - self.log_min)
        return np.clip(x, 0.0, 1.0).astype(np.float32)

    def to_intensity(self, x: np.ndarray) -> np.ndarray:
        """Model scale → intensity (the inverse of ``to_model`` inside the clipping range)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("model-scale values contain NaN or infinite values")
        i = np.exp(np.clip(x, 0.0, 1.0) * (self.log_max - self.log_min) + self.log_min) - self.eps
        return np.maximum(i, 0.0).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        return {"log_min": float(self.log_min), "log_max": float(self.log_max), "eps": float(self.eps)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SARNormalizer:
        """Rebuild from ``to_dict()`` or from a dataset's ``preprocessing()`` (extra keys are ignored)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a dict with log_min, log_max and eps, got {type(d).__name__}")
        missing = [k for k in ("log_min", "log_max") if k not in d]
        if missing:
            raise ValueError(f"SAR normalisation parameters are missing {missing}; got keys {sorted(d)}")
        return cls(float(d["log_min"]), float(d["log_max"]), float(d.get("eps", 1e-6)))

    @classmethod
    def fit(
        cls,
        intensities: np.ndarray | Iterable[np.ndarray],
        low_pct: float = 0.5,
        high_pct: float = 99.5,
        eps: float = 1e-6,
    ) -> SARNormalizer:
        """Percentiles of ln(I + eps) over the images, so a few extreme pixels do not squash the range."""
        if not 0.0 <= low_pct < high_pct <= 100.0:
            raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct} and {high_pct}")
        images = [intensities] if isinstance(intensities, np.ndarray) else list(intensities)
        logs = []
        for im in images:
            a = np.asarray(im, dtype=np.float64).ravel()
            if a.size == 0:
                continue
            if not np.all(np.isfinite(a)) or np.any(a < 0):
                raise ValueError("intensities to fit must be finite and non-negative")
            step = max(1, a.size // 262_144)  # a regular subsample bounds the cost of large images
            logs.append(np.log(a[::step] + eps))
        if not logs:
            raise ValueError("cannot fit a SAR normaliser on no pixels")
        lo, hi = np.percentile(np.concatenate(logs), [low_pct, high_pct])
        if not hi > lo:
            raise ValueError(
                f"cannot fit a SAR normaliser: the images are constant (log-intensity {lo:.4g}) "
                "between the chosen percentiles"
            )
        return cls(float(lo), float(hi), float(eps))


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
        for y in range(0, h - size + 1, stride)
        for x in range(0, w - size + 1, stride)
    ]


def _patch_origins(shape: tuple[int, int], size: int, stride: int) -> list[tuple[int, int]]:
    h, w = shape
    return [(y, x) for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]


# ------------------------------------------------------------------------------------------------ loading
def _to_single_band(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]):
        a = a.reshape(a.shape[1:] if a.shape[0] == 1 else a.shape[:-1])
    if a.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D single-band image, got an array of shape {a.shape}")
    return a


@dataclass(frozen=True)
class SARImage:
    """One SAR image as read from disk: linear intensity plus what the loader decided about its pixels."""

    intensity: np.ndarray  # float32 (H, W)
    kind: str  # how the pixels were read: "intensity", "amplitude" or "complex" (|z|^2)
    quicklook: bool  # integer grey levels of a PNG/TIFF: proportional to amplitude/intensity, not calibrated
    dtype: str  # the stored pixel type, e.g. "uint8"

    def describe(self) -> str:
        if self.kind == "complex":
            return "complex (SLC) samples, read as |z|^2 intensity"
        if self.quicklook:
            bits = np.dtype(self.dtype).itemsize * 8 if self.dtype != "bool" else 1
            return f"{bits}-bit {self.kind} quick-look (uncalibrated grey levels)"
        return f"{self.kind} ({self.dtype})"


def read_sar_image(path: str | Path, input_kind: str = "auto") -> SARImage:
    """Read one SAR image as linear intensity and say how its pixels were interpreted.

    ``input_kind`` says what real-valued pixels are: "intensity", "amplitude" (squared here) or "auto".
    "auto" reads integer PNG/TIFF grey levels as amplitude, since 8/16-bit quick-looks and GRD products store
    amplitude, and floating-point data as intensity. Integer PNG/TIFF images are flagged as quick-looks: their
    grey levels carry an unknown display gain, so callers must not read them on a calibrated scale as they
    are (see :func:`quicklook_gain`). Complex arrays are single-look complex data and become |z|^2 whatever
    ``input_kind`` says.
    """
    path = Path(path)
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
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
        if ext == ".npy":
            a = np.load(path, allow_pickle=False)
        elif ext in (".tif", ".tiff"):
            a = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "PA"):
                    warnings.warn(
                        f"{path}: {im.mode} image converted to luminance (SAR is single-band)", stacklevel=2
                    )
                    im = im.convert("L")
                a = np.array(im)
    except (OSError, ValueError, UnidentifiedImageError, EOFError, tifffile.TiffFileError) as e:
        raise ValueError(f"{path}: could not read the file as {ext} ({e})") from e

    if not isinstance(a, np.ndarray) or a.dtype == object or a.dtype.kind not in "biufc":
        raise ValueError(f"{path}: expected a numeric array, got {getattr(a, 'dtype', type(a).__name__)}")
    if a.size == 0:
        raise ValueError(f"{path}: the image has no pixels (shape {a.shape})")
    a = _to_single_band(a, path)
    dtype = str(a.dtype)
    if np.iscomplexobj(a):
        intensity = np.abs(a.astype(np.complex128)) ** 2
        kind, quicklook = "complex", False
    else:
        quicklook = ext != ".npy" and a.dtype.kind in "biu"
        a = a.astype(np.float64)
        kind = input_kind if input_kind != "auto" else ("amplitude" if quicklook else "intensity")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: the image contains NaN or infinite values")
        if np.any(a < 0):
            raise ValueError(
                f"{path}: {kind} must be non-negative, found a minimum of {a.min():.4g} "
                "(is it already in dB? convert it to linear intensity first)"
            )
        intensity = a**2 if kind == "amplitude" else a
    if not np.all(np.isfinite(intensity)):
        raise ValueError(f"{path}: the image contains NaN or infinite values")
    return SARImage(intensity.astype(np.float32), kind, quicklook, dtype)


def load_sar_image(path: str | Path, input_kind: str = "auto") -> np.ndarray:
    """Read one SAR image as intensity, float32 (H, W); :func:`read_sar_image` also says how."""
    return read_sar_image(path, input_kind).intensity


def _log_positive(intensity: np.ndarray) -> np.ndarray:
    """ln of a bounded regular subsample of the non-zero pixels (as SARNormalizer.fit subsamples).

    Zero grey levels are left out because quick-looks use them for no-data borders, and ln(0) would drag
    the statistics to the normaliser's epsilon.
    """
    a = np.asarray(intensity, dtype=np.float64).ravel()
    a = a[a > 0]
    if a.size == 0:
        raise ValueError("the image is zero everywhere: there is no signal to read")
    return np.log(a[:: max(1, a.size // 262_144)])


def log_range_centre(intensity: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> float:
    """Centre of the ``low_pct``-``high_pct`` percentile range of ln(intensity) over the non-zero pixels."""
    lo, hi = np.percentile(_log_positive(intensity), [low_pct, high_pct])
    return float((lo + hi) / 2.0)


def log_median(intensities: np.ndarray | Iterable[np.ndarray]) -> float:
    """Median of ln(intensity) over the non-zero pixels of one or more images."""
    images = [intensities] if isinstance(intensities, np.ndarray) else list(intensities)
    return float(np.median(np.concatenate([_log_positive(im) for im in images])))


def quicklook_gain(
    intensity: np.ndarray, normalizer: SARNormalizer, reference_log_median: float | None = None
) -> float:
    """Intensity gain that puts an uncalibrated image on the scale of a normaliser's training data.

    A quick-look's grey levels are amplitude (or intensity) times an unknown display gain, which in the log
    domain the models see is an unknown offset; a gain leaves the image's contrast and speckle unchanged.
    With the training data's median log-intensity (``preprocessing()["log_median"]``), the gain moves the
    image's median there: the median is the statistic least moved by how many bright targets or dark water
    a scene has. Checkpoints saved without it only have the normaliser, whose range is the 0.5-99.5 %
    percentiles of the training data, so the image's own 0.5-99.5 % range is centred on it instead.
    """
    if reference_log_median is not None:
        if not np.isfinite(reference_log_median):
            raise ValueError(f"the reference log-median must be finite, got {reference_log_median!r}")
        return float(np.exp(reference_log_median - log_median(intensity)))
    return float(np.exp((normalizer.log_min + normalizer.log_max) / 2.0 - log_range_centre(intensity)))


# ----------------------------------------------------------------------------------------------- datasets
class SyntheticSARDataset(Dataset):
    """Simulated speckled scenes. Item ``i`` is float32 (1, H, W) in [0, 1], a pure function of (seed, i).

    The normaliser is fitted on the first few images unless one is given; a validation set should be given
    the training set's normaliser so both are on the same scale.
    """

    def __init__(
        self,
        n_images: int = 64,
        image_size: int = 256,
        looks: int = 4,
        seed: int = 0,
        normalizer: SARNormalizer | None = None,
        cache: bool | None = None,
    ) -> None:
        if int(n_images) < 1:
            raise ValueError(f"n_images must be at least 1, got {n_images}")
        if int(image_size) < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        if int(looks) < 1:
            raise ValueError(f"looks must be a positive integer, got {looks}")
        self.n_images = int(n_images)
        self.image_size = int(image_size)
        self.looks = int(looks)
        self.seed = int(seed)
        # Simulating a 256x256 scene costs ~15 ms of CPU; keeping the items makes later epochs free. By
        # default only sets up to 512 MiB are kept (each DataLoader worker keeps its own copy).
        self.cache = cache if cache is not None else self.n_images * self.image_size**2 * 4 <= 512 * 2**20
        self._cache: dict[int, np.ndarray] = {}
        # The median log-intensity lets quick-looks of unknown gain be put on this data's scale later.
        self.log_median: float | None = None
        self.normalizer = normalizer
        if normalizer is None:
            first = [self.intensity(i) for i in range(min(8, self.n_images))]
            self.log_median = log_median(first)
            self.normalizer = SARNormalizer.fit(first)

    def __len__(self) -> int:
        return self.n_images

    def _index(self, i: int) -> int:
        if not -self.n_images <= int(i) < self.n_images:
            raise IndexError(f"image index {i} out of range for {self.n_images} images")
        return int(i) % self.n_images

    def _scene(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self._index(i)])
        clean = simulate_reflectivity(self.image_size, rng)
        return clean, apply_speckle(clean, self.looks, rng)

    def clean_intensity(self, i: int) -> np.ndarray:
        """The noise-free reflectivity of image ``i`` (float32, H×W)."""
        return self._scene(i)[0]

    def intensity(self, i: int) -> np.ndarray:
        """The speckled intensity of image ``i`` (float32, H×W), before normalisation."""
        return self._scene(i)[1]

    def _compute(self, i: int) -> np.ndarray:
        return self.normalizer.to_model(self.intensity(i))[None]

    def __getitem__(self, i: int) -> torch.Tensor:
        i = self._index(i)
        x = self._cache.get(i)
        if x is None:
            x = self._compute(i)
            if self.cache:
                self._cache[i] = x
        return torch.from_numpy(x.copy())

    def preprocessing(self) -> dict[str, Any]:
        prep = {
            "kind": "sar-log-intensity",
            **self.normalizer.to_dict(),
            "looks": self.looks,
            "scale": "calibrated",
        }
        return prep if self.log_median is None else {**prep, "log_median": self.log_median}


class SARFolderDataset(Dataset):
    """Every ``image_size`` patch of the .npy/.tif/.tiff/.png images in a folder (recursively).

    Images are loaded once and kept in memory on the model's scale. Unreadable images and images smaller
    than one patch are skipped with a warning.

    ``scale`` says what the pixel values are on. "display": the grey levels of the files as they are (a
    folder of 8/16-bit quick-looks from one source, whose normaliser is fitted on those grey levels).
    "calibrated": linear backscatter; any quick-look in the folder is first brought onto the normaliser's
    scale by :func:`quicklook_gain`, as the studio does for an uploaded quick-look. "auto" is "display"
    when every file is an integer quick-look and "calibrated" otherwise, so that a mixed folder does not fit
    one normaliser across two unrelated scales. The choice is saved in ``preprocessing()["scale"]``.
    """

    def __init__(
        self,
        folder: str | Path,
        image_size: int = 256,
        input_kind: str = "auto",
        normalizer: SARNormalizer | None = None,
        stride: int | None = None,
        scale: str = "auto",
        median_hint: float | None = None,
    ) -> None:
        """`median_hint`: with a given `normalizer`, the training data's median log-intensity (a checkpoint's
        ``preprocessing["log_median"]``), which rescales quick-looks exactly as the studio does."""
        self.folder = Path(folder)
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
        if scale not in ("auto", *SCALES):
            raise ValueError(f"scale must be one of {('auto', *SCALES)}, got {scale!r}")
        if isinstance(image_size, bool) or int(image_size) < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if stride is not None and int(stride) < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        if not self.folder.is_dir():
            raise FileNotFoundError(f"SAR image folder not found: {self.folder}")
        self.image_size = int(image_size)
        self.stride = int(stride) if stride is not None else self.image_size
        self.input_kind = input_kind

        files = sorted(
            p
            for p in self.folder.rglob("*")
            if p.is_file() and p.suffix.lower() in SAR_EXTENSIONS and not p.name.startswith(".")
        )
        self.files: list[Path] = []
        images: list[SARImage] = []
        for p in files:
            try:
                img = read_sar_image(p, input_kind)
            except (ValueError, OSError) as e:
                warnings.warn(f"skipping {p}: {e}", stacklevel=2)
                continue
            h, w = img.intensity.shape
            if h < self.image_size or w < self.image_size:
                s = self.image_size
                warnings.warn(
                    f"skipping {p}: it is {h}x{w} pixels, smaller than one {s}x{s} patch", stacklevel=2
                )
                continue
            self.files.append(p)
            images.append(img)
        if not images:
            raise ValueError(
                f"no usable SAR image in {self.folder}: need {', '.join(SAR_EXTENSIONS)} files of at least "
                f"{self.image_size}x{self.image_size} pixels"
            )
        if scale == "auto":
            scale = "display" if all(im.quicklook for im in images) else "calibrated"
        self.scale = scale
        intensities = [im.intensity for im in images]
        if scale == "calibrated":
            calibrated = [im.intensity for im in images if not im.quicklook] or intensities
            self.log_median = median_hint if normalizer else log_median(calibrated)
            self.normalizer = normalizer or SARNormalizer.fit(calibrated)
            quick = [k for k, im in enumerate(images) if im.quicklook]
            for k in quick:
                gain = quicklook_gain(intensities[k], self.normalizer, self.log_median)
                intensities[k] = (intensities[k].astype(np.float64) * gain).astype(np.float32)
            if quick:
                names = ", ".join(self.files[k].name for k in quick[:5]) + (" ..." if len(quick) > 5 else "")
                warnings.warn(
                    f"{len(quick)} integer quick-look(s) among calibrated images in {self.folder} ({names}): "
                    "their grey levels have no calibration, so each was rescaled to centre its log-intensity "
                    "range on the normalisation range",
                    stacklevel=2,
                )
        else:
            self.log_median = median_hint if normalizer else log_median(intensities)
            self.normalizer = normalizer or SARNormalizer.fit(intensities)
        self._images = [self.normalizer.to_model(im) for im in intensities]
        self._index: list[tuple[int, int, int]] = [
            (k, y, x)
            for k, im in enumerate(self._images)
            for (y, x) in _patch_origins(im.shape, self.image_size, self.stride)
        ]

    def __len__(self) -> int:
        return len(self._index)

    def patch_origin(self, i: int) -> tuple[Path, int, int]:
        """(file, row, column) of patch ``i``'s top-left corner."""
        k, y, x = self._index[i]
        return self.files[k], y, x

    def __getitem__(self, i: int) -> torch.Tensor:
        k, y, x = self._index[i]
        s = self.image_size
        return torch.from_numpy(np.ascontiguousarray(self._images[k][y : y + s, x : x + s])[None])

    def preprocessing(self) -> dict[str, Any]:
        prep = {
            "kind": "sar-log-intensity",
            **self.normalizer.to_dict(),
            "input_kind": self.input_kind,
            "scale": self.scale,
        }
        return prep if self.log_median is None else {**prep, "log_median": self.log_median}


def normalize_patches(
    image: np.ndarray, normalizer: SARNormalizer, size: int = 256, stride: int | None = None
) -> torch.Tensor:
    """An intensity image → (N, 1, size, size) model-scale patches (for uploads in the studio)."""
    patches = patchify(np.asarray(image), size, stride)
    return torch.from_numpy(np.stack([normalizer.to_model(p) for p in patches])[:, None])


__all__ = [
    "INPUT_KINDS",
    "SAR_EXTENSIONS",
    "SCALES",
    "SARFolderDataset",
    "SARImage",
    "SARNormalizer",
    "SyntheticSARDataset",
    "apply_speckle",
    "load_sar_image",
    "log_median",
    "log_range_centre",
    "normalize_patches",
    "patchify",
    "quicklook_gain",
    "read_sar_image",
    "simulate_reflectivity",
]
