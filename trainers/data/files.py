"""Walking a user's data folder: every regular file under it, whatever else the folder holds.

``Path.rglob`` stopped a whole comparison at the first entry it could not stat (``Permission denied:
'../../../proc/1/cwd'`` for a server folder of ``../../..``) and follows symlinked folders, so a link to a
parent walks forever. This walk skips what it cannot read (one warning naming how many and the first) and
never enters a symlinked folder; symlinked files are kept when they lead to a regular file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path


def folder_files(folder: str | Path) -> Iterator[Path]:
    """The regular files under ``folder``, each folder's sorted by name, depth first.

    Folders that cannot be listed and entries that cannot be inspected are skipped; when the walk ends, one
    warning says how many and names the first. Folder symlinks are not followed (no loops, no walking out
    of the folder through a link)."""
    unreadable: list[str] = []

    def skipped(error: OSError) -> None:
        unreadable.append(f"{error.filename}: {error.strerror}")

    for parent, dirs, names in os.walk(folder, onerror=skipped, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(parent, name)
            try:
                if os.path.isfile(path):  # follows a file symlink; False for a dangling or unreadable one
                    yield Path(path)
            except (OSError, ValueError) as exc:  # ValueError: an embedded NUL byte in a name
                unreadable.append(f"{path}: {exc}")
    if unreadable:
        warnings.warn(
            f"skipped {len(unreadable)} unreadable folder(s) or file(s) under {str(folder)!r}, e.g. "
            f"{unreadable[0]}",
            stacklevel=2,
        )
