"""Drawing and scoring sets of images against real held-out ones, on the judge's features.

A set's scores (`Scores`): the Frechet distance and the precision and recall of Kynkaanniemi et al.
2019 (pipeline/evaluation/fidelity.py) against a reference set's features, and the share of images
the judge gives the class they were drawn for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vqgen.data.images import BatchedImages
from vqgen.engine.grids import save_grid
from vqgen.pipeline.evaluation.fidelity import fidelity
from vqgen.pipeline.evaluation.held_out import HeldOut, images_of
from vqgen.pipeline.evaluation.judge import Judge
from vqgen.pipeline.generate import Generator
from vqgen.stage2_prior.sampling import SamplingOptions

GRID_PER_CLASS = 10  # images of each class in a setting's grid


@dataclass(frozen=True)
class Scores:
    frechet: float
    class_accuracy: float | None  # None: unlabelled images
    precision: float
    recall: float


def score(judge: Judge, images: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> Scores:
    """`images` (N, C, H, W) against the `reference` features (M, D); class accuracy against `labels` (N,)."""
    features, predicted = judge.embed(images)
    figures = fidelity(reference.numpy(), features.numpy())
    accuracy = None if labels is None else float((predicted == labels).double().mean())
    return Scores(figures.frechet, accuracy, figures.precision, figures.recall)


@torch.no_grad()
def reconstruct(generator: Generator, images: torch.Tensor) -> torch.Tensor:
    """The images (N, C, H, W) through the VQ-VAE, in [0, 1]."""
    outputs = [generator.vqvae(chunk.to(generator.device)).reconstruction.float().clamp(0, 1).cpu()
               for chunk in images.split(256)]
    return torch.cat(outputs)


def setting_name(options: SamplingOptions) -> str:
    """`samples-t0.9-topkall-toppall-g1`: a grid's file name (with .png) and its TensorBoard set; a
    schedule other than constant and an interval below 1 add `-linear`, `-first0.5`."""
    schedule = "" if options.guidance_schedule == "constant" else f"-{options.guidance_schedule}"
    interval = "" if options.guidance_interval == 1 else f"-first{options.guidance_interval:g}"
    return (f"samples-t{options.temperature:g}-topk{options.top_k or 'all'}-topp{options.top_p or 'all'}"
            f"-g{options.guidance:g}{schedule}{interval}")


class Scorer:
    """Draws sample sets for one run's held-out rows, class by class as the real ones, and holds the judge's
    features of the two references they are scored against."""

    def __init__(self, generator: Generator, judge: Judge, rows: HeldOut, test: BatchedImages) -> None:
        self.generator, self.judge, self.rows = generator, judge, rows
        self.conditional = bool(generator.num_classes) and rows.labels is not None
        self.labels = rows.labels if self.conditional else None
        self.selection = judge.embed(images_of(test, rows.selection))[0]  # (2n, D)
        self.reference = judge.embed(images_of(test, rows.reference))[0]  # (2n, D)

    def labels_of(self, per_group: int) -> torch.Tensor | None:
        """The labels of `per_group` samples of each class, class by class (None: unconditional)."""
        if self.labels is None:
            return None
        return self.labels.unflatten(0, (-1, self.rows.per_group))[:, :per_group].flatten()

    def draw(self, options: SamplingOptions, seed: int, per_group: int | None = None) -> torch.Tensor:
        """`per_group` samples of each class (group; default: as many as real images), class by class."""
        per_group = per_group or self.rows.per_group
        return self.generator.sample(per_group * self.rows.groups, self.labels_of(per_group), options, seed=seed,
                                     progress=False).images

    def grid(self, images: torch.Tensor, path: Path) -> Image.Image:
        """Up to GRID_PER_CLASS images of each class (group), a row each."""
        per_group = len(images) // self.rows.groups
        shown = images.unflatten(0, (-1, per_group))[:, :GRID_PER_CLASS].flatten(0, 1)
        return save_grid(path, shown, nrow=min(GRID_PER_CLASS, per_group))


@dataclass(frozen=True)
class Scored:
    """A setting's scores on `n` samples, against the selection reference while searching, else the final one."""

    setting: SamplingOptions
    scores: Scores
    n: int
