"""Tuning the decoder alone (stage1_vqvae/decoder_tuning.py): the codes stay, the decoder learns, a resume
is exact, and latents that are not the images' codes are refused in one line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vqgen.data.builtin import make_builtin
from vqgen.data.images import ImageDataset, Mirrored
from vqgen.data.latents import LatentDataset
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import load_safetensors
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.decoder_tuning import CodeDecoder, tune_decoder
from vqgen.stage1_vqvae.export import export_latents
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import reconstruction_loss, train_vqvae

TRAIN = TrainConfig(steps=6, batch_size=8, lr=1e-3, log_every=1, eval_every=6, checkpoint_every=3, device="cpu")
TUNING = replace(TRAIN, steps=30, lr=3e-3, schedule="cooldown", eval_every=30, checkpoint_every=10)


@pytest.fixture(scope="module")
def digits() -> tuple[ImageDataset, ImageDataset]:
    return make_builtin("train", seed=0, count=64), make_builtin("test", seed=0, count=16)


def trained(tmp: Path, digits: tuple[ImageDataset, ImageDataset], decoder: str = "mse",
            seed: int = 0) -> tuple[Path, Path]:
    """(a tiny VQ-VAE trained 6 steps, its export of the train split)."""
    train, test = digits
    train_vqvae(VQVAEConfig.tiny(decoder=decoder), replace(TRAIN, seed=seed), train, test, tmp / "vqvae",
                eval_images=16, progress=False)
    export_latents(VQVAE.from_pretrained(tmp / "vqvae"), train, tmp / "latents", vqvae_dir=tmp / "vqvae",
                   progress=False)
    return tmp / "vqvae", tmp / "latents"


def decoder_loss(model: VQVAE, codes: torch.Tensor, images: torch.Tensor) -> float:
    """What the tuning minimises: squared error, or a logistic decoder's negative log-likelihood."""
    with torch.no_grad():
        return float(reconstruction_loss(images, *model.decoder(model.quantizer.lookup(codes)))[0])


@pytest.mark.parametrize("decoder", ["mse", "logistic"])
def test_the_decoder_learns_and_the_codes_stay(tmp_path: Path, digits, decoder: str) -> None:
    vqvae_dir, latents_dir = trained(tmp_path, digits, decoder)
    tune_decoder(vqvae_dir, latents_dir, digits[0], digits[1], TUNING, tmp_path / "tuned", eval_images=16,
                 progress=False)
    before, after = (VQVAE.from_pretrained(d) for d in (vqvae_dir, tmp_path / "tuned"))
    state_before, state_after = before.state_dict(), after.state_dict()
    assert state_before.keys() == state_after.keys()
    for name, value in state_before.items():
        same = torch.equal(value, state_after[name])
        assert same == (not name.startswith("decoder.")), name  # encoder and codebook kept, every decoder weight moved
    images = digits[0].__getitems__(list(range(64)))[0]
    codes = torch.from_numpy(LatentDataset(latents_dir).codes[:].astype("int64"))
    assert torch.equal(after.encode(images), codes)  # the export, and a prior trained on it, still hold
    assert decoder_loss(after, codes, images) < decoder_loss(before, codes, images)
    metrics = read_metrics(tmp_path / "tuned" / "metrics.jsonl")
    assert {"mse", "psnr"} <= {k for r in metrics for k in r}
    assert ("bits_per_dim" in {k for r in metrics if r.get("split") == "train" for k in r}) == (decoder == "logistic")


def test_a_resumed_tuning_equals_an_uninterrupted_one(tmp_path: Path, digits, ctrl_c_at) -> None:
    vqvae_dir, latents_dir = trained(tmp_path, digits)
    tune = lambda out: tune_decoder(vqvae_dir, latents_dir, digits[0], digits[1], TUNING, out, eval_images=16,
                                    progress=False)
    tune(tmp_path / "whole")
    with ctrl_c_at(15, model="CodeDecoder"), pytest.raises(KeyboardInterrupt):
        tune(tmp_path / "resumed")
    tune(tmp_path / "resumed")
    whole, resumed = (load_safetensors(tmp_path / d / "model.safetensors") for d in ("whole", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_latents_that_are_not_the_images_codes_are_refused(tmp_path: Path, digits) -> None:
    vqvae_dir, latents_dir = trained(tmp_path / "a", digits)
    other_dir, _ = trained(tmp_path / "b", digits, seed=1)
    with pytest.raises(VQGenError, match="exported by another VQ-VAE"):
        tune_decoder(other_dir, latents_dir, digits[0], digits[1], TUNING, tmp_path / "x", progress=False)
    with pytest.raises(VQGenError, match=r"holds 64 code grids but the images are 128.*--flip"):
        tune_decoder(vqvae_dir, latents_dir, Mirrored(digits[0]), digits[1], TUNING, tmp_path / "y", progress=False)
    with pytest.raises(VQGenError, match=r"holds the codes of builtin \(train\), not of builtin \(test\)"):
        tune_decoder(vqvae_dir, latents_dir, make_builtin("test", seed=0, count=64), digits[1], TUNING, tmp_path / "z",
                     progress=False)
    color = ImageDataset(torch.zeros(64, 3, 28, 28, dtype=torch.uint8), None, replace(digits[0].info, channels=3))
    with pytest.raises(VQGenError, match="images are 3x28x28 but the VQ-VAE was built for 1x28x28"):
        tune_decoder(vqvae_dir, latents_dir, color, digits[1], TUNING, tmp_path / "w", progress=False)
    assert not any((tmp_path / d).exists() for d in "xyzw")


def test_the_tuned_folder_loads_as_a_vqvae_and_decodes_codes(tmp_path: Path) -> None:
    model = CodeDecoder(VQVAEConfig.tiny())
    codes = torch.randint(0, 32, (2, 7, 7))
    means, log_scales = model(codes)
    assert means.shape == (2, 1, 28, 28) and log_scales is None
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in
                                                                          model.decoder.named_parameters(prefix="decoder")}
    model.save_pretrained(tmp_path / "m")
    loaded = VQVAE.from_pretrained(tmp_path / "m")
    assert type(loaded) is VQVAE and torch.allclose(loaded.decode(codes), means)
