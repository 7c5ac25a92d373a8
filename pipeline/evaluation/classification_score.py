"""The classification accuracy score (Ravuri & Vinyals 2019, "Classification Accuracy Score for
Conditional Generative Models", arXiv 1905.10887): a classifier trained on samples only, tested on
real held-out images.

Guidance raises the judge's class accuracy by construction: it pushes every sample toward what the
judge (or any classifier) reads as its class, even as the samples lose the variety of the class.
A classifier that learns the classes from the samples alone and must then recognise real images
sees both failures: samples that do not look like their class, and samples that cover too little
of it. The same training on as many real train images is the ceiling.

Both classifiers are the judge's architecture (pipeline/evaluation/judge.py) trained by its recipe
for a fixed CAS_STEPS steps, on CAS_IMAGES images drawn at random within each class and spread over
the classes. The samples may begin with some drawn already (eval's fresh draw of the chosen setting),
the rest drawn here.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch

from vqgen.data.images import BatchedImages, DatasetInfo, ImageDataset
from vqgen.data.rows import spread_rows
from vqgen.pipeline.generate import Generator
from vqgen.pipeline.evaluation.judge import JudgeConfig, fit_judge
from vqgen.stage2_prior.sampling import SamplingOptions

CAS_IMAGES = 2000  # train images of each classifier, spread over the classes
CAS_STEPS = 300    # steps of the judge's recipe (batch 128): about 20 epochs of CAS_IMAGES


def _as_dataset(images: torch.Tensor, labels: torch.Tensor, like: DatasetInfo, name: str) -> ImageDataset:
    """Images in [0, 1] (N, C, H, W) as a labelled dataset of uint8 pixels, like the real ones."""
    pixels = images.mul(255).round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(pixels, labels, DatasetInfo(name, "train", *pixels.shape[1:], like.num_classes, like.class_names))


def classification_accuracy_score(generator: Generator, options: SamplingOptions, train: BatchedImages,
                                  test: BatchedImages, out_dir: Path, seed: int, device: str = "auto",
                                  progress: bool = True,
                                  drawn: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Test accuracy of a classifier trained on samples drawn with `options` (`samples`), and of one
    trained on as many real train images (`real`, kept in out_dir/real); both on the whole test split.
    `drawn`: (images, labels) sampled with `options` already, which count towards each class's share."""
    classes = generator.num_classes
    count = math.ceil(CAS_IMAGES / classes) * classes
    images, labels = drawn if drawn is not None else (torch.empty(0), torch.empty(0, dtype=torch.long))
    missing = (count // classes - torch.bincount(labels.long(), minlength=classes)).clamp(min=0)
    extra = torch.repeat_interleave(torch.arange(classes), missing)  # sorted, so grid rows show classes
    more = generator.sample_with(len(extra), extra, options, seed, progress).images
    samples = _as_dataset(torch.cat([images, more]), torch.cat([labels.long(), extra]), train.info, "samples")
    rows = spread_rows(train.labels, len(train), count, seed)
    real = _as_dataset(*train.__getitems__(rows), train.info, "real")
    config = JudgeConfig.for_data(train.info, labelled=True)
    shutil.rmtree(out_dir / "samples", ignore_errors=True)  # drawn anew at each eval
    # eval runs on rank 0 alone under torchrun, so these train in this process only
    _, on_samples = fit_judge(config, samples, test, out_dir / "samples", CAS_STEPS, device, progress, alone=True)
    _, on_real = fit_judge(config, real, test, out_dir / "real", CAS_STEPS, device, progress, alone=True)
    return {"samples": on_samples, "real": on_real, "images": len(samples), "steps": CAS_STEPS}
