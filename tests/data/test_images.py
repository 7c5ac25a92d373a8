"""Image datasets: the built-in digits, folders of images, torchvision MNIST, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.data.builtin import make_builtin
from vqgen.engine.errors import UsageError, VQGenError
from vqgen.data.folder import open_folder
from vqgen.data.images import DatasetInfo, check_divisible, open_dataset


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _flat(root: Path) -> Path:
    """root/train/ for images lying directly in the split, and an empty root/test/ beside it."""
    (root / "test").mkdir()
    return root / "train"


def _gray(value: int, size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("L", size, value)


# ---- built-in digits -----------------------------------------------------------------------------

def test_builtin_is_deterministic_for_a_seed_and_varies_with_it() -> None:
    first, again, other = make_builtin("train", 0, 64), make_builtin("train", 0, 64), make_builtin("train", 1, 64)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)


def test_builtin_train_and_test_are_different_draws() -> None:
    train, test = make_builtin("train", 0, 64), make_builtin("test", 0, 64)
    assert not torch.equal(train.images, test.images)
    assert not (train.images[:, None] == test.images[None]).flatten(2).all(-1).any()  # no image shared


def test_builtin_test_split_is_balanced_mnist_shaped_digits() -> None:
    data = make_builtin("test", 0)
    assert len(data) == 2000 and data.info.num_classes == 10 and data.info.class_names == tuple("0123456789")
    assert torch.bincount(data.labels).tolist() == [200] * 10
    images, labels = data.__getitems__(list(range(len(data))))
    assert images.shape == (2000, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1
    assert (images.amax(dim=(1, 2, 3)) > 0.6).all()  # every image holds a bright stroke
    assert images.mean() < 0.3  # on a dark background
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], -1)
    assert border.mean() < 0.02  # the digit fits the frame
    means = torch.stack([images[labels == c].mean(0) for c in range(10)]).flatten(1)  # (10, 784)
    distances = torch.cdist(means, means)[~torch.eye(10, dtype=torch.bool)]
    assert distances.min() > 0.2 * distances.max()  # every class has its own average shape


def test_open_dataset_builtin_uses_the_seed() -> None:
    assert torch.equal(open_dataset("builtin", "test", seed=3).images, make_builtin("test", 3).images)


def test_getitems_agrees_with_getitem() -> None:
    data = make_builtin("train", 0, 16)
    images, labels = data.__getitems__([5, 0, 5])
    for row, index in enumerate([5, 0, 5]):
        image, label = data[index]
        assert torch.equal(images[row], image) and torch.equal(labels[row], label)
    assert torch.equal(image, data.images[5].float() / 255)


def test_bad_builtin_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="split='valid'"):
        open_dataset("builtin", "valid")
    with pytest.raises(UsageError, match="--image-size"):
        open_dataset("builtin", "test", size=32)


# ---- folders of images ---------------------------------------------------------------------------

def test_class_folders_are_numbered_in_sorted_order_over_both_splits(tmp_path: Path) -> None:
    for split, names in (("train", ["zebra", "apple", "mango"]), ("test", ["zebra", "mango"])):
        for value, name in enumerate(names):
            _save(tmp_path / split / name / "a.png", _gray(10 * value))
    train, test = open_folder(tmp_path, "train"), open_folder(tmp_path, "test")
    assert train.info.class_names == test.info.class_names == ("apple", "mango", "zebra")
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [1, 2]
    assert test.info.num_classes == 3 and test.info.source()["image_shape"] == [1, 8, 8]


def test_loose_images_are_unlabelled_and_split_by_a_stable_hash(tmp_path: Path) -> None:
    for i in range(60):
        _save(tmp_path / f"{i}.png", _gray(i))
    train, test = open_folder(tmp_path, "train"), open_folder(tmp_path, "test")
    assert len(train) + len(test) == 60 and 1 <= len(test) <= 15
    assert not set(train.images[:, 0, 0, 0].tolist()) & set(test.images[:, 0, 0, 0].tolist())
    assert torch.equal(open_folder(tmp_path, "test").images, test.images)
    assert test.labels is None and test.info.num_classes is None
    assert test[0][1].item() == -1 and (test.__getitems__([0, 1])[1] == -1).all()


def test_grayscale_modes_give_one_channel(tmp_path: Path) -> None:
    train = _flat(tmp_path)
    _save(train / "l.png", _gray(128))
    _save(train / "bits.png", _gray(255).convert("1"))
    _save(train / "palette.png", _gray(64).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE))
    _save(train / "wide.png", Image.fromarray(np.full((8, 8), 32 * 257, np.uint16)))  # 16 bits
    _save(train / "upper.JPG", _gray(200))
    data = open_dataset(str(tmp_path), "train")
    assert data.images.shape == (5, 1, 8, 8)
    assert sorted(data.images[:, 0, 0, 0].tolist()) == [32, 64, 128, 200, 255]


def test_any_colour_image_makes_rgb_and_transparency_becomes_black(tmp_path: Path) -> None:
    train = _flat(tmp_path)
    _save(train / "a_gray.png", _gray(100))
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))
    _save(train / "b_rgba.png", rgba)
    _save(train / "c_palette.png", Image.new("RGB", (8, 8), (0, 0, 200)).convert("P", palette=Image.Palette.ADAPTIVE))
    images = open_folder(tmp_path, "train").images
    assert images.shape == (3, 3, 8, 8)
    assert images[0, :, 0, 0].tolist() == [100, 100, 100]
    assert images[1, :, 0, 0].tolist() == [0, 0, 0] and images[1, :, 1, 1].tolist() == [255, 0, 0]
    assert images[2, :, 0, 0].tolist() == [0, 0, 200]


def test_mixed_sizes_are_refused_naming_the_file(tmp_path: Path) -> None:
    train = _flat(tmp_path)
    _save(train / "a.png", _gray(0, (16, 16)))
    _save(train / "b.png", _gray(0, (20, 16)))
    with pytest.raises(VQGenError, match=r"b\.png is 20x16 but .*a\.png is 16x16.*--image-size"):
        open_folder(tmp_path, "train")


def test_size_option_resizes_the_shorter_side_and_crops_the_centre(tmp_path: Path) -> None:
    wide = np.zeros((16, 32), np.uint8)
    wide[:, :8] = wide[:, 24:] = 255  # white edges fall outside the centre square
    train = _flat(tmp_path)
    _save(train / "a.png", Image.fromarray(wide))
    _save(train / "b.png", _gray(255, (32, 32)))
    images = open_dataset(str(tmp_path), "train", size=16).images
    assert images.shape == (2, 1, 16, 16)
    assert images[0].max() == 0 and images[1].min() == 255


@pytest.mark.parametrize("content", [b"not an image", "truncated"])
def test_unreadable_file_is_named(tmp_path: Path, content: bytes | str) -> None:
    train = _flat(tmp_path)
    good = _save(train / "good.png", Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    bad = train / "bad.png"
    bad.write_bytes(good.read_bytes()[:200] if content == "truncated" else content)
    with pytest.raises(VQGenError, match=r"cannot read image .*bad\.png"):
        open_folder(tmp_path, "train")


def test_empty_folder_and_mixed_layout_are_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(VQGenError, match="no images"):
        open_dataset(str(tmp_path))
    _save(tmp_path / "cats" / "a.png", _gray(0))
    _save(tmp_path / "loose.png", _gray(0))
    with pytest.raises(VQGenError, match=r"loose\.png lies directly in"):
        open_folder(tmp_path, "train")


# ---- names, torchvision, sizes -------------------------------------------------------------------

def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown dataset 'imagenet'.*builtin, mnist, fashion-mnist, cifar10.*folder"):
        open_dataset("imagenet")


def test_missing_data_root_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--data-root"):
        open_dataset("mnist")
    with pytest.raises(VQGenError, match="--data-root .*--download"):
        open_dataset("mnist", root=str(tmp_path / "absent"))
    with pytest.raises(VQGenError, match="mnist not found under --data-root.*--download"):
        open_dataset("mnist", root=str(tmp_path))


def test_mnist_from_its_raw_files(mnist_root: Path) -> None:
    train, test = open_dataset("mnist", "train", str(mnist_root)), open_dataset("mnist", "test", str(mnist_root))
    assert (len(train), len(test)) == (60000, 10000)
    assert train.info.source() == {"dataset": "mnist", "split": "train", "image_shape": [1, 28, 28]}
    assert torch.bincount(train.labels).tolist()[:2] == [5923, 6742] and train.info.num_classes == 10
    assert abs(train.images[:10000].float().mean().item() / 255 - 0.1307) < 0.01  # MNIST's known mean
    image, label = test[0]
    assert image.shape == (1, 28, 28) and image.max() == 1 and label.item() == 7


def test_check_divisible_names_size_factor_and_fix() -> None:
    info = DatasetInfo("builtin", "train", 1, 28, 28, 10, None)
    check_divisible(info, 4)
    with pytest.raises(VQGenError, match=r"28x28, not divisible by 8.*fewer --downsamples"):
        check_divisible(info, 8)
