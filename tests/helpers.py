"""What several test modules share: tiny command-line configurations, the command line in-process, and
latent grids with structure a prior can learn. (Fixtures live in conftest.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vqgen.data.latents import LatentManifest, LatentWriter
from vqgen.pipeline.cli import main

REPO = Path(__file__).resolve().parent.parent

TINY_VQVAE = ["--preset", "tiny", "--steps", "4", "--batch-size", "8", "--eval-every", "2", "--device", "cpu"]
TINY_PRIOR = ["--preset", "tiny", "--steps", "4", "--batch-size", "8", "--eval-every", "2", "--device", "cpu"]
TINY_RUN = ["--preset", "quick", "--device", "cpu", "--vqvae-steps", "4", "--vqvae-batch-size", "8",
            "--vqvae-hidden", "8", "--vqvae-res-hidden", "4", "--vqvae-checkpoint-every", "2",
            "--prior-steps", "4", "--prior-batch-size", "8", "--prior-channels", "8", "--prior-layers", "2",
            "--prior-checkpoint-every", "2", "--samples", "4"]


def vqgen(*args: str | Path) -> int:
    """`vqgen ARGS` in this process; its exit code."""
    return main([str(a) for a in args])


def structured_latents(directory: Path, count: int, seed: int) -> Path:
    """Grids whose codes follow a rule (each row repeats a label-dependent pattern, shifted)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    shift = rng.integers(0, 4, count)
    cols = np.arange(4)
    codes = np.stack([np.tile((cols + s + 4 * lab) % 8, (4, 1)) for s, lab in zip(shift, labels)])  # (N, 4, 4)
    manifest = LatentManifest(count=count, grid=(4, 4), codebook_size=8, num_classes=2)
    writer = LatentWriter(directory, manifest).create(np.eye(8, dtype=np.float32))
    writer.write(0, torch.from_numpy(codes), torch.from_numpy(labels))
    return writer.commit()
