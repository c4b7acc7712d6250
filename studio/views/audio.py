"""Audio tab: spectrograms and audio players of a VAE's reconstruction, prior samples and interpolations.

The features are rebuilt from the checkpoint's own preprocessing (``model.preprocessing``), so a clip is
analysed and resynthesised exactly as in training. Pure functions return float32 waveforms at the feature
sample rate; the Gradio handlers turn them into 16-bit players without the peak normalisation Gradio
applies to float audio, so a quiet reconstruction sounds quiet.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import soundfile as sf
import torch
from plotly.colors import qualitative

from models.audio import compute_kl_divergence
from studio.views.common import (
    checkpoint_picker,
    clear_results_on_change,
    fmt,
    heatmap,
    load_checkpoint,
    model_call,
    model_device,
    notes_markdown,
    page_handler,
    run_label,
    selected_folders,
    upload_path,
    user_errors,
)
from trainers.data.audio import (
    SILENCE_RMS,
    SILENT_WINDOW_DBFS,
    SYNTH_KINDS,
    AudioFeatureConfig,
    audio_seconds,
    decode_with_av,
    features_from_dict,
    load_audio,
    make_features,
    synthesize_clip,
    window_starts,
)
from trainers.metrics import registry, sanity
from trainers.metrics.audio import feature_mse, log_spectral_distance, spectral_convergence
from trainers.metrics.registry import arrow
from trainers.training.fastpath import prepare_for_inference
from trainers.training.progress import Progress, no_progress

SOURCES = ("built-in clip", "upload or recording")
MIN_SECONDS = 0.25  # shorter clips leave too few STFT frames with content to judge a reconstruction
GAP_SECONDS = 0.2  # silence between concatenated clips (prior samples, interpolation steps)
MAX_SAMPLES = 8
MAX_STEPS = 9
HOP_SECONDS = 0.5  # windows of the per-window figures start every half second, as in training and eval
MAX_WINDOWS = 120  # a minute of audio at that hop; `python -m trainers eval` scores longer recordings
#: Longest part of a compressed upload (WebM/Opus, AAC) decoded: an upload of 50 MB of Opus holds hours.
MAX_DECODE_SECONDS = 600
WINDOW_METRICS = (("spectral_convergence", "SC"), ("lsd", "LSD (dB)"))
TABLE_HEADERS = [
    "figure",
    "reconstruction",
    "feature round trip",
    "trivial baseline (SC: silence; LSD: a flat spectrum)",
]
TITLE_FONT_SIZE = 12  # subplot titles; at Plotly's default 16 px, nine interpolation steps run together
BASELINE_NOTE = (
    "trivial baseline: silence scores spectral convergence 1; the flat spectrum is one constant power in "
    "every bin and frame, chosen to minimise the log-spectral distance to the input. A reconstruction at or "
    "beyond either is flagged: it does no better than no sound, or a steady hiss"
)
ROUNDTRIP_NOTE = (
    "round trip (ceiling): the input's own features turned straight back into audio, without the model; "
    "no reconstruction can sound better"
)


@dataclass
class AudioClip:
    wav: np.ndarray  # float32 (n_samples,) at the feature sample rate
    features: np.ndarray  # (C, n_mels, n_frames)
    notes: list[str] = field(default_factory=list)


@dataclass
class AudioComparison:
    sample_rate: int
    input: np.ndarray
    roundtrip: np.ndarray
    reconstruction: np.ndarray
    features: np.ndarray
    recon_features: np.ndarray
    table: list[list[Any]]
    figure: Any
    notes: list[str]
    flags: list[sanity.Flag] = field(default_factory=list)  # the reconstruction's; empty: not flagged


@dataclass
class AudioWindows:
    """Spectral figures of every window of a clip, for each chosen checkpoint and the feature round trip."""

    starts: list[float]  # seconds
    scores: dict[str, dict[str, np.ndarray]]  # label or "round trip" -> metric -> (n,); NaN: silent
    headers: list[str]
    table: list[list[Any]]
    figure: Any
    notes: list[str]
    flags: dict[str, list[sanity.Flag]] = field(default_factory=dict)  # label -> flags (empty: none)


@dataclass
class AudioStrip:
    """Several decoded clips (prior samples or interpolation steps), one after the other."""

    sample_rate: int
    clips: list[np.ndarray]
    features: np.ndarray  # (N, C, n_mels, n_frames)
    audio: np.ndarray  # the clips joined with GAP_SECONDS of silence
    figure: Any
    notes: list[str]


# ----------------------------------------------------------------------------------------------- features
def features_for(model: torch.nn.Module) -> tuple[Any, list[str]]:
    """The feature transform the checkpoint was trained with, checked against the model's input shape."""
    prep = getattr(model, "preprocessing", None) or {}
    notes: list[str] = []
    if "kind" in prep and "config" in prep:
        features = features_from_dict(prep)
    else:
        kind = "mel-if" if model.input_shape[0] == 2 else "log-mel"
        features = make_features(kind, AudioFeatureConfig())
        notes.append(f"{model.VARIANT} has no saved feature settings; using the default {kind} features")
    c = features.config
    expected = (features.channels, c.n_mels, c.n_frames)
    if tuple(model.input_shape) != expected:
        raise ValueError(
            f"checkpoint {model.VARIANT} expects input {tuple(model.input_shape)} but its features give "
            f"{expected}; the checkpoint's config.json is inconsistent"
        )
    return features, notes


def clip_input(
    features: Any, source: str, kind: str = "note", seed: Any = 0, upload: Any = None, start: Any = 0.0
) -> AudioClip:
    """One clip (the built-in synthetic one, or a segment of an upload/recording) and its features."""
    c = features.config
    if source == SOURCES[0]:
        if kind not in SYNTH_KINDS:
            raise ValueError(f"unknown built-in clip kind {kind!r}; expected one of {', '.join(SYNTH_KINDS)}")
        seed_i = _whole(seed, "clip seed")
        wav = synthesize_clip(kind, np.random.default_rng(seed_i), c)
        return AudioClip(wav, features.encode(wav), [f"built-in {kind} clip #{seed_i}"])
    if source != SOURCES[1]:
        raise ValueError(f"unknown clip source {source!r}; expected one of {', '.join(SOURCES)}")
    try:
        start_s = float(start if start is not None else 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"start must be a time in seconds, got {start!r}") from None
    # Only the model's clip is decoded and resampled: an hour-long upload costs what one second does.
    path, segment, original_rate, notes, duration = _full_upload(
        upload, c.sample_rate, start_s, c.n_samples / c.sample_rate
    )
    segment = segment[: c.n_samples]
    if len(segment) < MIN_SECONDS * c.sample_rate:
        raise ValueError(
            f"only {len(segment) / c.sample_rate:.2f} s are left after {start_s:g} s; need {MIN_SECONDS} s"
        )
    if float(np.sqrt(np.mean(np.square(segment, dtype=np.float64)))) < SILENCE_RMS:
        if start_s == 0 and duration <= c.clip_seconds:
            raise ValueError(f"{path.name!r} is silent")
        raise ValueError(
            f"{path.name!r} is silent from {start_s:g} s to {start_s + c.clip_seconds:g} s; "
            "choose another start"
        )
    notes = [f"{path.name}: {duration:.2f} s", *notes]
    if original_rate != c.sample_rate:
        notes.append(f"resampled from {original_rate} Hz to the model's {c.sample_rate} Hz")
    if duration > c.clip_seconds:
        notes.append(
            f"using {start_s:g}–{start_s + len(segment) / c.sample_rate:g} s (the model hears 1 clip); "
            "every window of the recording is scored under *Every window of the clip*"
        )
    wav = np.pad(segment, (0, c.n_samples - len(segment))).astype(np.float32)
    if len(segment) < c.n_samples:
        notes.append(f"zero-padded from {len(segment) / c.sample_rate:.2f} s to {c.clip_seconds:g} s")
    return AudioClip(wav, features.encode(wav), notes)


def _full_upload(
    upload: Any, sample_rate: int, start_s: float | None = None, max_seconds: float | None = None
) -> tuple[Path, np.ndarray, int, list[str], float]:
    """(path, the recording from ``start_s`` for ``max_seconds`` (all of it by default) as mono float32 at
    ``sample_rate``, its original rate, decoding notes, the whole recording's length in seconds).

    Only that part is decoded and resampled. With ``start_s``, a start outside the recording is refused,
    and the part may be short or silent (the caller says so in its own words)."""
    path = upload_path(upload, "audio file")
    with tempfile.TemporaryDirectory() as tmp:
        readable, original_rate, notes = _readable_audio(path, Path(tmp))
        seconds = audio_seconds(readable)
        if seconds == 0:  # a valid header with no frames (it said "start must be between 0 and 0.00 s")
            raise ValueError(f"{path.name!r} holds no audio samples (0 s long); upload a recording")
        duration = seconds or 0.0
        if start_s is not None and 0 < duration < MIN_SECONDS:
            raise ValueError(f"{path.name!r} is {duration:.2f} s long; need at least {MIN_SECONDS:.2f} s")
        # A length the header does not give (None): only the decoder can tell a start past the end.
        past_end = seconds is not None and start_s is not None and start_s >= duration
        if start_s is not None and (not np.isfinite(start_s) or start_s < 0 or past_end):
            raise ValueError(
                f"start must be between 0 and {duration:.2f} s (the recording's length), got {start_s!r}"
            )
        part = start_s is not None
        try:
            full = load_audio(
                readable,
                sample_rate,
                min_seconds=0.0 if part else MIN_SECONDS,
                pad_to_seconds=None,
                start_s=start_s or 0.0,
                max_seconds=max_seconds,
                check_silence=not part,
            )
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(str(exc).replace(str(readable), repr(path.name))) from exc
    return path, full, original_rate, notes, duration


#: What a file that is not audio holds, in words (``trainers.data.fragments.file_type`` kinds).
_NOT_AUDIO = {
    "text": "it holds text",
    "elf": "it is a program",
    "compressed": "it is an archive, an image or other compressed data",
    "bytecode": "it is compiled code",
}


def not_audio_message(path: Path, exc: Exception | None = None) -> str:
    """A short message for an upload that no decoder reads: what it seems to be and what to upload
    instead, naming the file (never its server path) rather than listing MIME types."""
    from trainers.data.fragments import file_type

    why = _NOT_AUDIO.get(file_type(path))
    if why is None:  # the decoder's own reason, without the server's path
        why = "no sound format this studio reads" + (f" ({exc})" if exc else "")
        why = why.replace(str(path), path.name)
    return (
        f"could not read the audio file {path.name!r}: {why}. Upload a WAV, FLAC, OGG, MP3 or M4A file, or "
        "record one"
    )


def _readable_audio(path: Path, tmp: Path) -> tuple[Path, int, list[str]]:
    """A file soundfile can read, its sample rate, and a note when it had to be converted first.

    WAV/FLAC/OGG/MP3 are read directly. Anything else (a browser's microphone recording is WebM/Opus,
    whatever its name says; AAC, M4A) is decoded with PyAV, whose wheels carry their own FFmpeg, averaged to
    mono and rewritten as WAV in ``tmp``.
    """
    try:
        return path, int(sf.info(str(path)).samplerate), []
    except (RuntimeError, TypeError, ValueError):  # soundfile.LibsndfileError is a RuntimeError
        pass
    try:  # bounded: a long recording costs time, never memory
        pcm, rate, container = decode_with_av(path, max_seconds=MAX_DECODE_SECONDS)
    except ValueError as exc:
        raise ValueError(not_audio_message(path, exc.__cause__ or exc)) from None
    cut = pcm.size >= MAX_DECODE_SECONDS * rate
    if pcm.size == 0:
        raise ValueError(f"the audio file {path.name!r} holds no samples")
    out = tmp / "decoded.wav"
    sf.write(out, pcm, rate, subtype="FLOAT")
    cut_note = [f"only its first {MAX_DECODE_SECONDS // 60} minutes were decoded"] if cut else []
    return out, rate, [f"decoded from {container} with PyAV", *cut_note]


def _whole(value: Any, name: str) -> int:
    try:
        v = float(value if value is not None else 0)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not np.isfinite(v) or v != int(v) or v < 0:
        raise ValueError(f"{name} must be a non-negative whole number, got {value!r}")
    return int(v)


# ------------------------------------------------------------------------------------------------ figures
def spectrogram_figure(
    panels: list[tuple[str, np.ndarray]], config: AudioFeatureConfig, magnitude_only: bool = False
) -> Any:
    """Panels side by side; row 1 the log-mel magnitude, row 2 (2-channel features) the mel IF.

    All magnitudes share one colour scale (0 to the largest value shown), all IFs the fixed [-1, 1].
    """
    from plotly.subplots import make_subplots

    rows = 1 if magnitude_only or panels[0][1].shape[0] == 1 else 2
    n = len(panels)
    titles = [t for t, _ in panels] + ([f"IF · {t}" for t, _ in panels] if rows == 2 else [])
    fig = make_subplots(
        rows=rows, cols=n, subplot_titles=titles, horizontal_spacing=0.02, vertical_spacing=0.12
    )
    fig.update_annotations(font_size=TITLE_FONT_SIZE)
    frames = panels[0][1].shape[-1]
    times = np.arange(frames) * config.hop_length / config.sample_rate
    for k, (title, feats) in enumerate(panels):
        mag = heatmap(feats[0], "coloraxis", title)
        mag.update(x=times)
        fig.add_trace(mag, row=1, col=k + 1)
        if rows == 2:
            inst = heatmap(feats[1], "coloraxis2", f"IF · {title}")
            inst.update(x=times)
            fig.add_trace(inst, row=2, col=k + 1)
    vmax = max(float(np.max(f[0])) for _, f in panels)
    bar = {"thickness": 12, "len": 1.0 / rows - 0.05}
    layout: dict[str, Any] = {
        "coloraxis": {
            "colorscale": "viridis",
            "cmin": 0.0,
            "cmax": max(vmax, 1e-6),
            "colorbar": {**bar, "y": 1 - 0.5 / rows, "title": "log-mel"},
        },
        "height": 260 * rows + 60,
        "margin": {"l": 10, "r": 10, "t": 30, "b": 10},
    }
    if rows == 2:
        layout["coloraxis2"] = {
            "colorscale": "twilight",
            "cmin": -1.0,
            "cmax": 1.0,
            "colorbar": {**bar, "y": 0.25, "title": "IF/π"},
        }
    fig.update_layout(**layout)
    fig.update_xaxes(matches="x")  # every panel, both rows (the IF row zooms with the magnitudes)
    fig.update_xaxes(title_text="time (s)", row=rows)
    fig.update_yaxes(matches="y", showticklabels=False)
    fig.update_yaxes(showticklabels=True, title_text="mel band", col=1)
    # The first axes anchor the others: an axis matching itself is ignored by plotly with a console
    # warning ('ignored yaxis.matches: "y" to avoid an infinite loop') on every render.
    fig.layout.xaxis.matches = None
    fig.layout.yaxis.matches = None
    return fig


# ----------------------------------------------------------------------------------------------- compute
def _load(ctx: Any, checkpoint: Any) -> tuple[str, torch.nn.Module, Any, list[str]]:
    folder = selected_folders(checkpoint, "audio", ctx=ctx)[0]
    model = load_checkpoint(ctx, folder, "audio")
    features, notes = features_for(model)
    return folder, model, features, [f"checkpoint: {run_label(ctx, folder)} ({model.VARIANT})", *notes]


def _decode(features: Any, feats: torch.Tensor | np.ndarray) -> np.ndarray:
    return features.decode(np.asarray(feats, dtype=np.float32))


def join_clips(clips: list[np.ndarray], sample_rate: int, gap_seconds: float = GAP_SECONDS) -> np.ndarray:
    """The clips one after the other with ``gap_seconds`` of silence between them."""
    gap = np.zeros(int(round(gap_seconds * sample_rate)), dtype=np.float32)
    parts: list[np.ndarray] = []
    for i, clip in enumerate(clips):
        parts += [gap] if i else []
        parts.append(np.asarray(clip, dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@torch.no_grad()
def audio_compare(
    ctx: Any,
    checkpoint: Any,
    source: str = SOURCES[0],
    kind: str = "note",
    seed: Any = 0,
    upload: Any = None,
    start: Any = 0.0,
    progress: Progress | None = None,
) -> AudioComparison:
    """Input, feature round trip and reconstruction (decode(mu)) of one clip, with spectral metrics;
    ``progress(fraction, desc)`` (the page's gr.Progress) hears the steps."""
    progress = progress or no_progress
    progress(0.0, "loading the checkpoint")
    _, model, features, notes = _load(ctx, checkpoint)
    progress(0.2, "features of the clip")
    clip = clip_input(features, source, kind, seed, upload, start)
    x = torch.from_numpy(clip.features)[None].to(model_device(model))
    model = prepare_for_inference(model)  # the variant's precision (trainers.training.fastpath)
    mu, logvar = model_call(f"the {model.VARIANT} model", lambda: model.encode(x))
    recon = model.decode(mu).float()[0].cpu().numpy()
    progress(0.4, "waveforms of the round trip and the reconstruction")
    roundtrip = _decode(features, clip.features)
    reconstruction = _decode(features, recon)
    c = features.config
    sc = [spectral_convergence(clip.wav, w, c.n_fft, c.hop_length) for w in (reconstruction, roundtrip)]
    lsd = [log_spectral_distance(clip.wav, w, c.n_fft, c.hop_length) for w in (reconstruction, roundtrip)]
    flat = sanity.flat_spectrum_lsd(clip.wav, c.n_fft, c.hop_length)
    flags = sanity.audio_flags(sc[0], lsd[0], flat)
    no_latent = "n/a: no latent (no model involved)"
    table = [
        [
            metric_label("spectral_convergence", "spectral convergence"),
            *(_cell("spectral_convergence", v, 4) for v in sc),
            fmt(sanity.SILENCE_SPECTRAL_CONVERGENCE, 4),
        ],
        [
            metric_label("lsd", "log-spectral distance (dB)"),
            *(_cell("lsd", v, 3) for v in lsd),
            fmt(flat, 3),
        ],
        [
            metric_label("mse", "feature MSE"),
            fmt(feature_mse(recon, clip.features), 5),
            0.0,
            "n/a: scored on the audio only",
        ],
        [
            metric_label("kl", "KL to the prior (nats)"),
            fmt(compute_kl_divergence(mu.float(), logvar.float()), 3),
            no_latent,
            no_latent,
        ],
        [
            "flag",
            sanity.flag_cell(flags),
            sanity.flag_cell(sanity.audio_flags(sc[1], lsd[1], flat)),
            "the figures a useless model would get",
        ],
    ]
    figure = spectrogram_figure([("input", clip.features), ("reconstruction", recon)], c)
    notes += [f"flagged: {f.text}" for f in flags]
    notes.append(ROUNDTRIP_NOTE)
    notes.append(BASELINE_NOTE)
    if features.channels == 1:
        notes.append("1-channel log-mel model: waveforms are resynthesised with Griffin-Lim")
    return AudioComparison(
        c.sample_rate,
        clip.wav,
        roundtrip,
        reconstruction,
        clip.features,
        recon,
        table,
        figure,
        clip.notes + notes,
        flags,
    )


def metric_label(key: str, title: str) -> str:
    """A table row's label with its direction from the registry: "↑", "↓", a target band, or, for a figure
    with no better side (the KL term, a regulariser), words saying so."""
    mark = registry.arrow(key)
    info = registry.metric_info(key, "audio")
    if not mark and info is not None and info.direction == "info":
        mark = "· no better side"
    return f"{title} {mark}".strip()


def _cell(key: str, value: float, digits: int) -> Any:
    """A rounded figure, or "n/a" with the registry's reason."""
    shown = fmt(value, digits)
    if shown == "n/a":
        reason = registry.missing_reason(key)
        return f"n/a: {reason}" if reason else shown
    return shown


def _window_label(start: float, seconds: float) -> str:
    return f"{start:.1f}–{start + seconds:.1f} s"


@torch.no_grad()
def audio_windows(
    ctx: Any,
    checkpoints: Any,
    source: str = SOURCES[0],
    kind: str = "note",
    seed: Any = 0,
    upload: Any = None,
    progress: Progress | None = None,
) -> AudioWindows:
    """Spectral convergence and log-spectral distance of every window of the whole clip, per checkpoint.

    The clip is cut as ``AudioFolderDataset`` cuts a recording: 1 s windows every ``HOP_SECONDS``, the last
    zero-padded, so a 1.4 s recording gives two windows and none of it goes unscored. Silent windows
    (below −60 dBFS) get no figures, and say so. The round trip (ceiling) uses the first checkpoint's
    features.
    """
    progress = progress or no_progress
    folders = selected_folders(checkpoints, "audio", multiple=True, ctx=ctx)
    folders = list(dict.fromkeys(folders))
    notes: list[str] = []
    scores: dict[str, dict[str, np.ndarray]] = {}
    flat_lsd: dict[str, np.ndarray] = {}  # label -> the best flat spectrum's LSD per window
    starts_s: list[float] = []
    window_s = 0.0
    full_cache: dict[int, tuple[np.ndarray, list[str]]] = {}
    for k, folder in enumerate(folders):
        progress(k / len(folders), f"checkpoint {k + 1} of {len(folders)}: every window")
        model = load_checkpoint(ctx, folder, "audio")
        features, feature_notes = features_for(model)
        c = features.config
        label = run_label(ctx, folder)
        if label in scores:  # two runs or folders of one name: tell them apart
            named = f"{label} ({model.VARIANT})"
            label = named if named not in scores else f"{label} #{k + 1}"
        notes += [f"{label}: {n}" for n in feature_notes]
        if c.sample_rate not in full_cache:
            full_cache[c.sample_rate] = _whole_clip(features, source, kind, seed, upload)
        full, clip_notes = full_cache[c.sample_rate]
        starts = window_starts(len(full), c.n_samples, max(1, int(round(HOP_SECONDS * c.sample_rate))))
        if len(starts) > MAX_WINDOWS:
            clip_notes = [*clip_notes, f"only the first {MAX_WINDOWS} windows are scored here; "
                          "`python -m trainers eval` scores every window of a folder"]  # fmt: skip
            starts = starts[:MAX_WINDOWS]
        if k == 0:
            notes = clip_notes + notes
            starts_s = [s / c.sample_rate for s in starts]
            window_s = c.clip_seconds
        elif [s / c.sample_rate for s in starts] != starts_s:
            raise ValueError(
                f"{label} hears {c.clip_seconds:g} s clips, unlike the first checkpoint's {window_s:g} s: "
                "score checkpoints with the same clip length together"
            )
        scores[label], trip, flat_lsd[label] = _score_windows(model, features, full, starts, k == 0)
        if k == 0:
            round_trip, flat_lsd["round trip"] = trip, flat_lsd[label]
    scores["round trip"] = round_trip
    flags = {
        label: sanity.audio_flags(
            values["spectral_convergence"], values["lsd"], flat_lsd[label][np.isfinite(values["lsd"])]
        )
        for label, values in scores.items()
    }
    notes += [f"{label} flagged: {f.text}" for label, found in flags.items() for f in found]
    n_silent = int(np.isnan(round_trip["lsd"]).sum())
    if n_silent:
        notes.append(
            f"{n_silent} silent window(s) (below {SILENT_WINDOW_DBFS:g} dBFS) not scored: spectral figures "
            "of silence are meaningless"
        )
    notes.append(
        f"{len(starts_s)} window(s) of {window_s:g} s every {HOP_SECONDS:g} s; the mean row is what "
        "`python -m trainers eval` reports for this recording. " + ROUNDTRIP_NOTE
    )
    headers, table = _windows_table(starts_s, window_s, scores, flags, n_silent)
    notes.append(BASELINE_NOTE)
    figure = _windows_figure(starts_s, scores)
    return AudioWindows(starts_s, scores, headers, table, figure, notes, flags)


def _score_windows(
    model: torch.nn.Module, features: Any, full: np.ndarray, starts: list[int], round_trip: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """One checkpoint's figures per window (NaN where a window is silent), the features' round trip's when
    `round_trip` is asked for (else NaN), and the best flat spectrum's LSD per window."""
    c = features.config
    segments = [full[s : s + c.n_samples] for s in starts]
    wavs = [np.pad(g, (0, c.n_samples - len(g))).astype(np.float32) for g in segments]
    loud = [i for i, g in enumerate(segments) if _dbfs(g) >= SILENT_WINDOW_DBFS]
    rows = {m: np.full(len(starts), np.nan) for m, _ in WINDOW_METRICS}
    trip = {m: np.full(len(starts), np.nan) for m, _ in WINDOW_METRICS}
    flat = np.full(len(starts), np.nan)
    for i in loud:
        flat[i] = sanity.flat_spectrum_lsd(wavs[i], c.n_fft, c.hop_length)
    if loud:
        feats = features.encode_batch(np.stack([wavs[i] for i in loud]))
        x = feats.to(model_device(model))
        recon = model_call(f"the {model.VARIANT} model", partial(model.reconstruct, x)).float().cpu()
        for j, i in enumerate(loud):
            _score_into(rows, i, wavs[i], features.decode(recon[j].numpy()), c)
            if round_trip:
                _score_into(trip, i, wavs[i], features.decode(feats[j].numpy()), c)
    return rows, trip, flat


def _windows_table(
    starts_s: list[float],
    window_s: float,
    scores: dict[str, dict[str, np.ndarray]],
    flags: dict[str, list[Any]],
    n_silent: int,
) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows: one row per window, then the mean over the scored windows and the flags."""
    headers = ["window"] + [
        f"{label} · {short} {arrow(metric)}".strip() for label in scores for metric, short in WINDOW_METRICS
    ]
    table: list[list[Any]] = []
    for i, start in enumerate(starts_s):
        cells: list[Any] = [_window_label(start, window_s)]
        for values in scores.values():
            cells += [fmt(values[m][i], 4) if np.isfinite(values[m][i]) else "silent: not scored"
                      for m, _ in WINDOW_METRICS]  # fmt: skip
        table.append(cells)
    mean_row: list[Any] = [f"mean of {len(starts_s) - n_silent} scored"]
    for values in scores.values():
        for m, _ in WINDOW_METRICS:
            finite = values[m][np.isfinite(values[m])]
            mean_row.append(fmt(float(finite.mean()), 4) if finite.size else "n/a: every window is silent")
    table.append(mean_row)
    flag_row: list[Any] = ["flag (of the mean)"]
    for label in scores:
        flag_row += [sanity.flag_cell(flags[label]), ""]
    table.append(flag_row)
    return headers, table


def _dbfs(y: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) if len(y) else 0.0
    return 20 * np.log10(rms) if rms > 0 else -np.inf


def _score_into(target: dict[str, np.ndarray], i: int, ref: np.ndarray, est: np.ndarray, c: Any) -> None:
    target["spectral_convergence"][i] = spectral_convergence(ref, est, c.n_fft, c.hop_length)
    target["lsd"][i] = log_spectral_distance(ref, est, c.n_fft, c.hop_length)


def _whole_clip(
    features: Any, source: str, kind: str, seed: Any, upload: Any
) -> tuple[np.ndarray, list[str]]:
    """The whole clip at the features' rate: the built-in clip, or the entire upload/recording."""
    c = features.config
    if source == SOURCES[0]:
        clip = clip_input(features, source, kind, seed)
        return clip.wav, clip.notes
    if source != SOURCES[1]:
        raise ValueError(f"unknown clip source {source!r}; expected one of {', '.join(SOURCES)}")
    # Only the windows scored here are decoded (one past them, so that the note on the rest still shows).
    seconds = (MAX_WINDOWS + 1) * HOP_SECONDS + c.n_samples / c.sample_rate
    path, full, original_rate, notes, duration = _full_upload(upload, c.sample_rate, None, seconds)
    notes = [f"{path.name}: {duration:.2f} s", *notes]
    if original_rate != c.sample_rate:
        notes.append(f"resampled from {original_rate} Hz to the model's {c.sample_rate} Hz")
    return full, notes


WINDOW_COLOURS: tuple[str, ...] = tuple(qualitative.Plotly)


def _windows_figure(starts: list[float], scores: dict[str, dict[str, np.ndarray]]) -> Any:
    """Spectral convergence and LSD against the window's start, one line per checkpoint."""
    from plotly.subplots import make_subplots

    # Each metric names its y axis: subplot titles above the plots would share the legend's row.
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1)
    for k, (label, values) in enumerate(scores.items()):
        dash = "dash" if label == "round trip" else None
        # One colour per checkpoint in both subplots: the legend lists the first subplot's lines only, so
        # plotly's colour cycle would give the second subplot's lines other colours than their legend.
        colour = WINDOW_COLOURS[k % len(WINDOW_COLOURS)]
        for col, (m, _) in enumerate(WINDOW_METRICS, start=1):
            y = [float(v) if np.isfinite(v) else None for v in values[m]]  # a gap where a window is silent
            fig.add_scatter(
                x=starts, y=y, mode="lines+markers", name=label, legendgroup=label, showlegend=col == 1,
                line={"dash": dash, "color": colour}, marker={"color": colour}, row=1, col=col,
            )  # fmt: skip
    fig.update_xaxes(title_text="window start (s)")
    for col, (m, short) in enumerate(WINDOW_METRICS, start=1):
        fig.update_yaxes(title_text=f"{short} {arrow(m)}".strip(), row=1, col=col)
    # The legend above the subplots: below them it covered the x-axis titles.
    fig.update_layout(
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "xanchor": "left"},
    )
    return fig


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Reproducible prior draws without disturbing the global RNG that training code may rely on."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def audio_sample(ctx: Any, checkpoint: Any, n: Any = 3, seed: Any = 0) -> AudioStrip:
    """``n`` draws from the prior, decoded by the model and resynthesised to audio."""
    n_i = _whole(n, "number of samples")
    if not 1 <= n_i <= MAX_SAMPLES:
        raise ValueError(f"number of samples must be between 1 and {MAX_SAMPLES}, got {n}")
    seed_i = _whole(seed, "sample seed")
    _, model, features, notes = _load(ctx, checkpoint)
    device = model_device(model)
    with _seeded(seed_i, device):
        feats = (
            model_call(f"the {model.VARIANT} model", lambda: model.sample(n_i, device)).float().cpu().numpy()
        )
    clips = [_decode(features, f) for f in feats]
    c = features.config
    figure = spectrogram_figure([(f"sample {i + 1}", f) for i, f in enumerate(feats)], c, magnitude_only=True)
    notes.append(f"{n_i} samples from N(0, I), seed {seed_i}, played one after the other")
    return AudioStrip(c.sample_rate, clips, feats, join_clips(clips, c.sample_rate), figure, notes)


@torch.no_grad()
def audio_interpolate(
    ctx: Any,
    checkpoint: Any,
    clip_a: dict[str, Any],
    clip_b: dict[str, Any],
    steps: Any = 5,
) -> AudioStrip:
    """Decode ``steps`` points on the line between the two clips' posterior means, A (t=0) to B (t=1).

    ``clip_a`` / ``clip_b`` hold :func:`clip_input` arguments: source, kind, seed, upload, start.
    """
    steps_i = _whole(steps, "number of steps")
    if not 2 <= steps_i <= MAX_STEPS:
        raise ValueError(f"number of steps must be between 2 and {MAX_STEPS}, got {steps}")
    _, model, features, notes = _load(ctx, checkpoint)
    a = clip_input(features, **clip_a)
    b = clip_input(features, **clip_b)
    x = torch.from_numpy(np.stack([a.features, b.features])).to(model_device(model))
    mu, _ = model_call(f"the {model.VARIANT} model", lambda: model.encode(x))
    t = torch.linspace(0.0, 1.0, steps_i, device=mu.device)[:, None]
    z = (1 - t) * mu[0] + t * mu[1]
    feats = model.decode(z).float().cpu().numpy()
    clips = [_decode(features, f) for f in feats]
    c = features.config
    titles = [f"t={float(v):.2f}" for v in t[:, 0]]
    figure = spectrogram_figure(list(zip(titles, feats, strict=True)), c, magnitude_only=True)
    notes += [f"A: {'; '.join(a.notes)}", f"B: {'; '.join(b.notes)}", f"{steps_i} steps from A to B"]
    return AudioStrip(c.sample_rate, clips, feats, join_clips(clips, c.sample_rate), figure, notes)


def player(sample_rate: int, wav: np.ndarray) -> tuple[int, np.ndarray]:
    """(rate, int16) for gr.Audio: clipped to [-1, 1], not peak-normalised as Gradio does with floats."""
    return int(sample_rate), (np.clip(np.asarray(wav, dtype=np.float64), -1.0, 1.0) * 32767).astype(np.int16)


# ------------------------------------------------------------------------------------------------- Gradio
def build_tab(ctx: Any) -> tuple[Any, Any]:
    """The Audio tab's components and events (call inside ``with gr.Tab("Audio"):``)."""
    import gradio as gr

    # Minimum widths wrap each row on a narrow page (800 px): the figures get the page's width below the
    # controls instead of a 370 px column beside them.
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            checkpoint, audio_checkpoints = checkpoint_picker(
                ctx, "audio", "Audio VAE checkpoint", "audio-vae (magnitude + IF) or audio-vae-mel (log-mel)"
            )
            clip_a = _clip_picker("Clip")
            start = gr.Number(value=0.0, minimum=0.0, label="Start of the 1 s clip in an upload (s)")
            run = gr.Button("Reconstruct", variant="primary")
        with gr.Column(scale=3, min_width=600):
            shown = _reconstruction_outputs(ctx)
    with gr.Accordion("Samples from the prior", open=False), gr.Row():
        sampling = _sample_section()
    with gr.Accordion("Interpolate between two clips", open=False), gr.Row():
        interpolation = _interpolate_section()

    # Results on screen belong to the clip named beside them: a new upload (or recording) clears them.
    clear_results_on_change(
        clip_a[3],
        shown.status,
        [shown.figure, *shown.players, shown.table, shown.windows_figure, shown.windows_table],
        "Reconstruct",
    )
    clear_results_on_change(
        interpolation.clip_b[3],
        interpolation.status,
        [interpolation.audio, interpolation.figure],
        "Interpolate",
    )
    _wire_reconstruct(ctx, checkpoint, clip_a, start, run, shown)
    _wire_sample(ctx, checkpoint, sampling)
    _wire_interpolate(ctx, checkpoint, clip_a, start, interpolation)
    return audio_checkpoints, checkpoint


def _clip_picker(label: str) -> list[Any]:
    """Source, built-in kind, seed and upload of one clip (a recording lands in the upload)."""
    import gradio as gr

    source = gr.Radio(list(SOURCES), value=SOURCES[0], label=label)
    with gr.Row():
        kind = gr.Dropdown(list(SYNTH_KINDS), value="note", label="Built-in kind")
        seed = gr.Number(value=0, precision=0, minimum=0, label="Clip seed")
    # Any file is accepted here and checked by the handler (not_audio_message), so a wrong type gets a
    # sentence naming the file instead of the browser's list of MIME types; a recording lands here too.
    upload = gr.File(label="Upload an audio file (WAV, FLAC, OGG, MP3, M4A)", type="filepath")
    record = gr.Audio(sources=["microphone"], type="filepath", label="…or record one")
    record.stop_recording(lambda f: f, inputs=record, outputs=upload, api_visibility="private")
    upload.change(
        lambda f: SOURCES[1] if f else gr.update(),
        inputs=upload,
        outputs=source,
        api_visibility="private",
    )
    return [source, kind, seed, upload]


def _reconstruction_outputs(ctx: Any) -> SimpleNamespace:
    """Notes, spectrograms, players and metrics of one clip, then the every-window section."""
    import gradio as gr

    # Each section's status line starts with a hint: the progress spinner and a bad input's "Error"
    # badge sit on it alone (show_progress_on), so it needs a height, and the previous figures and
    # players stay readable.
    status = gr.Markdown("Pick a checkpoint and a clip, then press **Reconstruct**.", label="Notes")
    # No label badge: it would sit on top of the first subplot's title.
    figure = gr.Plot(label="Spectrograms: input and reconstruction", show_label=False)
    with gr.Row():
        input_audio = gr.Audio(label="Input", interactive=False)
        # Short, so the download/share icons do not cover it; ROUNDTRIP_NOTE in the status explains.
        roundtrip_audio = gr.Audio(label="Round trip (ceiling)", interactive=False)
        recon_audio = gr.Audio(label="Reconstruction", interactive=False)
    table = gr.Dataframe(headers=TABLE_HEADERS, label="Metrics against the input", interactive=False)
    gr.Markdown("**Every window of the clip**: the figures of each 1 s window, every 0.5 s")
    with gr.Row():
        also = gr.Dropdown(
            choices=ctx.checkpoint_choices("audio"),
            multiselect=True,
            allow_custom_value=True,
            label="Also score these checkpoints",
            info="the checkpoint above is always scored; its features give the round trip",
            scale=4,
        )
        windows_btn = gr.Button("Score every window", scale=1)
    windows_status = gr.Markdown(
        "**Reconstruct** also scores every window of the clip.", label="Window notes"
    )
    windows_figure = gr.Plot(label="Figures per window", show_label=False)
    windows_table = gr.Dataframe(label="Figures per window", interactive=False, wrap=True)
    return SimpleNamespace(
        status=status,
        figure=figure,
        players=[input_audio, roundtrip_audio, recon_audio],
        table=table,
        also=also,
        windows_btn=windows_btn,
        windows_status=windows_status,
        windows_figure=windows_figure,
        windows_table=windows_table,
    )


def _sample_section() -> SimpleNamespace:
    import gradio as gr

    with gr.Column(scale=1, min_width=300):
        n_samples = gr.Slider(1, MAX_SAMPLES, value=3, step=1, label="Samples")
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
        button = gr.Button("Sample")
    with gr.Column(scale=3, min_width=600):
        status = gr.Markdown("Decode draws from the prior N(0, I): press **Sample**.", label="Sample notes")
        audio = gr.Audio(label="Samples, one after the other", interactive=False)
        figure = gr.Plot(label="Sample spectrograms", show_label=False)
    return SimpleNamespace(n=n_samples, seed=seed, button=button, status=status, audio=audio, figure=figure)


def _interpolate_section() -> SimpleNamespace:
    import gradio as gr

    with gr.Column(scale=1, min_width=300):
        gr.Markdown("From the clip above (A) to clip B:")
        clip_b = _clip_picker("Clip B")
        steps = gr.Slider(2, MAX_STEPS, value=5, step=1, label="Steps from A to B")
        button = gr.Button("Interpolate")
    with gr.Column(scale=3, min_width=600):
        status = gr.Markdown("Pick clip B, then press **Interpolate**.", label="Interpolation notes")
        audio = gr.Audio(label="A → B, one step after the other", interactive=False)
        figure = gr.Plot(label="Interpolation spectrograms", show_label=False)
    return SimpleNamespace(
        clip_b=clip_b, steps=steps, button=button, status=status, audio=audio, figure=figure
    )


def _wire_reconstruct(
    ctx: Any, checkpoint: Any, clip_a: list[Any], start: Any, run: Any, shown: SimpleNamespace
) -> None:
    """Reconstruct (`audio_compare`), then every window (`audio_windows`), which its own button also runs."""
    import gradio as gr

    def present(r: AudioComparison) -> tuple:
        players = (player(r.sample_rate, wave) for wave in (r.input, r.roundtrip, r.reconstruction))
        return (notes_markdown(r.notes), r.figure, *players, r.table)

    compare = page_handler(ctx, audio_compare, present)

    @user_errors
    def windows(checkpoint, extra, source, kind, seed, upload, progress=gr.Progress()):  # noqa: B008
        chosen = [checkpoint, *(extra or [])] if checkpoint else list(extra or [])
        r = audio_windows(ctx, chosen, source, kind, seed, upload, progress)
        return notes_markdown(r.notes), r.figure, {"headers": r.headers, "data": r.table}

    windows_io = {
        "inputs": [checkpoint, shown.also, *clip_a],
        "outputs": [shown.windows_status, shown.windows_figure, shown.windows_table],
        "show_progress_on": [shown.windows_status],
    }
    run.click(
        compare,
        inputs=[checkpoint, *clip_a, start],
        outputs=[shown.status, shown.figure, *shown.players, shown.table],
        api_name="audio_compare",
        show_progress_on=[shown.status],
    ).success(windows, **windows_io, api_visibility="private")
    shown.windows_btn.click(windows, **windows_io, api_name="audio_windows")


def _wire_sample(ctx: Any, checkpoint: Any, sampling: SimpleNamespace) -> None:
    @user_errors
    def sample(checkpoint, n, seed):
        r = audio_sample(ctx, checkpoint, n, seed)
        return notes_markdown(r.notes), player(r.sample_rate, r.audio), r.figure

    sampling.button.click(
        sample,
        inputs=[checkpoint, sampling.n, sampling.seed],
        outputs=[sampling.status, sampling.audio, sampling.figure],
        api_name="audio_sample",
        show_progress_on=[sampling.status],
    )


def _wire_interpolate(
    ctx: Any, checkpoint: Any, clip_a: list[Any], start: Any, interpolation: SimpleNamespace
) -> None:
    @user_errors
    def interpolate(checkpoint, source, kind, seed, upload, start, source_b, kind_b, seed_b, upload_b, steps):
        a = {"source": source, "kind": kind, "seed": seed, "upload": upload, "start": start}
        b = {"source": source_b, "kind": kind_b, "seed": seed_b, "upload": upload_b}
        r = audio_interpolate(ctx, checkpoint, a, b, steps)
        return notes_markdown(r.notes), player(r.sample_rate, r.audio), r.figure

    interpolation.button.click(
        interpolate,
        inputs=[checkpoint, *clip_a, start, *interpolation.clip_b, interpolation.steps],
        outputs=[interpolation.status, interpolation.audio, interpolation.figure],
        api_name="audio_interpolate",
        show_progress_on=[interpolation.status],
    )
