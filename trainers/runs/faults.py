"""Fault injection for tests and benchmarks/fault_campaign.py: SIGKILL a trainer at an exact point between a
logged metric row and a saved checkpoint, instead of racing a timer against it.

`TRAINERS_KILL_AT=<point>[:N]` in the trainer's environment kills it at its N-th arrival at `point` (N=1 by
default). Without the variable `kill_point` costs one dictionary lookup. It lives with the run records
(not in training.hooks) because checkpoint writes call it, and the records must not import the loop.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "TRAINERS_KILL_AT"
# Points between a logged metric row and a saved checkpoint where a fault test may SIGKILL the trainer:
# after a train or val row, after the media, and inside/after each checkpoint write (files written but no
# manifest; manifest but no link; link swapped but the store not told).
KILL_POINTS = (
    "train-row",
    "val-row",
    "media",
    "best-files",
    "best-manifest",
    "best-linked",
    "last-files",
    "last-manifest",
    "last-linked",
)
_kill_counts: dict[str, int] = {}


def kill_point(point: str) -> None:
    """SIGKILL this process at its N-th arrival at `point` when `TRAINERS_KILL_AT=<point>[:N]` (N=1 by
    default); a no-op otherwise. A fault test stops a trainer exactly there instead of racing a timer."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted or not wanted.startswith(point):
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _kill_counts[point] = _kill_counts.get(point, 0) + 1
    if _kill_counts[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
