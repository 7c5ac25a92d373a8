"""Image data: the built-in digits, folders of images by their documented rules, torchvision MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.builtin import make_builtin
from data.errors import UsageError, VQGenError
from data.folder import open_folder
from data.images import check_divisible, open_dataset


def test_builtin_is_deterministic_labelled_and_in_range() -> None:
    a, b = make_builtin("train", seed=0, count=200), make_builtin("train", seed=0, count=200)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(make_builtin("train", seed=1, count=200).images, a.images)
    assert not torch.equal(make_builtin("test", seed=0, count=200).images, a.images)
    image, label = a[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert sorted(a.labels.unique().tolist()) == list(range(10)) and a.info.num_classes == 10
    batch, labels = a.__getitems__([5, 1])
    assert torch.equal(batch[0], a[5][0]) and labels.tolist() == [int(a[5][1]), int(a[1][1])]


def test_builtin_classes_differ_on_average() -> None:
    data = make_builtin("train", seed=0, count=500)
    means = torch.stack([data.images[data.labels == c].float().mean(0) for c in range(10)])  # (10, 1, 28, 28)
    distances = torch.cdist(means.flatten(1), means.flatten(1))
    assert distances[~torch.eye(10, dtype=torch.bool)].min() > 100  # class templates are far apart


def save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_folder_classes_are_sorted_and_splits_follow_subfolders(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name in ("zebra", "apple", "mango"):
            save(tmp_path / split / name / "a.png", Image.new("L", (8, 8), 10))
    data = open_folder(tmp_path, "train")
    assert data.info.class_names == ("apple", "mango", "zebra") and data.labels.tolist() == [0, 1, 2]
    assert data.info.channels == 1 and len(open_folder(tmp_path, "test")) == 3


def test_mode_rule_gray_stays_one_channel_else_rgb(tmp_path: Path) -> None:
    save(tmp_path / "gray" / "l.png", Image.new("L", (4, 4), 100))
    save(tmp_path / "gray" / "p.png", Image.new("L", (4, 4), 50).convert("P"))
    gray = open_dataset(str(tmp_path / "gray"), "train")
    assert gray.info.channels == 1
    save(tmp_path / "mixed" / "l.png", Image.new("L", (4, 4), 100))
    save(tmp_path / "mixed" / "rgba.png", Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    mixed = open_folder(tmp_path / "mixed", "train")
    assert mixed.info.channels == 3
    rgba = mixed.images[[p.name for p in sorted((tmp_path / "mixed").iterdir())].index("rgba.png")]
    assert rgba.sum() == 0  # fully transparent pixels composite onto black


def test_mixed_sizes_name_the_file_unless_resized(tmp_path: Path) -> None:
    save(tmp_path / "a.png", Image.new("L", (8, 8)))
    save(tmp_path / "b.png", Image.new("L", (10, 6)))
    with pytest.raises(VQGenError, match="b.png is 10x6 but .*a.png is 8x8"):
        open_folder(tmp_path, "train")
    assert open_folder(tmp_path, "train", size=4).images.shape == (2, 1, 4, 4)


def test_unreadable_file_and_empty_folder_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VQGenError, match="no images"):
        open_folder(tmp_path / "empty", "train")
    save(tmp_path / "bad" / "ok.png", Image.new("L", (4, 4)))
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(VQGenError, match="cannot read image .*broken.png"):
        open_folder(tmp_path / "bad", "train")


def test_folder_without_split_folders_holds_out_a_stable_tenth(tmp_path: Path) -> None:
    for i in range(200):
        save(tmp_path / f"{i}.png", Image.new("L", (2, 2), i))
    train, test = open_folder(tmp_path, "train"), open_folder(tmp_path, "test")
    assert len(train) + len(test) == 200 and 5 <= len(test) <= 40 and train.labels is None
    assert torch.equal(open_folder(tmp_path, "test").images, test.images)


def test_unknown_names_and_missing_roots_are_clear(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown dataset 'imagenet'.*builtin, mnist"):
        open_dataset("imagenet")
    with pytest.raises(UsageError, match="needs --data-root"):
        open_dataset("mnist")
    with pytest.raises(VQGenError, match="does not exist"):
        open_dataset("mnist", root=str(tmp_path / "nowhere"))
    with pytest.raises(VQGenError, match="not found under --data-root"):
        open_dataset("cifar10", root=str(tmp_path))


def test_sizes_that_do_not_divide_are_refused() -> None:
    info = make_builtin("test", count=10).info
    check_divisible(info, 4)
    with pytest.raises(VQGenError, match="28x28, not divisible by 8"):
        check_divisible(info, 8)


def test_real_mnist(mnist_root: Path) -> None:
    train, test = open_dataset("mnist", "train", str(mnist_root)), open_dataset("mnist", "test", str(mnist_root))
    assert len(train) == 60000 and len(test) == 10000 and train.info.source()["image_shape"] == [1, 28, 28]
    assert np.bincount(train.labels.numpy()).tolist()[:2] == [5923, 6742]
    assert abs(float(train.images[:10000].float().mean() / 255) - 0.1307) < 0.01
