"""Training the gated PixelCNN prior on a latent dataset, with likelihood against two baselines."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vqgen.data.latents import LatentDataset
from vqgen.data.rows import spread_rows
from vqgen.engine.runtime import seed_everything
from vqgen.engine.train_config import TrainConfig
from vqgen.engine.train_task import StepResult
from vqgen.engine.trainer import Trainer
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN

EVAL_BATCH = 256


def fit_to_latents(config: PriorConfig, latents: LatentDataset) -> PriorConfig:
    """K, grid and classes come from the latents, so nobody types them twice; unlabelled latents have no
    labels to drop."""
    m = latents.manifest
    return replace(config, codebook_size=m.codebook_size, grid_height=m.grid[0], grid_width=m.grid[1],
                   num_classes=m.num_classes or 0, label_dropout=config.label_dropout if m.num_classes else 0.0)


def unigram_bits(train: LatentDataset, held_out: LatentDataset, rows: list[int] | None = None) -> float:
    """Bits per code of held-out codes (those of `rows`, default all) under the training codes'
    add-one-smoothed frequencies."""
    k = train.manifest.codebook_size
    train_counts = np.bincount(np.asarray(train.codes).ravel(), minlength=k).astype(np.float64) + 1.0
    log_probs = np.log2(train_counts / train_counts.sum())
    held = np.asarray(held_out.codes) if rows is None else held_out.codes[np.asarray(rows)]
    held_counts = np.bincount(held.ravel(), minlength=k)
    return float(-(held_counts * log_probs).sum() / held_counts.sum())


def eval_rows(data: LatentDataset, limit: int | None, seed: int = 0) -> list[int]:
    """The held-out grids an evaluation scores: all, or `limit` drawn by `seed` within each class and
    spread over the classes (data/rows.py)."""
    return spread_rows(data.labels, len(data), len(data) if limit is None else limit, seed)


@torch.no_grad()
def evaluate_prior(model: GatedPixelCNN, data: LatentDataset, device: torch.device,
                   rows: list[int] | None = None) -> dict[str, float]:
    """Held-out negative log-likelihood in bits per code and per image, over `rows` (default all)."""
    rows = list(range(len(data))) if rows is None else rows
    total_bits = 0.0
    for start in range(0, len(rows), EVAL_BATCH):
        codes, labels = data.__getitems__(rows[start:start + EVAL_BATCH])
        labels = labels.to(device) if model.config.num_classes else None
        total_bits += float(model.nll_bits(codes.to(device), labels).float().sum())
    per_image = total_bits / max(len(rows), 1)
    return {"bits_per_image": per_image, "bits_per_code": per_image / (model.config.grid_height *
                                                                         model.config.grid_width)}


class PriorTask:
    """The stage-two TrainTask: cross-entropy of every code given the codes before it.

    With label dropout, a share of each batch's labels becomes the null class (Ho & Salimans 2022);
    held-out likelihood is always measured with the true labels.
    """

    stage = "prior"
    items_name = "grids"

    def __init__(self, model: GatedPixelCNN, train: LatentDataset, held_out: LatentDataset,
                 eval_grids: int | None, seed: int = 0) -> None:
        self.model, self.train, self.held_out = model, train, held_out
        self.rows = eval_rows(held_out, eval_grids, seed)  # the same grids for the model and its baselines
        self.baselines = {"uniform_bits_per_code": math.log2(model.config.codebook_size),
                          "unigram_bits_per_code": unigram_bits(train, held_out, self.rows)}

    def train_data(self) -> Dataset:
        return self.train

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult:
        config = self.model.config
        codes = batch[0].to(device, non_blocking=True)  # (B, H, W)
        labels = batch[1].to(device, non_blocking=True) if config.num_classes else None
        if labels is not None and config.null_label is not None:
            dropped = torch.rand(labels.shape, device=device) < config.label_dropout  # (B,)
            labels = labels.masked_fill(dropped, config.null_label)
        logits = model(codes, labels)  # (B, K, H, W), through DDP's forward so gradients sync
        nats = F.cross_entropy(logits.float(), codes)
        return StepResult(nats, {"bits_per_code": nats.detach() / math.log(2)})

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        device = next(model.parameters()).device
        return {**evaluate_prior(model, self.held_out, device, self.rows), **self.baselines}  # type: ignore[arg-type]


def train_prior(config: PriorConfig, train: TrainConfig, latents: str | Path, held_out: str | Path,
                out_dir: str | Path, eval_grids: int = 2000, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a prior on the latent dataset `latents` into `out_dir`."""
    data, held = LatentDataset(latents), LatentDataset(held_out)
    config = fit_to_latents(config, data)
    held.check_fits(config.codebook_size, (config.grid_height, config.grid_width), what="the training latents")
    seed_everything(train.seed)
    model = GatedPixelCNN(config)
    task = PriorTask(model, data, held, eval_grids, train.seed)
    return Trainer(task, train, out_dir, progress=progress).fit()
