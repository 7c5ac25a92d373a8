"""vqgen: two-stage discrete-latent image generation, a VQ-VAE and a gated PixelCNN prior over its codes.

    import vqgen
    generator = vqgen.Generator.from_pretrained("runs/demo/vqvae", "runs/demo/prior")
    samples = generator.sample(16, labels=3)

The repository's folders are this package's parts: `vqgen.data` (image datasets, the latent
dataset format), `vqgen.engine` (what both stages share: training loop, checkpoints, torchrun,
atomic files), `vqgen.stage1_vqvae`, `vqgen.stage2_prior`, and `vqgen.pipeline` (the command
line, the end-to-end run, sampling to images). The names below are the public API.
"""

__version__ = "0.2.0"

from vqgen.data.images import BatchedImages, ImageDataset, open_dataset
from vqgen.data.latents import LatentDataset, LatentManifest, read_manifest
from vqgen.engine.errors import UsageError, VQGenError
from vqgen.engine.trainer import TrainConfig
from vqgen.pipeline.generate import Generator, Samples, save_samples
from vqgen.pipeline.run import RunSpec, run
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.export import export_latents
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import sample as sample_codes
from vqgen.stage2_prior.train import train_prior

__all__ = [
    "BatchedImages", "GatedPixelCNN", "Generator", "ImageDataset", "LatentDataset", "LatentManifest", "PriorConfig", "RunSpec",
    "Samples", "TrainConfig", "UsageError", "VQGenError", "VQVAE", "VQVAEConfig", "__version__", "export_latents",
    "open_dataset", "read_manifest", "run", "sample_codes", "save_samples", "train_prior", "train_vqvae",
]
