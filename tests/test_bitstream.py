"""The models' real bitstreams (trainers.evaluation.bitstream): bytes that decode to the exact quantised
latent, a length that follows the latent's entropy, and every bad input refused in one sentence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainers.evaluation import bitstream


@pytest.mark.parametrize("shape", [(16, 4, 4), (16, 16, 16), (128,), (32, 64)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_encode_decode_is_bit_exact(shape, bits):
    rng = np.random.default_rng(sum(shape) + bits)
    z = (rng.laplace(size=shape) * 3 + 1).astype(np.float32)
    enc = bitstream.encode(z, bits)
    symbols, latent = bitstream.decode(enc.data)
    assert symbols.shape == shape and latent.dtype == np.float32
    np.testing.assert_array_equal(symbols, enc.symbols)
    np.testing.assert_array_equal(latent, enc.latent)  # the receiver gets exactly what is scored
    # A uniform quantiser over the latent's range: the error is at most half a step.
    step = (z.max() - z.min()) / (2**bits - 1)
    assert np.abs(latent - z).max() <= step / 2 * (1 + 1e-5)


def test_rate_is_close_to_the_empirical_entropy_plus_side_information():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, 16, 16)).astype(np.float32)
    enc = bitstream.encode(z, 6)
    _, counts = np.unique(enc.symbols, return_counts=True)
    p = counts / counts.sum()
    entropy_bits = -(counts * np.log2(p)).sum()
    header_bits = 8 * (1 + 2 * 3 + 9 + 1 + 4)  # shape, bits, lo, hi, mode, one (mean, scale) pair
    # A fitted Gaussian on Gaussian data: within 3 % of the entropy, and never below it.
    assert entropy_bits <= 8 * len(enc.data) <= 1.03 * entropy_bits + header_bits + 32


def test_a_constant_latent_costs_a_few_bytes_and_decodes_to_itself():
    data = bitstream.encode(np.full((16, 2, 2), 0.25, np.float32), 8).data
    assert len(data) < 40
    np.testing.assert_array_equal(bitstream.decode(data)[1], np.full((16, 2, 2), 0.25, np.float32))


def test_more_bits_cost_more_bytes_and_less_error():
    z = np.random.default_rng(1).normal(size=(16, 8, 8)).astype(np.float32)
    sizes, errors = [], []
    for bits in bitstream.SWEEP_BITS:
        latent, nbytes = bitstream.roundtrip(z, bits)
        sizes.append(nbytes)
        errors.append(float(np.abs(latent - z).max()))
    assert sizes == sorted(sizes) and errors == sorted(errors, reverse=True)


@pytest.mark.parametrize(
    "z, bits, needle",
    [
        (np.zeros(0, np.float32), 8, "at least one value"),
        (np.array([1.0, math.nan], np.float32), 8, "NaN"),
        (np.zeros(3, np.float32), 0, "from 1 to 16"),
        (np.zeros(3, np.float32), 17, "from 1 to 16"),
    ],
)
def test_bad_input_is_refused(z, bits, needle):
    with pytest.raises(ValueError, match=needle):
        bitstream.encode(z, bits)


def test_truncated_bytes_are_not_a_bitstream():
    with pytest.raises(ValueError, match="not a latent bitstream"):
        bitstream.decode(b"\x03\x10")
