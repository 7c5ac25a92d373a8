"""Named end-to-end presets: which model sizes and how many steps `vqgen run --preset` uses, sized
for the data it is given.

The rule, for a train split of C x H x W images and N of them (`DataShape`):
- the code grid stays near 8 x 8 for one channel (7 x 7 for 28 x 28: 2**downsamples = the image side
  / 8, at least 4) and, in `default`, near 16 x 16 for color (the side / 16, at least 2; `quick` and
  `paper` keep 8 x 8), at most the largest power of two dividing both sides. Natural images lose
  their edges in a 4 x 4 cell per code, so on CIFAR-10 a 16 x 16 grid reconstructs far closer to
  the real images than 8 x 8 does, and its samples score better too, for 4x the prior's positions
  (docs/experiments.md, "Color images");
- color images (C = 3) get the color sizes (a wider VQ-VAE with more and wider codes, both stages
  trained on the horizontal mirror images too), measured on CIFAR-10 for 32 x 32; one-channel images
  the grayscale sizes, measured on MNIST and the built-in digits (digits are not mirror-symmetric);
- few images (N < SMALL_DATA) get dropout in the prior, as a 15-layer prior overfits a few thousand
  grids; no batch is larger than the split.
A flag given on the command line still wins over any of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from vqgen.data.images import DataShape
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage2_prior.config import PriorConfig

SMALL_DATA = 10_000  # train images below which the prior gets dropout
SMALL_DATA_DROPOUT = 0.1
GRAY_GRID, COLOR_GRID = 8, 16  # codes along the shorter side the grid is sized near


@dataclass(frozen=True)
class RunPreset:
    vqvae: VQVAEConfig
    vqvae_train: TrainConfig
    prior: PriorConfig
    prior_train: TrainConfig
    eval_images: int = 2000
    evaluate: bool = True  # run `vqgen eval` at the end
    flip: bool = False     # train both stages on the mirror images too (data/images.py, Mirrored)
    minutes: float | None = None  # a run sized in wall time (pipeline/budget.py); None: in the steps above
    vqvae_share: float = 0.15     # of the minutes, the VQ-VAE's training time
    decoder_train: TrainConfig | None = None  # tune the decoder alone on the exported codes; None: not tuned
    decoder_share: float = 0.06   # of the minutes, the decoder tuning's time


DECODER_TUNING = TrainConfig(steps=2000, batch_size=64, lr=1e-3, precision="auto", schedule="cooldown",
                             eval_every=1000, checkpoint_every=500)
"""How the default preset tunes the decoder (stage1_vqvae/decoder_tuning.py), and `vqgen run --tune-decoder`
where a preset does not: at the VQ-VAE's rate, decaying to zero over the last fifth (docs/experiments.md,
"Tuning the decoder")."""


def downsamples(shape: DataShape, color_grid: int = COLOR_GRID) -> int:
    """Halvings that bring the shorter image side near 8 codes (`color_grid` for color images), at least
    2 for an 8-code grid (a 4 x 4 cell per code), and no more than both sides can take (100 x 100
    images halve twice, to 25 x 25)."""
    target = color_grid if shape.channels == 3 else GRAY_GRID
    wanted = max(1 if target > GRAY_GRID else 2, round(math.log2(min(shape.height, shape.width) / target)))
    divisible = min((side & -side).bit_length() - 1 for side in (shape.height, shape.width))  # powers of 2 in each
    return max(1, min(wanted, divisible))


def fitted(preset: RunPreset, shape: DataShape, color_grid: int = COLOR_GRID) -> RunPreset:
    """The preset's sizes adapted to the data by the module's rule (grid, dataset size, batch)."""
    dropout = SMALL_DATA_DROPOUT if shape.count < SMALL_DATA else preset.prior.dropout
    return replace(
        preset, vqvae=replace(preset.vqvae, in_channels=shape.channels, image_height=shape.height,
                              image_width=shape.width, downsamples=downsamples(shape, color_grid)),
        vqvae_train=_batch_within(preset.vqvae_train, shape), prior=replace(preset.prior, dropout=dropout),
        prior_train=_batch_within(preset.prior_train, shape),
        decoder_train=preset.decoder_train and _batch_within(preset.decoder_train, shape))


def _batch_within(train: TrainConfig, shape: DataShape) -> TrainConfig:
    """No batch larger than the train split."""
    return replace(train, batch_size=min(train.batch_size, shape.count))


def with_decoder_tuning(preset: RunPreset, shape: DataShape, tune: bool | None) -> RunPreset:
    """`preset` whose run tunes its decoder (`tune` True: by the preset's tuning, else DECODER_TUNING) or does not
    (False); None: as the preset says."""
    if tune is None:
        return preset
    if not tune:
        return replace(preset, decoder_train=None)
    return replace(preset, decoder_train=_batch_within(preset.decoder_train or DECODER_TUNING, shape))


def quick(shape: DataShape) -> RunPreset:
    """A smoke run: a fraction of the default's time, without eval; the samples are rough."""
    return fitted(RunPreset(
        vqvae=VQVAEConfig.small(hidden=32, res_hidden=16, code_dim=16, codebook_size=64, restart_every=50),
        vqvae_train=TrainConfig(steps=300, batch_size=64, lr=2e-3, precision="auto", eval_every=300,
                                checkpoint_every=100),
        prior=PriorConfig.small(channels=32, layers=8),
        prior_train=TrainConfig(steps=400, batch_size=64, lr=2e-3, precision="auto", ema=0.99, eval_every=400,
                                checkpoint_every=100),
        eval_images=500, evaluate=False), shape, color_grid=GRAY_GRID)  # 4x fewer positions than 16 x 16


def default(shape: DataShape) -> RunPreset:
    """The main job of `vqgen run`: samples near real data within minutes on a 2-core CPU, eval
    included (its time on a named machine: docs/performance.md; its figures: docs/results.md).

    Grayscale, chosen by `vqgen eval` and held-out bits per code on real MNIST and the built-in digits
    (docs/experiments.md, "Grayscale preset"): bf16 where the CPU computes it natively buys more steps
    in the same time; the prior is undertrained at this budget, so a constant, higher learning rate
    with a weight average (which at under 4,500 steps averages about the last fifth of training,
    engine/averaging.py) beats a cosine decay, warm-up and dropout; K=128 codes model better than 256
    at this prior size (sharper samples, better class accuracy) although 256 reconstruct better. The
    decoder is then tuned alone on the exported codes (`DECODER_TUNING`, well under a minute): on the
    built-in digits' codes its reconstructions went from 1.7x the floor to 1.3x, its samples from 1.6x to
    1.5x (docs/experiments.md, "Tuning the decoder"). Color: see `_color`.
    """
    if shape.channels == 3:
        return fitted(_color(), shape)
    return fitted(RunPreset(
        vqvae=VQVAEConfig.small(hidden=64, res_hidden=32, code_dim=16, codebook_size=128),
        vqvae_train=TrainConfig(steps=2500, batch_size=64, lr=1e-3, precision="auto", eval_every=500,
                                checkpoint_every=500),
        prior=PriorConfig.small(layers=12),
        prior_train=TrainConfig(steps=1500, batch_size=64, lr=2e-3, precision="auto", ema=0.999, eval_every=500,
                                checkpoint_every=250),
        decoder_train=DECODER_TUNING), shape)


def _color() -> RunPreset:
    """Color images, chosen on CIFAR-10 (docs/experiments.md, "Color images" and "The color prior at equal wall time";
    the run's time and figures on a named machine: docs/performance.md, docs/results.md). Of the levers tried, the
    grid (16 x 16 codes, module docstring) moved every figure most; more and wider codes (K=512, D=64) and
    horizontal flips in both stages reconstruct better at the same grid, a wider encoder costs twice the time for
    less. The prior models what the samples show, so it gets most of the run's time (1,650 steps of 256-position
    grids) and the VQ-VAE what is left after export, judge and eval; sized in minutes instead (`--minutes`), the
    VQ-VAE gets a tenth of them: a fifth reconstructed better and sampled worse, its codes costing the prior 0.5
    bits each. The prior is compiled: a fifth more steps in its time, for under a minute of compilation
    (docs/experiments.md, "Speed"). After export the decoder is tuned alone on the codes for 2,000 steps (about 2
    minutes; `DECODER_TUNING`): on the same codes its samples and reconstructions come closer to the real images
    (docs/experiments.md, "Tuning the decoder")."""
    return RunPreset(
        vqvae=VQVAEConfig.small(hidden=128, res_hidden=64, code_dim=64, codebook_size=512),
        vqvae_train=TrainConfig(steps=1600, batch_size=64, lr=1e-3, precision="auto", eval_every=500,
                                checkpoint_every=500),
        prior=PriorConfig.small(layers=12),
        prior_train=TrainConfig(steps=1650, batch_size=64, lr=2e-3, precision="auto", ema=0.999, eval_every=500,
                                checkpoint_every=250, compile=True),
        decoder_train=DECODER_TUNING, flip=True, vqvae_share=0.1)


def paper(shape: DataShape) -> RunPreset:
    """The papers' sizes, for a GPU: 256-wide VQ-VAE with K=512 (the CIFAR-10 model of van den Oord
    et al. 2017 for 32 x 32 color images), a 20-layer prior."""
    return fitted(RunPreset(
        vqvae=VQVAEConfig.paper(),
        vqvae_train=TrainConfig(steps=20000, batch_size=128, lr=2e-4, precision="auto", eval_every=2000,
                                checkpoint_every=1000),
        prior=PriorConfig.paper(),
        prior_train=TrainConfig(steps=30000, batch_size=128, lr=3e-4, precision="auto", ema=0.9995,
                                eval_every=2000, checkpoint_every=1000),
        eval_images=10000), shape, color_grid=GRAY_GRID)  # the paper's 8 x 8 codes for 32 x 32


RUN_PRESETS: dict[str, Callable[[DataShape], RunPreset]] = {"quick": quick, "default": default, "paper": paper}
