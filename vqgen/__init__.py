"""vqgen: two-stage discrete-latent image generation, a VQ-VAE and a gated PixelCNN prior over its codes.

    import vqgen
    generator = vqgen.Generator.from_pretrained("runs/demo/vqvae", "runs/demo/prior")
    samples = generator.sample(16, labels=3)

The repository's folders are this package's parts: `vqgen.data` (image datasets, the latent
dataset format), `vqgen.engine` (what both stages share: training loop, checkpoints, torchrun,
atomic files), `vqgen.stage1_vqvae`, `vqgen.stage2_prior`, and `vqgen.pipeline` (the command
line, the end-to-end run, sampling to images). The names below are the public API.

They load on first use (PEP 562), so `import vqgen` and a data loader worker that unpickles a
dataset import only what they touch, not the whole pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.6.0"

# public name -> (module, name there)
_PUBLIC = {
    "BatchedImages": ("vqgen.data.images", "BatchedImages"),
    "ImageDataset": ("vqgen.data.images", "ImageDataset"),
    "open_dataset": ("vqgen.data.images", "open_dataset"),
    "LatentDataset": ("vqgen.data.latents", "LatentDataset"),
    "LatentManifest": ("vqgen.data.latents", "LatentManifest"),
    "read_manifest": ("vqgen.data.latents", "read_manifest"),
    "UsageError": ("vqgen.engine.errors", "UsageError"),
    "VQGenError": ("vqgen.engine.errors", "VQGenError"),
    "TrainConfig": ("vqgen.engine.train_config", "TrainConfig"),
    "Generator": ("vqgen.pipeline.generate", "Generator"),
    "Samples": ("vqgen.pipeline.generate", "Samples"),
    "save_samples": ("vqgen.pipeline.generate", "save_samples"),
    "EvalOptions": ("vqgen.pipeline.evaluation.search", "EvalOptions"),
    "RunSpec": ("vqgen.pipeline.run", "RunSpec"),
    "run": ("vqgen.pipeline.run", "run"),
    "VQVAEConfig": ("vqgen.stage1_vqvae.config", "VQVAEConfig"),
    "export_latents": ("vqgen.stage1_vqvae.export", "export_latents"),
    "VQVAE": ("vqgen.stage1_vqvae.model", "VQVAE"),
    "train_vqvae": ("vqgen.stage1_vqvae.train", "train_vqvae"),
    "PriorConfig": ("vqgen.stage2_prior.config", "PriorConfig"),
    "GatedPixelCNN": ("vqgen.stage2_prior.model", "GatedPixelCNN"),
    "SamplingOptions": ("vqgen.stage2_prior.sampling", "SamplingOptions"),
    "sample_codes": ("vqgen.stage2_prior.sampling", "sample"),
    "train_prior": ("vqgen.stage2_prior.train", "train_prior"),
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vqgen' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
