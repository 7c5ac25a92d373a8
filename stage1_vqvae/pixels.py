"""Likelihoods of 8-bit pixels given the decoder's output: a continuous distribution per pixel and
channel, discretised to the 256 levels k / 255 (the bin of width 1/255 around each level; the first
and last bins reach to -inf and +inf, as PixelCNN++ discretises its logistic, Salimans et al. 2017,
arXiv 1701.05517).

Two distributions: the Gaussian of a decoder trained by squared error (its mean the output, one
sigma fitted afterwards, pipeline/evaluation/likelihood.py) and the logistic of a decoder trained by
this likelihood itself (`VQVAEConfig.decoder` "logistic": a mean and a log-scale per pixel and
channel). Both take bin masses in log space throughout (`_log_bin_mass`), so a residual of many
scales keeps its true cost rather than a clamp's, and the logistic's loss its gradient.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LEVELS = 255          # 8-bit pixels: values k / 255
MIN_LOG_SCALE = -7.0  # a logistic narrower than e^-7 (0.0009, a quarter of a bin) buys nothing but overflow

LogCdf = Callable[[torch.Tensor], torch.Tensor]


def _log_bin_mass(lower: torch.Tensor, upper: torch.Tensor, log_cdf: LogCdf) -> torch.Tensor:
    """log(F(upper) - F(lower)) for standardised bin edges lower < upper of a symmetric distribution.

    A difference of two CDFs loses every digit where both are near 1, and underflows to 0 far in the
    tail (a Gaussian residual of 0.35 at sigma 0.047 has mass 1e-14 on its bin; 0.8, 1e-64); reflecting
    a bin whose centre is above zero onto the lower tail, where log F keeps its precision, and taking
    log F(u) + log(1 - F(l) / F(u)) keeps every residual's true cost, with no clamp."""
    flip = lower + upper > 0
    lower, upper = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_upper, log_lower = log_cdf(upper), log_cdf(lower)
    return log_upper + torch.log(-torch.expm1(log_lower - log_upper))


def _discretised_log_mass(images: torch.Tensor, means: torch.Tensor, scales: torch.Tensor | float,
                          log_cdf: LogCdf) -> torch.Tensor:
    """(B, C, H, W) log-probability of each pixel value's bin."""
    half = 0.5 / LEVELS
    lower, upper = (images - half - means) / scales, (images + half - means) / scales
    first, last = images <= half, images >= 1 - half
    interior = _log_bin_mass(lower, torch.where(first | last, lower + 1, upper), log_cdf)  # edge bins' values unused
    return torch.where(first, log_cdf(upper), torch.where(last, log_cdf(-lower), interior))


def discretized_gaussian_bits(images: torch.Tensor, means: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,) bits of images (B, C, H, W) on the 256 levels under N(means, sigma^2) discretised to them."""
    log_mass = _discretised_log_mass(images, means, sigma, torch.special.log_ndtr)
    return -(log_mass / math.log(2)).flatten(1).sum(1)


def discretized_logistic_nats(images: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) nats of each pixel under the logistic of `means` and `log_scales` (each (B, C, H, W),
    log-scales floored at MIN_LOG_SCALE) discretised to the 256 levels; differentiable in both."""
    scales = log_scales.clamp(min=MIN_LOG_SCALE).exp()
    return -_discretised_log_mass(images, means, scales, F.logsigmoid)


def discretized_logistic_bits(images: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """(B,) bits of images (B, C, H, W) under the decoder's discretised logistic."""
    return discretized_logistic_nats(images, means, log_scales).flatten(1).sum(1) / math.log(2)
