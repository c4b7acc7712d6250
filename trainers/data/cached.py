"""The base of the datasets whose items are made once and kept: public `compute(i)`, one cache.

Synthetic SAR scenes and audio features cost milliseconds each to make, and each item is a pure function of
its index; :class:`CachedDataset` keeps them (when ``cache`` is on) so later epochs are free, and gives
:func:`trainers.data.prefill.prefill` and the audio ``fill`` one public way in: :meth:`compute`,
:meth:`missing` and :meth:`store`.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from torch.utils.data import Dataset

Item = TypeVar("Item")


class CachedDataset(Dataset, Generic[Item]):
    """Item ``i`` is ``to_tensors(compute(i))``; ``compute``'s result is kept when ``self.cache`` is true.

    Subclasses implement ``__len__``, :meth:`compute` (numpy, so it pickles cheaply from prefill's workers)
    and :meth:`to_tensors`, and call :meth:`_init_cache` in ``__init__``.
    """

    ITEM_NAME = "item"  # what an index counts, for the out-of-range message: "image", "clip"
    cache: bool

    def _init_cache(self, cache: bool) -> None:
        self.cache = bool(cache)
        self._cache: dict[int, Item] = {}

    def __len__(self) -> int:
        raise NotImplementedError

    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"{self.ITEM_NAME} index {i} out of range for {n} {self.ITEM_NAME}s")
        return int(i) % n

    def compute(self, i: int) -> Item:
        """Make item ``i`` from scratch (never from the cache)."""
        raise NotImplementedError

    def to_tensors(self, item: Item) -> Any:
        """The DataLoader's view of a computed item."""
        raise NotImplementedError

    def missing(self) -> list[int]:
        """The indices whose items are not kept yet (all of them when the dataset does not cache)."""
        return [i for i in range(len(self)) if i not in self._cache]

    def store(self, i: int, item: Item) -> None:
        """Keep ``item`` as item ``i`` (made elsewhere: prefill's workers, a batched fill)."""
        self._cache[self._index(i)] = item

    def __getitem__(self, i: int) -> Any:
        i = self._index(i)
        item = self._cache.get(i)
        if item is None:
            item = self.compute(i)
            if self.cache:
                self._cache[i] = item
        return self.to_tensors(item)
