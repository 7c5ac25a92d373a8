"""How close a set of generated images is to real ones, measured on a judge's features.

- Frechet distance (Heusel et al. 2017, the "FID" recipe, on our own judge's features): the
  distance between two Gaussians fitted to the two feature sets,
  |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
- Precision and recall of Kynkaanniemi et al. 2019 ("Improved Precision and Recall Metric for
  Assessing Generative Models", arXiv 1904.06991): each set's manifold is the union of balls around
  its points, each ball reaching the point's k-th nearest neighbour in the same set. Precision is
  the share of generated points inside the real manifold (fidelity); recall is the share of real
  points inside the generated manifold (diversity).

All arithmetic is float64: features are a few hundred dimensions and the covariances are estimated
from a few hundred points, where float32 loses the small eigenvalues.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

NEIGHBOURS = 3  # k of Kynkaanniemi et al. 2019, their default


class Fidelity(NamedTuple):
    frechet: float
    precision: float
    recall: float


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix, by its eigendecomposition."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to features a (N, F) and b (M, F).

    tr((S_a S_b)^(1/2)) is computed as tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), a symmetric form with the
    same eigenvalues, so no complex square roots arise from round-off.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mean_gap = a.mean(0) - b.mean(0)  # (F,)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (F, F)
    root_a = _psd_sqrt(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)  # (F,)
    return float(mean_gap @ mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(cross).sum())


def _kth_neighbour_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) distance from each point to its k-th nearest other point of the same set."""
    distances = torch.cdist(points, points)  # (N, N), zero on the diagonal
    return distances.kthvalue(k + 1, dim=1).values  # the 0 to itself comes first


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of `points` (N, F) inside at least one ball (centres (M, F), radii (M,))."""
    inside = torch.cdist(points, centres) <= radii[None]  # (N, M)
    return float(inside.any(1).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = NEIGHBOURS) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019 precision (fake inside the real manifold) and recall (real inside fake's)."""
    real_t, fake_t = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    if min(len(real_t), len(fake_t)) <= k:
        raise ValueError(f"precision and recall need more than k={k} points per set; "
                         f"got {len(real_t)} real and {len(fake_t)} generated")
    precision = _coverage(fake_t, real_t, _kth_neighbour_radii(real_t, k))
    recall = _coverage(real_t, fake_t, _kth_neighbour_radii(fake_t, k))
    return precision, recall


def fidelity(reference: np.ndarray, candidate: np.ndarray, k: int = NEIGHBOURS) -> Fidelity:
    """Frechet distance, precision and recall of `candidate` features against `reference` features."""
    return Fidelity(frechet_distance(candidate, reference), *precision_recall(reference, candidate, k))
