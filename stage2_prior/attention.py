"""Causal self-attention over the horizontal stack, the gated PixelCNN's optional global context.

A gated PixelCNN's receptive field grows a few rows and columns per layer: on a 16 x 16 grid, a dozen
layers see a band above the code they predict, not the grid. PixelSNAIL (Chen et al. 2018, "PixelSNAIL:
An Improved Autoregressive Generative Model", arXiv 1712.09763) interleaves convolutions with causal
attention over every earlier position; `CausalAttention` adds such a layer between two gated layers,
reading and updating the horizontal stack alone. The horizontal stack at a position already depends on
the codes strictly before it (layers.py), so attending to every position up to and including the current
one (a lower-triangular mask) keeps the prior causal and adds no blind spot.

Queries, keys and values also read each position's coordinates, scaled to [-1, 1] over the grid
(PixelSNAIL's "background" channels), so that attention can weigh where a code is, not only what it
holds; scaled coordinates keep a prior usable on any grid size. The layer is a residual, pre-norm block as in a
transformer: h + out(attention(norm(h))).

`CausalAttention.incremental` gives the same layer one position at a time for sampling: a cache of the
keys and values of the positions drawn so far (the KV cache of autoregressive transformers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def coordinates(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(H * W, 2) row and column of each position in raster order, scaled to [-1, 1] (0 for a side of 1)."""
    rows = torch.linspace(-1, 1, height, device=like.device, dtype=like.dtype) if height > 1 else like.new_zeros(1)
    cols = torch.linspace(-1, 1, width, device=like.device, dtype=like.dtype) if width > 1 else like.new_zeros(1)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).flatten(0, 1)


class CausalAttention(nn.Module):
    """h (B, C, H, W) -> h + out(attention(norm(h))), position p attending to positions <= p in raster order."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels + 2, 3 * channels)  # the normalised features and the two coordinates
        self.out = nn.Linear(channels, channels)

    def project(self, h: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """(..., C) features and (..., 2) coordinates -> (3, ..., heads, C / heads) queries, keys and values."""
        x = self.norm(h)
        qkv = self.qkv(torch.cat([x, where.to(x.dtype).expand(*x.shape[:-1], 2)], -1))
        return rearrange(qkv, "... (three heads d) -> three ... heads d", three=3, heads=self.heads)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        height, width = h.shape[2:]
        x = rearrange(h, "b c h w -> b (h w) c")
        where = coordinates(height, width, self.qkv.weight)  # (N, 2)
        q, k, v = (rearrange(t, "b n heads d -> b heads n d") for t in self.project(x, where))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, N, d)
        y = self.out(rearrange(attended, "b heads n d -> b n (heads d)"))  # (B, N, C)
        return h + rearrange(y, "b (h w) c -> b c h w", h=height).to(h.dtype)

    def incremental(self, batch: int, grid: tuple[int, int]) -> AttentionCache:
        """This layer for sampling one position at a time over a (batch, *grid) grid, see `AttentionCache`."""
        return AttentionCache(self, batch, grid)


class AttentionCache:
    """One `CausalAttention` a position at a time, in raster order: the keys and values of every position
    so far are kept, so a new position costs its own projections and one attention row."""

    def __init__(self, layer: CausalAttention, batch: int, grid: tuple[int, int]) -> None:
        weight = layer.qkv.weight
        self.layer, self.width = layer, grid[1]
        self.where = coordinates(*grid, weight)  # (H * W, 2)
        channels = layer.out.weight.shape[0]
        shape = (batch, layer.heads, grid[0] * grid[1], channels // layer.heads)
        self.keys, self.values = weight.new_zeros(shape), weight.new_zeros(shape)  # (B, heads, H * W, d)

    def at(self, i: int, j: int, h: torch.Tensor) -> torch.Tensor:
        """The layer's output at (i, j), (B, C), from its input there, (B, C); positions in raster order."""
        p = i * self.width + j
        q, k, v = self.layer.project(h, self.where[p])  # (B, heads, d) each
        self.keys[:, :, p], self.values[:, :, p] = k, v
        attended = F.scaled_dot_product_attention(q[:, :, None], self.keys[:, :, : p + 1],
                                                  self.values[:, :, : p + 1])  # (B, heads, 1, d)
        return h + self.layer.out(attended.flatten(1))
