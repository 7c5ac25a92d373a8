"""Sample-quality metrics against brute-force numpy references on small arrays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vqgen.pipeline.evaluation.fidelity import fidelity, frechet_distance, precision_recall


def brute_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula, with the matrix square root by Denman-Beavers iteration (no eigh)."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    y, z = cov_a @ cov_b, np.eye(len(cov_a))
    for _ in range(100):
        y, z = (y + np.linalg.inv(z)) / 2, (z + np.linalg.inv(y)) / 2
    gap = a.mean(0) - b.mean(0)
    return float(gap @ gap + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(y))


def brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radius(points: np.ndarray, i: int) -> float:
        others = sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)
        return others[k - 1]

    def share_inside(points: np.ndarray, centres: np.ndarray) -> float:
        radii = [radius(centres, j) for j in range(len(centres))]
        hits = [any(np.linalg.norm(p - c) <= r for c, r in zip(centres, radii)) for p in points]
        return float(np.mean(hits))

    return share_inside(fake, real), share_inside(real, fake)


@pytest.fixture
def sets() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(5, 5))
    return rng.normal(size=(60, 5)) @ mixing, rng.normal(size=(40, 5)) @ mixing * 1.3 + 0.4


def test_frechet_matches_the_textbook_formula(sets: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = sets
    assert frechet_distance(a, b) == pytest.approx(brute_frechet(a, b), rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_match_brute_force(sets: tuple[np.ndarray, np.ndarray], k: int) -> None:
    real, fake = sets
    assert precision_recall(real, fake, k) == pytest.approx(brute_precision_recall(real, fake, k))


def test_identical_sets_are_perfect(sets: tuple[np.ndarray, np.ndarray]) -> None:
    real = sets[0]
    score = fidelity(real, real.copy())
    assert abs(score.frechet) < 1e-8 * np.trace(np.cov(real, rowvar=False))
    assert score.precision == score.recall == 1.0


def test_a_shifted_set_scores_worse_the_further_it_moves() -> None:
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    scores = [fidelity(real, fake + shift) for shift in (0.0, 0.5, 2.0)]
    for near, far in itertools.pairwise(scores):
        assert far.frechet > near.frechet and far.precision < near.precision and far.recall < near.recall
    assert scores[0].frechet < 0.5 and scores[0].precision > 0.8 and scores[0].recall > 0.8


def test_a_collapsed_set_keeps_precision_and_loses_recall() -> None:
    """Precision and recall separate fidelity from diversity: copies of a few real points are all
    on the real manifold, but cover little of it."""
    rng = np.random.default_rng(2)
    real = rng.normal(size=(200, 4))
    collapsed = real[rng.integers(0, 10, 200)] + rng.normal(scale=1e-3, size=(200, 4))
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.2


def test_too_few_points_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="more than k=3 points"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
