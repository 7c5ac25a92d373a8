"""Prior sampling: naive (a full forward per position) vs incremental, same model, same process.

    python -m bench.sampling [--batch 64] [--quick]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import emit, timed
from bench.memory import peak_mib
from data.runtime import pick_device
from stage2_prior.config import PriorConfig
from stage2_prior.model import GatedPixelCNN
from stage2_prior.sampling import sample, sample_naive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="small model (smoke test)")
    args = parser.parse_args()
    device = pick_device("auto")
    sizes = dict(channels=16, layers=4) if args.quick else dict(channels=64, layers=15)
    for grid in (8, 16):
        torch.manual_seed(0)
        config = PriorConfig.small(codebook_size=512, grid_height=grid, grid_width=grid, num_classes=10, **sizes)
        model = GatedPixelCNN(config).to(device).eval()
        labels = torch.arange(args.batch, device=device) % 10
        figures = {}
        for name, fn in (("incremental", sample), ("naive", sample_naive)):
            fn(model, 2, labels[:2], progress=False)  # warm-up: one-time allocations and kernel choice
            generator = torch.Generator(device).manual_seed(0)
            with timed(device) as t:
                codes = fn(model, args.batch, labels, generator=generator, progress=False)
            figures[name] = (t["seconds"], codes)
        emit({"bench": "prior_sampling", "grid": [grid, grid], "batch": args.batch, "K": 512, **sizes,
              "naive_s": round(figures["naive"][0], 3), "incremental_s": round(figures["incremental"][0], 3),
              "speedup": round(figures["naive"][0] / figures["incremental"][0], 1),
              "same_codes": bool(torch.equal(figures["naive"][1], figures["incremental"][1])),
              "peak_mib": round(peak_mib(device), 1)})


if __name__ == "__main__":
    main()
