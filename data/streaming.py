"""A folder of images decoded per batch: memory bounded by the batches in flight, not by the folder.

`pixels` runs wherever the DataLoader calls `__getitems__`: in its workers when `num_workers` > 0,
so decoding runs on as many cores as there are workers, alongside training. Under torchrun each
rank's sampler (engine/batches.py) and export shard (stage1_vqvae/export.py) ask only for that
rank's rows, so a rank decodes only its part of the folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from vqgen.data.decode import UnreadableImage, decode
from vqgen.data.images import BatchedImages, DatasetInfo, ImageDataset

DECODE_CHUNK = 256  # images decoded at a time when a folder is loaded into memory


class StreamedFolder(BatchedImages):
    """The images `files` (paths relative to `root`), decoded by the folder rules at each request."""

    def __init__(self, root: Path, files: Sequence[str], labels: torch.Tensor | None, info: DatasetInfo,
                 size: int | None) -> None:
        super().__init__(len(files), labels, info)
        self.root, self.size = root, size
        # (N,) fixed-width bytes rather than a list of str: forked workers read it without touching
        # per-item reference counts, so its pages are never copied into each worker.
        self.files = np.array([os.fsencode(name) for name in files])

    def _decode(self, index: int) -> np.ndarray:
        """(H, W) or (H, W, 3) uint8; a file changed since indexing fails rather than breaking the batch."""
        path = self.root / os.fsdecode(self.files[index])
        pixels = decode(path, self.info.channels == 1, self.size)
        height, width = pixels.shape[:2]
        if (height, width) != (self.info.height, self.info.width):
            raise UnreadableImage(f"{path} is {width}x{height} but was {self.info.width}x{self.info.height} "
                                  "when the folder was indexed; it changed during the run, run again to re-index")
        return pixels

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack([self._decode(int(i)) for i in indices]))  # (B, H, W) or (B, H, W, 3)
        return batch[:, None] if batch.ndim == 3 else batch.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)

    def in_memory(self) -> ImageDataset:
        """Every image decoded into one uint8 tensor, filled chunk by chunk (never a second full copy)."""
        info = self.info
        images = torch.empty((len(self), info.channels, info.height, info.width), dtype=torch.uint8)  # (N, C, H, W)
        starts = range(0, len(self), DECODE_CHUNK)
        for start in tqdm(starts, desc=f"decode {info.split}", unit="chunk", delay=2, leave=False):
            stop = min(start + DECODE_CHUNK, len(self))
            images[start:stop] = self.pixels(range(start, stop))
        return ImageDataset(images, self.labels, info)
