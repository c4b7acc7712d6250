"""Residual and attention building blocks shared by the SAR autoencoders."""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CBAM",
    "ChannelAttention",
    "PreActResidualBlock",
    "ResidualBlock",
    "PreActBlockWithBranchCBAM",
    "ResidualBlockWithCBAM",
    "ResidualBlockWithDownsample",
    "ResidualBlockWithUpsample",
    "SpatialAttention",
]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every 3x3 conv here is followed (directly or after the residual add) by a BatchNorm.
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActResidualBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    BN -> ReLU -> Conv3x3(stride) -> BN -> ReLU -> Conv3x3, plus a shortcut that is the identity, or a 1x1
    conv with the stride when the shape changes. Nothing follows the addition, so the identity path stays
    clean from block to block (the output can be negative).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class ResidualBlock(nn.Module):
    """Post-activation residual block (He et al. 2015): Conv-BN-ReLU-Conv-BN, add shortcut, then ReLU.

    The shortcut is the identity, or 1x1 conv + BN with the stride when the shape changes.
    ``activate_output=False`` drops the final ReLU (used where the output is a latent code).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, activate_output: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.activate_output = activate_output
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.activate_output else out


class ResidualBlockWithDownsample(ResidualBlock):
    """Post-activation residual block that halves the resolution (stride-2 conv and projection shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, activate_output: bool = True) -> None:
        super().__init__(in_channels, out_channels, stride=2, activate_output=activate_output)


class ResidualBlockWithUpsample(ResidualBlock):
    """Bilinear x2 upsampling, then a post-activation residual block (avoids checkerboards)."""

    def __init__(self, in_channels: int, out_channels: int, activate_output: bool = True) -> None:
        super().__init__(in_channels, out_channels, stride=1, activate_output=activate_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), one MLP shared by both pools.

    Returns the attention weights, shape (B, C, 1, 1); the hidden width is max(C // reduction, 1) so that
    narrow layers (e.g. a 16-channel latent) still get a valid MLP.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels <= 0 or reduction <= 0:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}")
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start the squeeze layer as random non-negative averaging weights, U(0, 2/C).

        Max-pooled features are almost always positive, so a non-negative squeeze layer starts every hidden
        ReLU unit active; with a single hidden unit (a 16-channel latent) a unit that starts dead would turn
        the attention into a constant 0.5 that gets no gradient to recover. Averaging-scale weights keep the
        hidden values O(1), so the sigmoid does not start saturated; the expand layer is variance-preserving.
        """
        squeeze, expand = self.mlp[0], self.mlp[2]
        nn.init.uniform_(squeeze.weight, 0.0, 2.0 / squeeze.in_channels)
        nn.init.kaiming_normal_(expand.weight, mode="fan_in", nonlinearity="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(Conv_k([channel mean; channel max])), shape (B, 1, H, W)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


#: CBAM gate kinds: "sigmoid" multiplies by sigma(.) in (0, 1) as in the paper; "residual" by
#: 1 + tanh(k) (sigma(.) - 0.5), a factor in (0.5, 1.5) with a learned strength k started near 0, so the
#: module starts near the identity and no gate can shut or blow up the signal; "unit-mean" by sigma(.)
#: divided by its mean (over the channels, over the pixels), tried and found to drift (see CBAM).
GATES = ("sigmoid", "unit-mean", "residual")
# Scale of the gates' last-layer weights with gate="unit-mean": each gate starts within about 1 % of 1,
# while every parameter still gets a gradient from the first step (an exactly-zero layer would leave the
# layer before it without one).
UNIT_MEAN_GATE_INIT_STD = 1e-3
#: Initial strength of each gate with gate="residual" (the factor starts within 5 % of 1).
RESIDUAL_GATE_INIT = 0.1


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel attention, then spatial attention.

    gate="sigmoid" (the paper): out = x' * s(x') with x' = x * c(x), c and s the sigmoid attention maps.
    gate="residual": out = x' * (1 + tanh(k_s) (s(x') - 0.5)) with x' = x * (1 + tanh(k_c) (c(x) - 0.5)),
    learned strengths k started at 0.1. That is the gate for a CBAM on a network's main path (Variant C as
    designed, after each residual block), where every gate multiplies the whole signal and 32 of them
    compound: with the paper's gates (near 0.5 at the start) the signal shrinks by ~0.5**32 and the network
    outputs a near-constant image from the first step. Gates that may scale freely let the main path's
    scale run away instead: with 2 sigmoid gates the latent's std went from 6 to 860 in 40 steps, with
    unit-mean gates (each map divided by its mean, gate="unit-mean") to 10^4, and the output went flat both
    times. Bounded factors near 1 keep the latent's scale as in Variant B (std 16-18 over the same steps).
    gate="unit-mean": out = x' * s(x') / mean_hw s(x') with x' = x * c(x) / mean_c c(x).
    """

    def __init__(
        self, channels: int, reduction: int = 16, kernel_size: int = 7, gate: str = "sigmoid"
    ) -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
        self.gate = gate
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(kernel_size)
        if gate == "residual":
            # Per-gate strengths: each map acts as 1 + tanh(strength) (map - 0.5), in (0.5, 1.5); started
            # small (not 0) so the maps get a gradient from the first step.
            self.strength = nn.Parameter(torch.full((2,), RESIDUAL_GATE_INIT))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The channel MLP's own init; with gate="unit-mean" the two last layers start near zero, with
        gate="residual" the strengths start at RESIDUAL_GATE_INIT."""
        self.channel_attention.reset_parameters()
        if self.gate == "unit-mean":
            nn.init.normal_(self.channel_attention.mlp[2].weight, 0.0, UNIT_MEAN_GATE_INIT_STD)
            nn.init.normal_(self.spatial_attention.conv.weight, 0.0, UNIT_MEAN_GATE_INIT_STD)
        if self.gate == "residual":
            with torch.no_grad():
                self.strength.fill_(RESIDUAL_GATE_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate == "residual":
            k = torch.tanh(self.strength)
            x = x * (1 + k[0] * (self.channel_attention(x) - 0.5))
            return x * (1 + k[1] * (self.spatial_attention(x) - 0.5))
        c = self.channel_attention(x)
        if self.gate == "unit-mean":
            c = c / c.mean(dim=1, keepdim=True)
        x = x * c
        s = self.spatial_attention(x)
        if self.gate == "unit-mean":
            s = s / s.mean(dim=(2, 3), keepdim=True)
        return x * s


class ResidualBlockWithCBAM(nn.Module):
    """A :class:`PreActResidualBlock`, then a :class:`CBAM` (attention after the block, on the main path:
    Variant C as designed). ``gate`` defaults to "residual" for the reason :class:`CBAM` gives."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        reduction: int = 16,
        kernel_size: int = 7,
        gate: str = "residual",
    ) -> None:
        super().__init__()
        self.block = PreActResidualBlock(in_channels, out_channels, stride)
        self.cbam = CBAM(out_channels, reduction, kernel_size, gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbam(self.block(x))


class PreActBlockWithBranchCBAM(PreActResidualBlock):
    """A :class:`PreActResidualBlock` with a CBAM on its residual branch, before the addition (the CBAM
    paper's placement, Woo et al. 2018, Fig. 3): out = CBAM(F(x)) + shortcut(x). The identity path stays
    clean, so the paper's sigmoid gates only scale what each block adds."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        reduction: int = 16,
        kernel_size: int = 7,
        gate: str = "sigmoid",
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.cbam = CBAM(out_channels, reduction, kernel_size, gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return self.cbam(out) + self.shortcut(x)
