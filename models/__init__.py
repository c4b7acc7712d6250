"""Autoencoder model variants for SAR images, audio and file fragments.

Build one by name with :func:`create_model`, list them with :data:`VARIANTS`, and load a saved checkpoint
(``config.json`` + ``model.safetensors``) of any variant with :func:`load_pretrained`.
"""

from .registry import VARIANTS, VariantInfo, create_model, load_pretrained, read_checkpoint_config

__all__ = ["VARIANTS", "VariantInfo", "create_model", "load_pretrained", "read_checkpoint_config"]
