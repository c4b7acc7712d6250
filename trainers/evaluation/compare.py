"""The `compare` leaderboard: several checkpoints (and, with baselines, classic codecs) on the same examples.

Every model of the data's domain sees the same examples, built once, and is scored per example, so each
metric gets its mean with a 95% bootstrap confidence interval over the examples (percentile interval of
:data:`BOOTSTRAP_RESAMPLES` resamples from a seeded numpy Generator). NaN per-example values (a metric that
is undefined for that example) are left out and ``n`` says how many counted. The rate column is ``bpp``:

- SAR: latent bits per pixel at 8 bits per latent value; a codec's actual file bytes * 8 / pixels.
- audio: latent bits per audio sample (48 kHz) at 8 bits per latent value; Opus packet bytes * 8 / samples.
- fragments: latent bits per input byte at 8 bits per latent value; the identity baseline sends the bytes
  themselves (8 bits per byte).

Everything except inference time is a pure function of the checkpoints, the data and the seed, so two
runs with the same seed give identical figures. :func:`run_compare` returns a JSON-ready dict; the CLI and
the studio's Compare tab format it with :func:`markdown_report` and :func:`rd_figure`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from trainers.data.spec import DataSpec, default_data_spec, parse_data_spec
from trainers.metrics import registry, sanity

BOOTSTRAP_RESAMPLES = 1000
# Metrics of the leaderboard per domain, in column order; the first is the rate-distortion plot's y axis.
METRICS: dict[str, tuple[str, ...]] = {
    "sar": ("psnr", "psnr_8bit", "ssim", "enl_ratio", "epi"),
    "audio": ("lsd", "spectral_convergence"),
    "fragments": ("accuracy", "accuracy_corrupted", "fixed_fraction", "broken_fraction", "ber"),
}
BPP_UNITS: dict[str, str] = {
    "sar": "bits per pixel (models: latent at 8 bits per value; codecs: actual file bytes)",
    "audio": "bits per audio sample at 48 kHz (models: latent at 8 bits per value; Opus: packet bytes)",
    "fragments": "bits per input byte (models: latent at 8 bits per value; identity: the bytes themselves)",
}
Progress = Callable[[float, str], None]


# ------------------------------------------------------------------------------------------ metric metadata
def metric_arrow(name: str) -> str:
    """↑, ↓ or the target band of a metric, from the metric registry."""
    return registry.arrow(name)


def format_metric(name: str, value: float | None) -> str:
    """A finite value rounded per the registry's format; "n/a" for a missing one."""
    return registry.format_value(name, value)


def _missing_reason(name: str) -> str:
    reason = registry.missing_reason(name)
    return f"missing for every example: {reason}" if reason else "missing for every example"


def metric_direction(name: str) -> str:
    info = registry.metric_info(name)
    return info.direction if info is not None else ""


# ---------------------------------------------------------------------------------------------- bootstrap
def _stable_key(*parts: Any) -> list[int]:
    return [zlib.crc32(str(p).encode("utf-8")) for p in parts]


def bootstrap_summary(
    values: Sequence[float] | np.ndarray, seed: int | Sequence[int], resamples: int = BOOTSTRAP_RESAMPLES
) -> dict[str, Any]:
    """``{"mean", "ci95": [lo, hi], "n"}`` of the finite values: the mean and the 2.5/97.5 percentiles of
    `resamples` bootstrap means (examples drawn with replacement). NaN values are left out; with none left,
    mean and ci95 are None. The same seed gives the same interval."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = float(arr.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large example counts
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": mean, "ci95": [float(lo), float(hi)], "n": n}


# ------------------------------------------------------------------------------------------------ sources
@dataclass
class ModelSource:
    name: str
    kind: str  # "run" | "checkpoint"
    folder: Path
    model: nn.Module
    config: dict[str, Any]

    @property
    def variant(self) -> str:
        return str(self.model.VARIANT)

    @property
    def params(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))


def _checkpoint_name(folder: Path) -> str:
    """A short name: ``run/best`` for a run's checkpoint folder, else the folder's name."""
    if folder.parent.name == "checkpoints" and folder.parent.parent.name:
        return f"{folder.parent.parent.name}/{folder.name.split('-')[0]}"
    return folder.name or str(folder)


def resolve_sources(
    sources: Sequence[str], runs_dir: str | Path, kind: str = "best", domain: str | None = None
) -> list[ModelSource]:
    """Load every run id / checkpoint folder; one of another domain than `domain` is a clear error."""
    import json as _json

    from models import load_pretrained
    from models.registry import wrong_domain_message
    from trainers.runs import checkpoints

    if not sources:
        raise ValueError("no model to compare: give one or more run ids or checkpoint folders")
    out: list[ModelSource] = []
    names: set[str] = set()
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            folder, src_kind = path, "checkpoint"
            name = _checkpoint_name(path.resolve())
        else:
            run_folder = Path(runs_dir) / source
            if not source or not run_folder.is_dir() or Path(source).name != source:
                raise FileNotFoundError(
                    f"'{source}' is neither a checkpoint folder nor a run id in {runs_dir}"
                )
            found = None
            for k in (kind, "last"):
                found = checkpoints.checkpoint_path(run_folder, k)
                if found is not None:
                    break
            if found is None:
                raise FileNotFoundError(f"run '{source}' has no checkpoint yet")
            folder, src_kind, name = found, "run", source
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ValueError(
                f"'{source}' is not a checkpoint folder: it needs config.json and model.safetensors"
            )
        try:
            model = load_pretrained(folder)
        except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
            raise ValueError(f"cannot load checkpoint '{source}': {exc}") from exc
        if domain is not None and domain != model.DOMAIN:
            raise ValueError(f"'{source}': {wrong_domain_message(model.VARIANT, model.DOMAIN, domain)}")
        base, k = name, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.add(name)
        config = _json.loads((folder / "config.json").read_text())
        out.append(ModelSource(name, src_kind, folder, model.eval(), config))
    return out


# ------------------------------------------------------------------------------------------------- results
@dataclass
class Row:
    """One leaderboard row before summarising: per-example values of every metric."""

    name: str
    kind: str  # run | checkpoint | codec
    bpp: float | None
    params: int | None
    values: dict[str, np.ndarray]
    inference_ms: float | None = None
    variant: str | None = None
    missing: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    flags: list[sanity.Flag] = field(default_factory=list)  # why a model is useless (models only)


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _summarise(row: Row, seed: int, metrics: Sequence[str], groups: dict[str, np.ndarray] | None) -> dict:
    out: dict[str, Any] = {
        "name": row.name,
        "kind": row.kind,
        "bpp": _finite_or_none(row.bpp),
        "params": row.params,
        "metrics": {},
    }
    if row.variant:
        out["variant"] = row.variant
    out["inference_ms"] = _finite_or_none(row.inference_ms)
    missing = dict(row.missing)
    for m in metrics:
        if m not in row.values:
            missing.setdefault(m, "not measured for this row")
            out["metrics"][m] = {"mean": None, "ci95": None, "n": 0}
            continue
        summary = bootstrap_summary(row.values[m], _stable_key(seed, m))
        out["metrics"][m] = summary
        if summary["n"] == 0:
            missing.setdefault(m, _missing_reason(m))
    if groups:
        by_type: dict[str, Any] = {}
        for group, mask in groups.items():
            entry: dict[str, Any] = {"n": int(mask.sum()), "metrics": {}}
            for m in metrics:
                if m in row.values:
                    entry["metrics"][m] = bootstrap_summary(row.values[m][mask], _stable_key(seed, m, group))
            by_type[group] = entry
        out["by_type"] = by_type
    if row.bpp is None:
        missing.setdefault("bpp", "no rate: this row is not a compressed representation")
    if missing:
        out["missing"] = missing
    out["flags"] = [f.text for f in row.flags]
    out.update(row.extra)
    return out


def _no_progress(fraction: float, desc: str) -> None:  # noqa: ARG001
    return None


# ---------------------------------------------------------------------------------------------------- SAR
def _sar_items(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x (N,1,H,W), valid (N,1,H,W) bool, db_range (N,K) knots) of each ``(x, valid, db_range)`` SAR item."""
    if len(dataset) == 0:
        raise ValueError("the SAR data has no patch to compare on")
    items = [dataset[i] for i in range(len(dataset))]
    return (
        torch.stack([it[0].float() for it in items]),
        torch.stack([it[1] > 0 for it in items]),  # bool: a quarter of the memory of float32
        torch.stack([torch.as_tensor(it[2]).float() for it in items]),
    )


def _sar_per_image(
    x: torch.Tensor, x_hat: torch.Tensor, z: Any, valid: torch.Tensor, db_range: torch.Tensor | None
) -> dict[str, np.ndarray]:
    from trainers.metrics.sar import sar_metrics_per_image

    values = sar_metrics_per_image(x, x_hat, z, valid=valid, db_range=db_range)
    return {k: v.detach().cpu().double().numpy() for k, v in values.items() if k in METRICS["sar"]}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, (time.perf_counter() - start) * 1000.0


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The model moved to `device` for its turn, then back where its weights were (the studio shares them)."""
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        yield model.to(device)
    finally:
        model.to(home)


def _model_call(name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RuntimeError as exc:  # shape mismatch and the like: the user's data and this model do not fit
        raise ValueError(f"model '{name}' could not process this data: {exc}") from exc


@torch.no_grad()
def _compare_sar(
    dataset: Dataset,
    models: list[ModelSource],
    baselines: bool,
    device: torch.device,
    batch_size: int,
    progress: Progress,
) -> tuple[list[Row], int, dict[str, Any]]:
    from trainers.data import sar
    from trainers.evaluation import codecs
    from trainers.metrics.sar import latent_bits_per_pixel

    x_all, valid_all, db_all = _sar_items(dataset)
    n = x_all.shape[0]
    rows: list[Row] = []
    total_steps = len(models) + (len(codecs.IMAGE_CODECS) if baselines else 0)
    batches = [slice(start, start + batch_size) for start in range(0, n, batch_size)]
    # The trivial baseline every model must beat: the mean-value image of each patch.
    trivial = _concat(
        [
            sanity.sar_mean_image_scores(
                x_all[b].to(device), valid_all[b].to(device).float(), db_all[b].to(device)
            )
            for b in batches
        ]
    )

    for k, src in enumerate(models):
        progress(k / total_steps, f"{src.name} on {n} patches")
        with _on_device(src.model, device) as model:
            _model_call(src.name, partial(model, x_all[:1].to(device)))  # warm-up: first calls are slow
            parts, spreads, total_ms, bpp = [], [], 0.0, None
            for b in batches:
                x = x_all[b].to(device)
                valid = valid_all[b].to(device).float()
                db = db_all[b].to(device)
                (x_hat, z), ms = _timed(partial(_model_call, src.name, partial(model, x)), device)
                total_ms += ms
                bpp = latent_bits_per_pixel(tuple(z.shape), tuple(x.shape), bits=8)
                shown = x_hat.float().clamp(0, 1)
                parts.append(_sar_per_image(x, shown, z, valid, db))
                spreads.append(sanity.sar_spread(x, shown, valid))
        row = Row(src.name, src.kind, bpp, src.params, _concat(parts), total_ms / n, src.variant)
        row.flags = sanity.sar_flags(row.values["psnr"], row.values["ssim"], _concat(spreads), trivial)
        rows.append(row)

    extra: dict[str, Any] = {
        "trivial_baseline": {
            "name": "mean-value image (each patch's mean over its valid pixels, everywhere)",
            "metrics": {m: _finite_mean(v) for m, v in trivial.items()},
        }
    }
    # A checkpoint trained with another normalisation is scored on today's inputs: say so (as `eval` does).
    notes = [(s.name, sar.legacy_preprocessing_note(getattr(s.model, "preprocessing", None))) for s in models]
    if any(note for _, note in notes):
        extra["notes"] = [f"{name}: {note}" for name, note in notes if note]
    if baselines:
        images = [codecs.to_8bit(x[0].numpy()) for x in x_all]
        targets: dict[float, list[str]] = {}
        for row in rows:
            targets.setdefault(round(float(row.bpp), 6), []).append(row.name)
        sweep, skipped = [], []
        for j, codec in enumerate(codecs.IMAGE_CODECS):
            progress((len(models) + j) / total_steps, f"{codec.name} on {n} patches")
            reason = codec.unavailable_reason()
            if reason is not None:
                skipped.append({"name": codec.name, "reason": reason})
                continue
            for target, names in sorted(targets.items()):
                setting, _ = codecs.match_rate(codec, images, target)
                row = _sar_codec_row(codec, setting, images, x_all, valid_all, db_all, device)
                row.extra = {
                    "codec": codec.name,
                    "codec_setting": setting,
                    "matched_to": names,
                    "target_bpp": target,
                }
                rows.append(row)
            for setting in codecs.SWEEP[codec.name]:
                point = _sar_codec_row(codec, setting, images, x_all, valid_all, db_all, device)
                sweep.append(
                    {
                        "codec": codec.name,
                        "setting": setting,
                        "bpp": point.bpp,
                        "metric": METRICS["sar"][0],
                        "mean": _finite_mean(point.values[METRICS["sar"][0]]),
                    }
                )
        extra.update({"rd_sweep": sweep, "skipped": skipped})
    return rows, n, extra


def _finite_mean(values: np.ndarray) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _sar_codec_row(
    codec: Any,
    setting: float,
    images: list[np.ndarray],
    x_all: torch.Tensor,
    valid_all: torch.Tensor,
    db_all: torch.Tensor,
    device: torch.device,
) -> Row:
    decoded, nbytes, total_ms = [], [], 0.0
    for img in images:
        start = time.perf_counter()
        out, size = codec.roundtrip(img, setting)
        total_ms += (time.perf_counter() - start) * 1000.0
        decoded.append(out)
        nbytes.append(size)
    x_hat = torch.from_numpy(np.stack(decoded).astype(np.float32) / 255.0)[:, None]
    z = (x_all.shape[0], 1, 1, 1)  # no latent: the codec's rate comes from its bytes
    values = _sar_per_image(
        x_all.to(device),
        x_hat.to(device),
        z,
        valid_all.to(device).float(),
        db_all.to(device),
    )
    pixels = images[0].size
    bpp = float(np.mean([8.0 * b / pixels for b in nbytes]))
    return Row(codec.label(setting), "codec", bpp, None, values, total_ms / len(images))


# -------------------------------------------------------------------------------------------------- audio
def _waveform_getter(dataset: Dataset) -> Callable[[int], np.ndarray]:
    if isinstance(dataset, Subset):
        inner = _waveform_getter(dataset.dataset)
        return lambda i: inner(dataset.indices[i])
    getter = getattr(dataset, "waveform", None)
    if getter is None:
        raise ValueError("this audio data set has no waveforms to score decoded audio against")
    return getter


def _audio_scores(ref: np.ndarray, est: np.ndarray) -> tuple[float, float]:
    from trainers.metrics import audio as audio_metrics

    return (
        audio_metrics.log_spectral_distance(ref, est),
        audio_metrics.spectral_convergence(ref, est),
    )


@torch.no_grad()
def _compare_audio(
    dataset: Dataset,
    models: list[ModelSource],
    baselines: bool,
    device: torch.device,
    batch_size: int,
    progress: Progress,
) -> tuple[list[Row], int, dict[str, Any]]:
    from trainers.evaluation import codecs

    first = models[0]
    waveform = _waveform_getter(dataset)
    n = len(dataset)
    if n == 0:
        raise ValueError("the audio data has no window to compare on")
    waves = [np.asarray(waveform(i), dtype=np.float32) for i in range(n)]
    features_of = _audio_features(dataset, first)
    sample_rate = int(features_of(first).config.sample_rate)
    # The trivial baseline every model must beat: silence (spectral convergence 1) and the best flat spectrum.
    flat = np.array([sanity.flat_spectrum_lsd(w) for w in waves])
    rows: list[Row] = []
    feature_sets: dict[str, Any] = {}
    steps = len(models) + (1 + len(codecs.OPUS_SWEEP) if baselines else 0)

    for k, src in enumerate(models):
        progress(k / steps, f"{src.name} on {n} windows")
        features = features_of(src)
        feature_sets.setdefault(features.kind, features)
        rows.append(_audio_model_row(src, features, waves, flat, device))

    extra: dict[str, Any] = {
        "trivial_baseline": {
            "name": "silence (spectral convergence) and the best flat spectrum (log-spectral distance)",
            "metrics": {
                "lsd": _finite_mean(flat),
                "spectral_convergence": sanity.SILENCE_SPECTRAL_CONVERGENCE,
            },
        }
    }
    if baselines:
        progress(len(models) / steps, "feature round trip")
        rows += [_feature_round_trip_row(kind, features, waves) for kind, features in feature_sets.items()]
        reason = codecs.opus_unavailable_reason()
        sweep, skipped = [], []
        if reason is not None:
            skipped.append({"name": "Opus", "reason": reason})
        else:
            for j, bitrate in enumerate(codecs.OPUS_SWEEP):
                progress((len(models) + 1 + j) / steps, f"Opus {bitrate // 1000} kb/s")
                point, row = _opus_point(waves, sample_rate, bitrate)
                sweep.append(point)
                if row is not None:
                    rows.append(row)
        extra.update({"rd_sweep": sweep, "skipped": skipped})
    return rows, n, extra


def _audio_features(dataset: Dataset, first: ModelSource) -> Callable[[ModelSource], Any]:
    """A model's feature object. They are costly to build (a mel pseudo-inverse): one per distinct kind and
    configuration, starting with the one the data set already made for the first model."""
    from trainers.training.tasks import AudioTask

    cache: dict[str, Any] = {}

    def key(src: ModelSource) -> str:
        return json.dumps([AudioTask(src.variant).feature_kind(), src.model.preprocessing], sort_keys=True)

    def features_of(src: ModelSource) -> Any:
        if key(src) not in cache:
            cache[key(src)] = AudioTask(src.variant)._features(dict(src.model.preprocessing))
        return cache[key(src)]

    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    if getattr(base, "features", None) is not None:
        cache[key(first)] = base.features
    return features_of


def _score_waves(
    waves: list[np.ndarray], decode: Callable[[np.ndarray], tuple[np.ndarray, float]]
) -> tuple[dict[str, np.ndarray], float]:
    """LSD and spectral convergence of each wave's decoded copy, and the milliseconds summed over the waves;
    `decode(wav)` gives (decoded wave, milliseconds of the part that is timed)."""
    lsd, sc, total_ms = [], [], 0.0
    for wav in waves:
        est, ms = decode(wav)
        total_ms += ms
        a, b = _audio_scores(wav, est)
        lsd.append(a)
        sc.append(b)
    return {"lsd": np.array(lsd), "spectral_convergence": np.array(sc)}, total_ms


def _audio_model_row(
    src: ModelSource, features: Any, waves: list[np.ndarray], flat: np.ndarray, device: torch.device
) -> Row:
    """A model's row: each window encoded, reconstructed (timed) and decoded, flagged against `flat` (the
    best flat spectrum's LSD per window)."""
    with _on_device(src.model, device) as model:
        warm = torch.from_numpy(features.encode(waves[0]))[None].to(device)
        _model_call(src.name, partial(model.reconstruct, warm))  # warm-up: first calls are slow

        def decode(wav: np.ndarray) -> tuple[np.ndarray, float]:
            x = torch.from_numpy(features.encode(wav))[None].to(device)
            recon, ms = _timed(partial(_model_call, src.name, partial(model.reconstruct, x)), device)
            return features.decode(recon.float()[0].cpu().numpy()), ms

        values, total_ms = _score_waves(waves, decode)
    bpp = 8.0 * int(src.model.latent_dim) / features.config.n_samples
    row = Row(src.name, src.kind, bpp, src.params, values, total_ms / len(waves), src.variant)
    scored = np.isfinite(values["lsd"])
    row.flags = sanity.audio_flags(values["spectral_convergence"], values["lsd"][scored], flat[scored])
    return row


def _feature_round_trip_row(kind: str, features: Any, waves: list[np.ndarray]) -> Row:
    """The ceiling: the features decoded as they are."""

    def decode(wav: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        est = features.decode(features.encode(wav))
        return est, (time.perf_counter() - start) * 1000.0

    values, total_ms = _score_waves(waves, decode)
    row = Row(f"feature round trip ({kind})", "codec", None, None, values, total_ms / len(waves))
    row.missing["bpp"] = "the ceiling: features decoded as they are, no latent and no rate"
    return row


def _opus_point(waves: list[np.ndarray], sample_rate: int, bitrate: int) -> tuple[dict[str, Any], Row | None]:
    """Opus at one bitrate: its point of the rate-distortion sweep, and a row where the bitrate is one of
    the leaderboard's (`codecs.OPUS_BITRATES`)."""
    from trainers.evaluation import codecs

    nbytes: list[int] = []

    def decode(wav: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        est, size = codecs.opus_roundtrip(wav, sample_rate, bitrate)
        nbytes.append(size)
        return est, (time.perf_counter() - start) * 1000.0

    values, total_ms = _score_waves(waves, decode)
    bpp = float(np.mean([8.0 * b / len(w) for b, w in zip(nbytes, waves, strict=True)]))
    point = {
        "codec": "Opus",
        "setting": bitrate,
        "bpp": bpp,
        "metric": "lsd",
        "mean": _finite_mean(values["lsd"]),
    }
    if bitrate not in codecs.OPUS_BITRATES:
        return point, None
    row = Row(f"Opus {bitrate / 1000:g} kb/s", "codec", bpp, None, values, total_ms / len(waves))
    row.extra = {"codec": "Opus", "codec_setting": bitrate}
    return point, row


# ---------------------------------------------------------------------------------------------- fragments
def _fragment_base(dataset: Dataset, i: int) -> tuple[Any, int]:
    while isinstance(dataset, Subset):
        i = int(dataset.indices[i])
        dataset = dataset.dataset
    return dataset, i


def _fragment_values(clean: np.ndarray, corrupted: np.ndarray, repaired: np.ndarray, changed: np.ndarray):
    from trainers.metrics.fragments import fragment_metrics

    per = [fragment_metrics(clean[i], corrupted[i], repaired[i], changed[i]) for i in range(len(clean))]
    return {m: np.array([p[m] for p in per], dtype=np.float64) for m in METRICS["fragments"]}


@torch.no_grad()
def _compare_fragments(
    dataset: Dataset,
    models: list[ModelSource],
    baselines: bool,
    device: torch.device,
    batch_size: int,
    progress: Progress,
) -> tuple[list[Row], int, dict[str, Any]]:
    n = len(dataset)
    if n == 0:
        raise ValueError("the fragment data has no fragment to compare on")
    corrupted_f, clean_f, changed_l, types = [], [], [], []
    for i in range(n):
        corrupted, clean, changed = dataset[i]
        corrupted_f.append(corrupted)
        clean_f.append(clean)
        changed_l.append(np.asarray(changed, dtype=bool))
        base, j = _fragment_base(dataset, i)
        types.append(base.fragment_type(j) if hasattr(base, "fragment_type") else "other")
    x_all = torch.stack(corrupted_f)
    clean_b = np.rint(torch.stack(clean_f)[:, 0].numpy() * 255).astype(np.uint8)
    corrupt_b = np.rint(x_all[:, 0].numpy() * 255).astype(np.uint8)
    changed_all = np.stack(changed_l)
    # The trivial baseline every repair must beat: the corrupted bytes left as they are.
    identity = _fragment_values(clean_b, corrupt_b, corrupt_b, changed_all)
    rows: list[Row] = []
    batch = max(batch_size, 64)  # fragments are small; bigger batches time the model, not the loop

    for k, src in enumerate(models):
        progress(k / (len(models) + 1), f"{src.name} on {n} fragments")
        with _on_device(src.model, device) as model:
            _model_call(src.name, partial(model.predict_bytes, x_all[:batch].to(device)))  # warm-up
            repaired, total_ms, bpp = [], 0.0, None
            for start in range(0, n, batch):
                x = x_all[start : start + batch].to(device)
                out, ms = _timed(partial(_model_call, src.name, partial(model.predict_bytes, x)), device)
                total_ms += ms
                repaired.append(out.cpu().numpy().clip(0, 255).astype(np.uint8))
                if bpp is None:
                    z = _model_call(src.name, partial(model.encode, x[:1]))
                    bpp = 8.0 * z[0].numel() / x.shape[-1]
        values = _fragment_values(clean_b, corrupt_b, np.concatenate(repaired), changed_all)
        row = Row(src.name, src.kind, bpp, src.params, values, total_ms / n, src.variant)
        row.flags = sanity.fragments_flags(values["accuracy"], identity["accuracy"])
        rows.append(row)
    if baselines:
        progress(len(models) / (len(models) + 1), "identity baseline")
        start = time.perf_counter()
        values = _fragment_values(clean_b, corrupt_b, corrupt_b, changed_all)
        ms = (time.perf_counter() - start) * 1000.0 / n
        row = Row("identity (corrupted input unchanged)", "codec", 8.0, None, values, ms)
        row.extra = {"note": "the bytes are passed through as received: 8 bits per byte, no repair"}
        rows.append(row)
    base = _fragment_base(dataset, 0)[0]
    noise = base.noise.to_dict() if hasattr(base, "noise") else None
    trivial = {
        "name": "identity (the corrupted input left as it is)",
        "metrics": {"accuracy": _finite_mean(identity["accuracy"])},
    }
    return rows, n, {"types": np.array(types), "noise": noise, "trivial_baseline": trivial}


_DOMAIN_RUNNERS = {"sar": _compare_sar, "audio": _compare_audio, "fragments": _compare_fragments}


# ------------------------------------------------------------------------------------------------- driver
def _load_data_spec(data: str | DataSpec | None, domain_hint: str | None) -> DataSpec:
    if isinstance(data, DataSpec):
        spec = data
    elif data:
        spec = parse_data_spec(data)
    elif domain_hint:
        spec = default_data_spec(domain_hint)
    else:
        raise ValueError(
            "no data given: pass --data DOMAIN:folder=PATH or a built-in spec such as sar:synthetic"
        )
    spec.check_paths()
    folder = spec.folder_path
    if folder is not None and not any(p.is_file() for p in folder.rglob("*")):
        raise ValueError(f"data folder {str(folder)!r} is empty: it holds no file")
    return spec


def run_compare(
    sources: Sequence[str],
    data: str | DataSpec | None,
    baselines: bool = False,
    seed: int = 0,
    runs_dir: str | Path = "runs",
    kind: str = "best",
    device: str = "auto",
    batch_size: int = 8,
    progress: Progress | None = None,
    models: list[ModelSource] | None = None,
) -> dict[str, Any]:
    """The leaderboard as a JSON-ready dict (see the module docstring and README "Compare").

    `sources` are run ids (in `runs_dir`) or checkpoint folders; `models` may pass them already loaded
    (the studio's cache). Bad input raises ValueError / FileNotFoundError with a message for the user.
    """
    from trainers.training.loop import resolve_device
    from trainers.training.tasks import task_for

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative whole number, got {seed!r}")
    if kind not in ("best", "last"):
        raise ValueError(f"kind must be best or last, got {kind!r}")
    progress = progress or _no_progress
    spec_domain = None
    if isinstance(data, DataSpec):
        spec_domain = data.domain
    elif data:
        spec_domain = parse_data_spec(data).domain
    if models is None:
        models = resolve_sources(sources, runs_dir, kind, spec_domain)
    if not models:
        raise ValueError("no model to compare: give one or more run ids or checkpoint folders")
    domain = spec_domain or models[0].model.DOMAIN
    for src in models:
        if domain != src.model.DOMAIN:
            raise ValueError(
                f"'{src.name}' is a {src.model.DOMAIN} model ({src.variant}) and '{models[0].name}' a "
                f"{models[0].model.DOMAIN} one: compare models of one domain at a time"
            )
    spec = _load_data_spec(data, domain)
    dev = resolve_device(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # Every model sees the data as the first one's preprocessing and config make it.
            first = models[0]
            dataset = task_for(first.variant).dataset_for_eval(
                spec, dict(first.model.preprocessing), first.config
            )
            runner = _DOMAIN_RUNNERS[domain]
            rows, n, extra = runner(dataset, models, baselines, dev, int(batch_size), progress)
        except ValueError as exc:
            skipped = _skipped_files(caught)
            if skipped:
                raise ValueError(
                    f"{exc} (skipped: {'; '.join(s['file'] + ': ' + s['reason'] for s in skipped)})"
                ) from exc
            raise
    skipped_files = _skipped_files(caught)
    metrics = METRICS[domain]
    types = extra.pop("types", None)
    groups = None
    if types is not None:
        groups = {t: types == t for t in _type_order(types)}
    progress(0.98, "confidence intervals")
    result: dict[str, Any] = {
        "domain": domain,
        "data": str(spec),
        "n": int(n),
        "seed": int(seed),
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "bpp_unit": BPP_UNITS[domain],
        "metrics": [{"name": m, "direction": metric_direction(m), "arrow": metric_arrow(m)} for m in metrics],
        "rows": [_summarise(r, seed, metrics, groups) for r in rows],
    }
    if groups is not None:
        result["types"] = {t: int(mask.sum()) for t, mask in groups.items()}
    result.update(extra)
    if skipped_files:
        result["skipped_files"] = skipped_files
    progress(1.0, "done")
    return _json_safe(result)


def _type_order(types: np.ndarray) -> list[str]:
    from trainers.data.fragments import FILE_TYPES

    present = set(types.tolist())
    return [t for t in FILE_TYPES if t in present] + sorted(present - set(FILE_TYPES))


def _skipped_files(caught: list[warnings.WarningMessage]) -> list[dict[str, str]]:
    """Files the data code left out ("skipping PATH: reason" warnings), as {"file", "reason"}."""
    out = []
    for w in caught:
        text = str(w.message)
        if text.startswith("skipping ") and ": " in text:
            file, reason = text[len("skipping ") :].split(": ", 1)
            out.append({"file": file, "reason": reason})
    return out


def _json_safe(obj: Any) -> Any:
    """Plain JSON types only, with every non-finite float as None (the JSON has no NaN tokens)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(result: dict[str, Any]) -> str:
    """The result as strict JSON (no NaN / Infinity tokens)."""
    return json.dumps(_json_safe(result), indent=2, allow_nan=False, ensure_ascii=False)


# ------------------------------------------------------------------------------------------------- output
def _md(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _cell(name: str, summary: dict[str, Any]) -> str:
    mean = summary.get("mean")
    if mean is None:
        return "n/a"
    ci = summary.get("ci95") or [None, None]
    return f"{format_metric(name, mean)} [{format_metric(name, ci[0])}, {format_metric(name, ci[1])}]"


def _header(name: str) -> str:
    arrow = metric_arrow(name)
    return f"{name} ({arrow})" if arrow else name


#: Figures a flag makes meaningless (a flat image has no speckle: its ENL ratio is huge and says nothing).
FLAGGED_METRICS = ("enl_ratio",)
FLAGS_HEADER = "flags"


def _flags_cell(row: dict[str, Any]) -> str:
    """The flags beside a model's row: "none" when its checks found nothing, "–" for an unchecked baseline."""
    if row.get("kind") == "codec":
        return "–"
    return sanity.flag_cell(row.get("flags") or [])


def leaderboard(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the main table: name, kind, bpp, params, ms / example, then each metric as
    "mean [lo, hi]" with its direction (↑, ↓ or target band) in the header, then the model's flags in words
    (constant output, no better than the trivial baseline); a flagged model's ENL ratio carries its flag."""
    metrics = [m["name"] for m in result["metrics"]]
    head = ["name", "kind", "bpp (↓)", "params", "ms / example (↓)", *(_header(m) for m in metrics)]
    rows = []
    for row in result["rows"]:
        bpp = "n/a" if row.get("bpp") is None else f"{row['bpp']:.3g}"
        params = "–" if row.get("params") is None else f"{row['params']:,}"
        ms = "n/a" if row.get("inference_ms") is None else f"{row['inference_ms']:.3g}"
        cells = [str(row["name"]), str(row["kind"]), bpp, params, ms]
        flags = row.get("flags") or []
        for m in metrics:
            cell = _cell(m, row["metrics"].get(m, {}))
            cells.append(sanity.qualified(cell, flags) if m in FLAGGED_METRICS else cell)
        rows.append(cells + [_flags_cell(row)])
    return [*head, FLAGS_HEADER], rows


def markdown_report(result: dict[str, Any], main_table: bool = True) -> str:
    """The leaderboard as Markdown: one table (mean [95% CI] per metric), per-file-type tables for
    fragments, then the notes (units, missing values and why, skipped codecs and files)."""
    metrics = [m["name"] for m in result["metrics"]]
    lines = [
        f"**{result['domain']}** on `{_md(result['data'])}`: {result['n']} examples, "
        f"mean [95% bootstrap CI], seed {result['seed']}",
    ]
    if main_table:
        head, rows = leaderboard(result)
        lines += [
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 3) + ["---"]) + "|",  # flags: words
        ]
        lines += ["| " + " | ".join(_md(c) for c in cells) + " |" for cells in rows]
    if result.get("types"):
        lines += ["", "By file type (mean [95% CI]; n = fragments):", ""]
        types = list(result["types"])
        for m in metrics[:3]:
            head = [_header(m), *(f"{t} (n={result['types'][t]})" for t in types)]
            lines += ["| " + " | ".join(head) + " |", "|---|" + "|".join(["---:"] * len(types)) + "|"]
            for row in result["rows"]:
                by = row.get("by_type", {})
                cells = [_md(row["name"])] + [
                    _cell(m, by.get(t, {}).get("metrics", {}).get(m, {})) for t in types
                ]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    notes = [f"bpp: {result['bpp_unit']}."]
    notes.append(
        "ms / example: inference time only (model forward pass; codec encode + decode); it varies "
        "between runs, every other figure is fixed by the seed."
    )
    trivial = result.get("trivial_baseline")
    if trivial:
        figures = ", ".join(
            f"{m} {format_metric(m, v)}" for m, v in trivial["metrics"].items() if v is not None
        )
        notes.append(
            f"trivial baseline: {trivial['name']}: {figures}. A model at or beyond it, or whose output is "
            "constant, is flagged."
        )
    for row in result["rows"]:
        for flag in row.get("flags") or []:
            notes.append(f"{row['name']} flagged: {flag}.")
        for key, reason in (row.get("missing") or {}).items():
            notes.append(f"{row['name']}: {key} n/a: {reason}.")
        if row.get("matched_to"):
            notes.append(
                f"{row['name']}: setting with the mean file size closest to {row['target_bpp']:g} bpp "
                f"({', '.join(row['matched_to'])})."
            )
    notes += [f"{n}." for n in result.get("notes", [])]
    for s in result.get("skipped", []):
        notes.append(f"{s['name']} skipped: {s['reason']}.")
    for s in result.get("skipped_files", []):
        notes.append(f"file skipped: {s['file']}: {s['reason']}.")
    lines += ["", *(f"- {_md(n)}" for n in notes)]
    return "\n".join(lines).rstrip() + "\n"


# One colour per codec, shared by its matched rows and its sweep; models take the others in turn.
CODEC_COLOURS = {"JPEG": "#9467bd", "JPEG 2000": "#8c564b", "WebP": "#e377c2", "Opus": "#2ca02c"}
MODEL_COLOURS = ("#1f77b4", "#ff7f0e", "#d62728", "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939")


def _colour(point: dict[str, Any], k: int) -> str:
    return CODEC_COLOURS.get(point.get("codec") or "", MODEL_COLOURS[k % len(MODEL_COLOURS)])


def _rd_points(result: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    metric = result["metrics"][0]["name"]
    points = []
    for row in result["rows"]:
        s = row["metrics"].get(metric, {})
        if s.get("mean") is None:
            continue
        points.append(
            {
                "name": row["name"],
                "kind": row["kind"],
                "bpp": row.get("bpp"),
                "mean": s["mean"],
                "ci95": s.get("ci95"),
                "codec": row.get("codec"),
            }
        )
    return metric, points


def rd_figure(result: dict[str, Any]) -> Any:
    """A plotly rate-distortion figure: the main metric against bpp, models as labelled points with their
    95% CI, codec rows as points, each codec's sweep as a line; rows without a rate as horizontal lines."""
    import plotly.graph_objects as go

    metric, points = _rd_points(result)
    fig = go.Figure()
    for kind, symbol in (("run", "circle"), ("checkpoint", "diamond"), ("codec", "square")):
        pts = [p for p in points if p["kind"] == kind and p["bpp"] is not None]
        if not pts:
            continue
        fig.add_trace(
            go.Scatter(
                x=[p["bpp"] for p in pts],
                y=[p["mean"] for p in pts],
                mode="markers+text",
                text=[p["name"] for p in pts],
                textposition="top center",
                marker={"symbol": symbol, "size": 10, "color": [_colour(p, k) for k, p in enumerate(pts)]},
                name={"run": "runs", "checkpoint": "checkpoints", "codec": "codecs"}[kind],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [(p["ci95"][1] - p["mean"]) if p["ci95"] else 0 for p in pts],
                    "arrayminus": [(p["mean"] - p["ci95"][0]) if p["ci95"] else 0 for p in pts],
                },
            )
        )
    sweep = result.get("rd_sweep") or []
    for codec in dict.fromkeys(s["codec"] for s in sweep):
        pts = sorted(
            (s for s in sweep if s["codec"] == codec and s["mean"] is not None), key=lambda s: s["bpp"]
        )
        fig.add_trace(
            go.Scatter(
                x=[s["bpp"] for s in pts],
                y=[s["mean"] for s in pts],
                mode="lines+markers",
                name=f"{codec} sweep",
                marker={"size": 5},
                line={"dash": "dot", "color": CODEC_COLOURS.get(codec)},
            )
        )
    for p in points:
        if p["bpp"] is None:
            fig.add_hline(
                y=p["mean"], line_dash="dash", annotation_text=p["name"], annotation_position="bottom right"
            )
    arrow = metric_arrow(metric)
    fig.update_layout(
        title=f"{result['domain']}: {metric} ({arrow}) against rate, {result['n']} examples",
        xaxis_title=f"bpp: {result['bpp_unit']}",
        yaxis_title=f"{metric} ({arrow})" if arrow else metric,
        height=520,
        margin={"l": 60, "r": 20, "t": 60, "b": 60},
        legend={"orientation": "h", "y": -0.2},
    )
    positive = [p["bpp"] for p in points if p["bpp"]] + [s["bpp"] for s in sweep if s.get("bpp")]
    if positive and max(positive) / max(min(positive), 1e-12) > 20:
        fig.update_xaxes(type="log")
    return fig


def write_png(result: dict[str, Any], path: str | Path) -> Path:
    """The rate-distortion plot as a PNG drawn with matplotlib (Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, points = _rd_points(result)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=100)
    try:
        markers = {"run": "o", "checkpoint": "D", "codec": "s"}
        for k, p in enumerate(points):
            if p["bpp"] is None:
                ax.axhline(p["mean"], ls="--", lw=1, color="grey")
                ax.annotate(
                    p["name"],
                    (0.99, p["mean"]),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="bottom",
                    fontsize=8,
                    color="grey",
                )
                continue
            ci = p["ci95"] or [p["mean"], p["mean"]]
            ax.errorbar(
                [p["bpp"]],
                [p["mean"]],
                yerr=[[p["mean"] - ci[0]], [ci[1] - p["mean"]]],
                fmt=markers[p["kind"]],
                capsize=3,
                color=_colour(p, k),
            )
            ax.annotate(
                p["name"], (p["bpp"], p["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        sweep = result.get("rd_sweep") or []
        for codec in dict.fromkeys(s["codec"] for s in sweep):
            pts = sorted(
                (s for s in sweep if s["codec"] == codec and s["mean"] is not None), key=lambda s: s["bpp"]
            )
            ax.plot(
                [s["bpp"] for s in pts],
                [s["mean"] for s in pts],
                ":",
                marker=".",
                label=f"{codec} sweep",
                color=CODEC_COLOURS.get(codec),
            )
        positive = [p["bpp"] for p in points if p["bpp"]] + [s["bpp"] for s in sweep if s.get("bpp")]
        if positive and max(positive) / max(min(positive), 1e-12) > 20:
            from matplotlib.ticker import FuncFormatter

            def label(v: float, _pos: int) -> str:  # 0.2, 0.3, 0.5, 1, 2, ... written out
                lead = v / 10 ** math.floor(math.log10(v) + 1e-9) if v > 0 else 0
                return f"{v:g}" if round(lead, 6) in (1, 2, 3, 5) else ""

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(label))
            ax.xaxis.set_minor_formatter(FuncFormatter(label))
        arrow = metric_arrow(metric)
        ax.set_xlabel(f"bpp: {result['bpp_unit']}", fontsize=8)
        ax.set_ylabel(f"{metric} ({arrow})" if arrow else metric)
        ax.set_title(f"{result['domain']}: {metric} against rate, {result['n']} examples")
        ax.grid(True, alpha=0.3)
        if sweep:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """compare.md, compare.json, rd.html (plotly) and rd.png (matplotlib) in `out_dir` (created)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "compare.md", out / "compare.json", out / "rd.html", out / "rd.png"]
    paths[0].write_text(markdown_report(result), encoding="utf-8")
    paths[1].write_text(to_json(result) + "\n", encoding="utf-8")
    rd_figure(result).write_html(str(paths[2]), include_plotlyjs=True)
    write_png(result, paths[3])
    return paths
