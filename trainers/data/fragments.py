"""512-byte file fragments from real files, and the channel noise that the denoising autoencoder repairs.

A fragment is seen by the model as ``(1, 512)`` floats = byte / 255. The default corpus is files that every
Python installation has, so the built-in data set needs no download and contains several file types
(source text, bytecode, shared libraries, compressed archives).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import sysconfig
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from trainers.data.files import folder_files

FRAGMENT_SIZE = 512


# ------------------------------------------------------------------------------------------------- corpus
def _evenly_spaced(items: list[Path], k: int) -> list[Path]:
    """k items spread over the sorted list, so a capped corpus still spans many packages."""
    if len(items) <= k:
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in idx]


def default_corpus_paths(max_files: int = 256, min_size: int = FRAGMENT_SIZE) -> list[Path]:
    """Real files of the running Python installation: stdlib .py text, .pyc bytecode, lib-dynload shared
    libraries and ensurepip's bundled wheels (zip archives).

    The order is deterministic and interleaves the four kinds round-robin, so ``paths[:n]`` keeps a mix.
    Files smaller than ``min_size`` bytes are left out (they hold no full fragment).
    """
    if max_files < 1:
        raise ValueError(f"max_files must be at least 1, got {max_files}")
    return list(_corpus_paths(int(max_files), int(min_size)))


def installation_stdlib() -> tuple[Path, Path]:
    """(stdlib, platstdlib) of the Python *installation*, also when running inside a virtual environment.

    In a venv ``sysconfig``'s ``platstdlib`` is the venv's own folder (``{platbase}`` is ``sys.exec_prefix``),
    which has no ``lib-dynload``: the corpus silently lost its shared libraries there. The installation's
    prefixes (``sys.base_prefix``, ``sys.base_exec_prefix``) give a venv the same files as a system install.
    """
    bases = {
        "base": sys.base_prefix,
        "installed_base": sys.base_prefix,
        "platbase": sys.base_exec_prefix,
        "installed_platbase": sys.base_exec_prefix,
    }
    paths = sysconfig.get_paths(vars=bases)
    return Path(paths["stdlib"]), Path(paths["platstdlib"])


@functools.lru_cache(maxsize=8)
def _corpus_paths(max_files: int, min_size: int) -> tuple[Path, ...]:
    # Walking the stdlib's ~25k .pyc files takes a second or two; train and val datasets share the walk.
    stdlib, platstdlib = installation_stdlib()

    def usable(paths: list[Path]) -> list[Path]:
        out = []
        for p in sorted(set(paths)):
            try:
                if p.is_file() and p.stat().st_size >= min_size and os.access(p, os.R_OK):
                    out.append(p)
            except OSError:
                continue
        return out

    kinds = [
        usable([p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts]),
        usable([p for p in stdlib.rglob("__pycache__/*.pyc") if "site-packages" not in p.parts]),
        usable(
            list((platstdlib / "lib-dynload").glob("*.so")) + list((platstdlib / "lib-dynload").glob("*.pyd"))
        ),
        usable(list((stdlib / "ensurepip").rglob("*.whl"))),
    ]
    kinds = [k for k in kinds if k]
    if not kinds:
        raise FileNotFoundError(f"no corpus files found under the Python installation at {stdlib}")
    # Split the cap evenly; kinds with fewer files leave their share to the others.
    quotas = [0] * len(kinds)
    remaining = max_files
    open_kinds = list(range(len(kinds)))
    while remaining > 0 and open_kinds:
        share = max(1, remaining // len(open_kinds))
        for j in list(open_kinds):
            take = min(share, len(kinds[j]) - quotas[j], remaining)
            quotas[j] += take
            remaining -= take
            if quotas[j] == len(kinds[j]):
                open_kinds.remove(j)
            if remaining == 0:
                break
    chosen = [_evenly_spaced(k, q) for k, q in zip(kinds, quotas, strict=True)]
    out: list[Path] = []
    for i in range(max(len(c) for c in chosen)):
        out.extend(c[i] for c in chosen if i < len(c))
    return tuple(out)


def read_fragment(path: str | Path, offset: int = 0, fragment_size: int = FRAGMENT_SIZE) -> np.ndarray:
    """``fragment_size`` bytes of ``path`` starting at ``offset``, as uint8."""
    path = Path(path)
    if fragment_size < 1:
        raise ValueError(f"fragment_size must be at least 1, got {fragment_size}")
    if offset < 0:
        raise ValueError(f"offset must be non-negative, got {offset}")
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty; a fragment needs {fragment_size} bytes")
    if size < fragment_size:
        raise ValueError(f"{path} is {size} bytes; a fragment needs {fragment_size}")
    if offset + fragment_size > size:
        raise ValueError(
            f"offset {offset} + {fragment_size} bytes runs past the end of {path} ({size} bytes); "
            f"the last valid offset is {size - fragment_size}"
        )
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(fragment_size)
    except OSError as e:
        raise ValueError(f"could not read {path}: {e}") from e
    if len(data) != fragment_size:  # the file shrank while we read it
        raise ValueError(
            f"could only read {len(data)} of {fragment_size} bytes from {path} at offset {offset}"
        )
    return np.frombuffer(data, dtype=np.uint8).copy()


# -------------------------------------------------------------------------------------------------- noise
def _check_rate(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


class NoiseGenerator:
    """Channel noise on byte arrays: independent bit flips, byte substitutions, zeroed runs (erasures) and
    Gilbert–Elliott bursts.

    Bursts follow a two-state Markov chain per byte (good → bad with ``burst_p_enter``, bad → good with
    ``burst_p_exit``); bits flip with ``bit_error_rate`` in the good state and ``burst_bit_error_rate`` in
    the bad one. The chain starts in its stationary distribution, so the long-run fraction of bytes in
    the bad state is ``p_enter / (p_enter + p_exit)``. The order is bit flips, then substitutions, then
    erasures, so an erased run stays zero.
    """

    def __init__(
        self,
        bit_error_rate: float = 0.005,
        substitution_rate: float = 0.01,
        erasure_rate: float = 0.002,
        erasure_length: tuple[int, int] = (4, 32),
        burst_p_enter: float = 0.0,
        burst_p_exit: float = 0.2,
        burst_bit_error_rate: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.bit_error_rate = _check_rate("bit_error_rate", bit_error_rate)
        self.substitution_rate = _check_rate("substitution_rate", substitution_rate)
        self.erasure_rate = _check_rate("erasure_rate", erasure_rate)
        self.burst_p_enter = _check_rate("burst_p_enter", burst_p_enter)
        self.burst_p_exit = _check_rate("burst_p_exit", burst_p_exit)
        self.burst_bit_error_rate = _check_rate("burst_bit_error_rate", burst_bit_error_rate)
        if self.burst_p_enter > 0 and self.burst_p_exit == 0:
            raise ValueError("burst_p_exit must be > 0 when burst_p_enter > 0 (a burst would never end)")
        try:
            lo, hi = (int(v) for v in erasure_length)
        except (TypeError, ValueError):
            raise ValueError(
                f"erasure_length must be a pair (min, max) of integers, got {erasure_length!r}"
            ) from None
        if not 1 <= lo <= hi:
            raise ValueError(f"erasure_length must satisfy 1 <= min <= max, got {erasure_length!r}")
        self.erasure_length = (lo, hi)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bit_error_rate": self.bit_error_rate,
            "substitution_rate": self.substitution_rate,
            "erasure_rate": self.erasure_rate,
            "erasure_length": list(self.erasure_length),
            "burst_p_enter": self.burst_p_enter,
            "burst_p_exit": self.burst_p_exit,
            "burst_bit_error_rate": self.burst_bit_error_rate,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseGenerator:
        if not isinstance(d, dict):
            raise ValueError(f"expected a dict of NoiseGenerator parameters, got {type(d).__name__}")
        known = set(cls().to_dict())
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown NoiseGenerator parameters {unknown}; expected some of {sorted(known)}")
        kwargs = dict(d)
        if "erasure_length" in kwargs:
            kwargs["erasure_length"] = tuple(kwargs["erasure_length"])
        return cls(**kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"NoiseGenerator({args})"

    # The bad-state mask of one row: alternating geometric sojourns, drawn in vectorised chunks.
    def _burst_states(self, n: int, rng: np.random.Generator) -> np.ndarray:
        p_in, p_out = self.burst_p_enter, self.burst_p_exit
        state = bool(rng.random() < p_in / (p_in + p_out))
        lengths: list[np.ndarray] = []
        states: list[np.ndarray] = []
        covered = 0
        while covered < n:
            # Expected cycle length 1/p_in + 1/p_out; draw enough cycles for the rest of the row at once.
            k = int(min(n, max(8, 2 * (n - covered) / (1 / p_in + 1 / p_out)))) + 1
            first, second = (p_out, p_in) if state else (p_in, p_out)
            pair = np.empty(2 * k, dtype=np.int64)
            pair[0::2] = rng.geometric(first, size=k)
            pair[1::2] = rng.geometric(second, size=k)
            st = np.empty(2 * k, dtype=bool)
            st[0::2], st[1::2] = state, not state
            lengths.append(pair)
            states.append(st)
            covered += int(pair.sum())
        return np.repeat(np.concatenate(states), np.concatenate(lengths))[:n]

    def __call__(
        self, data: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Corrupt ``data`` (uint8, shape ``(..., n)``; each row along the last axis is one stream).

        Returns ``(corrupted, changed)`` where ``changed == (corrupted != data)``. The input is not
        modified. Without ``rng`` the generator's own stream (seeded by ``seed``) is used and advances.
        """
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            got = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"NoiseGenerator expects a uint8 numpy array of shape (..., n), got {got}")
        if data.ndim < 1:
            raise ValueError("NoiseGenerator expects an array of shape (..., n), got a scalar")
        if rng is None:
            rng = self._rng
        if data.size == 0:
            return data.copy(), np.zeros(data.shape, dtype=bool)
        out = data.reshape(-1, data.shape[-1]).copy()
        n_rows, n = out.shape

        # Bit flips, at a per-byte BER that depends on the burst state.
        ber = np.full((n_rows, n), self.bit_error_rate, dtype=np.float32)
        if self.burst_p_enter > 0:
            for r in range(n_rows):
                ber[r, self._burst_states(n, rng)] = self.burst_bit_error_rate
        flat = out.reshape(-1)
        for rate in np.unique(ber):
            if rate <= 0:
                continue
            # Sparse but exact: the number of flipped bits among independent Bernoulli(rate) bits is
            # Binomial(bits, rate) and, given the count, their positions are uniform without replacement.
            # Drawing 8 uniforms per byte instead made this the slowest step of the fragment data pipeline.
            byte_index = np.flatnonzero(ber.reshape(-1) == rate)
            n_bits = byte_index.size * 8
            chosen = _bernoulli_positions(rng, n_bits, float(rate))
            masks = np.left_shift(1, chosen % 8).astype(np.uint8)
            np.bitwise_xor.at(flat, byte_index[chosen // 8], masks)

        if self.substitution_rate > 0:
            hit = _bernoulli_positions(rng, flat.size, self.substitution_rate)
            # Adding 1..255 mod 256 picks uniformly among the 255 *other* values.
            delta = rng.integers(1, 256, size=hit.size, dtype=np.int64)
            flat[hit] = ((flat[hit].astype(np.int64) + delta) % 256).astype(np.uint8)

        if self.erasure_rate > 0:
            starts = np.stack(np.divmod(_bernoulli_positions(rng, flat.size, self.erasure_rate), n), axis=1)
            lo, hi = self.erasure_length
            lengths = rng.integers(lo, hi + 1, size=len(starts))
            # Mark +1 at each run start and -1 past its end; a positive running sum means "erased".
            marks = np.zeros((n_rows, n + 1), dtype=np.int32)
            np.add.at(marks, (starts[:, 0], starts[:, 1]), 1)
            np.add.at(marks, (starts[:, 0], np.minimum(starts[:, 1] + lengths, n)), -1)
            out[np.cumsum(marks[:, :n], axis=1) > 0] = 0

        out = out.reshape(data.shape)
        return out, out != data


def _bernoulli_positions(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Sorted indices of the successes among n independent Bernoulli(rate) trials, without drawing n numbers.

    The count is Binomial(n, rate) and, given the count, the positions are uniform without replacement:
    the same distribution as thresholding n uniforms, at a cost proportional to the count.
    """
    return np.sort(rng.choice(n, size=int(rng.binomial(n, rate)), replace=False))


# ----------------------------------------------------------------------------------------------- file types
FILE_TYPES: tuple[str, ...] = ("text", "elf", "compressed", "bytecode", "other")
# Leading bytes of compressed containers and of media that is compressed inside (their fragments look
# alike: near-random bytes that no repair can predict).
_COMPRESSED_MAGIC: tuple[bytes, ...] = (
    b"PK\x03\x04",  # zip, wheel, jar, docx
    b"PK\x05\x06",  # empty zip
    b"\x1f\x8b",  # gzip
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"\x28\xb5\x2f\xfd",  # zstd
    b"7z\xbc\xaf\x27\x1c",  # 7-zip
    b"Rar!\x1a\x07",  # rar
    b"\x04\x22\x4d\x18",  # lz4 frame
    b"\x89PNG\r\n\x1a\n",  # PNG (deflate inside)
    b"\xff\xd8\xff",  # JPEG
    b"OggS",  # Ogg (Vorbis/Opus)
    b"fLaC",  # FLAC
)
_TEXT_SAMPLE = 65536
# Control bytes other than tab, newline, carriage return, form feed and escape: a few are tolerated in text.
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27)) + b"\x7f"


def _is_pyc(head: bytes) -> bool:
    # CPython .pyc: a 2-byte little-endian magic (20121 for 1.5 ... 3000-3999 for Python 3) then b"\r\n".
    if len(head) < 16 or head[2:4] != b"\r\n":
        return False
    magic = int.from_bytes(head[:2], "little")
    return 3000 <= magic < 4000 or magic in (20121, 50428, 50823, 60202, 60717, 62011, 62211)


def file_type(path: str | Path) -> str:
    """The kind of a file from its content, never its name: one of :data:`FILE_TYPES`.

    ``elf``: ELF executables and shared objects; ``compressed``: compressed containers (zip/wheel, gzip,
    bzip2, xz, zstd, 7z, rar, lz4) and media compressed inside (PNG, JPEG, Ogg, FLAC); ``bytecode``: CPython
    .pyc, Java class files and WebAssembly; ``text``: the first 64 KiB decode as UTF-8 (a character cut at the
    end allowed) with no NUL and under 1% other control bytes; ``other``: everything else (and unreadable
    files). Repair figures differ greatly between these: text is redundant, compressed data is not.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_TEXT_SAMPLE)
    except OSError:
        return "other"
    if head.startswith(b"\x7fELF"):
        return "elf"
    if any(head.startswith(m) for m in _COMPRESSED_MAGIC):
        return "compressed"
    if _is_pyc(head) or head.startswith(b"\xca\xfe\xba\xbe") or head.startswith(b"\x00asm"):
        return "bytecode"
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
            utf8 = True
        except UnicodeDecodeError as exc:
            # Only a multi-byte character cut by the 64 KiB sample is allowed.
            utf8 = exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
        if utf8 and sum(head.count(c) for c in _CONTROL) <= 0.01 * len(head):
            return "text"
    return "other"


# ------------------------------------------------------------------------------------------------ dataset
def _split_key(path: Path, root: Path | None) -> str:
    """The name a file is hashed by: relative to the corpus root, so the split survives a moved install."""
    if root is not None:
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


def _stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def split_files(
    paths: Sequence[Path], val_fraction: float, root: Path | None = None
) -> tuple[list[int], list[int]]:
    """Indices of (train, val) files, held out by a stable hash of each path.

    Files are grouped by extension and, within each group of two or more, the ``round(val_fraction * g)``
    files with the smallest hash (at least one, never all) go to validation, so every file type is held out.
    The split does not depend on any seed, so datasets built with different seeds never share files.
    """
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        groups.setdefault(p.suffix.lower(), []).append(i)
    val: list[int] = []
    for members in groups.values():
        g = len(members)
        if g < 2 or val_fraction <= 0:
            continue
        n_val = min(max(int(round(val_fraction * g)), 1), g - 1)
        ranked = sorted(members, key=lambda i: (_stable_hash(_split_key(paths[i], root)), str(paths[i])))
        val.extend(ranked[:n_val])
    val_set = set(val)
    return [i for i in range(len(paths)) if i not in val_set], sorted(val_set)


def _candidate_files(
    paths: Sequence[str | Path] | None, folder: Path | None
) -> tuple[list[Path], Path | None, str]:
    """(files to consider, the root their split keys are relative to, how to name them in an error)."""
    if folder is not None:
        if not folder.is_dir():
            raise FileNotFoundError(f"fragment folder not found: {folder}")
        candidates = sorted(
            p
            for p in folder_files(folder)
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        return candidates, folder.resolve(), f"folder {folder}"
    candidates = [Path(p) for p in paths] if paths is not None else default_corpus_paths()
    source = "the given paths" if paths is not None else "the default corpus"
    try:
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in candidates])) if candidates else None
    except ValueError:  # paths on different drives
        root = None
    return candidates, root, source


def _usable_files(candidates: list[Path], fragment_size: int) -> tuple[list[Path], list[int]]:
    """The readable regular files of at least one fragment, and their sizes; each other one is skipped
    with a warning that says why."""
    usable: list[Path] = []
    sizes: list[int] = []
    for p in candidates:
        try:
            if not p.is_file():
                warnings.warn(f"skipping {p}: not a regular file", stacklevel=3)
                continue
            size = p.stat().st_size
            if not os.access(p, os.R_OK):
                raise PermissionError("permission denied")
        except OSError as e:
            warnings.warn(f"skipping {p}: cannot read it ({e})", stacklevel=3)
            continue
        if size < fragment_size:
            warnings.warn(f"skipping {p}: it is {size} bytes; a fragment needs {fragment_size}", stacklevel=3)
            continue
        usable.append(p)
        sizes.append(size)
    return usable, sizes


class FragmentDataset(Dataset):
    """Fragments of real files with seeded corruption.

    Item ``i`` is ``(corrupted, clean, changed)``: float32 ``(1, fragment_size)`` = byte/255 twice and a
    bool ``(fragment_size,)`` mask of the bytes the noise changed. The corruption is drawn for all fragments
    at once from ``(noise.seed, seed, epoch)``, so item ``i`` is the same whatever the access order and
    validation batches are identical on every pass; call ``set_epoch`` to draw fresh noise for a new
    training epoch.

    Up to ``max_fragments_per_file`` aligned fragments are taken per file, spread evenly over the file. The
    train/val split is by file (see ``split_files``), so validation fragments come from unseen files.
    """

    def __init__(
        self,
        paths: Sequence[str | Path] | None = None,
        folder: str | Path | None = None,
        fragment_size: int = FRAGMENT_SIZE,
        max_fragments_per_file: int = 64,
        noise: NoiseGenerator | None = None,
        split: str = "all",
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        if paths is not None and folder is not None:
            raise ValueError("give either paths or folder, not both")
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if int(fragment_size) < 8:
            raise ValueError(f"fragment_size must be at least 8 bytes, got {fragment_size}")
        if int(max_fragments_per_file) < 1:
            raise ValueError(f"max_fragments_per_file must be at least 1, got {max_fragments_per_file}")
        self.fragment_size = int(fragment_size)
        self.max_fragments_per_file = int(max_fragments_per_file)
        self.noise = noise if noise is not None else NoiseGenerator(seed=seed)
        self.split = split
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.epoch = 0
        self.folder = Path(folder) if folder is not None else None

        candidates, root, source = _candidate_files(paths, self.folder)
        usable, sizes = _usable_files(candidates, self.fragment_size)
        if not usable:
            raise ValueError(
                f"no usable file in {source}: need files of at least {self.fragment_size} bytes "
                "(any file type is accepted)"
            )
        train_idx, val_idx = split_files(usable, self.val_fraction, root)
        chosen = {"train": train_idx, "val": val_idx, "all": list(range(len(usable)))}[split]
        if not chosen:
            raise ValueError(
                f"the {split} split of {source} is empty ({len(usable)} usable files, "
                f"val_fraction={self.val_fraction}); add files or change val_fraction"
            )
        self._read_fragments([(usable[i], sizes[i]) for i in chosen])
        if not self._origins:
            raise ValueError(f"no readable file in the {split} split of {source}")
        self._file_types: list[str] | None = None
        self._noise_epoch: int | None = None
        self._noise_cache: tuple[np.ndarray, np.ndarray] = (
            self._fragments,
            np.zeros_like(self._fragments, bool),
        )

    def _read_fragments(self, files: list[tuple[Path, int]]) -> None:
        """Up to ``max_fragments_per_file`` aligned fragments of each (path, size), spread evenly over the
        file, into ``files``, ``_fragments`` and ``_origins``; a file that cannot be read is skipped."""
        self.files: list[Path] = []
        fragments: list[np.ndarray] = []
        origins: list[tuple[int, int]] = []
        for p, size in files:
            n_slots = size // self.fragment_size
            count = min(n_slots, self.max_fragments_per_file)
            slots = np.unique(np.linspace(0, n_slots - 1, count).round().astype(np.int64))
            try:
                with open(p, "rb") as f:
                    blob = f.read()
            except OSError as e:
                warnings.warn(f"skipping {p}: cannot read it ({e})", stacklevel=3)
                continue
            if len(blob) < self.fragment_size:
                warnings.warn(f"skipping {p}: it shrank to {len(blob)} bytes while being read", stacklevel=3)
                continue
            arr = np.frombuffer(blob, dtype=np.uint8)
            slots = slots[(slots + 1) * self.fragment_size <= len(arr)]
            file_no = len(self.files)
            self.files.append(p)
            for s in slots:
                off = int(s) * self.fragment_size
                fragments.append(arr[off : off + self.fragment_size])
                origins.append((file_no, off))
        self._fragments = np.stack(fragments) if fragments else np.zeros((0, self.fragment_size), np.uint8)
        self._origins = origins

    def __len__(self) -> int:
        return len(self._fragments)

    def set_epoch(self, epoch: int) -> None:
        """Draw different (still reproducible) corruption for a new training epoch."""
        self.epoch = int(epoch)

    def fragment_bytes(self, i: int) -> np.ndarray:
        """The clean fragment ``i`` as uint8."""
        return self._fragments[self._index(i)].copy()

    def fragment_source(self, i: int) -> tuple[Path, int]:
        """(file, byte offset) of fragment ``i``."""
        file_no, off = self._origins[self._index(i)]
        return self.files[file_no], off

    def fragment_info(self, i: int) -> tuple[Path, int]:
        """(file, byte offset) of fragment ``i``: its provenance, e.g. to report figures per file type."""
        return self.fragment_source(i)

    def fragment_type(self, i: int) -> str:
        """The :func:`file_type` of the file fragment ``i`` comes from (read once per file)."""
        file_no, _ = self._origins[self._index(i)]
        if self._file_types is None:
            self._file_types = [file_type(p) for p in self.files]
        return self._file_types[file_no]

    def corrupt(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(clean, corrupted, changed) of fragment ``i`` as uint8/uint8/bool arrays."""
        i = self._index(i)
        corrupted, changed = self._epoch_noise()
        return self._fragments[i].copy(), corrupted[i].copy(), changed[i].copy()

    def _epoch_noise(self) -> tuple[np.ndarray, np.ndarray]:
        # One vectorised draw for every fragment of the epoch: per-item draws cost ~60 us each in fixed
        # numpy overheads, a fifth of a CPU training step per batch; the whole set costs ~15 us a fragment.
        if self._noise_epoch != self.epoch:
            rng = np.random.default_rng([self.noise.seed, self.seed, self.epoch])
            self._noise_cache = self.noise(self._fragments, rng)
            self._noise_epoch = self.epoch
        return self._noise_cache

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clean, corrupted, changed = self.corrupt(i)
        return (
            torch.from_numpy(corrupted.astype(np.float32)[None] / 255.0),
            torch.from_numpy(clean.astype(np.float32)[None] / 255.0),
            torch.from_numpy(changed),
        )

    def _index(self, i: int) -> int:
        n = len(self._fragments)
        if not -n <= int(i) < n:
            raise IndexError(f"fragment index {i} out of range for {n} fragments")
        return int(i) % n

    def preprocessing(self) -> dict[str, Any]:
        return {
            "kind": "bytes-over-255",
            "fragment_size": self.fragment_size,
            "max_fragments_per_file": self.max_fragments_per_file,
            "noise": self.noise.to_dict(),
            "split": self.split,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
        }


def bytes_to_tensor(data: np.ndarray) -> torch.Tensor:
    """uint8 bytes ``(..., n)`` → float32 ``(..., 1, n)`` = byte/255, the model's input scale."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ValueError("expected a uint8 numpy array of bytes")
    return torch.from_numpy(data.astype(np.float32) / 255.0).unsqueeze(-2)


__all__ = [
    "FRAGMENT_SIZE",
    "FragmentDataset",
    "NoiseGenerator",
    "FILE_TYPES",
    "bytes_to_tensor",
    "default_corpus_paths",
    "file_type",
    "read_fragment",
    "split_files",
]
