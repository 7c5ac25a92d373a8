"""The real test images eval scores against: rows drawn at random within each class by a seed.

n = n_per_class x classes; the default n_per_class keeps n >= MIN_IMAGES, as 128-dimensional
covariances from fewer images are biased. Files are often ordered, so the first rows of a class are
not a sample of it (data/rows.py); an unlabelled split is shuffled and cut into MIN_GROUPS groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vqgen.data.images import BatchedImages
from vqgen.data.rows import shuffled_classes
from vqgen.engine.distributed import SharedError
from vqgen.pipeline.evaluation.fidelity import NEIGHBOURS

MIN_GROUPS = 10
MIN_IMAGES = 500  # images per set the default n_per_class reaches when the test split holds them
N_PER_CLASS = 50


@dataclass(frozen=True)
class HeldOut:
    """Rows of the test split: `real` (n), the `selection` reference (2n) settings are chosen against,
    the `reference` (2n, disjoint from it) the chosen setting and the floors are scored against. The real
    images may sit in the selection reference: they are only scored against the other one."""

    real: torch.Tensor
    selection: torch.Tensor
    reference: torch.Tensor
    labels: torch.Tensor | None
    per_group: int

    @property
    def groups(self) -> int:
        return len(self.real) // self.per_group


def _groups(data: BatchedImages, seed: int) -> list[torch.Tensor]:
    """Test rows by class (or group), each in an order drawn by `seed`."""
    classes = int(data.info.num_classes or 0) if data.labels is not None else None
    return shuffled_classes(data.labels, len(data), seed, MIN_GROUPS, classes)


def _per_group(sizes: list[int], n_per_class: int | None) -> int:
    """Held-out images per class (or group) of each set, for groups of these sizes. Every torchrun rank
    that asks gets the same answer, so a refusal is a SharedError: rank 0 says it for all of them."""
    wanted = n_per_class or max(N_PER_CLASS, math.ceil(MIN_IMAGES / len(sizes)))
    per_group = min([wanted] + [size // 4 for size in sizes])
    if per_group < 1 or per_group * len(sizes) <= NEIGHBOURS:
        raise SharedError(f"the test split is too small to evaluate: its smallest class (or group) has "
                          f"{min(sizes)} images, and eval needs 4 held-out images per sample and more than "
                          f"{NEIGHBOURS} samples in all; add test images, or run without eval (--no-eval)")
    return per_group


def check_evaluable(data: BatchedImages, n_per_class: int | None = None) -> None:
    """Refuse a test split too small to evaluate: `vqgen run` asks before any training and `vqgen eval`
    before its judge trains, so that they fail in seconds rather than after the training."""
    _per_group([len(rows) for rows in _groups(data, seed=0)], n_per_class)


def held_out(data: BatchedImages, n_per_class: int | None, seed: int) -> HeldOut:
    """From every group, rows drawn at random by `seed`: n_per_class real rows within 2 x n_per_class
    selection rows, and 2 x n_per_class reference rows; fewer per group when the smallest group is short."""
    groups = _groups(data, seed)
    per_group = _per_group([len(rows) for rows in groups], n_per_class)
    selection = torch.cat([rows[:2 * per_group] for rows in groups])
    real = torch.cat([rows[:per_group] for rows in groups])
    reference = torch.cat([rows[2 * per_group:4 * per_group] for rows in groups])
    labels = data.labels[real] if data.labels is not None else None
    return HeldOut(real, selection, reference, labels, per_group)


def images_of(data: BatchedImages, rows: torch.Tensor) -> torch.Tensor:
    """The (N, C, H, W) images of `rows`."""
    return data.__getitems__(rows.tolist())[0]
