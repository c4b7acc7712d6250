"""Run configuration and the per-variant presets: `smoke` for CPU/CI, `reference` for the small checkpoints
shipped in `assets/reference/` (minutes on a 2-core CPU), `full` for the full-size models
and data (SAR 256×256 patches, batch 32)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from models import VARIANTS

PRESETS = ("smoke", "reference", "full")

# The audio VAEs' KL recipe (all presets but smoke): with the KL summed over the latent and the
# reconstruction averaged over ~24,000 feature values, kl_weight=0.01 weighed the KL ~100x above the
# reconstruction and the posterior collapsed onto the prior (0 active units, the same spectrogram for every
# clip). Free bits (0.25 nat per dimension) and a linear warm-up keep the latent in use. Chosen on the
# validation split of the shipped speech (30 epochs of the reference preset): 0 -> 50-60 active units of 64.
# The full-size settings per domain: the models' default widths, 256×256 SAR patches, batches of 32, 32
# and 128. `model` holds overrides of the variant's default architecture.
_FULL: dict[str, dict[str, Any]] = {
    "sar": {
        "epochs": 30,
        "batch_size": 32,
        "lr": 1e-4,
        "patience": 5,
        "data": "sar:synthetic,n=2048,size=256,scene=single-look",
    },
    "audio": {
        "epochs": 50,
        "batch_size": 32,
        "lr": 3e-4,
        "patience": 8,
        "data": "audio:synthetic,n=2048",
        "kl_weight": 0.001,  # the KL recipe: see the comment above
        "kl_warmup": 1000,
        "free_bits": 0.25,
    },
    "fragments": {"epochs": 20, "batch_size": 128, "lr": 1e-3, "patience": 4, "data": "fragments:python"},
}

# Small enough to finish in well under a minute on a 2-core CPU while still showing learning: smaller images
# and widths than the full preset, a higher learning rate, a few epochs on a few dozen samples.
_SMOKE: dict[str, dict[str, Any]] = {
    "sar": {
        "epochs": 6,
        "batch_size": 8,
        "lr": 2e-3,
        "patience": 10,
        "data": "sar:synthetic,n=128,size=64,val=16",
        "model": {"base_channels": 8, "image_size": 64},
    },
    "audio": {
        "epochs": 5,
        "batch_size": 8,
        "lr": 2e-3,
        "patience": 10,
        "data": "audio:synthetic,n=96,val=16",
        "model": {"widths": [8, 16, 32, 64, 128], "latent_dim": 32},
    },
    "fragments": {
        "epochs": 4,
        "batch_size": 64,
        "lr": 3e-3,
        "patience": 10,
        "data": "fragments:python,max_files=60",
        "model": {},
    },
}

# The 1-channel mel VAE has four conv layers, so it needs its own smoke widths.
_SMOKE_MODEL_BY_VARIANT: dict[str, dict[str, Any]] = {
    "audio-vae-mel": {"widths": [8, 16, 32, 64], "latent_dim": 16},
}

# The shipped reference checkpoints: the full models' topology at narrower widths, so each stays under 5 MB
# and trains in minutes on a 2-core CPU, on the most realistic data the project has (textured speckled scenes,
# the shipped speech clips, real files of the Python installation). Same latent sizes as the full models.
_REFERENCE: dict[str, dict[str, Any]] = {
    "sar": {
        # 256 patches x 16 epochs (256 steps) left every SAR reference within ~1 dB of the mean-value image;
        # four times the distinct patches and three times the steps still fit 20 CPU minutes per variant.
        "epochs": 12,
        "batch_size": 16,
        "lr": 1e-3,
        "patience": 6,
        "data": "sar:synthetic,n=1024,size=64,val=64,scene=single-look",
        "model": {"base_channels": 12, "image_size": 64},
    },
    "audio": {
        # At 60 epochs (840 steps) the validation loss still made new lows in the last 10 (patience 10 never
        # stopped it); 200 with a longer patience let early stopping on the validation split decide.
        "epochs": 200,
        "batch_size": 8,
        "lr": 1e-3,
        "patience": 15,
        "data": "audio:folder=assets/speech/train,hop=0.25",
        "model": {"widths": [16, 32, 64, 128, 128], "latent_dim": 64},
        # kl_weight 1e-3 still held the latent to ~10 nats: on the validation split after 15 epochs the
        # mel VAE's output varied 0.33 as much as its input (spectral convergence 0.886); at 1e-6 0.50
        # (0.856). 1e-5 lies between, where a 300-nat latent costs a fifth of the reconstruction error.
        "kl_weight": 1e-5,
        "kl_warmup": 200,
        "free_bits": 0.25,
    },
    # Issue 23: batches of 64 (twice the steps for the same CPU time), and the fragment-dae, whose steps
    # cost a fifth of the byte classifier's, trains 14 epochs (_REFERENCE_RUN_BY_VARIANT); the byte
    # classifier's 4 epochs (384 steps) are what fits 15 minutes of a shared 2-core CPU.
    "fragments": {
        "epochs": 4,
        "batch_size": 64,
        "lr": 2e-3,
        "patience": 3,
        "data": "fragments:python,max_files=200",
        "model": {},
    },
}
# Run settings of one variant that differ from its domain's preset (model settings: *_MODEL_BY_VARIANT).
_REFERENCE_RUN_BY_VARIANT: dict[str, dict[str, Any]] = {
    "fragment-dae": {"epochs": 14, "patience": 4},
}
_REFERENCE_MODEL_BY_VARIANT: dict[str, dict[str, Any]] = {
    "audio-vae-mel": {"widths": [16, 32, 64, 64], "latent_dim": 64},
}
RUN_BY_VARIANT = {"reference": _REFERENCE_RUN_BY_VARIANT}
PRESET_TABLES = {
    "smoke": (_SMOKE, _SMOKE_MODEL_BY_VARIANT),
    "reference": (_REFERENCE, _REFERENCE_MODEL_BY_VARIANT),
    "full": (_FULL, {}),
}


@dataclass
class RunConfig:
    """Everything that defines a training run; stored as JSON with the run and its checkpoints."""

    variant: str
    preset: str = "full"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    patience: int = 5
    grad_clip: float = 1.0
    kl_weight: float = 0.01
    # The audio VAEs' KL schedule (trainers.training.tasks.Task.kl_beta, models.audio.vae_loss): the KL
    # weight rises linearly from 0 to kl_weight over kl_warmup steps, and each latent dimension's first
    # free_bits nats are not penalised; together they keep the posterior from collapsing onto the prior.
    kl_warmup: int = 0
    free_bits: float = 0.0
    data: str = ""
    seed: int = 0
    device: str = "auto"
    max_steps: int | None = None
    log_every: int = 5
    # DataLoader workers; None = automatic: 0 on CPU (they would compete with the model for the cores), a
    # few on CUDA so batches are made while the GPU computes (see loop.data_workers).
    num_workers: int | None = None
    # bf16 autocast: "auto" = SAR on CUDA GPUs with bf16, and full-width SAR nets on CPUs with native bf16
    # (see trainers.training.fastpath); "fp32"/"bf16" force it.
    precision: str = "auto"
    # torch.compile the model on CUDA. Off by default: it costs minutes of compilation on short runs and has
    # not been checked against fp32 on a GPU here (see BENCHMARKS.md).
    compile: bool = False
    # The study this run belongs to (trainers.runs.studies): "" for a run launched on its own.
    study: str = ""
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return VARIANTS[self.variant].domain

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown run config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**data)
