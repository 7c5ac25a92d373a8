"""VQVAEConfig: everything needed to rebuild a VQ-VAE, saved as config.json beside model.safetensors."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

from vqgen.engine.configs import option, require
from vqgen.engine.errors import VQGenError
from vqgen.stage1_vqvae.quantizer import QuantizerConfig


@dataclass(frozen=True)
class VQVAEConfig:
    """Architecture of van den Oord et al. 2017, section 4.1, with its sizes as options.

    Image size and channels come from the data; the encoder halves the image `downsamples`
    times, so the code grid is (image_height / 2**downsamples, image_width / 2**downsamples).
    """

    in_channels: int = option(1, "image channels", resume="binding", from_data=True)
    image_height: int = option(28, "image height in pixels", resume="binding", from_data=True)
    image_width: int = option(28, "image width in pixels", resume="binding", from_data=True)
    hidden: int = option(128, "channels of the encoder/decoder convolutions", resume="binding")
    res_hidden: int = option(64, "channels inside each residual block", resume="binding")
    res_blocks: int = option(2, "residual blocks in the encoder and in the decoder", resume="binding")
    downsamples: int = option(2, "stride-2 convolutions; the code grid is the image size / 2**downsamples",
                              resume="binding")
    code_dim: int = option(32, "D, the dimension of each code vector", resume="binding")
    codebook_size: int = option(512, "K, the number of codes", resume="binding")
    quantizer: Literal["ema", "straight_through"] = option(
        "ema", "ema: codebook by exponential moving averages; straight_through: codebook loss", resume="binding")
    beta: float = option(0.25, "commitment cost (eq. 3 of van den Oord et al. 2017)", resume="binding")
    decay: float = option(0.99, "EMA decay of the codebook statistics", resume="binding")
    kmeans_init: bool = option(False, "initialise the codebook by k-means on the first batch", resume="binding")
    restart_threshold: float = option(1.0, "restart codes whose EMA usage count falls below this (0: never)",
                                      resume="binding")
    restart_every: int = option(100, "steps between dead-code restarts", resume="binding")
    cosine: bool = option(False, "l2-normalised codes and encoder outputs (cosine-similarity lookup)",
                          resume="binding")
    lookup_dim: int | None = option(None, "search codes in a projected space of this dimension (none: in D)",
                                    resume="binding")
    decoder: Literal["mse", "logistic"] = option(
        "mse", "mse: pixel means trained by squared error; logistic: a discretised logistic per pixel trained by "
               "its likelihood, which bits/dim then reads directly (docs/metrics.md)", resume="binding")

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_height", "image_width", "hidden", "res_hidden", "downsamples",
                     "code_dim", "restart_every"):
            value = getattr(self, name)
            require(value >= 1, f"{name}={value} is not allowed; must be >= 1")
        require(self.res_blocks >= 0, f"res_blocks={self.res_blocks} is not allowed; must be >= 0")
        require(self.decoder in ("mse", "logistic"), f"decoder={self.decoder!r} is not allowed; must be mse or logistic")
        factor = self.downsample_factor
        for name in ("image_height", "image_width"):
            size = getattr(self, name)
            require(size % factor == 0, f"{name}={size} is not divisible by 2**downsamples={factor}; "
                                        f"resize the images or use fewer --downsamples")
        self.quantizer_config()  # validates the quantizer fields with their own messages

    @property
    def downsample_factor(self) -> int:
        return 2 ** self.downsamples

    def check_images(self, channels: int, height: int, width: int) -> None:
        """Images of another shape would fail deep inside a convolution; say both shapes instead."""
        if (channels, height, width) != (self.in_channels, self.image_height, self.image_width):
            raise VQGenError(f"images are {channels}x{height}x{width} but the VQ-VAE was built for "
                             f"{self.in_channels}x{self.image_height}x{self.image_width}; use the images it "
                             "was trained on (or --image-size for a folder)")

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_height // self.downsample_factor, self.image_width // self.downsample_factor

    def quantizer_config(self) -> QuantizerConfig:
        return QuantizerConfig(codebook_size=self.codebook_size, dim=self.code_dim, kind=self.quantizer,
                               beta=self.beta, decay=self.decay, kmeans_init=self.kmeans_init,
                               restart_threshold=self.restart_threshold, cosine=self.cosine,
                               lookup_dim=self.lookup_dim)

    @classmethod
    def paper(cls, **overrides: Any) -> "VQVAEConfig":
        """Section 4.1: 256 hidden units everywhere, K=512; D=64 as in the Sonnet reference."""
        return replace(cls(hidden=256, res_hidden=256, code_dim=64, codebook_size=512), **overrides)

    @classmethod
    def small(cls, **overrides: Any) -> "VQVAEConfig":
        """A CPU-sized model: minutes on a laptop for 28x28 digits."""
        return replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "VQVAEConfig":
        """For tests: seconds on a CPU."""
        return replace(cls(hidden=16, res_hidden=8, res_blocks=1, code_dim=8, codebook_size=32), **overrides)


PRESETS: dict[str, Callable[..., VQVAEConfig]] = {
    "paper": VQVAEConfig.paper, "small": VQVAEConfig.small, "tiny": VQVAEConfig.tiny}
