"""Tuning a trained VQ-VAE's decoder alone, from its exported codes (`vqgen tune-decoder`, the decoder stage of
`vqgen run`).

The encoder and the codebook stay frozen, so every image keeps its codes: the latent dataset, and a prior
trained on it, stay valid, and the samples decode through the better decoder. Two things make this pay
(docs/experiments.md, "Tuning the decoder"): with the codes read from the export the step skips the encoder,
which costs about as much as the decoder (2.9x the images per second on CIFAR-10); and the decoder learns with a rate that decays to zero at its
end, which joint training, whose codes still move, does not give it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from vqgen.data.images import BatchedImages
from vqgen.data.latents import LatentDataset
from vqgen.engine.checkpoint import weights_path
from vqgen.engine.errors import VQGenError
from vqgen.engine.runtime import seed_everything
from vqgen.engine.train_config import TrainConfig
from vqgen.engine.train_task import StepResult
from vqgen.engine.trainer import Trainer
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.export import file_sha256
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import VQVAETask, reconstruction_loss


class CodedImages(Dataset):
    """Images and the code grids their export holds, row for row: a batch is (images (B, C, H, W) in
    [0, 1], codes (B, h, w) int64)."""

    def __init__(self, images: BatchedImages, latents: LatentDataset) -> None:
        self.images, self.latents = images, latents

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images.__getitems__(indices)[0], self.latents.__getitems__(list(indices))[0]


class CodeDecoder(VQVAE):
    """A VQ-VAE whose forward pass decodes code grids, the module a tuning run trains (and DDP wraps): its
    weights are the VQ-VAE's, name for name, so the folder it saves loads as a `VQVAE`."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__(config)
        self.encoder.requires_grad_(False)
        self.quantizer.requires_grad_(False)  # a straight-through codebook is a parameter; an EMA one, buffers

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:  # type: ignore[override]
        """codes (B, h, w) -> (means (B, C, H, W), log-scales or None), as `Decoder.forward`."""
        return self.decoder(self.quantizer.lookup(codes))


class DecoderTask(VQVAETask):
    """The TrainTask of a tuning run: the decoder's loss on exported codes; evaluation and figures as the
    VQ-VAE's (held-out images through the whole model, so PSNR compares with its own)."""

    stage = "decoder"

    def __init__(self, model: CodeDecoder, coded: CodedImages, held_out: BatchedImages, eval_images: int,
                 seed: int = 0) -> None:
        super().__init__(model, coded.images, held_out, eval_images, seed)
        self.coded = coded

    def train_data(self) -> Dataset:
        return self.coded

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult:
        images, codes = (t.to(device, non_blocking=True) for t in batch)
        means, log_scales = model(codes)
        return StepResult(*reconstruction_loss(images, means, log_scales))

    def after_step(self, step: int) -> dict[str, float]:
        return {}  # the codebook is frozen: no dead-code restarts


def _same_dataset(a: Any, b: Any) -> bool:
    """Two manifests' dataset names: equal, or paths to the same folder however they were written."""
    return a == b or (isinstance(a, str) and isinstance(b, str) and Path(a).resolve() == Path(b).resolve())


def check_pairing(model: VQVAE, vqvae_dir: str | Path, latents: LatentDataset, images: BatchedImages) -> None:
    """Refuse latents that are not these images' codes under this VQ-VAE, each in one line: images of another
    shape than the model's, another VQ-VAE's export (by its weights' sha-256, when the manifest records one),
    another dataset or split, or another row count."""
    info = images.info
    model.config.check_images(info.channels, info.height, info.width)
    latents.check_fits(model.config.codebook_size, model.config.grid, what=f"the VQ-VAE in {vqvae_dir}")
    recorded = latents.manifest.vqvae.get("sha256")
    if recorded and recorded != file_sha256(weights_path(vqvae_dir)):
        raise VQGenError(f"{latents.directory} was exported by another VQ-VAE than {vqvae_dir} (its weights' sha-256 "
                         "differs); export the images with this VQ-VAE first")
    source, given = latents.manifest.source, info.source()
    if source and not (_same_dataset(source.get("dataset"), given["dataset"]) and source.get("split") == given["split"]):
        raise VQGenError(f"{latents.directory} holds the codes of {source.get('dataset')} ({source.get('split')}), not "
                         f"of {given['dataset']} ({given['split']}); give --data the images the latents were exported from")
    if latents.manifest.count != len(images):
        raise VQGenError(f"{latents.directory} holds {latents.manifest.count} code grids but the images are "
                         f"{len(images)}; give the split the latents were exported from (with --flip when they hold "
                         "its mirror images too)")


def tune_decoder(vqvae_dir: str | Path, latents_dir: str | Path, images: BatchedImages, held_out: BatchedImages,
                 train: TrainConfig, out_dir: str | Path, eval_images: int = 2000,
                 progress: bool = True) -> dict[str, Any]:
    """Tune (or resume tuning) the decoder of the VQ-VAE in `vqvae_dir` on `images`, whose codes are the latent
    dataset in `latents_dir` row for row, into `out_dir`, a VQ-VAE folder; return the final evaluation."""
    latents = LatentDataset(latents_dir)
    seed_everything(train.seed)
    model = CodeDecoder.from_pretrained(vqvae_dir)
    check_pairing(model, vqvae_dir, latents, images)
    task = DecoderTask(model, CodedImages(images, latents), held_out, eval_images, train.seed)
    return Trainer(task, train, out_dir, progress=progress).fit()
