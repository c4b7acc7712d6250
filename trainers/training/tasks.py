"""One task object per domain: how to build its data, its loss, and its validation metrics.

The training loop is domain-agnostic; everything that differs between SAR, audio and fragments lives here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from models import VARIANTS
from models.audio import active_units, kl_per_dimension, vae_loss
from trainers.data.spec import DataSpec, default_data_spec
from trainers.metrics import audio as audio_metrics
from trainers.metrics import fragments as fragment_metrics
from trainers.metrics import sar as sar_metrics

# How many validation clips get decoded to audio for the spectral metrics: decoding (iSTFT, Griffin-Lim for
# the 1-channel variant) is far slower than a forward pass, and a few clips give a stable figure.
AUDIO_DECODED_CLIPS = 4


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    preprocessing: dict[str, Any]


def _prefilled(bundle: DataBundle) -> DataBundle:
    """The bundle with its cached items made up front (see trainers.data.prefill)."""
    from trainers.data.prefill import prefill

    prefill(bundle.train)
    prefill(bundle.val)
    return bundle


def _cap(dataset: Dataset, options: dict[str, Any]) -> Dataset:
    """`n=` on a folder source: use at most that many samples (the first ones, deterministically)."""
    n = options.get("n")
    return Subset(dataset, list(range(min(int(n), len(dataset))))) if n else dataset


def _val_count(options: dict[str, Any], n: int, default_fraction: float = 0.2) -> int:
    val = options.get("val", default_fraction)
    return max(1, int(round(n * val)) if isinstance(val, float) and val < 1 else int(val))


class Task:
    """Base class: subclasses define the data, the loss and the metrics of one domain."""

    domain = ""
    # Validation metric that selects the `best` checkpoint; which way is better comes from the metric
    # registry (trainers.training.loop.improved).
    monitor = "loss"

    def __init__(
        self, variant: str, kl_weight: float = 0.01, kl_warmup: int = 0, free_bits: float = 0.0
    ) -> None:
        self.variant = variant
        self.kl_weight = kl_weight
        self.kl_warmup = int(kl_warmup)
        self.free_bits = float(free_bits)
        # The optimisation step the next loss is for (the loop sets it before each step; the KL warm-up
        # reads it). A resumed run sets it from the saved step count, so the warm-up does not restart.
        self.step = 0
        # Parts of the last training loss worth a curve of their own (detached), logged beside train/loss.
        self.last_parts: dict[str, torch.Tensor] = {}

    def kl_beta(self, step: int | None = None) -> float:
        """The KL weight at ``step`` (default the current one): linear warm-up from 0 to ``kl_weight`` over
        ``kl_warmup`` steps (Bowman et al. 2016), then ``kl_weight``."""
        step = self.step if step is None else step
        if self.kl_warmup <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, step / self.kl_warmup)

    def build_data(self, spec: DataSpec | None, model_config: dict[str, Any], seed: int) -> DataBundle:
        raise NotImplementedError

    def batch_to(self, batch: Any, device: torch.device) -> Any:
        if isinstance(batch, (list, tuple)):
            return [b.to(device, non_blocking=True) for b in batch]
        return batch.to(device, non_blocking=True)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Any], device: torch.device) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, model: nn.Module, batches: Iterable[Any], device: torch.device) -> dict[str, float]:
        """The training loop's validation: ``evaluate``, where a task may also tune what only validation
        data may tune (the fragment models' decision rule)."""
        return self.evaluate(model, batches, device)

    def dataset_for_eval(self, spec: DataSpec, preprocessing: dict[str, Any], model_config: dict[str, Any]):
        """The whole data set of `spec` preprocessed exactly as at training time (for `trainers eval`)."""
        raise NotImplementedError


def _mean_dict(acc: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    return {k: acc[k] / counts[k] if counts[k] else math.nan for k in acc}


class _Averager:
    """Sample-weighted running means of per-batch metric dicts (NaN entries are left out)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float], n: int) -> None:
        for k, v in values.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                self.sums.setdefault(k, 0.0)
                self.counts.setdefault(k, 0)
                continue
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n
            self.counts[k] = self.counts.get(k, 0) + n

    def result(self) -> dict[str, float]:
        return _mean_dict(self.sums, self.counts)


# ----------------------------------------------------------------------------------------------------- SAR
def sar_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, valid, db_range) of a SAR batch; a bare image tensor (older callers): all valid, no range."""
    if isinstance(batch, torch.Tensor):
        return batch, torch.ones_like(batch), None
    x, valid, db_range = batch
    return x, valid, db_range


def masked_sar_loss(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    valid: torch.Tensor,
    mse_weight: float = 0.7,
    ssim_weight: float = 0.3,
) -> torch.Tensor:
    """0.7 * MSE over the valid pixels + 0.3 * (1 - SSIM) (the SAR loss's default weights).

    SSIM needs whole windows, so no-data pixels of the reconstruction are replaced by the input there:
    they then add no dissimilarity, and the model is never pushed to reproduce no-data borders.
    """
    v = valid.to(x.dtype)
    mse = ((x_hat - x).pow(2) * v).sum() / v.sum().clamp_min(1.0)
    filled = torch.where(v > 0, x_hat, x)
    return mse_weight * mse + ssim_weight * (1.0 - sar_metrics.ssim_tensor(filled, x, data_range=1.0))


def split_by_image(dataset: Dataset, val: float | int, seed: int) -> tuple[Subset, Subset]:
    """Train/validation split of a SAR folder's patches that keeps each image's patches on one side
    (neighbouring patches of one scene share its statistics and its normalisation, so a split by patch
    validates on what training saw). Whole images, in a seeded order, go to validation until it holds the
    requested share (a fraction < 1 or a count) of patches; at least one image stays for training."""
    ds = _unwrap(dataset)
    indices = list(dataset.indices) if isinstance(dataset, Subset) else list(range(len(dataset)))
    by_image: dict[int, list[int]] = {}
    for pos, i in enumerate(indices):
        by_image.setdefault(ds.patch_image(i), []).append(pos)
    if len(by_image) < 2:
        raise ValueError(
            f"the SAR folder {getattr(ds, 'folder', '')} holds one usable image, so it cannot be split into "
            "training and validation by image: add at least one more image"
        )
    n = len(indices)
    n_val = int(round(n * val)) if isinstance(val, float) and val < 1 else int(val)
    n_val = min(max(n_val, 1), n - 1)
    images = list(by_image)
    order = [images[k] for k in np.random.default_rng(seed).permutation(len(images))]
    val_pos: list[int] = []
    for image in order[:-1]:
        if len(val_pos) >= n_val:
            break
        val_pos += by_image[image]
    held = set(val_pos)
    train_pos = [p for p in range(n) if p not in held]
    return Subset(dataset, train_pos), Subset(dataset, sorted(val_pos))


def sar_output_spread(x: torch.Tensor, x_hat: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over the images of the output's spread (standard deviation over the valid pixels) divided by the
    input's: near 0 for a near-constant image (a collapsed model), about 1 for a faithful one."""
    from trainers.metrics.sanity import sar_spread

    spread = sar_spread(x, x_hat, valid)
    out, inp = spread["output_std"], spread["input_std"]
    ok = np.isfinite(out) & np.isfinite(inp) & (inp > 0)
    return float((out[ok] / inp[ok]).mean()) if ok.any() else math.nan


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model itself under a DDP (``module``) or torch.compile (``_orig_mod``) wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class SARTask(Task):
    domain = "sar"

    def _datasets(
        self, spec: DataSpec, image_size: int, offset: int = 0, n: int | None = None, pool: str = "train"
    ):
        """The synthetic set (``n`` scenes, default the spec's, data seed + ``offset``, natural source images
        from ``pool``: "train" for training and validation, "test" for the built-in test set) or the
        folder set."""
        from trainers.data import sar

        opts = spec.options
        size = int(opts.get("size", image_size))
        if size % 16:
            raise ValueError(f"SAR image size must be a multiple of 16, got {size}")
        if spec.source == "synthetic":
            looks = float(opts["looks"]) if "looks" in opts else None  # None: L drawn from 1 ... 4
            n = int(opts.get("n", 256)) if n is None else n
            seed = int(opts.get("seed", 0)) + offset
            scene = str(opts.get("scene", "mixed"))
            return sar.SyntheticSARDataset(n, image_size=size, looks=looks, seed=seed, scene=scene, pool=pool)
        band = opts.get("band")
        return sar.SARFolderDataset(
            opts["folder"],
            image_size=size,
            input_kind=opts.get("kind", "auto"),
            band=None if band is None else int(band),
        )

    def build_data(self, spec, model_config, seed):
        spec = spec or default_data_spec("sar")
        image_size = int(model_config.get("image_size", 256))
        opts = spec.options
        if spec.source == "synthetic":
            train = self._datasets(spec, image_size)
            val = self._datasets(spec, image_size, offset=1_000_003, n=_val_count(opts, len(train)))
            prep = train.preprocessing()
        else:
            ds = self._datasets(spec, image_size)
            train, val = split_by_image(_cap(ds, opts), opts.get("val", 0.2), int(opts.get("seed", 0)))
            prep = ds.preprocessing()
        return _prefilled(DataBundle(train, val, prep))

    def dataset_for_eval(self, spec, preprocessing, model_config):
        """The eval data, normalised per image as every SAR input now is; a checkpoint trained with another
        normalisation (the global log-intensity scale, or the older affine per-image dB map) gets a warning
        saying so (its figures are not on its training scale)."""
        from trainers.data import sar

        note = sar.legacy_preprocessing_note(preprocessing)
        if note:
            warnings.warn(note, stacklevel=2)
        image_size = int(model_config.get("image_size", 256))
        n = int(spec.options.get("n", 64))
        return self._datasets(spec, image_size, offset=2_000_003, n=n, pool="test")

    def loss(self, model, batch):
        """The SAR loss; for a model with a learned entropy model (``entropy_model=factorized``), the
        rate-distortion loss D + rd_lambda * R, R the latent's bits per pixel under its density (with the
        noise relaxation), kept with D in ``last_parts`` for the train/rate_bpp and train/distortion rows."""
        x, valid, _ = sar_batch(batch)
        x_hat, _ = model(x)
        distortion = masked_sar_loss(x_hat.float(), x, valid)
        inner = _unwrapped(model)
        if getattr(inner, "entropy", None) is None:
            return distortion
        rate = inner.last_rate_bits / float(x.shape[0] * x.shape[-2] * x.shape[-1])
        self.last_parts = {"rate_bpp": rate.detach(), "distortion": distortion.detach()}
        return distortion + inner.rd_lambda * rate

    @torch.no_grad()
    def evaluate(self, model, batches, device):
        avg = _Averager()
        for batch in batches:
            x, valid, db_range = sar_batch(self.batch_to(batch, device))
            x_hat, z = model(x)
            x_hat = x_hat.float()
            values = sar_metrics.sar_metrics(x, x_hat, z, valid, db_range)
            values["loss"] = float(masked_sar_loss(x_hat, x, valid))
            inner = _unwrapped(model)
            if getattr(inner, "entropy", None) is not None:  # the rounded latent's bits under its density
                values["rate_bpp"] = float(inner.last_rate_bits) / float(x[:, 0].numel())
            values["output_spread"] = sar_output_spread(x, x_hat, valid)
            avg.add(values, x.shape[0])
        return avg.result()


# --------------------------------------------------------------------------------------------------- audio
class AudioTask(Task):
    domain = "audio"

    def __init__(
        self, variant: str, kl_weight: float = 0.01, kl_warmup: int = 0, free_bits: float = 0.0
    ) -> None:
        super().__init__(variant, kl_weight, kl_warmup, free_bits)
        self._ceiling: dict[tuple[int, tuple[int, ...]], dict[str, np.ndarray]] = {}

    def feature_kind(self) -> str:
        return "log-mel" if self.variant == "audio-vae-mel" else "mel-if"

    def _features(self, preprocessing: dict[str, Any] | None = None):
        from trainers.data import audio

        if preprocessing:
            config = audio.AudioFeatureConfig.from_dict(preprocessing.get("config", preprocessing))
        else:
            config = audio.AudioFeatureConfig()
        return audio.make_features(self.feature_kind(), config)

    def _dataset(self, spec: DataSpec, features, seed_offset: int = 0, n_default: int = 256):
        from trainers.data import audio

        opts = spec.options
        if spec.source == "synthetic":
            return audio.SyntheticAudioDataset(
                int(opts.get("n", n_default)), features=features, seed=int(opts.get("seed", 0)) + seed_offset
            )
        # Every window of every file; `n=` stops reading files once that many windows are kept.
        return audio.AudioFolderDataset(
            opts["folder"], features=features, hop_s=float(opts.get("hop", 0.5)), max_windows=opts.get("n")
        )

    def build_data(self, spec, model_config, seed, device: torch.device | str | None = None):
        """Train/validation sets with every feature made up front by the batched torch path on ``device``
        (default: the current CUDA device when there is one, else the CPU). A folder is split by file, so
        overlapping windows of one recording never land on both sides."""
        spec = spec or default_data_spec("audio")
        features = self._features()
        if spec.source == "synthetic":
            from trainers.data import audio

            opts = spec.options
            n = int(opts.get("n", 256))
            train = self._dataset(spec, features)
            val = audio.SyntheticAudioDataset(
                _val_count(opts, n), features=features, seed=int(opts.get("seed", 0)) + 1_000_003
            )
        else:
            train, val = _split_by_file(self._dataset(spec, features), spec.options.get("val", 0.2), seed)
        device = device if device is not None else _feature_device()
        for part in (train, val):
            _unwrap(part).fill(device)
        # Training-time validation decodes a fixed few clips (decoding is far slower than a forward pass);
        # eval and compare score every window (see audio_metrics).
        val.metric_clips = AUDIO_DECODED_CLIPS
        return _prefilled(DataBundle(train, val, features.preprocessing()))

    def dataset_for_eval(self, spec, preprocessing, model_config):
        dataset = self._dataset(spec, self._features(preprocessing), seed_offset=2_000_003, n_default=32)
        dataset.fill(_feature_device())
        return dataset

    @property
    def weighting(self) -> str:
        """The reconstruction term (models.audio.spectrogram_mse): the 2-channel VAE weights the IF error by
        the target magnitude, since with the plain MSE the IF of silent bins (random, inaudible) dominated
        the loss and the magnitude channel learnt almost nothing."""
        return "plain" if self.variant == "audio-vae-mel" else "magnitude"

    def loss(self, model, batch):
        recon, mu, logvar = model(batch)
        total, _, _ = vae_loss(
            recon.float(), batch, mu.float(), logvar.float(), self.kl_beta(), self.free_bits, self.weighting
        )
        return total

    @torch.no_grad()
    def evaluate(self, model, batches, device, dataset: Dataset | None = None, max_clips: int | None = None):
        """Loss terms over ``batches`` (the loss at the full KL weight, so epochs compare), the latent's use
        (:func:`latent_usage`); with ``dataset``, also the spectral metrics of decoded audio (see
        :meth:`audio_metrics` for ``max_clips``)."""
        avg = _Averager()
        mus, logvars, spreads = [], [], []
        for batch in batches:
            x = self.batch_to(batch, device)
            recon, mu, logvar = model(x)
            total, _, kl = vae_loss(
                recon.float(), x, mu.float(), logvar.float(), self.kl_weight, self.free_bits, self.weighting
            )
            mse = float(F.mse_loss(recon.float(), x))  # the plain MSE, comparable across recipes
            avg.add({"loss": float(total), "mse": mse, "kl": float(kl)}, x.shape[0])
            mus.append(mu.float().cpu())
            logvars.append(logvar.float().cpu())
            # The magnitude channel only: the spectrum is what the collapse check and the target
            # ask about, and the IF of silent bins is noise that the magnitude-weighted loss ignores.
            spreads.append((model.decode(mu)[:, :1].float().cpu(), x[:, :1].float().cpu()))
        result = avg.result()
        if mus:
            result.update(latent_usage(torch.cat(mus), torch.cat(logvars)))
            outs, ins = (torch.cat(t) for t in zip(*spreads, strict=True))
            result["output_spread"] = feature_spread_ratio(outs, ins)
        if dataset is not None:
            result.update(self.audio_metrics(model, dataset, device, max_clips))
        return result

    @torch.no_grad()
    def audio_metrics(
        self, model: nn.Module, dataset: Dataset, device: torch.device, max_clips: int | None = None
    ) -> dict[str, float]:
        """Spectral convergence and log-spectral distance of decoded audio, model and feature round trip:
        the means over clips of :meth:`audio_metrics_per_clip` (clips without a value are left out).

        ``max_clips=None`` scores every clip (window) of ``dataset`` unless the dataset carries a
        ``metric_clips`` limit (build_data sets one on the training-time validation set); eval and compare
        therefore average over every window of every file.
        """
        per_clip = self.audio_metrics_per_clip(model, dataset, device, max_clips)
        return {k: _nanmean(v) for k, v in per_clip.items()}

    @torch.no_grad()
    def audio_metrics_per_clip(
        self,
        model: nn.Module,
        dataset: Dataset,
        device: torch.device,
        max_clips: int | None = None,
        batch_size: int = 16,
    ) -> dict[str, np.ndarray]:
        """Per clip i (the first ``max_clips``, see :meth:`audio_metrics`): spectral_convergence, lsd and
        their roundtrip_* ceilings, each a float64 array (n,) with NaN where a clip has no value (a silent
        reference). The model runs in batches of ``batch_size``; each clip is then decoded to audio."""
        waveform = _waveform_getter(dataset)
        if waveform is None:
            return {}
        limit = max_clips if max_clips is not None else getattr(dataset, "metric_clips", None)
        n = len(dataset) if limit is None else min(int(limit), len(dataset))
        features = self._features(getattr(model, "preprocessing", None))
        c = features.config
        keys = ("spectral_convergence", "lsd")
        out = {k: np.full(n, np.nan) for k in keys}
        for k0 in range(0, n, batch_size):
            idx = range(k0, min(n, k0 + batch_size))
            x = torch.stack([dataset[i] for i in idx]).to(device)
            recon = model.reconstruct(x).float().cpu().numpy()
            for j, i in enumerate(idx):
                ref, est = waveform(i), features.decode(recon[j])
                out["spectral_convergence"][i] = audio_metrics.spectral_convergence(
                    ref, est, c.n_fft, c.hop_length
                )
                out["lsd"][i] = audio_metrics.log_spectral_distance(ref, est, c.n_fft, c.hop_length)
        # The feature round trip does not depend on the model: decode it once per data set.
        key = (id(dataset), (n, c.n_fft, c.hop_length, features.channels))
        if key not in self._ceiling:
            ceiling = {f"roundtrip_{k}": np.full(n, np.nan) for k in keys}
            for i in range(n):
                ref, est = waveform(i), features.decode(dataset[i].numpy())
                ceiling["roundtrip_spectral_convergence"][i] = audio_metrics.spectral_convergence(
                    ref, est, c.n_fft, c.hop_length
                )
                ceiling["roundtrip_lsd"][i] = audio_metrics.log_spectral_distance(
                    ref, est, c.n_fft, c.hop_length
                )
            self._ceiling[key] = ceiling
        return {**out, **{k: v.copy() for k, v in self._ceiling[key].items()}}


def latent_usage(mu: torch.Tensor, logvar: torch.Tensor) -> dict[str, float]:
    """How much of a VAE's latent is in use over a validation set (N examples): ``active_units`` (posterior
    mean variance over inputs > 0.01, Burda et al. 2016) and the KL per latent dimension summarised as its
    largest and median value (nats): all near 0 is posterior collapse."""
    if mu.shape[0] < 2:
        return {}
    per_dim = kl_per_dimension(mu, logvar)
    return {
        "active_units": float(active_units(mu)),
        "kl_dim_max": float(per_dim.max()),
        "kl_dim_median": float(per_dim.median()),
    }


def feature_spread_ratio(outputs: torch.Tensor, inputs: torch.Tensor) -> float:
    """How much the outputs vary across examples against the inputs: the mean over feature positions of
    the standard deviation across examples, output over input. A model that returns one output for every
    input scores 0; a faithful one about 1."""
    if outputs.shape[0] < 2:
        return math.nan
    den = float(inputs.double().std(dim=0).mean())
    return float(outputs.double().std(dim=0).mean()) / den if den > 0 else math.nan


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _feature_device() -> torch.device:
    """Where the built-in features are made: the current CUDA device when there is one (under DDP the loop
    has set each rank's), else the CPU."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def _split_by_file(dataset: Dataset, val: float | int, seed: int) -> tuple[Subset, Subset]:
    """Train/validation split of an audio folder's windows that keeps each file's windows together (they
    overlap in time, so a random split would validate on audio seen in training). Whole files, in a seeded
    order, go to validation until it holds the requested share (a fraction < 1 or a count) of windows; at
    least one file stays for training. One file: its last windows validate and training keeps only the
    windows that end before them."""
    ds = _unwrap(dataset)
    n = len(dataset)
    if n < 2:
        raise ValueError(f"need at least 2 windows to split into train and validation, found {n}")
    n_val = int(round(n * val)) if isinstance(val, float) and val < 1 else int(val)
    n_val = min(max(n_val, 1), n - 1)
    indices = list(dataset.indices) if isinstance(dataset, Subset) else list(range(n))
    by_file: dict[int, list[int]] = {}
    for pos, i in enumerate(indices):
        by_file.setdefault(ds.window_file(i), []).append(pos)
    if len(by_file) > 1:
        order = [list(by_file)[k] for k in np.random.default_rng(seed).permutation(len(by_file))]
        val_pos: list[int] = []
        for f in order[:-1]:
            if len(val_pos) >= n_val:
                break
            val_pos += by_file[f]
        held = set(val_pos)
        train_pos = [p for p in range(n) if p not in held]
    else:
        window = ds.features.config.clip_seconds
        val_pos = list(range(n - n_val, n))
        first_val = ds.window_info(indices[val_pos[0]])[1]
        train_pos = [
            p for p in range(n - n_val) if ds.window_info(indices[p])[1] + window <= first_val + 1e-9
        ]
        if not train_pos:
            raise ValueError(
                f"{ds.files[0].name} is too short to split into train and validation windows that do not "
                "overlap: add recordings or use a shorter hop"
            )
    return Subset(dataset, sorted(train_pos)), Subset(dataset, sorted(val_pos))


def _unwrap(dataset: Dataset) -> Dataset:
    return _unwrap(dataset.dataset) if isinstance(dataset, Subset) else dataset


def _waveform_getter(dataset: Dataset):
    """`waveform(i)` of a dataset, looking through a Subset to the dataset beneath it."""
    if isinstance(dataset, Subset):
        inner = _waveform_getter(dataset.dataset)
        return None if inner is None else (lambda i: inner(dataset.indices[i]))
    return getattr(dataset, "waveform", None)


# ----------------------------------------------------------------------------------------------- fragments
# fragment-dae-bytes' cross-entropy weighs each corrupted byte this many times a clean one. Unweighted, 92 %
# of the loss is the copy of clean bytes, learnt within the first epoch, and the repairs (the only part that
# beats the identity) get a twelfth of the gradient. The weighting tilts the model towards changing bytes
# (it acts as a 4x higher prior of corruption); the decision rule tuned on validation
# (trainers.training.fragment_decision) takes that back.
CORRUPTED_WEIGHT = 4.0


def weighted_byte_cross_entropy(
    logits: torch.Tensor, clean: torch.Tensor, changed: torch.Tensor, weight: float = CORRUPTED_WEIGHT
) -> torch.Tensor:
    """Cross-entropy of (B, 256, L) logits against the clean bytes, sum(w_i ce_i) / sum(w_i) with
    w_i = ``weight`` on the bytes the noise changed and 1 elsewhere."""
    ce = F.cross_entropy(logits, torch.round(clean[:, 0] * 255).long(), reduction="none")
    w = 1.0 + (weight - 1.0) * changed.reshape(ce.shape).to(ce.dtype)
    return (ce * w).sum() / w.sum()


def fragment_loss(out: torch.Tensor, clean: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """The loss of a fragment model's output on a batch:

    - (B, 256, L) logits of the byte classifier: cross-entropy against the clean bytes, the corrupted ones
      weighted ``CORRUPTED_WEIGHT`` times (see :func:`weighted_byte_cross_entropy`);
    - (B, 2, L) of the correcting fragment-dae: MSE of the repair (channel 0) against the clean fragment
      plus the binary cross-entropy of the gate (channel 1) against the mask of changed bytes (see
      FragmentAutoencoder). Cross-entropy, not MSE: the gate starts closed (sigmoid(-4) = 0.018), where
      the MSE's gradient on its logit, (g - y) g (1 - g), is 55x smaller than the cross-entropy's g - y;
      with the MSE the reference's gate never opened (0 corrupted bytes fixed after 4 epochs);
    - (B, 1, L) of a whole-fragment fragment-dae: MSE against the clean fragment.
    """
    out = out.float()
    if out.shape[1] == 256:
        return weighted_byte_cross_entropy(out, clean, changed)
    if out.shape[1] == 2:
        mask = changed.to(out.dtype).reshape(out[:, 1:].shape)
        gate = out[:, 1:].clamp(1e-6, 1 - 1e-6)  # finite log at a saturated sigmoid
        return F.mse_loss(out[:, :1], clean) + F.binary_cross_entropy(gate, mask)
    return F.mse_loss(out, clean)


class FragmentTask(Task):
    domain = "fragments"

    def _noise(self, opts: dict[str, Any], seed: int):
        from trainers.data.fragments import NoiseGenerator

        kwargs: dict[str, Any] = {"seed": seed}
        for key, arg in (
            ("ber", "bit_error_rate"),
            ("sub", "substitution_rate"),
            ("erasure", "erasure_rate"),
        ):
            if key in opts:
                kwargs[arg] = float(opts[key])
        if "burst" in opts:
            kwargs["burst_p_enter"] = float(opts["burst"])
        return NoiseGenerator(**kwargs)

    def _dataset(self, spec: DataSpec, split: str, seed: int, noise_dict: dict | None = None):
        from trainers.data.fragments import FragmentDataset, NoiseGenerator, default_corpus_paths

        opts = spec.options
        noise = NoiseGenerator.from_dict(noise_dict) if noise_dict else self._noise(opts, seed)
        if spec.source == "folder":
            folder = Path(opts["folder"])
            if not folder.is_dir():
                raise FileNotFoundError(f"fragment folder not found: {folder}")
            paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            paths = default_corpus_paths()
        if "max_files" in opts:
            paths = paths[: int(opts["max_files"])]
        # The split is by file, so a `val` count means a count of files.
        val = opts.get("val", 0.2)
        val_fraction = float(val) if isinstance(val, float) else min(int(val) / max(len(paths), 1), 0.5)
        dataset = FragmentDataset(paths=paths, noise=noise, split=split, val_fraction=val_fraction, seed=seed)
        return _cap(dataset, opts)

    def build_data(self, spec, model_config, seed):
        spec = spec or default_data_spec("fragments")
        seed = int(spec.options.get("seed", seed))
        train = self._dataset(spec, "train", seed)
        val = self._dataset(spec, "val", seed + 1_000_003)
        return DataBundle(train, val, _unwrap(train).preprocessing())

    def dataset_for_eval(self, spec, preprocessing, model_config):
        noise = preprocessing.get("noise") if preprocessing else None
        explicit_noise = any(k in spec.options for k in ("ber", "sub", "erasure", "burst"))
        seed = int(spec.options.get("seed", 0)) + 2_000_003
        return self._dataset(spec, "all", seed, None if explicit_noise else noise)

    def loss(self, model, batch):
        corrupted, clean, changed = batch
        if getattr(model, "correction", False):
            # The correcting fragment-dae: its replacement value also gets the MSE against the clean bytes
            # where the input was corrupted. Through the repair x + g (v - x) alone its gradient is scaled
            # by the gate, closed at the start, and the value was the exact byte for 0.4 % of them.
            value, gate = model.correction_parts(corrupted)
            out = torch.cat([(corrupted + gate * (value - corrupted)).clamp(0.0, 1.0), gate], dim=1)
            mask = changed.to(value.dtype).reshape(value.shape)
            value_term = ((value - clean).pow(2) * mask).sum() / mask.sum().clamp_min(1.0)
            return fragment_loss(out, clean, changed) + value_term
        return fragment_loss(model(corrupted), clean, changed)

    @torch.no_grad()
    def evaluate(self, model, batches, device):
        avg = _Averager()
        for batch in batches:
            corrupted, clean, changed = self.batch_to(batch, device)
            loss = float(self.loss(model, (corrupted, clean, changed)))
            # On the device: one transfer of the eight figures instead of four batches to numpy.
            repaired = model.predict_bytes(corrupted)
            clean_b = torch.round(clean[:, 0] * 255).long()
            corrupt_b = torch.round(corrupted[:, 0] * 255).long()
            values = fragment_metrics.fragment_metrics(clean_b, corrupt_b, repaired, changed)
            values["loss"] = loss
            avg.add(values, corrupted.shape[0])
        return avg.result()

    @torch.no_grad()
    def validate(self, model, batches, device):
        """Tune the model's decision rule on the validation batches, then score under it (see
        trainers.training.fragment_decision); a whole-fragment fragment-dae has no rule to tune."""
        from trainers.training import fragment_decision

        if not fragment_decision.tunable(model):
            return self.evaluate(model, batches, device)
        return fragment_decision.tune_and_score(model, batches, device, self.loss)


_TASKS = {"sar": SARTask, "audio": AudioTask, "fragments": FragmentTask}


def task_for(variant: str, kl_weight: float = 0.01, kl_warmup: int = 0, free_bits: float = 0.0) -> Task:
    """The task object of a variant's domain (the KL settings matter to the audio VAEs only)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}'; choose one of: {', '.join(VARIANTS)}")
    return _TASKS[VARIANTS[variant].domain](
        variant, kl_weight=kl_weight, kl_warmup=kl_warmup, free_bits=free_bits
    )
