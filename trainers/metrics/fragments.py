"""Repair metrics for byte fragments: byte accuracy, bit error rate, and the identity baseline.

Fragments are byte values as uint8 numpy arrays or integer tensors of any shape ``(..., n)``. The models
work on floats byte/255; convert their output with :func:`to_bytes` first. A repair is judged against the
identity baseline (the corrupted input returned unchanged): a model that does not beat it is not working.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def to_bytes(x: ArrayLike) -> np.ndarray:
    """uint8 bytes from model-domain floats in [0, 1] (byte/255): round(v*255), clipped to 0..255."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().double().numpy()
    elif isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
        arr = x.astype(np.float64)
    else:
        raise ValueError(
            f"to_bytes: expected floats in [0, 1] (tensor or numpy array), got {type(x).__name__}"
            + (f" of dtype {x.dtype}" if isinstance(x, np.ndarray) else "")
        )
    if not np.isfinite(arr).all():
        raise ValueError("to_bytes: values contain NaN or infinity")
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def _as_bytes(a: ArrayLike, name: str) -> np.ndarray:
    """uint8 array of byte values; floats are refused because 3.0 could mean byte 3 or 3/255."""
    if isinstance(a, torch.Tensor):
        if a.is_floating_point() or a.is_complex() or a.dtype == torch.bool:
            raise ValueError(
                f"{name}: expected integer byte values (uint8/int tensor), got dtype {a.dtype}; "
                "convert model outputs in [0, 1] with to_bytes()"
            )
        arr = a.detach().cpu().numpy()
    elif isinstance(a, np.ndarray):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(
                f"{name}: expected integer byte values (uint8 array), got dtype {a.dtype}; "
                "convert model outputs in [0, 1] with to_bytes()"
            )
        arr = a
    else:
        raise ValueError(f"{name}: expected a uint8 numpy array or integer tensor, got {type(a).__name__}")
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one byte, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"{name}: byte values must lie in 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    return arr


def _as_mask(mask: ArrayLike, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Boolean mask of the given shape; 0/1 integers are accepted, anything else is refused."""
    if isinstance(mask, torch.Tensor):
        m = mask.detach().cpu().numpy()
    elif isinstance(mask, np.ndarray):
        m = mask
    else:
        raise ValueError(f"{name}: expected a boolean numpy array or tensor, got {type(mask).__name__}")
    if m.shape != shape:
        raise ValueError(f"{name}: mask shape {m.shape} must match the fragment shape {shape}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.integer) or not np.isin(m, (0, 1)).all():
            raise ValueError(f"{name}: expected a boolean (or 0/1) mask, got dtype {m.dtype}")
        m = m.astype(bool)
    return m


def _pair(clean: ArrayLike, other: ArrayLike, other_name: str) -> tuple[np.ndarray, np.ndarray]:
    c = _as_bytes(clean, "clean")
    o = _as_bytes(other, other_name)
    if c.shape != o.shape:
        raise ValueError(f"clean and {other_name} must have the same shape, got {c.shape} and {o.shape}")
    return c, o


def _accuracy(clean: np.ndarray, other: np.ndarray, mask: np.ndarray | None) -> float:
    equal = clean == other
    if mask is not None:
        equal = equal[mask]
    return float(equal.mean()) if equal.size else float("nan")


def _ber(clean: np.ndarray, other: np.ndarray) -> float:
    return float(np.unpackbits(np.bitwise_xor(clean, other)).sum() / (8 * clean.size))


def byte_accuracy(clean: ArrayLike, repaired: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Fraction of bytes equal to the clean ones, over all bytes or over ``mask`` only (nan if empty)."""
    c, r = _pair(clean, repaired, "repaired")
    m = None if mask is None else _as_mask(mask, c.shape, "mask")
    return _accuracy(c, r, m)


def bit_error_rate(clean: ArrayLike, repaired: ArrayLike) -> float:
    """Wrong bits over all bits: popcount(clean XOR repaired) / (8 * bytes)."""
    c, r = _pair(clean, repaired, "repaired")
    return _ber(c, r)


def fragment_metrics(
    clean: ArrayLike, corrupted: ArrayLike, repaired: ArrayLike, changed: ArrayLike | None = None
) -> dict[str, float]:
    """Repair figures next to the identity baseline (the corrupted input left as it is).

    ``changed`` marks the bytes the noise generator touched (derived as ``corrupted != clean`` when None).
    Keys: ``accuracy`` / ``identity_accuracy`` over all bytes; ``accuracy_corrupted`` /
    ``identity_accuracy_corrupted`` over the changed bytes (nan if none); ``ber`` / ``identity_ber``;
    ``fixed_fraction``: of the changed bytes that really differ from the clean ones (a substitution can draw
    the same value), the fraction the repair restored (nan if none); ``broken_fraction``: of the bytes the
    noise left intact, the fraction the repair made wrong (nan if none), the cost side of the repair.
    """
    c, k = _pair(clean, corrupted, "corrupted")
    _, r = _pair(clean, repaired, "repaired")
    ch = (k != c) if changed is None else _as_mask(changed, c.shape, "changed")
    damaged = ch & (k != c)
    intact = k == c
    return {
        "accuracy": _accuracy(c, r, None),
        "accuracy_corrupted": _accuracy(c, r, ch),
        "identity_accuracy": _accuracy(c, k, None),
        "identity_accuracy_corrupted": _accuracy(c, k, ch),
        "ber": _ber(c, r),
        "identity_ber": _ber(c, k),
        "fixed_fraction": _accuracy(c, r, damaged),
        "broken_fraction": float((r[intact] != c[intact]).mean()) if intact.any() else float("nan"),
    }
