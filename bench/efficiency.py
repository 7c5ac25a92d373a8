"""Arithmetic efficiency of training: FLOP/s of each stage's step against the machine's matmul rate.

    python -m bench.efficiency [--steps 20] [--precision fp32|bf16] [--quick]

For each stage and size, one JSON line, all measured in this process: the FLOPs of one training step
(forward and backward, torch's flop counter), the rate of a square matrix product of the run's dtype
on the same threads (the practical ceiling), the FLOP/s of the bare step (the model's forward,
backward and Adam update on batches already in memory: nothing but the model), and the FLOP/s of our
trainer running the same steps (data loading, logging, checkpoint bookkeeping included). The shares
say how far each is from the ceiling; trainer / bare says what the trainer costs.

Sizes: "default" is what `vqgen run` trains (the grayscale preset on 1x28x28 and its 7x7 codes, the
color preset on 3x32x32 and its 16x16 codes), "paper" the papers' sizes (VQ-VAE 256 wide, K=512; prior
20 layers of 128 channels; 7x7 and 8x8 codes).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import bench_parser, emit, sync, trainer_rate
from .stage1 import synthetic
from .stage2 import write_latents
from vqgen.data.images import DataShape
from vqgen.engine.efficiency import matmul_flops_per_s, step_flops
from vqgen.engine.runtime import pick_device
from vqgen.engine.train_config import TrainConfig
from vqgen.pipeline.presets import default, paper
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.train import train_prior

BATCH = 64
SHAPES = (DataShape(1, 28, 28, 60000), DataShape(3, 32, 32, 45000))  # MNIST-like, CIFAR-like


def bare_flops_per_s(model: nn.Module, batches: list[tuple[torch.Tensor, ...]],
                     loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor], flops: int,
                     device: torch.device, precision: str) -> float:
    """The model alone: forward, loss, backward, Adam, on batches already on the device; two warm-up steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    start = 0.0
    for step, batch in enumerate(batches):
        if step == 2:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return flops * (len(batches) - 2) / (time.perf_counter() - start)


def _vqvae_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    out = model(batch[0])
    return F.mse_loss(out.reconstruction.float(), batch[0]) + out.quantizer.loss


def _prior_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return F.cross_entropy(model(*batch).float(), batch[0])


def vqvae_case(config: VQVAEConfig, steps: int, precision: str, device: torch.device) -> dict[str, Any]:
    data = synthetic(max(2048, (steps + 2) * BATCH), config.image_height, config.in_channels)
    images = data.images.float().div(255)
    batches = [(images[i * BATCH:(i + 1) * BATCH].to(device),) for i in range(steps + 2)]
    torch.manual_seed(0)
    model = VQVAE(config).to(device).train()
    flops = step_flops(model, lambda twin: _vqvae_loss(twin, batches[0]))
    bare = bare_flops_per_s(model, batches, _vqvae_loss, flops, device, precision)
    train = TrainConfig(steps=steps + 2, batch_size=BATCH, precision=precision, device=str(device), log_every=2,
                        eval_every=10**9, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as out:
        train_vqvae(config, train, data, synthetic(64, config.image_height, config.in_channels), out,
                    eval_images=64, progress=False)
        trainer = flops * trainer_rate(f"{out}/metrics.jsonl", "images_per_s") / BATCH
    return {"stage": "vqvae", "image": [config.in_channels, config.image_height, config.image_width],
            "flops_per_step": flops, "bare_flops_per_s": bare, "trainer_flops_per_s": trainer}


def prior_case(config: PriorConfig, steps: int, precision: str, device: torch.device) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        count = max(2048, (steps + 2) * BATCH)
        latents = write_latents(Path(tmp) / "train", count, config.grid_height, config.codebook_size)
        held = write_latents(Path(tmp) / "test", 64, config.grid_height, config.codebook_size)
        codes = torch.from_numpy(np.load(latents / "codes.npy").astype(np.int64))
        labels = torch.from_numpy(np.load(latents / "labels.npy"))
        batches = [(codes[i * BATCH:(i + 1) * BATCH].to(device), labels[i * BATCH:(i + 1) * BATCH].to(device))
                   for i in range(steps + 2)]
        torch.manual_seed(0)
        model = GatedPixelCNN(config).to(device).train()
        flops = step_flops(model, lambda twin: _prior_loss(twin, batches[0]))
        bare = bare_flops_per_s(model, batches, _prior_loss, flops, device, precision)
        train = TrainConfig(steps=steps + 2, batch_size=BATCH, precision=precision, device=str(device), log_every=2,
                            eval_every=10**9, checkpoint_every=10**9)
        train_prior(config, train, latents, held, Path(tmp) / "prior", eval_grids=64, progress=False)
        trainer = flops * trainer_rate(Path(tmp) / "prior" / "metrics.jsonl", "grids_per_s") / BATCH
    return {"stage": "prior", "grid": [config.grid_height, config.grid_width], "K": config.codebook_size,
            "layers": config.layers, "channels": config.channels, "flops_per_step": flops,
            "bare_flops_per_s": bare, "trainer_flops_per_s": trainer}


def cases(quick: bool) -> list[tuple[str, Callable[..., dict[str, Any]], Any]]:
    """(size, measure, config) for every stage and size."""
    if quick:
        return [("default", vqvae_case, VQVAEConfig.tiny()),
                ("default", prior_case, PriorConfig.tiny(num_classes=10, label_dropout=0.0))]
    out: list[tuple[str, Callable[..., dict[str, Any]], Any]] = []
    for shape in SHAPES:
        preset = default(shape)
        vqvae = preset.vqvae
        grid = vqvae.grid
        prior = replace(preset.prior, codebook_size=vqvae.codebook_size, grid_height=grid[0], grid_width=grid[1],
                        num_classes=10)
        paper_vqvae = paper(shape).vqvae
        paper_grid = paper_vqvae.grid
        paper_prior = PriorConfig.paper(codebook_size=paper_vqvae.codebook_size, grid_height=paper_grid[0],
                                        grid_width=paper_grid[1], num_classes=10)
        out += [("default", vqvae_case, vqvae), ("paper", vqvae_case, paper_vqvae),
                ("default", prior_case, prior), ("paper", prior_case, paper_prior)]
    return out


def main() -> None:
    parser = bench_parser(__doc__)
    parser.set_defaults(steps=20)
    args = parser.parse_args()
    device = pick_device("auto")
    precision = args.precision
    steps = 3 if args.quick else args.steps
    matmul = matmul_flops_per_s(precision, device)
    for size, measure, config in cases(args.quick):
        figures = measure(config, steps, precision, device)
        emit({"bench": "efficiency", "size": size, **figures, "batch": BATCH, "precision": precision, "steps": steps,
              "matmul_flops_per_s": matmul, "bare_share": figures["bare_flops_per_s"] / matmul,
              "trainer_share": figures["trainer_flops_per_s"] / matmul,
              "trainer_over_bare": figures["trainer_flops_per_s"] / figures["bare_flops_per_s"]})


if __name__ == "__main__":
    main()
