"""Completion: drawing the unknown codes of a grid given the known ones, from the prior's conditional.

The prior factorises in raster order, p(x) = prod_t p(x_t | x_<t). When every known code comes
before every unknown one (a kept top band of an image), sampling the rest in raster order is exact
conditional sampling. For any other mask, raster sampling with the known codes forced draws each
hole ignoring the known codes after it: a proposal q(holes) = prod_{t unknown} p(x_t | x_<t).
Importance resampling corrects it (Rubin 1988, sampling/importance resampling): the target
p(holes | known) is proportional to p(x), so each proposal's weight p(x) / q is the prior's
probability of the known codes that follow the first hole, prod_{t known, t > first hole}
p(x_t | x_<t), which the sampler computes on its way. Resampling N of M weighted proposals is exact
as M grows; the effective sample size (sum w)^2 / sum w^2 says how many independent draws the M
proposals are worth.

Which distribution is sampled, exactly: write g_t for the per-code distribution at t after guidance
and temperature (guided logits u + s (c - u), divided by T), and q_t for g_t truncated by top-k and
top-p. The holes are drawn from q_t; the weights use g_t, untruncated, since a known code is data and a
weight of zero for every known code outside the top k would refuse most masks of a real image. As M
grows the completions follow

    prod_{t hole} q_t(x_t | x_<t) * prod_{t known, t > first hole} g_t(x_t | x_<t),  normalised over the holes,

the conditional of the step-by-step tempered, guided, truncated process given the known codes, not
the prior's own conditional. At T 1, guidance 1 and no truncation it is exactly p(holes | known);
tests/stage2_prior/test_completion.py enumerates it at T 0.7, guidance 2, top-k 2 as well. A raster prefix needs
no weights and samples the first product alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vqgen.engine.errors import UsageError
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import Known, SamplingOptions, generate

PROPOSALS_PER_COMPLETION = 16  # default M / N for a mask that is not a raster prefix


class Completion(NamedTuple):
    codes: torch.Tensor            # (n, H, W) int64, the known codes kept
    effective_sample_size: float   # of the proposals the completions were resampled from (n when exact)
    proposals: int                 # M drawn (n when exact)
    exact: bool                    # the known codes were a raster prefix: plain sampling is exact


def known_first(unknown: torch.Tensor) -> bool:
    """Whether every known position precedes every unknown one in raster order (unknown: (H, W) bool)."""
    flat = unknown.flatten()
    first_hole = int(flat.nonzero()[0])
    return bool(flat[first_hole:].all())


def effective_sample_size(log_weight: torch.Tensor) -> float:
    weights = torch.softmax(log_weight.double(), 0)  # (M,) normalised
    return float(1 / weights.square().sum())


@torch.no_grad()
def complete(model: GatedPixelCNN, codes: torch.Tensor, unknown: torch.Tensor, n: int, label: int | None = None,
             options: SamplingOptions = SamplingOptions(), generator: torch.Generator | None = None,
             proposals: int | None = None, progress: bool = True) -> Completion:
    """n completions of the (H, W) grid `codes` where `unknown` (H, W) is True, the other codes kept."""
    if unknown.shape != codes.shape or unknown.dim() != 2:
        raise UsageError(f"the mask of unknown codes has shape {tuple(unknown.shape)} but the codes have "
                         f"{tuple(codes.shape)}")
    if not unknown.any():
        raise UsageError("nothing to complete: the mask leaves every code known; mark the part to generate")
    known = Known(codes, ~unknown.bool())
    grid = tuple(codes.shape)
    if known_first(unknown):
        drawn = generate(model, n, label, options, generator, progress, grid=grid, known=known)  # type: ignore[arg-type]
        return Completion(drawn.codes, float(n), n, True)
    count = proposals or PROPOSALS_PER_COMPLETION * n
    if count < n:
        raise UsageError(f"--proposals={count} is not allowed; must be >= -n ({n}), the completions drawn from them")
    drawn = generate(model, count, label, options, generator, progress, grid=grid, known=known)  # type: ignore[arg-type]
    picks = torch.multinomial(torch.softmax(drawn.log_weight.double(), 0).float(), n, replacement=True,
                              generator=generator)  # (n,)
    return Completion(drawn.codes[picks], effective_sample_size(drawn.log_weight), count, False)
