"""Samplers: incremental logits equal the full model's at every step, and draws match the naive sampler."""

from __future__ import annotations

import pytest
import torch

from data.errors import UsageError
from stage2_prior.config import PriorConfig
from stage2_prior.model import GatedPixelCNN
from stage2_prior.sampling import IncrementalSampler, sample, sample_naive

CASES = [((8, 8), 3), ((6, 10), 0), ((1, 5), 2), ((5, 1), 0)]


def model_for(grid: tuple[int, int], classes: int) -> GatedPixelCNN:
    torch.manual_seed(0)
    config = PriorConfig.tiny(grid_height=grid[0], grid_width=grid[1], num_classes=classes, layers=7,
                              first_kernel=5, kernel=3)
    return GatedPixelCNN(config).eval()


@pytest.mark.parametrize("grid, classes", CASES)
def test_incremental_logits_equal_full_logits_at_every_step(grid: tuple[int, int], classes: int) -> None:
    model = model_for(grid, classes)
    labels = torch.tensor([0, 1, 2, 1])[:4] % classes if classes else None
    codes = torch.randint(0, 16, (4, *grid))
    sampler = IncrementalSampler(model, codes, labels)
    with torch.no_grad():
        full = model(codes, labels)  # (B, K, H, W): logits for this very prefix at every position
        for i in range(grid[0]):
            for j in range(grid[1]):
                torch.testing.assert_close(sampler.logits(i, j), full[:, :, i, j], atol=1e-5, rtol=1e-5)
                sampler.commit(i, j, codes[:, i, j])


@pytest.mark.parametrize("grid, classes", CASES)
def test_same_generator_gives_the_same_codes(grid: tuple[int, int], classes: int) -> None:
    model = model_for(grid, classes)
    labels = 1 if classes else None
    fast = sample(model, 5, labels, generator=torch.Generator().manual_seed(3), progress=False)
    slow = sample_naive(model, 5, labels, generator=torch.Generator().manual_seed(3), progress=False)
    assert torch.equal(fast, slow) and fast.shape == (5, *grid)
    again = sample(model, 5, labels, generator=torch.Generator().manual_seed(3), progress=False)
    assert torch.equal(fast, again)


def test_top_k_one_is_greedy_decoding() -> None:
    model = model_for((4, 4), 0)
    codes = sample(model, 3, top_k=1, generator=torch.Generator().manual_seed(0), progress=False)
    with torch.no_grad():
        assert torch.equal(model(codes).argmax(1), codes)


def test_low_temperature_concentrates_and_labels_steer() -> None:
    model = model_for((4, 4), 2)
    cold = sample(model, 64, 0, temperature=0.05, generator=torch.Generator().manual_seed(0), progress=False)
    hot = sample(model, 64, 0, temperature=5.0, generator=torch.Generator().manual_seed(0), progress=False)
    zeros = torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        assert model.nll_bits(cold, zeros).mean() < model.nll_bits(hot, zeros).mean()
    other = sample(model, 64, 1, temperature=0.05, generator=torch.Generator().manual_seed(0), progress=False)
    assert not torch.equal(cold, other)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "--temperature=0.0 is not allowed; must be > 0"),
    (dict(top_k=17), "--top-k=17 is not allowed; must be in 1..16"),
    (dict(top_k=0), "--top-k=0 is not allowed"),
    (dict(labels=5), "--label=5 is outside the prior's classes 0..2"),
    (dict(labels=None), "conditioned on 3 classes"),
])
def test_bad_sampling_options(kwargs: dict, message: str) -> None:
    model = model_for((3, 3), 3)
    with pytest.raises(UsageError, match=message):
        sample(model, 2, **{"labels": 0, **kwargs}, progress=False)
