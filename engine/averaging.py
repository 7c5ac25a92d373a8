"""An exponential moving average of a model's weights, the copy that evaluation and sampling use.

Averaging the last few thousand steps' weights smooths out the noise of the final updates
(Polyak & Juditsky 1992); generative models sample better from the average than from the last
step's weights (e.g. PixelCNN++, Salimans et al. 2017, and most diffusion models since).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """`update(model)` after each optimizer step; `published(model)` is the averaged model.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so early averages
    are not dominated by the random initial weights. Floating-point buffers are averaged with the
    weights: a VQ-VAE's EMA codebook is fitted to its encoder, so the averaged encoder needs the
    codebook averaged over the same steps; other buffers (counters, flags) are the live model's.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @staticmethod
    def _averaged(model: nn.Module) -> list[torch.Tensor]:
        return [p.detach() for p in model.parameters()] + [b for b in model.buffers() if b.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._averaged(self.module), self._averaged(model), 1 - decay)

    @torch.no_grad()
    def published(self, model: nn.Module) -> nn.Module:
        """The average, with the live model's other buffers."""
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            if not mine.is_floating_point():
                mine.copy_(theirs)
        return self.module

    def state_dict(self) -> dict[str, object]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[arg-type]
