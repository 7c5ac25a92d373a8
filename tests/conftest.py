"""Shared fixtures: tiny data, and the real MNIST files when this machine has them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.engine.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _quiet_seeded_single_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tiny models run faster on one thread, and a busy machine does not stall them."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ctrl_c_at(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ContextManager[None]]:
    """`with ctrl_c_at(step, model=None):` training is interrupted as by Ctrl-C before the update of
    `step` (only a trainer of the model class named `model`, when given), through the trainer's
    `before_update` hook; it runs normally after."""
    @contextlib.contextmanager
    def interrupting(step: int, model: str | None = None) -> Iterator[None]:
        real = Trainer.before_update

        def before_update(self: Trainer) -> None:
            if self.step == step and model in (None, type(self.model).__name__):
                raise KeyboardInterrupt
            real(self)

        monkeypatch.setattr(Trainer, "before_update", before_update)
        try:
            yield
        finally:
            monkeypatch.setattr(Trainer, "before_update", real)
    return interrupting


@pytest.fixture
def mnist_root() -> Path:
    """../shared/data (or $VQGEN_MNIST_ROOT) when it holds MNIST; otherwise the test is skipped."""
    root = Path(os.environ.get("VQGEN_MNIST_ROOT", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST not found under {root} (set VQGEN_MNIST_ROOT to a torchvision MNIST root)")
    return root


@pytest.fixture(scope="session")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and test/ with two classes of 16x16 grayscale squares and bars."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 8)):
        for label, name in enumerate(("bars", "squares")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = np.zeros((16, 16), np.uint8)
                offset = rng.integers(0, 8)
                if label:
                    image[offset:offset + 6, offset:offset + 6] = 255
                else:
                    image[:, offset:offset + 3] = 255
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    return root
