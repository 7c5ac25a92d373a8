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
    """`update(model)` after each optimizer step; `module` is the averaged model.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so early averages
    are not dominated by the random initial weights. Buffers (e.g. a quantizer's EMA codebook,
    which is itself an average) are copied from the live model by `sync_buffers`, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(list(self.module.parameters()), live, 1 - decay)

    @torch.no_grad()
    def sync_buffers(self, model: nn.Module) -> nn.Module:
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)
        return self.module

    def state_dict(self) -> dict[str, object]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[arg-type]
