"""The ``--data`` spec: which data a run trains on, as one short string.

Grammar::

    DOMAIN                              the domain's default source with its defaults, e.g. "sar"
    DOMAIN:SOURCE[,KEY=VALUE...]        e.g. "sar:synthetic,looks=1", "fragments:python"
    DOMAIN:KEY=VALUE[,KEY=VALUE...]     source "folder" when a folder= key is given, else the default,
                                        e.g. "sar:folder=/data/s1,kind=amplitude", "audio:n=200"

Domains, keys and sources are case-insensitive. A value that contains a comma or a double quote, or
starts or ends with a space, is written in double quotes with ``\\"`` and ``\\\\`` escapes, e.g.
``audio:folder="/data/a,b"``. Keys that are not given take the data module's defaults.

| domain | source | keys |
|---|---|---|
| sar | synthetic (default) | size, scene, looks, n, seed, val |
| sar | folder | folder, size, kind, band, n, seed, val |
| audio | synthetic (default) | n, seed, val |
| audio | folder | folder, hop, n, seed, val |
| fragments | python (default) | max_files, ber, sub, erasure, burst, n, seed, val |
| fragments | folder | folder, max_files, ber, sub, erasure, burst, n, seed, val |

| key | type | meaning |
|---|---|---|
| n | int in [1, 10⁹] | synthetic: how many examples to make; folder/python: use at most this many |
| val | float in (0, 1) or int in [1, 10⁹] | validation share: a fraction ("0.1") or a count ("200") |
| seed | int in [0, 2³²−1] | seed of generation, shuffling, the train/val split and the corruption noise |
| size | int in [32, 65536], multiple of 16 | SAR patch size in pixels (larger images are cut into patches) |
| looks | float in [1, 10⁶] | looks L of the simulated Gamma(L, 1/L) speckle (default: 1-4 drawn per scene) |
| scene | mixed, single-look | SAR synthetic: mixed scenes with L 1-4 (default), or single-look statistics |
| kind | auto, intensity, amplitude, db, complex | what the SAR files hold (auto: see README, SAR input) |
| band | int in [0, 65535] | SAR: band of multi-band files (0 = first) |
| folder | path | folder to read with its subfolders: .npy/.tif/.png, .wav/.flac/.ogg, any files |
| max_files | int in [1, 10⁹] | fragments: read at most this many files |
| ber | float in [0, 1] | fragments: bit error rate of random bit flips |
| sub | float in [0, 1] | fragments: rate of random byte substitutions |
| erasure | float in [0, 1] | fragments: rate of zeroed runs (erasures) |
| burst | float in [0, 1] | fragments: rate of Gilbert-Elliott error bursts |
| hop | float in [0.01, 60] | audio: seconds between the starts of the 1 s windows cut from each file (0.5) |

The fragments source ``python`` is the machine's own Python installation (source text, bytecode, shared
libraries, archives): real files that every machine has.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOMAINS: tuple[str, ...] = ("sar", "audio", "fragments")
# The first source of each domain is its default.
SOURCES: dict[str, tuple[str, ...]] = {
    "sar": ("synthetic", "folder"),
    "audio": ("synthetic", "folder"),
    "fragments": ("python", "folder"),
}
SAR_KINDS: tuple[str, ...] = ("auto", "intensity", "amplitude", "db", "complex")
# Simulated SAR scene families (trainers.data.sar.SCENES; repeated here so parsing a spec imports no numpy).
SCENES: tuple[str, ...] = ("mixed", "single-look")


@dataclass(frozen=True)
class OptionSpec:
    """One key of the table: its type name (for messages), converter and help text."""

    type_name: str
    convert: Callable[[Any], Any]
    help: str


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float):  # UI number widgets hand over floats
        if not value.is_integer():
            raise ValueError("not a whole number")
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError(type(value).__name__)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a bool")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = float(value.strip())
    else:
        raise ValueError(type(value).__name__)
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


# The highest count (examples, files, a validation count) a spec may ask for: far beyond any data set here,
# and a size every reader holds (audio:n=1e23 reached the data set as "OverflowError: cannot fit 'int' into
# an index-sized integer"). Seeds stop where numpy's and torch's do.
COUNT_MAX = 10**9
SEED_MAX = 2**32 - 1


def _ranged_int(low: int, multiple: int = 1, high: int = COUNT_MAX) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        number = _int(value)
        if not low <= number <= high or number % multiple:
            raise ValueError("out of range")
        return number

    return convert


def _ranged_float(low: float, high: float = math.inf) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        number = _float(value)
        if not low <= number <= high:
            raise ValueError("out of range")
        return number

    return convert


def _val(value: Any) -> int | float:
    # A count when it looks like an int ("200"), a fraction otherwise ("0.1"): the two never overlap
    # because a fraction must lie strictly between 0 and 1.
    if isinstance(value, bool):
        raise ValueError("a bool")
    integral_float = isinstance(value, float) and value.is_integer() and value >= 1.0
    if isinstance(value, int) or integral_float or (isinstance(value, str) and value.strip().isdigit()):
        count = _int(value)
        if not 1 <= count <= COUNT_MAX:
            raise ValueError("out of range")
        return count
    fraction = _float(value)
    if not 0.0 < fraction < 1.0:
        raise ValueError("out of range")
    return fraction


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise ValueError("not a choice")
        return value.strip().lower()

    return convert


def _path(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("empty")
    return value


_RATE_TYPE, _RATE = "a number in [0, 1]", _ranged_float(0.0, 1.0)
OPTIONS: dict[str, OptionSpec] = {
    "folder": OptionSpec("a folder path", _path, "the folder to read"),
    "n": OptionSpec(
        f"an integer >= 1 and <= {COUNT_MAX}", _ranged_int(1), "examples to generate / at most this many"
    ),
    "size": OptionSpec(
        "an integer >= 32 and a multiple of 16, at most 65536", _ranged_int(32, 16, 65_536), "SAR patch size"
    ),
    "looks": OptionSpec(
        "a number >= 1 and <= 1000000", _ranged_float(1.0, 1e6), "looks of the simulated speckle"
    ),
    "scene": OptionSpec(
        " or ".join(SCENES), _choice(SCENES), "simulated scenes: mixed (L 1-4) or single-look (ENL ~ 1)"
    ),
    "kind": OptionSpec(" or ".join(SAR_KINDS), _choice(SAR_KINDS), "what the SAR files hold"),
    "band": OptionSpec(
        "an integer >= 0 and <= 65535",
        _ranged_int(0, high=65_535),
        "band of multi-band SAR files (0 = first)",
    ),
    "max_files": OptionSpec(
        f"an integer >= 1 and <= {COUNT_MAX}", _ranged_int(1), "read at most this many files"
    ),
    "ber": OptionSpec(_RATE_TYPE, _RATE, "bit error rate of random bit flips"),
    "sub": OptionSpec(_RATE_TYPE, _RATE, "rate of random byte substitutions"),
    "erasure": OptionSpec(_RATE_TYPE, _RATE, "rate of zeroed runs"),
    "burst": OptionSpec(_RATE_TYPE, _RATE, "rate of Gilbert-Elliott error bursts"),
    "seed": OptionSpec(f"an integer >= 0 and <= {SEED_MAX}", _ranged_int(0, high=SEED_MAX), "random seed"),
    "hop": OptionSpec("seconds in [0.01, 60]", _ranged_float(0.01, 60.0), "seconds between audio windows"),
    "val": OptionSpec(
        f"a fraction in (0, 1) or a count >= 1 and <= {COUNT_MAX}", _val, "validation fraction or count"
    ),
}

_NOISE = ("ber", "sub", "erasure", "burst")
_COMMON = ("n", "seed", "val")
# Allowed keys per (domain, source), in the order format_data_spec writes them.
KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("sar", "synthetic"): ("size", "scene", "looks", *_COMMON),
    ("sar", "folder"): ("folder", "size", "kind", "band", *_COMMON),
    ("audio", "synthetic"): _COMMON,
    ("audio", "folder"): ("folder", "hop", *_COMMON),
    ("fragments", "python"): ("max_files", *_NOISE, *_COMMON),
    ("fragments", "folder"): ("folder", "max_files", *_NOISE, *_COMMON),
}
_REQUIRED: dict[str, tuple[str, ...]] = {"folder": ("folder",)}


def _describe(domain: str, source: str) -> str:
    return f"{domain}:{source}"


@dataclass
class DataSpec:
    """A validated data spec; construction checks and converts everything (the UI builds these directly).

    ``source=None`` means the domain's default source, or ``folder`` when ``options`` has a folder.
    """

    domain: str
    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.domain, str) or self.domain.strip().lower() not in DOMAINS:
            raise ValueError(f"unknown data domain {self.domain!r}; expected one of {', '.join(DOMAINS)}")
        self.domain = self.domain.strip().lower()
        if not isinstance(self.options, Mapping):
            raise ValueError(
                f"data options must be a dict of key -> value, got {type(self.options).__name__}"
            )
        raw: dict[str, Any] = {}
        for key, value in self.options.items():
            norm = key.strip().lower() if isinstance(key, str) else key
            if norm in raw:
                raise ValueError(f"data key {norm!r} is given twice")
            raw[norm] = value
        allowed_sources = SOURCES[self.domain]
        if self.source is None:
            self.source = "folder" if "folder" in raw and "folder" in allowed_sources else allowed_sources[0]
        if not isinstance(self.source, str) or self.source.strip().lower() not in allowed_sources:
            raise ValueError(
                f"unknown source {self.source!r} for data domain {self.domain!r}; "
                f"expected one of {', '.join(allowed_sources)}"
            )
        self.source = self.source.strip().lower()
        where = _describe(self.domain, self.source)
        allowed = KEYS[(self.domain, self.source)]
        for key in raw:
            if key not in allowed:
                hint = ""
                others = [s for s in allowed_sources if s != self.source and key in KEYS[(self.domain, s)]]
                if others:
                    hint = f" ({key!r} belongs to source {' or '.join(others)})"
                raise ValueError(
                    f"unknown key {key!r} for data {where}{hint}; allowed keys: {', '.join(allowed)}"
                )
        for key in _REQUIRED.get(self.source, ()):
            if key not in raw:
                raise ValueError(f"data {where} needs {key}=PATH, e.g. {self.domain}:{key}=/path/to/data")
        converted: dict[str, Any] = {}
        for key in allowed:  # table order, so equal specs format identically
            if key in raw:
                spec = OPTIONS[key]
                try:
                    converted[key] = spec.convert(raw[key])
                except (ValueError, TypeError):
                    raise ValueError(
                        f"invalid value {raw[key]!r} for data key {key!r} ({where}); "
                        f"expected {spec.type_name}"
                    ) from None
        self.options = converted

    @property
    def folder_path(self) -> Path | None:
        """The ``folder`` option as an expanded Path, or None for sources without one."""
        folder = self.options.get("folder")
        return None if folder is None else Path(os.path.expanduser(folder))

    def check_paths(self) -> None:
        """Raise FileNotFoundError/ValueError when the spec names a folder that is missing or not a folder.

        Kept apart from parsing so that the specs of old runs stay readable after their data moved.
        """
        path = self.folder_path
        if path is None:
            return
        if not path.exists():
            raise FileNotFoundError(f"data folder {str(path)!r} does not exist")
        if not path.is_dir():
            raise ValueError(f"data folder {str(path)!r} is not a folder")

    def __str__(self) -> str:
        return format_data_spec(self)


def _split_items(text: str, whole: str) -> list[tuple[str, bool]]:
    """Split on commas outside double quotes; returns (item, had_quotes) with quotes undone."""
    items: list[tuple[str, bool]] = []
    buf: list[str] = []
    quoted = False
    i = 0
    while i <= len(text):
        ch = text[i] if i < len(text) else ","
        if ch == '"':
            key_part = "".join(buf)
            if quoted or "=" not in key_part or key_part.split("=", 1)[1].strip():
                raise ValueError(
                    f'misplaced double quote in data spec {whole!r}; quotes enclose a whole value: KEY="..."'
                )
            buf = list(key_part.rstrip())
            i += 1
            while True:
                if i >= len(text):
                    raise ValueError(f"unterminated double quote in data spec {whole!r}")
                ch = text[i]
                if ch == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
                    buf.append(text[i + 1])
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    break
                buf.append(ch)
                i += 1
            quoted = True
            rest = i
            while rest < len(text) and text[rest] == " ":
                rest += 1
            if rest < len(text) and text[rest] != ",":
                raise ValueError(f"unexpected text after a closing quote in data spec {whole!r}")
            i = rest
            continue
        if ch == ",":
            items.append(("".join(buf) if quoted else "".join(buf).strip(), quoted))
            buf, quoted = [], False
        else:
            buf.append(ch)
        i += 1
    return items


def parse_data_spec(text: str) -> DataSpec:
    """Parse ``DOMAIN[:SOURCE][,KEY=VALUE...]`` (see the module docstring) into a validated DataSpec."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            "empty data spec; expected DOMAIN[:SOURCE][,KEY=VALUE...] "
            f"with DOMAIN one of {', '.join(DOMAINS)}"
        )
    head, sep, rest = text.strip().partition(":")
    domain = head.strip().lower()
    if domain not in DOMAINS:
        raise ValueError(
            f"unknown data domain {head.strip()!r} in {text!r}; expected one of {', '.join(DOMAINS)}"
        )
    if not sep:
        return DataSpec(domain)
    if not rest.strip():
        raise ValueError(f"nothing after ':' in data spec {text!r}; expected a source or KEY=VALUE items")
    source: str | None = None
    options: dict[str, str] = {}
    for position, (item, quoted) in enumerate(_split_items(rest, text)):
        if not item and not quoted:
            raise ValueError(f"empty item in data spec {text!r} (two commas in a row, or a trailing comma?)")
        if "=" not in item:
            if position == 0 and not quoted:
                source = item.lower()
                continue
            raise ValueError(f"expected KEY=VALUE in data spec {text!r}, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().lower()
        if not key:
            raise ValueError(f"missing key before '=' in data spec {text!r}")
        if not quoted:
            value = value.strip()
        if not value and not quoted:
            raise ValueError(f"missing value for key {key!r} in data spec {text!r}")
        if key in options:
            raise ValueError(f"data key {key!r} is given twice in {text!r}")
        options[key] = value
    return DataSpec(domain, source, options)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    text = str(value)
    if any(c in text for c in ',"') or text != text.strip() or not text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_data_spec(spec: DataSpec) -> str:
    """The canonical string of a spec; ``parse_data_spec(format_data_spec(s)) == s``."""
    if not isinstance(spec, DataSpec):
        raise ValueError(f"expected a DataSpec, got {type(spec).__name__}")
    items = [f"{key}={_format_value(value)}" for key, value in spec.options.items()]
    if spec.source == "folder":
        return f"{spec.domain}:" + ",".join(items)  # folder= is always present and implies the source
    return f"{spec.domain}:" + ",".join([str(spec.source), *items])


def default_data_spec(domain: str) -> DataSpec:
    """The built-in default data of a domain (synthetic SAR/audio, the Python installation's files)."""
    return DataSpec(domain)
