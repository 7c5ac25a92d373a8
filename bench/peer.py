"""vqgen side by side with a public peer, ritheshkumar95/pytorch-vqvae: same process, same minute, same threads.

    python -m bench.peer --peer DIR [--steps 30] [--threads 1] [--quick]

DIR is a checkout of the peer holding its modules.py and functions.py, imported at run time (its
repository has no licence, so none of its code is copied here). Get it with
    git clone https://github.com/ritheshkumar95/pytorch-vqvae DIR

One JSON line per case, batch 64, fp32:
  vqvae_train   the peer's VectorQuantizedVAE(C, 256, K=512) by its own loss (vqvae.py: MSE + codebook
                + beta * commitment, beta 1.0) vs our VQVAEConfig.paper, both by the same bare loop
                (bench.efficiency.bare_flops_per_s), ours also through train_vqvae; images/s.
  vqvae_export  the peer's encode (eval, no grad) vs our export_latents, batches of 256; images/s.
  prior_train   the peer's GatedPixelCNN(512, 64, 15, 10) by its cross-entropy (pixelcnn_prior.py) vs our
                PriorConfig.small of the same width and depth, bare and through train_prior; grids/s.
Each line carries both models' FLOPs per step (torch's counter), since the two do different work:
the peer normalises every convolution with BatchNorm, quantizes at D=256 (ours projects to D=64,
adds a 3x3 convolution on each side and runs channels-last) and learns its codebook by gradient
(ours by EMA); its prior has no skip connections and a 512-wide head on the last layer (ours sums
256-wide skips from every layer). Quote ratios with those counts beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import emit, timed
from .efficiency import BATCH, bare_flops_per_s, prior_case, vqvae_case
from .stage1 import synthetic
from .stage2 import write_latents
from vqgen.data.images import ImageDataset
from vqgen.engine.efficiency import step_flops
from vqgen.engine.runtime import pick_device
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.export import export_latents
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.config import PriorConfig

HOW_TO_GET = "get it with `git clone https://github.com/ritheshkumar95/pytorch-vqvae DIR` and pass --peer DIR"
SIZES = ((1, 28), (3, 32))  # (channels, side): MNIST-like and CIFAR-like; codes 7x7 and 8x8
K, PEER_DIM, PEER_BETA, EXPORT_BATCH = 512, 256, 1.0, 256  # the peer's defaults (vqvae.py)
Batch = tuple[torch.Tensor, ...]


def load_peer(directory: str | None) -> ModuleType:
    """The peer's modules.py from its own checkout; a one-line exit that says how to get one when absent."""
    path = Path(directory or "")
    if directory is None or not all((path / name).is_file() for name in ("modules.py", "functions.py")):
        sys.exit(f"bench.peer: no peer modules.py and functions.py in --peer {directory}; {HOW_TO_GET}")
    sys.path.insert(0, str(path.resolve()))  # its modules.py imports `functions` from beside itself
    return importlib.import_module("modules")


def peer_commit(directory: str) -> str | None:
    """Which peer was measured, so a figure can be traced to its code."""
    out = subprocess.run(["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def build(make: Callable[[], nn.Module], device: torch.device) -> nn.Module:
    """A peer model seeded as ours are; its weights_init prints to stdout, kept off our JSON lines."""
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):
        return make().to(device)


def peer_vqvae_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """vqvae.py's train(): reconstruction MSE + codebook loss + beta * commitment (eq. 3 of van den Oord
    et al. 2017), on images in [-1, 1] (its decoder ends in Tanh)."""
    x_tilde, z_e_x, z_q_x = model(batch[0])
    return (F.mse_loss(x_tilde, batch[0]) + F.mse_loss(z_q_x, z_e_x.detach())
            + PEER_BETA * F.mse_loss(z_e_x, z_q_x.detach()))


def peer_prior_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """pixelcnn_prior.py's train(): logits moved to (B, H, W, K) and flattened, as it does, then cross-entropy."""
    codes, labels = batch
    logits = model(codes, labels).permute(0, 2, 3, 1).contiguous()  # (B, K, H, W) -> (B, H, W, K)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), codes.view(-1))


def peer_rate(model: nn.Module, batches: list[Batch], loss: Callable[[nn.Module, Batch], torch.Tensor],
              device: torch.device) -> tuple[float, int]:
    """(items/s, FLOPs per step) of the peer by the loop that times ours: counting one "FLOP" per item
    turns bare_flops_per_s into items/s, so both sides run the identical loop (Adam, two warm-up steps)."""
    flops = step_flops(model, lambda twin: loss(twin, batches[0]))
    return bare_flops_per_s(model, batches, loss, BATCH, device, "fp32"), flops


def compare(unit: str, peer: tuple[float, int], ours: dict[str, Any]) -> dict[str, Any]:
    """Our bench.efficiency figures (FLOP/s) back to items/s, beside the peer's, with the ratios ours / peer."""
    bare, trainer = (ours[key] / ours["flops_per_step"] * BATCH for key in ("bare_flops_per_s", "trainer_flops_per_s"))
    return {f"peer_{unit}_per_s": round(peer[0], 1), f"bare_{unit}_per_s": round(bare, 1),
            f"trainer_{unit}_per_s": round(trainer, 1), "bare_over_peer": round(bare / peer[0], 3),
            "trainer_over_peer": round(trainer / peer[0], 3), "peer_flops_per_step": peer[1],
            "flops_per_step": ours["flops_per_step"]}


def vqvae_train(peer: ModuleType, channels: int, side: int, steps: int, device: torch.device) -> dict[str, Any]:
    config = VQVAEConfig.paper(in_channels=channels, image_height=side, image_width=side)
    data = synthetic(max(2048, (steps + 2) * BATCH), side, channels)  # the images vqvae_case trains ours on
    images = data.images[:(steps + 2) * BATCH].float().div(127.5).sub(1)  # [0, 255] -> [-1, 1]
    batches = [(chunk.to(device),) for chunk in images.split(BATCH)]
    model = build(lambda: peer.VectorQuantizedVAE(channels, PEER_DIM, K=K), device).train()
    rate = peer_rate(model, batches, peer_vqvae_loss, device)
    return {"case": "vqvae_train", "image": [channels, side, side],
            **compare("images", rate, vqvae_case(config, steps, "fp32", device))}


@torch.no_grad()
def peer_export_rate(model: nn.Module, data: ImageDataset, device: torch.device) -> float:
    """The peer's encode in eval mode from uint8, with one warm-up batch, codes back on the host as ours writes them."""
    model.eval()
    chunks = data.images.split(EXPORT_BATCH)
    model.encode(chunks[0].to(device).float().div(127.5).sub(1))
    with timed(device) as t:
        for chunk in chunks:
            model.encode(chunk.to(device).float().div(127.5).sub(1)).cpu()  # (B, h, w)
    return len(data) / t["seconds"]


def ours_export_rate(config: VQVAEConfig, data: ImageDataset, device: torch.device) -> float:
    """export_latents into a temporary directory, after the same one-batch warm-up as the peer's."""
    torch.manual_seed(0)
    model = VQVAE(config).to(device).eval()
    model.encode(data.images[:EXPORT_BATCH].to(device).float().div(255))
    with tempfile.TemporaryDirectory() as out, timed(device) as t:
        export_latents(model, data, f"{out}/latents", batch_size=EXPORT_BATCH, progress=False)
    return len(data) / t["seconds"]


def vqvae_export(peer: ModuleType, channels: int, side: int, count: int, device: torch.device) -> dict[str, Any]:
    data = synthetic(count, side, channels)
    theirs = peer_export_rate(build(lambda: peer.VectorQuantizedVAE(channels, PEER_DIM, K=K), device), data, device)
    ours = ours_export_rate(VQVAEConfig.paper(in_channels=channels, image_height=side, image_width=side), data, device)
    return {"case": "vqvae_export", "image": [channels, side, side], "images": count, "batch": EXPORT_BATCH,
            "peer_images_per_s": round(theirs, 1), "images_per_s": round(ours, 1), "over_peer": round(ours / theirs, 3)}


def grid_batches(grid: int, steps: int, device: torch.device) -> list[Batch]:
    """The synthetic codes and labels prior_case trains ours on, as int64 for the peer's embeddings."""
    with tempfile.TemporaryDirectory() as tmp:
        latents = write_latents(Path(tmp) / "train", max(2048, (steps + 2) * BATCH), grid, K)
        codes = torch.from_numpy(np.load(latents / "codes.npy").astype(np.int64))  # (N, grid, grid)
        labels = torch.from_numpy(np.load(latents / "labels.npy").astype(np.int64))  # (N,)
    return [(codes[i * BATCH:(i + 1) * BATCH].to(device), labels[i * BATCH:(i + 1) * BATCH].to(device))
            for i in range(steps + 2)]


def prior_train(peer: ModuleType, grid: int, steps: int, device: torch.device) -> dict[str, Any]:
    config = PriorConfig.small(codebook_size=K, grid_height=grid, grid_width=grid, num_classes=10, channels=64,
                               layers=15)
    model = build(lambda: peer.GatedPixelCNN(K, config.channels, config.layers, n_classes=10), device).train()
    rate = peer_rate(model, grid_batches(grid, steps, device), peer_prior_loss, device)
    return {"case": "prior_train", "grid": [grid, grid], "K": K, "channels": config.channels, "layers": config.layers,
            **compare("grids", rate, prior_case(config, steps, "fp32", device))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", metavar="DIR", help="checkout of ritheshkumar95/pytorch-vqvae")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per training case")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every case")
    parser.add_argument("--quick", action="store_true", help="3 steps, the 1x28x28 / 7x7 cases only (smoke test)")
    args = parser.parse_args()
    peer = load_peer(args.peer)
    torch.set_num_threads(args.threads)
    device = pick_device("auto")
    steps, sizes = (3, SIZES[:1]) if args.quick else (args.steps, SIZES)
    shared = {"bench": "peer", "peer": "ritheshkumar95/pytorch-vqvae", "peer_commit": peer_commit(args.peer),
              "batch": BATCH, "steps": steps, "precision": "fp32"}
    for channels, side in sizes:
        emit({**shared, **vqvae_train(peer, channels, side, steps, device)})
    for channels, side in sizes:
        emit({**shared, **vqvae_export(peer, channels, side, EXPORT_BATCH * (2 if args.quick else 8), device)})
    for _, side in sizes:
        emit({**shared, **prior_train(peer, side // 4, steps, device)})


if __name__ == "__main__":
    main()
