"""Stage two training throughput: our trainer vs a straightforward loop, same prior, same process.

    python -m bench.stage2 --grid 7 [--steps 30] [--precision fp32|bf16] [--quick]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from .common import bench_parser, emit, reference_rate, trainer_rate
from .memory import peak_mib, reset_peak
from vqgen.data.latents import LatentManifest, LatentWriter
from vqgen.engine.runtime import pick_device
from vqgen.engine.train_config import TrainConfig
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.train import train_prior


def write_latents(directory: Path, count: int, grid: int, k: int) -> Path:
    generator = torch.Generator().manual_seed(0)
    manifest = LatentManifest(count=count, grid=(grid, grid), codebook_size=k, num_classes=10)
    writer = LatentWriter(directory, manifest).create(np.zeros((k, 4), np.float32))
    writer.write(0, torch.randint(0, k, (count, grid, grid), generator=generator),
                 torch.randint(0, 10, (count,), generator=generator))
    return writer.commit()


def reference_grids_per_s(config: PriorConfig, codes: torch.Tensor, labels: torch.Tensor, steps: int,
                          batch: int, device: torch.device, precision: str) -> float:
    torch.manual_seed(0)
    model = GatedPixelCNN(config).to(device)
    loader = DataLoader(TensorDataset(codes, labels), batch_size=batch, shuffle=True, drop_last=True)

    def loss(model: GatedPixelCNN, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.cross_entropy(model(*tensors).float(), tensors[0])

    return reference_rate(model, iter(loader), loss, steps, batch, device, precision)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--grid", type=int, default=7, choices=(7, 8))
    args = parser.parse_args()
    device = pick_device("auto")
    steps = 4 if args.quick else args.steps
    k = 512
    sizes = dict(channels=16, layers=3) if args.quick else dict(channels=64, layers=15)
    config = PriorConfig.small(codebook_size=k, grid_height=args.grid, grid_width=args.grid, num_classes=10, **sizes)
    count = max(2048, (steps + 2) * args.batch)
    train = TrainConfig(steps=steps + 2, batch_size=args.batch, precision=args.precision, device=str(device),
                        log_every=2, eval_every=10**9, checkpoint_every=10**9)
    reset_peak(device)
    with tempfile.TemporaryDirectory() as tmp:
        latents = write_latents(Path(tmp) / "train", count, args.grid, k)
        held = write_latents(Path(tmp) / "test", 64, args.grid, k)
        train_prior(config, train, latents, held, Path(tmp) / "prior", eval_grids=64, progress=False)
        ours = trainer_rate(Path(tmp) / "prior" / "metrics.jsonl", "grids_per_s")
        codes = torch.from_numpy(np.load(latents / "codes.npy").astype(np.int64))
        labels = torch.from_numpy(np.load(latents / "labels.npy"))
    baseline = reference_grids_per_s(config, codes, labels, steps, args.batch, device, args.precision)
    emit({"bench": "prior_train", "grid": [args.grid, args.grid], "K": k, **sizes, "batch": args.batch,
          "precision": args.precision, "steps": steps, "grids_per_s": round(ours, 1),
          "baseline_grids_per_s": round(baseline, 1), "ratio": round(ours / baseline, 3),
          "peak_mib": round(peak_mib(device), 1)})


if __name__ == "__main__":
    main()
