"""SAR images: simulated speckled scenes, real image files, and the log-intensity normalisation.

Speckle in SAR is multiplicative: an L-look intensity image is reflectivity × Gamma(L, 1/L). Taking the
log turns it into additive noise of fixed variance, which is why the models see ln(intensity) mapped to
[0, 1]. The two constants of that map travel with each checkpoint (``preprocessing()``), so a model
trained on one data set reads new images on the same scale.
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


def load_sar_image(path: str | Path, input_kind: str = "auto") -> np.ndarray:
    """Read one SAR image as intensity, float32 (H, W).

    ``input_kind`` says what real-valued pixels are: "intensity", "amplitude" (squared here) or "auto"
    (PNG → amplitude, since 8/16-bit quick-looks store amplitude; .npy/.tif → intensity). Complex arrays
    are single-look complex data and become |z|² whatever ``input_kind`` says.
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
    if np.iscomplexobj(a):
        intensity = np.abs(a.astype(np.complex128)) ** 2
    else:
        a = a.astype(np.float64)
        kind = input_kind if input_kind != "auto" else ("amplitude" if ext == ".png" else "intensity")
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
    return intensity.astype(np.float32)


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
        self.normalizer = normalizer or SARNormalizer.fit(
            [self.intensity(i) for i in range(min(8, self.n_images))]
        )

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
        return {"kind": "sar-log-intensity", **self.normalizer.to_dict(), "looks": self.looks}


class SARFolderDataset(Dataset):
    """Every ``image_size`` patch of the .npy/.tif/.tiff/.png images in a folder (recursively).

    Images are loaded once and kept in memory on the model's scale. Unreadable images and images smaller
    than one patch are skipped with a warning.
    """

    def __init__(
        self,
        folder: str | Path,
        image_size: int = 256,
        input_kind: str = "auto",
        normalizer: SARNormalizer | None = None,
        stride: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
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
        intensities: list[np.ndarray] = []
        for p in files:
            try:
                img = load_sar_image(p, input_kind)
            except (ValueError, OSError) as e:
                warnings.warn(f"skipping {p}: {e}", stacklevel=2)
                continue
            h, w = img.shape
            if h < self.image_size or w < self.image_size:
                s = self.image_size
                warnings.warn(
                    f"skipping {p}: it is {h}x{w} pixels, smaller than one {s}x{s} patch", stacklevel=2
                )
                continue
            self.files.append(p)
            intensities.append(img)
        if not intensities:
            raise ValueError(
                f"no usable SAR image in {self.folder}: need {', '.join(SAR_EXTENSIONS)} files of at least "
                f"{self.image_size}x{self.image_size} pixels"
            )
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
        return {"kind": "sar-log-intensity", **self.normalizer.to_dict(), "input_kind": self.input_kind}


def normalize_patches(
    image: np.ndarray, normalizer: SARNormalizer, size: int = 256, stride: int | None = None
) -> torch.Tensor:
    """An intensity image → (N, 1, size, size) model-scale patches (for uploads in the studio)."""
    patches = patchify(np.asarray(image), size, stride)
    return torch.from_numpy(np.stack([normalizer.to_model(p) for p in patches])[:, None])


__all__ = [
    "INPUT_KINDS",
    "SAR_EXTENSIONS",
    "SARFolderDataset",
    "SARNormalizer",
    "SyntheticSARDataset",
    "apply_speckle",
    "load_sar_image",
    "normalize_patches",
    "patchify",
    "simulate_reflectivity",
]
