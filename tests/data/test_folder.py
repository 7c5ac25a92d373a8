"""Split-folder layouts of an image folder: which files make each split, and which folders are classes.

Each image is an 8x8 gray PNG of a value unique in its folder, so a loaded pixel tells which file
it came from, and the splits are checked file by file against the layout's rule.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from vqgen.data import folder
from vqgen.data.folder import open_folder
from vqgen.data.images import BatchedImages, open_dataset
from vqgen.engine.errors import VQGenError


def _write(root: Path, paths: list[str]) -> dict[int, str]:
    """An image at each path below root, of gray value 1, 2, ...: the map from value to path."""
    for value, path in enumerate(paths, 1):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), value).save(root / path)
    return dict(enumerate(paths, 1))


def _paths(data: BatchedImages, files: dict[int, str]) -> list[str]:
    """The file of each image of `data`, in dataset order."""
    return [files[value] for value in data.images[:, 0, 0, 0].tolist()]


def _reference_held_out(relative: str) -> bool:
    """The documented rule written out again: 10% by the first 8 bytes of the path's SHA-256."""
    return int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big") % 100 < 10


def _class_files(base: str, classes: dict[str, int]) -> list[str]:
    """`count` files in each class folder below `base`, in the folder's order (sorted part by part)."""
    paths = [f"{base}{name}/{i}.png" for name, count in classes.items() for i in range(count)]
    return sorted(paths, key=lambda path: path.split("/"))


def _labels_by_path(paths: list[str], base: str, names: tuple[str, ...]) -> list[int]:
    return [names.index(path[len(base):].split("/")[0]) for path in paths]


def _both(root: Path) -> tuple[BatchedImages, BatchedImages]:
    return open_folder(root, "train"), open_folder(root, "test")


# ---- train/ beside a held-out folder ------------------------------------------------------------

@pytest.mark.parametrize("held_out", ["test", "val", "valid", "validation"])
def test_train_beside_a_held_out_folder_gives_the_two_splits(tmp_path: Path, held_out: str) -> None:
    train_files = _class_files("train/", {"cat": 3, "dog": 2})
    test_files = _class_files(f"{held_out}/", {"dog": 2, "emu": 1})
    files = _write(tmp_path, [*train_files, *test_files, "extra.png", "notes/x/a.png", "notes/y/b.png"])
    train, test = open_dataset(str(tmp_path), "train"), open_dataset(str(tmp_path), "test")
    assert _paths(train, files) == train_files and _paths(test, files) == test_files  # extra and notes/ not read
    assert train.info.class_names == test.info.class_names == ("cat", "dog", "emu")
    assert train.info.num_classes == test.info.num_classes == 3
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and test.labels.tolist() == [1, 1, 2]


@pytest.mark.parametrize("present, used", [(["test", "val"], "test"), (["test", "validation"], "test"),
                                           (["val", "valid", "validation"], "val"),
                                           (["valid", "validation"], "valid")])
def test_the_first_held_out_folder_is_the_test_split_and_the_others_are_not_read(
        tmp_path: Path, present: list[str], used: str) -> None:
    paths = _class_files("train/", {"a": 2, "b": 2})
    for name in present:  # each held-out folder with a class of its own, so an unused one would show
        paths += _class_files(f"{name}/", {"a": 1, f"only_{name}": 1})
    files = _write(tmp_path, paths)
    train, test = _both(tmp_path)
    assert _paths(test, files) == [f"{used}/a/0.png", f"{used}/only_{used}/0.png"]
    assert _paths(train, files) == _class_files("train/", {"a": 2, "b": 2})
    assert test.info.class_names == ("a", "b", f"only_{used}") and test.labels.tolist() == [0, 2]


def test_split_folder_names_are_exact(tmp_path: Path) -> None:
    files = _write(tmp_path, _class_files("", {"Train": 10, "tests": 10, "validation_set": 10}))
    train, test = _both(tmp_path)  # no split folder: three classes, split by the hash
    assert train.info.class_names == ("Train", "tests", "validation_set")
    assert sorted(_paths(train, files) + _paths(test, files)) == sorted(files.values())


# ---- a lone train/ --------------------------------------------------------------------------------

def test_a_lone_train_folder_holds_out_ten_percent_by_the_path_hash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    all_files = _class_files("train/", {"cat": 30, "dog": 30})
    files = _write(tmp_path, all_files)
    expected = [path for path in all_files if _reference_held_out(path.removeprefix("train/"))]
    assert 0 < len(expected) < 15  # the fixture exercises both splits
    indexed: list[list[str]] = []
    index_folder: Callable = folder.index_folder
    monkeypatch.setattr(folder, "index_folder", lambda root, paths, run: indexed.append(paths) or
                        index_folder(root, paths, run))
    train, test = _both(tmp_path)
    assert _paths(test, files) == expected
    assert _paths(train, files) == [path for path in all_files if path not in expected]
    assert train.info.class_names == test.info.class_names == ("cat", "dog") and train.info.num_classes == 2
    assert test.labels.tolist() == _labels_by_path(expected, "train/", ("cat", "dog"))
    assert sorted(indexed[0]) == sorted(all_files)  # the index reads both splits' headers
    alone = open_folder(tmp_path / "train", "test")  # the same split as train/ opened on its own
    assert alone.images.equal(test.images) and alone.labels.equal(test.labels)


@pytest.mark.parametrize("held_out", ["val", "valid", "validation", "test"])
def test_a_held_out_folder_without_train_is_refused(tmp_path: Path, held_out: str) -> None:
    _write(tmp_path, _class_files(f"{held_out}/", {"a": 2, "b": 2}) + _class_files("other/", {"c": 1}))
    message = rf"^{re.escape(str(tmp_path))} holds the split folder\(s\) {held_out}/ but no train/; add a train/ folder"
    for split in ("train", "test"):
        with pytest.raises(VQGenError, match=message):
            open_folder(tmp_path, split)


# ---- fewer than two classes is unlabelled ---------------------------------------------------------

@pytest.mark.parametrize("paths", [
    [f"images/{i}.png" for i in range(30)],  # one class folder, no split folders
    [f"train/images/{i}.png" for i in range(30)],  # one class folder in a lone train/
    [f"train/cats/{i}.png" for i in range(4)] + ["val/cats/0.png", "val/cats/1.png"],  # the same class in both
])
def test_a_single_class_is_unlabelled(tmp_path: Path, paths: list[str]) -> None:
    files = _write(tmp_path, paths)
    train, test = _both(tmp_path)
    assert sorted(_paths(train, files) + _paths(test, files)) == sorted(paths) and len(test) > 0
    for data in (train, test):
        assert data.labels is None and data.info.num_classes is None and data.info.class_names is None
        assert (data.__getitems__([0])[1] == -1).all()


@pytest.mark.parametrize("base", ["", "train/"])
def test_two_classes_are_labelled(tmp_path: Path, base: str) -> None:
    files = _write(tmp_path, _class_files(base, {"b": 20, "a": 20}))
    for data in _both(tmp_path):
        assert data.info.class_names == ("a", "b") and data.info.num_classes == 2
        assert data.labels.tolist() == _labels_by_path(_paths(data, files), base, ("a", "b"))


def test_classes_split_across_train_and_val_are_labelled(tmp_path: Path) -> None:
    files = _write(tmp_path, ["train/a/0.png", "train/a/1.png", "val/b/0.png"])
    train, test = _both(tmp_path)
    assert train.info.class_names == ("a", "b") and train.labels.tolist() == [0, 0] and test.labels.tolist() == [1]
    assert _paths(test, files) == ["val/b/0.png"]


def test_loose_images_beside_one_class_folder_are_still_refused(tmp_path: Path) -> None:
    _write(tmp_path, ["train/images/0.png", "train/loose.png", "val/images/0.png"])
    with pytest.raises(VQGenError, match=r"loose\.png lies directly in .*train while other images are in class"):
        open_folder(tmp_path, "train")


# ---- empty splits name the folder and the fix -----------------------------------------------------

def test_an_empty_held_out_folder_names_itself(tmp_path: Path) -> None:
    _write(tmp_path, _class_files("train/", {"a": 2, "b": 2}))
    (tmp_path / "val").mkdir()
    assert len(open_folder(tmp_path, "train")) == 4
    with pytest.raises(VQGenError, match=rf"no images .* in {re.escape(str(tmp_path / 'val'))}, the test split; "
                                         r"add some, or delete it to hold out 10% of train/"):
        open_folder(tmp_path, "test")


def test_an_empty_train_folder_names_itself(tmp_path: Path) -> None:
    _write(tmp_path, ["validation/a/0.png"])
    (tmp_path / "train").mkdir()
    train = re.escape(str(tmp_path / "train"))
    with pytest.raises(VQGenError, match=rf"no images .* in {train}, the train split; add some$"):
        open_folder(tmp_path, "train")


def test_a_lone_train_folder_with_nothing_held_out_says_to_add_a_test_folder(tmp_path: Path) -> None:
    kept = [f"train/{i}.png" for i in range(20) if not _reference_held_out(f"{i}.png")]
    _write(tmp_path, kept[:3])
    assert len(open_folder(tmp_path, "train")) == 3
    train = re.escape(str(tmp_path / "train"))
    with pytest.raises(VQGenError, match=rf"{train} has 3 images but none fell in its test split .*add images, "
                                         r"or put held-out images in a test/ folder beside train/"):
        open_folder(tmp_path, "test")


def test_a_lone_empty_train_folder_says_to_add_images(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(VQGenError, match=rf"no images .* in {re.escape(str(tmp_path / 'train'))}; add some$"):
        open_folder(tmp_path, "train")
