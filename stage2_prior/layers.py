"""Causal building blocks of the gated PixelCNN (van den Oord et al. 2016, arXiv 1606.05328, sec. 2.2).

Causality is structural: each convolution is an ordinary one whose input is padded only above and to
the left, which leaves it only the past, never a mask applied to its weights, so any state dict is
causal as saved.

- The vertical stack at row i sees rows <= i, every column within reach. It reaches the horizontal
  stack only shifted down one row, so position (i, j) hears rows < i from it.
- The horizontal stack at (i, j) sees columns <= j of row i; in the first layer (mask A), columns
  < j only, so no layer ever sees the code it predicts.

`GatedBlock.forward` computes a layer over a whole grid; `GatedBlock.incremental` gives the same layer one
position at a time for sampling (`BlockCache`), its convolutions as matrices on flat windows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def gate(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The gated activation tanh(a) * sigmoid(b) over the two halves of `dim` (eq. 2)."""
    a, b = x.chunk(2, dim)
    return torch.tanh(a) * torch.sigmoid(b)


def conv_matrix(conv: nn.Conv2d) -> torch.Tensor:
    """A one-row convolution's weight (O, I, 1, k) as the (k * I, O) matrix of a linear map on a flat window."""
    return rearrange(conv.weight, "o i 1 k -> (k i) o").contiguous()


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W): row i receives row i - 1 and row 0 zeros, so row i hears rows < i only."""
    return F.pad(x, (0, 0, 1, -1))  # one zero row above, the last row dropped


class VerticalConv(nn.Conv2d):
    """A (kernel // 2 + 1) x kernel convolution whose row i sees input rows i - kernel // 2 .. i.

    Its input is zero-padded by `reach` = kernel // 2 rows above and columns on either side, never below, so the
    output has the input's size as computed: cropping a padded output instead costs a copy forward and a
    zero-filled gradient backward in every layer (docs/experiments.md, "Speed").
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__(in_channels, out_channels, (kernel // 2 + 1, kernel))
        self.reach = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reach
        return super().forward(F.pad(x, (r, r, r, 0)))  # (B, O, H, W)


class HorizontalConv(nn.Conv2d):
    """A 1 x (kernel // 2 + 1) convolution whose column j sees columns <= j, or < j for mask A.

    Its input is zero-padded by `offset` columns on the left (one more for mask A, which drops the last column
    instead), so the output has the input's width as computed, uncropped (see `VerticalConv`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, sees_current: bool) -> None:
        width = kernel // 2 + 1
        super().__init__(in_channels, out_channels, (1, width))
        self.offset = width - 1 if sees_current else width  # zero columns before column 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.offset, self.kernel_size[1] - 1 - self.offset)))  # (B, O, H, W)


class BlockOutput(NamedTuple):
    vertical: torch.Tensor | None    # (B, C, H, W); None from the last layer, which feeds no layer
    horizontal: torch.Tensor | None  # (B, C, H, W); None from the last layer
    gated: torch.Tensor | None       # (B, C, H, W), the input of the layer's skip map; None from a layer without one


class GatedBlock(nn.Module):
    """One gated layer (Fig. 2 of van den Oord et al. 2016).

    Both stacks are gated; the vertical stack's pre-activations, shifted down a row, join the
    horizontal stack through a 1x1 convolution (`link`); the horizontal stack keeps a residual
    connection (except in the first layer, whose input is the code at the current position) and
    sends a skip connection to the head (`skip_channels` 0: none; the last layer always does, it is the
    head's input). The layer holds its skip map but returns the map's input: the model applies the maps of all
    layers as one product (`GatedPixelCNN.skip_map`). A class label adds a learned bias before both gates (eq. 4).
    Dropout (training only) acts on the gated horizontal features, before the residual and skip maps.

    The last layer feeds only the head: it has no residual map and computes no stack outputs, so
    every weight it holds reaches the loss (DDP requires it) and no work is spent on dead outputs.
    """

    def __init__(self, channels: int, skip_channels: int, kernel: int, first: bool, last: bool, labels: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.first, self.last = first, last
        self.vertical = VerticalConv(channels, 2 * channels, kernel)
        self.horizontal = HorizontalConv(channels, 2 * channels, kernel, sees_current=not first)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.residual = None if last else nn.Conv2d(channels, channels, 1)
        self.skip = nn.Conv2d(channels, skip_channels, 1) if skip_channels else None
        self.label_bias = nn.Embedding(labels, (2 if last else 4) * channels) if labels else None
        self.dropout = nn.Dropout(dropout)

    def _load_from_state_dict(self, state: dict, prefix: str, *args: object) -> None:
        """Priors saved before the last layer shed its dead parts (vqgen 0.2) still load, exactly: their
        last layer's residual map and vertical label bias never reached the output, so they are dropped."""
        if self.last:
            for key in (f"{prefix}residual.weight", f"{prefix}residual.bias"):
                state.pop(key, None)
            bias = state.get(f"{prefix}label_bias.weight")
            if bias is not None and bias.shape[1] == 2 * self.label_bias.embedding_dim:
                state[f"{prefix}label_bias.weight"] = bias[:, self.label_bias.embedding_dim:]
        super()._load_from_state_dict(state, prefix, *args)

    def label_biases(self, labels: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        """The class-conditional biases of the vertical and horizontal gates, (B, 2C) each (the last layer
        has no vertical gate: None), or None without labels."""
        if self.label_bias is None or labels is None:
            return None
        if self.last:
            return None, self.label_bias(labels)
        vertical, horizontal = rearrange(self.label_bias(labels), "b (two c) -> two b c", two=2)
        return vertical, horizontal

    def forward(self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor | None = None) -> BlockOutput:
        v_pre = self.vertical(v)  # (B, 2C, H, W): rows <= i
        h_pre = self.horizontal(h) + self.link(shift_down(v_pre))  # (B, 2C, H, W): row i to column j, rows < i
        biases = self.label_biases(labels)
        if biases is not None:  # in the convolutions' dtype: an fp32 bias would lift bf16 gates to fp32
            h_pre = h_pre + biases[1].to(h_pre.dtype)[:, :, None, None]
        gated = self.dropout(gate(h_pre))  # (B, C, H, W)
        to_skip = None if self.skip is None else gated
        if self.residual is None:
            return BlockOutput(None, None, to_skip)
        if biases is not None:
            v_pre = v_pre + biases[0].to(v_pre.dtype)[:, :, None, None]
        h_out = self.residual(gated) if self.first else h + self.residual(gated)
        return BlockOutput(gate(v_pre), h_out, to_skip)

    def incremental(self, batch: int, grid: tuple[int, int], labels: torch.Tensor | None) -> BlockCache:
        """This layer for sampling one position at a time over a (batch, *grid) grid, in eval mode (no
        dropout): the same algebra as `forward`, see `BlockCache`."""
        return BlockCache(self, batch, grid, labels)


class BlockCache:
    """One `GatedBlock` evaluated a position at a time, in raster order, reusing what earlier positions
    computed (the caching of Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive
    Models", arXiv 1704.06001): a position costs a few (B, C) matrix products.

    Holds the block's vertical input rows and the current row of its horizontal input, zero-padded as its
    convolutions pad them, and `row_bias`: the part of the horizontal pre-activation that does not depend
    on the current row (convolution and link biases, label bias, and the link from the row above).
    Per row i, call `gate_at` / `output_at` for each column j, then `finish_row(i)`.
    """

    def __init__(self, block: GatedBlock, batch: int, grid: tuple[int, int], labels: torch.Tensor | None) -> None:
        (height, width), channels, weight = grid, block.vertical.in_channels, block.vertical.weight
        self.block = block
        self.rows, self.pad = block.vertical.kernel_size[0], block.vertical.reach  # row i sees rows - 1 above
        self.cols, self.offset = block.horizontal.kernel_size[1], block.horizontal.offset  # offset: column 0
        self.v_in = weight.new_zeros(batch, channels, height + self.rows - 1, width + 2 * self.pad)  # zero-padded
        self.h_in = weight.new_zeros(batch, width + self.offset, channels)  # (B, W + offset, C)
        self.h_weight = conv_matrix(block.horizontal)  # (cols * C, 2C)
        self.link_weight = conv_matrix(block.link)  # (2C, 2C)
        self.res_weight = None if block.residual is None else conv_matrix(block.residual)  # (C, C)
        self.v_bias, self.h_bias = self._biases(batch, labels)
        self.row_bias = self.h_bias[:, None].expand(batch, width, -1)  # (B, W, 2C): row 0 hears nothing above

    def _biases(self, batch: int, labels: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The vertical gate's label bias (B, 2C, 1, 1) (None without labels or in the last layer), and every
        bias of the horizontal pre-activation summed, (B, 2C)."""
        block, biases = self.block, self.block.label_biases(labels)
        v_bias = None if biases is None or biases[0] is None else biases[0][:, :, None, None]
        h_bias = (block.horizontal.bias + block.link.bias).expand(batch, -1)
        return v_bias, (h_bias if biases is None else h_bias + biases[1])

    def gate_at(self, j: int, gated: torch.Tensor) -> None:
        """Write the gated horizontal features at column j of the current row into `gated`, (B, C):
        `gate(horizontal(h) + link(shift_down(v_pre)) + label bias)` of `forward`."""
        window = self.h_in[:, j: j + self.cols].flatten(1)  # (B, cols * C)
        pre = torch.addmm(self.row_bias[:, j], window, self.h_weight)  # (B, 2C)
        a, b = pre.chunk(2, 1)
        torch.mul(torch.tanh(a), torch.sigmoid(b), out=gated)

    def output_at(self, j: int, gated: torch.Tensor) -> torch.Tensor:
        """The horizontal output at column j, (B, C): the residual map, plus the input past the first layer
        (not in the last layer, which has none)."""
        out = torch.addmm(self.block.residual.bias, gated, self.res_weight)  # (B, C)
        return out if self.block.first else out.add_(self.h_in[:, j + self.offset])

    def finish_row(self, i: int) -> torch.Tensor | None:
        """Row i of the vertical stack, once its inputs are complete: sets the next row's link and returns
        `gate(v_pre)`, (B, C, W) (None from the last layer, which has no vertical output)."""
        vertical = self.block.vertical
        v_pre = F.conv2d(self.v_in[:, :, i: i + self.rows], vertical.weight, vertical.bias)  # (B, 2C, 1, W)
        link = rearrange(v_pre, "b c 1 w -> (b w) c") @ self.link_weight  # (B * W, 2C)
        self.row_bias = link.view(v_pre.shape[0], v_pre.shape[3], -1).add_(self.h_bias[:, None])  # (B, W, 2C)
        if self.block.last:
            return None
        if self.v_bias is not None:
            v_pre = v_pre + self.v_bias
        return gate(v_pre[:, :, 0])  # (B, C, W)

    def take_vertical(self, i: int, row: torch.Tensor) -> None:
        """Row i of this block's vertical input, (B, C, W)."""
        self.v_in[:, :, i + self.rows - 1, self.pad: self.pad + row.shape[2]] = row

    def take_horizontal(self, j: int, value: torch.Tensor) -> None:
        """Column j of this block's horizontal input in the current row, (B, C)."""
        self.h_in[:, j + self.offset] = value

    def take_code(self, i: int, j: int, embedded: torch.Tensor) -> None:
        """The first block's input at (i, j), (B, C): both of its stacks start from the embedded code."""
        self.take_horizontal(j, embedded)
        self.v_in[:, :, i + self.rows - 1, self.pad + j] = embedded
