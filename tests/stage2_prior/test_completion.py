"""Completion on a prior small enough to enumerate: the completions follow the exact conditional
p(unknown | known), for a raster-prefix mask by plain sampling, for any other mask by importance
resampling, which the naive method (raster sampling with the known codes forced) measurably misses."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from vqgen.engine.errors import UsageError
from vqgen.stage2_prior.completion import complete, effective_sample_size, known_first
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import Known, SamplingOptions, generate, log_probs

K, GRID = 3, (2, 3)


@pytest.fixture(scope="module")
def model() -> GatedPixelCNN:
    """Weights far from initialisation, so that later codes depend strongly on earlier ones (the seed and scale
    give a conditional spread over several fillings, max 0.63, that the naive method misses by 0.32)."""
    torch.manual_seed(1)
    prior = GatedPixelCNN(PriorConfig.tiny(codebook_size=K, grid_height=GRID[0], grid_width=GRID[1], layers=3,
                                           first_kernel=3, channels=8, head_channels=16)).eval()
    prior.load_state_dict({k: torch.randn_like(v) * 0.4 for k, v in prior.state_dict().items()})
    return prior


def exact_conditional(model: GatedPixelCNN, codes: torch.Tensor, unknown: torch.Tensor) -> dict[tuple, float]:
    """p(unknown codes | known codes) by enumerating every filling of the holes: p(x) / sum of p(x)."""
    holes = unknown.flatten().nonzero().flatten().tolist()
    fillings = list(itertools.product(range(K), repeat=len(holes)))
    grids = codes.flatten().repeat(len(fillings), 1)  # (F, H * W)
    grids[:, holes] = torch.tensor(fillings)
    with torch.no_grad():
        log_p = -model.nll_bits(grids.view(-1, *GRID)) * torch.log(torch.tensor(2.0))  # (F,) nats
    return dict(zip(fillings, torch.softmax(log_p.double(), 0).tolist()))


def distance(codes: torch.Tensor, unknown: torch.Tensor, exact: dict[tuple, float]) -> float:
    """Total variation between the completions' empirical distribution of the holes and `exact`."""
    holes = codes.flatten(1)[:, unknown.flatten()]  # (n, holes)
    counts: dict[tuple, int] = {}
    for row in map(tuple, holes.tolist()):
        counts[row] = counts.get(row, 0) + 1
    return 0.5 * sum(abs(counts.get(f, 0) / len(codes) - p) for f, p in exact.items())


def test_a_mask_that_is_not_a_prefix_completes_from_the_exact_conditional(model: GatedPixelCNN) -> None:
    codes = torch.tensor([[2, 0, 1], [0, 2, 1]])
    unknown = torch.tensor([[False, True, False], [True, False, False]])  # holes at (0, 1) and (1, 0)
    exact = exact_conditional(model, codes, unknown)
    n = 4000
    generator = torch.Generator().manual_seed(0)
    result = complete(model, codes, unknown, n, generator=generator, progress=False)
    naive = generate(model, n, known=Known(codes, ~unknown), generator=torch.Generator().manual_seed(1),
                     progress=False).codes
    assert not result.exact and result.proposals == 16 * n
    assert (result.codes.flatten(1)[:, ~unknown.flatten()] == codes.flatten()[~unknown.flatten()]).all()
    resampled, ignored = distance(result.codes, unknown, exact), distance(naive, unknown, exact)
    assert resampled < 0.05, f"importance resampling is {resampled:.3f} from the exact conditional"
    assert ignored > 3 * resampled and ignored > 0.15, f"the naive method is only {ignored:.3f} away"
    assert 0 < result.effective_sample_size <= result.proposals


@pytest.fixture(scope="module")
def guided() -> GatedPixelCNN:
    """A class-conditional prior with a null class (for guidance), its weights far from initialisation."""
    torch.manual_seed(3)
    prior = GatedPixelCNN(PriorConfig.tiny(codebook_size=K, grid_height=GRID[0], grid_width=GRID[1], layers=3,
                                           first_kernel=3, channels=8, head_channels=16, num_classes=2,
                                           label_dropout=0.1)).eval()
    prior.load_state_dict({k: torch.randn_like(v) * 0.4 for k, v in prior.state_dict().items()})
    return prior


def sampled_target(model: GatedPixelCNN, codes: torch.Tensor, unknown: torch.Tensor, label: int,
                   options: SamplingOptions) -> dict[tuple, float]:
    """What completion samples at any setting, by enumeration: each filling of the holes weighed by the
    guided, tempered, truncated probabilities the holes are drawn from, times the guided, tempered,
    untruncated probabilities of the known codes after the first hole."""
    holes = unknown.flatten().nonzero().flatten().tolist()
    fillings = list(itertools.product(range(K), repeat=len(holes)))
    grids = codes.flatten().repeat(len(fillings), 1)  # (F, H * W)
    grids[:, holes] = torch.tensor(fillings)
    grids = grids.view(-1, *GRID)
    labels = torch.full((len(fillings),), label)
    with torch.no_grad():
        conditional, unconditional = model(grids, labels), model(grids, torch.full_like(labels, model.config.null_label))
    guided = unconditional + options.guidance * (conditional - unconditional)  # (F, K, H, W)
    untruncated = replace(options, top_k=None, top_p=None)
    log_target = torch.zeros(len(fillings), dtype=torch.float64)
    for position in range(holes[0], GRID[0] * GRID[1]):
        i, j = divmod(position, GRID[1])
        how = options if position in holes else untruncated
        log_target += log_probs(guided[:, :, i, j], how).double().gather(1, grids[:, i, j, None])[:, 0]
    return dict(zip(fillings, torch.softmax(log_target, 0).tolist()))


def test_completion_at_any_setting_samples_the_tempered_guided_truncated_target(guided: GatedPixelCNN) -> None:
    """T 0.7, guidance 2, top-k 2: the target is not the prior's conditional but that of the step-by-step
    process the sampler runs (module docstring of stage2_prior/completion.py); the completions must
    follow it, and it must differ from the plain conditional, or the test could not tell them apart."""
    codes = torch.tensor([[2, 0, 1], [0, 2, 1]])
    unknown = torch.tensor([[False, True, False], [True, False, True]])  # holes at (0, 1), (1, 0), (1, 2)
    options = SamplingOptions(temperature=0.7, top_k=2, guidance=2.0)
    target = sampled_target(guided, codes, unknown, 1, options)
    plain = sampled_target(guided, codes, unknown, 1, SamplingOptions())
    result = complete(guided, codes, unknown, 4000, label=1, options=options,
                      generator=torch.Generator().manual_seed(0), progress=False)
    assert not result.exact
    resampled = distance(result.codes, unknown, target)
    assert resampled < 0.05, f"the completions are {resampled:.3f} from the target"
    assert distance(result.codes, unknown, plain) > 3 * resampled + 0.1
    truncated = {f for f, p in target.items() if p == 0}
    drawn = {tuple(row) for row in result.codes.flatten(1)[:, unknown.flatten()].tolist()}
    assert truncated and not drawn & truncated  # a hole outside its top 2 is never drawn


def test_known_codes_outside_the_top_k_still_weigh_their_proposals(model: GatedPixelCNN) -> None:
    """Top-k shapes the drawn codes only: a known code the truncation would never draw is data, so every
    proposal keeps a finite weight and the completions keep the known codes (top-1 here, so the
    holes are the argmax codes and most known codes lie outside the top k)."""
    codes = torch.tensor([[2, 0, 1], [0, 2, 1]])
    unknown = torch.tensor([[False, True, False], [True, False, False]])
    result = complete(model, codes, unknown, 8, options=SamplingOptions(top_k=1),
                      generator=torch.Generator().manual_seed(0), progress=False)
    assert (result.codes.flatten(1)[:, ~unknown.flatten()] == codes.flatten()[~unknown.flatten()]).all()
    assert result.effective_sample_size >= 1.0


def test_a_kept_top_band_is_exact_by_plain_sampling(model: GatedPixelCNN) -> None:
    codes = torch.tensor([[1, 2, 0], [0, 0, 0]])
    unknown = torch.tensor([[False, False, False], [True, True, True]])
    result = complete(model, codes, unknown, 3000, generator=torch.Generator().manual_seed(0), progress=False)
    assert result.exact and result.proposals == 3000 and result.effective_sample_size == 3000
    assert (result.codes[:, 0] == codes[0]).all()
    assert distance(result.codes, unknown, exact_conditional(model, codes, unknown)) < 0.05


def test_prefix_detection_and_effective_sample_size() -> None:
    assert known_first(torch.tensor([[False, False], [False, True]]))
    assert known_first(torch.tensor([[True, True], [True, True]]))
    assert not known_first(torch.tensor([[True, False], [False, False]]))
    assert effective_sample_size(torch.zeros(10)) == pytest.approx(10)
    assert effective_sample_size(torch.tensor([0.0, -1e9, -1e9])) == pytest.approx(1)


def test_bad_completion_requests_are_named(model: GatedPixelCNN) -> None:
    codes = torch.zeros(GRID, dtype=torch.long)
    with pytest.raises(UsageError, match="nothing to complete"):
        complete(model, codes, torch.zeros(GRID, dtype=torch.bool), 2, progress=False)
    with pytest.raises(UsageError, match=r"mask of unknown codes has shape \(3, 2\)"):
        complete(model, codes, torch.ones(3, 2, dtype=torch.bool), 2, progress=False)
    with pytest.raises(UsageError, match="--proposals=1 is not allowed"):
        complete(model, codes, torch.tensor([[True, False, False], [False, False, False]]), 2, proposals=1,
                 progress=False)
