"""The built-in dataset: digits 0-9 drawn in code, MNIST-like, with no files and no downloads.

Each image is a digit rendered with the font Pillow bundles, then jittered by a random affine
map (rotation, scale, shear, shift) and stroke width, so the classes are clear to a person but
varied enough that a model must learn shapes. Generation is deterministic for (split, seed).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from data.images import DatasetInfo, ImageDataset

SIZE, CANVAS = 28, 56
COUNTS = {"train": 20000, "test": 2000}
SPLIT_STREAM = {"train": 0, "test": 1}


def _render(digit: int, rng: np.random.Generator, font: ImageFont.FreeTypeFont) -> np.ndarray:
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(canvas).text((CANVAS / 2, CANVAS / 2), str(digit), fill=255, font=font, anchor="mm",
                                stroke_width=int(rng.integers(1, 3)), stroke_fill=255)
    angle = math.radians(rng.uniform(-15, 15))
    scale = rng.uniform(0.9, 1.15) * 1.2  # the font draws digits ~22 px tall: ~18 px after the map
    shear = rng.uniform(-0.25, 0.25)
    shift = rng.uniform(-2, 2, size=2)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    a, b, d, e = cos, -sin + shear * scale, sin, cos  # output (x, y) -> canvas pixel
    cx, cy = SIZE / 2 + shift[0], SIZE / 2 + shift[1]
    c = CANVAS / 2 - a * cx - b * cy
    f = CANVAS / 2 - d * cx - e * cy
    image = canvas.transform((SIZE, SIZE), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(image)


def make_builtin(split: str, seed: int = 0, count: int | None = None) -> ImageDataset:
    """`count` digits (default 20000 train / 2000 test), labels balanced and shuffled."""
    count = COUNTS[split] if count is None else count
    rng = np.random.default_rng([seed, SPLIT_STREAM[split]])
    font = ImageFont.load_default(size=30)
    labels = rng.permutation(np.arange(count) % 10)
    images = np.stack([_render(int(digit), rng, font) for digit in labels]) if count else np.zeros((0, SIZE, SIZE))
    info = DatasetInfo("builtin", split, 1, SIZE, SIZE, 10, tuple(str(i) for i in range(10)))
    return ImageDataset(torch.from_numpy(images.astype(np.uint8))[:, None], torch.from_numpy(labels).long(), info)
