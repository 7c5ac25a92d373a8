"""The judge: a CNN trained once per run on the dataset's own train split, whose penultimate layer
gives the features that sample quality is measured on (pipeline/evaluation/fidelity.py).

It is a measuring instrument, so everything about it is fixed by the image's channels: the
architecture (`_body`) and its training recipe (`RECIPES`, seed 0). One-channel images get the
small CNN (Adam 3e-3, batch 128, two epochs: 98.9% on MNIST in 20 s on a 2-core CPU); color images a
five-layer CNN with batch normalisation, trained for five epochs with crops and flips under a cosine
schedule (77-79% on CIFAR-10's held-out tenth in under 4 minutes on a 2-core CPU with native bf16),
as a judge that cannot tell the classes of color images apart cannot rank their samples either. It
must not be tuned to move the figures.

- A labelled dataset: the judge classifies the dataset's classes; its accuracy on a sample says
  whether the sample shows the class it was conditioned on.
- An unlabelled dataset: the judge learns to tell how an image was rotated (0, 90, 180, 270 degrees;
  0 or 180 for non-square images), the self-supervised task of Gidaris et al. 2018 ("Unsupervised
  Representation Learning by Predicting Image Rotations", arXiv 1803.07728), which needs shapes
  and layout, not labels; class accuracy is then undefined.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vqgen.data.images import BatchedImages
from vqgen.engine.checkpoint import Pretrained, saved_step
from vqgen.engine.errors import VQGenError
from vqgen.engine.metrics_log import METRICS_FILE, read_metrics
from vqgen.engine.runtime import seed_everything
from vqgen.engine.train_config import TrainConfig
from vqgen.engine.train_task import StepResult
from vqgen.engine.trainer import Trainer

SEED = 0
FEATURES = 128
EVAL_BATCH = 500


@dataclass(frozen=True)
class Recipe:
    """How a judge of one architecture is trained: fixed, so that it stays one instrument."""

    epochs: int
    batch: int
    lr: float
    max_steps: int
    warmup: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    augment: bool = False     # random crops (4-pixel reflected margin) and horizontal flips
    precision: str = "fp32"


# small: the cheapest setting that clears 98.5% test accuracy on MNIST (98.9%, 20 s on a 2-core CPU).
# color: the cheapest that clears 75% on CIFAR-10's held-out tenth within 5 minutes on a 2-core CPU
# with native bf16 (docs/experiments.md, "The judge").
RECIPES = {"small": Recipe(epochs=2, batch=128, lr=3e-3, max_steps=4000),
           "color": Recipe(epochs=5, batch=128, lr=3e-3, max_steps=6000, warmup=200, schedule="cosine",
                           augment=True, precision="auto")}


@dataclass(frozen=True)
class JudgeConfig:
    """What the judge is built for; its layers are fixed (see `Judge`): `arch` "small" for one-channel
    images, "color" for three."""

    in_channels: int
    image_height: int
    image_width: int
    num_classes: int
    task: Literal["classes", "rotations"] = "classes"
    arch: Literal["small", "color"] = "small"

    @classmethod
    def for_data(cls, info: Any, labelled: bool) -> "JudgeConfig":
        square = info.height == info.width
        arch = "color" if info.channels == 3 else "small"
        if labelled:
            return cls(info.channels, info.height, info.width, int(info.num_classes), arch=arch)
        return cls(info.channels, info.height, info.width, 4 if square else 2, "rotations", arch)

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.arch]


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _body(config: JudgeConfig) -> nn.Sequential:
    """small: two 3x3 conv + max-pool stages (16, 32 channels), pooled to 7x7, a 128-unit feature layer
    (identity pooling at MNIST's 28x28). color: five 3x3 conv-BN-ReLU layers in three stages (32; 64, 64;
    128, 128 channels) with max pools, global average pooling, a 128-unit feature layer. Adaptive
    pooling makes either fit any image size."""
    if config.arch == "small":
        return nn.Sequential(
            nn.Conv2d(config.in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(32 * 49, FEATURES), nn.ReLU())
    return nn.Sequential(
        *_conv(config.in_channels, 32), nn.MaxPool2d(2), *_conv(32, 64), *_conv(64, 64), nn.MaxPool2d(2),
        *_conv(64, 128), *_conv(128, 128), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, FEATURES), nn.ReLU())


class Judge(nn.Module, Pretrained):
    """A fixed classifier whose penultimate layer (FEATURES units) embeds images for eval (`_body`)."""

    kind = "judge"
    config_class = JudgeConfig

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__()
        self.config = config
        self.body = _body(config)
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(FEATURES, config.num_classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, FEATURES)."""
        return self.body(images - 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, classes)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, F), predicted class (N,)) in eval batches, on the judge's device, returned on CPU."""
        self.eval()
        device = next(self.parameters()).device
        features, predictions = [], []
        for chunk in images.split(EVAL_BATCH):
            f = self.features(chunk.to(device).float())
            features.append(f.double().cpu())
            predictions.append(self.head(f).argmax(1).cpu())
        return torch.cat(features), torch.cat(predictions)


def augment(images: torch.Tensor) -> torch.Tensor:
    """Random crops of the images with a 4-pixel reflected margin, and random horizontal flips, one draw
    per image (B, C, H, W): the standard CIFAR augmentation."""
    b, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")  # (B, C, H + 8, W + 8)
    dy, dx = torch.randint(0, 9, (2, b), device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (B, 1, 1, W)
    cropped = padded[torch.arange(b, device=images.device)[:, None, None, None],
                     torch.arange(images.shape[1], device=images.device)[None, :, None, None], rows, cols]
    flip = torch.rand(b, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def rotate(images: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image (B, C, H, W) by its own number of quarter turns (B,)."""
    out = images.clone()
    for turns in quarter_turns.unique().tolist():
        chosen = quarter_turns == turns
        out[chosen] = torch.rot90(images[chosen], int(turns), dims=(2, 3))
    return out


def rotation_targets(config: JudgeConfig, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(count,) rotation classes drawn uniformly: 0..3, or 0..1 when the images are not square (`quarter_turns`)."""
    return torch.randint(0, config.num_classes, (count,), generator=generator)


def quarter_turns(config: JudgeConfig, targets: torch.Tensor) -> torch.Tensor:
    return targets if config.num_classes == 4 else targets * 2


class JudgeTask:
    """The TrainTask of the judge: cross-entropy on classes, or on rotations drawn per image."""

    stage = "judge"
    items_name = "images"

    def __init__(self, model: Judge, train: BatchedImages, test: BatchedImages) -> None:
        self.model, self.train, self.test = model, train, test

    def train_data(self) -> Dataset:
        return self.train

    def inputs(self, images: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The images the judge sees and the targets it must predict."""
        config = self.model.config
        if config.task == "classes":
            return images, labels
        targets = rotation_targets(config, len(images), generator).to(images.device)
        return rotate(images, quarter_turns(config, targets)), targets

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult:
        images, targets = self.inputs(batch[0].to(device), batch[1].to(device))
        if self.model.config.recipe.augment:
            images = augment(images)
        logits = model(images)
        loss = F.cross_entropy(logits.float(), targets)
        return StepResult(loss, {"accuracy": (logits.argmax(1) == targets).float().mean()})

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Accuracy on the whole test split (rotations drawn from a fixed generator)."""
        device, generator = next(model.parameters()).device, torch.Generator().manual_seed(SEED)
        correct = 0
        for start in range(0, len(self.test), EVAL_BATCH):
            images, labels = self.test.__getitems__(list(range(start, min(start + EVAL_BATCH, len(self.test)))))
            images, targets = self.inputs(images, labels, generator)
            correct += int((model(images.to(device)).argmax(1).cpu() == targets).sum())
        return {"test_accuracy": correct / len(self.test)}


def judge_steps(config: JudgeConfig, train_size: int) -> int:
    recipe = config.recipe
    return max(1, min(recipe.max_steps, recipe.epochs * (train_size // recipe.batch)))


def fit_judge(config: JudgeConfig, train: BatchedImages, test: BatchedImages, out_dir: str | Path, steps: int,
              device: str = "auto", progress: bool = True, tensorboard: str | None = None,
              num_workers: int = 0, alone: bool = False) -> tuple[Judge, float]:
    """A judge of `config` trained by the fixed recipe for `steps` steps into `out_dir` (resumed, or read
    back when done), and its accuracy on `test`; `alone`: in this process only, under torchrun too."""
    out_dir = Path(out_dir)
    if saved_step(out_dir) < steps:
        seed_everything(SEED)
        recipe = config.recipe
        train_config = TrainConfig(steps=steps, batch_size=min(recipe.batch, len(train)), lr=recipe.lr, seed=SEED,
                                   precision=recipe.precision, device=device, num_workers=num_workers, log_every=50,
                                   eval_every=steps, checkpoint_every=max(1, steps // 4),
                                   warmup=min(recipe.warmup, steps // 2), schedule=recipe.schedule,
                                   tensorboard=tensorboard)
        Trainer(JudgeTask(Judge(config), train, test), train_config, out_dir, progress=progress, alone=alone).fit()
    judge = Judge.from_pretrained(out_dir)
    if judge.config != config:
        raise VQGenError(f"{out_dir} holds a judge for other data ({judge.config}; this data needs {config}); "
                         "remove that directory to train a new judge")
    accuracy = [r["test_accuracy"] for r in read_metrics(out_dir / METRICS_FILE) if "test_accuracy" in r]
    return judge, float(accuracy[-1])


def train_judge(train: BatchedImages, test: BatchedImages, out_dir: str | Path, device: str = "auto",
                progress: bool = True, tensorboard: str | None = None, num_workers: int = 0) -> tuple[Judge, float]:
    """The run's judge and its test accuracy: trained once into `out_dir`, then read back from there.
    `tensorboard` (a directory for its events), `device` and `num_workers` (loader processes decoding
    a streamed folder) are runtime options: they do not change the judge."""
    config = JudgeConfig.for_data(train.info, train.labels is not None)
    return fit_judge(config, train, test, out_dir, judge_steps(config, len(train)), device, progress, tensorboard,
                     num_workers)
