"""Stage one end to end on tiny configs: shapes, decode path, export round trip, exact resume, errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from vqgen.data.builtin import make_builtin
from vqgen.engine.errors import UsageError, VQGenError
from vqgen.data.images import DatasetInfo, ImageDataset
from vqgen.data.latents import LatentDataset
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.export import export_latents
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import train_vqvae

TINY_TRAIN = TrainConfig(steps=6, batch_size=8, lr=1e-3, log_every=1, eval_every=3, checkpoint_every=3,
                         device="cpu")


@pytest.fixture(scope="module")
def digits() -> tuple[ImageDataset, ImageDataset]:
    return make_builtin("train", seed=0, count=64), make_builtin("test", seed=0, count=16)


@pytest.mark.parametrize("size, downsamples, grid", [((28, 28), 2, (7, 7)), ((16, 24), 3, (2, 3)),
                                                      ((32, 32), 3, (4, 4))])
def test_shapes_and_gradients(size: tuple[int, int], downsamples: int, grid: tuple[int, int]) -> None:
    config = VQVAEConfig.tiny(in_channels=3, image_height=size[0], image_width=size[1], downsamples=downsamples)
    model = VQVAE(config)
    images = torch.rand(2, 3, *size)
    out = model(images)
    assert out.reconstruction.shape == images.shape and out.quantizer.indices.shape == (2, *grid)
    assert config.grid == grid
    (torch.nn.functional.mse_loss(out.reconstruction, images) + out.quantizer.loss).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for name, p in model.named_parameters() if not name.startswith("quantizer"))


def test_codes_through_codebook_and_decoder_equal_reconstruction() -> None:
    model = VQVAE(VQVAEConfig.tiny()).eval()
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(images).reconstruction
        assert torch.allclose(model.decode(model.encode(images)), expected, atol=1e-6)


def logistic_bits_by_hand(model: VQVAE, images: torch.Tensor) -> torch.Tensor:
    """(B,) bits of each image under the decoder's logistics, in float64 from their means and log-scales:
    -log2 of sigmoid((x + h - mean) / scale) - sigmoid((x - h - mean) / scale), h half a level's width,
    the end levels' bins open to -inf and +inf, summed over the pixels."""
    from vqgen.stage1_vqvae.pixels import LEVELS, MIN_LOG_SCALE

    with torch.no_grad():
        out = model.eval()(images)
    x, means = images.double(), out.reconstruction.double()
    scales = out.log_scales.double().clamp(min=MIN_LOG_SCALE).exp()
    half = 0.5 / LEVELS
    upper = torch.where(x >= 1 - half, 1.0, torch.sigmoid((x + half - means) / scales))
    lower = torch.where(x <= half, 0.0, torch.sigmoid((x - half - means) / scales))
    mass = upper - lower
    assert mass.min() > 1e-9  # the difference keeps its digits: no reflection into the tail needed
    return -mass.log2().flatten(1).sum(1)


def prior_bits_by_hand(prior: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(B,) bits of each code grid: -log2 of the softmax of the prior's logits at each code, summed."""
    with torch.no_grad():
        log_p = prior.eval()(codes, labels).double().log_softmax(1)  # (B, K, h, w)
    return -log_p.gather(1, codes[:, None]).flatten(1).sum(1) / math.log(2)


def check_logistic_figures(vqvae: VQVAE, prior: torch.nn.Module, train: ImageDataset, held_out: ImageDataset,
                           count: int, seed: int, prior_labels: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """The evaluation's and the two-stage bound's figures against the by-hand bits of the seed's rows."""
    from vqgen.data.rows import spread_rows
    from vqgen.pipeline.evaluation.likelihood import bits_per_dim
    from vqgen.stage1_vqvae.train import evaluate_vqvae

    images, labels = held_out.__getitems__(spread_rows(held_out.labels, len(held_out), count, seed))
    dims = images[0].numel()  # C * H * W
    decoder = (logistic_bits_by_hand(vqvae, images) / dims).mean().item()
    first_rows = (logistic_bits_by_hand(vqvae, held_out.__getitems__(list(range(count)))[0]) / dims).mean().item()
    assert abs(first_rows - decoder) > 1e-4 * decoder  # which rows are read shows in the figure
    evaluation = evaluate_vqvae(vqvae, held_out, torch.device("cpu"), limit=count, seed=seed)
    assert evaluation["decoder_bits_per_dim"] == pytest.approx(decoder, rel=1e-5)
    codes = vqvae.encode(images)  # (count, h, w)
    per_code = prior_bits_by_hand(prior, codes, prior_labels(labels)).mean().item() / codes[0].numel()
    bound = bits_per_dim(vqvae, prior, train, held_out, count=count, seed=seed)
    assert bound["images"] == count and bound["sigma"] is None
    assert bound["decoder_bits_per_dim"] == pytest.approx(decoder, rel=1e-5)
    assert bound["prior_bits_per_dim"] == pytest.approx(per_code * codes[0].numel() / dims, rel=1e-5)
    assert bound["bits_per_dim"] == pytest.approx(decoder + per_code * codes[0].numel() / dims, rel=1e-5)


def test_a_logistic_decoder_gives_means_and_log_scales_and_trains_by_its_likelihood(
        tmp_path: Path, digits: tuple[ImageDataset, ImageDataset]) -> None:
    """Its bits/dim, in training's evaluation and in the two-stage bound, are the mean over the seed's
    held-out rows of each image's discretised-logistic bits over C * H * W, the bound adding the prior's
    bits (unconditional: the null class) spread over the same dimensions."""
    from vqgen.data.rows import spread_rows
    from vqgen.stage2_prior.config import PriorConfig
    from vqgen.stage2_prior.model import GatedPixelCNN

    config = VQVAEConfig.tiny(in_channels=3, image_height=8, image_width=8, downsamples=1, decoder="logistic")
    model = VQVAE(config)
    images = torch.randint(0, 256, (2, 3, 8, 8)).float() / 255
    out = model(images)
    assert out.reconstruction.shape == out.log_scales.shape == images.shape
    with torch.no_grad():
        torch.testing.assert_close(model.eval().decode(model.encode(images)), model(images).reconstruction)
    train, held_out = digits
    result = train_vqvae(VQVAEConfig.tiny(decoder="logistic"), replace(TINY_TRAIN, steps=40, lr=3e-3), train,
                         held_out, tmp_path / "v", eval_images=10, progress=False)
    bits = [r["bits_per_dim"] for r in read_metrics(tmp_path / "v" / "metrics.jsonl") if r["split"] == "train"]
    assert sum(bits[-10:]) < sum(bits[:10])  # batches of 8: noisy
    vqvae = VQVAE.from_pretrained(tmp_path / "v")
    assert vqvae.config.decoder == "logistic"
    evaluated = held_out.__getitems__(spread_rows(held_out.labels, len(held_out), 10, TINY_TRAIN.seed))[0]
    by_hand = (logistic_bits_by_hand(vqvae, evaluated) / (28 * 28)).mean().item()
    assert result["evaluation"]["decoder_bits_per_dim"] == pytest.approx(by_hand, rel=1e-5)
    prior = GatedPixelCNN(PriorConfig.tiny(codebook_size=vqvae.config.codebook_size, grid_height=7, grid_width=7,
                                           num_classes=10, label_dropout=0.1))
    check_logistic_figures(vqvae, prior, train, held_out, count=10, seed=3,
                           prior_labels=lambda labels: torch.full_like(labels, 10))


def test_a_logistic_decoders_bits_per_dim_count_every_channel() -> None:
    """Three channels: a figure over H * W alone, or one channel's bits, would be off by a factor near 3."""
    from vqgen.stage2_prior.config import PriorConfig
    from vqgen.stage2_prior.model import GatedPixelCNN

    torch.manual_seed(0)
    info = DatasetInfo("colour", "test", 3, 8, 8, 2, ("a", "b"))
    brightness = torch.arange(1, 13).float().view(12, 1, 1, 1) / 12  # an ordered file: its first rows darker
    pixels = (torch.rand(12, 3, 8, 8) * 255 * brightness).to(torch.uint8)
    data = ImageDataset(pixels, torch.arange(12) % 2, info)
    vqvae = VQVAE(VQVAEConfig.tiny(in_channels=3, image_height=8, image_width=8, downsamples=1,
                                   decoder="logistic")).eval()
    prior = GatedPixelCNN(PriorConfig.tiny(codebook_size=vqvae.config.codebook_size, grid_height=4, grid_width=4,
                                           num_classes=2))
    check_logistic_figures(vqvae, prior, data, data, count=8, seed=1, prior_labels=lambda labels: labels)


def test_image_size_must_divide() -> None:
    with pytest.raises(UsageError, match="image_height=30 is not divisible by 2\\*\\*downsamples=4"):
        VQVAEConfig.tiny(image_height=30)


@pytest.mark.parametrize("workers", [0, 2])
def test_export_round_trip(tmp_path: Path, digits: tuple[ImageDataset, ImageDataset], workers: int) -> None:
    train, _ = digits
    model = VQVAE(VQVAEConfig.tiny(codebook_size=300)).eval()
    model.save_pretrained(tmp_path / "vqvae")
    manifest = export_latents(model, train, tmp_path / "latents", vqvae_dir=tmp_path / "vqvae", batch_size=10,
                              num_workers=workers)
    codes = np.load(tmp_path / "latents" / "codes.npy", mmap_mode="r", allow_pickle=False)
    images, labels = train.__getitems__(list(range(len(train))))
    assert codes.dtype == np.uint16 and manifest.count == len(train)
    np.testing.assert_array_equal(codes, model.encode(images).numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "latents" / "labels.npy"), labels.numpy())
    np.testing.assert_allclose(np.load(tmp_path / "latents" / "codebook.npy"),
                               model.quantizer.codebook_vectors().detach().numpy())
    written = json.loads((tmp_path / "latents" / "manifest.json").read_text())
    assert written["source"]["image_shape"] == [1, 28, 28] and len(written["vqvae"]["sha256"]) == 64
    assert LatentDataset(tmp_path / "latents").manifest.grid == (7, 7)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return VQVAE.from_pretrained(directory).state_dict()


@pytest.mark.parametrize("quantizer", ["ema", "straight_through"])
def test_resumed_training_equals_uninterrupted(tmp_path: Path, quantizer: str,
                                               digits: tuple[ImageDataset, ImageDataset]) -> None:
    train, held_out = digits
    config = VQVAEConfig.tiny(quantizer=quantizer, kmeans_init=True, restart_every=2, restart_threshold=50.0)
    train_vqvae(config, TINY_TRAIN, train, held_out, tmp_path / "whole", progress=False)
    train_vqvae(config, replace(TINY_TRAIN, steps=4), train, held_out, tmp_path / "parts", progress=False)
    train_vqvae(config, TINY_TRAIN, train, held_out, tmp_path / "parts", progress=False)
    whole, parts = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if r["split"] == "train"]
              for d in (tmp_path / "whole", tmp_path / "parts")]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_training_reports_eval_and_writes_checkpoint(tmp_path: Path, digits: tuple[ImageDataset, ImageDataset]) -> None:
    train, held_out = digits
    result = train_vqvae(VQVAEConfig.tiny(), TINY_TRAIN, train, held_out, tmp_path / "v", progress=False)
    assert {"mse", "psnr", "perplexity", "codes_used"} <= set(result["evaluation"])
    assert (tmp_path / "v" / "reconstructions.png").exists()
    written = {p.name for p in (tmp_path / "v").iterdir()}
    assert {"config.json", "model.safetensors", "state.pt", "metrics.jsonl"} <= written and "model.pt" not in written


def test_other_options_on_a_used_directory_are_refused(tmp_path: Path, digits: tuple[ImageDataset, ImageDataset]) -> None:
    train, held_out = digits
    train_vqvae(VQVAEConfig.tiny(), replace(TINY_TRAIN, steps=3), train, held_out, tmp_path / "v", progress=False)
    with pytest.raises(VQGenError, match="lr: 0.001 -> 0.01"):
        train_vqvae(VQVAEConfig.tiny(), replace(TINY_TRAIN, lr=1e-2), train, held_out, tmp_path / "v", progress=False)
    with pytest.raises(VQGenError, match="another model config"):
        train_vqvae(VQVAEConfig.tiny(hidden=8), TINY_TRAIN, train, held_out, tmp_path / "v", progress=False)


def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path: Path, digits: tuple[ImageDataset, ImageDataset]) -> None:
    train, held_out = digits
    poisoned = ImageDataset(train.images, train.labels, train.info)
    original = poisoned.__getitems__

    def with_nan(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = original(indices)
        return images * float("nan"), labels

    train_vqvae(VQVAEConfig.tiny(), replace(TINY_TRAIN, steps=3), train, held_out, tmp_path / "v", progress=False)
    before = _weights(tmp_path / "v")
    poisoned.__getitems__ = with_nan  # type: ignore[method-assign]
    with pytest.raises(VQGenError, match="NaN or inf at step 4.*after step 3"):
        train_vqvae(VQVAEConfig.tiny(), TINY_TRAIN, poisoned, held_out, tmp_path / "v", progress=False)
    after = _weights(tmp_path / "v")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_empty_dataset_is_refused(tmp_path: Path) -> None:
    info = DatasetInfo(name="empty", split="train", channels=1, height=28, width=28, num_classes=None,
                       class_names=None)
    with pytest.raises(VQGenError, match="no images|empty"):
        empty = ImageDataset(torch.zeros(0, 1, 28, 28, dtype=torch.uint8), None, info)
        train_vqvae(VQVAEConfig.tiny(), TINY_TRAIN, empty, empty, tmp_path / "v", progress=False)


def test_compile_that_fails_falls_back_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      digits: tuple[ImageDataset, ImageDataset]) -> None:
    def broken_compile(model: torch.nn.Module) -> object:
        def fails(*args: object, **kwargs: object) -> None:
            raise RuntimeError("no compiler backend")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    train, held_out = digits
    with pytest.warns(UserWarning, match="torch.compile cannot work here.*no compiler backend"):
        result = train_vqvae(VQVAEConfig.tiny(), replace(TINY_TRAIN, compile=True), train, held_out, tmp_path / "v",
                             progress=False)
    assert result["step"] == TINY_TRAIN.steps


def test_export_of_images_of_another_shape_names_both(tmp_path: Path, digits: tuple[ImageDataset, ImageDataset]) -> None:
    model = VQVAE(VQVAEConfig.tiny(in_channels=3, image_height=32, image_width=32))
    with pytest.raises(VQGenError, match="images are 1x28x28 but the VQ-VAE was built for 3x32x32"):
        export_latents(model, digits[0], tmp_path / "latents")
    assert not (tmp_path / "latents").exists()


def test_psnr_reads_the_image_shown_when_a_logistic_decoders_means_leave_0_1() -> None:
    """A logistic decoder's end bins are open, so its mean for a black pixel may sit far below 0 at no
    cost; the held-out MSE and PSNR are those of the image it shows, its means clamped to [0, 1]."""
    from vqgen.data.builtin import make_builtin
    from vqgen.stage1_vqvae.train import evaluate_vqvae

    torch.manual_seed(0)
    vqvae = VQVAE(VQVAEConfig.tiny(decoder="logistic")).eval()
    held_out = make_builtin("test", count=40)
    images, _ = held_out.__getitems__(list(range(40)))
    with torch.no_grad():
        means = vqvae(images).reconstruction.float()
        vqvae.decoder.net[-1].bias[0] += float(-means.min()) + 4.0  # every mean 3 or more above 1: shown white
        assert float(vqvae(images).reconstruction.min()) >= 4.0
    evaluation = evaluate_vqvae(vqvae, held_out, torch.device("cpu"))
    white = float(((1 - images) ** 2).mean())  # the MSE of an all-white image, by hand
    assert evaluation["mse"] == pytest.approx(white, rel=1e-6)
    assert evaluation["psnr"] == pytest.approx(-10 * math.log10(white), rel=1e-6)
