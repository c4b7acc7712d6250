"""Real bitstreams of a model's latent: uniform quantisation, then range coding with a fitted distribution.

The leaderboard's rate of a model is the length of these bytes, and its scores are those of the
reconstruction decoded from them, so a model pays for everything a receiver needs, like a codec's file.

One example's latent ``z`` (any shape; the first axis is the channel axis when it has two or more) becomes::

    u8   ndim, then ndim x u16 dims          the latent's shape
    u8   bits                                 symbols 0 .. 2**bits - 1
    f32  lo, f32 hi                           the quantiser's range (the example's min and max)
    u8   mode                                 bit 0: a distribution per channel; bit 1: Laplace (else Gauss)
    f16  mean, f16 scale (per channel or one) the fitted distribution, in symbol units
    u32  words                                the range coder's output (constriction)

A model trained with a learned entropy model (``entropy_model=factorized``, :mod:`models.entropy`) is coded
under that model's own density instead: the latent is rounded on a grid of ``step`` (1 is what it was trained
for) and each channel's symbols are range-coded with the probabilities of their bins under its learned
density (computed in float64 from the checkpoint, so encoder and decoder agree)::

    u8   ndim, then ndim x u16 dims          the latent's shape
    u8   0                                    (a learned-density stream)
    f32  step                                 the quantisation step
    C x (i16 lo, u16 span)                    each channel's symbols lie in lo .. lo + span
    u32  words                                the range coder's output

The symbols are ``round((z - lo) / step)`` with ``step = (hi - lo) / (2**bits - 1)``; the decoder gives
``lo + s * step`` in float32. The distribution is fitted per example (its moments), rounded to float16 before
use so that encoder and decoder build the identical model; the four modes are all tried and the shortest kept.
The entropy coding is constriction's range coder (a maintained library); only this small container format is
hand-written, since no library frames a latent with its side information.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Bits per latent value of the leaderboard's main row (6: within a few hundredths of a dB of 8 bits on the
#: reference checkpoints, at three quarters of the bytes) and of each model's rate-distortion sweep.
DEFAULT_BITS = 6
SWEEP_BITS: tuple[int, ...] = (2, 3, 4, 6, 8)
MAX_BITS = 16
_MIN_SCALE = 0.05  # a channel that is (nearly) constant still needs a proper distribution
_PER_CHANNEL, _LAPLACE = 1, 2


@dataclass(frozen=True)
class Encoded:
    """One example's bitstream and what it decodes to."""

    data: bytes
    symbols: np.ndarray  # int32, the latent's shape
    latent: np.ndarray  # float32 dequantised latent, what the model's decoder receives


def _check_latent(z: np.ndarray) -> np.ndarray:
    arr = np.asarray(z, dtype=np.float32)
    if arr.ndim == 0 or arr.size == 0:
        raise ValueError(f"a latent to encode must have at least one value, got shape {arr.shape}")
    if arr.ndim > 255 or max(arr.shape) > 0xFFFF:
        raise ValueError(f"latent shape {arr.shape} does not fit the container (dims up to 65535)")
    if not np.isfinite(arr).all():
        raise ValueError("the latent holds NaN or infinite values: it cannot be quantised")
    return arr


def _step(lo: np.float32, hi: np.float32, bits: int) -> np.float32:
    span = np.float32(hi - lo)
    return np.float32(span / np.float32(2**bits - 1)) if span > 0 else np.float32(1.0)


def _dequantise(symbols: np.ndarray, lo: np.float32, step: np.float32) -> np.ndarray:
    return (lo + symbols.astype(np.float32) * step).astype(np.float32)


def _channels(shape: tuple[int, ...]) -> int:
    return shape[0] if len(shape) >= 2 else 1


def _fit(symbols: np.ndarray, mode: int) -> tuple[np.ndarray, np.ndarray]:
    """Float16 (mean, scale) per channel or one pair, in symbol units (Laplace scale = mean absolute
    deviation, Gaussian = standard deviation)."""
    s = symbols.astype(np.float64)
    groups = s.reshape(_channels(symbols.shape), -1) if mode & _PER_CHANNEL else s.reshape(1, -1)
    mean = groups.mean(axis=1)
    scale = np.abs(groups - mean[:, None]).mean(axis=1) if mode & _LAPLACE else groups.std(axis=1)
    return mean.astype(np.float16), np.maximum(scale, _MIN_SCALE).astype(np.float16)


def _per_symbol(params: np.ndarray, shape: tuple[int, ...], mode: int) -> np.ndarray:
    per = int(np.prod(shape)) // (params.size if mode & _PER_CHANNEL else 1)
    return np.repeat(params.astype(np.float64), per if mode & _PER_CHANNEL else int(np.prod(shape)))


def _family(mode: int, bits: int):  # noqa: ANN202 - a constriction model family
    import constriction

    model = constriction.stream.model
    family = model.QuantizedLaplace if mode & _LAPLACE else model.QuantizedGaussian
    return family(0, 2**bits - 1)


def _payload(symbols: np.ndarray, mode: int, bits: int) -> tuple[bytes, bytes]:
    import constriction

    mean, scale = _fit(symbols, mode)
    enc = constriction.stream.queue.RangeEncoder()
    flat = symbols.reshape(-1).astype(np.int32)
    enc.encode(
        flat,
        _family(mode, bits),
        _per_symbol(mean, symbols.shape, mode),
        _per_symbol(scale, symbols.shape, mode),
    )
    side = struct.pack("<B", mode) + np.stack([mean, scale], axis=1).astype("<f2").tobytes()
    return side, enc.get_compressed().astype("<u4").tobytes()


def encode(z: np.ndarray, bits: int = DEFAULT_BITS) -> Encoded:
    """The bitstream of one example's latent at `bits` bits per value (before entropy coding)."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits per latent value must be a whole number from 1 to {MAX_BITS}, got {bits!r}")
    arr = _check_latent(z)
    lo, hi = np.float32(arr.min()), np.float32(arr.max())
    step = _step(lo, hi, int(bits))
    symbols = np.clip(np.rint((arr - lo) / step), 0, 2**bits - 1).astype(np.int32)
    head = struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}H", *arr.shape)
    head += struct.pack("<Bff", int(bits), float(lo), float(hi))
    best = min((_payload(symbols, mode, int(bits)) for mode in range(4)), key=lambda p: len(p[0]) + len(p[1]))
    return Encoded(head + best[0] + best[1], symbols, _dequantise(symbols, lo, step))


def decode(data: bytes, prior: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(symbols int32, dequantised float32 latent) of a bitstream written by :func:`encode` or, given the
    model's `prior`, by :func:`encode_learned`."""
    import constriction

    try:
        ndim = data[0]
        shape = struct.unpack_from(f"<{ndim}H", data, 1)
        pos = 1 + 2 * ndim
        if data[pos] == 0:
            return _decode_learned(data, tuple(shape), pos + 1, prior)
        bits, lo, hi = struct.unpack_from("<Bff", data, pos)
        pos += 9
        mode = data[pos]
        pos += 1
        k = shape[0] if mode & _PER_CHANNEL and ndim >= 2 else 1
        params = np.frombuffer(data, dtype="<f2", count=2 * k, offset=pos).reshape(k, 2)
        pos += 4 * k
        words = np.frombuffer(data[pos:], dtype="<u4").astype(np.uint32)
    except (IndexError, struct.error, ValueError) as exc:
        raise ValueError(f"not a latent bitstream: {exc}") from exc
    n = int(np.prod(shape))
    dec = constriction.stream.queue.RangeDecoder(words)
    means = _per_symbol(params[:, 0], tuple(shape), mode)
    scales = _per_symbol(params[:, 1], tuple(shape), mode)
    symbols = np.asarray(dec.decode(_family(mode, bits), means, scales), dtype=np.int32)
    if symbols.size != n:
        raise ValueError(f"the bitstream decoded {symbols.size} symbols for a latent of {n}")
    symbols = symbols.reshape(shape)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    return symbols, _dequantise(symbols, lo32, _step(lo32, hi32, int(bits)))


#: The quantisation steps of a learned-density model's sweep (low rate first); 1 is its main point.
LEARNED_STEPS: tuple[float, ...] = (2.0, 1.5, 1.0, 0.75, 0.5)
LEARNED_MAIN_STEP = 1.0


def encode_learned(z: np.ndarray, prior: Any, step: float = LEARNED_MAIN_STEP) -> Encoded:
    """The bitstream of one example's (C, ...) latent rounded on a grid of `step`, range-coded per channel
    under `prior`'s learned density (a :class:`models.entropy.FactorizedPrior`)."""
    import constriction

    arr = _check_latent(z)
    if arr.ndim < 2 or arr.shape[0] != prior.channels:
        raise ValueError(f"a latent of {prior.channels} channels is needed, got shape {arr.shape}")
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"the quantisation step must be a positive number, got {step!r}")
    symbols = np.rint(arr / np.float32(step)).astype(np.int64)
    flat = symbols.reshape(arr.shape[0], -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    if lo.min() < -0x8000 or (hi - lo).max() > 0xFFFF or hi.max() > 0x7FFF:
        raise ValueError(f"the latent's symbols at step {step:g} span more than 16 bits: it cannot be coded")
    head = struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}H", *arr.shape)
    head += struct.pack("<Bf", 0, float(step))
    head += b"".join(struct.pack("<hH", int(a), int(b - a)) for a, b in zip(lo, hi, strict=True))
    enc = constriction.stream.queue.RangeEncoder()
    for c, probs in enumerate(prior.bin_probabilities(lo.tolist(), hi.tolist(), float(np.float32(step)))):
        if hi[c] > lo[c]:  # a constant channel is all in its header (constriction needs two symbols)
            model = constriction.stream.model.Categorical(probs.numpy(), perfect=False)
            enc.encode((flat[c] - lo[c]).astype(np.int32), model)
    data = head + enc.get_compressed().astype("<u4").tobytes()
    symbols = symbols.astype(np.int32)
    return Encoded(data, symbols, (symbols.astype(np.float32) * np.float32(step)).astype(np.float32))


def _decode_learned(
    data: bytes, shape: tuple[int, ...], pos: int, prior: Any
) -> tuple[np.ndarray, np.ndarray]:
    import constriction

    if prior is None:
        raise ValueError("this bitstream was coded under a learned density: decoding needs the model's prior")
    (step,) = struct.unpack_from("<f", data, pos)
    pos += 4
    c = shape[0]
    ranges = [struct.unpack_from("<hH", data, pos + 4 * k) for k in range(c)]
    pos += 4 * c
    words = np.frombuffer(data[pos:], dtype="<u4").astype(np.uint32)
    lo = [r[0] for r in ranges]
    hi = [r[0] + r[1] for r in ranges]
    dec = constriction.stream.queue.RangeDecoder(words)
    per = int(np.prod(shape[1:]))
    flat = np.empty((c, per), dtype=np.int32)
    for k, probs in enumerate(prior.bin_probabilities(lo, hi, float(step))):
        if hi[k] == lo[k]:
            flat[k] = lo[k]
            continue
        model = constriction.stream.model.Categorical(probs.numpy(), perfect=False)
        flat[k] = np.asarray(dec.decode(model, per), dtype=np.int32) + lo[k]
    symbols = flat.reshape(shape)
    return symbols, (symbols.astype(np.float32) * np.float32(step)).astype(np.float32)


def roundtrip(z: np.ndarray, bits: int = DEFAULT_BITS) -> tuple[np.ndarray, int]:
    """(the latent decoded from the bytes, number of bytes): what a receiver of the bitstream gets."""
    data = encode(z, bits).data
    return decode(data)[1], len(data)


__all__ = [
    "DEFAULT_BITS",
    "LEARNED_MAIN_STEP",
    "LEARNED_STEPS",
    "SWEEP_BITS",
    "Encoded",
    "decode",
    "encode",
    "encode_learned",
    "roundtrip",
]
