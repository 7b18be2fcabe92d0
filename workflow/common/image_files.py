"""The one dataset class for image files: item ``i`` is ``load(items[i])``, decoded in DataLoader workers.

Every stage that streams images through a network (embeddings, feature extraction) gives its own ``load``, a
picklable top-level function or :func:`functools.partial` of one, so worker processes can run it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from torch.utils.data import Dataset

Item = TypeVar("Item")


class ImageFiles(Dataset, Generic[Item]):
    """Items (paths, or tuples holding paths) mapped through ``load`` one at a time."""

    def __init__(self, items: Sequence[Item], load: Callable[[Item], Any]) -> None:
        self.items = list(items)
        self.load = load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.load(self.items[index])
