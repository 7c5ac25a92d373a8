"""Which rows of a split an evaluation reads, when it reads fewer than all of them.

Files are often ordered: folders and exports by class, and within a class by file name or by the
source's own order (MNIST's first 5,000 test images are its cleaner, easier half; frame numbers and
capture dates sort too). Every figure computed on part of a split (VQ-VAE reconstructions, the
prior's held-out bits per code, bits/dim, eval's held-out sets, the real images of the
classification accuracy score) therefore takes its rows at random within each class, by a fixed
seed, and spread over the classes: the same seed gives the same rows on every rank and every resume.
"""

from __future__ import annotations

import numpy as np
import torch


def shuffled_classes(labels: torch.Tensor | np.ndarray | None, total: int, seed: int, groups: int = 1,
                     classes: int | None = None) -> list[torch.Tensor]:
    """Each class's rows in an order drawn by `seed` (classes 0..classes-1, an absent one empty; default:
    the classes present); unlabelled rows (`labels` None) are shuffled and cut into `groups` groups of
    near-equal size."""
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        return list(torch.randperm(total, generator=generator).tensor_split(groups))
    if not isinstance(labels, torch.Tensor):  # latents keep labels in a read-only memory map: copy them
        labels = torch.from_numpy(np.array(labels))
    ids = labels.unique().tolist() if classes is None else range(classes)
    by_class = [(labels == c).nonzero().flatten() for c in ids]
    return [rows[torch.randperm(len(rows), generator=generator)] for rows in by_class]


def spread_rows(labels: torch.Tensor | np.ndarray | None, total: int, count: int, seed: int) -> list[int]:
    """`count` of `total` rows drawn at random within each class by `seed`, taken in turn from each class
    (a row of every class, then a second of every class, ...); a random `count` rows when unlabelled."""
    count = min(count, total)
    if count <= 0:
        return []
    by_class = shuffled_classes(labels, total, seed)
    depth = max(len(rows) for rows in by_class)
    padded = torch.stack([torch.cat([rows, rows.new_full((depth - len(rows),), -1)]) for rows in by_class])
    interleaved = padded.t().flatten()  # (depth * classes,): a row of each class, then a second, ...
    return interleaved[interleaved >= 0][:count].tolist()
