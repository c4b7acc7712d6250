"""Small helpers that several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll `predicate` until it returns something truthy (returned), else fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def fake_python(folder: Path, body: str) -> str:
    """A stand-in interpreter: a shell script that receives `-m trainers train VARIANT ...` as its args."""
    path = folder / "fake-python"
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def smoke_train(variant: str, runs: str | Path | None, *options: str) -> list[str]:
    """Arguments after `python -m trainers` for a smoke-preset training run into `runs` (None: the trainer's
    default), no progress bars."""
    where = [] if runs is None else ["--runs-dir", str(runs)]
    return ["train", variant, "--preset", "smoke", *where, "--no-progress", *options]


def start_trainer(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """`python -m trainers ARGS` in a session of its own (a test signals its whole group, as Cancel does),
    stdout and stderr as one text pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "trainers", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def write_case(path: Path, content: object) -> Path:
    """Put one bad-input case at `path`: None leaves it absent, bytes are written as they are, an array is
    saved with np.save, a callable is called with the path (e.g. a sound-file writer)."""
    import numpy as np

    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=content.dtype == object)
    elif callable(content):
        content(path)
    elif content is not None:
        raise TypeError(f"no way to write a {type(content).__name__} case")
    return path
