"""Metrics for the three domains: pure functions on torch tensors and numpy arrays.

Nothing here imports the models or the data modules, so trainers, the studio and scripts can score any
reconstruction the same way.
"""

from trainers.metrics.audio import feature_mse, log_spectral_distance, spectral_convergence
from trainers.metrics.fragments import bit_error_rate, byte_accuracy, fragment_metrics, to_bytes
from trainers.metrics.sar import (
    PSNR_CAP_DB,
    enl,
    enl_ratio,
    epi,
    homogeneous_mask,
    latent_bits_per_pixel,
    psnr,
    psnr_8bit,
    quantize_8bit,
    sar_loss,
    sar_metrics,
    sar_metrics_per_image,
    sar_metrics_reference,
    ssim,
    ssim_tensor,
)

__all__ = [
    "PSNR_CAP_DB",
    "bit_error_rate",
    "byte_accuracy",
    "enl",
    "enl_ratio",
    "epi",
    "feature_mse",
    "fragment_metrics",
    "homogeneous_mask",
    "latent_bits_per_pixel",
    "log_spectral_distance",
    "psnr",
    "psnr_8bit",
    "quantize_8bit",
    "sar_loss",
    "sar_metrics",
    "sar_metrics_per_image",
    "sar_metrics_reference",
    "spectral_convergence",
    "ssim",
    "ssim_tensor",
    "to_bytes",
]
