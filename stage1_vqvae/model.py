"""The VQ-VAE of van den Oord et al. 2017 (section 4.1): encoder, quantizer, decoder."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vqgen.engine.checkpoint import Pretrained
from vqgen.engine.errors import VQGenError
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.quantizer import QuantizerOutput, build_quantizer


class ResidualBlock(nn.Module):
    """ReLU, 3x3 conv, ReLU, 1x1 conv, plus the input (the paper's residual block)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def residual_stack(config: VQVAEConfig) -> nn.Sequential:
    blocks = [ResidualBlock(config.hidden, config.res_hidden) for _ in range(config.res_blocks)]
    return nn.Sequential(*blocks, nn.ReLU())


class Encoder(nn.Module):
    """Strided 4x4 convolutions halve the image `downsamples` times; residual blocks follow."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.in_channels
        for _ in range(config.downsamples):
            layers += [nn.Conv2d(channels, config.hidden, 4, stride=2, padding=1), nn.ReLU()]
            channels = config.hidden
        layers += [nn.Conv2d(config.hidden, config.hidden, 3, padding=1), residual_stack(config),
                   nn.Conv2d(config.hidden, config.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        centred = (images - 0.5).contiguous(memory_format=torch.channels_last)  # inputs centred on 0
        return self.net(centred)  # (B, C, H, W) -> (B, D, H/f, W/f)


class Decoder(nn.Module):
    """Mirror of the encoder: residual blocks, then 4x4 transposed convolutions double the size.

    It outputs the pixels' means (a squared-error decoder) or, for `decoder` "logistic", their means and
    log-scales: a distribution over each pixel's 256 levels (stage1_vqvae/pixels.py)."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.channels = config.in_channels
        layers: list[nn.Module] = [nn.Conv2d(config.code_dim, config.hidden, 3, padding=1), residual_stack(config)]
        for i in range(config.downsamples):
            last = i == config.downsamples - 1
            out = config.in_channels * (2 if config.decoder == "logistic" else 1) if last else config.hidden
            layers.append(nn.ConvTranspose2d(config.hidden, out, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, quantized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, D, h, w) -> (means (B, C, H, W) of images in [0, 1], log-scales (B, C, H, W) or None)."""
        out = self.net(quantized.contiguous(memory_format=torch.channels_last))
        if out.shape[1] == self.channels:
            return out + 0.5, None
        means, log_scales = out.chunk(2, 1)
        return means + 0.5, log_scales


class VQVAEOutput(NamedTuple):
    reconstruction: torch.Tensor        # (B, C, H, W): the pixels' means
    quantizer: QuantizerOutput
    log_scales: torch.Tensor | None = None  # (B, C, H, W), a logistic decoder's


class VQVAE(nn.Module, Pretrained):
    """Images in [0, 1] -> a grid of codes in [0, K) -> images; no I/O here."""

    kind = "vqvae"
    config_class = VQVAEConfig

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = build_quantizer(config.quantizer_config())
        self.decoder = Decoder(config)
        # Convolutions run in channels-last layout (NHWC), the one oneDNN's CPU kernels and cuDNN's tensor
        # cores prefer: 1.4x faster at fp32 on 28x28 digits, no slower elsewhere (bench/efficiency.py).
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        return self.reconstruct(images)

    def reconstruct(self, images: torch.Tensor) -> VQVAEOutput:
        """Encode, quantize, decode: the forward pass, by a name that a subclass whose forward differs keeps
        (stage1_vqvae/decoder_tuning.py decodes codes)."""
        quantized = self.quantizer(self.encoder(images))
        means, log_scales = self.decoder(quantized.quantized)
        return VQVAEOutput(means, quantized, log_scales)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> codes (B, h, w) int64."""
        return self.quantizer(self.encoder(images)).indices

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> images (B, C, h * f, w * f), through the codebook as the decoder saw it (a
        logistic decoder's means).

        The decoder is convolutional: a grid larger than the training grid decodes to a larger image."""
        if codes.dim() != 3:
            raise VQGenError(f"codes must be (B, h, w); got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.codebook_size):
            raise VQGenError(f"codes must lie in [0, {self.config.codebook_size}) for this VQ-VAE")
        return self.decoder(self.quantizer.lookup(codes))[0]
