"""Stage one throughput: our trainer vs a straightforward training loop, and export images/s.

    python -m bench.stage1 --size 28 [--steps 30] [--precision fp32|bf16] [--quick]

The baseline is the loop anyone would write first (shuffled DataLoader over per-item reads,
forward, loss, backward, Adam, `loss.item()` each step) around the same model, timed in the same
process, so the ratio shows what our loop costs beyond the model itself.
"""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from .common import bench_parser, emit, reference_rate, timed, trainer_rate
from .memory import peak_mib, reset_peak
from vqgen.data.images import DatasetInfo, ImageDataset
from vqgen.engine.runtime import pick_device
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.export import export_latents
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import train_vqvae


def synthetic(count: int, size: int, channels: int) -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator)
    info = DatasetInfo(name="bench", split="train", channels=channels, height=size, width=size,
                       num_classes=10, class_names=None)
    return ImageDataset(images, torch.randint(0, 10, (count,), generator=generator), info)


def reference_images_per_s(config: VQVAEConfig, data: ImageDataset, steps: int, batch: int,
                           device: torch.device, precision: str) -> float:
    torch.manual_seed(0)
    model = VQVAE(config).to(device)
    loader = DataLoader(TensorDataset(data.images.float() / 255), batch_size=batch, shuffle=True, drop_last=True)

    def loss(model: VQVAE, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = model(tensors[0])
        return F.mse_loss(out.reconstruction.float(), tensors[0]) + out.quantizer.loss

    return reference_rate(model, iter(loader), loss, steps, batch, device, precision)


def ours_images_per_s(config: VQVAEConfig, data: ImageDataset, steps: int, batch: int, precision: str,
                      device: torch.device) -> float:
    """Our trainer, logging every 2 steps; the first window (warm-up) is left out."""
    train = TrainConfig(steps=steps + 2, batch_size=batch, precision=precision, device=str(device),
                        log_every=2, eval_every=10**9, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as out:
        train_vqvae(config, train, data, synthetic(64, data.info.height, data.info.channels), out,
                    eval_images=64, progress=False)
        return trainer_rate(f"{out}/metrics.jsonl", "images_per_s")


def export_images_per_s(config: VQVAEConfig, data: ImageDataset, device: torch.device) -> float:
    model = VQVAE(config).to(device)
    with tempfile.TemporaryDirectory() as out, timed(device) as t:
        export_latents(model, data, f"{out}/latents", batch_size=256, progress=False)
    return len(data) / t["seconds"]


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--size", type=int, default=28, choices=(28, 32))
    args = parser.parse_args()
    device = pick_device("auto")
    channels = 1 if args.size == 28 else 3
    make = VQVAEConfig.tiny if args.quick else VQVAEConfig.paper
    config = make(in_channels=channels, image_height=args.size, image_width=args.size)
    steps = 4 if args.quick else args.steps
    data = synthetic(max(2048, (steps + 2) * args.batch), args.size, channels)
    reset_peak(device)
    ours = ours_images_per_s(config, data, steps, args.batch, args.precision, device)
    baseline = reference_images_per_s(config, data, steps, args.batch, device, args.precision)
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
