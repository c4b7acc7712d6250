"""Cached datasets are filled before training, in parallel, with exactly the items made lazily."""

from __future__ import annotations

import torch
from torch.utils.data import Subset

from trainers.data.audio import SyntheticAudioDataset
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
