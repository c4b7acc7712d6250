"""The variant table: names -> classes, default configs, and checkpoint loading by variant name.

``config.json`` of every checkpoint carries a ``variant`` key (the models' ``__init__`` takes it), which is
what :func:`load_pretrained` dispatches on; weights are read from ``model.safetensors`` only.
"""

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from torch import nn

from .audio import ConvVAE, MelConvVAE
from .base import CONFIG_NAME, DOMAINS, WEIGHTS_NAME
from .fragments import ByteFragmentAutoencoder, FragmentAutoencoder
from .sar import (
    AttentionAutoencoder,
    BaselineAutoencoder,
    BranchAttentionAutoencoder,
    ResidualAutoencoder,
    ResNetAutoencoder,
)

__all__ = [
    "MAX_PARAMETERS",
    "VARIANTS",
    "VariantInfo",
    "check_model_size",
    "create_model",
    "estimate_parameters",
    "load_pretrained",
    "read_checkpoint_config",
]

# Keys every model accepts that are not architecture options.
_RESERVED_KEYS = ("self", "variant", "preprocessing")
# Hub repo ids look like "name" or "owner/name"; anything else that is not an existing path is a typo'd path.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: Largest model a checkpoint may describe (float32: 400 MB of weights). The default variants have at most
#: 24 M; a config.json asking for more (channels [4000, 4000, 4000], [1000000000]) is refused before a
#: single weight is allocated, so a hostile or mistyped checkpoint cannot exhaust the app's memory.
MAX_PARAMETERS = 100_000_000
# Longest list an architecture option may hold (a layer per entry): building 10^6 empty modules is itself
# a memory bomb, even on the meta device.
_MAX_LIST = 64


@dataclass(frozen=True)
class VariantInfo:
    """One row of the variant table."""

    name: str
    domain: str
    cls: type[nn.Module]
    description: str
    default_config: dict[str, Any] = field(default_factory=dict)


def _defaults(cls: type[nn.Module]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in _RESERVED_KEYS}


def _info(cls: Any, description: str) -> VariantInfo:
    return VariantInfo(cls.VARIANT, cls.DOMAIN, cls, description, _defaults(cls))


VARIANTS: dict[str, VariantInfo] = {
    info.name: info
    for info in (
        _info(BaselineAutoencoder, "Plain conv autoencoder, four stride-2 5x5 convs each way (reference)"),
        _info(
            ResNetAutoencoder, "Post-activation residual autoencoder, ReLU after each addition (ResNet-Lite)"
        ),
        _info(ResidualAutoencoder, "Variant B: pre-activation residual autoencoder, 2 blocks per stage"),
        _info(
            AttentionAutoencoder,
            "Variant C: Variant B with a CBAM after every residual block (main path, bounded gates)",
        ),
        _info(
            BranchAttentionAutoencoder,
            "Variant C, CBAM paper placement: a CBAM on every residual branch, before the addition",
        ),
        _info(MelConvVAE, "1-channel log-mel ConvVAE, 4 conv layers, latent 64 (v1.0)"),
        _info(
            ConvVAE, "2-channel magnitude + instantaneous-frequency ConvVAE, 5 conv layers, latent 128 (v2.0)"
        ),
        _info(
            FragmentAutoencoder, "1D-conv denoising autoencoder for 512-byte fragments, sigmoid output, MSE"
        ),
        _info(
            ByteFragmentAutoencoder, "1D-conv denoising autoencoder with a 256-way per-byte classifier head"
        ),
    )
}


def _known() -> str:
    return ", ".join(VARIANTS)


def _get_info(name: Any) -> VariantInfo:
    if not isinstance(name, str) or name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known variants: {_known()}")
    return VARIANTS[name]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build variant ``name`` with its defaults, overriding any architecture option or ``preprocessing``."""
    info = _get_info(name)
    valid = [*info.default_config, "preprocessing"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for variant '{name}'; valid options: {', '.join(valid)}"
        )
    return info.cls(**overrides)


def estimate_parameters(name: str, config: dict[str, Any]) -> int:
    """Parameter count of variant ``name`` built from ``config``, without allocating a weight.

    The model is built on PyTorch's meta device (shapes only, no storage), so the count is exact and
    costs no memory whatever the config asks for; ``ValueError`` names an option the class rejects.
    """
    import torch

    info = _get_info(name)
    options = {k: v for k, v in config.items() if k in info.default_config}
    for key, value in options.items():
        if isinstance(value, (list, tuple)) and len(value) > _MAX_LIST:
            raise ValueError(
                f"option {key} of '{name}' lists {len(value)} layers; at most {_MAX_LIST} are allowed"
            )
    try:
        with torch.device("meta"):
            model = info.cls(variant=name, **options)
    except (TypeError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"config of '{name}' describes no buildable model: {exc}") from exc
    return sum(p.numel() for p in model.parameters())


def check_model_size(
    name: str, config: dict[str, Any], source: str | Path = "", limit: int | None = None
) -> int:
    """The estimated parameter count, or a ValueError when it exceeds ``limit`` (default MAX_PARAMETERS)."""
    limit = MAX_PARAMETERS if limit is None else int(limit)
    n = estimate_parameters(name, config)
    if n > limit:
        where = f"checkpoint '{source}'" if source else "this config"
        raise ValueError(
            f"{where} describes a {name} model of {n:,} parameters ({4 * n / 2**30:.1f} GiB as float32); "
            f"at most {limit:,} are loaded here"
        )
    return n


def _is_local(source: str | Path) -> bool:
    if isinstance(source, Path) or os.path.exists(source):
        return True
    text = str(source)
    return text.startswith((".", "/", "~", "\\")) or not _REPO_ID.match(text)


def read_checkpoint_config(source: str | Path, **hub_kwargs: Any) -> dict[str, Any]:
    """Read and check ``config.json`` of a local checkpoint folder or a Hub repo id (no weights are read)."""
    if _is_local(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder '{source}' does not exist")
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"checkpoint folder '{source}' has no {CONFIG_NAME}")
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"checkpoint folder '{source}' has no {WEIGHTS_NAME} (only safetensors are loaded)"
            )
    else:
        allowed = ("revision", "cache_dir", "force_download", "token", "local_files_only")
        try:
            config_file = Path(
                hf_hub_download(
                    repo_id=str(source),
                    filename=CONFIG_NAME,
                    **{k: v for k, v in hub_kwargs.items() if k in allowed},
                )
            )
        except (EntryNotFoundError, OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"could not fetch {CONFIG_NAME} of '{source}' (no such local folder; as a Hub repo id: "
                f"{type(exc).__name__}: {exc})"
            ) from exc
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{CONFIG_NAME} of '{source}' is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{CONFIG_NAME} of '{source}' must hold a JSON object, got {type(config).__name__}")
    variant = config.get("variant")
    if variant not in VARIANTS:
        raise ValueError(
            f"{CONFIG_NAME} of '{source}' names no known variant (variant={variant!r}); "
            f"known variants: {_known()}"
        )
    return config


def wrong_domain_message(variant: str, domain: str, needed: str) -> str:
    """What a view says when handed a checkpoint of another domain."""
    a_domain = {"sar": "a SAR", "audio": "an audio", "fragments": "a fragment"}.get(needed, f"a {needed}")
    return f"checkpoint is a '{variant}' ({domain}) model; this view needs {a_domain} model"


def load_pretrained(
    source: str | Path,
    expected_variant: str | None = None,
    expected_domain: str | None = None,
    **hub_kwargs: Any,
) -> nn.Module:
    """Load a checkpoint (local folder or Hub repo id), picking the class from ``config.json``'s ``variant``.

    ``expected_variant`` / ``expected_domain`` reject a checkpoint of another model before any weights are
    read. ``hub_kwargs`` go to ``from_pretrained`` (``revision``, ``token``, ``cache_dir``, ``map_location``,
    ...). Returns the model in eval mode.
    """
    if expected_variant is not None:
        _get_info(expected_variant)
    if expected_domain is not None and expected_domain not in DOMAINS:
        raise ValueError(f"unknown domain {expected_domain!r}; known domains: {', '.join(DOMAINS)}")
    config = read_checkpoint_config(source, **hub_kwargs)
    info = VARIANTS[config["variant"]]
    if expected_variant is not None and info.name != expected_variant:
        raise ValueError(
            f"checkpoint is a '{info.name}' ({info.domain}) model; "
            f"this view needs a '{expected_variant}' model"
        )
    if expected_domain is not None and info.domain != expected_domain:
        raise ValueError(wrong_domain_message(info.name, info.domain, expected_domain))
    # Bounded before building: the weights file is only checked against the model once it exists.
    check_model_size(info.name, config, Path(source).name if _is_local(source) else source)
    try:
        return info.cls.from_pretrained(source, **hub_kwargs)
    except TypeError as exc:  # config.json with an argument of the wrong type
        raise ValueError(
            f"checkpoint '{source}' has a config.json that {info.cls.__name__} rejects: {exc}"
        ) from exc
