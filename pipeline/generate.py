"""Sampling new images: prior -> code grids -> VQ-VAE decoder. The only place the stages meet."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from vqgen.engine.configs import config_from_dict
from vqgen.engine.errors import UsageError, VQGenError
from vqgen.engine.files import read_json, save_array, write_json
from vqgen.engine.grids import save_grid
from vqgen.engine.runtime import pick_device
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import sample as sample_codes


SAMPLING_FILE = "sampling.json"


@dataclass(frozen=True)
class SamplingDefaults:
    """The temperature and top-k a prior samples with unless told otherwise.

    `vqgen eval` picks them (the setting with the lowest sample Frechet distance) and saves them in
    the prior's directory as sampling.json; without that file they are 1.0 and all codes.
    """

    temperature: float = 1.0
    top_k: int | None = None

    def save(self, prior_dir: str | Path) -> None:
        write_json(Path(prior_dir) / SAMPLING_FILE, asdict(self))

    @classmethod
    def load(cls, prior_dir: str | Path) -> "SamplingDefaults":
        path = Path(prior_dir) / SAMPLING_FILE
        return config_from_dict(cls, read_json(path, "sampling defaults"), str(path)) if path.exists() else cls()


class Samples(NamedTuple):
    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    codes: torch.Tensor   # (N, h, w) int64
    labels: torch.Tensor | None  # (N,)


def check_pair(vqvae: VQVAE, prior: GatedPixelCNN) -> None:
    """A prior only makes sense over the codebook and grid of the VQ-VAE that made its latents."""
    v, p = vqvae.config, prior.config
    if v.codebook_size != p.codebook_size:
        raise VQGenError(f"the prior was trained on K={p.codebook_size} codes but the VQ-VAE has "
                         f"K={v.codebook_size}; pass the VQ-VAE whose latents trained this prior")
    if v.grid != (p.grid_height, p.grid_width):
        raise VQGenError(f"the prior samples {p.grid_height}x{p.grid_width} grids but the VQ-VAE decodes "
                         f"{v.grid[0]}x{v.grid[1]}; pass the VQ-VAE whose latents trained this prior")


class Generator:
    """`Generator.from_pretrained(vqvae_dir, prior_dir).sample(16, labels=3)` -> Samples."""

    def __init__(self, vqvae: VQVAE, prior: GatedPixelCNN, device: str = "auto",
                 defaults: SamplingDefaults = SamplingDefaults()) -> None:
        check_pair(vqvae, prior)
        self.device = pick_device(device)
        self.vqvae, self.prior = vqvae.to(self.device).eval(), prior.to(self.device).eval()
        self.defaults = defaults

    @classmethod
    def from_pretrained(cls, vqvae_dir: str | Path, prior_dir: str | Path, device: str = "auto") -> "Generator":
        """Both models, and the prior's saved sampling defaults (sampling.json) when it has them."""
        return cls(VQVAE.from_pretrained(vqvae_dir), GatedPixelCNN.from_pretrained(prior_dir), device,
                   SamplingDefaults.load(prior_dir))

    @property
    def num_classes(self) -> int:
        return self.prior.config.num_classes

    def spread_labels(self, n: int) -> torch.Tensor:
        """n labels in sorted runs of equal length (0, 0, ..., 1, 1, ...), so grid rows show classes."""
        if not self.num_classes:
            raise UsageError("the prior is unconditional; it has no classes to sample by")
        return torch.arange(n) * self.num_classes // n

    @torch.no_grad()
    def sample(self, n: int, labels: int | torch.Tensor | None = None, temperature: float | None = None,
               top_k: int | None = None, seed: int | None = None, progress: bool = True) -> Samples:
        """n images; temperature and top_k default to `self.defaults` (top_k=K keeps every code)."""
        temperature = self.defaults.temperature if temperature is None else temperature
        top_k = self.defaults.top_k if top_k is None else top_k
        generator = torch.Generator(self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        codes = sample_codes(self.prior, n, labels=labels, temperature=temperature, top_k=top_k,
                             generator=generator, progress=progress)  # checks n, labels and options
        images = self.vqvae.decode(codes).float().clamp(0, 1)
        label_tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.long).cpu().expand(n).clone()
        return Samples(images.cpu(), codes.cpu(), label_tensor)


def save_samples(samples: Samples, out_dir: str | Path, nrow: int = 8) -> None:
    """One PNG per image, codes.npy (+ labels.npy), and grid.png last: its presence means the rest is there."""
    out = Path(out_dir)
    for i, image in enumerate(samples.images):
        save_grid(out / "images" / f"{i:04d}.png", image[None], nrow=1)
    save_array(out / "codes.npy", samples.codes.numpy())
    if samples.labels is not None:
        save_array(out / "labels.npy", samples.labels.numpy())
    save_grid(out / "grid.png", samples.images, nrow=nrow)
