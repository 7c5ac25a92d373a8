"""What a stage gives the trainer (`TrainTask`) and what its step and evaluation hand back.

Its own module because both the loop (engine/trainer.py) and the metrics window
(engine/metrics_log.py) read these types, and a stage implements them without needing the loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn


class StepResult(NamedTuple):
    """One training step's loss (what is minimised) and the metrics logged beside it."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


class Figure(NamedTuple):
    """An image grid an evaluation draws: saved as OUT/NAME.png and shown in TensorBoard."""

    images: torch.Tensor  # (B, C, H, W) in [0, 1]
    nrow: int


class TrainTask(Protocol):
    """What a stage gives the trainer."""

    model: nn.Module
    stage: str       # what the progress bar, warnings and TensorBoard call this training
    items_name: str

    def train_data(self) -> torch.utils.data.Dataset: ...

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult: ...

    def after_step(self, step: int) -> dict[str, float]: ...

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]: ...


@runtime_checkable
class DrawsFigures(Protocol):
    """A TrainTask whose evaluations also draw figures (the VQ-VAE's reconstructions), by name."""

    def figures(self, model: nn.Module) -> dict[str, Figure]: ...
