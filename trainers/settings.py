"""One validation layer for run settings: the CLI, the job manager, the Train tab and the API all call it.

:class:`RunSettings` is a pydantic model of what a user may set for a run. Its validators hold every check
(whole numbers, ranges, the device, the precision, the data spec against the variant's domain), each raising
a message in the user's terms; :func:`validate_run` turns it into the :class:`~trainers.config.RunConfig`
the trainer runs, so a bad value fails at submit and not minutes into a run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from models import VARIANTS
from trainers.config import PRESET_TABLES, PRESETS, RUN_BY_VARIANT, RunConfig
from trainers.training.fastpath import PRECISIONS

DEVICES = ("auto", "cpu", "cuda")
# The lowest value of each whole-number setting.
WHOLE_MINIMUM: dict[str, int] = {
    "epochs": 1,
    "batch_size": 1,
    "seed": 0,
    "max_steps": 1,
    "num_workers": 0,
    "patience": 0,
    "log_every": 1,
    "kl_warmup": 0,
}
# The highest value of each whole-number setting: far beyond any sensible run, and within what every reader
# of a stored config holds (SQLite and orjson stop at 64 bits; torch and numpy seeds at 2**32 - 1).
WHOLE_MAXIMUM: dict[str, int] = {
    "epochs": 1_000_000,
    "batch_size": 1_048_576,
    "seed": 2**32 - 1,
    "max_steps": 1_000_000_000,
    "num_workers": 256,
    "patience": 1_000_000,
    "log_every": 1_000_000,
    "kl_warmup": 1_000_000_000,
}
# Real-number settings: True where the value must be > 0, False where >= 0 is enough.
REAL_POSITIVE: dict[str, bool] = {
    "lr": True,
    "kl_weight": False,
    "free_bits": False,
    "weight_decay": False,
    "grad_clip": False,
}
# The highest value of each real-number setting (a learning rate of 1e20 still runs, and diverges).
REAL_MAXIMUM: dict[str, float] = {
    "lr": 1e30,
    "kl_weight": 1e6,
    "free_bits": 1e6,
    "weight_decay": 1e6,
    "grad_clip": 1e9,
}
# Numbers inside model overrides (widths, latent size, image size, dropout) lie in [0, MODEL_NUMBER_MAX].
MODEL_NUMBER_MAX = 65_536
# Settings whose value must be one of a table's entries, and that table.
CHOICES: dict[str, Any] = {"variant": VARIANTS, "preset": PRESETS, "precision": PRECISIONS}
# What a setting is called in messages where that is not its key.
LABELS: dict[str, str] = {"batch_size": "batch size", "lr": "learning rate"}


def label(key: str) -> str:
    """The name of a setting in a message, as the Train tab labels it: 'learning rate', 'epochs'."""
    return LABELS.get(key, key)


def one_of(key: str, value: Any) -> str:
    """`value` if it is one of the setting's CHOICES, else a ValueError that lists them."""
    if value not in CHOICES[key]:
        raise ValueError(f"unknown {label(key)} {value!r}; choose one of: {', '.join(CHOICES[key])}")
    return value


def _number(value: Any) -> float:
    """`value` as a float, NaN when it is no number (bools are not numbers here)."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return math.nan


def whole(key: str, value: Any, minimum: int | None = None) -> int:
    """A whole number >= the setting's minimum; number widgets hand over floats, text fields strings."""
    low = WHOLE_MINIMUM.get(key, 0) if minimum is None else minimum
    number = _number(value)
    if not math.isfinite(number) or not number.is_integer() or number < low:
        raise ValueError(f"{label(key)} must be a whole number >= {low}, got {value!r}")
    high = WHOLE_MAXIMUM.get(key)
    # int(value) where it is one: a float loses digits past 2**53, and 10**23 must not pass as 9.99e22.
    exact = value if isinstance(value, int) else int(number)
    if high is not None and exact > high:
        raise ValueError(f"{label(key)} must be a whole number from {low} to {high}, got {value!r}")
    return exact


def real(key: str, value: Any, positive: bool | None = None) -> float:
    """A finite number, > 0 for the learning rate and >= 0 for the weights and the clip (``positive``
    decides for other keys)."""
    positive = REAL_POSITIVE.get(key, False) if positive is None else positive
    number = _number(value)
    if not math.isfinite(number) or (number <= 0 if positive else number < 0):
        what = "a finite number >= 0"
        if positive:
            what = "a positive number such as 3e-4" if key == "lr" else "a finite number > 0"
        raise ValueError(f"{label(key)} must be {what}, got {value!r}")
    high = REAL_MAXIMUM.get(key)
    if high is not None and number > high:
        raise ValueError(f"{label(key)} must be at most {high:g}, got {value!r}")
    return number


def model_numbers(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` after checking that every number in them (lists included) is finite and within
    [0, MODEL_NUMBER_MAX], so a stored config never holds a value a reader cannot take back."""

    def check(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for inner, item in value.items():
                check(f"{key}.{inner}", item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                check(key, item)
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not (math.isfinite(value) and 0 <= value <= MODEL_NUMBER_MAX)
        ):
            raise ValueError(
                f"model setting '{key}' must hold numbers from 0 to {MODEL_NUMBER_MAX}, got {value!r}"
            )

    for key, value in overrides.items():
        check(str(key), value)
    return dict(overrides)


#: The largest rate weight of entropy_model=factorized (beyond it the latent is all the loss sees).
RD_LAMBDA_MAX = MODEL_NUMBER_MAX


def entropy_settings(variant: str, model: Mapping[str, Any]) -> None:
    """Check the learned entropy model's model settings (``--set entropy_model=factorized``, ``--set
    rd_lambda=...``): a SAR variant's option, one of the known models, a finite non-negative rate weight
    that only applies with an entropy model. Raises one sentence per bad value."""
    from models.entropy import ENTROPY_MODELS

    given = [k for k in ("entropy_model", "rd_lambda") if model.get(k) is not None]
    if not given:
        return
    if VARIANTS[variant].domain != "sar":
        raise ValueError(
            f"{given[0]} is an option of the SAR variants (a learned prior of the image latent); "
            f"{variant} has none"
        )
    name = model.get("entropy_model", "none")
    if name not in ENTROPY_MODELS:
        raise ValueError(f"entropy_model must be one of {', '.join(ENTROPY_MODELS)}, got {name!r}")
    lam = model.get("rd_lambda")
    if lam is None:
        return
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"rd_lambda must be a number from 0 to {RD_LAMBDA_MAX:g}, got {lam!r}")
    if lam > RD_LAMBDA_MAX:
        raise ValueError(f"rd_lambda must be a number from 0 to {RD_LAMBDA_MAX:g}, got {lam!r}")
    if name == "none" and lam:
        raise ValueError(f"rd_lambda={lam!r} weighs a rate term that only entropy_model=factorized adds")


def checked_data(data: Any, domain: str, check_paths: bool = True) -> str:
    """The canonical data spec string for `domain`, checked now so a typo fails at submit.

    A folder is made absolute, since the trainer may run in another working directory.
    """
    from trainers.data.spec import DataSpec, format_data_spec, parse_data_spec

    if data is None or (isinstance(data, str) and not data.strip()):
        return ""
    spec = data if isinstance(data, DataSpec) else None
    if isinstance(data, str):
        spec = parse_data_spec(data.strip())
    if spec is None:
        raise ValueError(f"data must be a data spec string such as '{domain}:...', got {type(data).__name__}")
    if spec.domain != domain:
        raise ValueError(f"data spec '{data}' is {spec.domain} data, but the variant trains on {domain} data")
    if check_paths:
        spec.check_paths()
        if spec.folder_path is not None:
            folder = str(spec.folder_path.resolve())
            spec = DataSpec(spec.domain, spec.source, {**spec.options, "folder": folder})
    return format_data_spec(spec)


def check_config(cfg: RunConfig) -> RunConfig:
    """`cfg` after checking each value against the same rules as user input (presets and resumed runs too)."""
    for key in WHOLE_MINIMUM:
        value = getattr(cfg, key)
        if value is not None:
            setattr(cfg, key, whole(key, value))
    for key in REAL_POSITIVE:
        setattr(cfg, key, real(key, getattr(cfg, key)))
    one_of("precision", cfg.precision)
    cfg.model = model_numbers(cfg.model)
    entropy_settings(cfg.variant, cfg.model)
    return cfg


class RunSettings(BaseModel):
    """What a user may set for one run; None leaves the preset's value. Every field is checked here."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    variant: str
    preset: str = "full"
    epochs: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    max_steps: int | None = None
    num_workers: int | None = None
    patience: int | None = None
    log_every: int | None = None
    lr: float | None = None
    kl_weight: float | None = None
    kl_warmup: int | None = None
    free_bits: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    data: Any = None  # a data spec string or a trainers.data.spec.DataSpec
    device: str = "auto"
    precision: str | None = None
    compile: bool | None = None
    study: str | None = None  # the study this run belongs to (trainers.runs.studies), not a user setting
    model: dict[str, Any] | None = None

    @field_validator("study", mode="before")
    @classmethod
    def _study(cls, value: Any) -> str | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str) or not re.fullmatch(r"study-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}", value):
            raise ValueError(f"study must be a study id such as study-20261207-141502-3fa2, got {value!r}")
        return value

    @field_validator(*CHOICES, mode="before")
    @classmethod
    def _one_of(cls, value: Any, info: Any) -> str | None:
        # None (precision only) leaves the preset's value
        return None if value is None and info.field_name == "precision" else one_of(info.field_name, value)

    @field_validator(*WHOLE_MINIMUM, mode="before")
    @classmethod
    def _whole(cls, value: Any, info: Any) -> int | None:
        return None if value is None else whole(info.field_name, value)

    @field_validator(*REAL_POSITIVE, mode="before")
    @classmethod
    def _real(cls, value: Any, info: Any) -> float | None:
        return None if value is None else real(info.field_name, value)

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> str:
        value = value or "auto"
        if value not in DEVICES:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {value!r}")
        return value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, value: Any) -> bool | None:
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"compile must be true or false, got {value!r}")
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> dict[str, Any] | None:
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"model overrides must be a dict of settings, got {type(value).__name__}")
        return None if value is None else model_numbers(value)

    @model_validator(mode="after")
    def _data(self) -> RunSettings:
        self.data = checked_data(self.data, VARIANTS[self.variant].domain, check_paths=False) or None
        entropy_settings(self.variant, self.model or {})
        return self

    def overrides(self) -> dict[str, Any]:
        """The settings given, as make_config overrides."""
        return self.model_dump(exclude={"variant", "preset"}, exclude_none=True)


def _message(exc: ValidationError) -> str:
    """The validators' own words; pydantic's only for what they do not see (a wrong key, a wrong type)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        if err["type"] == "extra_forbidden":
            valid = ", ".join(RunSettings.model_fields)
            parts.append(f"unknown run setting '{where}'; valid settings: {valid}")
        elif err["type"] == "value_error":
            parts.append(str(err["ctx"]["error"]))
        else:
            parts.append(f"{where}: {err['msg']}, got {err.get('input')!r}")
    return "; ".join(parts)


def parse_run_settings(variant: Any, preset: Any = "full", **settings: Any) -> RunSettings:
    """The checked settings, or a ValueError that names each bad one in the user's terms."""
    try:
        return RunSettings(variant=variant, preset=preset, **settings)
    except ValidationError as exc:
        raise ValueError(_message(exc)) from None


def validate_run(
    variant: Any,
    preset: Any = "full",
    *,
    has_gpu: bool | None = None,
    check_paths: bool = True,
    **settings: Any,
) -> RunConfig:
    """The run config that the settings define, or a ValueError/FileNotFoundError saying what is wrong.

    `settings` are RunConfig fields (None values leave the preset's); `has_gpu` False refuses device 'cuda'
    (None: not checked); `check_paths` checks that a data folder exists, and makes it absolute.
    """
    checked = parse_run_settings(variant, preset, **settings)
    if checked.device == "cuda" and has_gpu is False:
        raise ValueError("device 'cuda' was requested but this machine has no GPU; use 'auto' or 'cpu'")
    cfg = make_config(checked.variant, checked.preset, **checked.overrides())
    cfg.data = checked_data(cfg.data, cfg.domain, check_paths=check_paths)
    return cfg


def make_config(variant: str, preset: str = "full", **overrides: Any) -> RunConfig:
    """Build a run config from a preset, then apply explicit overrides (None values are ignored).

    The values are checked by `trainers.settings.check_config`; `trainers.settings.validate_run` also checks
    the types of user input and the data spec.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}'; choose one of: {', '.join(VARIANTS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    domain = VARIANTS[variant].domain
    table, by_variant = PRESET_TABLES[preset]
    base = dict(table[domain])
    base.update(RUN_BY_VARIANT.get(preset, {}).get(variant, {}))
    model = dict(base.pop("model", {}))
    model.update(by_variant.get(variant, {}))
    cfg = RunConfig(variant=variant, preset=preset, model=model, **base)
    model_overrides = overrides.pop("model", None) or {}
    for key, value in overrides.items():
        if value is None:
            continue
        if not hasattr(cfg, key):
            raise ValueError(f"unknown run setting '{key}'")
        setattr(cfg, key, value)
    cfg.model.update(model_overrides)
    return check_config(cfg)
