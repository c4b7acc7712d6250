"""When a model is useless: its output is constant, or it does no better than a trivial baseline.

One place decides it, per domain, so the studio's SAR / Audio / Fragments tabs and the ``compare``
leaderboard flag the same models for the same reasons. A table can otherwise look healthy for a model that
learned nothing: an untrained SAR network that paints a flat grey image still gets an "ENL ratio" of 17 (a
flat image has no speckle at all), and an audio VAE that decodes every clip to the same buzz still gets a
log-spectral distance. Each check compares with the cheapest output that needs no model:

- SAR: the mean-value image (every valid pixel set to the input's mean over its valid pixels).
- audio: silence (spectral convergence 1 by definition) and the best flat spectrum (one constant power in
  every bin of every frame, chosen to minimise the log-spectral distance to the input).
- fragments: the identity baseline (the corrupted bytes returned unchanged); a repair that does not beat
  the identity baseline on held-out files is not working.

A flag is words: :class:`Flag` ``short`` (a few words for a table cell) and ``detail`` (the figures that
triggered it); ``text`` joins them as "short: detail", the form the ``compare`` JSON lists under "flags".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# ------------------------------------------------------------------------------------------- thresholds
#: SAR: an output whose spread (standard deviation over the valid pixels) is below this fraction of the
#: input's is constant. Even perfectly aligned with the input, ``mean + 0.05 (x - mean)`` removes only
#: 1 - 0.95^2 = 10 % of the mean-value image's squared error, a PSNR gain of at most 0.45 dB, and shows the
#: scene at a twentieth of its contrast: a flat grey image to the eye.
CONSTANT_STD_FRACTION = 0.05
#: SAR, several images (``compare``): the model is flagged constant when its output is constant on at least
#: this share of them. One flat input can fairly get a flat output; most of a data set cannot.
CONSTANT_SHARE = 0.5
#: Audio: spectral convergence of silence. ||S - 0|| / ||S|| = 1 exactly, so a reconstruction at or above
#: it is as far from the input's spectrum as no sound at all.
SILENCE_SPECTRAL_CONVERGENCE = 1.0
#: Baselines are beaten only strictly: a model "at or below" its trivial baseline is flagged (PSNR, SSIM,
#: byte accuracy higher; LSD lower). No margin: the baselines are the best constant outputs (the mean
#: image minimises the squared error of any constant image), so any gain at all is the model's own work.

MEAN_IMAGE = "the mean-value image"
FLAT_SPECTRUM = "a flat spectrum"
IDENTITY = "the identity baseline"


@dataclass(frozen=True)
class Flag:
    """Why a model is flagged: ``short`` for a table cell, ``detail`` with the figures."""

    short: str
    detail: str

    @property
    def text(self) -> str:
        return f"{self.short}: {self.detail}"

    def __str__(self) -> str:
        return self.text


def short_of(text: str) -> str:
    """The short part of a flag's text ("constant output: ..." -> "constant output")."""
    return text.partition(":")[0]


def flag_cell(flags: Sequence[Flag | str], none: str = "none") -> str:
    """A table cell beside a model's row: every flag's text, or ``none`` when the checks found nothing."""
    return "; ".join(str(f) for f in flags) if flags else none


def qualified(value_text: str, flags: Sequence[Flag | str]) -> str:
    """A figure that a flag makes meaningless (the ENL ratio of a flat image), shown with the flag rather
    than as a plain number: "214.900 ⚠ constant output"."""
    if not flags or value_text == "n/a":
        return value_text
    first = flags[0]
    return f"{value_text} ⚠ {first.short if isinstance(first, Flag) else short_of(first)}"


def _nanmean(values: np.ndarray | Sequence[float] | float) -> float:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _not_better(
    name: str,
    unit: str,
    fmt: str,
    model: np.ndarray | Sequence[float] | float,
    base: np.ndarray | Sequence[float] | float,
    units: np.ndarray | Sequence[int] | None,
    higher: bool,
) -> str:
    """Words when the model's gain over a baseline on the same examples is not shown to be above zero
    (the paired 95 % interval over units reaches zero or below; with a single unit, the mean difference);
    "" when it is. Without a margin, a model could escape by 0.0007 dB (issue 22)."""
    from trainers.metrics.stats import paired

    a = np.asarray(model, dtype=np.float64).reshape(-1)
    b = np.asarray(base, dtype=np.float64).reshape(-1)
    if a.size != b.size:  # means only (a caller with one figure per side)
        a, b = np.array([_nanmean(a)]), np.array([_nanmean(b)])
    m, bm = _nanmean(a), _nanmean(b)
    if not (math.isfinite(m) and math.isfinite(bm)):
        return ""
    gain = (a - b) if higher else (b - a)
    res = paired(gain, np.zeros_like(gain), units, seed=0)
    # "≤" for a score that should be higher, "≥" for one that should be lower: the model is on the wrong side.
    sign = ("≤" if higher else "≥") if (m <= bm if higher else m >= bm) else "vs"
    if res["ci95"] is None:
        return (
            f"{name} {m:{fmt}}{unit} {sign} {bm:{fmt}}{unit}"
            if res["diff"] is not None and res["diff"] <= 0
            else ""
        )
    lo, hi = res["ci95"]
    if lo > 0:
        return ""
    return (
        f"{name} {m:{fmt}}{unit} {sign} {bm:{fmt}}{unit} (gain {res['diff']:+{fmt}}{unit}, 95 % interval "
        f"[{lo:+{fmt}}, {hi:+{fmt}}] over {res['n_units']} units)"
    )


# ---------------------------------------------------------------------------------------------------- SAR
def _valid_stats(t: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (mean, std) over the valid pixels of (B, 1, H, W) tensors, float64; NaN with none valid."""
    t, v = t.double(), (valid > 0).double()
    n = v.flatten(1).sum(1)
    mean = (t * v).flatten(1).sum(1) / n.clamp(min=1)
    var = (((t - mean.view(-1, 1, 1, 1)) ** 2) * v).flatten(1).sum(1) / n.clamp(min=1)
    nan = torch.full_like(mean, math.nan)
    return torch.where(n > 0, mean, nan), torch.where(n > 0, var.sqrt(), nan)


def _batch4(a: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a
    if t.dim() == 2:
        t = t[None, None]
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"{name}: expected images (B, 1, H, W) or one (H, W), got shape {tuple(t.shape)}")
    return t


@torch.no_grad()
def sar_spread(
    x: torch.Tensor | np.ndarray, x_hat: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray | None
) -> dict[str, np.ndarray]:
    """Per image: ``output_std`` and ``input_std``, the standard deviations over the valid pixels."""
    xt, yt = _batch4(x, "x"), _batch4(x_hat, "x_hat")
    if xt.shape != yt.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    v = torch.ones_like(xt) if valid is None else _batch4(valid, "valid").to(xt.device)
    _, sx = _valid_stats(xt, v)
    _, sy = _valid_stats(yt.to(xt.device), v)
    return {"output_std": sy.cpu().numpy(), "input_std": sx.cpu().numpy()}


@torch.no_grad()
def sar_mean_image_scores(
    x: torch.Tensor | np.ndarray,
    valid: torch.Tensor | np.ndarray | None = None,
    db_range: torch.Tensor | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """PSNR and SSIM per image of the mean-value image: each image's mean over its valid pixels, everywhere.

    It is the best constant image by squared error (its MSE is the input's variance), so a model at or below
    its PSNR does no better than knowing the image's average brightness.
    """
    from trainers.metrics.sar import sar_metrics_per_image

    xt = _batch4(x, "x").float()
    v = torch.ones_like(xt) if valid is None else _batch4(valid, "valid").to(xt.device).float()
    mean, _ = _valid_stats(xt, v)
    flat = torch.nan_to_num(mean, nan=0.0).view(-1, 1, 1, 1).expand_as(xt).to(xt.dtype)
    scores = sar_metrics_per_image(xt, flat, tuple(xt.shape), valid=v, db_range=db_range)
    return {k: scores[k].cpu().double().numpy() for k in ("psnr", "ssim")}


def sar_flags(
    psnr: np.ndarray | Sequence[float] | float,
    ssim: np.ndarray | Sequence[float] | float,
    spread: dict[str, np.ndarray],
    baseline: dict[str, np.ndarray],
    units: np.ndarray | Sequence[int] | None = None,
) -> list[Flag]:
    """Flags of a SAR model from its per-image PSNR and SSIM, :func:`sar_spread` and
    :func:`sar_mean_image_scores` of the same images: "no better" when the paired 95 % interval of the
    model's gain over the mean-value image (over `units`, the images the examples come from; each example
    its own when None) does not lie wholly above zero, or, with one unit, when its mean does not."""
    flags: list[Flag] = []
    out_std = np.asarray(spread["output_std"], dtype=np.float64).reshape(-1)
    in_std = np.asarray(spread["input_std"], dtype=np.float64).reshape(-1)
    usable = np.isfinite(out_std) & np.isfinite(in_std) & (in_std > 0)
    if usable.any():
        ratio = out_std[usable] / in_std[usable]
        constant = ratio < CONSTANT_STD_FRACTION
        if constant.mean() >= CONSTANT_SHARE:
            if ratio.size == 1:
                detail = (
                    f"its spread over the valid pixels is {ratio[0]:.1%} of the input's "
                    f"(under {CONSTANT_STD_FRACTION:.0%})"
                )
            else:
                detail = (
                    f"on {int(constant.sum())} of {ratio.size} images its spread over the valid pixels is "
                    f"under {CONSTANT_STD_FRACTION:.0%} of the input's (median {float(np.median(ratio)):.1%})"
                )
            flags.append(Flag("constant output", detail))
    parts = []
    for name, unit, fmt, model, base in (
        ("PSNR", " dB", ".2f", psnr, baseline["psnr"]),
        ("SSIM", "", ".4f", ssim, baseline["ssim"]),
    ):
        text = _not_better(name, unit, fmt, model, base, units, higher=True)
        if text:
            parts.append(text)
    if parts:
        flags.append(
            Flag(f"no better than {MEAN_IMAGE}", f"{', '.join(parts)} of the input's mean value everywhere")
        )
    return flags


# -------------------------------------------------------------------------------------------------- audio
def flat_spectrum_lsd(ref: np.ndarray | torch.Tensor, n_fft: int = 2048, hop_length: int = 512) -> float:
    """Log-spectral distance (dB, as ``trainers.metrics.audio.log_spectral_distance``: the same floor and
    bandwidth) of the best flat spectrum: one constant power in every bin and frame, chosen per clip to
    minimise the LSD to ``ref``; averaged over a batch (B, T). A reconstruction at or above it does no better
    than a constant hiss."""
    import librosa
    from scipy.optimize import minimize_scalar

    from trainers.metrics.audio import lsd_log_powers

    r = ref.detach().cpu().double().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float64)
    if r.ndim == 1:
        r = r[None]
    if r.ndim != 2 or r.shape[-1] < n_fft:
        raise ValueError(f"ref: expected a waveform (T,) or batch (B, T) of at least n_fft={n_fft} samples")
    if not np.isfinite(r).all():
        raise ValueError("ref: waveform contains NaN or infinite samples")
    s = np.abs(librosa.stft(r, n_fft=n_fft, hop_length=hop_length, center=True, pad_mode="constant"))
    scores = []
    for clip, _ in lsd_log_powers(s, None):

        def lsd(c: float, clip: np.ndarray = clip) -> float:
            return float(np.sqrt(np.mean((clip - c) ** 2, axis=0)).mean())

        # Convex in c (a mean of norms of affine functions): a bounded scalar search finds the minimum.
        lo, hi = float(clip.min()), float(clip.max())
        if hi - lo < 1e-9:
            scores.append(0.0)
            continue
        scores.append(float(minimize_scalar(lsd, bounds=(lo, hi), method="bounded").fun))
    return float(np.mean(scores))


def spectrum_db(wave: np.ndarray, n_fft: int = 2048, hop_length: int = 512) -> np.ndarray:
    """A clip's average spectrum: mean power over frames per bin, in dB, floored 80 dB below its peak bin."""
    import librosa

    p = np.abs(librosa.stft(np.asarray(wave, np.float64), n_fft=n_fft, hop_length=hop_length)) ** 2
    mean = p.mean(axis=1)
    return 10.0 * np.log10(np.maximum(mean, max(float(mean.max()), 1e-30) * 1e-8))


def _variation(rows: np.ndarray) -> float:
    """Mean over columns of the standard deviation across rows: how much the examples differ."""
    return float(np.asarray(rows, np.float64).std(axis=0).mean())


def _constant_flag(what: str, unit: str, inputs: np.ndarray, outputs: np.ndarray) -> Flag | None:
    if len(inputs) < 2:
        return None
    vin, vout = _variation(inputs), _variation(outputs)
    if vin > 0 and vout < CONSTANT_STD_FRACTION * vin:
        return Flag(
            "constant output",
            f"{what} varies {vout:.3g}{unit} across the {len(outputs)} examples against {vin:.3g}{unit} for "
            f"the inputs (under {CONSTANT_STD_FRACTION:.0%})",
        )
    return None


def audio_flags(
    spectral_convergence: float | np.ndarray,
    lsd: float | np.ndarray,
    flat_lsd: float | np.ndarray,
    units: np.ndarray | Sequence[int] | None = None,
    spectra: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Flag]:
    """Flags of decoded reconstructions from their spectral convergence and log-spectral distance (per clip,
    or means) and the :func:`flat_spectrum_lsd` of the same clips: "no better than a flat spectrum" unless
    the paired interval over `units` shows a gain. `spectra`, the (input, output) :func:`spectrum_db` of
    every clip, adds the constant-output check: the output's average spectrum hardly changes from clip to
    clip while the inputs' does."""
    flags = []
    if spectra is not None:
        flag = _constant_flag("its average spectrum", " dB", spectra[0], spectra[1])
        if flag:
            flags.append(flag)
    sc = _nanmean(spectral_convergence)
    if math.isfinite(sc) and sc >= SILENCE_SPECTRAL_CONVERGENCE:
        flags.append(
            Flag(
                "no better than silence",
                f"spectral convergence {sc:.4f} ≥ {SILENCE_SPECTRAL_CONVERGENCE:g}, what an all-zero output "
                "scores",
            )
        )
    text = _not_better("log-spectral distance", " dB", ".3f", lsd, flat_lsd, units, higher=False)
    if text:
        flags.append(
            Flag(f"no better than {FLAT_SPECTRUM}", f"{text} of the best constant power in every bin")
        )
    return flags


# ---------------------------------------------------------------------------------------------- fragments
def byte_histograms(fragments: np.ndarray) -> np.ndarray:
    """(N, 256) share of each byte value in each fragment of an (N, L) uint8 array."""
    f = np.asarray(fragments, dtype=np.uint8)
    out = np.zeros((f.shape[0], 256))
    for i, row in enumerate(f):
        out[i] = np.bincount(row, minlength=256) / max(row.size, 1)
    return out


def fragments_flags(
    accuracy: float | np.ndarray,
    identity_accuracy: float | np.ndarray,
    units: np.ndarray | Sequence[int] | None = None,
    histograms: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Flag]:
    """Flags of a fragment repair from its byte accuracy and the identity baseline's on the same fragments
    (per fragment, or means): a repair whose paired gain over the corrupted input left as it is is not shown
    above zero is not working. `histograms`, the (input, output) :func:`byte_histograms`, adds the
    constant-output check on the output's byte distribution."""
    flags = []
    if histograms is not None:
        flag = _constant_flag("its byte distribution", "", histograms[0], histograms[1])
        if flag:
            flags.append(flag)
    text = _not_better("byte accuracy", "", ".2%", accuracy, identity_accuracy, units, higher=True)
    if text:
        flags.append(Flag(f"does not beat {IDENTITY}", f"{text} of the corrupted input left as it is"))
    return flags
