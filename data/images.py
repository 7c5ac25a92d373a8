"""Image datasets and `open_dataset`, the one way to name them.

Every source ends as a `BatchedImages`, whose batched `__getitems__` returns a stacked batch, so
the data loader does no per-item Python work (the loader's collate_fn passes that batch through).
Two kinds share that interface: `ImageDataset` holds uint8 pixels in memory (built-in, torchvision,
small folders); `StreamedFolder` (data/streaming.py) decodes a large folder per batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vqgen.engine.errors import UsageError, VQGenError

TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
DATASETS = ("builtin", *TORCHVISION)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a latent manifest need to know about a dataset, without its pixels."""

    name: str
    split: str
    channels: int
    height: int
    width: int
    num_classes: int | None
    class_names: tuple[str, ...] | None

    def source(self) -> dict[str, Any]:
        """The latent manifest's "source" entry: where its codes came from."""
        return {"dataset": self.name, "split": self.split, "image_shape": [self.channels, self.height, self.width]}


class BatchedImages(Dataset, ABC):
    """Items are (image float32 (C, H, W) in [0, 1], label int64; -1 when unlabelled).

    Subclasses say only where uint8 pixels come from (`pixels`); labels are always in memory,
    as they are cheap, so every dataset scales and labels a batch the same way.
    """

    def __init__(self, count: int, labels: torch.Tensor | None, info: DatasetInfo) -> None:
        if count == 0:
            raise VQGenError(f"dataset {info.name!r} split {info.split!r} has no images; "
                             "point --data at a dataset with at least one image")
        self.count, self.labels, self.info = count, labels, info  # labels (N,) int64 or None

    @abstractmethod
    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        """The images at `indices` as uint8 (B, C, H, W)."""

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.pixels(indices).float().div_(255)  # (B, C, H, W)
        if self.labels is None:
            return images, torch.full((len(indices),), -1, dtype=torch.long)
        return images, self.labels[torch.as_tensor(indices, dtype=torch.long)]  # (B,)


class ImageDataset(BatchedImages):
    """Pixels held in memory as uint8 (a quarter of float32), scaled per batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, info: DatasetInfo) -> None:
        super().__init__(images.shape[0], labels, info)
        self.images = images  # (N, C, H, W) uint8

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long)]  # (B, C, H, W)


class DataShape(NamedTuple):
    """What a preset sizes a model by: the train split's image shape and number of images."""

    channels: int
    height: int
    width: int
    count: int


def data_shape(name: str, root: str | None = None, download: bool = False, size: int | None = None,
               index_dir: str | Path | None = None) -> DataShape:
    """The train split's shape without decoding it: the built-in dataset's constants, a torchvision
    dataset's arrays, a folder's header index (cached in `index_dir`)."""
    if name == "builtin":
        from vqgen.data.builtin import COUNTS, SIZE

        return DataShape(1, SIZE, SIZE, COUNTS["train"])
    stream = None if name in DATASETS else True  # a folder streams: nothing is decoded to read its shape
    data = open_dataset(name, "train", root, download, size=size, stream=stream, index_dir=index_dir)
    return DataShape(data.info.channels, data.info.height, data.info.width, len(data))


class Mirrored(BatchedImages):
    """A split and its horizontal mirror images: 2N items, item N + i the mirror of item i, same label.

    Horizontal flips are the augmentation natural images take without changing what they show; as a
    dataset of its own rather than a random flip per batch, the VQ-VAE trains on both and the export
    writes the codes of both, so the prior gets twice the grids.
    """

    def __init__(self, data: BatchedImages) -> None:
        labels = None if data.labels is None else torch.cat([data.labels, data.labels])
        super().__init__(2 * len(data), labels, data.info)
        self.data = data

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        rows = torch.as_tensor(indices, dtype=torch.long)
        mirrored = rows >= len(self.data)
        images = self.data.pixels((rows % len(self.data)).tolist())  # (B, C, H, W)
        return torch.where(mirrored[:, None, None, None], images.flip(3), images)


def check_divisible(info: DatasetInfo, factor: int) -> None:
    """The encoder halves the image `log2(factor)` times; odd sizes would lose rows silently."""
    if info.height % factor or info.width % factor:
        raise VQGenError(f"{info.name} images are {info.height}x{info.width}, not divisible by {factor} "
                         f"(2**downsamples); resize or pad the images (--image-size for a folder), "
                         "or use fewer --downsamples")


def _load_torchvision(name: str, split: str, root: str | None, download: bool) -> Any:
    """The torchvision dataset object, with its failures turned into messages that say the fix."""
    import torchvision

    folder = TORCHVISION[name]
    if root is None:
        raise UsageError(f"--data {name} needs --data-root DIR (the folder that holds {folder}/, "
                         "or where to put it with --download)")
    if not Path(root).is_dir() and not download:
        raise VQGenError(f"--data-root {root} is not a folder; pass the folder that holds {folder}/, "
                         "or add --download to fetch it there")
    try:
        return getattr(torchvision.datasets, folder)(root, train=split == "train", download=download)
    except RuntimeError as err:
        if download:
            raise VQGenError(f"could not fetch {name} into {root} ({err}); check the network, "
                             "or place the files there yourself") from None
        raise VQGenError(f"{name} not found under --data-root {root} (expected {root}/{folder}/); "
                         "fix the path, or add --download") from None
    except OSError as err:
        raise VQGenError(f"could not download {name} into {root} ({err}); check the network, "
                         "or place the files there yourself") from None


def _torchvision(name: str, split: str, root: str | None, download: bool) -> ImageDataset:
    """Raw arrays (.data, .targets) straight into tensors: no PIL round trip per item."""
    raw = _load_torchvision(name, split, root, download)
    data = torch.as_tensor(np.asarray(raw.data))  # (N, H, W) or (N, H, W, C)
    images = data[:, None] if data.ndim == 3 else data.permute(0, 3, 1, 2)  # (N, C, H, W)
    labels = torch.as_tensor(np.asarray(raw.targets), dtype=torch.long)  # (N,)
    channels, height, width = images.shape[1:]
    info = DatasetInfo(name, split, channels, height, width, len(raw.classes), tuple(raw.classes))
    return ImageDataset(images.contiguous(), labels, info)


def open_dataset(name: str, split: str = "train", root: str | None = None, download: bool = False,
                 seed: int = 0, size: int | None = None, stream: bool | None = None,
                 index_dir: str | Path | None = None) -> BatchedImages:
    """'builtin', a torchvision name (with `root`), or a folder of images (resized to `size` when given).

    `seed` picks the built-in dataset's draw; the other sources are fixed files and ignore it.
    A folder is decoded per batch when `stream` is True, into memory when False, and by its
    decoded size when None (data/folder.py); `index_dir` (a run directory) caches its header index
    between runs. Built-in and torchvision data are always in memory and ignore `index_dir`.
    """
    if split not in SPLITS:
        raise UsageError(f"--split={split!r} is not allowed; choose one of {', '.join(SPLITS)}")
    if name not in DATASETS and not Path(name).is_dir():
        raise UsageError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}, "
                         "or the path of a folder of images")
    if size is not None and name in DATASETS:
        raise UsageError(f"--image-size resizes a folder of images; {name} has a fixed size, drop the option")
    if stream and name in DATASETS:
        raise UsageError(f"--stream decodes a folder of images per batch; {name} is held in memory, drop the option")
    if name == "builtin":
        from vqgen.data.builtin import make_builtin  # builtin builds on this module

        return make_builtin(split, seed)
    if name in TORCHVISION:
        return _torchvision(name, split, root, download)
    from vqgen.data.folder import open_folder  # folder builds on this module

    return open_folder(Path(name), split, size, stream, None if index_dir is None else Path(index_dir))
