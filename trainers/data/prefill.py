"""Fill a cached dataset's items before training, on every core.

Synthetic SAR scenes (~15 ms each at 256x256) and audio features (~90 ms a clip) are made on first access
and cached; made lazily, the whole first epoch waits on them inside its steps (30 % and 80 % of a step on
the CPU benchmark). Making them up front, in parallel, takes the data pipeline out of the training steps;
DataLoader workers forked afterwards share the filled cache copy-on-write instead of each remaking it.

Signals: a cancel (SIGTERM/SIGINT to the trainer's whole process group, as the studio's Cancel and
`timeout` send it) must not kill the workers behind the executor's back -- a lost task would leave the
results waiting for ever. The workers ignore both signals; the main process shuts them down itself when it
is done or cancelled (`ProcessPoolExecutor.shutdown`, pending tasks cancelled).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from trainers.data.cached import CachedDataset
from trainers.training.hooks import pause_point

# Below this many missing items a process pool costs more to start than it saves.
PARALLEL_MIN_ITEMS = 64
CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Items per task sent to a worker, at most: what a cancel may still wait for.
MAX_CHUNK = 16

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


@contextlib.contextmanager
def one_thread_for_children() -> Iterator[None]:
    """Fork workers that run torch on one thread (the pool has a process per core). A forked child that
    enters an OpenMP parallel region after its parent used one can hang for ever on the parent's thread-pool
    state (seen once building the fourth reference model in one process; the stuck worker could not even
    run its SIGTERM handler). The setting is made in the parent around the fork, so the children inherit it
    and never call into torch's thread pools to change it (calling there from a child hung a cancel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ignore_cancel_signals() -> None:
    """For worker processes: SIGTERM/SIGINT are the main process's to handle; it shuts the workers down."""
    for sig in CANCEL_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CANCEL_SIGNALS)


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
    executor = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=ignore_cancel_signals
    )
    # Small chunks: a cancel waits for the chunks already running (shutdown cancels the others).
    chunk = min(MAX_CHUNK, max(1, len(missing) // (workers * 8)))
    try:
        with signals_blocked(), one_thread_for_children():  # the workers fork in the first submit
            items = executor.map(_compute, missing, chunksize=chunk)
        for n, (i, item) in enumerate(zip(missing, items, strict=True)):
            dataset.store(i, item)
            if n == 0:
                pause_point("prefill")
    finally:
        # Also on a cancel (the loop's signal handler raises while this waits): the executor's own shutdown,
        # not Pool.terminate, whose lock hand-over with an idle worker can deadlock (seen 1 in 5 cancels).
        executor.shutdown(wait=True, cancel_futures=True)
        _DATASET = None
    return len(missing)
