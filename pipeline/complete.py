"""`vqgen complete`: an image file and a mask (or a kept top band) in, a grid of completions out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqgen.data.decode import decode
from vqgen.engine.errors import UsageError
from vqgen.engine.files import write_json
from vqgen.engine.locks import directory_lock
from vqgen.pipeline.generate import Completed, Generator, save_samples

COMPLETION_FILE = "completion.json"


def read_image(path: Path, generator: Generator) -> torch.Tensor:
    """(C, H, W) in [0, 1], by the folder rules (data/decode.py) in the VQ-VAE's channels."""
    config = generator.vqvae.config
    pixels = decode(path, gray=config.in_channels == 1, size=None)  # (H, W) or (H, W, 3) uint8
    image = torch.from_numpy(np.array(pixels)).float().div(255)  # a copy: decoded arrays are read-only
    image = image[None] if image.dim() == 2 else image.permute(2, 0, 1)
    config.check_images(*image.shape)
    return image


def read_mask(path: Path) -> torch.Tensor:
    """(H, W) bool, True where the PNG is white (brighter than mid-gray): the pixels to generate."""
    return torch.from_numpy(decode(path, gray=True, size=None) > 127)


def keep_top_mask(rows: int, height: int, width: int) -> torch.Tensor:
    """The mask that keeps the top `rows` pixel rows and generates the rest."""
    if rows >= height:
        raise UsageError(f"--keep-top={rows} keeps the whole image ({height} rows); keep fewer rows")
    mask = torch.ones(height, width, dtype=torch.bool)
    mask[:rows] = False
    return mask


def save_completion(completed: Completed, image: torch.Tensor, out: Path) -> None:
    """completion.json, images/, codes.npy, sampling.json, and grid.png last: original | masked | the completions."""
    result = completed.completion
    write_json(out / COMPLETION_FILE, {"exact": result.exact, "proposals": result.proposals,
                                       "effective_sample_size": result.effective_sample_size,
                                       "grid": list(completed.grid)})
    row = torch.cat([image[None], completed.masked[None], completed.samples.images])  # (n + 2, C, H, W)
    save_samples(completed.samples, out, nrow=len(row), shown=row)


def complete_image(vqvae_dir: Path, prior_dir: Path, image_path: Path, out: Path, n: int, keep_top: int | None,
                   mask: Path | None, label: int | None, seed: int, proposals: int | None, device: str,
                   **overrides: Any) -> Completed:
    """The command: `overrides` replace fields of the prior's saved sampling defaults (Generator.options)."""
    generator = Generator.from_pretrained(vqvae_dir, prior_dir, device=device)
    image = read_image(image_path, generator)
    height, width = image.shape[1:]
    pixels = keep_top_mask(keep_top, height, width) if keep_top is not None else read_mask(mask)  # type: ignore[arg-type]
    generator.options(**overrides).check(generator.prior.config)  # before the output directory is made
    with directory_lock(out):
        completed = generator.complete(image, pixels, n, label, seed=seed, proposals=proposals, **overrides)
        save_completion(completed, image, out)
    return completed
