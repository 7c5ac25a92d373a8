"""One image file -> uint8 pixels, by the folder rules (data/folder.py), for every way of reading a folder.

The in-memory and the streamed folder datasets both decode through `decode`, so they give the
same pixels by construction; the header index (data/folder_index.py) opens files through `opened`,
so a file that cannot be read fails with its name wherever that happens.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from vqgen.engine.errors import VQGenError

GRAY_MODES = ("1", "L", "LA", "I", "I;16")
WIDE_GRAY_MODES = ("I", "I;16")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
PALETTE_MODES = ("P", "PA")


class UnreadableImage(VQGenError):
    """An image file that cannot be opened or decoded; the message names it.

    Raised in a DataLoader worker, torch re-raises it in the main process as
    `UnreadableImage("Caught UnreadableImage in DataLoader worker process 0.\\nOriginal Traceback
    ...\\nvqgen.data.decode.UnreadableImage: <message>")`; keeping only what follows the last
    "UnreadableImage: " gives the user the one line it was raised with, not a worker's traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message.rsplit(f"{type(self).__name__}: ", 1)[-1].strip())


def unreadable(path: Path, err: BaseException) -> UnreadableImage:
    reason = " ".join(str(err).split())  # one line, whatever the decoder or the system said
    return UnreadableImage(f"cannot read image {path} ({reason}); remove or replace the file")


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Image.Image]:
    """Image.open whose failures, at opening or at decoding, name the file in one line."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise unreadable(path, err) from None


def colours_in_use_are_gray(path: Path) -> bool:
    """Decodes the image: for a palette image whose palette holds colours, the pixels decide."""
    with opened(path) as image:
        rgb = np.asarray(image.convert("RGB"))  # (H, W, 3)
    return bool((rgb == rgb[..., :1]).all())


def _pixels(image: Image.Image, gray: bool) -> np.ndarray:
    """(H, W) uint8 when `gray`, else (H, W, 3): 16 bits scaled to 8, transparency onto black."""
    if image.mode in WIDE_GRAY_MODES:
        image = Image.fromarray((np.asarray(image).clip(0, 65535) // 257).astype(np.uint8))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA"))
    return np.asarray(image.convert("L" if gray else "RGB"))


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then the centre square: no distortion, the middle kept."""
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def decode(path: Path, gray: bool, size: int | None) -> np.ndarray:
    """(H, W) uint8 when `gray`, else (H, W, 3); size x size when `size` is given."""
    with opened(path) as image:
        image.load()
        pixels = _pixels(image, gray)
    return pixels if size is None else np.asarray(_fit(Image.fromarray(pixels), size))
