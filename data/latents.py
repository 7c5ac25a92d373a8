"""The latent dataset: a directory of code grids + labels + codebook, readable with numpy alone.

    manifest.json   format, version, count, grid, codebook_size, code_dtype, num_classes, source, vqvae
    codes.npy       (N, H, W) uint8 / uint16 / int32, by codebook size
    labels.npy      (N,) int64, when the source is labelled
    codebook.npy    (K, D) float32, the vectors the decoder receives for each code

`LatentWriter` streams batches into memory-mapped files inside `.NAME.partial/` and renames the
directory into place only when every row is written, so a killed export never looks complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vqgen.engine.errors import VQGenError
from vqgen.engine.files import read_json, write_json

FORMAT = "vqgen-latents"
VERSION = 1
MANIFEST, CODES, LABELS, CODEBOOK = "manifest.json", "codes.npy", "labels.npy", "codebook.npy"


def code_dtype(codebook_size: int) -> np.dtype:
    """The smallest unsigned type that holds every code (DESIGN: uint8, uint16, else int32)."""
    if codebook_size <= 256:
        return np.dtype(np.uint8)
    if codebook_size <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


@dataclass(frozen=True)
class LatentManifest:
    count: int
    grid: tuple[int, int]
    codebook_size: int
    num_classes: int | None
    source: dict[str, Any] = field(default_factory=dict)
    vqvae: dict[str, Any] = field(default_factory=dict)

    @property
    def code_dtype(self) -> np.dtype:
        return code_dtype(self.codebook_size)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "count": self.count, "grid": list(self.grid),
                "codebook_size": self.codebook_size, "code_dtype": self.code_dtype.name,
                "num_classes": self.num_classes, "source": self.source, "vqvae": self.vqvae}

    @classmethod
    def from_json(cls, raw: Any, where: Path) -> "LatentManifest":
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise VQGenError(f"{where} is not a vqgen latent manifest (format must be {FORMAT!r})")
        if raw.get("version") != VERSION:
            raise VQGenError(f"{where} has latent format version {raw.get('version')}; this vqgen reads {VERSION}")
        try:
            manifest = cls(count=int(raw["count"]), grid=(int(raw["grid"][0]), int(raw["grid"][1])),
                           codebook_size=int(raw["codebook_size"]), num_classes=raw["num_classes"],
                           source=dict(raw.get("source") or {}), vqvae=dict(raw.get("vqvae") or {}))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise VQGenError(f"{where} is missing or mangles a field ({err!r}); re-export the latents") from None
        if raw.get("code_dtype") != manifest.code_dtype.name:
            raise VQGenError(f"{where} says code_dtype={raw.get('code_dtype')!r} but K={manifest.codebook_size} "
                             f"codes are stored as {manifest.code_dtype.name}")
        return manifest


def _partial(target: Path) -> Path:
    return target.parent / f".{target.name}.partial"


class LatentWriter:
    """Streams code grids into a latent dataset; several processes may each write their rows.

    Rank 0 calls `create` (allocates the memory-mapped files), every writer calls `write(offset, ...)`
    for its rows, and rank 0 calls `commit` once all rows are in.
    """

    def __init__(self, target: str | Path, manifest: LatentManifest) -> None:
        self.target, self.manifest = Path(target), manifest
        self.tmp = _partial(self.target)
        self.labelled = manifest.num_classes is not None

    def create(self, codebook: np.ndarray) -> "LatentWriter":
        if self.target.exists():
            raise VQGenError(f"{self.target} already exists; remove it or choose another --out")
        if self.manifest.count == 0:
            raise VQGenError(f"nothing to export into {self.target}: the dataset is empty")
        shutil.rmtree(self.tmp, ignore_errors=True)
        try:
            self.tmp.mkdir(parents=True)
            n, (h, w) = self.manifest.count, self.manifest.grid
            np.lib.format.open_memmap(self.tmp / CODES, "w+", self.manifest.code_dtype, (n, h, w)).flush()
            if self.labelled:
                np.lib.format.open_memmap(self.tmp / LABELS, "w+", np.int64, (n,)).flush()
            np.save(self.tmp / CODEBOOK, np.ascontiguousarray(codebook, dtype=np.float32), allow_pickle=False)
        except OSError as err:
            raise VQGenError(f"cannot write latents beside {self.target}: {err.strerror}") from err
        return self

    def write(self, offset: int, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Rows offset .. offset+B of codes (B, H, W) and labels (B,)."""
        codes_np = codes.cpu().numpy()
        if codes_np.size and (codes_np.min() < 0 or codes_np.max() >= self.manifest.codebook_size):
            raise VQGenError(f"codes outside [0, {self.manifest.codebook_size}) cannot be exported")
        rows = slice(offset, offset + len(codes_np))
        out = np.load(self.tmp / CODES, mmap_mode="r+", allow_pickle=False)
        out[rows] = codes_np.astype(self.manifest.code_dtype)
        out.flush()
        if self.labelled and labels is not None:
            lab = np.load(self.tmp / LABELS, mmap_mode="r+", allow_pickle=False)
            lab[rows] = labels.cpu().numpy().astype(np.int64)
            lab.flush()

    def commit(self) -> Path:
        """Write the manifest last, then rename the directory into place."""
        write_json(self.tmp / MANIFEST, self.manifest.to_json())
        os.replace(self.tmp, self.target)
        return self.target


def read_manifest(directory: str | Path) -> LatentManifest:
    directory = Path(directory)
    if not directory.is_dir():
        hint = " (an export was interrupted; run it again)" if _partial(directory).exists() else ""
        raise VQGenError(f"latent dataset not found: {directory}{hint}")
    return LatentManifest.from_json(read_json(directory / MANIFEST, "latent manifest"), directory / MANIFEST)


def _load_array(path: Path, mmap: bool = True) -> np.ndarray:
    if not path.is_file():
        raise VQGenError(f"{path} is missing; the latent dataset is incomplete, re-export it")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        raise VQGenError(f"{path} is not a plain numpy array ({err}); refusing to load it") from None
    except (OSError, EOFError) as err:
        raise VQGenError(f"{path} is truncated or corrupt ({err}); re-export the latents") from None


class LatentDataset(Dataset):
    """Code grids as int64 (H, W) with their label (-1 when unlabelled), over memory-mapped files."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.codes = _load_array(self.directory / CODES)
        self.labels = _load_array(self.directory / LABELS) if self.manifest.num_classes is not None else None
        self._validate()

    def _validate(self) -> None:
        m, where = self.manifest, self.directory
        expected = (m.count, *m.grid)
        if self.codes.shape != expected:
            raise VQGenError(f"{where}/{CODES} has shape {self.codes.shape} but the manifest says {expected}")
        if self.codes.dtype != m.code_dtype:
            raise VQGenError(f"{where}/{CODES} holds {self.codes.dtype} but the manifest says {m.code_dtype.name}")
        if m.count == 0:
            raise VQGenError(f"{where} holds no code grids (count 0); export a non-empty split")
        top = max(int(chunk.max()) for chunk in np.array_split(self.codes, max(1, m.count // 65536)))
        if top >= m.codebook_size:
            raise VQGenError(f"{where}/{CODES} holds code {top} but the codebook has K={m.codebook_size} codes")
        if self.labels is not None:
            if self.labels.shape != (m.count,) or self.labels.dtype != np.int64:
                raise VQGenError(f"{where}/{LABELS} has shape {self.labels.shape} {self.labels.dtype}, "
                                 f"expected ({m.count},) int64")
            if m.count and (self.labels.min() < 0 or self.labels.max() >= int(m.num_classes or 0)):
                raise VQGenError(f"{where}/{LABELS} holds labels outside [0, {m.num_classes})")

    def codebook(self) -> np.ndarray:
        book = _load_array(self.directory / CODEBOOK, mmap=False)
        if book.ndim != 2 or book.shape[0] != self.manifest.codebook_size:
            raise VQGenError(f"{self.directory}/{CODEBOOK} has shape {book.shape}, "
                             f"expected ({self.manifest.codebook_size}, D)")
        return book

    def check_fits(self, codebook_size: int, grid: tuple[int, int], what: str = "the prior") -> None:
        """Stage two refuses latents whose K or grid differ from its model, naming both."""
        m = self.manifest
        if m.codebook_size != codebook_size:
            raise VQGenError(f"latents in {self.directory} have K={m.codebook_size} codes but {what} "
                             f"was built for K={codebook_size}")
        if tuple(m.grid) != tuple(grid):
            raise VQGenError(f"latents in {self.directory} have grid {m.grid[0]}x{m.grid[1]} but {what} "
                             f"was built for {grid[0]}x{grid[1]}")

    def __len__(self) -> int:
        return self.manifest.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        codes, labels = self.__getitems__([index])
        return codes[0], labels[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (B, H, W) int64, labels (B,) int64), one fancy-indexed read per batch."""
        order = np.asarray(indices)
        codes = torch.from_numpy(self.codes[order].astype(np.int64))
        if self.labels is None:
            return codes, torch.full((len(order),), -1, dtype=torch.int64)
        return codes, torch.from_numpy(np.asarray(self.labels[order], dtype=np.int64))
