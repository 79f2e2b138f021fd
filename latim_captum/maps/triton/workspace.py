"""Buffers and the causal tile layout of the Triton launches (pure PyTorch: no Triton needed to plan a launch).

Example:
    >>> causal_tiles(1, 0, 4, 2, 2, torch.device("cpu")).tolist()
    [[0, 0, 0], [0, 1, 0], [0, 1, 1]]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Workspace", "causal_tile_counts", "tile_layout", "causal_tiles"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class Workspace:
    """Buffers reused by every launch of one layer's query rows ``[start, stop)``, ``rows`` per launch.

    Each buffer is sized once, for the largest launch: sized per launch, a buffer would grow with each launch's last
    row, and the allocator, short of memory for a new block of a budget's size, would free its cache (a device-wide
    sync) at every launch, leaving the GPU idle (docs/performance.md).

    Example:
        >>> ws = Workspace(0, 100, 40)
        >>> ws.most_pairs(), ws.most_tiles(8, 16)   # the launch [40, 80) and the last one [80, 100)
        (3200, 21)
    """

    start: int
    stop: int
    rows: int
    buffers: dict[str, Tensor] = field(default_factory=dict)

    def _largest_launches(self) -> list[tuple[int, int]]:
        """The last launch and the full one before it: every other launch has as many rows and an earlier end."""
        last = self.start + (self.stop - self.start - 1) // self.rows * self.rows
        return [(last, self.stop)] + ([(last - self.rows, last)] if last > self.start else [])

    def most_pairs(self) -> int:
        """Most ``rows × columns`` of one launch (columns ``[0, r1)``)."""
        return max((r1 - r0) * r1 for r0, r1 in self._largest_launches())

    def most_tiles(self, bi: int, bj: int) -> int:
        """Most causal ``bi × bj`` tiles of one launch, per sequence."""
        return max(int(causal_tile_counts(r0, r1, bi, bj)[0].sum()) for r0, r1 in self._largest_launches())

    def take(self, key: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device, capacity: int) -> Tensor:
        """A contiguous ``shape`` view of buffer ``key`` (uninitialised), allocated with ``capacity`` elements
        (or ``shape``'s, if more) the first time."""
        numel = math.prod(shape)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            self.buffers.pop(key, None)
            buffer = None  # the old block is free before the new one is allocated
            buffer = torch.empty(max(numel, capacity), dtype=dtype, device=device)
            self.buffers[key] = buffer
        return buffer[:numel].view(shape)


def causal_tile_counts(r0: int, r1: int, bi: int, bj: int) -> tuple[Tensor, Tensor]:
    """Per row tile of rows ``[r0, r1)`` (CPU int64): how many column tiles hold a causal pair (those with ``j0 ≤`` its
    last row), and where its tiles start in one sequence's part of :func:`causal_tiles`."""
    row_tiles = torch.arange(_cdiv(r1 - r0, bi))
    per_row_tile = (torch.clamp(r0 + (row_tiles + 1) * bi, max=r1) - 1) // bj + 1
    return per_row_tile, torch.cumsum(per_row_tile, 0) - per_row_tile


@functools.lru_cache(maxsize=64)
def tile_layout(bsz: int, r0: int, r1: int, bi: int, bj: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """:func:`causal_tiles` and the first tile of each row tile, on ``device``.

    Built on the host and cached: on CUDA, sizing ``repeat_interleave``'s output from device counts would stall the
    host on the GPU's queue at every launch, leaving the GPU idle while the next kernels are enqueued.
    """
    per_row_tile, starts = causal_tile_counts(r0, r1, bi, bj)
    rows = torch.repeat_interleave(torch.arange(len(per_row_tile)), per_row_tile)
    cols = torch.arange(len(rows)) - torch.repeat_interleave(starts, per_row_tile)
    one = torch.stack([rows, cols], 1)
    seqs = torch.arange(bsz).repeat_interleave(len(one))
    tiles = torch.cat([seqs[:, None], one.repeat(bsz, 1)], 1).to(torch.int32)
    return tiles.to(device), starts.to(device)


def causal_tiles(bsz: int, r0: int, r1: int, bi: int, bj: int, device: torch.device) -> Tensor:
    """``[T, 3]`` int32 (sequence, row tile, column tile) of every ``bi × bj`` tile of rows ``[r0, r1)`` × columns
    ``[0, r1)`` that holds a causal pair (``j0 ≤`` the tile's last row), row tile by row tile.

    Example:
        >>> causal_tiles(1, 0, 4, 2, 2, torch.device("cpu")).tolist()
        [[0, 0, 0], [0, 1, 0], [0, 1, 1]]
    """
    return tile_layout(bsz, r0, r1, bi, bj, torch.device(device))[0]

