"""Crash-safe file primitives shared by checkpoint saving and the Ray result sink (no torch import here:
the studio loads the sink's module without it).

A folder that readers must see whole is written as a fresh sibling and then published by pointing a
relative symlink at it with ``os.replace`` of a temporary link, which is atomic on POSIX.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it before returning."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename or a new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the data files are already synced
        pass
    finally:
        os.close(fd)


def point_link(parent: Path, name: str, target_name: str) -> Path | None:
    """Make ``parent/name`` a relative symlink to ``target_name`` in one atomic rename.

    A real folder at ``parent/name`` (a copy that dereferenced the link) is first moved aside to
    ``<name>-moved-<token>``, so the swap stays one rename; that path is returned for the caller to remove
    (None when there was none)."""
    link = parent / name
    moved = None
    if link.is_dir() and not link.is_symlink():
        moved = parent / f"{name}-moved-{secrets.token_hex(4)}"
        link.rename(moved)
    tmp = parent / f".{name}.tmp-{secrets.token_hex(4)}"
    os.symlink(target_name, tmp)  # relative, so the run folder can be moved or copied
    os.replace(tmp, link)
    fsync_dir(parent)
    return moved
