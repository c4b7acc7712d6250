"""SAR image autoencoders: plain-conv baseline, post-activation ResNet, Variant B (pre-activation residual),
Variant C (B + a CBAM after every block, on the main path, as designed) and Variant C with the CBAM paper's
placement (on each block's residual branch, before the addition).

All five map (B, C, H, W) in [0, 1] with H, W multiples of 16 to a latent (B, latent_channels, H/16, W/16)
and back through a Sigmoid. They are fully convolutional; ``image_size`` is the training size, used only
for :meth:`get_latent_size` and :meth:`get_compression_ratio`. Every width derives from ``base_channels``
so that small smoke-test models (e.g. ``base_channels=8, image_size=64``) keep the same topology.
"""

import math
from typing import ClassVar

import torch
from torch import nn

from .base import (
    AutoencoderHubMixin,
    check_positive_int,
    check_tensor,
    init_weights,
)
from .blocks import (
    CBAM,
    GATES,
    PreActBlockWithBranchCBAM,
    PreActResidualBlock,
    ResidualBlock,
    ResidualBlockWithCBAM,
    ResidualBlockWithDownsample,
    ResidualBlockWithUpsample,
)
from .entropy import FactorizedPrior, check_entropy_model, rate_bits

__all__ = [
    "AttentionAutoencoder",
    "AttentionDecoder",
    "AttentionEncoder",
    "BranchAttentionAutoencoder",
    "BaselineAutoencoder",
    "BaselineDecoder",
    "BaselineEncoder",
    "PreActResidualDecoder",
    "PreActResidualEncoder",
    "ResNetAutoencoder",
    "ResNetDecoder",
    "ResNetEncoder",
    "ResidualAutoencoder",
]

DOWNSAMPLING = 16  # every SAR variant halves the resolution four times
# The rate weight of entropy_model=factorized when none is given: bits per pixel against the SAR loss
# (0.7 MSE + 0.3 (1 - SSIM), about 0.05-0.3 for these nets), so 0.01 trades 0.1 bpp for 0.001 of loss.
DEFAULT_RD_LAMBDA = 0.01


def _upsample() -> nn.Upsample:
    return nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------- baseline


class BaselineEncoder(nn.Module):
    """Four stride-2 KxK convs: in -> b -> 2b -> 4b (each + BN + ReLU) -> latent (linear)."""

    def __init__(
        self, in_channels: int = 1, base_channels: int = 64, latent_channels: int = 16, kernel_size: int = 5
    ) -> None:
        super().__init__()
        widths = [in_channels, base_channels, base_channels * 2, base_channels * 4]
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size, 2, pad, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        layers.append(nn.Conv2d(widths[-1], latent_channels, kernel_size, 2, pad))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BaselineDecoder(nn.Module):
    """Mirror of :class:`BaselineEncoder`: four (bilinear x2 upsample + KxK conv) stages, then Sigmoid."""

    def __init__(
        self, out_channels: int = 1, base_channels: int = 64, latent_channels: int = 16, kernel_size: int = 5
    ) -> None:
        super().__init__()
        widths = [latent_channels, base_channels * 4, base_channels * 2, base_channels]
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                _upsample(),
                nn.Conv2d(c_in, c_out, kernel_size, 1, pad, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        layers += [_upsample(), nn.Conv2d(widths[-1], out_channels, kernel_size, 1, pad), nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


# --------------------------------------------------------------------------------------------- ResNet


class ResNetEncoder(nn.Module):
    """Stem Conv7x7 + 4 stages of [ResidualBlock, ResidualBlockWithDownsample] (post-activation).

    Stage widths b, 2b, 4b, latent. The very last block skips its output ReLU so the latent code is not
    clipped at zero (a ReLU on a 16-channel bottleneck risks dead channels).
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 64, latent_channels: int = 16) -> None:
        super().__init__()
        b = base_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, b, 7, 1, 3, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)
        )
        widths = [b, b, 2 * b, 4 * b, latent_channels]
        stages = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            last = i == len(widths) - 2
            stages.append(
                nn.Sequential(
                    ResidualBlock(c_in, c_in),
                    ResidualBlockWithDownsample(c_in, c_out, activate_output=not last),
                )
            )
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


class ResNetDecoder(nn.Module):
    """Mirror of :class:`ResNetEncoder`: 4 x [ResidualBlockWithUpsample, ResidualBlock], Conv7x7 + Sigmoid."""

    def __init__(self, out_channels: int = 1, base_channels: int = 64, latent_channels: int = 16) -> None:
        super().__init__()
        b = base_channels
        widths = [latent_channels, 4 * b, 2 * b, b, b]
        self.stages = nn.ModuleList(
            nn.Sequential(ResidualBlockWithUpsample(c_in, c_out), ResidualBlock(c_out, c_out))
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Sequential(nn.Conv2d(b, out_channels, 7, 1, 3), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            z = stage(z)
        return self.head(z)


# ------------------------------------------------------------------------------------ Variants B and C


#: Where Variant C puts its CBAMs: "after" each residual block on the main path (the design), or on each
#: block's residual "branch" before the addition (Woo et al. 2018).
PLACEMENTS = ("after", "branch")


def _preact_block(
    c_in: int,
    c_out: int,
    stride: int,
    reduction: int | None,
    kernel_size: int,
    gate: str = "residual",
    placement: str = "after",
) -> nn.Module:
    if reduction is None:
        return PreActResidualBlock(c_in, c_out, stride)
    if placement == "branch":
        return PreActBlockWithBranchCBAM(c_in, c_out, stride, reduction, kernel_size, gate)
    return ResidualBlockWithCBAM(c_in, c_out, stride, reduction, kernel_size, gate)


class PreActResidualEncoder(nn.Module):
    """Variant B encoder: stem Conv7x7 + BN + ReLU, 4 stages of 2 pre-activation blocks, the first strided.

    Widths b -> 2b -> 4b -> 8b -> latent (64 -> 128 -> 256 -> 512 -> 16 at the defaults). With ``reduction``
    set, every block is followed by a CBAM (Variant C).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        latent_channels: int = 16,
        reduction: int | None = None,
        kernel_size: int = 7,
        gate: str = "residual",
        placement: str = "after",
    ) -> None:
        super().__init__()
        b = base_channels
        opts = (reduction, kernel_size, gate, placement)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, b, 7, 1, 3, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)
        )
        widths = [b, 2 * b, 4 * b, 8 * b, latent_channels]
        self.stages = nn.ModuleList(
            nn.Sequential(
                _preact_block(c_in, c_out, 2, *opts),
                _preact_block(c_out, c_out, 1, *opts),
            )
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


class PreActResidualDecoder(nn.Module):
    """Variant B decoder, mirroring the encoder: per stage bilinear x2 upsample + 1x1 conv, then 2 blocks.

    Widths latent -> 8b -> 4b -> 2b -> b; the 1x1 conv makes the channel change so both blocks of a stage keep
    identity shortcuts. Head BN -> ReLU -> Conv7x7(b -> out) + Sigmoid: pre-activation blocks leave their sum
    un-normalised, so (as in He et al. 2016) a final BN-ReLU precedes the output layer; without it the
    residual sums grow with depth and the Sigmoid starts saturated, with no gradient to learn from.
    """

    def __init__(
        self,
        out_channels: int = 1,
        base_channels: int = 64,
        latent_channels: int = 16,
        reduction: int | None = None,
        kernel_size: int = 7,
        gate: str = "residual",
        placement: str = "after",
    ) -> None:
        super().__init__()
        b = base_channels
        opts = (reduction, kernel_size, gate, placement)
        widths = [latent_channels, 8 * b, 4 * b, 2 * b, b]
        self.stages = nn.ModuleList(
            nn.Sequential(
                _upsample(),
                nn.Conv2d(c_in, c_out, 1),
                _preact_block(c_out, c_out, 1, *opts),
                _preact_block(c_out, c_out, 1, *opts),
            )
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Sequential(
            nn.BatchNorm2d(b), nn.ReLU(inplace=True), nn.Conv2d(b, out_channels, 7, 1, 3), nn.Sigmoid()
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            z = stage(z)
        return self.head(z)


class AttentionEncoder(PreActResidualEncoder):
    """Variant C encoder: :class:`PreActResidualEncoder` with a CBAM after every residual block (8 CBAMs)."""

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        latent_channels: int = 16,
        reduction: int = 16,
        kernel_size: int = 7,
        gate: str = "residual",
        placement: str = "after",
    ) -> None:
        super().__init__(in_channels, base_channels, latent_channels, reduction, kernel_size, gate, placement)


class AttentionDecoder(PreActResidualDecoder):
    """Variant C decoder: :class:`PreActResidualDecoder` with a CBAM after every residual block (8 CBAMs)."""

    def __init__(
        self,
        out_channels: int = 1,
        base_channels: int = 64,
        latent_channels: int = 16,
        reduction: int = 16,
        kernel_size: int = 7,
        gate: str = "residual",
        placement: str = "after",
    ) -> None:
        super().__init__(
            out_channels, base_channels, latent_channels, reduction, kernel_size, gate, placement
        )


# --------------------------------------------------------------------------------------------- wrappers


class SarAutoencoder(nn.Module, AutoencoderHubMixin, tags=["sar", "image", "autoencoder", "despeckling"]):
    """Shared API of the SAR autoencoders; subclasses build ``self.encoder`` and ``self.decoder``."""

    DOMAIN = "sar"

    # The encoder and decoder classes; they take (channels, base_channels, latent_channels, *options).
    ENCODER: ClassVar[type[nn.Module]]
    DECODER: ClassVar[type[nn.Module]]

    def _build(
        self,
        variant: str | None,
        preprocessing: dict | None,
        in_channels: int,
        base_channels: int,
        latent_channels: int,
        image_size: int,
        *options: int,
    ) -> None:
        """Check the common options, build the encoder and decoder with the variant's `options`, initialise.
        `variant` None means this class's own (a checkpoint's config.json names it)."""
        self._init_common(variant, preprocessing)
        self._init_sar(in_channels, base_channels, latent_channels, image_size)
        self.encoder = self.ENCODER(in_channels, base_channels, latent_channels, *options)
        self.decoder = self.DECODER(in_channels, base_channels, latent_channels, *options)
        self._finish_init()

    def _init_sar(self, in_channels: int, base_channels: int, latent_channels: int, image_size: int) -> None:
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.base_channels = check_positive_int("base_channels", base_channels)
        self.latent_channels = check_positive_int("latent_channels", latent_channels)
        self.image_size = check_positive_int("image_size", image_size)
        if image_size % DOWNSAMPLING:
            raise ValueError(f"image_size must be a multiple of {DOWNSAMPLING}, got {image_size}")

    def _finish_init(self) -> None:
        init_weights(self)
        for m in self.modules():
            if isinstance(m, CBAM):  # keeps its own init (non-negative squeeze; gate strengths)
                m.reset_parameters()
        # The output conv feeds a Sigmoid, not a ReLU: a variance-preserving (fan-in, linear) init keeps the
        # Sigmoid out of saturation at the start, where Kaiming's ReLU gain would push it to 0/1.
        head = [m for m in self.decoder.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.kaiming_normal_(head.weight, mode="fan_in", nonlinearity="linear")

    def _init_entropy(self, entropy_model: str, rd_lambda: float | None) -> None:
        """The optional learned entropy model of the latent (``entropy_model="factorized"``: Ballé et al.'s
        factorized prior, :mod:`models.entropy`) and the weight ``rd_lambda`` of its rate in the training loss
        (loss = distortion + rd_lambda * bits per pixel; default :data:`DEFAULT_RD_LAMBDA`)."""
        self.entropy_model = check_entropy_model(entropy_model)
        if entropy_model == "none":
            if rd_lambda not in (None, 0, 0.0):
                raise ValueError(
                    f"rd_lambda={rd_lambda!r} weighs a rate term that only entropy_model=factorized adds"
                )
            self.rd_lambda = None
            self.entropy = None
            return
        if rd_lambda is None:
            rd_lambda = DEFAULT_RD_LAMBDA
        number = isinstance(rd_lambda, int | float) and not isinstance(rd_lambda, bool)
        if not number or not math.isfinite(rd_lambda) or rd_lambda < 0:
            raise ValueError(f"rd_lambda must be a finite number >= 0, got {rd_lambda!r}")
        self.rd_lambda = float(rd_lambda)
        self.entropy = FactorizedPrior(self.latent_channels)
        self.last_rate_bits: torch.Tensor | None = None

    def quantise_latent(self, z: torch.Tensor) -> torch.Tensor:
        """What the decoder receives: with an entropy model, ``z`` + uniform noise in training and
        ``round(z)`` in eval (its rate in bits is kept in ``last_rate_bits``); without one, ``z``."""
        if self.entropy is None:
            return z
        with torch.autocast(z.device.type, enabled=False):  # the density needs float32
            z_hat, likelihoods = self.entropy(z.float())
        self.last_rate_bits = rate_bits(likelihoods)
        return z_hat.to(z.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) with H, W multiples of 16 -> latent (B, latent_channels, H/16, W/16)."""
        check_tensor(x, ("B", self.in_channels, "H", "W"), note=" with H and W multiples of 16")
        h, w = x.shape[-2:]
        if h % DOWNSAMPLING or w % DOWNSAMPLING or h == 0 or w == 0:
            raise ValueError(
                f"expected input of shape (B, {self.in_channels}, H, W) with H and W positive multiples of "
                f"{DOWNSAMPLING}, got {tuple(x.shape)}"
            )
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, latent_channels, h, w) -> reconstruction (B, C, 16h, 16w) in [0, 1]."""
        check_tensor(z, ("B", self.latent_channels, "h", "w"), what="latent")
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x_hat, z)``; with an entropy model, x_hat is decoded from the quantised latent."""
        z = self.encode(x)
        return self.decode(self.quantise_latent(z)), z

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the input's space (the caller picks eval mode / no_grad)."""
        return self.forward(x)[0]

    def get_latent_size(self) -> tuple[int, int, int]:
        """(C, h, w) of the latent for an ``image_size`` x ``image_size`` input."""
        side = self.image_size // DOWNSAMPLING
        return (self.latent_channels, side, side)

    def get_compression_ratio(self) -> float:
        """Input values per latent value: image_size^2 * in_channels / (h * w * C); 16.0 at the defaults."""
        c, h, w = self.get_latent_size()
        return float(self.image_size**2 * self.in_channels) / float(c * h * w)


def _odd_kernel(kernel_size: int, why: str) -> int:
    """`kernel_size` if it is a positive odd integer; `why` says what an even one would break."""
    k = check_positive_int("kernel_size", kernel_size)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd {why}, got {k}")
    return k


class _WidthOnlySarAutoencoder(SarAutoencoder):
    """A SAR autoencoder whose encoder and decoder take the widths only, and whose options are the common
    four (the ResNet and Variant B)."""

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        latent_channels: int = 16,
        image_size: int = 256,
        variant: str | None = None,
        preprocessing: dict | None = None,
        entropy_model: str = "none",
        rd_lambda: float | None = None,
    ) -> None:
        super().__init__()
        self._build(variant, preprocessing, in_channels, base_channels, latent_channels, image_size)
        self._init_entropy(entropy_model, rd_lambda)


class BaselineAutoencoder(SarAutoencoder, tags=["sar-baseline"]):
    """Plain convolutional autoencoder (~2.3M parameters at the defaults): the reference to beat."""

    VARIANT = "sar-baseline"
    ENCODER, DECODER = BaselineEncoder, BaselineDecoder

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        latent_channels: int = 16,
        image_size: int = 256,
        kernel_size: int = 5,
        variant: str | None = None,
        preprocessing: dict | None = None,
        entropy_model: str = "none",
        rd_lambda: float | None = None,
    ) -> None:
        super().__init__()
        k = self.kernel_size = _odd_kernel(kernel_size, "so stride-2 convs halve the size exactly")
        self._build(variant, preprocessing, in_channels, base_channels, latent_channels, image_size, k)
        self._init_entropy(entropy_model, rd_lambda)


class ResNetAutoencoder(_WidthOnlySarAutoencoder, tags=["sar-resnet"]):
    """Post-activation residual autoencoder (~5.6M parameters at the defaults)."""

    VARIANT = "sar-resnet"
    ENCODER, DECODER = ResNetEncoder, ResNetDecoder


class ResidualAutoencoder(_WidthOnlySarAutoencoder, tags=["sar-residual"]):
    """Variant B: pre-activation residual autoencoder, 8 blocks in the encoder and 8 in the decoder."""

    VARIANT = "sar-residual"
    ENCODER, DECODER = PreActResidualEncoder, PreActResidualDecoder


class AttentionAutoencoder(SarAutoencoder, tags=["sar-attention", "cbam"]):
    """Variant C: Variant B with a CBAM after every residual block, on the main path (16 CBAM modules).

    ``gate="residual"`` (the default) starts every CBAM near the identity and bounds each gate's factor to
    (0.5, 1.5), so the main path keeps its scale (see :class:`models.blocks.CBAM`);
    ``gate="sigmoid"`` is the paper's plain gate, with which this placement collapses to a near-constant
    output. Checkpoints saved before the option existed used the plain gate, and load with it.
    """

    VARIANT = "sar-attention"
    ENCODER, DECODER = AttentionEncoder, AttentionDecoder
    PLACEMENT = "after"
    # config.json options that older checkpoints lack, with the value those checkpoints were trained with.
    LEGACY_OPTIONS: ClassVar[dict[str, object]] = {"gate": "sigmoid"}

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        latent_channels: int = 16,
        image_size: int = 256,
        reduction: int = 16,
        kernel_size: int = 7,
        gate: str = "residual",
        variant: str | None = None,
        preprocessing: dict | None = None,
        entropy_model: str = "none",
        rd_lambda: float | None = None,
    ) -> None:
        super().__init__()
        self.reduction = check_positive_int("reduction", reduction)
        self.kernel_size = _odd_kernel(kernel_size, "so the spatial attention map keeps the feature size")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
        self.gate = gate
        self._build(
            variant,
            preprocessing,
            in_channels,
            base_channels,
            latent_channels,
            image_size,
            reduction,
            kernel_size,
            gate,
            self.PLACEMENT,
        )
        self._init_entropy(entropy_model, rd_lambda)


class BranchAttentionAutoencoder(AttentionAutoencoder, tags=["sar-attention-branch", "cbam"]):
    """Variant C with the CBAM paper's placement: a CBAM on every residual block's branch, before the
    addition (Woo et al. 2018), 16 CBAMs, the same parameters as ``sar-attention``. The identity path stays
    clean, so the paper's sigmoid gates (the default here) need no special initialisation."""

    VARIANT = "sar-attention-branch"
    PLACEMENT = "branch"
    LEGACY_OPTIONS: ClassVar[dict[str, object]] = {}

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        latent_channels: int = 16,
        image_size: int = 256,
        reduction: int = 16,
        kernel_size: int = 7,
        gate: str = "sigmoid",
        variant: str | None = None,
        preprocessing: dict | None = None,
        entropy_model: str = "none",
        rd_lambda: float | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            base_channels,
            latent_channels,
            image_size,
            reduction,
            kernel_size,
            gate,
            variant,
            preprocessing,
            entropy_model=entropy_model,
            rd_lambda=rd_lambda,
        )
