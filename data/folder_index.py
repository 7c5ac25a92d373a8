"""The header index of an image folder: each file's size and whether it is gray, read without decoding.

The folder rules (data/folder.py) need every file's size and mode before the first step. Image
headers give both (PIL's Image.open reads the header and leaves the pixels for later), so indexing
a folder costs a stat and a header read per file, not a decode.

Cached as `folder-index.json` in a directory of the caller's (a run directory; never the data
folder, which may be read-only or shared). The file is JSON, written atomically:

    {"format": "vqgen-folder-index", "version": 1, "root": "/abs/path/of/folder",
     "files": [["train/cat/0001.jpg", bytes, mtime_ns, width, height, gray], ...]}

where gray is true, false, or null for an undecided palette image (below). An entry is reused
while its file has the same size and modification time and the folder the same absolute path;
files added or changed since are read again, and removed ones dropped, so adding one image to a
large folder reads one header. An index that cannot be read or is of another version is rebuilt.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from vqgen.data.decode import GRAY_MODES, PALETTE_MODES, colours_in_use_are_gray, opened, unreadable
from vqgen.engine.distributed import launched_as_main
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import atomic_write

INDEX_FILE = "folder-index.json"
FORMAT, VERSION = "vqgen-folder-index", 1
# Bytes per palette entry by layout; the first three are the colour channels, in some order.
PALETTE_STRIDES = {"RGB": 3, "BGR": 3, "RGBX": 4, "BGRX": 4, "RGBA": 4}


class Header(NamedTuple):
    width: int
    height: int
    gray: bool | None  # None: a palette image with coloured entries, decided by decoding when it matters


class Entry(NamedTuple):
    """One file's row of the index: what identifies its version, then what its header says."""

    path: str  # posix, relative to the folder
    bytes: int
    mtime_ns: int
    width: int
    height: int
    gray: bool | None


class FolderIndex(NamedTuple):
    entries: dict[str, Entry]  # by path
    channels: int  # 1 when every image is gray (an undecided palette counts as colour), else 3


def _palette_gray(image: Image.Image) -> bool | None:
    """True when every palette entry is gray (then so are the colours in use), else None: undecided."""
    palette = image.palette
    stride = PALETTE_STRIDES.get((palette.rawmode or palette.mode) if palette else "")
    if stride is None:
        return None
    entries = np.frombuffer(bytes(palette.palette), np.uint8)
    entries = entries[:len(entries) // stride * stride].reshape(-1, stride)[:, :3]  # (colours, 3)
    return True if (entries == entries[:, :1]).all() else None


def read_header(path: Path) -> Header:
    """Size and grayness from the header alone (palette images: from their palette entries)."""
    with opened(path) as image:
        gray = _palette_gray(image) if image.mode in PALETTE_MODES else image.mode in GRAY_MODES
        return Header(image.width, image.height, gray)


def _stored(index_path: Path, root: str) -> dict[str, Entry]:
    """The cached entries by path; none when the file is absent, unreadable or of another folder."""
    try:
        raw = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or (raw.get("format"), raw.get("version"), raw.get("root")) != (FORMAT, VERSION, root):
        return {}
    try:
        return {row[0]: Entry(*row) for row in raw["files"]}
    except (KeyError, TypeError, IndexError):  # a mangled cache is rebuilt, as an unreadable one is
        return {}


def _save(index_path: Path, root: str, entries: list[Entry]) -> None:
    """A cache, so a directory we cannot write to costs a warning and a rebuild next time, not the run."""
    text = json.dumps({"format": FORMAT, "version": VERSION, "root": root, "files": entries}, separators=(",", ":"))
    try:
        atomic_write(index_path, lambda tmp: tmp.write_text(text + "\n"))
    except VQGenError as err:
        warnings.warn(f"folder index not cached ({err}); the next run reads the image headers again")


def _entry(root: Path, relative: str, stored: dict[str, Entry]) -> Entry:
    """The stored entry while the file keeps its size and modification time, else one from its header."""
    path = root / relative
    try:
        stat = path.stat()
    except OSError as err:
        raise unreadable(path, err) from None
    old = stored.get(relative)
    if old is not None and (old.bytes, old.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
        return old
    return Entry(relative, stat.st_size, stat.st_mtime_ns, *read_header(path))


def _decide_palettes(root: Path, entries: list[Entry]) -> list[Entry]:
    """Decode undecided palette images only when no file is in colour by its header, in order, up to
    the first one in colour: typical folders (all RGB, or no coloured palettes) decode nothing."""
    if any(entry.gray is False for entry in entries):
        return entries
    decided = list(entries)
    for i, entry in enumerate(entries):
        if entry.gray is None:
            decided[i] = entry._replace(gray=colours_in_use_are_gray(root / entry.path))
            if not decided[i].gray:
                break
    return decided


def index_folder(root: Path, files: list[str], index_dir: Path | None) -> FolderIndex:
    """Headers of `files` (every file of both splits, posix paths relative to `root`), reusing `index_dir`'s cache."""
    absolute = str(root.resolve())
    index_path = None if index_dir is None else index_dir / INDEX_FILE
    stored = {} if index_path is None else _stored(index_path, absolute)
    entries = _decide_palettes(root, [_entry(root, relative, stored) for relative in
                                      tqdm(files, desc=f"index {root.name}", unit="file", delay=2, leave=False)])
    if index_path is not None and entries != list(stored.values()) and launched_as_main():
        _save(index_path, absolute, entries)  # one writer: every torchrun rank reads the same headers
    by_path = {entry.path: entry for entry in entries}
    return FolderIndex(by_path, 1 if all(entry.gray for entry in entries) else 3)
