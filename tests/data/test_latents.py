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


def distances_by_brute_force(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared distance of each vector of z (B, D, h, w) to each code, by every difference in float64."""
    flat = z.double().permute(0, 2, 3, 1).unsqueeze(-2)  # (B, h, w, 1, D)
    return (flat - codebook.double()).pow(2).sum(-1)  # (B, h, w, K)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_export_encodes_under_the_precision_asked_with_the_distances_in_fp32(tmp_path: Path, precision: str) -> None:
    """A VQ-VAE trained under bf16 autocast exports its codes under it too; the quantizer stays fp32.

    The codebook is dense around the encoder's outputs, so many vectors have two nearly tied codes: a
    bf16 encoder then moves some codes away from the fp32 encoder's, and bf16 distances (errors near
    1e-4 here) would pick codes farther than the nearest by more than fp32's rounding (near 1e-8)."""
    from torch import nn

    from vqgen.data.images import DatasetInfo, ImageDataset
    from vqgen.stage1_vqvae.config import VQVAEConfig
    from vqgen.stage1_vqvae.export import export_latents
    from vqgen.stage1_vqvae.model import VQVAE

    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig.small(hidden=8, res_hidden=4, code_dim=4, codebook_size=256, in_channels=1,
                                    image_height=8, image_width=8)).eval()
    pixels = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    data = ImageDataset(pixels, torch.arange(64) % 2, DatasetInfo("test", "train", 1, 8, 8, 2, None))
    images = data.__getitems__(list(range(64)))[0]
    with torch.no_grad():
        others = model.encoder(torch.rand(64, 1, 8, 8)).permute(0, 2, 3, 1).reshape(256, 4)  # (K, D)
        model.quantizer.codebook.copy_(others + 0.01 * torch.randn(256, 4))
        fp32_encoded = model.encoder(images)  # (64, D, 2, 2), no autocast
    conv_outputs: list[torch.dtype] = []
    quantizer_inputs: list[torch.Tensor] = []
    convolutions = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: conv_outputs.append(o.dtype)) for m in convolutions]
    hooks.append(model.quantizer.register_forward_hook(lambda m, i, o: quantizer_inputs.append(i[0])))
    target = tmp_path / precision
    export_latents(model, data, target, batch_size=16, progress=False, precision=precision)
    for hook in hooks:
        hook.remove()
    exported = LatentDataset(target).__getitems__(list(range(64)))[0]  # (64, 2, 2)

    asked = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    assert len(conv_outputs) == 4 * len(convolutions) and set(conv_outputs) == {asked}  # each of 4 batches
    encoded = torch.cat(quantizer_inputs).float()  # (64, D, 2, 2), what the quantizer received
    assert quantizer_inputs[0].dtype == asked
    drift = (encoded - fp32_encoded).abs().max().item()  # bf16 rounds the outputs near 0.2 by up to 1e-3
    assert (drift < 1e-5) if precision == "fp32" else (1e-4 < drift < 1e-2), drift
    distances = distances_by_brute_force(encoded, model.quantizer.codebook)  # (64, 2, 2, K)
    excess = distances.gather(-1, exported[..., None]).squeeze(-1) - distances.min(-1).values
    assert excess.max().item() < 1e-7, "an exported code is not the nearest one to what the encoder gave"
    fp32_codes = distances_by_brute_force(fp32_encoded, model.quantizer.codebook).argmin(-1)
    differ = (exported != fp32_codes).float().mean().item()
    assert (differ == 0) if precision == "fp32" else (0 < differ < 0.3), f"{differ:.0%} of codes differ from fp32's"
