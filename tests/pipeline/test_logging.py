"""Where people look: TensorBoard events of a tiny run read back, the missing-package error, the axes of
curves.png, and printed figures with their units."""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vqgen.engine.checkpoint import saved_step
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.train_config import TrainConfig
from vqgen.engine.units import codes, describe
from vqgen.pipeline.cli import main
from vqgen.pipeline.evaluation.scoring import setting_name
from vqgen.pipeline.plots import Panel, linear_axis, log_axis, plot_curves, tick_label
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.sampling import SamplingOptions
from vqgen.stage2_prior.train import train_prior

from helpers import TINY_RUN, structured_latents, vqgen

MISSING = "--tensorboard needs the tensorboard package: pip install 'vqgen[tensorboard]'"
def events(directory: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    """A tiny `vqgen run --eval --tensorboard` of the two-class folder."""
    out = tmp_path_factory.mktemp("logged") / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN, "--eval", "--tensorboard") == 0
    return out


def test_every_stage_of_a_run_gets_its_scalars_and_images(logged: Path) -> None:
    boards = logged / "tensorboard"
    assert sorted(p.name for p in boards.iterdir()) == ["eval", "judge", "prior", "samples", "vqvae"]
    scored = json.loads((logged / "eval.json").read_text())["selection"]
    settings = list(dict.fromkeys(setting_name(SamplingOptions.from_record(s)) for s in scored))
    assert len(settings) == 17  # the default search: 9 guidings, then 8 temperatures and truncations at the best
    sets = ["real", "reconstructions", *settings]
    expected = {
        "vqvae": ({f"vqvae/train/{k}" for k in ("loss", "mse", "perplexity", "usage", "lr", "images_per_s")}
                  | {f"vqvae/eval/{k}" for k in ("mse", "psnr", "perplexity", "codes_used")},
                  {"vqvae/eval/reconstructions"}),
        "prior": ({f"prior/train/{k}" for k in ("loss", "bits_per_code", "lr", "grids_per_s")}
                  | {f"prior/eval/{k}" for k in ("bits_per_code", "bits_per_image", "unigram_bits_per_code")},
                  set()),
        "judge": ({"judge/train/loss", "judge/train/accuracy", "judge/eval/test_accuracy"}, set()),
        "eval": ({f"eval/{s}/{k}" for s in sets for k in ("frechet", "precision", "recall", "class_accuracy")}
                 | {"eval/judge/test_accuracy", "eval/chosen/temperature", "eval/chosen/frechet",
                    "eval/chosen/selection_frechet", "eval/classification_accuracy_score/samples"},
                 {f"eval/{name}/grid" for name in [*settings, "chosen"]}),
        "samples": (set(), {"samples/grid"}),
    }
    for stage, (scalars, images) in expected.items():
        tags = events(boards / stage).Tags()
        assert scalars <= set(tags["scalars"]), (stage, scalars - set(tags["scalars"]))
        assert set(tags["images"]) == images, stage


def test_tensorboard_holds_the_figures_of_the_files(logged: Path) -> None:
    """Every metrics.jsonl record is there, at its step; eval.json's scores sit at the prior's last step."""
    vqvae = events(logged / "tensorboard" / "vqvae")
    for record in read_metrics(logged / "vqvae" / "metrics.jsonl"):
        for name in ("mse", "psnr", "codes_used"):
            if name in record:
                logged_values = {e.step: e.value for e in vqvae.Scalars(f"vqvae/{record['split']}/{name}")}
                assert logged_values[record["step"]] == pytest.approx(record[name], rel=1e-6)
    report = json.loads((logged / "eval.json").read_text())
    frechet = events(logged / "tensorboard" / "eval").Scalars("eval/real/frechet")
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in frechet] == [(4, report["real"]["frechet"])]
    image = vqvae.Images("vqvae/eval/reconstructions")[-1]
    with Image.open(logged / "vqvae" / "reconstructions.png") as png:
        assert (image.step, image.width, image.height) == (4, *png.size)


def test_tensorboard_can_be_turned_off_and_on_in_a_used_run(logged: Path, tmp_path: Path, folder: Path) -> None:
    run = Path(shutil.copytree(logged, tmp_path / "run"))
    assert vqgen("run", "--data", folder, "--out", run, *TINY_RUN, "--eval") == 0
    assert vqgen("run", "--data", folder, "--out", run, *TINY_RUN, "--eval", "--tensorboard") == 0


def test_a_resumed_stage_replaces_the_events_it_redoes(tmp_path: Path, ctrl_c_at) -> None:
    """Killed after logging step 5 (checkpoint at 4), resumed: TensorBoard shows each step once, as metrics.jsonl."""
    latents = structured_latents(tmp_path / "train", 64, 0), structured_latents(tmp_path / "test", 16, 1)
    config = TrainConfig(steps=8, batch_size=8, log_every=1, eval_every=8, checkpoint_every=4, device="cpu",
                         tensorboard=str(tmp_path / "prior" / "tensorboard"))
    with ctrl_c_at(6), pytest.raises(KeyboardInterrupt):
        train_prior(PriorConfig.tiny(), config, *latents, tmp_path / "prior", progress=False)
    assert saved_step(tmp_path / "prior") == 4
    train_prior(PriorConfig.tiny(), config, *latents, tmp_path / "prior", progress=False)
    losses = events(tmp_path / "prior" / "tensorboard").Scalars("prior/train/loss")
    written = [r for r in read_metrics(tmp_path / "prior" / "metrics.jsonl") if r["split"] == "train"]
    assert [e.step for e in losses] == [r["step"] for r in written] == list(range(1, 9))
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in written], rel=1e-6)


@pytest.mark.parametrize("command", [
    ["train-vqvae", "--out", "x"],
    ["train-prior", "--latents", "x/latents", "--out", "x"],
    ["run", "--out", "x"],
    ["eval", "--run", "x"],
])
def test_missing_tensorboard_stops_before_any_work(command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main([*command, "--tensorboard", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"vqgen {command[0]}: error: {MISSING}\n"
    assert not (tmp_path / "x").exists()


# ---- curves.png ------------------------------------------------------------------------------------

def test_axes_of_non_negative_values_never_go_below_zero() -> None:
    rng = random.Random(0)
    cases = [[0.0067, 0.05], [3.2, 110.0], [0.0, 0.0], [7.0], [], [2.23, 6.78, 7.0]]
    cases += [[rng.uniform(0, 10 ** rng.randint(-4, 3)) for _ in range(rng.randint(1, 9))] for _ in range(200)]
    for values in cases:
        axis = linear_axis(values)
        assert axis.lo >= 0 and axis.lo <= min(values, default=0) and axis.hi >= max(values, default=0), values
        gaps = [b - a for a, b in zip(axis.ticks, axis.ticks[1:])]
        assert (axis.ticks[0], axis.ticks[-1]) == (axis.lo, axis.hi) and 2 <= len(gaps) <= 6, values
        assert max(gaps) == pytest.approx(min(gaps)), values
    assert linear_axis([20.1, 25.7]).lo == 20  # a curve far from zero is not squeezed against it
    assert linear_axis([-3.0, 4.0]).lo < -3  # negative values keep their room


def test_log_axis_maps_decades_to_equal_lengths() -> None:
    axis = log_axis([0.004, 0.06])
    assert (axis.lo, axis.hi) == (0.002, 0.1) and axis.ticks == [0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
    assert axis.fraction(axis.lo) == pytest.approx(0) and axis.fraction(axis.hi) == pytest.approx(1)
    wide = log_axis([0.00013, 0.3, -1.0, 0.0])  # values a log scale cannot show are left out
    assert (wide.lo, wide.hi) == (1e-4, 1.0) and wide.ticks == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert [wide.fraction(t) for t in wide.ticks] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert wide.fraction(math.sqrt(1e-3 * 1e-2)) == pytest.approx(0.375)
    assert [tick_label(t) for t in (0.002, 1e-05, 1500.0, 0.0, 25.0)] == ["0.002", "1e-05", "1500", "0", "25"]


def test_curves_png_has_one_panel_per_metric(tmp_path: Path) -> None:
    mse = [(s, 0.05 * 0.997 ** s) for s in range(1, 1501, 25)]
    panels = [Panel("MSE", {"train": mse, "eval": mse[::4]}, "MSE", log=True), Panel("empty", {"train": []}, "x"),
              Panel("flat", {"train": [(1, 0.0), (2, 0.0)]}, "y")]
    plot_curves(tmp_path / "curves.png", panels)
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == (920, 640)


# ---- printed figures -------------------------------------------------------------------------------

def test_printed_figures_carry_units_and_counts() -> None:
    assert codes(1.0, 128) == "codes 128/128 (100%)" and codes(0.234375, 128) == "codes 30/128 (23%)"
    vqvae = {"psnr": 25.74, "codes_used": 1.0, "perplexity": 109.66, "mse": 0.00267}
    assert describe(vqvae, ("psnr", "codes_used", "perplexity"), 128) == \
        "PSNR 25.7 dB, codes 128/128 (100%), perplexity 109.7 of 128 codes"
    prior = {"bits_per_code": 2.2341, "unigram_bits_per_code": 6.778, "bits_per_image": 109.5}
    assert describe(prior) == "2.234 bits/code, unigram 6.778 bits/code, 109.5 bits/image"
    assert describe({"loss": 0.693, "accuracy": 0.989}) == "loss 0.693, accuracy 98.9%"
