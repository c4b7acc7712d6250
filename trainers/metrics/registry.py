"""One place that says what every logged metric means: its direction, target band, unit, format and why it
can be missing.

The run store's best values, the model card, the studio tables and the ``compare`` leaderboard all read it,
so "which way is better" cannot disagree between them. A name that is not registered is *unknown*: nothing
here guesses a direction from a substring of it (``broken_fraction`` is not "higher is better" because it ends
in "fraction", nor ``identity_ber`` a loss because it contains "ber").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Direction = Literal["max", "min", "band", "info"]

#: Prefixes naming the split a value was logged in ("val/psnr", "train/loss", Keras-style "val_loss").
_SPLIT_PREFIXES = ("val/", "train/", "test/", "val_", "train_", "test_")


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is. ``direction``: "max" / "min" (higher / lower is better), "band" (best inside
    ``band``, and the closer to it the better), "info" (a figure with no better side: a baseline, a
    regulariser). ``fmt`` is a format spec for the value (e.g. ".2f"); ``missing`` says why a value can be
    NaN (missing) for an example or a run."""

    name: str
    domain: str  # "sar", "audio", "fragments" or "all"
    direction: Direction
    band: tuple[float, float] | None
    unit: str
    fmt: str
    description: str
    missing: str


def _m(
    name: str,
    domain: str,
    direction: Direction,
    unit: str,
    fmt: str,
    description: str,
    missing: str = "",
    band: tuple[float, float] | None = None,
) -> MetricInfo:
    return MetricInfo(name, domain, direction, band, unit, fmt, description, missing)


_NO_VALID = "the image has no valid (non no-data) pixel"
_SILENT = "every reference clip is silent, so there is no spectrum to compare against"

_ENTRIES: tuple[MetricInfo, ...] = (
    # ------------------------------------------------------------------------------------------ any domain
    _m("loss", "all", "min", "", ".4g", "training objective on the validation set (the domain's loss)"),
    _m(
        "mse",
        "all",
        "min",
        "",
        ".4g",
        "mean squared error of the reconstruction (SAR: normalised image pixels; audio: model features)",
        _NO_VALID,
    ),
    # ------------------------------------------------------------------------------------------------- SAR
    _m(
        "mse",
        "sar",
        "min",
        "",
        ".4g",
        "mean squared error of the normalised [0, 1] dB image over the valid pixels",
        _NO_VALID,
    ),
    _m(
        "psnr",
        "sar",
        "max",
        "dB",
        ".2f",
        "peak signal-to-noise ratio 10*log10(1/MSE) of the normalised [0, 1] dB image over the valid pixels, "
        "per image then averaged; capped at 100 dB for identical images",
        _NO_VALID,
    ),
    _m(
        "psnr_db",
        "sar",
        "max",
        "dB",
        ".2f",
        "PSNR of sigma-nought in dB within the fixed window -25 to +5 dB (both images mapped back to dB with "
        "the input's own map and clipped to it; peak 30 dB): comparable across images and data sets of "
        "calibrated backscatter",
        "no dB map to take the image back to sigma-nought, or no valid pixel",
    ),
    _m(
        "psnr_8bit",
        "sar",
        "max",
        "dB",
        ".2f",
        "PSNR after rounding input and reconstruction to 8 bits, as an 8-bit image file would store them "
        "(the scale classic codecs are compared on)",
        _NO_VALID,
    ),
    _m(
        "ssim",
        "sar",
        "max",
        "",
        ".4f",
        "structural similarity (Gaussian 11x11 window, sigma 1.5, data range 1) averaged over the windows "
        "that touch no no-data pixel; 1 is identical",
        "no 11x11 window of the image is free of no-data pixels",
    ),
    _m(
        "enl_ratio",
        "sar",
        "band",
        "",
        ".3f",
        "ENL(reconstruction) / ENL(input), ENL = mean^2/var of the intensity over homogeneous regions of the "
        "input; above the band the output is over-smoothed, below it noisier than the input",
        "no usable homogeneous region in the input: too few valid 15x15 boxes as smooth as its speckle, or "
        "their input ENL under 0.9 (texture, not fully developed speckle), or no dB range to map back",
        band=(0.7, 1.3),
    ),
    _m(
        "epi",
        "sar",
        "max",
        "",
        ".4f",
        "edge preservation index (Sattar et al. 1997): correlation of the Laplacians of input and "
        "reconstruction over valid pixels; 1 keeps every edge",
        "the input has no edges (a flat Laplacian) or no valid pixel",
    ),
    _m(
        "bpp_float32",
        "sar",
        "min",
        "bit/px",
        ".3g",
        "bits per image pixel spent on the latent stored as float32 (fewer bits for the same quality is "
        "better compression)",
    ),
    _m("bpp_8bit", "sar", "min", "bit/px", ".3g", "bits per image pixel of the latent quantised to 8 bits"),
    _m(
        "bpp",
        "all",
        "min",
        "bit/px",
        ".3g",
        "bits per pixel of the coded image: the latent at 8 bits for a model, the file's actual bytes for "
        "a codec",
    ),
    _m(
        "output_spread",
        "sar",
        "band",
        "",
        ".3f",
        "the output's spread (std over valid pixels) over the input's, averaged over images; under 0.05 is a "
        "near-constant image (a collapsed model)",
        band=(0.5, 1.5),
    ),
    _m(
        "rate_bpp",
        "sar",
        "min",
        "bpp",
        ".4g",
        "bits per pixel of the latent under the model's learned entropy model (entropy_model=factorized): "
        "in training with the noise relaxation, in validation of the rounded latent",
    ),
    _m(
        "distortion",
        "sar",
        "min",
        "",
        ".4g",
        "the SAR loss without its rate term (0.7 MSE + 0.3 (1 - SSIM)) of a rate-distortion-trained model",
    ),
    _m(
        "collapsing",
        "all",
        "min",
        "",
        ".0f",
        "1 when a validation found the model collapsing (constant output, no latent in use, or worse than "
        "the identity), else 0; the reason is in the run's log and collapse.json",
    ),
    # ----------------------------------------------------------------------------------------------- audio
    _m(
        "mse",
        "audio",
        "min",
        "",
        ".4g",
        "mean squared error between the reconstructed and the input features (spectrogram channels)",
    ),
    _m(
        "kl",
        "audio",
        "info",
        "nat",
        ".4g",
        "KL divergence of the latent posterior from the N(0, 1) prior: a regulariser, weighed against the "
        "reconstruction by kl_weight, with no better side by itself",
    ),
    _m(
        "spectral_convergence",
        "audio",
        "min",
        "",
        ".4f",
        "||S - S_est||_F / ||S||_F of the STFT magnitudes of the decoded audio; 0 is a perfect match, 1 as "
        "wrong as silence",
        _SILENT,
    ),
    _m(
        "lsd",
        "audio",
        "min",
        "dB",
        ".3f",
        "log-spectral distance of the decoded audio: RMS over frequency of the log-power difference, "
        "averaged over frames",
    ),
    _m(
        "roundtrip_spectral_convergence",
        "audio",
        "min",
        "",
        ".4f",
        "spectral convergence of the feature round trip alone (encode to features and decode, no model): "
        "the ceiling the representation allows",
        _SILENT,
    ),
    _m(
        "roundtrip_lsd",
        "audio",
        "min",
        "dB",
        ".3f",
        "log-spectral distance of the feature round trip alone: the ceiling the representation allows",
    ),
    _m(
        "active_units",
        "audio",
        "max",
        "",
        ".0f",
        "latent dimensions in use: the variance over inputs of the posterior mean above 0.01 (Burda et al. "
        "2016); 0 is posterior collapse, the same output for every input",
    ),
    _m(
        "kl_dim_max",
        "audio",
        "info",
        "nat",
        ".3g",
        "KL of the most informative latent dimension (batch mean): near 0 for every dimension is posterior "
        "collapse",
    ),
    _m(
        "kl_dim_median",
        "audio",
        "info",
        "nat",
        ".3g",
        "median over latent dimensions of the per-dimension KL (batch mean)",
    ),
    _m(
        "output_spread",
        "audio",
        "band",
        "",
        ".3f",
        "how much the output features vary across clips against the input's (std across clips, averaged "
        "over bins and frames, output / input); near 0 is a constant output",
        band=(0.5, 1.5),
    ),
    # ------------------------------------------------------------------------------------------- fragments
    _m("accuracy", "fragments", "max", "", ".4f", "fraction of repaired bytes equal to the clean ones"),
    _m(
        "accuracy_corrupted",
        "fragments",
        "max",
        "",
        ".4f",
        "byte accuracy of the repair over the bytes the noise changed",
        "the noise changed no byte",
    ),
    _m(
        "identity_accuracy",
        "fragments",
        "info",
        "",
        ".4f",
        "baseline: byte accuracy of the corrupted input left as it is; a repair must beat it",
    ),
    _m(
        "identity_accuracy_corrupted",
        "fragments",
        "info",
        "",
        ".4f",
        "baseline: accuracy of the corrupted input over the changed bytes (0 unless a substitution drew the "
        "same value)",
        "the noise changed no byte",
    ),
    _m("ber", "fragments", "min", "", ".4g", "bit error rate of the repair: wrong bits / all bits"),
    _m(
        "identity_ber",
        "fragments",
        "info",
        "",
        ".4g",
        "baseline: bit error rate of the corrupted input left as it is; a repair must go below it",
    ),
    _m(
        "fixed_fraction",
        "fragments",
        "max",
        "",
        ".4f",
        "of the bytes the noise really damaged, the fraction the repair restored",
        "the noise damaged no byte",
    ),
    _m(
        "broken_fraction",
        "fragments",
        "min",
        "",
        ".4f",
        "of the bytes the noise left intact, the fraction the repair made wrong (the cost of repairing)",
        "the noise left no byte intact",
    ),
)

_BY_NAME: dict[str, MetricInfo] = {}
_BY_DOMAIN: dict[tuple[str, str], MetricInfo] = {}
for _info in _ENTRIES:
    if _info.domain == "all" or _info.name not in _BY_NAME:
        _BY_NAME[_info.name] = _info
    _BY_DOMAIN[(_info.domain, _info.name)] = _info
del _info

#: Every registered metric name.
METRIC_NAMES: tuple[str, ...] = tuple(sorted(_BY_NAME))


def base_name(name: str) -> str:
    """The metric name without its split: "val/psnr" -> "psnr", "val_loss" -> "loss"."""
    key = str(name).strip().lower()
    if "/" in key:
        return key.rsplit("/", 1)[1]
    for prefix in _SPLIT_PREFIXES:
        if key.startswith(prefix) and key[len(prefix) :] in _BY_NAME:
            return key[len(prefix) :]
    return key


def metric_info(name: str, domain: str | None = None) -> MetricInfo | None:
    """The registered metric of that name (a split prefix is ignored); the domain's own entry where a name
    means different things per domain ("mse"). None for an unknown name."""
    key = base_name(name)
    if domain is not None and (domain, key) in _BY_DOMAIN:
        return _BY_DOMAIN[(domain, key)]
    return _BY_NAME.get(key)


def direction(name: str) -> Direction | None:
    """ "max", "min", "band" or "info"; None for an unknown metric."""
    info = metric_info(name)
    return None if info is None else info.direction


def _band_text(band: tuple[float, float]) -> str:
    return f"target {band[0]:g}–{band[1]:g}"


def arrow(name: str) -> str:
    """ "↑" (higher is better), "↓" (lower), "target 0.7–1.3" (a band), "" for an info or unknown metric."""
    info = metric_info(name)
    if info is None or info.direction == "info":
        return ""
    if info.direction == "band":
        return _band_text(info.band)  # type: ignore[arg-type]
    return "↑" if info.direction == "max" else "↓"


def better_text(name: str) -> str:
    """Words for a table's "better" column: "higher", "lower", "target 0.7–1.3", "no direction" (a
    baseline or regulariser) or "unknown metric"."""
    info = metric_info(name)
    if info is None:
        return "unknown metric"
    return {"max": "higher", "min": "lower", "info": "no direction"}.get(info.direction) or arrow(name)


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # numpy scalars, 0-d tensors
        except (TypeError, ValueError):
            return None
    v = float(value)
    return v if math.isfinite(v) else None


def band_distance(name: str, value: float) -> float:
    """How far ``value`` lies outside the metric's band (0 inside it)."""
    info = metric_info(name)
    if info is None or info.band is None:
        raise ValueError(f"metric {name!r} has no target band")
    lo, hi = info.band
    return max(lo - value, 0.0, value - hi)


def _score(info: MetricInfo, value: float) -> tuple[float, float]:
    """Sort key, smaller is better: (primary, tie-break)."""
    if info.direction == "max":
        return (-value, 0.0)
    if info.direction == "min":
        return (value, 0.0)
    lo, hi = info.band  # type: ignore[misc]
    # Inside the band every value is on target; the band's centre breaks ties (1.0 for the ENL ratio).
    return (max(lo - value, 0.0, value - hi), abs(value - (lo + hi) / 2))


def _ranked(name: str) -> MetricInfo:
    info = metric_info(name)
    if info is None:
        raise ValueError(f"unknown metric {name!r}: no direction is registered for it, so none is better")
    if info.direction == "info":
        raise ValueError(f"metric {name!r} has no better side ({info.description})")
    return info


def is_better(name: str, a: float, b: float) -> bool:
    """Whether value ``a`` of metric ``name`` is strictly better than ``b``. A missing (NaN, None) or
    infinite value is worse than any finite one. Unknown and info metrics raise ValueError."""
    info = _ranked(name)
    fa, fb = _finite(a), _finite(b)
    if fa is None:
        return False
    if fb is None:
        return True
    return _score(info, fa) < _score(info, fb)


def best_value(name: str, values: Iterable[float | None]) -> float | None:
    """The best finite value (max, min, or closest to the band), or None: for an unknown or info metric
    (nothing to choose by), or when no value is finite."""
    info = metric_info(name)
    if info is None or info.direction == "info":
        return None
    finite = [v for v in (_finite(x) for x in values) if v is not None]
    if not finite:
        return None
    return min(finite, key=lambda v: _score(info, v))


def format_value(name: str, value: float | None) -> str:
    """The value rounded per the metric's format (".4g" for an unknown one); "n/a" for a missing (NaN,
    None) or infinite value, so no table ever shows inf or nan."""
    v = _finite(value)
    if v is None:
        return "n/a"
    info = metric_info(name)
    return f"{v:{info.fmt if info else '.4g'}}"


def missing_reason(name: str) -> str:
    """Why a value of this metric can be missing ("" if it always has one; a note for an unknown one)."""
    info = metric_info(name)
    if info is None:
        return f"unknown metric {base_name(name)!r}"
    return info.missing
