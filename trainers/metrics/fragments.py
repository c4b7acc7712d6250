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


_POPCOUNT: dict[torch.device, torch.Tensor] = {}


def _popcount_table(device: torch.device) -> torch.Tensor:
    """Set bits of each byte value 0..255 (torch has no popcount), cached per device."""
    if device not in _POPCOUNT:
        _POPCOUNT[device] = torch.tensor(
            [bin(v).count("1") for v in range(256)], dtype=torch.int64, device=device
        )
    return _POPCOUNT[device]


def _byte_tensor(a: ArrayLike, name: str, device: torch.device | None) -> torch.Tensor:
    """int64 tensor of byte values 0..255 on ``device`` (a tensor stays on its own when None)."""
    if isinstance(a, torch.Tensor):
        if a.is_floating_point() or a.is_complex() or a.dtype == torch.bool:
            raise ValueError(
                f"{name}: expected integer byte values (uint8/int tensor), got dtype {a.dtype}; "
                "convert model outputs in [0, 1] with to_bytes()"
            )
        t = a.detach()
    else:
        t = torch.from_numpy(np.ascontiguousarray(_as_bytes(a, name)))
    t = t.to(device=device if device is not None else t.device, dtype=torch.int64)
    if t.numel() == 0:
        raise ValueError(f"{name}: expected at least one byte, got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t > 255)).any()):
        raise ValueError(f"{name}: byte values must lie in 0..255")
    return t


def _fragment_counts(
    clean: ArrayLike, corrupted: ArrayLike, repaired: ArrayLike, changed: ArrayLike | None
) -> dict[str, torch.Tensor]:
    """Per-fragment integer counts (..., ) behind every fragment metric, on the tensors' device."""
    ref = (
        clean if isinstance(clean, torch.Tensor) else repaired if isinstance(repaired, torch.Tensor) else None
    )
    device = ref.device if isinstance(ref, torch.Tensor) else None
    c = _byte_tensor(clean, "clean", device)
    k = _byte_tensor(corrupted, "corrupted", c.device)
    r = _byte_tensor(repaired, "repaired", c.device)
    for name, t in (("corrupted", k), ("repaired", r)):
        if t.shape != c.shape:
            raise ValueError(
                f"clean and {name} must have the same shape, got {tuple(c.shape)} and {tuple(t.shape)}"
            )
    if changed is None:
        ch = k != c
    else:
        if isinstance(changed, torch.Tensor):
            ch_t = changed.detach().to(c.device)
            if tuple(ch_t.shape) != tuple(c.shape):
                raise ValueError(
                    f"changed: mask shape {tuple(ch_t.shape)} must match the fragment shape {tuple(c.shape)}"
                )
            if ch_t.dtype != torch.bool and (
                ch_t.is_floating_point() or bool(((ch_t != 0) & (ch_t != 1)).any())
            ):
                raise ValueError(f"changed: expected a boolean (or 0/1) mask, got dtype {ch_t.dtype}")
            ch = ch_t.bool()
        else:
            ch = torch.from_numpy(_as_mask(changed, tuple(c.shape), "changed")).to(c.device)
    pop = _popcount_table(c.device)
    ok, ok_id = r == c, k == c
    damaged = ch & ~ok_id
    intact = ok_id

    def count(m: torch.Tensor) -> torch.Tensor:
        return m.sum(-1)

    return {
        "bytes": torch.full(c.shape[:-1], c.shape[-1], dtype=torch.int64, device=c.device),
        "correct": count(ok),
        "changed": count(ch),
        "correct_changed": count(ok & ch),
        "identity_correct": count(ok_id),
        "identity_correct_changed": count(ok_id & ch),
        "bit_errors": pop[r ^ c].sum(-1),
        "identity_bit_errors": pop[k ^ c].sum(-1),
        "damaged": count(damaged),
        "fixed": count(ok & damaged),
        "intact": count(intact),
        "broken": count(~ok & intact),
    }


def _ratios(n: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        num, den = num.double(), den.double()
        return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, float("nan")))

    return {
        "accuracy": ratio(n["correct"], n["bytes"]),
        "accuracy_corrupted": ratio(n["correct_changed"], n["changed"]),
        "identity_accuracy": ratio(n["identity_correct"], n["bytes"]),
        "identity_accuracy_corrupted": ratio(n["identity_correct_changed"], n["changed"]),
        "ber": ratio(n["bit_errors"], 8 * n["bytes"]),
        "identity_ber": ratio(n["identity_bit_errors"], 8 * n["bytes"]),
        "fixed_fraction": ratio(n["fixed"], n["damaged"]),
        "broken_fraction": ratio(n["broken"], n["intact"]),
    }


def fragment_metrics_per_fragment(
    clean: ArrayLike, corrupted: ArrayLike, repaired: ArrayLike, changed: ArrayLike | None = None
) -> dict[str, torch.Tensor]:
    """``fragment_metrics`` of each fragment (the last axis is the bytes), as float64 tensors of the batch
    shape on the inputs' device, NaN where a fragment has no byte to count (e.g. none corrupted)."""
    return _ratios(_fragment_counts(clean, corrupted, repaired, changed))


def fragment_metrics(
    clean: ArrayLike, corrupted: ArrayLike, repaired: ArrayLike, changed: ArrayLike | None = None
) -> dict[str, float]:
    """Repair figures next to the identity baseline (the corrupted input left as it is), pooled over every
    byte given (fragments of a batch weigh by their bytes). Computed with torch on the tensors' device.

    ``changed`` marks the bytes the noise generator touched (derived as ``corrupted != clean`` when None).
    Keys: ``accuracy`` / ``identity_accuracy`` over all bytes; ``accuracy_corrupted`` /
    ``identity_accuracy_corrupted`` over the changed bytes (nan if none); ``ber`` / ``identity_ber``;
    ``fixed_fraction``: of the changed bytes that really differ from the clean ones (a substitution can draw
    the same value), the fraction the repair restored (nan if none); ``broken_fraction``: of the bytes the
    noise left intact, the fraction the repair made wrong (nan if none), the cost side of the repair.
    """
    counts = _fragment_counts(clean, corrupted, repaired, changed)
    totals = {k: v.sum().reshape(1) for k, v in counts.items()}
    values = _ratios(totals)
    stacked = torch.cat([values[k] for k in values]).cpu().tolist()  # one transfer off the device
    return dict(zip(values, (float(v) for v in stacked), strict=True))
