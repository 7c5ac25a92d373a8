"""Sampling code grids from the prior, position by position in raster order.

`sample` is incremental: it keeps, for every layer, the vertical-stack rows and the horizontal-stack
positions already computed, so each new position costs a few (B, C) matrix products per layer
instead of a forward pass over the whole grid (the caching idea of Ramachandran et al. 2017,
"Fast Generation for Convolutional Autoregressive Models"). `sample_naive` runs the full model
once per position; both draw the same codes from the same generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

from data.errors import UsageError
from stage2_prior.layers import GatedLayer, gate
from stage2_prior.model import GatedPixelCNN

Labels = int | torch.Tensor | None


def _labels(model: GatedPixelCNN, n: int, labels: Labels, device: torch.device) -> torch.Tensor | None:
    classes = model.config.num_classes
    if labels is None:
        if classes:
            raise UsageError(f"this prior is conditioned on {classes} classes; pass --label (0..{classes - 1})")
        return None
    if not classes:
        raise UsageError("this prior is unconditional; --label cannot be used")
    tensor = torch.as_tensor(labels, dtype=torch.long, device=device).expand(n).clone()  # (n,)
    bad = tensor[(tensor < 0) | (tensor >= classes)]
    if bad.numel():
        raise UsageError(f"--label={int(bad[0])} is outside the prior's classes 0..{classes - 1}")
    return tensor


def _check(model: GatedPixelCNN, n: int, temperature: float, top_k: int | None) -> None:
    if n < 1:
        raise UsageError(f"-n={n} is not allowed; must be >= 1")
    if not temperature > 0:
        raise UsageError(f"--temperature={temperature} is not allowed; must be > 0")
    k = model.config.codebook_size
    if top_k is not None and not 1 <= top_k <= k:
        raise UsageError(f"--top-k={top_k} is not allowed; must be in 1..{k} (the prior's K)")


def draw(logits: torch.Tensor, temperature: float, top_k: int | None,
         generator: torch.Generator | None) -> torch.Tensor:
    """(B, K) logits -> (B,) codes, from softmax(logits / temperature) over the top-k codes."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=1), 1, generator=generator)[:, 0]


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's weight (O, I, 1, 1) as a linear layer's (O, I)."""
    return weight[:, :, 0, 0]


def _head(model: GatedPixelCNN, skip: torch.Tensor) -> torch.Tensor:
    """The output head at one position, as linear maps: (B, S) -> (B, K)."""
    _, hidden, _, out = model.head
    x = F.linear(F.relu(skip), _as_matrix(hidden.weight), hidden.bias)
    return F.linear(F.relu(x), _as_matrix(out.weight), out.bias)


class _LayerCache:
    """One layer's state while sampling: padded vertical input rows, the current row of the
    horizontal input, and the vertical-to-horizontal bias of the current row."""

    def __init__(self, layer: GatedLayer, batch: int, grid: tuple[int, int], labels: torch.Tensor | None) -> None:
        h, w = grid
        c, device = layer.channels, layer.v_conv.weight.device
        dtype = layer.v_conv.weight.dtype
        self.layer, self.pad = layer, layer.kernel // 2
        self.v_in = torch.zeros(batch, c, h + layer.v_rows - 1, w + 2 * self.pad, device=device, dtype=dtype)
        self.h_offset = layer.h_cols if layer.first else layer.h_cols - 1  # where column 0 sits in h_in
        self.h_in = torch.zeros(batch, w + self.h_offset, c, device=device, dtype=dtype)  # (B, W + pad, C)
        self.h_weight = rearrange(layer.h_conv.weight, "o c 1 k -> (k c) o")  # (kw * C, 2C)
        self.out_weight = rearrange(layer.h_out.weight, "o c 1 1 -> c o")  # (C, C + S)
        bias = layer.label_bias(labels)
        self.v_bias = None if bias is None else bias[0][:, :, None, None]  # (B, 2C, 1, 1)
        self.h_bias = layer.h_conv.bias + (0 if bias is None else bias[1])  # (2C,) or (B, 2C)
        first_row = self.h_bias + layer.v_to_h.bias  # row 0 gets zeros from the vertical stack
        self.row_bias = first_row.expand(batch, -1)[:, None].expand(batch, w, -1).contiguous()  # (B, W, 2C)

    def horizontal(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual stream, skip) at column j of the current row, each (B, C) / (B, S)."""
        layer, c = self.layer, self.layer.channels
        window = self.h_in[:, j: j + layer.h_cols].flatten(1)  # (B, kw * C)
        pre = torch.addmm(self.row_bias[:, j], window, self.h_weight)  # (B, 2C)
        out = torch.addmm(layer.h_out.bias, gate(pre), self.out_weight)  # (B, C + S)
        residual = out[:, :c] if layer.first else out[:, :c] + self.h_in[:, j + self.h_offset]
        return residual, out[:, c:]

    def vertical(self, i: int) -> torch.Tensor:
        """Finish row i of the vertical stack; set the horizontal bias of row i + 1; return gated row i."""
        rows = self.v_in[:, :, i: i + self.layer.v_rows]  # (B, C, kh, W + 2p)
        v_pre = self.layer.v_conv(rows)  # (B, 2C, 1, W)
        link = F.linear(v_pre[:, :, 0].transpose(1, 2), _as_matrix(self.layer.v_to_h.weight),
                        self.layer.v_to_h.bias)  # (B, W, 2C)
        bias = self.h_bias[:, None] if self.h_bias.dim() == 2 else self.h_bias
        self.row_bias = link + bias
        if self.v_bias is not None:
            v_pre = v_pre + self.v_bias
        return gate(v_pre)[:, :, 0]  # (B, C, W)

    def put_vertical(self, i: int, row: torch.Tensor) -> None:
        """Row i of this layer's vertical input, (B, C, W)."""
        self.v_in[:, :, i + self.layer.v_rows - 1, self.pad: self.pad + row.shape[2]] = row

    def put_horizontal(self, j: int, value: torch.Tensor) -> None:
        self.h_in[:, j + self.h_offset] = value


class IncrementalSampler:
    """Per-position logits from cached activations: `logits(i, j)`, then `commit(i, j, codes)`."""

    def __init__(self, model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.model, self.grid = model, model.config.grid
        self.caches = [_LayerCache(layer, codes.shape[0], self.grid, labels) for layer in model.layers]

    def logits(self, i: int, j: int) -> torch.Tensor:
        """(B, K) logits at (i, j), given every code committed before it in raster order."""
        skip = 0
        for index, cache in enumerate(self.caches):
            residual, s = cache.horizontal(j)
            skip = skip + s
            if index + 1 < len(self.caches):
                self.caches[index + 1].put_horizontal(j, residual)
        return _head(self.model, skip)  # (B, K)

    def commit(self, i: int, j: int, codes: torch.Tensor) -> None:
        """Record the codes drawn at (i, j); at the end of a row, advance the vertical stacks."""
        embedded = self.model.embedding(codes)  # (B, C)
        first = self.caches[0]
        first.put_horizontal(j, embedded)
        first.v_in[:, :, i + first.layer.v_rows - 1, first.pad + j] = embedded
        if j == self.grid[1] - 1:
            for index, cache in enumerate(self.caches):
                row = cache.vertical(i)
                if index + 1 < len(self.caches):
                    self.caches[index + 1].put_vertical(i, row)


class NaiveSampler:
    """The baseline: a full forward pass over the grid for every position."""

    def __init__(self, model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.model, self.codes, self.labels = model, codes, labels

    def logits(self, i: int, j: int) -> torch.Tensor:
        return self.model(self.codes, self.labels)[:, :, i, j]  # (B, K)

    def commit(self, i: int, j: int, codes: torch.Tensor) -> None:
        """Nothing to cache: the next forward pass reads the codes grid itself."""


@torch.no_grad()
def generate(model: GatedPixelCNN, n: int, labels: Labels = None, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None, progress: bool = True,
             sampler: type[IncrementalSampler] | type[NaiveSampler] = IncrementalSampler) -> torch.Tensor:
    """(n, H, W) codes drawn from the prior in raster order."""
    _check(model, n, temperature, top_k)
    model.eval()
    device = next(model.parameters()).device
    label_tensor = _labels(model, n, labels, device)
    h, w = model.config.grid
    codes = torch.zeros(n, h, w, dtype=torch.long, device=device)
    state = sampler(model, codes, label_tensor)
    for position in tqdm(range(h * w), desc="sample", disable=not progress, leave=False):
        i, j = divmod(position, w)
        codes[:, i, j] = draw(state.logits(i, j), temperature, top_k, generator)  # one code per grid
        state.commit(i, j, codes[:, i, j])  # cache what later positions need
    return codes


def sample(model: GatedPixelCNN, n: int, labels: Labels = None, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None, progress: bool = True) -> torch.Tensor:
    """Incremental sampling, the default."""
    return generate(model, n, labels, temperature, top_k, generator, progress, IncrementalSampler)


def sample_naive(model: GatedPixelCNN, n: int, labels: Labels = None, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 progress: bool = True) -> torch.Tensor:
    """One full forward per position: the baseline the incremental sampler must equal."""
    return generate(model, n, labels, temperature, top_k, generator, progress, NaiveSampler)
