"""Progress for the slow steps outside the training loop (data prefill, eval, compare, export, push).

Library functions take an optional ``progress(fraction, desc)`` callable, the shape of the studio's
``gr.Progress``; the terminal gets the same calls drawn as a tqdm bar by :func:`terminal_progress`. Bars show
only on a terminal (tqdm's ``disable=None``), so logs, pipes and tests stay free of carriage returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

#: ``progress(fraction in [0, 1], description)``: what the studio's gr.Progress and the terminal bar accept.
Progress = Callable[[float, str], Any]
T = TypeVar("T")
_STEPS = 1000  # resolution of a fraction bar


def no_progress(fraction: float, desc: str) -> None:  # noqa: ARG001
    """The progress callback that shows nothing."""
    return None


def bar(
    iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", enabled: bool | None = None
) -> Iterable[T]:
    """``iterable`` with a terminal bar (``enabled=None``: only when stderr is a terminal)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=_disable(enabled))


@contextlib.contextmanager
def terminal_progress(desc: str, enabled: bool | None = None) -> Iterator[Progress]:
    """A ``progress(fraction, desc)`` callback drawn as one tqdm bar, closed on exit."""
    # Every call is drawn (mininterval=0): callers report a few coarse steps, not a tight loop.
    with tqdm(
        total=_STEPS,
        desc=desc,
        leave=False,
        mininterval=0,
        disable=_disable(enabled),
        bar_format="{l_bar}{bar}| {elapsed}{postfix}",
    ) as pbar:

        def update(fraction: float, step: str = "") -> None:
            target = min(_STEPS, max(0, round(float(fraction) * _STEPS)))
            if step:
                pbar.set_postfix_str(step, refresh=False)
            pbar.update(target - pbar.n)

        yield update


def _disable(enabled: bool | None) -> bool | None:
    return None if enabled is None else not enabled
