"""Quality metrics for audio reconstructions: spectral convergence, log-spectral distance, feature MSE.

Waveforms are 1-D arrays ``(T,)`` or batches ``(B, T)`` (numpy arrays or torch tensors). Reference and
estimate are cropped to the shorter length (the inverse STFT of a reconstruction may be a few samples
shorter), then each clip is scored on its librosa STFT magnitude (Hann window, centred frames, zero
padding) and the scores are averaged over the batch.
"""

from __future__ import annotations

import numbers

import librosa
import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

#: A reference clip quieter than this RMS (-100 dBFS, below 16-bit dither) counts as silent: its spectral
#: convergence ||S - S_est|| / ||S|| would divide by (almost) nothing and read 1e8 for an ordinary estimate.
SILENT_RMS = 1e-5
#: Log-spectral distance: each clip's powers are floored this many dB below the reference's peak power, and
#: only the bins up to the reference's bandwidth (the highest bin whose mean power is above that floor) count.
#: An absolute floor (1e-10) let the empty bins of a band-limited reference (a 16 kHz recording at 48 kHz) or
#: of a band-limited codec dominate: Opus 6 kb/s scored worse than a flat spectrum (issue 22).
LSD_FLOOR_DB = 80.0


def _as_waveforms(a: ArrayLike, name: str) -> np.ndarray:
    """Float64 ``(B, T)`` from ``(T,)`` or ``(B, T)``."""
    if isinstance(a, torch.Tensor):
        if a.is_complex() or a.dtype == torch.bool:
            raise ValueError(f"{name}: expected a real-valued waveform, got dtype {a.dtype}")
        arr = a.detach().cpu().double().numpy()
    elif isinstance(a, np.ndarray):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{name}: expected a real-valued waveform, got dtype {a.dtype}")
        arr = a.astype(np.float64)
    else:
        raise ValueError(f"{name}: expected a numpy.ndarray or torch.Tensor waveform, got {type(a).__name__}")
    if arr.ndim == 1:
        arr = arr[None]
    elif arr.ndim != 2:
        raise ValueError(f"{name}: expected a waveform (T,) or a batch (B, T), got shape {arr.shape}")
    if arr.shape[-1] == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one non-empty waveform, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: waveform contains NaN or infinite samples")
    return arr


def _check_stft_params(n_fft: int, hop_length: int) -> None:
    for pname, v in (("n_fft", n_fft), ("hop_length", hop_length)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise ValueError(f"{pname}: expected a positive integer, got {v!r}")


def _paired_magnitudes(
    ref: ArrayLike, est: ArrayLike, n_fft: int, hop_length: int, rms: list | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """STFT magnitudes ``(B, bins, frames)`` of both, cropped to the shorter waveform (and, into ``rms``,
    the RMS of each cropped reference clip)."""
    _check_stft_params(n_fft, hop_length)
    r = _as_waveforms(ref, "ref")
    e = _as_waveforms(est, "est")
    if r.shape[0] != e.shape[0]:
        raise ValueError(f"ref and est must hold the same number of clips, got {r.shape[0]} and {e.shape[0]}")
    n = min(r.shape[-1], e.shape[-1])
    if n < n_fft:
        raise ValueError(
            f"audio too short: {n} samples after cropping to the shorter signal, need at least n_fft={n_fft} "
            f"(pass a smaller n_fft for short clips)"
        )
    if rms is not None:
        rms.extend(np.sqrt(np.mean(r[:, :n] ** 2, axis=-1)))
    kwargs = {"n_fft": n_fft, "hop_length": hop_length, "center": True, "pad_mode": "constant"}
    return np.abs(librosa.stft(r[:, :n], **kwargs)), np.abs(librosa.stft(e[:, :n], **kwargs))


def spectral_convergence(ref: ArrayLike, est: ArrayLike, n_fft: int = 2048, hop_length: int = 512) -> float:
    """||(|S| - |S_est|)||_F / ||S||_F of the STFT magnitudes, per clip, averaged over the batch.

    0 is a perfect magnitude match; 1 is as wrong as silence. A silent reference clip (RMS below
    ``SILENT_RMS``, -100 dBFS) has no meaningful SC and is skipped; nan when every reference clip is silent.
    """
    rms: list[float] = []
    s_ref, s_est = _paired_magnitudes(ref, est, n_fft, hop_length, rms)
    scores = [
        np.linalg.norm(a - b) / np.linalg.norm(a)
        for a, b, level in zip(s_ref, s_est, rms, strict=True)
        if level >= SILENT_RMS and np.linalg.norm(a) > 0
    ]
    return float(np.mean(scores)) if scores else float("nan")


def lsd_log_powers(
    s_ref: np.ndarray, s_est: np.ndarray | None, eps: float = 1e-10, floor_db: float | None = LSD_FLOOR_DB
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per clip, the dB powers the log-spectral distance compares, (bins kept, frames) each: floored at
    ``floor_db`` below the reference's peak (and at ``eps``) over the reference's bandwidth; with
    ``floor_db=None``, ``10 log10(|S|^2 + eps)`` over every bin (the textbook form)."""
    out = []
    for k, r in enumerate(s_ref):
        pr = r**2
        pe = None if s_est is None else s_est[k] ** 2
        if floor_db is None:
            out.append((10.0 * np.log10(pr + eps), None if pe is None else 10.0 * np.log10(pe + eps)))
            continue
        floor = max(eps, float(pr.max()) * 10.0 ** (-floor_db / 10.0))
        above = np.nonzero(pr.mean(axis=1) > floor)[0]
        top = int(above[-1]) + 1 if above.size else pr.shape[0]
        lr = 10.0 * np.log10(np.maximum(pr[:top], floor))
        out.append((lr, None if pe is None else 10.0 * np.log10(np.maximum(pe[:top], floor))))
    return out


def log_spectral_distance(
    ref: ArrayLike,
    est: ArrayLike,
    n_fft: int = 2048,
    hop_length: int = 512,
    eps: float = 1e-10,
    floor_db: float | None = LSD_FLOOR_DB,
) -> float:
    """Log-spectral distance in dB: mean over frames of the RMS over bins of the log-power difference.

    LSD = mean_t sqrt(mean_f (P_dB(S) - P_dB(S_est))^2), per clip, averaged over the batch, with
    ``P_dB = 10 log10(max(|S|^2, floor))``: the floor is ``floor_db`` (80) dB below the reference clip's peak
    power, and f runs over the reference's bandwidth (up to its highest bin whose mean power is above the
    floor), so empty bins above a recording's Nyquist or a codec's band limit cannot dominate.
    ``floor_db=None`` gives the textbook form with an absolute ``eps`` over every bin.
    """
    if not (isinstance(eps, numbers.Real) and not isinstance(eps, bool) and np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a positive finite number, got {eps!r}")
    if floor_db is not None and not (isinstance(floor_db, numbers.Real) and 0 < floor_db < 400):
        raise ValueError(f"floor_db: expected a positive number of dB or None, got {floor_db!r}")
    s_ref, s_est = _paired_magnitudes(ref, est, n_fft, hop_length)
    scores = []
    for lr, le in lsd_log_powers(s_ref, s_est, eps, floor_db):
        scores.append(float(np.sqrt(np.mean((lr - le) ** 2, axis=0)).mean()))
    return float(np.mean(scores))


def feature_mse(recon: ArrayLike, target: ArrayLike) -> float:
    """Mean squared error between feature tensors of the same shape (e.g. (B, 2, 128, 94) spectrograms)."""
    tensors = []
    for name, a in (("recon", recon), ("target", target)):
        if isinstance(a, np.ndarray):
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"{name}: expected real-valued features, got dtype {a.dtype}")
            a = torch.from_numpy(a.astype(np.float64))
        elif not isinstance(a, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
        elif a.is_complex() or a.dtype == torch.bool:
            raise ValueError(f"{name}: expected real-valued features, got dtype {a.dtype}")
        tensors.append(a.detach().cpu().double())
    r, t = tensors
    if r.shape != t.shape:
        raise ValueError(
            f"feature_mse: recon and target must have the same shape, got {tuple(r.shape)} "
            f"and {tuple(t.shape)}"
        )
    if r.numel() == 0:
        raise ValueError("feature_mse: expected non-empty features")
    return float((r - t).pow(2).mean())
