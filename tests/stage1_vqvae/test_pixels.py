"""The decoder's discretised-Gaussian and discretised-logistic bits against a reference of many more
digits: every residual costs its true bits (a difference of CDFs clamped at 1e-12 charged 39.9 bits
for any residual past 7 sigma, so bits/dim was understated, not an upper bound)."""

from __future__ import annotations

import pytest
import torch

from vqgen.stage1_vqvae.pixels import (LEVELS, MIN_LOG_SCALE, discretized_gaussian_bits, discretized_logistic_bits,
                                       discretized_logistic_nats)

mpmath = pytest.importorskip("mpmath", reason="mpmath (a dependency of torch's sympy) gives the reference")
SIGMA = 0.047  # the default preset's fitted sigma on digits


def reference_bits(value: float, mean: float, sigma: float = SIGMA) -> float:
    """-log2 of the Gaussian's mass on the level's bin, at 400 digits: no cancellation, no underflow."""
    with mpmath.workdps(400):
        half = mpmath.mpf(1) / (2 * LEVELS)
        x, m = mpmath.mpf(value), mpmath.mpf(mean)
        upper = mpmath.ncdf((x + half - m) / sigma) if value < 1 - float(half) else mpmath.mpf(1)
        lower = mpmath.ncdf((x - half - m) / sigma) if value > float(half) else mpmath.mpf(0)
        return float(-mpmath.log(upper - lower, 2))


def bits(value: float, mean: float, sigma: float = SIGMA) -> float:
    as_image = lambda v: torch.tensor(v, dtype=torch.float64).view(1, 1, 1, 1)  # noqa: E731
    return float(discretized_gaussian_bits(as_image(value), as_image(mean), sigma)[0])


@pytest.mark.parametrize("sign", [1, -1])
def test_interior_levels_cost_their_true_bits_for_residuals_up_to_0_9(sign: int) -> None:
    for residual in torch.linspace(0, 0.45, 31).tolist():  # from the level 0.5, both ways: 0 to 0.45
        value = 128 / LEVELS
        assert bits(value, value - sign * residual) == pytest.approx(reference_bits(value, value - sign * residual),
                                                                     rel=1e-9, abs=1e-9)
    for residual in torch.linspace(0.45, 0.9, 31).tolist():  # from a level near an edge, across the range
        value = 5 / LEVELS if sign > 0 else 250 / LEVELS
        mean = value + sign * residual
        assert bits(value, mean) == pytest.approx(reference_bits(value, mean), rel=1e-9)


def test_the_issues_residuals_cost_what_they_truly_cost() -> None:
    for residual, expected in ((0.35, 44.9), (0.5, 86.5), (0.8, 213.8)):
        assert bits(0.9, 0.9 - residual) == pytest.approx(expected, abs=0.05)
    costs = [bits(0.5, 0.5 - r) for r in (0.3, 0.4, 0.5, 0.6)]
    assert costs == sorted(costs) and costs[-1] - costs[0] > 50  # a clamp would make them one constant


@pytest.mark.parametrize("value, mean", [(0.0, 0.0), (0.0, 0.3), (0.0, 0.9), (0.0, -0.2),
                                         (1.0, 1.0), (1.0, 0.7), (1.0, 0.1), (1.0, 1.3),
                                         (1 / LEVELS, 0.6), (254 / LEVELS, 0.2)])
def test_edge_bins_reach_to_infinity_and_their_neighbours_do_not(value: float, mean: float) -> None:
    assert bits(value, mean) == pytest.approx(reference_bits(value, mean), rel=1e-9, abs=1e-12)


def test_an_images_bits_are_the_sum_over_its_values() -> None:
    values = torch.tensor([0.0, 3 / LEVELS, 128 / LEVELS, 1.0], dtype=torch.float64).view(1, 1, 2, 2)
    means = torch.tensor([0.2, 0.9, 0.4, 0.95], dtype=torch.float64).view(1, 1, 2, 2)
    total = float(discretized_gaussian_bits(values, means, 0.1)[0])
    expected = sum(reference_bits(float(v), float(m), 0.1) for v, m in zip(values.flatten(), means.flatten()))
    assert total == pytest.approx(expected, rel=1e-9)


def reference_logistic_bits(value: float, mean: float, scale: float) -> float:
    with mpmath.workdps(400):
        half = mpmath.mpf(1) / (2 * LEVELS)
        x, m, s = mpmath.mpf(value), mpmath.mpf(mean), mpmath.mpf(scale)
        cdf = lambda t: 1 / (1 + mpmath.exp(-t))  # noqa: E731
        upper = cdf((x + half - m) / s) if value < 1 - float(half) else mpmath.mpf(1)
        lower = cdf((x - half - m) / s) if value > float(half) else mpmath.mpf(0)
        return float(-mpmath.log(upper - lower, 2))


@pytest.mark.parametrize("value, mean, scale", [(128 / LEVELS, 0.5, 0.01), (128 / LEVELS, 0.9, 0.01),
                                                (5 / LEVELS, 0.95, 0.02), (250 / LEVELS, 0.0, 0.03),
                                                (0.0, 0.4, 0.05), (1.0, 0.2, 0.05), (1 / LEVELS, 0.6, 0.004),
                                                (0.3, 0.3, 2.0)])
def test_the_logistic_decoders_bits_are_its_true_bits(value: float, mean: float, scale: float) -> None:
    as_image = lambda v: torch.tensor(v, dtype=torch.float64).view(1, 1, 1, 1)  # noqa: E731
    got = float(discretized_logistic_bits(as_image(value), as_image(mean), as_image(scale).log())[0])
    assert got == pytest.approx(reference_logistic_bits(value, mean, scale), rel=1e-9, abs=1e-9)


def test_the_logistic_loss_has_finite_gradients_far_in_the_tail_and_floors_the_scale() -> None:
    """A mean a whole image away from its pixel at the narrowest scale costs thousands of nats, yet
    the loss still points the mean home; a log-scale below the floor costs as much as the floor."""
    values = torch.tensor([0.0, 0.5, 1.0, 0.5], dtype=torch.float64).view(1, 1, 2, 2)
    means = torch.tensor([1.0, 0.5, 0.0, 0.2], dtype=torch.float64).view(1, 1, 2, 2).requires_grad_()
    log_scales = torch.full((1, 1, 2, 2), MIN_LOG_SCALE, dtype=torch.float64, requires_grad=True)
    nats = discretized_logistic_nats(values, means, log_scales)
    assert torch.isfinite(nats).all() and nats.flatten()[0] > 1000
    nats.sum().backward()
    assert torch.isfinite(means.grad).all() and means.grad.flatten()[0] > 0 > means.grad.flatten()[2]
    floored = discretized_logistic_nats(values, means.detach(), torch.full_like(log_scales, MIN_LOG_SCALE - 3))
    torch.testing.assert_close(floored, nats.detach())
