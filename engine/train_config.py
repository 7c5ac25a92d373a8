"""The options of one training stage, each carrying its rules (help, and what a resume may change).

Its own module because most of the tree wants only these options (the CLI, presets, `vqgen run`'s
spec, the model card, export), not the loop that runs them (engine/trainer.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from vqgen.engine.configs import fields_where, option, require


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping for one training stage (Adam, as in both papers)."""

    steps: int = option(3000, "optimizer steps", resume="budget")
    max_seconds: float = option(0.0, "a time budget: stop after this many seconds of training steps, evaluate and "
                                     "save, even short of --steps (0: none); a resume spends what is left",
                                resume="budget")
    batch_size: int = option(64, "global batch size (split across torchrun processes)", resume="binding")
    lr: float = option(2e-4, "Adam learning rate", resume="binding")
    grad_clip: float = option(0.0, "clip the gradient norm to this (0: off)", resume="binding")
    seed: int = option(0, "fixes data order, initialisation and sampling", resume="binding", shared=True)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "fp32", "autocast precision (auto: bf16 where the CPU or GPU computes it natively, else fp32); quantizer "
                "distances and EMA always stay fp32", resume="binding", shared=True)
    device: str = option("auto", "auto (GPU when present), cpu or cuda[:N]", resume="runtime", shared=True)
    compile: bool = option(False, "torch.compile the model (falls back with a warning where unsupported)",
                           resume="runtime", shared=True)
    num_workers: int = option(0, "data-loader worker processes", resume="runtime", shared=True)
    log_every: int = option(25, "steps between metrics.jsonl records", resume="runtime")
    eval_every: int = option(500, "steps between held-out evaluations", resume="runtime")
    checkpoint_every: int = option(500, "steps between checkpoints", resume="runtime")
    warmup: int = option(0, "steps of linear learning-rate warm-up (0: none)", resume="binding")
    schedule: Literal["constant", "cosine", "cooldown"] = option(
        "constant", "learning rate after warm-up: constant; cosine decay to 0 at the last step; or cooldown, constant "
                    "then a decay to 0 over the last --cooldown share of the steps, which under a time budget "
                    "ends where the budget does", resume="binding")
    cooldown: float = option(0.2, "share of the steps the cooldown schedule decays over (1 - sqrt of its progress)",
                             resume="binding")
    ema: float = option(0.0, "decay of an exponential moving average of the weights, used for eval and saved as the "
                             "model's weights (0: off)", resume="binding")
    tensorboard: str | None = option(None, "directory for TensorBoard event files (None: off)", resume="runtime",
                                     flag=False)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            require(value >= 1, f"{name}={value} is not allowed; must be >= 1")
        require(self.lr > 0, f"lr={self.lr} is not allowed; must be > 0")
        require(self.max_seconds >= 0, f"max_seconds={self.max_seconds} is not allowed; must be >= 0 (0 = no limit)")
        require(self.warmup >= 0, f"warmup={self.warmup} is not allowed; must be >= 0 (0 = off)")
        require(0 < self.cooldown < 1, f"cooldown={self.cooldown} is not allowed; must be in (0, 1)")
        require(0 <= self.ema < 1, f"ema={self.ema} is not allowed; must be in [0, 1) (0 = off)")
        require(self.grad_clip >= 0, f"grad_clip={self.grad_clip} is not allowed; must be >= 0 (0 = off)")
        require(self.num_workers >= 0, f"num_workers={self.num_workers} is not allowed; must be >= 0")
        require(self.seed >= 0, f"seed={self.seed} is not allowed; must be >= 0")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (1-based): linear warm-up over `warmup` steps, then
        constant, a cosine decay (Loshchilov & Hutter 2017) that nears 0 at the last step, or constant
        until the cool-down's first step and a 1 - sqrt decay that nears 0 at the last (Hagele et al. 2024,
        arXiv 2405.18392: it matches cosine at any length, and the length need not be known until the
        cool-down starts, which is what lets a time budget choose it, engine/trainer.py)."""
        if step <= self.warmup:
            return self.lr * step / self.warmup
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cooldown":
            first = self.cooldown_start()
            return self.lr if step <= first else self.lr * (1 - math.sqrt((step - first) / (self.steps - first + 1)))
        progress = (step - 1 - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def cooldown_start(self, steps: int | None = None) -> int:
        """The last step at the full rate under the cooldown schedule, for `steps` in all (default: `steps`)."""
        steps = self.steps if steps is None else steps
        return max(self.warmup, steps - max(1, round(self.cooldown * steps)))

    def binding(self) -> tuple[str, ...]:
        """Options a resumed run must share with the saved one; `steps` too once the schedule depends on it
        (a time budget fixes the steps of a cooldown schedule itself, and its state.pt keeps them)."""
        decays = self.schedule == "cosine" or (self.schedule == "cooldown" and not self.max_seconds)
        return fields_where(TrainConfig, resume="binding") + (("steps",) if decays else ())
