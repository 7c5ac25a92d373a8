"""The gated PixelCNN prior over code grids (van den Oord et al. 2016), with no I/O."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from data.checkpoint import Pretrained
from data.errors import VQGenError
from stage2_prior.config import PriorConfig
from stage2_prior.layers import GatedLayer


class GatedPixelCNN(nn.Module, Pretrained):
    """codes (B, H, W) [+ labels (B,)] -> logits (B, K, H, W) of each code given the codes before it."""

    kind = "prior"
    config_class = PriorConfig

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        c, s = config.channels, config.head_channels
        self.embedding = nn.Embedding(config.codebook_size, c)
        self.layers = nn.ModuleList(
            GatedLayer(c, s, config.first_kernel if i == 0 else config.kernel, i == 0, config.num_classes)
            for i in range(config.layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(s, s, 1), nn.ReLU(), nn.Conv2d(s, config.codebook_size, 1))

    def check_inputs(self, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
        cfg = self.config
        if codes.dim() != 3 or tuple(codes.shape[1:]) != cfg.grid:
            raise VQGenError(f"codes have grid {'x'.join(map(str, codes.shape[1:]))} but the prior was built "
                             f"for {cfg.grid_height}x{cfg.grid_width}")
        if cfg.num_classes and labels is None:
            raise VQGenError(f"this prior is conditioned on {cfg.num_classes} classes; pass labels")
        if labels is not None and not cfg.num_classes:
            raise VQGenError("this prior is unconditional; labels cannot be used")
        if labels is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes):
            raise VQGenError(f"labels must lie in [0, {cfg.num_classes}) for this prior")

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embedding(codes).permute(0, 3, 1, 2)  # (B, C, H, W)
        v, h, skip = x, x, 0
        for layer in self.layers:
            v, h, s = layer(v, h, labels)
            skip = skip + s  # (B, S, H, W)
        return self.head(skip)  # (B, K, H, W)

    def loss(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy in nats per code."""
        self.check_inputs(codes, labels)
        return F.cross_entropy(self(codes, labels).float(), codes)

    def nll_bits(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) negative log-likelihood of each grid in bits."""
        self.check_inputs(codes, labels)
        nats = F.cross_entropy(self(codes, labels).float(), codes, reduction="none")  # (B, H, W)
        return nats.flatten(1).sum(1) / math.log(2)
