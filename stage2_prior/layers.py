"""Causal building blocks of the gated PixelCNN (van den Oord et al. 2016, section 2.2).

Causality is structural: ordinary convolutions see only the past because their inputs are padded
and shifted, never because weights are masked in forward, so any state dict is causal as saved.

- The vertical stack at row i sees rows <= i (all columns within reach); it reaches the horizontal
  stack only shifted down one row, so position (i, j) receives rows < i from it.
- The horizontal stack at (i, j) sees columns <= j of row i, and columns < j in the first layer,
  whose input is shifted right by one: no layer ever sees the code it predicts.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def gate(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """tanh(a) * sigmoid(b) over the two halves of `dim` (eq. 2)."""
    a, b = x.chunk(2, dim)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W): row i receives row i - 1, row 0 zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, : x.shape[2]]


class LayerOutput(NamedTuple):
    vertical: torch.Tensor    # (B, C, H, W)
    horizontal: torch.Tensor  # (B, C, H, W)
    skip: torch.Tensor        # (B, S, H, W)


class GatedLayer(nn.Module):
    """One gated layer: vertical and horizontal stacks, the link between them, skip and residual."""

    def __init__(self, channels: int, skip_channels: int, kernel: int, first: bool, num_classes: int) -> None:
        super().__init__()
        self.channels, self.kernel, self.first = channels, kernel, first
        self.v_conv = nn.Conv2d(channels, 2 * channels, (kernel // 2 + 1, kernel))
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, kernel // 2 + 1))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels + skip_channels, 1)  # residual and skip in one
        self.cond = nn.Embedding(num_classes, 4 * channels) if num_classes else None

    @property
    def v_rows(self) -> int:
        return self.kernel // 2 + 1

    @property
    def h_cols(self) -> int:
        return self.kernel // 2 + 1

    def label_bias(self, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Class-conditional gate biases (eq. 4) for the vertical and horizontal stacks, (B, 2C) each."""
        if self.cond is None or labels is None:
            return None
        return self.cond(labels).chunk(2, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor | None) -> LayerOutput:
        width = h.shape[3]
        pad = self.kernel // 2
        v_pre = self.v_conv(F.pad(v, (pad, pad, self.v_rows - 1, 0)))  # (B, 2C, H, W), rows <= i
        if self.first:
            h_in = F.pad(h, (self.h_cols, 0))[..., : width + self.h_cols - 1]  # shifted: columns < j
        else:
            h_in = F.pad(h, (self.h_cols - 1, 0))  # columns <= j
        h_pre = self.h_conv(h_in) + self.v_to_h(shift_down(v_pre))  # (B, 2C, H, W)
        bias = self.label_bias(labels)
        if bias is not None:
            v_pre = v_pre + bias[0][:, :, None, None]
            h_pre = h_pre + bias[1][:, :, None, None]
        out = self.h_out(gate(h_pre))  # (B, C + S, H, W)
        residual, skip = out[:, : self.channels], out[:, self.channels:]
        return LayerOutput(gate(v_pre), residual if self.first else h + residual, skip)
