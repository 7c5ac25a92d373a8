"""The run presets' rule: sizes follow the data (channels, image side, number of images)."""

from __future__ import annotations

import pytest

from vqgen.data.images import DataShape
from vqgen.pipeline.presets import RUN_PRESETS, SMALL_DATA, SMALL_DATA_DROPOUT, downsamples


@pytest.mark.parametrize(("height", "width", "halvings"), [
    (28, 28, 2), (32, 32, 2), (64, 64, 3), (128, 96, 4), (100, 100, 2), (256, 256, 5), (30, 30, 1)])
def test_the_grid_stays_near_eight_codes_within_what_the_sides_can_halve(height: int, width: int,
                                                                          halvings: int) -> None:
    assert downsamples(DataShape(1, height, width, 60_000)) == halvings


@pytest.mark.parametrize(("side", "halvings"), [(32, 1), (28, 1), (64, 2), (128, 3), (16, 1), (30, 1)])
def test_a_color_grid_stays_near_sixteen_codes(side: int, halvings: int) -> None:
    assert downsamples(DataShape(3, side, side, 50_000)) == halvings
    assert RUN_PRESETS["paper"](DataShape(3, side, side, 50_000)).vqvae.downsamples == downsamples(
        DataShape(1, side, side, 50_000))  # the papers' 8 x 8 codes


def test_color_images_get_the_color_sizes_and_mirror_images() -> None:
    gray = RUN_PRESETS["default"](DataShape(1, 32, 32, 50_000))
    color = RUN_PRESETS["default"](DataShape(3, 32, 32, 50_000))
    assert color.flip and not gray.flip
    assert color.vqvae.codebook_size > gray.vqvae.codebook_size and color.vqvae.hidden > gray.vqvae.hidden
    assert color.vqvae.downsamples == 1 and gray.vqvae.downsamples == 2  # 16 x 16 and 8 x 8 codes


def test_few_images_get_prior_dropout_and_no_batch_larger_than_the_split() -> None:
    many = RUN_PRESETS["default"](DataShape(1, 28, 28, SMALL_DATA))
    few = RUN_PRESETS["default"](DataShape(1, 28, 28, 40))
    assert few.prior.dropout == SMALL_DATA_DROPOUT and many.prior.dropout == 0.0
    assert few.vqvae_train.batch_size == few.prior_train.batch_size == 40
    assert many.vqvae_train.batch_size == 64


@pytest.mark.parametrize("name", sorted(RUN_PRESETS))
def test_every_preset_fits_every_kind_of_data(name: str) -> None:
    for shape in (DataShape(1, 28, 28, 60_000), DataShape(3, 32, 32, 50_000), DataShape(3, 64, 48, 500)):
        preset = RUN_PRESETS[name](shape)  # the config checks its image against the grid as it is built
        assert (preset.vqvae.in_channels, preset.vqvae.image_height, preset.vqvae.image_width) == shape[:3]
        assert shape.height % 2 ** preset.vqvae.downsamples == 0 and shape.width % 2 ** preset.vqvae.downsamples == 0


def test_the_flip_help_says_what_each_preset_does(capsys: pytest.CaptureFixture) -> None:
    """Mirror images: on for color images in the default preset only; --help must say no more."""
    from vqgen.pipeline.cli import main

    flips = {(name, channels): RUN_PRESETS[name](DataShape(channels, 32, 32, 50_000)).flip
             for name in RUN_PRESETS for channels in (1, 3)}
    assert [key for key, flip in flips.items() if flip] == [("default", 3)]
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "on for color images in --preset default, off in quick and paper and for grayscale images" in text


def test_a_preset_sized_in_minutes_caps_its_steps_and_zero_minutes_keep_them() -> None:
    """Sized in minutes, a run's steps are a cap no run reaches; `--minutes 0` runs the preset's steps (even
    for a preset that states minutes); `--steps-of` exact steps with no time budget."""
    from dataclasses import replace

    from vqgen.pipeline.spec import UNCAPPED, RunSpec

    color = RUN_PRESETS["default"](DataShape(3, 32, 32, 50_000))
    assert RunSpec.from_preset(color, "photos").minutes is None  # sized in steps unless asked
    sized = RunSpec.from_preset(color, "photos", minutes=30)
    assert sized.minutes == 30 and sized.prior_train.steps == sized.vqvae_train.steps == UNCAPPED
    assert sized.vqvae_share == color.vqvae_share
    stating = replace(color, minutes=20.0)
    assert RunSpec.from_preset(stating, "photos").minutes == 20
    steps = RunSpec.from_preset(stating, "photos", minutes=0)
    assert steps.minutes is None and steps.prior_train.steps == color.prior_train.steps
    exact = RunSpec.from_preset(stating, "photos", steps={"vqvae": 7, "prior": 9})
    assert exact.minutes is None and (exact.vqvae_train.steps, exact.prior_train.steps) == (7, 9)
    assert (exact.vqvae_train.max_seconds, exact.prior_train.max_seconds) == (0, 0)
