"""Training the prior on latent datasets: it learns structure, refuses misfits, resumes exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgen.engine.errors import VQGenError
from vqgen.data.latents import LatentManifest, LatentWriter
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.trainer import TrainConfig
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.train import train_prior


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
        train_prior(PriorConfig.tiny(), TrainConfig(steps=1, batch_size=4, device="cpu"), train, tmp_path / "other",
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
