"""Fill a cached dataset's items before training, on every core.

Synthetic SAR scenes (~15 ms each at 256x256) and audio features (~90 ms a clip) are made on first access
and cached; made lazily, the whole first epoch waits on them inside its steps (30 % and 80 % of a step on
the CPU benchmark). Making them up front, in parallel, takes the data pipeline out of the training steps;
DataLoader workers forked afterwards share the filled cache copy-on-write instead of each remaking it.

Signals: a cancel (SIGTERM/SIGINT to the trainer's whole process group, as the studio's Cancel and
`timeout` send it) must not kill the pool's workers behind the pool's back -- a lost task would leave
`imap` waiting for ever. The workers ignore both signals; the main process ends them itself when it is done
or cancelled (see `_init_worker`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from trainers.data.cached import CachedDataset
from trainers.hooks import pause_point

# Below this many missing items a process pool costs more to start than it saves.
PARALLEL_MIN_ITEMS = 64
CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_DATASET: CachedDataset | None = None  # the dataset being filled, inherited by the forked pool workers


def _compute(i: int) -> Any:
    assert _DATASET is not None  # set before the pool forks
    return _DATASET.compute(i)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block SIGTERM/SIGINT in this thread while it forks workers, so each child starts with them blocked
    and can install its own dispositions before any arrives (its initializer unblocks them). The parent
    gets a signal that came meanwhile as soon as the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, CANCEL_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_cancel_signals() -> None:
    """For worker processes: SIGTERM/SIGINT are the main process's to handle; it shuts the workers down."""
    for sig in CANCEL_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CANCEL_SIGNALS)


def _init_worker(stop: Any) -> None:
    # SIGINT is ignored; SIGTERM ends the worker only once the main process has set `stop` (it then calls
    # Pool.terminate, which sends SIGTERM). A group-wide SIGTERM before that is ignored.
    def on_term(signum: int, frame: Any) -> None:  # noqa: ARG001
        if stop.is_set():
            os._exit(0)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CANCEL_SIGNALS)
    # One thread per worker, as torch's own DataLoader workers do: a forked child that enters an OpenMP
    # parallel region after its parent used one can hang for ever on the parent's thread-pool state (seen
    # once building the fourth reference model in one process; the stuck worker could not even run this
    # module's SIGTERM handler). The pool already has a process per core.
    torch.set_num_threads(1)


def prefill(dataset: Dataset, workers: int | None = None) -> int:
    """Compute every missing item of a :class:`CachedDataset` that caches (others are left alone); returns
    how many."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if not isinstance(dataset, CachedDataset) or not dataset.cache:
        return 0
    missing = dataset.missing()
    workers = workers or os.cpu_count() or 1
    if workers < 2 or len(missing) < PARALLEL_MIN_ITEMS:
        for i in missing:
            dataset.store(i, dataset.compute(i))
        return len(missing)
    global _DATASET
    _DATASET = dataset
    # fork: the workers inherit the dataset (feature filter banks included) instead of unpickling it.
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    pool = None
    try:
        with signals_blocked():
            pool = context.Pool(workers, initializer=_init_worker, initargs=(stop,))
        chunk = max(1, len(missing) // (workers * 8))
        for n, (i, item) in enumerate(
            zip(missing, pool.imap(_compute, missing, chunksize=chunk), strict=True)
        ):
            dataset.store(i, item)
            if n == 0:
                pause_point("prefill")
    finally:
        # Also on a cancel (the loop's signal handler raises while this waits on imap): end the workers now.
        stop.set()
        if pool is not None:
            pool.terminate()
            pool.join()
        _DATASET = None
    return len(missing)
