"""Nearest-centre search and Lloyd's k-means, shared by the quantizers' lookup and codebook init.

Distances are ||x||^2 - 2 x c^T + ||c||^2: one (N, K) matrix product, never an (N, K, D)
tensor, so a 512-code search over a batch of 8x8 grids costs what a 1x1 convolution costs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Normalise = Callable[[torch.Tensor], torch.Tensor]


def squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, d), (K, d) -> (N, K) squared euclidean distances, via a matrix product."""
    return (x.pow(2).sum(1, keepdim=True)              # (N, 1)
            - 2 * x @ centres.t()                      # (N, K)
            + centres.pow(2).sum(1)[None])             # (1, K)


def nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, d), (K, d) -> (N,) int64 index of the nearest centre."""
    return squared_distances(x, centres).argmin(1)


def sample_rows(x: torch.Tensor, count: int) -> torch.Tensor:
    """`count` rows of x (N, d) drawn with the global torch RNG, distinct while N allows.

    The global RNG (not a private generator) makes a seeded run reproducible and lets a resumed
    run, which restores that RNG, draw the same rows as an uninterrupted one.
    """
    if count <= x.shape[0]:
        picks = torch.randperm(x.shape[0], device=x.device)[:count]
    else:
        picks = torch.randint(x.shape[0], (count,), device=x.device)
    return x[picks]  # (count, d)


def kmeans(data: torch.Tensor, k: int, iters: int, normalise: Normalise = lambda c: c) -> torch.Tensor:
    """Lloyd's algorithm on data (N, d) from k random data points -> centres (K, d).

    An empty cluster keeps its previous centre. `normalise` is applied to the centres after each
    step: F.normalize gives spherical k-means for a cosine-similarity codebook.
    """
    centres = sample_rows(data, k).clone()                                       # (K, d)
    for _ in range(iters):
        assign = F.one_hot(nearest(data, centres), k).to(data.dtype)             # (N, K)
        counts = assign.sum(0)                                                   # (K,)
        means = (assign.t() @ data) / counts.clamp_min(1)[:, None]               # (K, d)
        centres = normalise(torch.where(counts[:, None] > 0, means, centres))
    return centres
