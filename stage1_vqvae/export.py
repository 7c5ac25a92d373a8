"""Export: every image of a split -> its code grid, streamed into a latent dataset (data/latents.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tqdm import tqdm

from vqgen.engine.batches import make_loader
from vqgen.engine.checkpoint import TRAIN_CONFIG_FILE, weights_path
from vqgen.data.images import BatchedImages
from vqgen.data.latents import LatentManifest, LatentWriter
from vqgen.engine.configs import config_from_dict
from vqgen.engine.distributed import Dist, barrier, on_main
from vqgen.engine.files import read_json
from vqgen.engine.locks import exclusive
from vqgen.engine.runtime import autocast, resolve_precision
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.model import VQVAE


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard(count: int, ctx: Dist) -> range:
    """This rank's contiguous rows, so the ranks' writes tile the file exactly once."""
    per_rank = -(-count // ctx.world)
    return range(min(count, ctx.rank * per_rank), min(count, (ctx.rank + 1) * per_rank))


def trained_precision(vqvae_dir: str | Path | None) -> str:
    """The autocast precision the VQ-VAE in `vqvae_dir` trained with (its train_config.json); fp32 for a
    model folder without one (an exported model, or none given), whose codes fp32 reproduces best."""
    path = Path(vqvae_dir) / TRAIN_CONFIG_FILE if vqvae_dir else None
    if path is None or not path.exists():
        return "fp32"
    return config_from_dict(TrainConfig, read_json(path, "training config"), str(path)).precision


@torch.no_grad()
def export_latents(model: VQVAE, data: BatchedImages, out: str | Path, vqvae_dir: str | Path | None = None,
                   batch_size: int = 256, ctx: Dist = Dist(), progress: bool = True,
                   num_workers: int = 0, precision: str | None = None) -> LatentManifest:
    """Encode `data` in eval mode into the latent dataset `out`; memory stays bounded by the batch.

    `precision` is the encoder's autocast ("auto": bf16 where native; None: the precision the VQ-VAE in
    `vqvae_dir` trained with, `trained_precision`); the quantizer's distances stay fp32. A VQ-VAE trained
    under bf16 encodes faster under it and its codes are the ones it trained on; one trained in fp32
    encodes in fp32, as some of its codes move under bf16 (about 2% on CIFAR-10 in 0.5.0).

    Under torchrun each rank encodes its shard into the same memory-mapped files; at fp32 the result
    equals a single-process export byte for byte (under bf16 a batch's make-up may move a code whose
    two nearest entries nearly tie). `num_workers` loader processes read (for a
    streamed folder: decode) the images while the model encodes.
    """
    model.eval()
    device = next(model.parameters()).device
    precision = resolve_precision(precision or trained_precision(vqvae_dir), device)
    info = data.info
    model.config.check_images(info.channels, info.height, info.width)
    manifest = LatentManifest(
        count=len(data), grid=model.config.grid, codebook_size=model.config.codebook_size,
        num_classes=info.num_classes if data.labels is not None else None, source=info.source(),
        vqvae={"path": str(vqvae_dir) if vqvae_dir else None,
               "sha256": file_sha256(weights_path(vqvae_dir)) if vqvae_dir else None})
    writer = LatentWriter(out, manifest)
    with exclusive(writer.tmp.with_name(f".{writer.target.name}.lock"), f"the export to {out}", ctx):
        on_main(ctx, lambda: writer.create(model.quantizer.codebook_vectors().float().cpu().numpy()))
        rows = shard(len(data), ctx)
        batches = [list(range(start, min(start + batch_size, rows.stop)))
                   for start in range(rows.start, rows.stop, batch_size)]
        loader = make_loader(data, batches, num_workers, device.type == "cuda")
        for indices, (images, labels) in zip(batches, tqdm(loader, desc=f"export {info.split}",
                                                            disable=not (progress and ctx.is_main))):
            with autocast(precision, device):
                codes = model.encode(images.to(device))  # (B, h, w)
            writer.write(indices[0], codes, labels if data.labels is not None else None)
        barrier(ctx)
        on_main(ctx, writer.commit)
    return manifest
