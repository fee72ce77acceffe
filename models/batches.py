"""What the trainer reads: a batch of windows and the source that yields them.

The data pipeline implements :class:`BatchSource`; the models library only defines the contract,
so it imports nothing from the data layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Batch:
    """One batch of windows.

    Shapes: ``x (B, T, N, F)`` scaled inputs; ``y (B, H, N, 1)`` scaled targets (for teacher
    forcing); ``y_raw (B, H, N)`` targets in data units; ``y_mask (B, H, N)`` True where observed.
    """

    x: torch.Tensor
    y: torch.Tensor
    y_raw: torch.Tensor
    y_mask: torch.Tensor
    # A stand-in window for a rank whose share of a global batch is empty (fewer windows than
    # ranks): the rank still takes part in the step, but the window counts nowhere.
    padding: bool = False


class BatchSource(Protocol):
    """Where the trainer gets its windows from (the data pipeline implements it)."""

    def num_batches(self, split: str) -> int: ...

    def batches(
        self,
        split: str,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """Batches of ``split`` ("train" shuffled with ``generator``; "val"/"test" in order).

        ``shard = (rank, world_size)`` (distributed training only): of each batch, only that
        rank's contiguous share; an empty share comes as one ``padding`` window, so that every
        rank sees the same number of batches.
        """
        ...
