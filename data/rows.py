"""Which rows of a split an evaluation reads, when it reads fewer than all of them.

Folders and exports are stored sorted by class, so the first rows of a split are its first classes;
every figure computed on part of a split (VQ-VAE reconstructions, the prior's held-out bits per code,
the real images of the classification accuracy score) takes its rows spread over the classes.
"""

from __future__ import annotations

import numpy as np
import torch


def spread_rows(labels: torch.Tensor | np.ndarray | None, total: int, count: int) -> list[int]:
    """`count` of `total` rows taken in turn from each class (first row of each class, then the second,
    ...), or evenly spaced when unlabelled (`labels` None)."""
    count = min(count, total)
    if labels is None:
        return torch.linspace(0, total - 1, count).round().long().tolist()
    if not isinstance(labels, torch.Tensor):  # latents keep labels in a read-only memory map: copy them
        labels = torch.from_numpy(np.array(labels))
    by_class = [(labels == c).nonzero().flatten() for c in labels.unique()]
    depth = max(len(rows) for rows in by_class)
    padded = torch.stack([torch.cat([rows, rows.new_full((depth - len(rows),), -1)]) for rows in by_class])
    interleaved = padded.t().flatten()  # (depth * classes,): first row of each class, then the second, ...
    return interleaved[interleaved >= 0][:count].tolist()
