"""A folder of images as a dataset.

Rules, so that one folder gives the same dataset on any machine:
- Files: extensions bmp, gif, jpeg, jpg, png, webp (any case), searched recursively in sorted
  path order; hidden files and folders (names starting with ".", e.g. macOS "._" copies) are skipped,
  and folders behind symbolic links are not entered (linked files are read).
- Splits: the split folders are `train/`, `test/`, `val/`, `valid/` and `validation/`, by these
  exact lowercase names, directly in the folder. With none of them, a stable 10% of the files,
  chosen by a hash of their path relative to the folder, is the test split. With any of them,
  `train/` is the train split, and the test split (`--split test`, the held-out set of `vqgen run`)
  is `test/` when present, else the first present of `val/`, `valid/`, `validation/`; beside
  `test/`, a val-like folder is not used. A lone `train/` is split as a folder without split
  folders is: a stable 10% of its files, by a hash of their path relative to `train/`, is the test
  split. A held-out folder without `train/` is refused. Files and folders beside the split folders
  are not read.
- Labels: the first folder level below the split folder (or below the folder, without split
  folders) gives the classes, numbered in sorted name order over both splits, so train and test
  agree on ids. Fewer than two classes make an unlabelled dataset: images lying directly in the
  (split) folder, or all in one class folder, as a 1-way classifier's cross-entropy is identically
  0 and a prior conditioned on one class is an unconditional one. Images both loose and in class
  folders are refused, as the intent is unclear.
- Channels: one if every image in the folder (both splits) is grayscale (modes 1, L, LA, I,
  I;16, or a palette image whose colours in use are all gray); otherwise three, with gray
  images repeated to RGB. A palette whose entries are all gray settles it from the header; one
  holding colours is decoded to see the colours in use, and only when no other image is in
  colour already. Transparency (RGBA, LA, palette or key-colour transparency) is composited onto
  black, the background of MNIST-like data. 16-bit gray (I, I;16) is scaled from 0..65535 to 0..255.
- Sizes: all images of a split must share one size, unless `size` is given: then each is resized
  (shorter side to `size`) and centre-cropped to size x size.
- Reading: modes and sizes come from the headers alone (data/folder_index.py, cached in a run
  directory when one is given). A split whose decoded pixels take at most STREAM_ABOVE_BYTES (1 GiB) is
  then decoded into memory, as one uint8 tensor, which is fastest per step; a larger one is
  decoded per batch, in the data loader's workers (data/streaming.py). `stream` forces either.
- An unreadable file or folder stops loading with its name: when indexing if a header is bad,
  otherwise when the file is decoded (at loading, or in the batch that asks for it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, NamedTuple

import torch

from vqgen.data.folder_index import Entry, index_folder
from vqgen.data.images import SPLITS, BatchedImages, DatasetInfo
from vqgen.data.streaming import StreamedFolder
from vqgen.engine.errors import UsageError, VQGenError

EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
HELD_OUT_PERCENT = 10
HELD_OUT_FOLDERS = ("test", "val", "valid", "validation")  # in the order the test split is taken from
# Decoded size (uint8 bytes) of a split above which it streams. 1 GiB is ~20,000 RGB images of
# 128x128 (14 s to decode on one core of a 2-core CPU, python -m bench.folders) or 350,000 of
# 32x32: held in memory they are read at no cost per step, and still leave room beside the model
# on a laptop. Larger sets would wait longer before step one, and may not fit at all.
STREAM_ABOVE_BYTES = 2**30


class _Split(NamedTuple):
    base: str  # "" or a split folder ("train/", "val/", ...): class names are the first folder below it
    files: list[str]  # posix paths relative to the folder, in sorted order
    hashed: bool  # a share of the files under `base` chosen by `_held_out`, not a folder of its own


def _entries(directory: Path) -> list[os.DirEntry]:
    """The entries of `directory`; an unreadable one stops loading with its name."""
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as err:
        raise VQGenError(f"cannot list {directory} ({err.strerror}); make it readable or "
                         "move it out of the folder") from None


def image_files(directory: Path) -> list[str]:
    """Image files under `directory` as posix paths relative to it, sorted part by part (as pathlib
    sorts); hidden files and folders skipped, folders behind symbolic links not entered."""
    found: list[str] = []
    todo = [""]  # folders to list, as prefixes relative to `directory`
    while todo:
        prefix = todo.pop()
        for entry in _entries(directory / prefix):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                todo.append(f"{prefix}{entry.name}/")
            elif os.path.splitext(entry.name)[1].lower() in EXTENSIONS and entry.is_file():
                found.append(prefix + entry.name)
    return sorted(found, key=lambda relative: relative.split("/"))


def _held_out(relative: str) -> bool:
    """A hash of the path, so the split depends neither on listing order nor on Python's hash seed."""
    digest = hashlib.sha256(relative.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELD_OUT_PERCENT


def _split_folders(root: Path) -> set[str]:
    """Split folder names directly in `root`, matched exactly even where the file system ignores case."""
    return {entry.name for entry in _entries(root)
            if entry.name in ("train", *HELD_OUT_FOLDERS) and entry.is_dir()}


def _whole_folder(root: Path, base: str) -> _Split:
    return _Split(base, [base + name for name in image_files(root / base)], False)


def _hashed(root: Path, base: str) -> dict[str, _Split]:
    """The files under `base` split by `_held_out` of their path below it, so that a lone `train/`
    splits as it would if opened on its own."""
    files = image_files(root / base)
    test = [_held_out(name) for name in files]
    return {"train": _Split(base, [base + name for name, held in zip(files, test) if not held], True),
            "test": _Split(base, [base + name for name, held in zip(files, test) if held], True)}


def _catalogue(root: Path) -> dict[str, _Split]:
    """Both splits' files: labels and channels are decided over both, so the splits agree."""
    present = _split_folders(root)
    held_out = [f"{name}/" for name in HELD_OUT_FOLDERS if name in present]
    if not held_out:
        return _hashed(root, "train/" if "train" in present else "")
    if "train" not in present:
        raise VQGenError(f"{root} holds the split folder(s) {', '.join(held_out)} but no train/; add a train/ "
                         "folder beside them, or rename them if they are classes rather than splits")
    return {"train": _whole_folder(root, "train/"), "test": _whole_folder(root, held_out[0])}


def _top(split: _Split, path: str) -> str | None:
    """The class folder of `path`, None when it lies directly in the split's folder."""
    head, slash, _ = path[len(split.base):].partition("/")
    return head if slash else None


def _class_names(root: Path, splits: Iterable[_Split]) -> tuple[str, ...] | None:
    """Sorted class names over both splits; None (unlabelled) for fewer than two, as a 1-way
    classifier's cross-entropy is identically 0 and so teaches a judge nothing."""
    tops = {path: _top(split, path) for split in splits for path in split.files}
    loose = [root / path for path, top in tops.items() if top is None]
    if loose and len(loose) < len(tops):
        raise VQGenError(f"{loose[0]} lies directly in {loose[0].parent} while other images are in class "
                         "subfolders; move it into a class folder (or move all images up for an unlabelled dataset)")
    names = tuple(sorted({top for top in tops.values() if top is not None}))
    return names if len(names) >= 2 else None


def _common_size(root: Path, files: list[str], entries: list[Entry], size: int | None) -> tuple[int, int]:
    """(height, width) every image of the split will have, checked from the headers before any decode."""
    if size is not None:
        return size, size
    width, height = entries[0].width, entries[0].height
    for path, entry in zip(files, entries):
        if (entry.width, entry.height) != (width, height):
            raise VQGenError(f"{root / path} is {entry.width}x{entry.height} but {root / files[0]} is "
                             f"{width}x{height} (width x height); all images must share one size: resize them, "
                             "or pass --image-size N to resize and centre-crop every image to N x N")
    return height, width


def _labels(split: _Split, names: tuple[str, ...] | None) -> torch.Tensor | None:
    if names is None:
        return None
    ids = {name: i for i, name in enumerate(names)}
    return torch.tensor([ids[_top(split, path)] for path in split.files], dtype=torch.long)  # (N,)


def _streams(stream: bool | None, info: DatasetInfo, count: int) -> bool:
    return stream if stream is not None else count * info.channels * info.height * info.width > STREAM_ABOVE_BYTES


def _empty_split_error(root: Path, split: str, splits: dict[str, _Split]) -> VQGenError:
    """Names the folder the empty split comes from, and the change to the folder that fills it."""
    chosen = splits[split]
    folder = root / chosen.base
    if not chosen.hashed:
        fix = "add some" if split == "train" else (f"add some, or delete it to hold out {HELD_OUT_PERCENT}% "
                                                   "of train/ (or the next held-out folder) instead")
        return VQGenError(f"no images ({', '.join(EXTENSIONS)}) in {folder}, the {split} split; {fix}")
    total = sum(len(s.files) for s in splits.values())
    if total == 0:
        fix = "add some" if chosen.base else "point --data at a folder of images"
        return VQGenError(f"no images ({', '.join(EXTENSIONS)}) in {folder}; {fix}")
    fix = "put held-out images in a test/ folder beside train/" if chosen.base else "make train/ and test/ subfolders"
    return VQGenError(f"{folder} has {total} images but none fell in its {split} split (the test split is "
                      f"{HELD_OUT_PERCENT}% of files, chosen by a hash of their path); add images, or {fix}")


def open_folder(root: Path, split: str, size: int | None = None, stream: bool | None = None,
                index_dir: Path | None = None) -> BatchedImages:
    """The `split` of the image folder `root`, by the rules in the module docstring.

    `stream`: True decodes per batch, False into memory, None by the decoded size. `index_dir`
    caches the header index (data/folder_index.py); None keeps it in memory for this call only.
    """
    if split not in SPLITS:
        raise UsageError(f"split={split!r} is not allowed; choose one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise VQGenError(f"{root} is not a folder; pass a folder of images")
    splits = _catalogue(root)
    chosen = splits[split]
    if not chosen.files:
        raise _empty_split_error(root, split, splits)
    names = _class_names(root, splits.values())
    index = index_folder(root, [path for s in splits.values() for path in s.files], index_dir)
    height, width = _common_size(root, chosen.files, [index.entries[path] for path in chosen.files], size)
    info = DatasetInfo(str(root), split, index.channels, height, width, len(names) if names else None, names)
    streamed = StreamedFolder(root, chosen.files, _labels(chosen, names), info, size)
    return streamed if _streams(stream, info, len(chosen.files)) else streamed.in_memory()
