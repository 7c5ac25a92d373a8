"""Deterministic, resumable batches: the data order is a function of (seed, epoch) alone.

A resumed run starts at the exact batch an uninterrupted run would have drawn next, and a
torchrun job of W ranks splits each global batch into W contiguous slices, so W ranks see
together what one process would have seen (DESIGN: same global batch, same result).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vqgen.engine.errors import UsageError
from vqgen.engine.distributed import Dist


def passthrough(batch: Any) -> Any:
    """collate_fn for datasets whose __getitems__ already returns a stacked batch."""
    return batch


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator)


class ResumableBatches(Sampler[list[int]]):
    """This rank's slice of global batches for steps start+1 .. stop (drop_last per epoch)."""

    def __init__(self, count: int, global_batch: int, seed: int, start: int, stop: int, ctx: Dist) -> None:
        if global_batch % ctx.world:
            raise UsageError(f"batch_size={global_batch} must be divisible by the {ctx.world} processes")
        if count < global_batch:
            raise UsageError(f"batch_size={global_batch} is larger than the dataset ({count} items); "
                             "lower --batch-size")
        self.count, self.global_batch, self.seed = count, global_batch, seed
        self.start, self.stop, self.ctx = start, stop, ctx
        self.per_epoch = count // global_batch

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        local = self.global_batch // self.ctx.world
        epoch, offset = divmod(self.start, self.per_epoch)
        order = epoch_order(self.count, self.seed, epoch)
        for _ in range(len(self)):
            first = offset * self.global_batch + self.ctx.rank * local
            yield order[first:first + local].tolist()
            offset += 1
            if offset == self.per_epoch:
                epoch, offset = epoch + 1, 0
                order = epoch_order(self.count, self.seed, epoch)


def make_loader(dataset: Dataset, batches: Sampler[list[int]], num_workers: int, pin_memory: bool) -> DataLoader:
    """A loader that leaves the global RNG alone (its own generator seeds the workers), so a resumed
    run's random draws match an uninterrupted run's."""
    return DataLoader(dataset, batch_sampler=batches, collate_fn=passthrough, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False, generator=torch.Generator().manual_seed(0),
                      prefetch_factor=4 if num_workers else None)
