"""The Compare tab's data choice (the built-in set of a domain, a server folder, uploaded files) as a data
spec; shared by the checkpoint leaderboard (``compare``) and the study leaderboard (``compare_study``)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from studio.views.common import DOMAIN_NAMES, upload_path

SOURCES = ("built-in", "server folder", "uploaded files")
# Built-in data of each domain: how many examples (SAR patches, audio clips) or corpus files (fragments).
BUILTIN_DEFAULT_N = 16
BUILTIN_MAX_N = 256


def _count(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, got {value!r}") from None
    if number != int(number) or not low <= number <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def builtin_spec(domain: str, n: Any) -> str:
    """The built-in data spec of `domain` with `n` examples (fragments: `n` corpus files)."""
    count = _count(n, "the number of built-in examples", 1, BUILTIN_MAX_N)
    if domain == "sar":
        return f"sar:synthetic,n={count}"
    if domain == "audio":
        return f"audio:synthetic,n={count}"
    return f"fragments:python,max_files={count}"


def _copy_uploads(uploads: Any, folder: Path) -> int:
    """Copy uploaded files into `folder` under their own names; the number copied."""
    items = uploads if isinstance(uploads, (list, tuple)) else [uploads]
    items = [u for u in items if u is not None]
    if not items:
        raise ValueError("no files uploaded: upload the files to compare on, or choose another data source")
    names: set[str] = set()
    for item in items:
        path = upload_path(item, "file")
        name = path.name
        k = 2
        while name in names:
            name = f"{path.stem}-{k}{path.suffix}"
            k += 1
        names.add(name)
        shutil.copyfile(path, folder / name)
    return len(names)


@contextlib.contextmanager
def chosen_data(
    ctx: Any, domain: str, source: Any, folder: Any = None, uploads: Any = None, n: Any = BUILTIN_DEFAULT_N
) -> Iterator[tuple[str, str, str | None]]:
    """(data spec, its words for the page, the temporary folder to keep out of the page or None) of the tab's
    data choice: the built-in set (`n` examples), a folder on the server (not on a public Space), or
    uploaded files (copied into a temporary folder that lasts while the block runs)."""
    if source == SOURCES[0]:
        yield builtin_spec(domain, n), f"built-in {DOMAIN_NAMES[domain]} data", None
    elif source == SOURCES[1]:
        if getattr(ctx, "space", False):
            raise ValueError("server folders cannot be read on a public Space: upload the files instead")
        if not folder or not str(folder).strip():
            raise ValueError("no server folder given: type the folder's path, or choose another data source")
        path = Path(str(folder).strip()).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"server folder {str(path)!r} does not exist or is not a folder")
        yield f'{domain}:folder="{path}"', f"folder {path}", None
    elif source == SOURCES[2]:
        with tempfile.TemporaryDirectory(prefix="studio-compare-") as tmp:
            count = _copy_uploads(uploads, Path(tmp))
            yield f'{domain}:folder="{tmp}"', f"{count} uploaded file{'s' if count != 1 else ''}", tmp
    else:
        raise ValueError(f"unknown data source {source!r}; expected one of {', '.join(SOURCES)}")
