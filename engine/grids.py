"""PNG image grids, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from vqgen.engine.files import atomic_write


def to_pil(images: torch.Tensor, nrow: int) -> Image.Image:
    """(B, C, H, W) in [0, 1] -> one PIL image, `nrow` images per row, 2-pixel gaps."""
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=0.5)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', C)
    return Image.fromarray(array[..., 0] if images.shape[1] == 1 else array)


def save_grid(path: str | Path, images: torch.Tensor, nrow: int = 8) -> Image.Image:
    """Write the grid as a PNG; return the picture too, for a viewer such as TensorBoard."""
    image = to_pil(images, nrow)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return image
