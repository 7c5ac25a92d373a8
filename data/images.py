"""Image datasets held in memory as uint8 tensors, and `open_dataset`, the one way to name them.

Every source (built-in, torchvision, a folder) ends as an `ImageDataset`, whose batched
`__getitems__` returns a stacked batch, so the data loader does no per-item Python work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.errors import UsageError, VQGenError

TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
DATASETS = ("builtin", *TORCHVISION)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    split: str
    channels: int
    height: int
    width: int
    num_classes: int | None
    class_names: tuple[str, ...] | None

    def source(self) -> dict[str, Any]:
        """What the latent manifest records about where its codes came from."""
        return {"dataset": self.name, "split": self.split, "image_shape": [self.channels, self.height, self.width]}


class ImageDataset(Dataset):
    """(image float32 (C, H, W) in [0, 1], label int64; -1 when unlabelled)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, info: DatasetInfo) -> None:
        if images.shape[0] == 0:
            raise VQGenError(f"dataset {info.name!r} split {info.split!r} has no images; "
                             "point --data at a dataset with at least one image")
        self.images, self.labels, self.info = images, labels, info  # (N, C, H, W) uint8, (N,) int64

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[rows].float().div_(255)  # (B, C, H, W)
        labels = self.labels[rows] if self.labels is not None else torch.full((len(rows),), -1)
        return images, labels


def check_divisible(info: DatasetInfo, factor: int) -> None:
    if info.height % factor or info.width % factor:
        raise VQGenError(f"{info.name} images are {info.height}x{info.width}, not divisible by {factor} "
                         f"(2**downsamples); resize or pad the images, or use fewer --downsamples")


def _torchvision(name: str, split: str, root: str | None, download: bool) -> ImageDataset:
    import torchvision

    if root is None:
        raise UsageError(f"--data {name} needs --data-root DIR (the folder holding {TORCHVISION[name]}/), "
                         "plus --download to fetch it")
    if not Path(root).is_dir() and not download:
        raise VQGenError(f"--data-root {root} does not exist; pass the folder holding {TORCHVISION[name]}/ "
                         "or add --download")
    cls = getattr(torchvision.datasets, TORCHVISION[name])
    try:
        raw = cls(root, train=split == "train", download=download)
    except RuntimeError as err:
        raise VQGenError(f"{name} not found under --data-root {root} ({err}); add --download or fix the path") from None
    data = torch.as_tensor(np.asarray(raw.data))  # (N, H, W) or (N, H, W, C)
    images = data[:, None] if data.ndim == 3 else data.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(raw.targets), dtype=torch.int64)
    c, h, w = images.shape[1:]
    info = DatasetInfo(name, split, c, h, w, len(raw.classes), tuple(raw.classes))
    return ImageDataset(images.contiguous(), labels, info)


def open_dataset(name: str, split: str = "train", root: str | None = None, download: bool = False,
                 seed: int = 0, size: int | None = None) -> ImageDataset:
    """'builtin', a torchvision name, or a folder of images (resized to `size` when given)."""
    if split not in SPLITS:
        raise UsageError(f"--split={split!r} is not allowed; choose train or test")
    if name == "builtin":
        from data.builtin import make_builtin

        return make_builtin(split, seed)
    if name in TORCHVISION:
        return _torchvision(name, split, root, download)
    if Path(name).is_dir():
        from data.folder import open_folder

        return open_folder(Path(name), split, size)
    raise UsageError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}, or a folder of images")
