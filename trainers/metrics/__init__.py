"""Metrics for the three domains: pure functions on torch tensors and numpy arrays, and the registry that
says what each metric means (``trainers.metrics.registry``).

Nothing here imports the models or the data modules, so trainers, the studio and scripts can score any
reconstruction the same way. The names below load their module on first use: the run store reads the
registry without paying for librosa, scipy and pytorch_msssim.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("feature_mse", "log_spectral_distance", "spectral_convergence"), "audio"),
    **dict.fromkeys(
        ("bit_error_rate", "byte_accuracy", "fragment_metrics", "fragment_metrics_per_fragment", "to_bytes"),
        "fragments",
    ),
    **dict.fromkeys(
        (
            "PSNR_CAP_DB",
            "enl",
            "enl_ratio",
            "epi",
            "homogeneous_mask",
            "latent_bits_per_pixel",
            "psnr",
            "psnr_8bit",
            "quantize_8bit",
            "sar_loss",
            "sar_metrics",
            "sar_metrics_per_image",
            "sar_metrics_reference",
            "ssim",
            "ssim_tensor",
        ),
        "sar",
    ),
    **dict.fromkeys(
        ("MetricInfo", "arrow", "best_value", "format_value", "is_better", "metric_info"), "registry"
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
