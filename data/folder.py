"""A folder of images as a dataset.

Rules, so any folder gives the same dataset on any machine:
- Labels: each subfolder is a class; classes are numbered in sorted name order. Images lying
  directly in the folder make an unlabelled dataset.
- Splits: `train/` and `test/` subfolders when present; otherwise a stable 10% of the files
  (by a hash of their relative path) is the test split.
- Modes: if every image is grayscale (modes 1, L, LA, I, I;16, F, or a palette of grays) the
  dataset has one channel; otherwise every image is converted to RGB, with transparent pixels
  composited onto black.
- Sizes: all images must share one size, unless `size` is given: then each is resized (shorter
  side to `size`) and centre-cropped to size x size.
- An unreadable file stops loading with its name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from data.errors import VQGenError
from data.images import DatasetInfo, ImageDataset

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _held_out(path: Path, root: Path) -> bool:
    return hashlib.sha1(str(path.relative_to(root)).encode()).digest()[0] < 26  # ~10% of 256


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise VQGenError(f"cannot read image {path}: {err}; remove or replace the file") from None


def _is_gray(image: Image.Image) -> bool:
    if image.mode == "P":
        palette = np.asarray(image.convert("RGB"))
        return bool((palette[..., 0] == palette[..., 1]).all() and (palette[..., 1] == palette[..., 2]).all())
    return image.mode in GRAY_MODES


def _convert(image: Image.Image, gray: bool) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L" if gray else "RGB")


def _fit(image: Image.Image, size: int) -> Image.Image:
    scale = size / min(image.size)
    resized = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                           Image.BILINEAR)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def _select(root: Path, split: str) -> tuple[Path, list[Path]]:
    if (root / "train").is_dir() and (root / "test").is_dir():
        base = root / split
        return base, _files(base)
    files = [p for p in _files(root) if _held_out(p, root) == (split == "test")]
    return root, files


def open_folder(root: Path, split: str, size: int | None = None) -> ImageDataset:
    base, files = _select(root, split)
    if not files:
        raise VQGenError(f"no images ({', '.join(sorted(EXTENSIONS))}) for split {split!r} in {base}")
    classes = sorted({p.relative_to(base).parts[0] for p in files if len(p.relative_to(base).parts) > 1})
    labelled = bool(classes) and all(len(p.relative_to(base).parts) > 1 for p in files)
    images = [_open(p) for p in files]
    gray = all(_is_gray(image) for image in images)
    arrays = []
    for path, image in zip(files, images):
        image = _convert(image, gray)
        if size is not None:
            image = _fit(image, size)
        elif image.size != images[0].size:
            raise VQGenError(f"{path} is {image.width}x{image.height} but {files[0]} is "
                             f"{images[0].width}x{images[0].height}; all images must share one size "
                             "(resize them, or open the folder with a size)")
        arrays.append(np.asarray(image))
    stacked = torch.from_numpy(np.stack(arrays))  # (N, H, W) or (N, H, W, 3)
    stacked = stacked[:, None] if gray else stacked.permute(0, 3, 1, 2)
    labels = torch.tensor([classes.index(p.relative_to(base).parts[0]) for p in files]) if labelled else None
    c, h, w = stacked.shape[1:]
    info = DatasetInfo(str(root), split, c, h, w, len(classes) if labelled else None,
                       tuple(classes) if labelled else None)
    return ImageDataset(stacked.contiguous(), labels, info)
