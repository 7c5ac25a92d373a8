"""Atomic file writes and safe reads: a crash never leaves a half-written file we would trust."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import safetensors
import safetensors.torch
import torch

from vqgen.engine.errors import VQGenError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`.

    A rename within one directory is atomic on POSIX, so readers see the old file or the new
    one, never a mix. Disk errors become a VQGenError naming the path; the old file is kept.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files private; ours are ordinary files
        os.close(fd)
    except OSError as err:
        raise VQGenError(f"cannot write {path}: {err.strerror}; check that the directory is writable") from err
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        raise VQGenError(
            f"cannot write {path}: {err.strerror or err}; the previous version, if any, is kept"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)


def remove_torn_writes(directory: Path) -> None:
    """The temporary files `atomic_write` leaves in `directory` when its process is killed mid-write."""
    for leftover in directory.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise VQGenError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VQGenError(f"{what} {path} is not valid JSON ({err}); the file is corrupt") from err


def save_tensors(path: str | Path, obj: Any) -> None:
    """torch.save of tensors, numbers, strings, lists and dicts only (loadable with weights_only)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_tensors(path: str | Path, what: str = "checkpoint") -> Any:
    """Load a file of tensors without unpickling arbitrary objects (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise VQGenError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except torch.serialization.pickle.UnpicklingError as err:
        raise VQGenError(
            f"{what} {path} holds objects other than tensors and plain data; refusing to unpickle "
            "it (only files written by vqgen, or other weights-only files, can be loaded)"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise VQGenError(f"{what} {path} is truncated or corrupt ({type(err).__name__}); "
                         "re-create it or restore it from a backup") from err


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """A flat dict of tensors as a safetensors file (the field's weights format: no code runs on load).

    safetensors stores dense row-major tensors only, so channels-last weights are packed first; the
    model's own layout is restored when the state dict is loaded into it.
    """
    packed = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(packed, str(tmp), metadata={"format": "pt"}))


def load_safetensors(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU; a corrupt or foreign file is one line."""
    path = Path(path)
    if not path.is_file():
        raise VQGenError(f"{what} not found: {path}")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise VQGenError(f"{what} {path} is not a readable safetensors file ({err}); it is truncated, corrupt "
                         "or not a weights file: re-create it or restore it from a backup") from None


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; rename it to `target` only if the body succeeds.

    An interrupted write leaves a `.target.partial-*` directory that nothing treats as complete;
    `clean_partials` removes such leftovers before a retry.
    """
    target = Path(target)
    if target.exists():
        raise VQGenError(f"{target} already exists; choose another path or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_partials(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partials(target: str | Path) -> None:
    """Remove leftovers of interrupted `atomic_directory` writes to `target`."""
    target = Path(target)
    for leftover in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def save_array(path: str | Path, array: Any) -> None:
    """np.save, atomically and without pickle."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)

    atomic_write(path, write)
