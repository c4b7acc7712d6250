"""Autoencoder model variants for SAR images, audio and file fragments."""
