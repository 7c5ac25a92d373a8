"""Folders decoded per batch: the same batches as in memory, the cached header index, errors, training."""

from __future__ import annotations

import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.data import folder, folder_index
from vqgen.data.folder import open_folder
from vqgen.data.folder_index import INDEX_FILE
from vqgen.data.images import ImageDataset, open_dataset
from vqgen.data.streaming import StreamedFolder
from vqgen.engine.batches import ResumableBatches, make_loader
from vqgen.engine.distributed import Dist
from vqgen.engine.errors import UsageError, VQGenError
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.export import export_latents
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import train_vqvae

RNG = np.random.default_rng(0)


def _noise(mode: str, size: tuple[int, int] = (8, 8)) -> Image.Image:
    """Random pixels, so that a wrong decode, channel or crop shows in the comparison."""
    width, height = size
    if mode == "I;16":
        return Image.fromarray(RNG.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "L":
        return Image.fromarray(RNG.integers(0, 256, (height, width), dtype=np.uint8))
    rgba = Image.fromarray(RNG.integers(0, 256, (height, width, 4), dtype=np.uint8))  # RGBA
    return rgba if mode == "RGBA" else rgba.convert(mode)


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _gray_in_a_colour_palette() -> Image.Image:
    """A palette image whose palette holds a red entry that no pixel uses: gray by the colours in use."""
    image = Image.frombytes("P", (8, 8), RNG.integers(0, 128, (8, 8), dtype=np.uint8).tobytes())
    image.putpalette([v for i in range(128) for v in (2 * i, 2 * i, 2 * i)] + [255, 0, 0])
    return image


def _make(layout: str, root: Path) -> None:
    """One folder per rule the streamed path must follow exactly as the in-memory one does."""
    for split in ("train", "test"):
        for i in range(3):
            cls = f"c{i % 2}"
            if layout == "gray":
                _save(root / split / cls / f"{i}.png", _noise("L"))
            elif layout == "rgb":
                _save(root / split / cls / f"{i}.jpg", _noise("RGB"))
            elif layout == "transparent":
                _save(root / split / cls / f"{i}a.png", _noise("RGBA"))
                _save(root / split / cls / f"{i}p.png", _noise("RGBA").convert("P"))
                _save(root / split / cls / f"{i}g.png", _noise("L"))
            elif layout == "gray-palette":
                _save(root / split / cls / f"{i}p.png", _gray_in_a_colour_palette())
                _save(root / split / cls / f"{i}g.png", _noise("L"))
            elif layout == "16-bit":
                _save(root / split / cls / f"{i}.png", _noise("I;16"))
            elif layout == "resized":
                _save(root / split / cls / f"{i}.png", _noise("RGB", (12 + 4 * i, 9 + i)))
    if layout == "unlabelled":  # no train/ and test/: the hashed 10% split
        for i in range(40):
            _save(root / f"{i}.png", _noise("L"))


LAYOUTS = {"gray": 1, "rgb": 3, "transparent": 3, "gray-palette": 1, "16-bit": 1, "resized": 3, "unlabelled": 1}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_streamed_batches_equal_in_memory_batches(tmp_path: Path, layout: str) -> None:
    _make(layout, tmp_path)
    size = 8 if layout == "resized" else None
    for split in ("train", "test"):
        memory = open_folder(tmp_path, split, size, stream=False)
        streamed = open_folder(tmp_path, split, size, stream=True)
        assert isinstance(memory, ImageDataset) and isinstance(streamed, StreamedFolder)
        assert streamed.info == memory.info and memory.info.channels == LAYOUTS[layout]
        assert len(streamed) == len(memory) and memory.images.shape[-2:] == (8, 8)
        indices = [len(memory) - 1, 0, len(memory) - 1, *range(len(memory))]
        (m_images, m_labels), (s_images, s_labels) = memory.__getitems__(indices), streamed.__getitems__(indices)
        assert torch.equal(s_images, m_images) and torch.equal(s_labels, m_labels)
        assert s_images.dtype == torch.float32 and s_images.is_contiguous() and s_labels.dtype == torch.int64
        image, label = streamed[1]
        assert torch.equal(image, m_images[4]) and label == m_labels[4]
        if layout == "unlabelled":
            assert streamed.labels is None and (s_labels == -1).all()


def test_size_decides_between_memory_and_streaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make("rgb", tmp_path)  # 3 train images of 3x8x8 = 576 bytes
    assert isinstance(open_dataset(str(tmp_path), "train"), ImageDataset)
    monkeypatch.setattr(folder, "STREAM_ABOVE_BYTES", 575)
    assert isinstance(open_dataset(str(tmp_path), "train"), StreamedFolder)
    assert isinstance(open_dataset(str(tmp_path), "train", stream=False), ImageDataset)
    with pytest.raises(UsageError, match="--stream .*builtin"):
        open_dataset("builtin", stream=True)


def _count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[Path]:
    """Replace module.name by a wrapper that records its first argument (a path)."""
    calls: list[Path] = []
    original: Callable = getattr(module, name)
    monkeypatch.setattr(module, name, lambda path, *rest: calls.append(path) or original(path, *rest))
    return calls


def _tree(root: Path) -> dict[str, int]:
    """Every file under root, hidden ones included, with its modification time."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_index_is_written_to_index_dir_and_reused_until_the_folder_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    _make("gray", data)
    before = _tree(data)
    reads = _count_calls(monkeypatch, folder_index, "read_header")
    first = open_folder(data, "train", stream=True, index_dir=run)
    assert len(reads) == 6 and (run / INDEX_FILE).is_file()
    written = (run / INDEX_FILE).stat().st_mtime_ns

    reads.clear()
    again, test = open_folder(data, "train", stream=True, index_dir=run), open_folder(data, "test", index_dir=run)
    assert reads == [] and (run / INDEX_FILE).stat().st_mtime_ns == written  # reused, not rewritten
    assert again.info == first.info and len(test) == 3
    assert _tree(data) == before  # nothing written into the user's folder

    _save(data / "train" / "c0" / "new.png", _noise("L"))
    _save(data / "test" / "c1" / "1.png", _noise("L", (8, 8)).convert("RGB"))  # changed: now in colour
    (data / "train" / "c0" / "0.png").unlink()
    reads.clear()
    changed = open_folder(data, "train", stream=True, index_dir=run)
    assert sorted(p.name for p in reads) == ["1.png", "new.png"]  # only the new and the changed file
    assert changed.info.channels == 3 and len(changed) == 3
    assert "train/c0/0.png" not in (run / INDEX_FILE).read_text()  # the removed file is dropped


def test_index_of_another_folder_or_a_broken_one_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make("gray", tmp_path / "a")
    _make("gray", tmp_path / "b")
    reads = _count_calls(monkeypatch, folder_index, "read_header")
    open_folder(tmp_path / "a", "train", index_dir=tmp_path / "run")
    open_folder(tmp_path / "b", "train", index_dir=tmp_path / "run")
    assert len(reads) == 12
    (tmp_path / "run" / INDEX_FILE).write_text("{not json")
    open_folder(tmp_path / "b", "train", index_dir=tmp_path / "run")
    assert len(reads) == 18 and '"root"' in (tmp_path / "run" / INDEX_FILE).read_text()


def test_palette_images_are_decoded_only_when_their_colours_matter(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = _count_calls(monkeypatch, folder_index, "colours_in_use_are_gray")
    _save(tmp_path / "gray" / "a.png", _gray_in_a_colour_palette())
    _save(tmp_path / "gray" / "b.png", _noise("L").convert("P"))  # a palette of gray entries only
    assert open_folder(tmp_path / "gray", "train", index_dir=tmp_path / "run").info.channels == 1
    assert [p.name for p in decodes] == ["a.png"]
    open_folder(tmp_path / "gray", "train", index_dir=tmp_path / "run")
    assert len(decodes) == 1  # the decision is cached with the index
    _save(tmp_path / "colour" / "a.png", _gray_in_a_colour_palette())
    _save(tmp_path / "colour" / "b.jpg", _noise("RGB"))
    assert open_folder(tmp_path / "colour", "train").info.channels == 3 and len(decodes) == 1


def _corrupt(tmp_path: Path, content: str) -> Path:
    """Good images in train/ and test/ with one bad file: an unreadable header, or a valid header and cut-off pixels."""
    for i in range(8):
        _save(tmp_path / ("train" if i < 7 else "test") / f"{i}.png",
              Image.fromarray(RNG.integers(0, 255, (64, 64), np.uint8)))
    good = (tmp_path / "train" / "0.png").read_bytes()
    (tmp_path / "train" / "bad.png").write_bytes(b"not an image" if content == "header" else good[:200])
    return tmp_path / "train" / "bad.png"


def test_an_unreadable_header_stops_indexing_with_the_name(tmp_path: Path) -> None:
    _corrupt(tmp_path, "header")
    with pytest.raises(VQGenError, match=r"^cannot read image .*bad\.png .*remove or replace the file$"):
        open_folder(tmp_path, "train", stream=True)


def test_a_corrupt_image_in_a_worker_fails_in_one_line_naming_it(tmp_path: Path) -> None:
    """The CLI prints a VQGenError's message alone, so this one line is what the user sees."""
    bad = _corrupt(tmp_path, "pixels")
    data = open_folder(tmp_path, "train", stream=True)  # its header is fine: found when a worker decodes it
    loader = make_loader(data, ResumableBatches(len(data), 4, 0, 0, 4, Dist()), num_workers=2, pin_memory=False)
    with pytest.raises(VQGenError) as caught:
        list(loader)
    traceback.clear_frames(caught.tb)  # frees the loader now: collected later, its workers take 5 s each to stop
    assert str(caught.value) == f"cannot read image {bad} (image file is truncated); remove or replace the file"


def test_training_on_a_streamed_folder_with_workers_equals_training_in_memory(tmp_path: Path, folder: Path) -> None:
    config = VQVAEConfig.tiny(in_channels=1, image_height=16, image_width=16)
    train = TrainConfig(steps=4, batch_size=8, lr=1e-3, log_every=1, eval_every=4, checkpoint_every=4, device="cpu")
    results = {}
    for stream, workers in ((False, 0), (True, 2)):
        data = open_dataset(str(folder), "train", stream=stream, index_dir=tmp_path / f"run-{stream}")
        held_out = open_dataset(str(folder), "test", stream=stream, index_dir=tmp_path / f"run-{stream}")
        out = tmp_path / f"run-{stream}" / "vqvae"
        results[stream] = train_vqvae(config, replace(train, num_workers=workers), data, held_out, out,
                                      eval_images=16, progress=False)
        export_latents(VQVAE.from_pretrained(out), held_out, tmp_path / f"latents-{stream}", progress=False)
    assert results[True]["step"] == 4 and np.isfinite(results[True]["evaluation"]["mse"])
    assert results[True]["evaluation"] == results[False]["evaluation"]  # same batches, same model
    codes = [np.load(tmp_path / f"latents-{stream}" / "codes.npy") for stream in (False, True)]
    assert np.array_equal(*codes)

