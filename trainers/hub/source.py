"""Where the studio's source lives, so that a model card tells a Hub visitor how to get the classes that load
its checkpoint: no package index has ``autoencoder-comparison-studio``, so the card installs it from source.

The URL is, in order: the one given for this push/export (``--source-url``, the Hub tab's field); on a
Hugging Face Space, the Space itself (its repo holds the whole project, ``pyproject.toml`` included); else
``[project.urls] Source`` of ``pyproject.toml`` (a checkout) or of the installed package's metadata (a
wheel), which is the same entry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from models.base import LIBRARY_NAME

#: The ``[project.urls]`` key (and wheel ``Project-URL`` label) that names the source repository.
SOURCE_KEY = "Source"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# What pip installs with a VCS URL (https://pip.pypa.io/en/stable/topics/vcs-support/): git+ and one of
# these schemes; no spaces or quotes, which would break the command line the card shows.
_URL = re.compile(r"^(?:git\+)?(?:https?|ssh|file)://[^\s\"'`<>\\]+$")
MAX_URL = 500


def check_source_url(text: object) -> str | None:
    """A source URL pip can install from (``https://…``, ``git+https://…``, ``ssh://…``, ``file://…``), or
    None for an empty value; anything else raises ValueError with the form expected."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    url = text.strip() if isinstance(text, str) else ""
    if len(url) > MAX_URL or not _URL.match(url):
        shown = url if len(url) <= 80 else url[:77] + "..."
        raise ValueError(
            f"invalid source URL {shown!r}: expected the URL of the project's git repository, e.g. "
            "https://github.com/owner/autoencoder-comparison-studio (no spaces or quotes, "
            f"at most {MAX_URL} characters)"
        )
    return url


def pip_requirement(url: str) -> str:
    """What ``pip install`` takes for the source at ``url``: a git VCS requirement."""
    return url if url.startswith("git+") else f"git+{url}"


def _pyproject_source(path: Path) -> str | None:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the wheel's metadata below says the same
        return None
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    except (OSError, ValueError):
        return None
    if project.get("name") != LIBRARY_NAME:
        return None
    return (project.get("urls") or {}).get(SOURCE_KEY)


def project_source_url() -> str | None:
    """``[project.urls] Source``: from the checkout's ``pyproject.toml`` when running from one, else from
    the installed package's ``Project-URL`` metadata; None when neither says."""
    url = _pyproject_source(PYPROJECT) if PYPROJECT.is_file() else None
    if url:
        return url
    try:
        entries = metadata.metadata(LIBRARY_NAME).get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    for entry in entries:
        label, _, value = entry.partition(",")
        if label.strip() == SOURCE_KEY and value.strip():
            return value.strip()
    return None


def space_source_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """The Space's own repo when running on a Hugging Face Space (``SPACE_ID`` is ``owner/name``)."""
    space = environ.get("SPACE_ID", "").strip()
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", space):
        return None
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/spaces/{space}"


def default_source_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """The source URL a card names when none is given: the Space, else ``[project.urls] Source``."""
    return space_source_url(environ) or project_source_url()


def resolve_source_url(given: object = None) -> str | None:
    """``given`` checked (see :func:`check_source_url`), or the default when it is empty."""
    return check_source_url(given) or default_source_url()
