"""Shared plumbing for every autoencoder variant: Hub save/load, variant checks, input validation, init.

Every model class mixes in :class:`AutoencoderHubMixin` (a :class:`PyTorchModelHubMixin`), so
``save_pretrained`` writes ``config.json`` (all ``__init__`` kwargs, defaults included, plus ``variant`` and
``preprocessing``) next to ``model.safetensors``, and ``from_pretrained`` rebuilds the model from them.
"""

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError
from torch import nn

LIBRARY_NAME = "autoencoder-comparison-studio"
LICENSE = "mit"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DOMAINS = ("sar", "audio", "fragments")


def _check_jsonable(preprocessing: Any) -> dict:
    """Copy ``preprocessing`` after making sure it survives config.json unchanged.

    The hub mixin silently drops non-JSON values from the config, which would lose the normalisation
    parameters of a checkpoint; failing loudly here is the only place the caller can still fix it.
    """
    if preprocessing is None:
        return {}
    if not isinstance(preprocessing, dict):
        raise ValueError(f"preprocessing must be a dict or None, got {type(preprocessing).__name__}")
    try:
        text = json.dumps(preprocessing, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"preprocessing must contain only JSON values (str, int, float, bool, None, lists, dicts with "
            f"str keys, finite numbers) so it can travel in config.json: {exc}"
        ) from exc
    return json.loads(text)


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is a positive int (bools excluded), else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_int_tuple(name: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    """Normalise a list/tuple of positive ints (config.json turns tuples into lists) to a tuple."""
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(value)}: {value!r}")
    return tuple(check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def format_shape(shape: tuple[Any, ...]) -> str:
    """Format a shape as ``(B, 1, 512)``, keeping symbolic entries."""
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_tensor(x: Any, expected: tuple[Any, ...], what: str = "input", note: str = "") -> torch.Tensor:
    """Check a floating-point tensor against ``expected`` (ints must match; strings are free dimensions).

    Raises ValueError that names the expected and the received shape, e.g.
    ``expected input of shape (B, 1, 512), got (4, 512)``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"expected {what} to be a torch.Tensor of shape {format_shape(expected)}, got {type(x).__name__}"
        )
    got = tuple(x.shape)
    ok = len(got) == len(expected) and all(
        isinstance(e, str) or e == g for e, g in zip(expected, got, strict=False)
    )
    if not ok:
        raise ValueError(f"expected {what} of shape {format_shape(expected)}{note}, got {format_shape(got)}")
    if not x.is_floating_point():
        raise ValueError(f"expected {what} to be a floating-point tensor, got dtype {x.dtype}")
    return x


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal init for convolutions (ReLU networks), identity init for norm layers."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_module_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class AutoencoderHubMixin(PyTorchModelHubMixin, library_name=LIBRARY_NAME, license=LICENSE):
    """Hub mixin with the project's contract: variant check, preprocessing, safetensors-only strict loading.

    Subclasses set ``VARIANT`` and ``DOMAIN``, call :meth:`_init_common` first in ``__init__`` and expose
    ``encoder`` and ``decoder`` submodules that together hold every parameter.
    """

    VARIANT: ClassVar[str] = ""
    DOMAIN: ClassVar[str] = ""
    #: Options a config.json written before they existed lacks, with the value such a checkpoint was trained
    #: with (its weights would otherwise load silently into a model that computes something else).
    LEGACY_OPTIONS: ClassVar[dict[str, Any]] = {}

    def _init_common(self, variant: str | None, preprocessing: dict | None) -> None:
        """`variant` None means the class's own; the config the mixin captured then names it too."""
        if variant is None:
            variant = self.VARIANT
            if isinstance(getattr(self, "_hub_mixin_config", None), dict):
                self._hub_mixin_config["variant"] = variant
        # Checked before any layer is built, so a wrong checkpoint fails fast and allocates nothing.
        if variant != self.VARIANT:
            raise ValueError(
                f"checkpoint is for variant '{variant}', but {type(self).__name__} builds '{self.VARIANT}'"
            )
        self.variant = self.VARIANT
        self.preprocessing = _check_jsonable(preprocessing)

    def count_parameters(self) -> dict[str, int]:
        """Parameter counts of the encoder, the decoder and the whole model."""
        return {
            "encoder": count_module_parameters(self.encoder),
            "decoder": count_module_parameters(self.decoder),
            "total": count_module_parameters(self),
        }

    def save_pretrained(
        self, save_directory: str | Path, *, config: dict | None = None, **kwargs: Any
    ) -> str | None:
        """Save ``config.json`` + ``model.safetensors``, with ``self.preprocessing`` as it is *now*.

        The mixin captures init kwargs at construction, but trainers may fill ``preprocessing`` later.
        No README.md is written: the one model card comes from ``trainers.hub.model_card`` at export time (the
        mixin's own card would say "[More Information Needed]"); a README already in the folder is kept.
        """
        if config is None and isinstance(self._hub_mixin_config, dict):
            self._hub_mixin_config["preprocessing"] = _check_jsonable(self.preprocessing)
            self._hub_mixin_config["variant"] = self.VARIANT
        readme = Path(save_directory) / "README.md"
        had_readme = readme.exists()
        try:
            return super().save_pretrained(save_directory, config=config, **kwargs)
        finally:
            if not had_readme:
                readme.unlink(missing_ok=True)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> "AutoencoderHubMixin":
        # Unlike the stock mixin: never falls back to pickle weights, loads strictly (a checkpoint whose
        # weights do not fit its config is an error, not a half-initialised model) and prints nothing.
        model_kwargs = {**cls.LEGACY_OPTIONS, **model_kwargs}
        model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, WEIGHTS_NAME)
            if not os.path.isfile(model_file):
                raise FileNotFoundError(
                    f"no {WEIGHTS_NAME} in checkpoint folder '{model_id}' "
                    "(only safetensors weights are loaded)"
                )
        else:
            try:
                model_file = hf_hub_download(
                    repo_id=model_id,
                    filename=WEIGHTS_NAME,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                )
            except EntryNotFoundError as exc:
                raise FileNotFoundError(
                    f"Hub repo '{model_id}' has no {WEIGHTS_NAME} (or it is not cached while offline); "
                    "pickle checkpoints are not loaded"
                ) from exc
        try:
            safetensors.torch.load_model(model, model_file, strict=strict, device=str(map_location))
        except (RuntimeError, SafetensorError, OSError) as exc:
            raise ValueError(
                f"weights in '{model_file}' do not fit {cls.__name__} as described by its config.json: {exc}"
            ) from exc
        model.to(map_location)
        model.eval()
        return model


def padded_size(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    return int(math.ceil(n / multiple) * multiple)
