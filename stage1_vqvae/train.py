"""Training the VQ-VAE: reconstruction + quantizer loss, eval with PSNR and codebook use."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vqgen.data.images import BatchedImages, check_divisible
from vqgen.data.rows import spread_rows
from vqgen.engine.runtime import seed_everything
from vqgen.engine.train_config import TrainConfig
from vqgen.engine.train_task import Figure, StepResult
from vqgen.engine.trainer import Trainer
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.pixels import discretized_logistic_bits, discretized_logistic_nats
from vqgen.stage1_vqvae.quantizer import usage_stats

EVAL_BATCH = 256
SHOWN = 32  # held-out images in the reconstruction figure, as 2 x 16 grid cells each: real, decoded


def psnr(mse: torch.Tensor | float) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return -10.0 * math.log10(max(float(mse), 1e-12))


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, data: BatchedImages, device: torch.device, limit: int | None = None,
                   seed: int = 0) -> dict[str, float]:
    """Held-out MSE and PSNR of the reconstructed images, perplexity and codebook use (and a logistic
    decoder's bits/dim), over `limit` images drawn by `seed` within each class and spread over the classes
    (data/rows.py)."""
    rows = spread_rows(data.labels, len(data), len(data) if limit is None else limit, seed)
    sq_error, bits, pixels = 0.0, 0.0, 0
    counts = torch.zeros(model.config.codebook_size, dtype=torch.long, device=device)
    for start in range(0, len(rows), EVAL_BATCH):
        images, _ = data.__getitems__(rows[start:start + EVAL_BATCH])
        images = images.to(device)
        out = model.reconstruct(images)
        # the image the model shows (decode, samples, reconstructions.png) is its means clamped to [0, 1]: a
        # logistic decoder's mean for a black or white pixel may sit far outside, as its end bins are open
        shown = out.reconstruction.float().clamp(0, 1)
        sq_error += float(F.mse_loss(shown, images, reduction="sum"))
        if out.log_scales is not None:
            bits += float(discretized_logistic_bits(images, out.reconstruction.float(), out.log_scales.float()).sum())
        pixels += images.numel()
        counts += torch.bincount(out.quantizer.indices.flatten(), minlength=counts.numel())
    mse = sq_error / max(pixels, 1)
    perplexity, used = usage_stats(counts.double())
    figures = {"mse": mse, "psnr": psnr(mse), "perplexity": float(perplexity), "codes_used": float(used)}
    if model.config.decoder == "logistic":
        figures["decoder_bits_per_dim"] = bits / max(pixels, 1)
    return figures


def reconstruction_loss(images: torch.Tensor, means: torch.Tensor,
                        log_scales: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The decoder's loss on (B, C, H, W) images and its metrics: squared error, or for a logistic decoder
    (`log_scales` given) the negative log-likelihood of the pixels, in nats per pixel value."""
    mse = F.mse_loss(means.float(), images)
    metrics = {"mse": mse.detach()}
    if log_scales is None:
        return mse, metrics
    nats = discretized_logistic_nats(images, means.float(), log_scales.float()).mean()
    metrics["bits_per_dim"] = nats.detach() / math.log(2)
    return nats, metrics


class VQVAETask:
    """The stage-one TrainTask: what one step computes and what an evaluation reports."""

    stage = "vqvae"
    items_name = "images"

    def __init__(self, model: VQVAE, train: BatchedImages, held_out: BatchedImages, eval_images: int,
                 seed: int = 0) -> None:
        self.model, self.train, self.held_out, self.eval_images, self.seed = model, train, held_out, eval_images, seed

    def train_data(self) -> Dataset:
        return self.train

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult:
        images = batch[0].to(device, non_blocking=True)  # (B, C, H, W)
        out = model(images)
        loss, metrics = reconstruction_loss(images, out.reconstruction, out.log_scales)
        q = out.quantizer
        metrics.update(perplexity=q.perplexity.detach(), usage=q.usage.detach())
        return StepResult(loss + q.loss, metrics)

    def after_step(self, step: int) -> dict[str, float]:
        """Dead-code restarts every `restart_every` steps (a host sync, so not every step)."""
        config = self.model.config
        if config.restart_threshold <= 0 or step % config.restart_every:
            return {}
        return {"restarted": float(self.model.quantizer.restart_dead_codes())}

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        device = next(model.parameters()).device
        return evaluate_vqvae(model, self.held_out, device, self.eval_images, self.seed)  # type: ignore[arg-type]

    def figures(self, model: nn.Module) -> dict[str, Figure]:
        """reconstructions(.png): held-out images from every class, each beside its reconstruction."""
        shown = spread_rows(self.held_out.labels, len(self.held_out), SHOWN, self.seed)
        images, _ = self.held_out.__getitems__(shown)
        images = images.to(next(model.parameters()).device)
        recon = model.reconstruct(images).reconstruction.float().clamp(0, 1)
        rows = torch.stack([images.cpu(), recon.cpu()], dim=1).flatten(0, 1)  # (2B, C, H, W): real, decoded
        return {"reconstructions": Figure(rows, nrow=16)}


def train_vqvae(config: VQVAEConfig, train: TrainConfig, data: BatchedImages, held_out: BatchedImages,
                out_dir: str | Path, eval_images: int = 2000, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a VQ-VAE into `out_dir`; return the final evaluation and throughput."""
    check_divisible(data.info, config.downsample_factor)
    config.check_images(data.info.channels, data.info.height, data.info.width)
    seed_everything(train.seed)
    model = VQVAE(config)
    task = VQVAETask(model, data, held_out, eval_images, train.seed)
    return Trainer(task, train, out_dir, progress=progress).fit()
