"""Prior sampling, naive (a full forward pass per position) vs incremental, same model, same process;
guided sampling (scale 2) beside plain incremental sampling; and the prior's training throughput
(forward, backward and Adam step).

    python -m bench.sampling [--batch 64] [--threads N] [--naive-budget 120] [--quick]

Naive sampling runs the same full forward pass at every position, so its cost per position is
constant: where the whole grid would take longer than --naive-budget seconds, its first positions
are timed and scaled by H*W / positions, and the record says so ("naive_extrapolated": true).

On CUDA the full forward pass runs cuDNN convolutions, in TF32 unless torch is told otherwise, while
the incremental sampler multiplies matrices in full fp32: their logits then differ by about 1e-3 and
a draw near a boundary can pick another code. So the record gives the largest logit difference over
every position beside `same_codes`, and the TF32 settings it ran under.

Both samplers run on one CPU thread unless --threads says otherwise: on a shared machine a second
OpenMP thread spins between operations and competes with other processes for the cores, so the
figures would measure the scheduler, not the samplers (0 keeps torch's default).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Iterator

import torch
import torch.nn.functional as F

from .common import emit, reference_rate, sync, timed
from vqgen.engine.runtime import pick_device
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import IncrementalSampler, NaiveSampler, SamplingOptions, draw, log_probs, sample

CLASSES = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=None, help="grids sampled at once (default 64; 8 with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, for both samplers (0: torch's default); see above")
    parser.add_argument("--naive-budget", type=float, default=120.0, help="seconds of naive sampling per grid")
    parser.add_argument("--quick", action="store_true", help="small model and batch, 10 s budget (smoke test)")
    return parser.parse_args()


def prior_config(grid: int, quick: bool) -> PriorConfig:
    sizes = dict(codebook_size=64, channels=16, layers=4) if quick else dict(codebook_size=512, channels=64, layers=15)
    return PriorConfig.small(grid_height=grid, grid_width=grid, num_classes=CLASSES, **sizes)


def described(config: PriorConfig) -> dict[str, object]:
    return {"grid": list(config.grid), "K": config.codebook_size, "layers": config.layers,
            "channels": config.channels, "load_average_1min": round(os.getloadavg()[0], 2)}


def naive_run(model: GatedPixelCNN, labels: torch.Tensor, budget: float) -> tuple[float, int, torch.Tensor]:
    """(seconds for the whole grid, positions timed, codes in raster order so far), by the same
    per-position steps as `sample_naive`, stopping once `budget` seconds have passed."""
    (height, width), device = model.config.grid, labels.device
    codes = torch.zeros(len(labels), height, width, dtype=torch.long, device=device)
    state, generator = NaiveSampler(model, codes, labels), torch.Generator(device).manual_seed(0)
    sync(device)
    start, position = time.perf_counter(), 0
    with torch.no_grad():
        while position < height * width and time.perf_counter() - start < budget:
            i, j = divmod(position, width)
            codes[:, i, j] = draw(log_probs(state.logits(i, j), SamplingOptions()), generator)
            state.commit(i, j, codes[:, i, j])
            position += 1
    sync(device)
    seconds = (time.perf_counter() - start) * height * width / position
    return seconds, position, codes.flatten(1)[:, :position]


@torch.no_grad()
def max_logit_diff(model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Largest |incremental - full| logit over every position of `codes`, fed to the sampler in order."""
    sampler, full = IncrementalSampler(model, codes, labels), model(codes, labels)  # (B, K, H, W)
    height, width = model.config.grid
    gap = 0.0
    for i in range(height):
        for j in range(width):
            gap = max(gap, float((sampler.logits(i, j) - full[:, :, i, j]).abs().max()))
            sampler.commit(i, j, codes[:, i, j])
    return gap


def tf32(device: torch.device) -> dict[str, bool] | None:
    if device.type != "cuda":
        return None
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}


def bench_sampling(config: PriorConfig, batch: int, budget: float, device: torch.device) -> None:
    torch.manual_seed(0)
    model = GatedPixelCNN(config).to(device).eval()
    labels = torch.arange(batch, device=device) % CLASSES
    sample(model, 2, labels[:2], progress=False)  # warm-up: one-time allocations and kernel choice
    with timed(device) as t:
        fast = sample(model, batch, labels, generator=torch.Generator(device).manual_seed(0), progress=False)
    with timed(device) as guided:  # classifier-free guidance: the conditional and null-class halves as one batch
        sample(model, batch, labels, SamplingOptions(guidance=2.0), torch.Generator(device).manual_seed(0),
               progress=False)
    naive_s, positions, slow = naive_run(model, labels, budget)
    emit({"bench": "prior_sampling", **described(config), "batch": batch, "naive_s": round(naive_s, 3),
          "naive_positions_timed": positions, "naive_extrapolated": positions < config.grid_height * config.grid_width,
          "incremental_s": round(t["seconds"], 3), "speedup": round(naive_s / t["seconds"], 1),
          "guided_s": round(guided["seconds"], 3), "guided_over_plain": round(guided["seconds"] / t["seconds"], 2),
          "same_codes": bool(torch.equal(fast.flatten(1)[:, :positions], slow)),
          "max_logit_diff": max_logit_diff(model, fast, labels), "tf32": tf32(device)})


def random_batches(config: PriorConfig, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield (torch.randint(0, config.codebook_size, (batch, *config.grid)), torch.randint(0, CLASSES, (batch,)))


def loss(model: GatedPixelCNN, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return F.cross_entropy(model(*tensors).float(), tensors[0])


def bench_training(config: PriorConfig, steps: int, device: torch.device, batch: int = 32) -> None:
    torch.manual_seed(0)
    model = GatedPixelCNN(config).to(device)
    rate = reference_rate(model, random_batches(config, batch), loss, steps, batch, device, "fp32")
    emit({"bench": "prior_train_step", **described(config), "batch": batch, "steps": steps,
          "grids_per_s": round(rate, 1)})


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device("auto")
    batch = args.batch or (8 if args.quick else 64)
    budget = min(args.naive_budget, 10.0) if args.quick else args.naive_budget
    for grid in (8, 16):
        bench_sampling(prior_config(grid, args.quick), batch, budget, device)
    for grid in (8, 7):
        bench_training(prior_config(grid, args.quick), 3 if args.quick else 10, device)


if __name__ == "__main__":
    main()
