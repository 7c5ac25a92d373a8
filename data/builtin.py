"""The built-in dataset: digits 0-9 drawn in code, MNIST-like, with no files and no downloads.

It exists so that `vqgen run` works out of the box and its samples can be judged by eye: each
image is a white digit on black, 28x28, rendered with the font Pillow bundles, then jittered
by a random affine map (rotation, scale, shear, shift), stroke width and blur, so the classes
are plain to a person but varied enough that a model must learn shapes, not copy ten bitmaps.
Generation is deterministic for (split, seed); train and test draw from different streams.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vqgen.engine.errors import UsageError
from vqgen.data.images import DatasetInfo, ImageDataset

SIZE = 28  # MNIST's size, so presets tuned on one suit the other
CANVAS = 56  # drawing room: rotation and shear never clip the digit
FONT_SIZE = 30  # digits ~22 px tall on the canvas, ~18 px after the map, as in MNIST
COUNTS = {"train": 20000, "test": 2000}
STREAMS = {"train": 0, "test": 1}  # a split's random stream, so test never repeats train


def _draw(digit: int, stroke: int, font: ImageFont.FreeTypeFont) -> Image.Image:
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(canvas).text((CANVAS / 2, CANVAS / 2), str(digit), fill=255, font=font, anchor="mm",
                                stroke_width=stroke, stroke_fill=255)
    return canvas


def _affine(rng: np.random.Generator) -> tuple[float, ...]:
    """Coefficients (a, b, c, d, e, f) mapping an output pixel (x, y) to (ax+by+c, dx+ey+f) on the canvas."""
    angle = math.radians(rng.uniform(-15, 15))
    scale = rng.uniform(1.05, 1.4)  # canvas pixels per output pixel: larger draws a smaller digit
    shear = rng.uniform(-0.25, 0.25)
    centre_x, centre_y = SIZE / 2 + rng.uniform(-2, 2, size=2)
    a, b = scale * math.cos(angle), scale * (shear - math.sin(angle))
    d, e = scale * math.sin(angle), scale * math.cos(angle)
    return a, b, CANVAS / 2 - a * centre_x - b * centre_y, d, e, CANVAS / 2 - d * centre_x - e * centre_y


def _render(digit: int, rng: np.random.Generator, font: ImageFont.FreeTypeFont) -> np.ndarray:
    canvas = _draw(digit, stroke=int(rng.random() < 0.5), font=font)
    image = canvas.transform((SIZE, SIZE), Image.Transform.AFFINE, _affine(rng), Image.Resampling.BILINEAR)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(image)  # (SIZE, SIZE) uint8


def make_builtin(split: str, seed: int = 0, count: int | None = None) -> ImageDataset:
    """`count` digits (default 20000 train, 2000 test), ten balanced classes in shuffled order."""
    if split not in COUNTS:
        raise UsageError(f"split={split!r} is not allowed; choose one of {', '.join(COUNTS)}")
    count = COUNTS[split] if count is None else count
    if count < 1:
        raise UsageError(f"count={count} is not allowed; the built-in dataset needs at least one image")
    rng = np.random.default_rng([seed, STREAMS[split]])
    font = ImageFont.load_default(size=FONT_SIZE)
    labels = rng.permutation(np.arange(count) % 10)
    images = np.stack([_render(int(digit), rng, font) for digit in labels])  # (N, SIZE, SIZE)
    info = DatasetInfo("builtin", split, 1, SIZE, SIZE, 10, tuple(str(i) for i in range(10)))
    return ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), info)
