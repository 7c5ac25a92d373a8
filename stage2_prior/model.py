"""The gated PixelCNN prior over grids of discrete codes (van den Oord et al. 2016), with no I/O."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqgen.engine.checkpoint import Pretrained
from vqgen.engine.errors import VQGenError
from vqgen.stage2_prior.attention import CausalAttention
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.layers import GatedBlock, conv_matrix


class Head(nn.Sequential):
    """ReLU, 1x1 convolution, ReLU, 1x1 convolution to K logits, on the summed skip connections (the output
    stack of WaveNet, van den Oord et al. 2016, arXiv 1609.03499, Fig. 4).

    Its children keep the names "0".."3" that every saved prior's state dict holds (`head.1.weight`,
    `head.3.weight`); `hidden` and `out` name the two convolutions.
    """

    def __init__(self, channels: int, codes: int) -> None:
        super().__init__(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, codes, 1))

    @property
    def hidden(self) -> nn.Conv2d:
        return self[1]

    @property
    def out(self) -> nn.Conv2d:
        return self[3]


class PositionHead:
    """What `GatedPixelCNN.forward` does after its layers (skip connections summed, then the head), at one
    position, as matrix products on (B, C) features: the incremental sampler's last step. The skip maps of
    all skipping layers meet their inputs in one product."""

    def __init__(self, model: GatedPixelCNN) -> None:
        self.skip_from = model.skip_layers.start
        weight, self.skip_bias = model.skip_map()  # (S, L' * C, 1, 1), (S,)
        self.skip_weight = rearrange(weight, "s i 1 1 -> i s").contiguous()  # (L' * C, S)
        hidden, out = model.head.hidden, model.head.out
        self.hidden_weight, self.hidden_bias = conv_matrix(hidden), hidden.bias  # (S, S), (S,)
        self.out_weight, self.out_bias = conv_matrix(out), out.bias  # (S, K), (K,)

    def __call__(self, gated: torch.Tensor) -> torch.Tensor:
        """(B, L, C) gated horizontal features of every layer at one position -> (B, K) logits there."""
        skip = torch.addmm(self.skip_bias, gated[:, self.skip_from:].flatten(1), self.skip_weight)  # (B, S)
        hidden = torch.addmm(self.hidden_bias, skip.relu_(), self.hidden_weight).relu_()  # (B, S)
        return torch.addmm(self.out_bias, hidden, self.out_weight)  # (B, K)


class GatedPixelCNN(nn.Module, Pretrained):
    """codes (B, H, W) [+ labels (B,)] -> logits (B, K, H, W) of each code given the codes before it.

    The prior of VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937, sec. 3.2): raster order, a
    vertical and a horizontal stack with no blind spot, a ReLU / 1x1 head on the skip connections of
    every layer summed (`config.skips`) or on the last layer's alone; optionally a causal self-attention
    layer over the horizontal stack after every `config.attention_every`-th layer (attention.py).
    It is convolutional, so it takes grids of any size; it was trained on `config.grid`.
    """

    kind = "prior"
    config_class = PriorConfig

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        c, s = config.channels, config.head_channels
        self.embedding = nn.Embedding(config.codebook_size, c)
        self.layers = nn.ModuleList(
            GatedBlock(c, s if i in self.skip_layers else 0,
                       config.first_kernel if i == 0 else config.kernel, i == 0, i == config.layers - 1,
                       config.label_embeddings, config.dropout)
            for i in range(config.layers))
        # keyed by the gated layer each follows: state dict keys "attention.5.qkv.weight"
        self.attention = nn.ModuleDict({str(i): CausalAttention(c, config.attention_heads)
                                        for i in config.attention_after})
        self.head = Head(s, config.codebook_size)

    @property
    def skip_layers(self) -> range:
        """The layers with a skip connection into the head: every layer with `config.skips`, else the last."""
        return range(0 if self.config.skips else self.config.layers - 1, self.config.layers)

    def skip_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The skip maps of all skipping layers as one 1x1 convolution of their inputs concatenated, weight
        (S, L' * C, 1, 1) and bias (S,): their sum in one product, which runs faster than L' narrow ones
        summed (docs/experiments.md, "Speed")."""
        skipping = self.layers[self.skip_layers.start:]
        return torch.cat([layer.skip.weight for layer in skipping], 1), sum(layer.skip.bias for layer in skipping)

    def attention_at(self, index: int) -> CausalAttention | None:
        """The attention layer after gated layer `index`, if one follows it (the one place its key is spelled)."""
        return self.attention[str(index)] if str(index) in self.attention else None

    def incremental_head(self) -> PositionHead:
        """Skip connections and head at one position, for the incremental sampler (eval mode)."""
        return PositionHead(self)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # Shapes always; values outside training only: training data was checked once, when its latent
        # dataset opened, and reading values back to the host is a sync per step on a GPU.
        self.check_codes(codes, values=not self.training)
        self.check_labels(labels, len(codes), values=not self.training)
        x = rearrange(self.embedding(codes.long()), "b h w c -> b c h w")  # (B, C, H, W)
        v, h, to_skip = x, x, []
        for index, layer in enumerate(self.layers):
            v, h, gated = layer(v, h, labels)  # the last layer returns no v, h
            attention = self.attention_at(index)
            if attention is not None:
                h = attention(h)
            if gated is not None:
                to_skip.append(gated)  # (B, C, H, W)
        skip = F.conv2d(torch.cat(to_skip, 1), *self.skip_map())  # (B, S, H, W)
        return self.head(skip)  # (B, K, H, W)

    def loss(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy in nats per code, the training objective."""
        return F.cross_entropy(self(codes, labels).float(), codes.long())

    def nll_bits(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) negative log-likelihood of each grid in bits: nats summed over positions / ln 2."""
        nats = F.cross_entropy(self(codes, labels).float(), codes.long(), reduction="none")  # (B, H, W)
        return nats.flatten(1).sum(1) / math.log(2)

    def check_codes(self, codes: torch.Tensor, values: bool = True) -> None:
        """Refuse anything but integer grids (B, H, W) of codes in 0..K-1, naming the numbers."""
        cfg = self.config
        if codes.dim() != 3 or codes.is_floating_point() or codes.is_complex():
            raise VQGenError(f"codes must be an integer tensor (B, H, W); got {codes.dtype} of shape "
                             f"{tuple(codes.shape)}")
        if not values:
            return
        low, high = (int(x) for x in torch.aminmax(codes)) if codes.numel() else (0, 0)
        if low < 0 or high >= cfg.codebook_size:
            raise VQGenError(f"codes hold code {low if low < 0 else high} but the prior was built for "
                             f"K={cfg.codebook_size} codes (0..{cfg.codebook_size - 1})")

    def check_labels(self, labels: torch.Tensor | None, batch: int, values: bool = True) -> None:
        """Labels are needed exactly when the prior is class-conditional, one per grid, in range (the
        null label `num_classes` too, for a prior trained with label dropout)."""
        classes, ids = self.config.num_classes, self.config.label_embeddings
        if labels is None:
            if classes:
                raise VQGenError(f"this prior is conditioned on {classes} classes; pass labels (B,) in "
                                 f"0..{classes - 1}")
            return
        if not classes:
            raise VQGenError("this prior is unconditional (num_classes=0); labels cannot be used")
        if labels.shape != (batch,):
            raise VQGenError(f"labels have shape {tuple(labels.shape)} but the codes hold {batch} grids")
        if not values:
            return
        low, high = (int(x) for x in torch.aminmax(labels)) if batch else (0, 0)
        if low < 0 or high >= ids:
            null = f" ({classes}: no class)" if ids > classes else ""
            raise VQGenError(f"labels must lie in [0, {ids}){null} for this prior; got {low if low < 0 else high}")
