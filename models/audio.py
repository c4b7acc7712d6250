"""Convolutional VAEs for audio spectrograms, and their loss.

``ConvVAE`` ("audio-vae", v2.0): 2-channel input, channel 0 the non-negative normalised log-mel magnitude,
channel 1 the mel instantaneous frequency in [-1, 1]; five stride-2 conv blocks 2 -> 64 -> ... -> 1024,
latent 128, >10M parameters. ``MelConvVAE`` ("audio-vae-mel", v1.0): the 1-channel log-mel model it
replaces, four blocks, latent 64, ~3.1M parameters. Inputs are zero-padded (bottom/right) to a multiple of
2**len(widths) and outputs cropped back, so any (n_mels, n_frames) works.
"""

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    AutoencoderHubMixin,
    check_int_tuple,
    check_positive_int,
    check_tensor,
    count_module_parameters,
    init_weights,
    padded_size,
)

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "ConvVAE",
    "MelConvVAE",
    "active_units",
    "compute_kl_divergence",
    "kl_per_dimension",
    "spectrogram_mse",
    "vae_loss",
]

LOGVAR_CLAMP = 20.0  # keeps exp(logvar) finite in float32 when the encoder misbehaves early in training


def _check_dropout(dropout: float) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return float(dropout)


class ConvEncoder(nn.Module):
    """Conv2d(k3, s2, p1) + BN + ReLU + Dropout2d blocks, then lazily sized linear heads for mu and logvar.

    The heads are ``nn.LazyLinear`` so their input size follows from the conv stack, but they are
    materialised here by one dummy forward at ``input_shape``: safetensors cannot save uninitialised lazy
    parameters, and a checkpoint must save and load without the caller running a forward first.
    """

    def __init__(
        self,
        in_channels: int = 2,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        latent_dim: int = 128,
        input_shape: Sequence[int] = (128, 94),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.widths = check_int_tuple("widths", widths)
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.input_shape = check_int_tuple("input_shape", input_shape, length=2)
        self.multiple = 2 ** len(self.widths)
        self.padded_shape = tuple(padded_size(n, self.multiple) for n in self.input_shape)
        dropout = _check_dropout(dropout)

        blocks: list[nn.Module] = []
        c_in = self.in_channels
        for c_out in self.widths:
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            ]
            c_in = c_out
        self.conv = nn.Sequential(*blocks)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Lazy modules.*")
            self.fc_mu = nn.LazyLinear(self.latent_dim)
            self.fc_logvar = nn.LazyLinear(self.latent_dim)
        self._materialise()

    def _materialise(self) -> None:
        # Eval mode + no_grad: the dummy pass must not touch BatchNorm running statistics.
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self(torch.zeros(1, self.in_channels, *self.input_shape))
        finally:
            self.train(was_training)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, n_mels, n_frames) -> (mu, logvar), each (B, latent_dim); logvar clamped to [-20, 20]."""
        check_tensor(x, ("B", self.in_channels, *self.input_shape))
        pad_h = self.padded_shape[0] - x.shape[-2]
        pad_w = self.padded_shape[1] - x.shape[-1]
        h = self.conv(F.pad(x, (0, pad_w, 0, pad_h))).flatten(1)
        mu = self.fc_mu(h)
        logvar = self.fc_logvar(h).clamp(-LOGVAR_CLAMP, LOGVAR_CLAMP)
        return mu, logvar


class ConvDecoder(nn.Module):
    """Linear -> reshape -> ConvTranspose2d(k3, s2, p1, output_padding=1) blocks mirroring the encoder.

    All blocks but the last have BN + ReLU + Dropout2d; the last has no activation. Then Softplus on
    channel 0 (magnitude >= 0) and Tanh on the other channels (instantaneous frequency in [-1, 1]); the
    output is cropped to ``output_shape``.
    """

    def __init__(
        self,
        out_channels: int = 2,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        latent_dim: int = 128,
        output_shape: Sequence[int] = (128, 94),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.widths = check_int_tuple("widths", widths)
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.output_shape = check_int_tuple("output_shape", output_shape, length=2)
        multiple = 2 ** len(self.widths)
        self.base_shape = tuple(padded_size(n, multiple) // multiple for n in self.output_shape)
        dropout = _check_dropout(dropout)

        self.fc = nn.Linear(self.latent_dim, self.widths[-1] * self.base_shape[0] * self.base_shape[1])
        channels = [*reversed(self.widths), self.out_channels]
        blocks: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            blocks.append(
                nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=1)
            )
            if i < len(channels) - 2:
                blocks += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.Dropout2d(dropout)]
        self.deconv = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, out_channels, *output_shape)."""
        check_tensor(z, ("B", self.latent_dim), what="latent")
        h = self.fc(z).view(z.shape[0], self.widths[-1], *self.base_shape)
        h = self.deconv(h)[..., : self.output_shape[0], : self.output_shape[1]]
        magnitude = F.softplus(h[:, :1])
        if self.out_channels == 1:
            return magnitude
        return torch.cat([magnitude, torch.tanh(h[:, 1:])], dim=1)


class _SpectrogramVAE(nn.Module, AutoencoderHubMixin, tags=["audio", "vae", "spectrogram"]):
    """Shared VAE API; subclasses fix the channel count and call :meth:`_build`."""

    DOMAIN = "audio"
    IN_CHANNELS = 0

    def _build(
        self, latent_dim: int, n_mels: int, n_frames: int, widths: Sequence[int], dropout: float
    ) -> None:
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.n_mels = check_positive_int("n_mels", n_mels)
        self.n_frames = check_positive_int("n_frames", n_frames)
        self.widths = check_int_tuple("widths", widths)
        self.dropout = _check_dropout(dropout)
        shape = (self.n_mels, self.n_frames)
        self.encoder = ConvEncoder(self.IN_CHANNELS, self.widths, self.latent_dim, shape, self.dropout)
        self.decoder = ConvDecoder(self.IN_CHANNELS, self.widths, self.latent_dim, shape, self.dropout)
        init_weights(self)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, n_mels, n_frames) of one example."""
        return (self.IN_CHANNELS, self.n_mels, self.n_frames)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, n_mels, n_frames) -> (mu, logvar), each (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, C, n_mels, n_frames)."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): a sample that gradients can flow through."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(recon, mu, logvar)`` with ``recon`` decoded from a reparameterised sample."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction: decode(mu)."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    @torch.no_grad()
    def sample(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Decode ``n`` draws from the N(0, I) prior -> (n, C, n_mels, n_frames).

        Call ``model.eval()`` first: in train mode BatchNorm would fold these samples into its statistics.
        """
        check_positive_int("n", n)
        if device is None:
            device = next(self.parameters()).device
        return self.decode(torch.randn(n, self.latent_dim, device=device))

    def count_parameters(self) -> dict[str, int]:
        return {
            "encoder": count_module_parameters(self.encoder),
            "decoder": count_module_parameters(self.decoder),
            "total": count_module_parameters(self),
        }


class ConvVAE(_SpectrogramVAE, tags=["audio-vae", "instantaneous-frequency"]):
    """2-channel (magnitude + instantaneous frequency) VAE: 5 blocks 2 -> 64 -> ... -> 1024, latent 128."""

    VARIANT = "audio-vae"
    IN_CHANNELS = 2

    def __init__(
        self,
        latent_dim: int = 128,
        n_mels: int = 128,
        n_frames: int = 94,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        dropout: float = 0.1,
        variant: str = "audio-vae",
        preprocessing: dict | None = None,
    ) -> None:
        super().__init__()
        self._init_common(variant, preprocessing)
        self._build(latent_dim, n_mels, n_frames, widths, dropout)


class MelConvVAE(_SpectrogramVAE, tags=["audio-vae-mel", "log-mel"]):
    """1-channel log-mel ConvVAE (the v1.0 model): 4 blocks 1 -> 32 -> ... -> 256, latent 64, ~3.1M params."""

    VARIANT = "audio-vae-mel"
    IN_CHANNELS = 1

    def __init__(
        self,
        latent_dim: int = 64,
        n_mels: int = 128,
        n_frames: int = 94,
        widths: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.1,
        variant: str = "audio-vae-mel",
        preprocessing: dict | None = None,
    ) -> None:
        super().__init__()
        self._init_common(variant, preprocessing)
        self._build(latent_dim, n_mels, n_frames, widths, dropout)


def _kl_elements(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of every latent dimension of every example, (B, latent_dim)."""
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(
            f"expected mu and logvar of the same shape (B, latent_dim), "
            f"got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def _kl_per_example(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return _kl_elements(mu, logvar).sum(dim=1)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL of each latent dimension averaged over the batch, (latent_dim,): how many nats each one carries."""
    return _kl_elements(mu, logvar).mean(dim=0)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions in use (Burda et al. 2016): the variance over inputs of the posterior mean
    Cov_x(E_q[z_d | x]) above ``threshold``. ``mu`` is (N, latent_dim) over N inputs; a collapsed
    posterior (the same q(z|x) for every input) has none."""
    if mu.dim() != 2 or mu.shape[0] < 2:
        raise ValueError(f"expected posterior means (N, latent_dim) of N >= 2 inputs, got {tuple(mu.shape)}")
    return int((mu.double().var(dim=0) > threshold).sum())


RECON_WEIGHTINGS = ("plain", "magnitude")


def spectrogram_mse(recon: torch.Tensor, target: torch.Tensor, weighting: str = "plain") -> torch.Tensor:
    """Reconstruction error of (B, C, n_mels, n_frames) spectrograms.

    ``"plain"``: the MSE over all elements. ``"magnitude"`` (2-channel magnitude + IF input): the
    magnitude channel's MSE plus the IF channel's squared error weighted by the target magnitude,
    mean(m * (IF_hat - IF)^2). The phase of a near-silent bin is inaudible and random, yet its IF
    values vary over [-1, 1] (variance ~0.33 on speech against ~0.05 for the magnitude): with the plain
    MSE that noise dominated the loss and the magnitude channel learnt almost nothing. A 1-channel input
    has no IF, so both weightings are the plain MSE there.
    """
    if weighting not in RECON_WEIGHTINGS:
        raise ValueError(f"unknown reconstruction weighting {weighting!r}; choose one of {RECON_WEIGHTINGS}")
    if weighting == "plain" or recon.dim() != 4 or recon.shape[1] < 2:
        return F.mse_loss(recon, target, reduction="mean")
    magnitude = target[:, :1]
    mag_err = F.mse_loss(recon[:, :1], magnitude, reduction="mean")
    if_err = (magnitude * (recon[:, 1:] - target[:, 1:]).pow(2)).mean()
    return mag_err + if_err


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float = 1.0,
    free_bits: float = 0.0,
    weighting: str = "plain",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(total, recon_loss, kl_loss)``.

    recon: :func:`spectrogram_mse` with ``weighting`` (default the MSE averaged over all elements, any
    channel count); kl: KL(q(z|x) || N(0, I)) summed over the latent dimensions and averaged over the
    batch; total = recon + kl_weight * kl.

    ``free_bits`` > 0 (nats per latent dimension, Kingma et al. 2016): the KL in ``total`` is
    sum_d max(free_bits, KL_d) with KL_d the batch mean of dimension d, so a dimension carrying less than
    ``free_bits`` nats is not pushed towards the prior at all. That keeps the latent in use where the KL
    term would otherwise win and make q(z|x) the prior for every input (posterior collapse: the decoder
    then outputs one average spectrogram). ``kl_loss`` is always the plain KL, for logging.
    """
    if recon.shape != target.shape:
        raise ValueError(
            f"expected recon and target of the same shape, got {tuple(recon.shape)} and {tuple(target.shape)}"
        )
    if free_bits < 0:
        raise ValueError(f"free_bits must be >= 0 nats per latent dimension, got {free_bits}")
    recon_loss = spectrogram_mse(recon, target, weighting)
    per_dim = kl_per_dimension(mu, logvar)
    kl_loss = per_dim.sum()
    kl_term = per_dim.clamp(min=free_bits).sum() if free_bits > 0 else kl_loss
    return recon_loss + kl_weight * kl_term, recon_loss, kl_loss


def compute_kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """The KL term of :func:`vae_loss` as a float (for logging)."""
    with torch.no_grad():
        return float(_kl_per_example(mu, logvar).mean().item())
