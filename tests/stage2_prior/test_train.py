"""Training the prior on latent datasets: it learns structure, refuses misfits, resumes exactly."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgen.engine.errors import VQGenError
from vqgen.data.latents import LatentDataset, LatentManifest, LatentWriter
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.train_config import TrainConfig
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.train import eval_rows, evaluate_prior, train_prior
from helpers import structured_latents


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


def sorted_latents(directory: Path, per_class: list[int], seed: int) -> tuple[Path, np.ndarray]:
    """Grids stored sorted by class, as exports are; class c draws its codes from {2c, 2c + 1}."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    codes = 2 * labels[:, None, None] + rng.integers(0, 2, (len(labels), 4, 4))  # (N, 4, 4)
    manifest = LatentManifest(count=len(labels), grid=(4, 4), codebook_size=2 * len(per_class),
                              num_classes=len(per_class))
    writer = LatentWriter(directory, manifest).create(np.eye(2 * len(per_class), dtype=np.float32))
    writer.write(0, torch.from_numpy(codes), torch.from_numpy(labels))
    return writer.commit(), codes


def test_held_out_rows_are_spread_over_the_classes_for_the_model_and_the_unigram(tmp_path: Path) -> None:
    """With eval_grids below the held-out size, the first grids of a class-sorted export would all be
    class 0; the rows scored are drawn within each class by the training seed, taken in turn, and the
    unigram baseline scores the same rows."""
    train, train_codes = sorted_latents(tmp_path / "train", [20, 6, 4], 0)  # class 0 common, so its codes are
    held, held_codes = sorted_latents(tmp_path / "test", [8, 8, 8], 1)     # cheap under the unigram
    config = TrainConfig(steps=2, batch_size=8, eval_every=2, device="cpu")
    result = train_prior(PriorConfig.tiny(), config, train, held, tmp_path / "prior", eval_grids=6, progress=False)
    rows = eval_rows(LatentDataset(held), 6, seed=config.seed)
    assert [r // 8 for r in rows] == [0, 1, 2, 0, 1, 2]  # a grid of each class, then a second
    assert rows != eval_rows(LatentDataset(held), 6, seed=1)
    frequencies = (np.bincount(train_codes.ravel(), minlength=6) + 1) / (train_codes.size + 6)  # add-one smoothed
    spread, first = (float(-np.log2(frequencies[held_codes[r]]).mean()) for r in (rows, list(range(6))))
    (record,) = [r for r in read_metrics(tmp_path / "prior" / "metrics.jsonl") if r["split"] == "eval"]
    assert record["unigram_bits_per_code"] == pytest.approx(spread, rel=1e-9)
    assert result["evaluation"]["unigram_bits_per_code"] == record["unigram_bits_per_code"]
    assert spread - first > 1.0  # over the first grids (all class 0) the baseline reads 2.9 -> 1.6 bits
    model = GatedPixelCNN.from_pretrained(tmp_path / "prior")
    assert record["bits_per_code"] == pytest.approx(
        evaluate_prior(model, LatentDataset(held), torch.device("cpu"), rows)["bits_per_code"], rel=1e-5)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_a_time_budget_that_cuts_a_cosine_decay_short_says_so(schedule: str, tmp_path: Path) -> None:
    """A cosine schedule planned over --steps and stopped by --max-seconds ends mid-decay: a warning names
    the step and the learning rate it stopped at; a constant schedule has nothing to warn of."""
    data = structured_latents(tmp_path / "train", 32, 0)
    config = TrainConfig(steps=50, batch_size=8, max_seconds=1e-9, schedule=schedule, device="cpu")
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        result = train_prior(PriorConfig.tiny(), config, data, data, tmp_path / "prior", progress=False)
    cut = [str(w.message) for w in warned if "cosine schedule" in str(w.message)]
    assert result["step"] < 50 and len(cut) == (schedule == "cosine")
    if cut:
        assert f"at step {result['step']} of 50" in cut[0] and "max_seconds=1e-09" in cut[0]
