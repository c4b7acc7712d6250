"""A learned entropy model for a latent: the factorized prior of Ballé et al. 2018 ("Variational image
compression with a scale hyperprior", appendix 6.1), the model CompressAI calls ``EntropyBottleneck``.

Hand-written (about a hundred lines) rather than taken from CompressAI: CompressAI ships as a source tarball
only for this platform, builds a C++ extension, and its dependencies (torchvision) pull a different torch
than the one installed. The density is the same: per channel, a cumulative distribution c(x) built from
monotone layers ``f_k(x) = g_k(softplus(H_k) x + b_k)`` with ``g(x) = x + tanh(a) * tanh(x)`` and a final
sigmoid, so that the probability of the quantisation bin around x is ``c(x + 1/2) - c(x - 1/2)``. Training
replaces rounding by additive uniform noise (the "noise relaxation"), which makes the rate differentiable;
evaluation rounds. The rate of a latent is ``-log2`` of the product of its bins' probabilities, and the
bitstream (``trainers.evaluation.bitstream``) range-codes the rounded latent under the same probabilities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ENTROPY_MODELS = ("none", "factorized")
LIKELIHOOD_BOUND = 1e-9  # no bin is given less probability: its -log2 stays under 30 bits


class FactorizedPrior(nn.Module):
    """Ballé et al.'s non-parametric factorized density, one per latent channel.

    ``forward(z)`` returns ``(z_tilde, likelihoods)``: in training ``z + U(-1/2, 1/2)``, in eval
    ``round(z)``, and each value's bin probability. :meth:`bin_probabilities` gives the probabilities of
    whole-number symbols (for the range coder), in float64.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        self.channels = int(channels)
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def _logits_cumulative(self, x: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """The logit of c(x) for x of shape (C', 1, N) (the `channels` of this prior), in x's dtype."""
        logits = x
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            logits = torch.matmul(F.softplus(matrix[channels].to(x.dtype)), logits) + bias[channels].to(
                x.dtype
            )
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i][channels].to(x.dtype)) * torch.tanh(logits)
        return logits

    def _bin_likelihood(
        self, values: torch.Tensor, channels: slice = slice(None), step: float = 1.0
    ) -> torch.Tensor:
        """P(bin [v - step/2, v + step/2]) for values of shape (C', 1, N)."""
        lower = self._logits_cumulative(values - 0.5 * step, channels)
        upper = self._logits_cumulative(values + 0.5 * step, channels)
        # Subtract on the side of the sigmoid where it is flat (far tails stay accurate).
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_tilde, likelihoods), both of z's shape (B, C, ...)."""
        if z.ndim < 2 or z.shape[1] != self.channels:
            raise ValueError(
                f"the entropy model expects a latent with {self.channels} channels, got {tuple(z.shape)}"
            )
        z_tilde = z + torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else torch.round(z)
        values = z_tilde.float().transpose(0, 1).reshape(self.channels, 1, -1)
        lik = self._bin_likelihood(values).clamp_min(LIKELIHOOD_BOUND)
        shape = (z.shape[1], z.shape[0], *z.shape[2:])
        return z_tilde, lik.reshape(shape).transpose(0, 1).to(z.dtype)

    @torch.no_grad()
    def bin_probabilities(self, lo: list[int], hi: list[int], step: float = 1.0) -> list[torch.Tensor]:
        """Per channel c, the float64 probabilities of the symbols lo[c] .. hi[c] (inclusive) of a latent
        quantised with `step` (symbol k stands for k * step, its bin is k * step ± step / 2), each at least
        :data:`LIKELIHOOD_BOUND` so that any symbol in the range can be coded. float64 whatever precision the
        model runs in: encoder and decoder must build the same probabilities."""
        out = []
        for c in range(self.channels):
            k = torch.arange(int(lo[c]), int(hi[c]) + 1, dtype=torch.float64).view(1, 1, -1)
            lik = self._bin_likelihood(k * float(step), slice(c, c + 1), float(step))
            out.append(lik.reshape(-1).clamp_min(LIKELIHOOD_BOUND))
        return out


def rate_bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """Total information content of the latent, in bits: sum of -log2 of its bins' probabilities."""
    return -torch.log2(likelihoods.float()).sum()


def check_entropy_model(name: object) -> str:
    """`name` if it is a known entropy model, else a one-sentence ValueError."""
    if name not in ENTROPY_MODELS:
        raise ValueError(f"entropy_model must be one of {', '.join(ENTROPY_MODELS)}, got {name!r}")
    return str(name)


__all__ = ["ENTROPY_MODELS", "FactorizedPrior", "check_entropy_model", "rate_bits"]
