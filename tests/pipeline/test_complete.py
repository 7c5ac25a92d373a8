"""`vqgen complete` and `Generator.complete` on a tiny run: the kept part stays, the grid shows original |
masked | completions, and every bad request is one line naming the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.pipeline.generate import Generator, load_sampling, save_sampling
from vqgen.stage2_prior.sampling import SamplingOptions
from helpers import TINY_RUN, vqgen


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    out = tmp_path_factory.mktemp("complete") / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN) == 0
    return out


def image_of(folder: Path) -> Path:
    return sorted((folder / "test" / "squares").iterdir())[0]


def test_keep_top_completes_below_the_kept_rows(run: Path, folder: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "done"
    assert vqgen("complete", "--vqvae", run / "vqvae", "--prior", run / "prior", "--image", image_of(folder),
                 "--keep-top", "8", "--label", "1", "-n", "5", "--device", "cpu", "--out", out) == 0
    assert "exact: the kept codes come first" in capsys.readouterr().out
    codes = np.load(out / "codes.npy")  # (5, 4, 4): 16x16 images, 4x4 pixels a code
    generator = Generator.from_pretrained(run / "vqvae", run / "prior", device="cpu")
    with Image.open(image_of(folder)) as picture:
        image = torch.from_numpy(np.array(picture)).float().div(255)[None]
    kept = generator.vqvae.encode(image[None])[0, :2]  # the top 8 rows are the first 2 code rows
    assert codes.shape == (5, 4, 4) and (codes[:, :2] == kept.numpy()).all()
    assert json.loads((out / "completion.json").read_text())["exact"] is True
    assert len(list((out / "images").iterdir())) == 5
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (7 * 16 + 8 * 2, 16 + 2 * 2)  # original | masked | 5 completions, 2-pixel gaps


def test_a_mask_completes_by_importance_resampling(run: Path, folder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 0:8] = 255  # a hole that is not a raster suffix
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "done"
    assert vqgen("complete", "--vqvae", run / "vqvae", "--prior", run / "prior", "--image", image_of(folder),
                 "--mask", tmp_path / "mask.png", "--label", "0", "-n", "3", "--proposals", "12", "--seed", "1",
                 "--device", "cpu", "--out", out) == 0
    result = json.loads((out / "completion.json").read_text())
    assert result["exact"] is False and result["proposals"] == 12 and 1 <= result["effective_sample_size"] <= 12
    assert "effective sample size" in capsys.readouterr().out
    codes = np.load(out / "codes.npy")
    assert (codes[:, 0] == codes[0, 0]).all() and (codes[:, 3] == codes[0, 3]).all()  # the known rows are kept


@pytest.mark.parametrize("extra, message", [
    (["--keep-top", "16"], "--keep-top=16 keeps the whole image"),
    (["--keep-top", "2"], "the mask leaves no code known"),
    (["--mask", "WRONG"], "the mask is 8x8 but the images are 16x16"),
    (["--keep-top", "8", "--top-p", "2"], "--top-p=2.0 is not allowed"),
])
def test_bad_completion_requests_are_one_line(run: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              extra: list[str], message: str) -> None:
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "small.png")
    extra = [str(tmp_path / "small.png") if e == "WRONG" else e for e in extra]
    code = None
    try:
        code = vqgen("complete", "--vqvae", run / "vqvae", "--prior", run / "prior", "--image", image_of(folder),
                     "--label", "0", "--device", "cpu", "--out", tmp_path / "x", *extra)
    except SystemExit as exit_info:  # argparse refuses a bad value itself
        code = exit_info.code
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "x" / "grid.png").exists()


def test_an_image_the_vqvae_was_not_built_for_is_named(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert vqgen("complete", "--vqvae", run / "vqvae", "--prior", run / "prior", "--image", tmp_path / "rgb.png",
                 "--keep-top", "8", "--label", "0", "--device", "cpu", "--out", tmp_path / "x") != 0
    assert "images are 1x20x20 but the VQ-VAE was built for 1x16x16" in capsys.readouterr().err


def test_every_sampling_option_reaches_the_completions(run: Path, folder: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """A flag left out keeps the prior's saved default; each one given replaces it, schedule and interval
    included; what ran is printed and written beside the completions."""
    prior = Path(shutil.copytree(run / "prior", tmp_path / "prior"))
    save_sampling(SamplingOptions(temperature=0.7, guidance=2.0, guidance_schedule="linear"), prior)
    out = tmp_path / "done"
    assert vqgen("complete", "--vqvae", run / "vqvae", "--prior", prior, "--image", image_of(folder), "--keep-top", "4",
                 "--label", "1", "-n", "4", "--seed", "2", "--guidance-schedule", "constant", "--guidance-interval",
                 "0.5", "--device", "cpu", "--out", out) == 0
    ran = SamplingOptions(temperature=0.7, guidance=2.0, guidance_schedule="constant", guidance_interval=0.5)
    assert load_sampling(out) == ran
    assert f"completions at {ran.describe()}" in capsys.readouterr().out
    generator = Generator.from_pretrained(run / "vqvae", prior, device="cpu")
    with Image.open(image_of(folder)) as picture:
        image = torch.from_numpy(np.array(picture)).float().div(255)[None]
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[:4] = False
    expected = generator.complete(image, mask, 4, 1, ran, seed=2, progress=False)
    np.testing.assert_array_equal(np.load(out / "codes.npy"), expected.samples.codes.numpy())
    ramped = generator.complete(image, mask, 4, 1, seed=2, progress=False)  # the saved linear schedule
    assert not torch.equal(ramped.samples.codes, expected.samples.codes)
