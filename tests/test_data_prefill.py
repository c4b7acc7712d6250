"""Cached datasets are filled before training, in parallel, with exactly the items made lazily."""

from __future__ import annotations

import torch
from torch.utils.data import Subset

from trainers.data.audio import SyntheticAudioDataset
from trainers.data.cached import CachedDataset
from trainers.data.prefill import PARALLEL_MIN_ITEMS, prefill
from trainers.data.sar import SyntheticSARDataset


def test_parallel_prefill_matches_lazy_items():
    n = PARALLEL_MIN_ITEMS + 16
    filled = SyntheticSARDataset(n, image_size=32, seed=3, cache=True)
    lazy = SyntheticSARDataset(n, image_size=32, seed=3, cache=False)
    assert prefill(Subset(filled, [0, 1]), workers=2) == n  # through a Subset: the whole set beneath
    assert len(filled._cache) == n
    for i in (0, n // 2, n - 1):
        torch.testing.assert_close(filled[i], lazy[i], rtol=0, atol=0)
    assert prefill(filled, workers=2) == 0  # nothing left to make


def test_serial_prefill_for_small_sets_and_uncached_sets_are_left_alone():
    audio = SyntheticAudioDataset(4, seed=1)
    assert prefill(audio, workers=2) == 4 and len(audio._cache) == 4
    torch.testing.assert_close(audio[2], SyntheticAudioDataset(4, seed=1, cache=False)[2], rtol=0, atol=0)
    uncached = SyntheticSARDataset(8, image_size=32, cache=False)
    assert prefill(uncached) == 0 and uncached._cache == {}


class _ThreadCounts(CachedDataset):
    """Each item is the number of intra-op threads torch would use where the item is made."""

    def __init__(self, n: int) -> None:
        self._init_cache(True)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def compute(self, i: int) -> int:  # noqa: ARG002
        return torch.get_num_threads()

    def to_tensors(self, item: int) -> int:
        return item


def test_pool_workers_make_items_on_one_thread_after_the_parent_used_many():
    # A forked worker entering an OpenMP region the parent used can hang on the parent's pool state; the
    # workers run single-threaded, as torch's DataLoader workers do, so they never enter one.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.randn(256, 256) @ torch.randn(256, 256)  # the parent's thread pool is up
        counts = _ThreadCounts(PARALLEL_MIN_ITEMS)
        assert prefill(counts, workers=2) == PARALLEL_MIN_ITEMS
        assert {counts[i] for i in range(len(counts))} == {1}
        assert torch.get_num_threads() == 2  # the parent's own setting is untouched
    finally:
        torch.set_num_threads(before)
