"""Shared fixtures: tiny data, and the real MNIST files when this machine has them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _quiet_and_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    torch.manual_seed(0)


@pytest.fixture
def mnist_root() -> Path:
    """../shared/data (or $VQGEN_MNIST_ROOT) when it holds MNIST; otherwise the test is skipped."""
    root = Path(os.environ.get("VQGEN_MNIST_ROOT", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST not found under {root} (set VQGEN_MNIST_ROOT to a torchvision MNIST root)")
    return root
