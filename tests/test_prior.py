"""The gated PixelCNN: causality by gradient probes, conditioning, round trip, errors, learning."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from data.errors import VQGenError
from data.latents import LatentManifest, LatentWriter
from data.metrics import read_metrics
from data.training import TrainConfig
from stage2_prior.config import PriorConfig
from stage2_prior.model import GatedPixelCNN
from stage2_prior.train import train_prior


def dependency(model: GatedPixelCNN, grid: tuple[int, int], labels: torch.Tensor | None) -> torch.Tensor:
    """(H*W, H*W) boolean: [p, q] is True when the logits at position p depend on the input at q."""
    h, w = grid
    codes = torch.randint(0, model.config.codebook_size, (1, h, w))
    embedded = model.embedding(codes).permute(0, 3, 1, 2).detach().requires_grad_()
    v, hz, skip = embedded, embedded, 0
    for layer in model.layers:
        v, hz, s = layer(v, hz, labels)
        skip = skip + s
    logits = model.head(skip)  # (1, K, H, W)
    rows = []
    for p in range(h * w):
        (grad,) = torch.autograd.grad(logits[0, :, p // w, p % w].sum(), embedded, retain_graph=True)
        rows.append(grad[0].abs().sum(0).flatten() > 0)
    return torch.stack(rows)


@pytest.mark.parametrize("grid, conditioned", [((8, 8), False), ((6, 10), True), ((5, 3), True)])
def test_no_look_ahead_and_no_blind_spot(grid: tuple[int, int], conditioned: bool) -> None:
    torch.manual_seed(0)
    config = PriorConfig.tiny(grid_height=grid[0], grid_width=grid[1], layers=8, num_classes=3 if conditioned else 0)
    model = GatedPixelCNN(config).double()
    depends = dependency(model.double(), grid, torch.tensor([1]) if conditioned else None)
    n = grid[0] * grid[1]
    earlier = torch.ones(n, n, dtype=torch.bool).tril(-1)  # [p, q]: q strictly before p in raster order
    assert not (depends & ~earlier).any(), "a position sees itself or the future"
    assert depends[earlier].all(), "a position is blind to some earlier position"


def test_saved_weights_are_causal_by_themselves(tmp_path: Path) -> None:
    """No mask is applied in forward: any loaded state dict keeps the structure causal."""
    model = GatedPixelCNN(PriorConfig.tiny(grid_height=4, grid_width=4, layers=5))
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    model.save_pretrained(tmp_path / "p")
    loaded = GatedPixelCNN.from_pretrained(tmp_path / "p").double()
    depends = dependency(loaded, (4, 4), None)
    assert not (depends & ~torch.ones(16, 16, dtype=torch.bool).tril(-1)).any()


def test_labels_change_the_logits_and_round_trip_keeps_them(tmp_path: Path) -> None:
    model = GatedPixelCNN(PriorConfig.tiny(num_classes=4)).eval()
    codes = torch.randint(0, 16, (2, 7, 7))
    with torch.no_grad():
        a, b = model(codes, torch.tensor([0, 0])), model(codes, torch.tensor([3, 3]))
    assert not torch.allclose(a, b)
    model.save_pretrained(tmp_path / "prior")
    again = GatedPixelCNN.from_pretrained(tmp_path / "prior")
    with torch.no_grad():
        assert torch.equal(again(codes, torch.tensor([0, 0])), a)


def test_unconditional_model_needs_no_labels() -> None:
    model = GatedPixelCNN(PriorConfig.tiny(grid_height=3, grid_width=5))
    assert model(torch.randint(0, 16, (2, 3, 5))).shape == (2, 16, 3, 5)
    assert model.nll_bits(torch.randint(0, 16, (2, 3, 5))).shape == (2,)


@pytest.mark.parametrize("codes_shape, labels, message", [
    ((1, 8, 8), None, "codes have grid 8x8 but the prior was built for 7x7"),
    ((1, 7, 7), None, "conditioned on 3 classes; pass labels"),
    ((1, 7, 7), torch.tensor([3]), "labels must lie in \\[0, 3\\)"),
])
def test_bad_inputs_are_named(codes_shape: tuple, labels: torch.Tensor | None, message: str) -> None:
    model = GatedPixelCNN(PriorConfig.tiny(num_classes=3))
    with pytest.raises(VQGenError, match=message):
        model.loss(torch.zeros(codes_shape, dtype=torch.long), labels)


def structured_latents(directory: Path, count: int, seed: int) -> Path:
    """Grids whose codes follow a rule (each row repeats a label-dependent pattern, shifted)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    shift = rng.integers(0, 4, count)
    cols = np.arange(4)
    codes = np.stack([np.tile((cols + s + 4 * lab) % 8, (4, 1)) for s, lab in zip(shift, labels)])  # (N, 4, 4)
    manifest = LatentManifest(count=count, grid=(4, 4), codebook_size=8, num_classes=2)
    writer = LatentWriter(directory, manifest).create(np.eye(8, dtype=np.float32))
    writer.write(0, torch.from_numpy(codes), torch.from_numpy(labels))
    return writer.commit()


def test_training_beats_the_unigram_baseline(tmp_path: Path) -> None:
    train, held = structured_latents(tmp_path / "train", 256, 0), structured_latents(tmp_path / "test", 64, 1)
    config = TrainConfig(steps=150, batch_size=32, lr=3e-3, eval_every=150, log_every=50, device="cpu")
    result = train_prior(PriorConfig.tiny(layers=4), config, train, held, tmp_path / "prior", progress=False)
    evaluation = result["evaluation"]
    assert evaluation["uniform_bits_per_code"] == pytest.approx(3.0)
    assert evaluation["bits_per_code"] < 0.5 * evaluation["unigram_bits_per_code"]
    assert evaluation["bits_per_image"] == pytest.approx(16 * evaluation["bits_per_code"])
    assert [r["step"] for r in read_metrics(tmp_path / "prior" / "metrics.jsonl") if r["split"] == "eval"] == [150]


def test_latents_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    train = structured_latents(tmp_path / "train", 32, 0)
    manifest = LatentManifest(count=4, grid=(5, 5), codebook_size=8, num_classes=2)
    writer = LatentWriter(tmp_path / "other", manifest).create(np.eye(8, dtype=np.float32))
    writer.write(0, torch.zeros(4, 5, 5, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    writer.commit()
    with pytest.raises(VQGenError, match="grid 5x5 but the training latents was built for 4x4"):
        train_prior(PriorConfig.tiny(), TrainConfig(steps=1, batch_size=4), train, tmp_path / "other",
                    tmp_path / "prior", progress=False)


def test_resumed_prior_training_equals_uninterrupted(tmp_path: Path) -> None:
    train, held = structured_latents(tmp_path / "train", 64, 0), structured_latents(tmp_path / "test", 16, 1)
    config = TrainConfig(steps=6, batch_size=8, log_every=1, checkpoint_every=2, eval_every=3, device="cpu")
    train_prior(PriorConfig.tiny(), config, train, held, tmp_path / "whole", progress=False)
    train_prior(PriorConfig.tiny(), replace(config, steps=4), train, held, tmp_path / "parts", progress=False)
    train_prior(PriorConfig.tiny(), config, train, held, tmp_path / "parts", progress=False)
    whole = GatedPixelCNN.from_pretrained(tmp_path / "whole").state_dict()
    parts = GatedPixelCNN.from_pretrained(tmp_path / "parts").state_dict()
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
