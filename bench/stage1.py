"""Stage one throughput: our trainer vs a straightforward training loop, and export images/s.

    python -m bench.stage1 --size 28 [--steps 30] [--precision fp32|bf16] [--quick]

The baseline is the loop anyone would write first (shuffled DataLoader over per-item reads,
forward, loss, backward, Adam, `loss.item()` each step) around the same model, timed in the same
process, so the ratio shows what our loop costs beyond the model itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench.common import emit, sync, timed
from bench.memory import peak_mib, reset_peak
from data.images import DatasetInfo, ImageDataset
from data.runtime import pick_device
from data.training import TrainConfig
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.export import export_latents
from stage1_vqvae.model import VQVAE
from stage1_vqvae.train import train_vqvae


def synthetic(count: int, size: int, channels: int) -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator)
    info = DatasetInfo(name="bench", split="train", channels=channels, height=size, width=size,
                       num_classes=10, class_names=None)
    return ImageDataset(images, torch.randint(0, 10, (count,), generator=generator), info)


def reference_images_per_s(config: VQVAEConfig, data: ImageDataset, steps: int, batch: int,
                           device: torch.device, dtype: torch.dtype | None) -> float:
    torch.manual_seed(0)
    model = VQVAE(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    images = data.images.float() / 255
    loader = DataLoader(TensorDataset(images, data.labels), batch_size=batch, shuffle=True, drop_last=True)
    batches = iter(loader)
    start = None
    for step in range(steps + 2):
        if step == 2:  # two warm-up steps, as for ours
            sync(device)
            start = time.perf_counter()
        x, _ = next(batches)
        x = x.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
            loss = F.mse_loss(out.reconstruction.float(), x) + out.quantizer.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def ours_images_per_s(config: VQVAEConfig, data: ImageDataset, steps: int, batch: int, precision: str,
                      device: torch.device) -> float:
    train = TrainConfig(steps=steps, batch_size=batch, precision=precision, device=str(device),
                        log_every=steps, eval_every=10**9, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as out:
        result = train_vqvae(config, train, data, synthetic(64, data.info.height, data.info.channels), out,
                             eval_images=64, progress=False)
    return result["images_per_s"]


def export_images_per_s(config: VQVAEConfig, data: ImageDataset, device: torch.device) -> float:
    model = VQVAE(config).to(device)
    with tempfile.TemporaryDirectory() as out, timed(device) as t:
        export_latents(model, data, f"{out}/latents", batch_size=256, progress=False)
    return len(data) / t["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=28, choices=(28, 32))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--quick", action="store_true", help="small model, few steps (smoke test)")
    args = parser.parse_args()
    device = pick_device("auto")
    channels = 1 if args.size == 28 else 3
    make = VQVAEConfig.tiny if args.quick else VQVAEConfig.paper
    config = make(in_channels=channels, image_height=args.size, image_width=args.size)
    steps = 3 if args.quick else args.steps
    data = synthetic(max(2048, (steps + 2) * args.batch), args.size, channels)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    reset_peak(device)
    ours = ours_images_per_s(config, data, steps, args.batch, args.precision, device)
    baseline = reference_images_per_s(config, data, steps, args.batch, device, dtype)
    emit({"bench": "vqvae_train", "config": "tiny" if args.quick else "paper", "image": [channels, args.size, args.size],
          "batch": args.batch, "precision": args.precision, "steps": steps, "images_per_s": round(ours, 1),
          "baseline_images_per_s": round(baseline, 1), "ratio": round(ours / baseline, 3),
          "peak_mib": round(peak_mib(device), 1)})
    reset_peak(device)
    emit({"bench": "vqvae_export", "config": "tiny" if args.quick else "paper", "image": [channels, args.size, args.size],
          "images": len(data), "images_per_s": round(export_images_per_s(config, data, device), 1),
          "peak_mib": round(peak_mib(device), 1)})


if __name__ == "__main__":
    main()
