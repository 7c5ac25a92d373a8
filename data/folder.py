"""A folder of images as a dataset.

Rules, so that one folder gives the same dataset on any machine:
- Files: extensions bmp, gif, jpeg, jpg, png, webp (any case), searched recursively in sorted
  path order; hidden files and folders (names starting with ".", e.g. macOS "._" copies) are skipped.
- Splits: `train/` and `test/` subfolders when both are present; otherwise a stable 10% of the
  files, chosen by a hash of their path relative to the folder, is the test split.
- Labels: each subfolder (of the split folder) is a class, numbered in sorted name order over
  both splits, so train and test agree on ids. Images lying directly in the folder make an
  unlabelled dataset; both at once is refused, as the intent is unclear.
- Channels: one if every image in the folder (both splits) is grayscale (modes 1, L, LA, I,
  I;16, or a palette image whose colours in use are all gray); otherwise three, with gray
  images repeated to RGB. Transparency (RGBA, LA, palette or key-colour transparency) is
  composited onto black, the background of MNIST-like data. 16-bit gray (I, I;16) is scaled
  from 0..65535 to 0..255.
- Sizes: all images must share one size, unless `size` is given: then each is resized (shorter
  side to `size`) and centre-cropped to size x size.
- An unreadable file stops loading with its name.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import torch
from PIL import Image

from vqgen.engine.errors import UsageError, VQGenError
from vqgen.data.images import SPLITS, DatasetInfo, ImageDataset

EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
GRAY_MODES = ("1", "L", "LA", "I", "I;16")
WIDE_GRAY_MODES = ("I", "I;16")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
HELD_OUT_PERCENT = 10


class _Split(NamedTuple):
    base: Path  # class names are the first folder below it
    files: list[Path]


def image_files(directory: Path) -> list[Path]:
    """Image files under `directory` in sorted order, hidden ones skipped (see the module docstring)."""
    return sorted(path for path in directory.rglob("*")
                  if path.suffix.lower() in EXTENSIONS and path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(directory).parts))


def _held_out(relative: Path) -> bool:
    """A hash of the path, so the split depends neither on listing order nor on Python's hash seed."""
    digest = hashlib.sha256(relative.as_posix().encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELD_OUT_PERCENT


def _catalogue(root: Path) -> dict[str, _Split]:
    """Both splits' files: labels and channels are decided over both, so the splits agree."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return {split: _Split(root / split, image_files(root / split)) for split in SPLITS}
    files = image_files(root)
    return {"train": _Split(root, [p for p in files if not _held_out(p.relative_to(root))]),
            "test": _Split(root, [p for p in files if _held_out(p.relative_to(root))])}


def _top(base: Path, path: Path) -> str | None:
    """The class folder of `path`, None when it lies directly in `base`."""
    parts = path.relative_to(base).parts
    return parts[0] if len(parts) > 1 else None


def _class_names(splits: Iterable[_Split]) -> tuple[str, ...] | None:
    tops = {path: _top(split.base, path) for split in splits for path in split.files}
    loose = [path for path, top in tops.items() if top is None]
    if len(loose) == len(tops):
        return None
    if loose:
        raise VQGenError(f"{loose[0]} lies directly in {loose[0].parent} while other images are in class "
                         "subfolders; move it into a class folder (or move all images up for an unlabelled dataset)")
    return tuple(sorted({top for top in tops.values() if top is not None}))


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """Image.open whose failures, at opening or at decoding, name the file."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise VQGenError(f"cannot read image {path} ({err}); remove or replace the file") from None


def _is_gray(path: Path) -> bool:
    """Judged from the header, except for palette images, whose colours in use must be decoded."""
    with _opened(path) as image:
        if image.mode in ("P", "PA"):
            rgb = np.asarray(image.convert("RGB"))  # (H, W, 3)
            return bool((rgb == rgb[..., :1]).all())
        return image.mode in GRAY_MODES


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


def _decode(path: Path, gray: bool, size: int | None) -> np.ndarray:
    with _opened(path) as image:
        image.load()
        pixels = _pixels(image, gray)
    return pixels if size is None else np.asarray(_fit(Image.fromarray(pixels), size))


def _stack(files: list[Path], arrays: list[np.ndarray]) -> torch.Tensor:
    """(N, C, H, W) uint8, after checking that every image has the first one's size."""
    height, width = arrays[0].shape[:2]
    for path, array in zip(files, arrays):
        if array.shape[:2] != (height, width):
            raise VQGenError(f"{path} is {array.shape[1]}x{array.shape[0]} but {files[0]} is {width}x{height} "
                             "(width x height); all images must share one size: resize them, or pass "
                             "--image-size N to resize and centre-crop every image to N x N")
    stacked = torch.from_numpy(np.stack(arrays))  # (N, H, W) or (N, H, W, 3)
    return stacked[:, None] if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2).contiguous()


def _empty_split_error(root: Path, split: str, splits: dict[str, _Split]) -> VQGenError:
    chosen = splits[split]
    if chosen.base != root:
        return VQGenError(f"no images ({', '.join(EXTENSIONS)}) in {chosen.base}; add some")
    total = sum(len(s.files) for s in splits.values())
    if total == 0:
        return VQGenError(f"no images ({', '.join(EXTENSIONS)}) in {root}; point --data at a folder of images")
    return VQGenError(f"{root} has {total} images but none fell in its {split} split (the test split is "
                      f"{HELD_OUT_PERCENT}% of files, chosen by a hash of their path); add images, or make "
                      "train/ and test/ subfolders")


def open_folder(root: Path, split: str, size: int | None = None) -> ImageDataset:
    """The `split` of the image folder `root`, by the rules in the module docstring."""
    if split not in SPLITS:
        raise UsageError(f"split={split!r} is not allowed; choose one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise VQGenError(f"{root} is not a folder; pass a folder of images")
    splits = _catalogue(root)
    chosen = splits[split]
    if not chosen.files:
        raise _empty_split_error(root, split, splits)
    names = _class_names(splits.values())
    gray = all(_is_gray(path) for s in splits.values() for path in s.files)
    images = _stack(chosen.files, [_decode(path, gray, size) for path in chosen.files])
    labels = None
    if names is not None:
        ids = {name: i for i, name in enumerate(names)}
        labels = torch.tensor([ids[_top(chosen.base, path)] for path in chosen.files], dtype=torch.long)
    channels, height, width = images.shape[1:]
    info = DatasetInfo(str(root), split, channels, height, width, len(names) if names else None, names)
    return ImageDataset(images, labels, info)
