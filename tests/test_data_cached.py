"""CachedDataset: one public compute(i) for the SAR and audio datasets, used by __getitem__ and prefill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.data.audio import SyntheticAudioDataset
from trainers.data.cached import CachedDataset
from trainers.data.prefill import prefill
from trainers.data.sar import SyntheticSARDataset


class Squares(CachedDataset[np.ndarray]):
    ITEM_NAME = "square"

    def __init__(self, n: int, cache: bool = True) -> None:
        self.n, self.calls = n, 0
        self._init_cache(cache)

    def __len__(self) -> int:
        return self.n

    def compute(self, i: int) -> np.ndarray:
        self.calls += 1
        return np.array([i * i], dtype=np.float32)

    def to_tensors(self, item: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(item)


def test_items_are_computed_once_when_cached_and_every_time_when_not():
    cached, plain = Squares(4), Squares(4, cache=False)
    for ds in (cached, plain):
        assert [float(ds[i]) for i in (3, 3, -1)] == [9.0, 9.0, 9.0]
    assert cached.calls == 1 and plain.calls == 3
    assert cached.missing() == [0, 1, 2] and plain.missing() == [0, 1, 2, 3]
    with pytest.raises(IndexError, match="square index 4 out of range for 4 squares"):
        cached[4]


def test_prefill_fills_through_the_public_api():
    ds = Squares(5)
    assert prefill(ds, workers=1) == 5 and ds.missing() == [] and ds.calls == 5
    assert float(ds[2]) == 4.0 and ds.calls == 5  # served from the cache
    assert prefill(Squares(3, cache=False)) == 0


def test_sar_and_audio_items_are_their_compute():
    sar = SyntheticSARDataset(n_images=2, image_size=32, seed=3)
    x, valid, db_range = sar[1]
    ref_x, ref_valid, ref_range = sar.compute(1)
    assert np.array_equal(x[0].numpy(), ref_x)
    assert np.array_equal(valid[0].numpy(), ref_valid.astype(np.float32))
    assert db_range.tolist() == pytest.approx(list(ref_range))
    audio = SyntheticAudioDataset(n_clips=2, seed=1, cache=True)
    assert torch.equal(audio[0], torch.from_numpy(audio.compute(0))) and audio.missing() == [1]
