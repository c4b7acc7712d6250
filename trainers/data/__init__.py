"""Data for the three domains: simulated and real SAR images, audio clips as spectrogram features, and
512-byte fragments of real files with seeded channel noise.

Every dataset is a ``torch.utils.data.Dataset``, reproducible from its seed, and exposes
``preprocessing() -> dict`` (JSON-serialisable) so a checkpoint can rebuild exactly the same input
pipeline: SAR's per-image dB normalisation settings, ``audio.features_from_dict`` and
``NoiseGenerator.from_dict``.

Names are imported lazily, so ``trainers.data.fragments`` does not pay for importing librosa.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "audio": (
        "AudioFeatureConfig",
        "AudioFolderDataset",
        "LogMelFeatures",
        "MelIFFeatures",
        "SyntheticAudioDataset",
        "features_from_dict",
        "load_audio",
        "make_features",
        "synthesize_clip",
    ),
    "fragments": ("FragmentDataset", "NoiseGenerator", "default_corpus_paths", "read_fragment"),
    "sar": (
        "SARFolderDataset",
        "SyntheticSARDataset",
        "apply_speckle",
        "denormalize_db",
        "load_sar_image",
        "normalize_db",
        "normalize_patches",
        "patchify",
        "read_sar_image",
        "simulate_reflectivity",
        "simulate_scene",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_EXPORTS))
