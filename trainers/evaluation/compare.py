"""The `compare` leaderboard: several checkpoints (and, with baselines, classic codecs) on the same examples.

Every model of the data's domain sees the same examples, built once (SAR: whole images by default, padded to
a multiple of 16; ``size=`` tiles them), and is scored per example on what a receiver decodes:

- **Rates are measured bytes.** Each model's latent is quantised and range-coded (``bitstream``: uniform
  quantisation at :data:`bitstream.DEFAULT_BITS` bits per value under a fitted Gaussian or Laplace, or, for
  a model trained with ``entropy_model=factorized``, rounding under its own learned density); the rate is
  those bytes, side information included, and the scores are those of the model's decoder run on the latent
  decoded from them. Each model also gets a rate–distortion curve (``rd``: the bits sweep
  :data:`bitstream.SWEEP_BITS`, or the quantisation steps :data:`bitstream.LEARNED_STEPS`).
- bpp: SAR bits per pixel; audio bits per 48 kHz sample; fragments bits per input byte. Codecs pay their
  real file or packet bytes, header included; SAR codecs are matched per image to each model's bytes within
  ±2 % (``codecs.match_image``) or say why they cannot be, and BD-rate / BD-PSNR against JPEG 2000 are given
  where the curves overlap.
- **Intervals are over independent units** (SAR images, recordings, files: ``ci_unit``): a cluster bootstrap
  with ``scipy.stats.bootstrap`` (:data:`BOOTSTRAP_RESAMPLES` resamples seeded by the seed), and **paired
  differences** between every pair of models and against the trivial baseline (mean, interval, Wilcoxon p).
  NaN per-example values (a metric undefined for that example) are left out and ``n`` says how many counted.

Everything except inference time is a pure function of the checkpoints, the data and the seed, so two
runs with the same seed give identical figures (tests/test_golden.py pins a small set). :func:`run_compare`
returns a JSON-ready dict; the CLI and the studio's Compare tab format it with :func:`markdown_report` and
:func:`rd_figure`. docs/leaderboard.md says how to read it.
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

from trainers.data.files import folder_files
from trainers.data.spec import DataSpec, default_data_spec, parse_data_spec
from trainers.metrics import registry, sanity
from trainers.training.fastpath import prepare_for_inference

BOOTSTRAP_RESAMPLES = 1000
# Metrics of the leaderboard per domain, in column order; the first is the rate-distortion plot's y axis.
METRICS: dict[str, tuple[str, ...]] = {
    "sar": ("psnr", "psnr_db", "psnr_8bit", "ssim", "enl_ratio", "epi"),
    "audio": ("lsd", "spectral_convergence"),
    "fragments": ("accuracy", "fixed_fraction", "broken_fraction", "ber"),
}
BPP_UNITS: dict[str, str] = {
    "sar": "bits per pixel (models: their range-coded latent's bytes, side information included; codecs: "
    "actual file bytes, header included)",
    "audio": "bits per audio sample at 48 kHz (models: their range-coded latent's bytes, side information "
    "included; Opus: packet bytes)",
    "fragments": "bits per input byte (models: their range-coded latent's bytes, side information included; "
    "identity: the bytes themselves)",
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
    values: Sequence[float] | np.ndarray,
    seed: int | Sequence[int],
    resamples: int = BOOTSTRAP_RESAMPLES,
    units: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, Any]:
    """``{"mean", "ci95": [lo, hi], "n"}`` of the finite values: the mean and the percentile 95 % interval of
    `resamples` bootstrap means (``scipy.stats.bootstrap``), resampling whole `units` (images, recordings,
    files: examples of one unit are correlated) or, without units, the examples. NaN values are left out;
    with none left, mean and ci95 are None; with one unit, ci95 is None. The same seed gives the same
    interval."""
    from trainers.metrics.stats import summary

    out = summary(values, seed, units, resamples)
    if units is None:
        out.pop("n_units")
    return out


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
    nbytes: np.ndarray | None = None  # bytes of each example's bitstream (models at their main point)


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _summarise(
    row: Row, seed: int, metrics: Sequence[str], groups: dict[str, np.ndarray] | None, units: np.ndarray
) -> dict:
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
            out["metrics"][m] = {"mean": None, "ci95": None, "n": 0, "n_units": 0}
            continue
        summary = bootstrap_summary(row.values[m], _stable_key(seed, m), units=units)
        out["metrics"][m] = summary
        if summary["n"] == 0:
            missing.setdefault(m, _missing_reason(m))
    if groups:
        by_type: dict[str, Any] = {}
        for group, mask in groups.items():
            entry: dict[str, Any] = {"n": int(mask.sum()), "metrics": {}}
            for m in metrics:
                if m in row.values:
                    entry["metrics"][m] = bootstrap_summary(
                        row.values[m][mask], _stable_key(seed, m, group), units=units[mask]
                    )
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
@dataclass
class SARExample:
    """One SAR example as the models see it: padded to a multiple of 16 (the padding invalid), and the
    size of the region that is scored (the image itself, without the padding)."""

    x: torch.Tensor  # (1, 1, Hp, Wp)
    valid: torch.Tensor  # (1, 1, Hp, Wp) bool
    db_range: torch.Tensor  # (1, K)
    h: int
    w: int

    def crop(self, t: torch.Tensor) -> torch.Tensor:
        return t[..., : self.h, : self.w]

    @property
    def pixels(self) -> int:
        return self.h * self.w


def _pad16(x: np.ndarray, valid: np.ndarray, db: Sequence[float]) -> SARExample:
    h, w = x.shape
    ph, pw = (-h) % 16, (-w) % 16
    xp = np.pad(x, ((0, ph), (0, pw)), mode="symmetric")  # mirrored: no false edge at the border
    vp = np.pad(valid, ((0, ph), (0, pw)), constant_values=False)
    return SARExample(
        torch.from_numpy(np.ascontiguousarray(xp, np.float32))[None, None],
        torch.from_numpy(np.ascontiguousarray(vp, bool))[None, None],
        torch.as_tensor(np.asarray(db, np.float32))[None],
        h,
        w,
    )


def _sar_examples(dataset: Dataset, spec: DataSpec) -> tuple[list[SARExample], np.ndarray, str]:
    """(examples, unit of each, evaluation size in words). A folder without ``size=`` is evaluated on whole
    images (the models are fully convolutional); with ``size=``, or built-in scenes, on its items."""
    from trainers.data import sar

    if len(dataset) == 0:
        raise ValueError("the SAR data has no patch to compare on")
    if isinstance(dataset, sar.SARFolderDataset) and "size" not in spec.options:
        examples = []
        for path in dataset.files:
            img = sar.read_sar_image(path, dataset.input_kind, dataset.band)
            x, valid, knots = sar.normalize_db(img.intensity, img.valid, dataset.pcts)
            examples.append(_pad16(x, valid, knots))
        sizes = sorted({f"{e.h}×{e.w}" for e in examples})
        size = sizes[0] if len(sizes) == 1 else f"{len(sizes)} sizes, {sizes[0]} to {sizes[-1]}"
        return examples, np.arange(len(examples)), f"whole images ({size}), padded to a multiple of 16"
    examples, units = [], []
    for i in range(len(dataset)):
        x, valid, db = dataset[i]
        examples.append(_pad16(x[0].numpy(), (valid[0] > 0).numpy(), torch.as_tensor(db).tolist()))
        origin = getattr(dataset, "patch_origin", None)
        units.append(str(origin(i)[0]) if origin else str(i))
    s = examples[0].h
    if isinstance(dataset, sar.SARFolderDataset):
        what = f"{s}×{s} tiles of {len(set(units))} images (size={s})"
    else:
        what = f"whole {s}×{s} scenes"
    return examples, np.unique(np.array(units), return_inverse=True)[1], what


def _sar_scores(ex: SARExample, shown: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Every leaderboard metric of one example's reconstruction (cropped to the image)."""
    from trainers.metrics.sar import sar_metrics_per_image

    x, valid = ex.crop(ex.x).to(device), ex.crop(ex.valid).to(device).float()
    values = sar_metrics_per_image(x, ex.crop(shown).to(device), (1, 1, 1, 1), valid, ex.db_range.to(device))
    return {k: float(v[0]) for k, v in values.items() if k in METRICS["sar"]}


def _stack(parts: list[dict[str, float]]) -> dict[str, np.ndarray]:
    return {k: np.array([p[k] for p in parts], dtype=np.float64) for k in parts[0]} if parts else {}


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


@dataclass
class Coded:
    """A model's results at every point of its rate sweep (bits per latent value, or the quantisation step of
    a learned-density model): per-example values, bytes and bits per unit."""

    values: dict[float, list[dict[str, float]]] = field(default_factory=dict)
    nbytes: dict[float, list[int]] = field(default_factory=dict)
    bpp: dict[float, list[float]] = field(default_factory=dict)
    ms: float = 0.0
    prior: Any = None  # the model's learned entropy model (models.entropy), or None

    @property
    def key(self) -> str:
        return "bits_per_value" if self.prior is None else "quant_step"

    @property
    def points(self) -> tuple[float, ...]:
        from trainers.evaluation import bitstream

        return bitstream.SWEEP_BITS if self.prior is None else bitstream.LEARNED_STEPS

    @property
    def main(self) -> float:
        from trainers.evaluation import bitstream

        return bitstream.DEFAULT_BITS if self.prior is None else bitstream.LEARNED_MAIN_STEP

    def encode(self, z: np.ndarray, point: float) -> bytes:
        """The bitstream of `z` at one point of the sweep."""
        from trainers.evaluation import bitstream

        if self.prior is None:
            return bitstream.encode(z, int(point)).data
        return bitstream.encode_learned(z, self.prior, float(point)).data

    def add(self, point: float, values: dict[str, float], nbytes: int, units: float) -> None:
        self.values.setdefault(point, []).append(values)
        self.nbytes.setdefault(point, []).append(nbytes)
        self.bpp.setdefault(point, []).append(8.0 * nbytes / units)

    def row(self, src: ModelSource, n: int) -> Row:
        """The leaderboard row at the main point (``bitstream.DEFAULT_BITS`` bits per value, or step 1 of a
        learned density) with the sweep, low rate first, as "rd"."""
        main = self.main
        values = _stack(self.values[main])
        row = Row(
            src.name, src.kind, float(np.mean(self.bpp[main])), src.params, values, self.ms / n, src.variant
        )
        row.nbytes = np.array(self.nbytes[main], dtype=np.float64)
        row.extra = {
            "rate": "measured",
            "bytes": int(sum(self.nbytes[main])),
            self.key: main,
            "rd": [
                {
                    self.key: point,
                    "bpp": float(np.mean(self.bpp[point])),
                    "metrics": {m: _finite_mean(v) for m, v in _stack(self.values[point]).items()},
                }
                for point in sorted(self.values, key=lambda p: np.mean(self.bpp[p]))
            ],
        }
        if self.prior is not None:
            row.extra["entropy_model"] = "factorized"
        return row


def _coded_sweep(
    encode: Callable[[], torch.Tensor],
    decode: Callable[[torch.Tensor], Any],
    score: Callable[[Any], dict[str, float]],
    coded: Coded,
    units: float,
    device: torch.device,
) -> Any:
    """One example through the real bitstream at every point of the sweep: encode once, then for each point,
    the bytes, the latent decoded from them, the model's decoder on it and the scores; returns the main
    point's decoded output. Inference time = encode + the main point's decode."""
    from trainers.evaluation import bitstream

    z, ms = _timed(encode, device)
    z_np = z[0].detach().float().cpu().numpy()
    shown = None
    for point in coded.points:
        data = coded.encode(z_np, point)
        latent = bitstream.decode(data, coded.prior)[1]  # what a receiver gets, from the bytes alone
        out, dec_ms = _timed(lambda latent=latent: decode(torch.from_numpy(latent)[None].to(device)), device)
        coded.add(point, score(out), len(data), units)
        if point == coded.main:
            coded.ms += ms + dec_ms
            shown = out
    return shown


@torch.no_grad()
def _compare_sar(
    dataset: Dataset,
    models: list[ModelSource],
    baselines: bool,
    device: torch.device,
    batch_size: int,  # noqa: ARG001 - examples differ in size: one at a time
    progress: Progress,
    spec: DataSpec,
) -> tuple[list[Row], int, dict[str, Any]]:
    from trainers.evaluation import codecs

    examples, units, eval_size = _sar_examples(dataset, spec)
    n = len(examples)
    total_steps = len(models) + (len(codecs.IMAGE_CODECS) if baselines else 0)
    # The trivial baseline every model must beat: the mean-value image of each example.
    trivial = _stack(
        [
            {
                k: float(v[0])
                for k, v in sanity.sar_mean_image_scores(
                    e.crop(e.x).to(device), e.crop(e.valid).to(device).float(), e.db_range.to(device)
                ).items()
            }
            for e in examples
        ]
    )
    rows: list[Row] = []
    for k, src in enumerate(models):
        rows.append(
            _sar_model_row(src, examples, units, trivial, device, _sub_progress(progress, k, total_steps))
        )
    extra: dict[str, Any] = {
        "units": units,
        "ci_unit": "image",
        "eval_size": eval_size,
        "trivial_baseline": {
            "name": "mean-value image (each image's mean over its valid pixels, everywhere)",
            "metrics": {m: _finite_mean(v) for m, v in trivial.items()},
            "values": trivial,
        },
    }
    # A checkpoint trained with another normalisation is scored on today's inputs: say so (as `eval` does).
    notes = _normalisation_notes(models)
    if notes:
        extra["notes"] = notes
    if baselines:
        images = [codecs.to_8bit(e.crop(e.x)[0, 0].numpy()) for e in examples]
        sweep, skipped = [], []
        for j, codec in enumerate(codecs.IMAGE_CODECS):
            progress((len(models) + j) / total_steps, f"{codec.name} on {n} images")
            reason = codec.unavailable_reason()
            if reason is not None:
                skipped.append({"name": codec.name, "reason": reason})
                continue
            rows += _sar_matched_rows(codec, images, examples, rows[: len(models)], device)
            for setting in codecs.SWEEP[codec.name]:
                point = _sar_codec_row(codec, [setting] * n, images, examples, device)
                sweep.append(
                    {
                        "codec": codec.name,
                        "setting": setting,
                        "bpp": point.bpp,
                        "metric": METRICS["sar"][0],
                        "mean": _finite_mean(point.values[METRICS["sar"][0]]),
                        "metrics": {m: _finite_mean(v) for m, v in point.values.items()},
                    }
                )
        extra.update({"rd_sweep": sweep, "skipped": skipped})
    return rows, n, extra


def _sub_progress(progress: Progress, k: int, total: int) -> Progress:
    """Progress of step k of `total` as a fraction of the whole, with the step's own words."""
    return lambda fraction, desc: progress((k + fraction) / total, desc)


def _sar_model_row(
    src: ModelSource,
    examples: list[SARExample],
    units: np.ndarray,
    trivial: dict[str, np.ndarray],
    device: torch.device,
    progress: Progress,
) -> Row:
    coded, spreads = Coded(prior=getattr(src.model, "entropy", None)), []
    with _on_device(src.model, device) as model:
        model = prepare_for_inference(model, device)  # the variant's precision (training.fastpath)
        _model_call(src.name, partial(model, examples[0].x.to(device)))  # warm-up: first calls are slow
        for i, ex in enumerate(examples):
            progress(i / len(examples), f"{src.name}: image {i + 1} of {len(examples)}")
            x = ex.x.to(device)
            shown = _coded_sweep(
                partial(_model_call, src.name, partial(model.encode, x)),
                lambda z: model.decode(z).float().clamp(0, 1),
                lambda out, ex=ex: _sar_scores(ex, out, device),
                coded,
                ex.pixels,
                device,
            )
            spreads.append(sanity.sar_spread(ex.crop(x), ex.crop(shown), ex.crop(ex.valid.to(device))))
    row = coded.row(src, len(examples))
    row.flags = sanity.sar_flags(
        row.values["psnr"], row.values["ssim"], _concat(spreads), trivial, units=units
    )
    return row


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def _normalisation_notes(models: list[ModelSource]) -> list[str]:
    from trainers.data import sar

    notes = []
    for src in models:
        note = sar.legacy_preprocessing_note(getattr(src.model, "preprocessing", None))
        if note:
            notes.append(f"{src.name}: {note}")
    return notes


def _sar_matched_rows(
    codec: Any,
    images: list[np.ndarray],
    examples: list[SARExample],
    model_rows: list[Row],
    device: torch.device,
) -> list[Row]:
    """One row per distinct model rate: the codec's setting searched per image for the file closest to that
    model's measured bytes on the same image (``codecs.match_image``: within ±2 % where the codec can make
    such a file; where it cannot, the row says why under ``rate_unmet``). The files measured while matching
    one model's rates are reused for the next model's (one cache per image)."""
    from trainers.evaluation import codecs

    out, seen = [], {}
    caches: list[dict[Any, int]] = [{} for _ in images]
    for mrow in model_rows:
        targets = [8.0 * b / e.pixels for b, e in zip(mrow.nbytes, examples, strict=True)]
        key = tuple(round(t, 9) for t in targets)
        if key in seen:
            seen[key].extra["matched_to"].append(mrow.name)
            continue
        matches = [
            codecs.match_image(codec, img, t, cache)
            for img, t, cache in zip(images, targets, caches, strict=True)
        ]
        settings = [m.setting for m in matches]
        row = _sar_codec_row(codec, settings, images, examples, device)
        errors = [abs(b / t - 1.0) for b, t in zip(row.extra.pop("per_bpp"), targets, strict=True)]
        row.name = f"{codec.name} at {mrow.name}'s rate"
        row.extra.update(
            {
                "codec": codec.name,
                "codec_setting": settings,
                "matched_to": [mrow.name],
                "target_bpp": float(np.mean(targets)),
                "rate_error_max": float(max(errors)),
                "rate_tolerance": codecs.RATE_TOLERANCE,
                "rate_unmet": [f"image {i + 1}: {m.unmet}" for i, m in enumerate(matches) if m.unmet],
            }
        )
        seen[key] = row
        out.append(row)
    return out


def _finite_mean(values: np.ndarray) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _sar_codec_row(
    codec: Any,
    settings: Sequence[float],
    images: list[np.ndarray],
    examples: list[SARExample],
    device: torch.device,
) -> Row:
    """A codec at one setting per image, on the 8-bit image; bpp from its file bytes, header included."""
    parts, bpps, total_ms = [], [], 0.0
    for img, setting, ex in zip(images, settings, examples, strict=True):
        start = time.perf_counter()
        out, size = codec.roundtrip(img, setting)
        total_ms += (time.perf_counter() - start) * 1000.0
        bpps.append(8.0 * size / img.size)
        shown = torch.zeros_like(ex.x)
        shown[..., : ex.h, : ex.w] = torch.from_numpy(out.astype(np.float32) / 255.0)
        parts.append(_sar_scores(ex, shown, device))
    label = codec.label(settings[0]) if len(set(settings)) == 1 else codec.name
    row = Row(label, "codec", float(np.mean(bpps)), None, _stack(parts), total_ms / len(images))
    row.extra = {"per_bpp": bpps}
    return row


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


def _window_units(dataset: Dataset, n: int) -> tuple[np.ndarray, str]:
    """The recording each window comes from (each window its own for built-in clips), and the unit's name."""
    base, index = dataset, list(range(n))
    while isinstance(base, Subset):
        index = [int(base.indices[i]) for i in index]
        base = base.dataset
    of = getattr(base, "window_file", None)
    if of is None:
        return np.arange(n), "recording"
    return np.array([int(of(i)) for i in index]), "recording"


@torch.no_grad()
def _compare_audio(
    dataset: Dataset,
    models: list[ModelSource],
    baselines: bool,
    device: torch.device,
    batch_size: int,  # noqa: ARG001 - one window at a time, through its bitstream
    progress: Progress,
    spec: DataSpec,  # noqa: ARG001
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
    units, unit_name = _window_units(dataset, n)
    in_spectra = np.stack([sanity.spectrum_db(w) for w in waves])
    rows: list[Row] = []
    feature_sets: dict[str, Any] = {}
    steps = len(models) + (1 + len(codecs.OPUS_SWEEP) if baselines else 0)

    for k, src in enumerate(models):
        progress(k / steps, f"{src.name} on {n} windows")
        features = features_of(src)
        feature_sets.setdefault(features.kind, features)
        row = _audio_model_row(src, features, waves, device, _sub_progress(progress, k, steps))
        scored = np.isfinite(row.values["lsd"])
        spectra = (in_spectra, np.stack(row.extra.pop("spectra")))
        row.flags = (
            sanity.audio_flags(
                row.values["spectral_convergence"], row.values["lsd"], flat, units=units, spectra=spectra
            )
            if scored.any()
            else []
        )
        rows.append(row)

    extra: dict[str, Any] = {
        "units": units,
        "ci_unit": unit_name,
        "eval_size": f"every {features_of(first).config.clip_seconds:g} s window of every recording",
        "trivial_baseline": {
            "name": "silence (spectral convergence) and the best flat spectrum (log-spectral distance)",
            "metrics": {
                "lsd": _finite_mean(flat),
                "spectral_convergence": sanity.SILENCE_SPECTRAL_CONVERGENCE,
            },
            "values": {"lsd": flat},
        },
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
    src: ModelSource, features: Any, waves: list[np.ndarray], device: torch.device, progress: Progress
) -> Row:
    """A model's row: each window's features encoded to the latent mean, through the real bitstream, decoded
    by the model and inverted to audio; the main point's output spectra under extra["spectra"]."""
    coded, spectra = Coded(), []
    with _on_device(src.model, device) as model:
        model = prepare_for_inference(model, device)  # the variant's precision (training.fastpath)
        warm = torch.from_numpy(features.encode(waves[0]))[None].to(device)
        _model_call(src.name, partial(model.reconstruct, warm))  # warm-up: first calls are slow
        for i, wav in enumerate(waves):
            progress(i / len(waves), f"{src.name}: window {i + 1} of {len(waves)}")
            x = torch.from_numpy(features.encode(wav))[None].to(device)
            est = _coded_sweep(
                lambda x=x: _model_call(src.name, partial(model.encode, x))[0],
                lambda z: features.decode(model.decode(z).float()[0].cpu().numpy()),
                lambda est, wav=wav: dict(
                    zip(("lsd", "spectral_convergence"), _audio_scores(wav, est), strict=True)
                ),
                coded,
                len(wav),
                device,
            )
            spectra.append(sanity.spectrum_db(est[: len(wav)]))
    row = coded.row(src, len(waves))
    row.extra["spectra"] = spectra
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


def _fragment_units(dataset: Dataset, n: int) -> np.ndarray:
    """The file each fragment comes from (each fragment its own when the data set does not say)."""
    files = []
    for i in range(n):
        base, j = _fragment_base(dataset, i)
        info = getattr(base, "fragment_info", None)
        files.append(str(info(j)[0]) if info else str(i))
    return np.unique(np.array(files), return_inverse=True)[1]


@torch.no_grad()
def _compare_fragments(
    dataset: Dataset,
    models: list[ModelSource],
    baselines: bool,
    device: torch.device,
    batch_size: int,  # noqa: ARG001 - one fragment at a time, through its bitstream
    progress: Progress,
    spec: DataSpec,  # noqa: ARG001
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
    units = _fragment_units(dataset, n)
    # The trivial baseline every repair must beat: the corrupted bytes left as they are.
    identity = _fragment_values(clean_b, corrupt_b, corrupt_b, changed_all)
    in_hist = sanity.byte_histograms(clean_b)
    rows: list[Row] = []
    for k, src in enumerate(models):
        row, repaired = _fragment_model_row(
            src, x_all, (clean_b, corrupt_b, changed_all), device, _sub_progress(progress, k, len(models) + 1)
        )
        row.flags = sanity.fragments_flags(
            row.values["accuracy"],
            identity["accuracy"],
            units=units,
            histograms=(in_hist, sanity.byte_histograms(repaired)),
        )
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
        "values": {"accuracy": identity["accuracy"]},
    }
    return (
        rows,
        n,
        {
            "types": np.array(types),
            "noise": noise,
            "trivial_baseline": trivial,
            "units": units,
            "ci_unit": "file",
            "eval_size": f"{x_all.shape[-1]}-byte fragments",
        },
    )


def _fragment_model_row(
    src: ModelSource,
    x_all: torch.Tensor,
    truth: tuple[np.ndarray, ...],
    device: torch.device,
    progress: Progress,
) -> tuple[Row, np.ndarray]:
    """A repair model through the real bitstream of its latent; the decoder also reads the corrupted input
    where the model has a byte skip (fragment-dae-bytes): the receiver holds it, so it costs no rate."""
    clean_b, corrupt_b, changed = truth
    coded, repaired = Coded(), []
    with _on_device(src.model, device) as model:
        model = prepare_for_inference(model, device)  # the variant's precision (training.fastpath)
        _model_call(src.name, partial(model.predict_bytes, x_all[:1].to(device)))  # warm-up
        for i in range(x_all.shape[0]):
            if i % 64 == 0:
                progress(i / x_all.shape[0], f"{src.name}: fragment {i + 1} of {x_all.shape[0]}")
            x = x_all[i : i + 1].to(device)
            out = _coded_sweep(
                partial(_model_call, src.name, partial(model.encode, x)),
                lambda z, x=x: _fragment_bytes(model, z, x),
                lambda b, i=i: {
                    m: float(v[0])
                    for m, v in _fragment_values(
                        clean_b[i : i + 1], corrupt_b[i : i + 1], b[None], changed[i : i + 1]
                    ).items()
                },
                coded,
                x.shape[-1],
                device,
            )
            repaired.append(out)
    return coded.row(src, x_all.shape[0]), np.stack(repaired)


def _fragment_bytes(model: nn.Module, z: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """The repaired bytes (L,) uint8 a model's decoder gives for latent `z` (and input `x`, for a skip)."""
    import inspect

    if hasattr(model, "repair_from_latent"):  # both fragment models: their decision rule on the input
        out = model.repair_from_latent(z, x)[0]
    elif "x" in inspect.signature(model.decode).parameters:
        out = model.decode(z, x).argmax(dim=1)[0]  # per-byte logits
    else:
        out = torch.round(model.decode(z).float()[0, 0] * 255)
    return out.clamp(0, 255).cpu().numpy().astype(np.uint8)


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
    if folder is not None and next(folder_files(folder), None) is None:
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
    unit_scores: bool = False,
) -> dict[str, Any]:
    """The leaderboard as a JSON-ready dict (see the module docstring and README "Compare").

    `sources` are run ids (in `runs_dir`) or checkpoint folders; `models` may pass them already loaded
    (the studio's cache). With `unit_scores`, each model's mean per unit (image, recording, file) is kept
    too, for the study leaderboard's seeds × units statistics. Bad input raises ValueError /
    FileNotFoundError with a message for the user.
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
    with warnings.catch_warnings(record=True) as caught, _eval_threads(dev):
        warnings.simplefilter("always")
        try:
            # Every model sees the data as the first one's preprocessing and config make it.
            first = models[0]
            dataset = task_for(first.variant).dataset_for_eval(
                _whole_image_spec(spec), dict(first.model.preprocessing), first.config
            )
            runner = _DOMAIN_RUNNERS[domain]
            rows, n, extra = runner(dataset, models, baselines, dev, int(batch_size), progress, spec)
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
    units = np.asarray(extra.pop("units"))
    trivial = extra.get("trivial_baseline", {}).pop("values", None)
    result: dict[str, Any] = {
        "domain": domain,
        "data": str(spec),
        "n": int(n),
        "seed": int(seed),
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "ci_unit": extra.pop("ci_unit"),
        "n_units": int(np.unique(units).size),
        "eval_size": extra.pop("eval_size"),
        "bpp_unit": BPP_UNITS[domain],
        "metrics": [{"name": m, "direction": metric_direction(m), "arrow": metric_arrow(m)} for m in metrics],
        "rows": [_summarise(r, seed, metrics, groups, units) for r in rows],
        "pairs": _pairs(rows, metrics, units, seed, trivial),
    }
    if unit_scores:
        result["unit_ids"] = [str(u) for u in np.unique(units)]
        result["unit_scores"] = {r.name: _unit_means(r, metrics, units) for r in rows if r.kind != "codec"}
    _bjontegaard(result, extra.get("rd_sweep") or [])
    if groups is not None:
        result["types"] = {t: int(mask.sum()) for t, mask in groups.items()}
    result.update(extra)
    if skipped_files:
        result["skipped_files"] = skipped_files
    progress(1.0, "done")
    return _json_safe(result)


#: Environment variable that fixes compare's CPU threads (the golden leaderboard sets 1).
THREADS_ENV = "AE_STUDIO_COMPARE_THREADS"


def eval_threads() -> int:
    """Intra-op CPU threads for `compare`: ``$AE_STUDIO_COMPARE_THREADS`` if set, else the cores that other
    processes leave idle (cores minus the 1-minute load average, rounded), at least 1 and at most torch's
    setting.

    Why: compare runs batch-1 inference and per-image metrics, whose every op torch splits across its
    threads; when another process holds a core, each op then waits at a barrier for a descheduled thread.
    On the shared 2-core development machine at load 6, a 256² SAR reference's encode + decode took 4-10x,
    and one image's metrics 10-25x (115-350 ms against 12-15 ms), longer with 2 threads than with 1.
    """
    import os

    fixed = os.environ.get(THREADS_ENV, "").strip()
    if fixed:
        try:
            return max(1, int(fixed))
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a whole number of threads, got {fixed!r}") from None
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this platform: torch's own setting
        return torch.get_num_threads()
    idle = int((os.cpu_count() or 1) - load + 0.5)
    return max(1, min(torch.get_num_threads(), idle))


@contextlib.contextmanager
def _eval_threads(device: torch.device) -> Iterator[None]:
    """torch's CPU threads set to :func:`eval_threads` for the run, then restored (CUDA runs are left be)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(eval_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unit_means(row: Row, metrics: Sequence[str], units: np.ndarray) -> dict[str, list[float]]:
    """Each metric's mean over the examples of each unit, units in ``np.unique`` order (NaN where a unit
    has no finite value)."""
    ids = np.unique(units)
    out = {}
    for m in metrics:
        if m not in row.values:
            continue
        values = np.asarray(row.values[m], dtype=np.float64)
        means = []
        for u in ids:
            picked = values[units == u]
            picked = picked[np.isfinite(picked)]
            means.append(float(picked.mean()) if picked.size else math.nan)
        out[m] = means
    return out


def _whole_image_spec(spec: DataSpec) -> DataSpec:
    """A SAR folder without ``size=`` is read with the smallest tile size, so that no image smaller than the
    checkpoint's training patches is skipped: the whole images are then scored (``_sar_examples``)."""
    if spec.domain != "sar" or spec.source != "folder" or "size" in spec.options:
        return spec
    return DataSpec(spec.domain, spec.source, {**spec.options, "size": 32})


def _pairs(
    rows: list[Row], metrics: Sequence[str], units: np.ndarray, seed: int, trivial: dict | None
) -> list[dict[str, Any]]:
    """Paired differences a - b on the same examples of every pair of models (and of each model against the
    trivial baseline), per metric: the difference, its 95 % interval over units and a Wilcoxon p."""
    from trainers.metrics.stats import paired

    models = [r for r in rows if r.kind != "codec"]
    sides = [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    out = []
    for a, b in sides:
        for m in metrics:
            if m in a.values and m in b.values:
                res = paired(a.values[m], b.values[m], units, _stable_key(seed, "pair", a.name, b.name, m))
                out.append({"a": a.name, "b": b.name, "metric": m, **res})
    for a in models if trivial else []:
        for m, base in trivial.items():
            if m in a.values:
                res = paired(a.values[m], base, units, _stable_key(seed, "trivial", a.name, m))
                out.append({"a": a.name, "b": "trivial baseline", "metric": m, **res})
    return out


def _bjontegaard(result: dict[str, Any], sweep: list[dict[str, Any]]) -> None:
    """BD-rate and BD-PSNR of every model row against the JPEG 2000 sweep (SAR), in place; None with the
    reason under "missing" when a curve is short or the curves do not overlap."""
    from trainers.metrics.stats import bd_psnr, bd_rate

    if result["domain"] != "sar":
        return
    ref = sorted(
        (p for p in sweep if p["codec"] == "JPEG 2000" and p["mean"] is not None), key=lambda p: p["bpp"]
    )
    for row in result["rows"]:
        if row.get("rate") != "measured":
            continue
        if not ref:
            row["bd_rate"] = row["bd_psnr"] = None
            row.setdefault("missing", {})["bd_rate"] = "no JPEG 2000 curve (run with --baselines)"
            continue
        rd = [p for p in row["rd"] if p["metrics"].get("psnr") is not None]
        args = ([p["bpp"] for p in ref], [p["mean"] for p in ref], [p["bpp"] for p in rd])
        psnrs = [p["metrics"]["psnr"] for p in rd]
        row["bd_rate"], why_rate = bd_rate(*args, psnrs)
        row["bd_psnr"], why_psnr = bd_psnr(*args, psnrs)
        for key, why in (("bd_rate", why_rate), ("bd_psnr", why_psnr)):
            if why:
                row.setdefault("missing", {})[key] = f"against JPEG 2000: {why}"


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
        f"**{result['domain']}** on `{_md(result['data'])}`: {result['n']} examples, evaluated as "
        f"{result.get('eval_size', 'given')}; mean [95% bootstrap CI over {result.get('n_units', '?')} "
        f"{result.get('ci_unit', 'example')}s], seed {result['seed']}",
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
                f"{row['name']}: setting per image with the file size closest to the bytes of "
                f"{', '.join(row['matched_to'])} on that image (mean {row['target_bpp']:.3g} bpp)."
            )
    for row in result["rows"]:
        if row.get("bd_rate") is not None or row.get("bd_psnr") is not None:
            notes.append(
                f"{row['name']} against JPEG 2000: BD-rate {_fmt(row.get('bd_rate'), '+.1f')} %, "
                f"BD-PSNR {_fmt(row.get('bd_psnr'), '+.2f')} dB"
            )
    notes += [f"{n}." for n in result.get("notes", [])]
    for s in result.get("skipped", []):
        notes.append(f"{s['name']} skipped: {s['reason']}.")
    for s in result.get("skipped_files", []):
        notes.append(f"file skipped: {s['file']}: {s['reason']}.")
    lines += ["", *(f"- {_md(n)}" for n in notes)]
    lines += _rate_table(result)
    lines += _pairs_table(result)
    return "\n".join(lines).rstrip() + "\n"


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else f"{v:{spec}}"


def _rate_table(result: dict[str, Any]) -> list[str]:
    """Each rate-matched codec row: its mean target and achieved bpp and the largest per-image deviation, or
    where the codec cannot make a file within the tolerance, on how many images and why (instead of a figure
    that would read as a match)."""
    rows = [r for r in result["rows"] if r.get("target_bpp") is not None]
    if not rows:
        return []
    lines = [
        "",
        "Codecs matched per image to each model's bytes (header included, whole image):",
        "",
        "| codec row | target bpp | achieved bpp | largest per-image deviation |",
        "|---|---:|---:|---|",
    ]
    for row in rows:
        unmet = row.get("rate_unmet") or []
        tol = row.get("rate_tolerance", 0.02)
        if unmet:
            n = len(row.get("codec_setting") or []) or "?"
            gap = f"no file within ±{tol:.0%} on {len(unmet)} of {n} images: {unmet[0]}"
            gap += f" (and {len(unmet) - 1} more)" if len(unmet) > 1 else ""
        else:
            gap = f"{row['rate_error_max']:.2%} (within ±{tol:.0%} on every image)"
        cells = [row["name"], f"{row['target_bpp']:.4g}", _fmt(row.get("bpp"), ".4g"), gap]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return lines


def _pairs_table(result: dict[str, Any]) -> list[str]:
    """Paired differences of the main metric: a - b, its 95 % interval over units and the Wilcoxon p."""
    metric = result["metrics"][0]["name"]
    pairs = [p for p in result.get("pairs", []) if p["metric"] == metric]
    if not pairs:
        return []
    unit = result.get("ci_unit", "example")
    lines = [
        "",
        f"Paired differences of {metric} on the same {unit}s (a − b, 95% CI over {unit}s, Wilcoxon p):",
        "",
        "| a | b | diff | 95% CI | p |",
        "|---|---|---:|---:|---:|",
    ]
    for p in pairs:
        ci = p.get("ci95")
        ci_text = "n/a" if not ci else f"[{format_metric(metric, ci[0])}, {format_metric(metric, ci[1])}]"
        lines.append(
            f"| {_md(p['a'])} | {_md(p['b'])} | {format_metric(metric, p['diff'])} | {ci_text} | "
            f"{_fmt(p.get('p'), '.3g')} |"
        )
    return lines


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
    for k, row in enumerate(r for r in result["rows"] if r.get("rd")):
        pts = [q for q in row["rd"] if q["metrics"].get(metric) is not None]
        fig.add_trace(
            go.Scatter(
                x=[q["bpp"] for q in pts],
                y=[q["metrics"][metric] for q in pts],
                mode="lines+markers",
                name=f"{row['name']} ({_sweep_words(pts)})",
                marker={"size": 5},
                line={"color": MODEL_COLOURS[k % len(MODEL_COLOURS)]},
            )
        )
    for p in points:
        if p["bpp"] is None:
            fig.add_hline(
                y=p["mean"], line_dash="dash", annotation_text=p["name"], annotation_position="bottom right"
            )
    arrow = metric_arrow(metric)
    fig.update_layout(
        title=f"{result['domain']}: {metric} ({arrow}) against rate, {result['n']} examples "
        f"({result.get('eval_size', '')})",
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


def _sweep_words(points: list[dict[str, Any]]) -> str:
    """What a model's R-D points sweep: bits per latent value, or a learned density's quantisation step."""
    if points and "quant_step" in points[0]:
        return "quantisation step " + ", ".join(f"{q['quant_step']:g}" for q in points)
    return "bits per value " + ", ".join(str(q.get("bits_per_value")) for q in points)


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
        for k, row in enumerate(r for r in result["rows"] if r.get("rd")):
            pts = [q for q in row["rd"] if q["metrics"].get(metric) is not None]
            ax.plot(
                [q["bpp"] for q in pts],
                [q["metrics"][metric] for q in pts],
                "-",
                marker=".",
                label=f"{row['name']} ({'quantisation steps' if 'quant_step' in row else 'bits per value'})",
                color=MODEL_COLOURS[k % len(MODEL_COLOURS)],
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
        if sweep or any(r.get("rd") for r in result["rows"]):
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
