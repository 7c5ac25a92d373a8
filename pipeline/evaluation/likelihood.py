"""The two-stage likelihood the VQ-VAE paper reports (4.67 bits/dim on CIFAR-10): an upper bound on
-log2 p(x) per dimension from the prior's bits for the image's codes and the decoder's bits for the
pixels given those codes,

    bits/dim = (-log2 p(z) - log2 p(x | z)) / (C * H * W),   z = the encoder's codes of x

(van den Oord et al. 2017, sec. 4.1: log p(x) >= log p(x | z) + log p(z) for the deterministic
posterior). The decoder is trained with a squared error, i.e. as the mean of a Gaussian; its
likelihood is that Gaussian discretised to the 256 pixel levels (the bin of width 1/255 around each
level; the first and last bins reach to -inf and +inf, as PixelCNN++ discretises its logistic),
with one standard deviation sigma fitted by maximum likelihood, sqrt(mean squared error), on train
images. p(z) is the prior's unconditional probability when it has a null class (label dropout), as
the papers' figures are unconditional; otherwise its probability given the image's class.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vqgen.data.images import BatchedImages
from vqgen.data.rows import spread_rows
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.model import GatedPixelCNN

BATCH = 256
LEVELS = 255  # 8-bit pixels: values k / 255


def _log_bin_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for standardised bin edges lower < upper, in log space throughout.

    A difference of two CDFs loses every digit where both are near 1, and underflows to 0 past about 8
    sigma (a residual of 0.35 at sigma 0.047 has mass 1e-14 on its bin; 0.8, 1e-64); reflecting a bin
    whose centre is above zero onto the lower tail, where log_ndtr keeps its precision, and taking
    log Phi(u) + log(1 - Phi(l) / Phi(u)) keeps every residual's true cost, with no clamp."""
    flip = lower + upper > 0
    lower, upper = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_upper, log_lower = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
    return log_upper + torch.log(-torch.expm1(log_lower - log_upper))


def discretized_gaussian_bits(images: torch.Tensor, means: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,) bits of images (B, C, H, W) on the 256 levels under N(means, sigma^2) discretised to them: the
    bin of width 1/255 around each level, the first bin reaching to -inf and the last to +inf."""
    half = 0.5 / LEVELS
    lower, upper = (images - half - means) / sigma, (images + half - means) / sigma
    first, last = images <= half, images >= 1 - half
    interior = _log_bin_mass(lower, torch.where(first | last, lower + 1, upper))  # edge bins' values unused
    log_mass = torch.where(first, torch.special.log_ndtr(upper),
                           torch.where(last, torch.special.log_ndtr(-lower), interior))
    return -(log_mass / math.log(2)).flatten(1).sum(1)


@torch.no_grad()
def _reconstruct(vqvae: VQVAE, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(means (B, C, H, W) in double, codes (B, h, w)): what the decoder says of each image."""
    out = vqvae(images.to(device))
    return out.reconstruction.double().cpu(), out.quantizer.indices


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
    classes (and sigma from as many train images), with its two parts."""
    vqvae.eval(), prior.eval()
    device = next(vqvae.parameters()).device
    sigma = fit_sigma(vqvae, train, count, seed)
    rows = spread_rows(test.labels, len(test), count, seed)
    prior_bits = decoder_bits = 0.0
    config = prior.config
    for start in range(0, len(rows), BATCH):
        images, labels = test.__getitems__(rows[start:start + BATCH])
        means, codes = _reconstruct(vqvae, images, device)
        decoder_bits += float(discretized_gaussian_bits(images.double(), means, sigma).sum())
        condition = None
        if config.num_classes:
            condition = torch.full_like(labels, config.null_label) if config.null_label is not None else labels
        prior_bits += float(prior.nll_bits(codes.to(device), None if condition is None else condition.to(device)).sum())
    dims = len(rows) * math.prod(images.shape[1:])
    return {"bits_per_dim": (prior_bits + decoder_bits) / dims, "prior_bits_per_dim": prior_bits / dims,
            "decoder_bits_per_dim": decoder_bits / dims, "sigma": sigma, "images": len(rows),
            "prior_condition": "none" if not config.num_classes else
                               ("unconditional (null class)" if config.null_label is not None else "the class")}
