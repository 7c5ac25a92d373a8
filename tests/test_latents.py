"""The latent dataset format: numpy-only round trip, dtype by K, validation, atomic export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgen.engine.errors import VQGenError
from vqgen.data.latents import LatentDataset, LatentManifest, LatentWriter, code_dtype, read_manifest


def write_latents(target: Path, codes: np.ndarray, labels: np.ndarray | None, k: int,
                  num_classes: int | None = 10, batch: int = 3) -> Path:
    manifest = LatentManifest(count=len(codes), grid=codes.shape[1:], codebook_size=k,
                              num_classes=num_classes if labels is not None else None,
                              source={"dataset": "test", "split": "train", "image_shape": [1, 8, 8]})
    writer = LatentWriter(target, manifest).create(np.random.rand(k, 4).astype(np.float32))
    for start in range(0, len(codes), batch):
        writer.write(start, torch.from_numpy(codes[start:start + batch].astype(np.int64)),
                     None if labels is None else torch.from_numpy(labels[start:start + batch]))
    return writer.commit()


@pytest.mark.parametrize("k, dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                      (65537, np.int32)])
def test_dtype_follows_codebook_size(k: int, dtype: type) -> None:
    assert code_dtype(k) == np.dtype(dtype)


def test_round_trip_with_numpy_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 300, size=(10, 3, 5))
    labels = rng.integers(0, 10, size=10)
    target = write_latents(tmp_path / "train", codes, labels, k=300)
    read = np.load(target / "codes.npy", mmap_mode="r", allow_pickle=False)
    assert read.dtype == np.uint16 and read.shape == (10, 3, 5)
    np.testing.assert_array_equal(read, codes)
    np.testing.assert_array_equal(np.load(target / "labels.npy"), labels)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["format"] == "vqgen-latents" and manifest["grid"] == [3, 5]
    assert manifest["codebook_size"] == 300 and manifest["code_dtype"] == "uint16" and manifest["count"] == 10
    assert np.load(target / "codebook.npy").shape == (300, 4)


def test_torch_dataset_gives_int64_grids_and_labels(tmp_path: Path) -> None:
    codes = np.arange(4 * 2 * 2).reshape(4, 2, 2) % 7
    target = write_latents(tmp_path / "t", codes, np.array([1, 2, 3, 4]), k=7)
    data = LatentDataset(target)
    grid, label = data[2]
    assert grid.dtype == torch.int64 and grid.shape == (2, 2) and int(label) == 3
    batch_codes, batch_labels = data.__getitems__([3, 0])
    assert torch.equal(batch_codes, torch.from_numpy(codes[[3, 0]]))
    assert batch_labels.tolist() == [4, 1]


def test_unlabelled_latents_have_no_labels_file(tmp_path: Path) -> None:
    target = write_latents(tmp_path / "u", np.zeros((3, 2, 2), dtype=np.int64), None, k=4)
    assert not (target / "labels.npy").exists()
    assert read_manifest(target).num_classes is None
    assert LatentDataset(target)[0][1].item() == -1


def test_interrupted_export_never_looks_complete(tmp_path: Path) -> None:
    manifest = LatentManifest(count=4, grid=(2, 2), codebook_size=4, num_classes=None)
    writer = LatentWriter(tmp_path / "train", manifest).create(np.zeros((4, 2), np.float32))
    writer.write(0, torch.zeros(2, 2, 2, dtype=torch.long), None)
    assert not (tmp_path / "train").exists()
    with pytest.raises(VQGenError, match="interrupted"):
        LatentDataset(tmp_path / "train")
    target = write_latents(tmp_path / "train", np.zeros((4, 2, 2), dtype=np.int64), None, k=4)
    assert LatentDataset(target).manifest.count == 4 and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("field, value, message", [
    ("count", 11, "shape"),
    ("grid", [5, 3], "shape"),
    ("code_dtype", "uint8", "code_dtype"),
    ("codebook_size", 290, "holds code 29"),
    ("format", "other", "not a vqgen latent manifest"),
    ("version", 9, "version"),
])
def test_inconsistent_manifest_is_refused(tmp_path: Path, field: str, value: object, message: str) -> None:
    codes = np.random.default_rng(1).integers(200, 300, size=(10, 3, 5))
    target = write_latents(tmp_path / "train", codes, None, k=300)
    raw = json.loads((target / "manifest.json").read_text())
    raw[field] = value
    (target / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(VQGenError, match=message):
        LatentDataset(target)


def test_pickled_array_is_refused(tmp_path: Path) -> None:
    target = write_latents(tmp_path / "train", np.zeros((2, 2, 2), dtype=np.int64), None, k=4)
    np.save(target / "codes.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(VQGenError, match="not a plain numpy array"):
        LatentDataset(target)


def test_truncated_codes_file_is_refused(tmp_path: Path) -> None:
    target = write_latents(tmp_path / "train", np.zeros((50, 4, 4), dtype=np.int64), None, k=4)
    data = (target / "codes.npy").read_bytes()
    (target / "codes.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(VQGenError, match="corrupt|truncated"):
        LatentDataset(target)


def test_mismatch_with_the_prior_names_both_values(tmp_path: Path) -> None:
    target = write_latents(tmp_path / "train", np.zeros((2, 3, 3), dtype=np.int64), None, k=16)
    data = LatentDataset(target)
    with pytest.raises(VQGenError, match="K=16 codes but the prior was built for K=512"):
        data.check_fits(512, (3, 3))
    with pytest.raises(VQGenError, match="grid 3x3 but the prior was built for 7x7"):
        data.check_fits(16, (7, 7))


def test_export_of_empty_dataset_is_refused(tmp_path: Path) -> None:
    manifest = LatentManifest(count=0, grid=(2, 2), codebook_size=4, num_classes=None)
    with pytest.raises(VQGenError, match="empty"):
        LatentWriter(tmp_path / "x", manifest).create(np.zeros((4, 2), np.float32))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_export_encodes_under_the_precision_asked_with_the_distances_in_fp32(tmp_path: Path, precision: str) -> None:
    """A VQ-VAE trained under bf16 autocast exports its codes under it too; the quantizer stays fp32."""
    from vqgen.data.images import DatasetInfo, ImageDataset
    from vqgen.stage1_vqvae.config import VQVAEConfig
    from vqgen.stage1_vqvae.export import export_latents
    from vqgen.stage1_vqvae.model import VQVAE

    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig.small(hidden=8, res_hidden=4, code_dim=4, codebook_size=16, in_channels=1,
                                    image_height=8, image_width=8)).eval()
    pixels = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    data = ImageDataset(pixels, torch.arange(6) % 2, DatasetInfo("test", "train", 1, 8, 8, 2, None))
    target = tmp_path / precision
    export_latents(model, data, target, batch_size=4, progress=False, precision=precision)
    images = data.__getitems__(list(range(6)))[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        expected = model.encode(images)
    np.testing.assert_array_equal(LatentDataset(target).__getitems__(list(range(6)))[0].numpy(), expected.numpy())
