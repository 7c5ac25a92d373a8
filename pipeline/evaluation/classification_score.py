"""The classification accuracy score (Ravuri & Vinyals 2019, "Classification Accuracy Score for
Conditional Generative Models", arXiv 1905.10887): a classifier trained on samples only, tested on
real held-out images.

Guidance raises the judge's class accuracy by construction: it pushes every sample toward what the
judge (or any classifier) reads as its class, even as the samples lose the variety of the class.
A classifier that learns the classes from the samples alone and must then recognise real images
sees both failures: samples that do not look like their class, and samples that cover too little
of it. The same training on as many real train images is the ceiling.

Both classifiers are the judge's architecture (pipeline/evaluation/judge.py) trained by its recipe
for a fixed CAS_STEPS steps. The real images are CAS_IMAGES train rows drawn at random within each
class by the call's seed and spread over the classes; the samples match them class for class, so both
classifiers learn from as many images of each class. The samples may begin with some drawn already
(eval's fresh draw of the chosen setting): of each class the first ones count, up to its share, and
what the class still lacks is drawn here. The real classifier is kept in out_dir/real with the rows
it learns from, and trained anew when a call draws other rows (another seed, another count).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vqgen.data.images import BatchedImages, DatasetInfo, ImageDataset
from vqgen.data.rows import spread_rows
from vqgen.engine.files import read_json, write_json
from vqgen.pipeline.generate import Generator
from vqgen.pipeline.evaluation.judge import JudgeConfig, fit_judge
from vqgen.stage2_prior.sampling import SamplingOptions

CAS_IMAGES = 2000  # train images of each classifier, spread over the classes
CAS_STEPS = 300    # steps of the judge's recipe (batch 128): about 20 epochs of CAS_IMAGES
TRAINED_ON = "trained_on.json"  # beside the real classifier: the train rows it learns from


def _as_dataset(images: torch.Tensor, labels: torch.Tensor, like: DatasetInfo, name: str) -> ImageDataset:
    """Images in [0, 1] (N, C, H, W) as a labelled dataset of uint8 pixels, like the real ones."""
    pixels = images.mul(255).round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(pixels, labels, DatasetInfo(name, "train", *pixels.shape[1:], like.num_classes, like.class_names))


def _first_of_each_class(labels: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """(N,) True for the first wanted[c] of the (N,) labels of each class c, in their order."""
    one_hot = F.one_hot(labels, len(wanted))           # (N, classes)
    before = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # (N,) earlier labels of the same class
    return before < wanted[labels]


def _samples(generator: Generator, options: SamplingOptions, wanted: torch.Tensor,
             drawn: tuple[torch.Tensor, torch.Tensor] | None, seed: int,
             progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) with wanted[c] of each class c: the first of `drawn`, then what each class lacks,
    drawn with `options` in class order (so grid rows show classes)."""
    images, labels = drawn if drawn is not None else (torch.empty(0), torch.empty(0, dtype=torch.long))
    keep = _first_of_each_class(labels.long(), wanted)
    images, labels = images[keep], labels.long()[keep]
    extra = torch.repeat_interleave(torch.arange(len(wanted)), wanted - torch.bincount(labels, minlength=len(wanted)))
    if len(extra) == 0:  # a generator draws one image at least
        return images, labels
    more = generator.sample(len(extra), extra, options, seed=seed, progress=progress).images
    return torch.cat([images, more]), torch.cat([labels, extra])


def _real_dir(out_dir: Path, rows: list[int]) -> Path:
    """out_dir/real, emptied first unless its record says it learns from exactly `rows` (in this order):
    a finished classifier is then read back, an interrupted one resumed."""
    real_dir, trained_on = out_dir / "real", {"rows": rows}
    record = real_dir / TRAINED_ON
    if real_dir.exists() and not (record.is_file() and read_json(record, "CAS record") == trained_on):
        shutil.rmtree(real_dir)
    write_json(record, trained_on)
    return real_dir


def cas_images(classes: int) -> int:
    """The images of each training set: CAS_IMAGES, rounded up to a whole number of each class."""
    return math.ceil(CAS_IMAGES / classes) * classes


def classification_accuracy_score(generator: Generator, options: SamplingOptions, train: BatchedImages,
                                  test: BatchedImages, out_dir: Path, seed: int, device: str = "auto",
                                  progress: bool = True,
                                  drawn: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Test accuracy of a classifier trained on samples drawn with `options` (`samples`), and of one
    trained on as many real train images of each class (`real`, kept in out_dir/real); both on the whole
    test split; `images`: the size of each training set. `drawn`: (images, labels) sampled with `options`
    already, of which the first of each class count towards its share."""
    classes = generator.num_classes
    rows = spread_rows(train.labels, len(train), cas_images(classes), seed)
    real = _as_dataset(*train.__getitems__(rows), train.info, "real")
    wanted = torch.bincount(real.labels, minlength=classes)  # (classes,) the samples' make-up: the real one
    samples = _as_dataset(*_samples(generator, options, wanted, drawn, seed, progress), train.info, "samples")
    config = JudgeConfig.for_data(train.info, labelled=True)
    shutil.rmtree(out_dir / "samples", ignore_errors=True)  # drawn anew at each eval
    # eval runs on rank 0 alone under torchrun, so these train in this process only
    _, on_samples = fit_judge(config, samples, test, out_dir / "samples", CAS_STEPS, device, progress, alone=True)
    _, on_real = fit_judge(config, real, test, _real_dir(out_dir, rows), CAS_STEPS, device, progress, alone=True)
    return {"samples": on_samples, "real": on_real, "images": len(samples), "steps": CAS_STEPS}
