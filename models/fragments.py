"""1D-convolutional denoising autoencoders for 512-byte file fragments.

Fragments enter as (B, 1, fragment_size) floats = byte / 255. ``FragmentAutoencoder`` ("fragment-dae")
regresses the clean fragment through a Sigmoid (trained with MSE); ``ByteFragmentAutoencoder``
("fragment-dae-bytes") shares the encoder but classifies every position into one of 256 byte values
(trained with cross-entropy), which avoids MSE's bias towards averaging nearby byte values.
"""

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .base import (
    AutoencoderHubMixin,
    check_int_tuple,
    check_positive_int,
    check_tensor,
    init_weights,
)

__all__ = [
    "ByteFragmentAutoencoder",
    "FragmentAutoencoder",
    "FragmentEncoder",
    "decide_bytes",
    "decide_correction",
    "nearest_bit_neighbour",
]

N_BYTE_VALUES = 256


def _record_options(model: nn.Module, **options: object) -> None:
    """Write options set after construction into the config ``save_pretrained`` writes (the hub mixin
    captured the ``__init__`` arguments), so a checkpoint keeps the decision rule tuned for it."""
    config = getattr(model, "_hub_mixin_config", None)
    if isinstance(config, dict):
        config.update(options)


def decide_correction(
    x: torch.Tensor,
    value: torch.Tensor,
    gate: torch.Tensor,
    gate_threshold: float = 0.5,
    snap_tolerance: float | None = None,
) -> torch.Tensor:
    """The fragment-dae's bytes from its input ``x`` and its (value, gate) outputs, each (B, 1, L) in [0, 1].

    A byte keeps its input value unless the gate exceeds ``gate_threshold``. Where it does:
    ``snap_tolerance=None`` takes round(255 v); otherwise the byte becomes the single-bit neighbour of the
    input byte (x XOR 2^k) nearest to 255 v, and only if that neighbour lies within ``snap_tolerance`` of
    255 v (else it keeps its input). Why snap: a regressed value is almost never the exact byte (0.4 % of
    corrupted bytes), but the channel's commonest error is a flipped bit, so the right byte is usually one of
    the input's 8 neighbours, 1 to 128 apart: the value only has to be near it. Returns LongTensor (B, L).
    """
    kept = torch.round(x.float() * 255).long()
    return gate_rule(kept, value.float() * 255, gate.float() > gate_threshold, snap_tolerance).squeeze(1)


def gate_rule(
    kept: torch.Tensor,
    target: torch.Tensor,
    opened: torch.Tensor,
    snap_tolerance: float | None,
    snap: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`decide_correction`'s rule on its parts: integer input bytes ``kept``, the regressed byte values
    ``target`` (0-255 scale) and where the gate is ``opened``; ``snap`` is ``nearest_bit_neighbour(kept,
    target)`` where the caller already has it (a sweep over thresholds computes it once)."""
    if snap_tolerance is None:
        repaired = torch.where(opened, torch.round(target).long(), kept)
    else:
        nearest, distance = snap if snap is not None else nearest_bit_neighbour(kept, target)
        repaired = torch.where(opened & (distance <= snap_tolerance), nearest, kept)
    return repaired.clamp(0, 255).long()


def nearest_bit_neighbour(kept: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the single-bit neighbour kept XOR 2^k nearest to ``target``, its distance), for integer bytes
    ``kept`` and float byte values ``target`` of the same shape."""
    candidates = kept.long().unsqueeze(-1) ^ (1 << torch.arange(8, device=kept.device))
    distance = (candidates.float() - target.float().unsqueeze(-1)).abs()
    nearest_distance, k = distance.min(dim=-1)
    return candidates.gather(-1, k.unsqueeze(-1)).squeeze(-1), nearest_distance


def decide_bytes(x: torch.Tensor, logits: torch.Tensor, change_threshold: float = 0.5) -> torch.Tensor:
    """fragment-dae-bytes' bytes from its input ``x`` (B, 1, L) and logits (B, 256, L): the most likely byte
    where the model gives the input byte a probability under ``change_threshold``, else the input byte.

    At 0.5 this is the plain argmax (an input byte with probability 0.5 or more is the most likely one);
    lower thresholds change a byte only where the model is confident it is wrong. Returns LongTensor (B, L).
    """
    probs = logits.float().softmax(dim=1)
    kept = torch.round(x[:, 0].float().clamp(0, 1) * 255).long()
    p_input = probs.gather(1, kept.unsqueeze(1)).squeeze(1)
    return change_rule(kept, p_input, probs.argmax(dim=1), change_threshold)


def change_rule(
    kept: torch.Tensor, p_input: torch.Tensor, most_likely: torch.Tensor, change_threshold: float
) -> torch.Tensor:
    """:func:`decide_bytes`' rule on its parts: the input bytes ``kept``, the probability the model gives
    each, and its most likely byte."""
    return torch.where(p_input < change_threshold, most_likely.long(), kept.long())


class FragmentEncoder(nn.Module):
    """Conv1d(stride 2) + BN + ReLU per entry of ``channels``: (B, 1, L) -> (B, channels[-1], L / 2**n)."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), kernel_size: int = 7) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            layers += [
                nn.Conv1d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
                nn.BatchNorm1d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _up(c_in: int, c_out: int, kernel_size: int) -> nn.ConvTranspose1d:
    # padding k//2 with output_padding 1 doubles the length exactly for odd kernels.
    return nn.ConvTranspose1d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2, output_padding=1)


class _FragmentModel(
    nn.Module, AutoencoderHubMixin, tags=["file-fragments", "denoising-autoencoder", "data-recovery"]
):
    """Shared validation and encoder for the fragment models."""

    DOMAIN = "fragments"

    def _init_fragment(self, fragment_size: int, channels: Sequence[int], kernel_size: int) -> None:
        self.fragment_size = check_positive_int("fragment_size", fragment_size)
        self.channels = check_int_tuple("channels", channels)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd so the decoder restores the length exactly, got {kernel_size}"
            )
        factor = 2 ** len(self.channels)
        if fragment_size % factor:
            raise ValueError(
                f"fragment_size must be a multiple of {factor} (one halving per encoder layer), "
                f"got {fragment_size}"
            )
        self.encoder = FragmentEncoder(self.channels, self.kernel_size)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        return check_tensor(x, ("B", 1, self.fragment_size))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, L) -> latent (B, channels[-1], L / 2**len(channels))."""
        return self.encoder(self._check_input(x))

    def _decoder_trunk(self, head_channels: int) -> list[nn.Module]:
        """Transposed convs mirroring the encoder; the last one maps to ``head_channels`` (no activation)."""
        widths = [*reversed(self.channels), head_channels]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(_up(c_in, c_out, self.kernel_size))
            if i < len(widths) - 2:
                layers += [nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)]
        return layers


class FragmentAutoencoder(_FragmentModel, tags=["fragment-dae"]):
    """Three Conv1d (stride 2) down, three ConvTranspose1d up, Sigmoid: (B, 1, 512) -> (B, 1, 512).

    ``correction=True`` (the default): the decoder predicts a correction to its input rather than the whole
    fragment. Its last layer has two channels per byte, a replacement value v = sigmoid(.) and a gate
    g = sigmoid(.); ``forward`` returns (B, 2, L): the repaired fragment x + g (v - x) (the input where g is
    0, v where g is 1) and the gate. Both are trained with MSE (trainers.tasks): the repair against the clean
    fragment, the gate against the mask of changed bytes (a cross-entropy, so g estimates the probability
    that a byte is wrong). :meth:`predict_bytes` replaces a byte only where g > 0.5. The gate's bias starts
    at -4, so the model starts as the identity repair and only learns to change the bytes it can tell are
    wrong. Regressing the whole fragment through the 64-position bottleneck instead (``correction=False``,
    the first design) collapses: MSE's best guess of a byte it cannot place exactly is a blurred average,
    and rounding that average almost never gives the right byte (4 % of text bytes right against 93 % for
    the corrupted input itself). The gate needs its own target because the repair's MSE alone barely
    penalises opening it on a clean byte (an off-by-one value costs (1/255)^2), and every such byte is lost.
    """

    VARIANT = "fragment-dae"
    # Checkpoints written before the option existed regress the whole fragment.
    # Checkpoints written before the option existed regress the replacement byte itself (delta=False).
    LEGACY_OPTIONS: ClassVar[dict[str, object]] = {"correction": False, "delta": False}
    GATE_BIAS_INIT = -4.0

    def __init__(
        self,
        fragment_size: int = 512,
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 7,
        correction: bool = True,
        delta: bool = True,
        gate_threshold: float = 0.5,
        snap_tolerance: float | None = None,
        variant: str = "fragment-dae",
        preprocessing: dict | None = None,
    ) -> None:
        super().__init__()
        self._init_common(variant, preprocessing)
        self._init_fragment(fragment_size, channels, kernel_size)
        if not isinstance(correction, bool):
            raise ValueError(f"correction must be true or false, got {correction!r}")
        self.correction = correction
        if not isinstance(delta, bool):
            raise ValueError(f"delta must be true or false, got {delta!r}")
        self.delta = delta
        self.set_decision(gate_threshold, snap_tolerance)
        if correction:
            self.decoder = nn.Sequential(*self._decoder_trunk(2))
        else:
            self.decoder = nn.Sequential(*self._decoder_trunk(1), nn.Sigmoid())
        init_weights(self)
        if correction:
            with torch.no_grad():
                self.decoder[-1].bias[1] = self.GATE_BIAS_INIT

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> the decoder's output: the fragment (``correction=False``), or the (value, gate) logits
        (B, 2, L) of the correction."""
        check_tensor(
            z, ("B", self.channels[-1], self.fragment_size // 2 ** len(self.channels)), what="latent"
        )
        return self.decoder(z)

    def correction_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(value, gate), each (B, 1, L): the replacement byte / 255 and the model's probability (in [0, 1])
        that the input byte is wrong (``correction=True`` only). With ``delta`` the value is the input plus
        a regressed change 2 sigmoid(.) - 1 in (-1, 1) (so it may leave [0, 1]; the bytes are clamped),
        else sigmoid(.) itself."""
        if not self.correction:
            raise ValueError("this fragment-dae regresses whole fragments (correction=False)")
        return self._parts(self.decode(self.encode(x)), x)

    def _parts(self, logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = torch.sigmoid(logits[:, :1])
        if self.delta:
            # Why a change and not the byte: the decoder sees the input only through the 64-position
            # bottleneck, so it cannot say what an arbitrary byte was to within a few units (the regressed
            # byte was within 16 of the right one too rarely to fix 2 % of text); but a flipped bit's change
            # is the same wherever it happens (-128 for every high bit set in text), and the value needs
            # only to be near the right single-bit neighbour (see decide_correction).
            value = x.to(value.dtype) + 2.0 * value - 1.0
        return value, torch.sigmoid(logits[:, 1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, L) floats in [0, 1] -> (B, 2, L): the repaired fragment x + g (v - x) and the gate g, both
        in [0, 1]; ``correction=False``: the repaired fragment (B, 1, L)."""
        if not self.correction:
            return self.decoder(self.encode(x))
        value, gate = self.correction_parts(x)
        return torch.cat([(x + gate * (value - x)).clamp(0.0, 1.0), gate], dim=1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The repaired bytes / 255, (B, 1, L)."""
        return (self.predict_bytes(x).to(x.dtype) / 255.0).unsqueeze(1)

    def predict_bytes(self, x: torch.Tensor) -> torch.Tensor:
        """Repaired bytes as a LongTensor (B, L) in 0..255: the input byte, or round(v * 255) where the gate
        says replace (g > 0.5); without correction round(x_hat * 255)."""
        return self.repair_from_latent(self.encode(x), x)

    def repair_from_latent(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:meth:`predict_bytes` from a latent ``z`` (as a receiver of the coded latent decodes it) and the
        corrupted input ``x`` that the correction edits: LongTensor (B, L) in 0..255."""
        out = self.decode(z).float()
        if not self.correction:
            return torch.round(out.squeeze(1) * 255).clamp(0, 255).long()
        value, gate = self._parts(out, x)
        return decide_correction(x, value, gate, self.gate_threshold, self.snap_tolerance)

    def set_decision(self, gate_threshold: float, snap_tolerance: float | None) -> None:
        """Set the rule :meth:`predict_bytes` turns (value, gate) into bytes with (see
        :func:`decide_correction`), and record it in the config a checkpoint saves."""
        threshold = float(gate_threshold)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"gate_threshold must lie strictly between 0 and 1, got {gate_threshold!r}")
        if snap_tolerance is not None and not 0.0 <= float(snap_tolerance) <= 255.0:
            raise ValueError(f"snap_tolerance must be None or in [0, 255] bytes, got {snap_tolerance!r}")
        self.gate_threshold = threshold
        self.snap_tolerance = None if snap_tolerance is None else float(snap_tolerance)
        _record_options(self, gate_threshold=self.gate_threshold, snap_tolerance=self.snap_tolerance)


class ByteFragmentAutoencoder(_FragmentModel, tags=["fragment-dae-bytes"]):
    """Same encoder as :class:`FragmentAutoencoder`; the decoder ends in a 256-way per-byte classifier.

    ``forward`` returns logits (B, 256, L) for ``F.cross_entropy(logits, target_bytes)``.
    The classifier also sees a learned embedding of each input byte (a skip connection around the
    bottleneck): most bytes of a corrupted fragment are right, and without the skip the network must first
    relearn the identity through a 64-position bottleneck before it can repair anything. With it, the
    encoder-decoder supplies the context that says which bytes to change. ``byte_embedding=0`` turns it off.
    """

    VARIANT = "fragment-dae-bytes"

    def __init__(
        self,
        fragment_size: int = 512,
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 7,
        head_channels: int = 64,
        byte_embedding: int = 32,
        change_threshold: float = 0.5,
        variant: str = "fragment-dae-bytes",
        preprocessing: dict | None = None,
    ) -> None:
        super().__init__()
        self._init_common(variant, preprocessing)
        self._init_fragment(fragment_size, channels, kernel_size)
        self.head_channels = check_positive_int("head_channels", head_channels)
        if int(byte_embedding) < 0:
            raise ValueError(f"byte_embedding must be >= 0, got {byte_embedding}")
        self.byte_embedding = int(byte_embedding)
        self.decoder = nn.Sequential(
            *self._decoder_trunk(head_channels),
            nn.BatchNorm1d(head_channels),
            nn.ReLU(inplace=True),
        )
        self.embed = nn.Embedding(N_BYTE_VALUES, self.byte_embedding) if self.byte_embedding else None
        self.head = nn.Conv1d(head_channels + self.byte_embedding, N_BYTE_VALUES, kernel_size=1)
        init_weights(self)
        self.set_decision(change_threshold)

    def set_decision(self, change_threshold: float) -> None:
        """Set the rule :meth:`predict_bytes` turns logits into bytes with (see :func:`decide_bytes`), and
        record it in the config a checkpoint saves."""
        threshold = float(change_threshold)
        if not 0.0 < threshold <= 0.5:
            raise ValueError(f"change_threshold must lie in (0, 0.5], got {change_threshold!r}")
        self.change_threshold = threshold
        _record_options(self, change_threshold=threshold)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Latent (and the input fragment, for the byte skip connection) -> logits (B, 256, L)."""
        check_tensor(
            z, ("B", self.channels[-1], self.fragment_size // 2 ** len(self.channels)), what="latent"
        )
        features = self.decoder(z)
        if self.embed is not None:
            if x is None:
                skip = features.new_zeros(features.shape[0], self.byte_embedding, features.shape[-1])
            else:
                byte_ids = torch.round(x[:, 0].float().clamp(0, 1) * 255).long()
                skip = self.embed(byte_ids).transpose(1, 2).to(features.dtype)
            features = torch.cat([features, skip], dim=1)
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, L) floats in [0, 1] -> per-byte logits (B, 256, L)."""
        return self.decode(self.encode(x), x)

    def count_parameters(self) -> dict[str, int]:
        counts = super().count_parameters()
        counts["decoder"] = counts["total"] - counts["encoder"]  # the byte embedding and head belong to it
        return counts

    def predict_bytes(self, x: torch.Tensor) -> torch.Tensor:
        """Repaired bytes, LongTensor (B, L) in 0..255: the most likely byte where the input byte's
        probability is under ``change_threshold`` (0.5: the plain argmax), else the input byte."""
        return self.repair_from_latent(self.encode(x), x)

    def repair_from_latent(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:meth:`predict_bytes` from a latent ``z`` (as a receiver of the coded latent decodes it) and the
        corrupted input ``x``: LongTensor (B, L) in 0..255."""
        return decide_bytes(x, self.decode(z, x), self.change_threshold)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Repaired bytes / 255 as (B, 1, L), i.e. in the input's space."""
        return (self.predict_bytes(x).to(x.dtype) / 255.0).unsqueeze(1)
