"""A test hook that holds a trainer in one phase (data build, a step, validation, a checkpoint save), so a
test can signal it exactly there instead of racing a sleep against the phase.

Set `TRAINERS_PAUSE_AT=<phase>` and `TRAINERS_PAUSE_FILE=<path>` in the trainer's environment: on reaching
that phase the trainer writes the file and waits (up to `PAUSE_LIMIT_S`) until its `until` condition holds,
e.g. a cancel flag set by SIGTERM. Without the variables `pause_point` costs one dictionary lookup.
`trainers.runs.faults.kill_point` is its SIGKILL counterpart for the points between a row and a checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

PAUSE_ENV = "TRAINERS_PAUSE_AT"
PAUSE_FILE_ENV = "TRAINERS_PAUSE_FILE"
PAUSE_LIMIT_S = 60.0
PHASES = ("prefill", "first-batch", "step", "validation", "checkpoint")


def pause_point(phase: str, until: Callable[[], bool] | None = None) -> None:
    """Wait here when the environment names `phase` (once per process); a no-op otherwise.

    The wait is a sleep loop, so a signal handler that raises (the loop's interruptible phases) ends it.
    """
    if os.environ.get(PAUSE_ENV) != phase:
        return
    os.environ.pop(PAUSE_ENV)  # pause once: later steps/saves run normally
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).write_text(f"{phase} {os.getpid()}\n")
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while time.monotonic() < deadline and not (until is not None and until()):
        time.sleep(0.02)
