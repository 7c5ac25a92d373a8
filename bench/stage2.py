"""Stage two training throughput: our trainer vs a straightforward loop, same prior, same process.

    python -m bench.stage2 --grid 7 [--steps 30] [--precision fp32|bf16] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench.common import emit, sync
from bench.memory import peak_mib, reset_peak
from data.latents import LatentManifest, LatentWriter
from data.runtime import pick_device
from data.training import TrainConfig
from stage2_prior.config import PriorConfig
from stage2_prior.model import GatedPixelCNN
from stage2_prior.train import train_prior


def write_latents(directory: Path, count: int, grid: int, k: int) -> Path:
    generator = torch.Generator().manual_seed(0)
    manifest = LatentManifest(count=count, grid=(grid, grid), codebook_size=k, num_classes=10)
    writer = LatentWriter(directory, manifest).create(np.zeros((k, 4), np.float32))
    writer.write(0, torch.randint(0, k, (count, grid, grid), generator=generator),
                 torch.randint(0, 10, (count,), generator=generator))
    return writer.commit()


def reference_grids_per_s(config: PriorConfig, codes: torch.Tensor, labels: torch.Tensor, steps: int,
                          batch: int, device: torch.device, dtype: torch.dtype | None) -> float:
    torch.manual_seed(0)
    model = GatedPixelCNN(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    batches = iter(DataLoader(TensorDataset(codes, labels), batch_size=batch, shuffle=True, drop_last=True))
    start = None
    for step in range(steps + 2):
        if step == 2:
            sync(device)
            start = time.perf_counter()
        x, y = (t.to(device) for t in next(batches))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x, y).float(), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=7, choices=(7, 8))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--quick", action="store_true", help="small model, few steps (smoke test)")
    args = parser.parse_args()
    device = pick_device("auto")
    steps = 3 if args.quick else args.steps
    k = 512
    sizes = dict(channels=16, layers=3) if args.quick else dict(channels=64, layers=15)
    config = PriorConfig.small(codebook_size=k, grid_height=args.grid, grid_width=args.grid, num_classes=10, **sizes)
    count = max(2048, (steps + 2) * args.batch)
    train = TrainConfig(steps=steps, batch_size=args.batch, precision=args.precision, device=str(device),
                        log_every=steps, eval_every=10**9, checkpoint_every=10**9)
    reset_peak(device)
    with tempfile.TemporaryDirectory() as tmp:
        latents = write_latents(Path(tmp) / "train", count, args.grid, k)
        held = write_latents(Path(tmp) / "test", 64, args.grid, k)
        ours = train_prior(config, train, latents, held, Path(tmp) / "prior", eval_grids=64, progress=False)
        codes = torch.from_numpy(np.load(latents / "codes.npy").astype(np.int64))
        labels = torch.from_numpy(np.load(latents / "labels.npy"))
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    baseline = reference_grids_per_s(config, codes, labels, steps, args.batch, device, dtype)
    emit({"bench": "prior_train", "grid": [args.grid, args.grid], "K": k, **sizes, "batch": args.batch,
          "precision": args.precision, "steps": steps, "grids_per_s": round(ours["grids_per_s"], 1),
          "baseline_grids_per_s": round(baseline, 1), "ratio": round(ours["grids_per_s"] / baseline, 3),
          "peak_mib": round(peak_mib(device), 1)})


if __name__ == "__main__":
    main()
