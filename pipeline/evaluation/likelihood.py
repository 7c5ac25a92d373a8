"""The two-stage likelihood the VQ-VAE paper reports (4.67 bits/dim on CIFAR-10): an upper bound on
-log2 p(x) per dimension from the prior's bits for the image's codes and the decoder's bits for the
pixels given those codes,

    bits/dim = (-log2 p(z) - log2 p(x | z)) / (C * H * W),   z = the encoder's codes of x

(van den Oord et al. 2017, sec. 4.1: log p(x) >= log p(x | z) + log p(z) for the deterministic
posterior). A decoder trained with a squared error is the mean of a Gaussian; its likelihood is that
Gaussian discretised to the 256 pixel levels (stage1_vqvae/pixels.py) with one standard deviation
sigma fitted by maximum likelihood, sqrt(mean squared error), on train images. A logistic decoder
(`VQVAEConfig.decoder`) gives its discretised likelihood itself. p(z) is the prior's unconditional probability when it has a null class (label dropout), as
the papers' figures are unconditional; otherwise its probability given the image's class.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vqgen.data.images import BatchedImages
from vqgen.data.rows import spread_rows
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.pixels import discretized_gaussian_bits, discretized_logistic_bits
from vqgen.stage2_prior.model import GatedPixelCNN

BATCH = 256


@torch.no_grad()
def _reconstruct(vqvae: VQVAE, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(means (B, C, H, W) in double, codes (B, h, w)): what the decoder says of each image."""
    out = vqvae(images.to(device))
    return out.reconstruction.double().cpu(), out.quantizer.indices


@torch.no_grad()
def _decoder_bits(vqvae: VQVAE, images: torch.Tensor, device: torch.device,
                  sigma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """((B,) bits of the images given their codes, codes (B, h, w)): the logistic decoder's own
    likelihood, or the Gaussian of `sigma` about a squared-error decoder's means."""
    out = vqvae(images.to(device))
    pixels = images.double()
    if out.log_scales is None:
        return discretized_gaussian_bits(pixels, out.reconstruction.double().cpu(), sigma), out.quantizer.indices
    return (discretized_logistic_bits(pixels, out.reconstruction.double().cpu(), out.log_scales.double().cpu()),
            out.quantizer.indices)


@torch.no_grad()
def fit_sigma(vqvae: VQVAE, train: BatchedImages, count: int, seed: int = 0) -> float:
    """The maximum-likelihood sigma of a Gaussian decoder: the root mean squared error on `count` train
    images drawn by `seed` (data/rows.py)."""
    device = next(vqvae.parameters()).device
    rows = spread_rows(train.labels, len(train), count, seed)
    squared, values = 0.0, 0
    for start in range(0, len(rows), BATCH):
        images, _ = train.__getitems__(rows[start:start + BATCH])
        means, _ = _reconstruct(vqvae, images, device)
        squared += float((means - images.double()).square().sum())
        values += images.numel()
    return math.sqrt(squared / values)


@torch.no_grad()
def bits_per_dim(vqvae: VQVAE, prior: GatedPixelCNN, train: BatchedImages, test: BatchedImages,
                 count: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The two-stage bound on `count` test images drawn by `seed` within each class and spread over the
    classes (and a squared-error decoder's sigma from as many train images), with its two parts."""
    vqvae.eval(), prior.eval()
    device = next(vqvae.parameters()).device
    sigma = fit_sigma(vqvae, train, count, seed) if vqvae.config.decoder == "mse" else None
    rows = spread_rows(test.labels, len(test), count, seed)
    prior_bits = decoder_bits = 0.0
    config = prior.config
    for start in range(0, len(rows), BATCH):
        images, labels = test.__getitems__(rows[start:start + BATCH])
        bits, codes = _decoder_bits(vqvae, images, device, sigma)
        decoder_bits += float(bits.sum())
        condition = None
        if config.num_classes:
            condition = torch.full_like(labels, config.null_label) if config.null_label is not None else labels
        prior_bits += float(prior.nll_bits(codes.to(device), None if condition is None else condition.to(device)).sum())
    dims = len(rows) * math.prod(images.shape[1:])
    return {"bits_per_dim": (prior_bits + decoder_bits) / dims, "prior_bits_per_dim": prior_bits / dims,
            "decoder_bits_per_dim": decoder_bits / dims, "sigma": sigma, "images": len(rows),
            "prior_condition": "none" if not config.num_classes else
                               ("unconditional (null class)" if config.null_label is not None else "the class")}
