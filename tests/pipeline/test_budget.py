"""A run sized in minutes (pipeline/budget.py) on a step clock: every training step costs one second, export,
sampling and likelihood a known number each, so how the minutes are split can be checked to the second."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

import vqgen.engine.metrics_log as metrics_log
import vqgen.pipeline.budget as budget
import vqgen.pipeline.run as run_module
import vqgen.stage2_prior.train as prior_train
from vqgen.engine.files import load_safetensors
from vqgen.engine.trainer import Trainer
from vqgen.pipeline.generate import Generator

from helpers import vqgen

TINY = ["--preset", "quick", "--device", "cpu", "--no-eval", "--vqvae-batch-size", "8", "--vqvae-hidden", "8",
        "--vqvae-res-hidden", "4", "--vqvae-checkpoint-every", "2", "--prior-batch-size", "8", "--prior-channels", "8",
        "--prior-layers", "2", "--prior-checkpoint-every", "2", "--prior-schedule", "cooldown", "--samples", "4"]
EXPORT_S, GRID_S, IMAGE_S, EVAL_S = 5.0, 0.25, 0.01, 0.5  # an export, a sampled grid, an image's likelihood,
# a held-out evaluation of the prior


class RunClock:
    """One clock for the trainer, the run's stage timings and the budget's measurements."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        clock = types.SimpleNamespace(perf_counter=lambda: self.now)
        for module in (metrics_log, run_module, budget):
            monkeypatch.setattr(module, "time", clock)
        self.costs(monkeypatch, Trainer, "before_update", lambda *a, **k: 1.0)
        self.costs(monkeypatch, run_module, "export_latents", lambda *a, **k: EXPORT_S)
        self.costs(monkeypatch, Generator, "sample", lambda self_, n, *a, **k: GRID_S * n)
        for module in (run_module, budget):
            self.costs(monkeypatch, module, "bits_per_dim", lambda *a, **k: IMAGE_S * min(a[4], len(a[3])))
        for module in (prior_train, budget):
            self.costs(monkeypatch, module, "evaluate_prior", lambda *a, **k: EVAL_S)
        clock_ = self

        class PlannedTask(budget.PriorTask):  # the plan's timed steps (the trainer's are charged above)
            def step(self, *args: object, **kwargs: object) -> object:
                result = super().step(*args, **kwargs)
                clock_.now += 1.0
                return result

        monkeypatch.setattr(budget, "PriorTask", PlannedTask)

    def costs(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str, seconds: object) -> None:
        real = getattr(owner, name)

        def timed(*args: object, **kwargs: object) -> object:
            result = real(*args, **kwargs)
            self.now += seconds(*args, **kwargs)
            return result

        monkeypatch.setattr(owner, name, timed)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return {f"{stage}.{k}": v for stage in ("vqvae", "prior")
            for k, v in load_safetensors(out / stage / "model.safetensors").items()}


def test_a_run_in_minutes_splits_them_ends_on_time_and_reruns_to_the_digit(
        tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c_at) -> None:
    """One minute: the VQ-VAE trains its 15% (9 s, 9 steps); the exports take 10 s; the prior is planned at
    its start from the sample grid's 4 grids (1 s) and the 16 test images' likelihood (0.16 s), measured on
    a probe of as many, and from one held-out evaluation (0.5 s) and a training step (1 s, timed after an
    untimed one): 3.66 s of measurement. Its 34 steps reach no evaluation but the last, so it gets
    60 * 0.98 - 22.66 - 1.16 - 0.5 = 34.48 s, 34 steps whose cool-down ends at the last; the run ends within
    a step of its 58.8 s. `--steps-of` trains the same steps without a clock and gives the same weights, as
    does a run interrupted in the prior and resumed."""
    clock = RunClock(monkeypatch)
    out = tmp_path / "minutes"
    assert vqgen("run", "--data", folder, "--out", out, "--minutes", "1", *TINY) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == {"vqvae": 9, "prior": 34}
    plan = report["budget"]
    after = {"sampling": 4 * GRID_S, "likelihood": 16 * IMAGE_S}
    assert plan["after_prior_s"] == pytest.approx(after)
    assert (plan["prior_step_s"], plan["prior_evaluations_s"]) == (1.0, EVAL_S)
    assert plan["spent_before_prior_s"] == pytest.approx(9 + 2 * EXPORT_S + sum(after.values()) + EVAL_S + 2)
    assert plan["prior_s"] == pytest.approx(60 * (1 - budget.MARGIN) - plan["spent_before_prior_s"]
                                            - sum(after.values()) - EVAL_S)
    assert abs(clock.now - 60 * (1 - budget.MARGIN)) <= 1.0
    assert report["timings_s"]["total"] == pytest.approx(clock.now)
    lrs = [r["lr"] for r in map(json.loads, (out / "prior" / "metrics.jsonl").read_text().splitlines())
           if r["split"] == "train"]
    assert lrs[-1] < 0.2 * lrs[0]  # decayed by the last step

    again = tmp_path / "steps"
    assert vqgen("run", "--data", folder, "--out", again, "--steps-of", out, *TINY) == 0
    assert json.loads((again / "report.json").read_text())["budget"] is None
    interrupted = tmp_path / "interrupted"
    with ctrl_c_at(20, model="GatedPixelCNN"):
        assert vqgen("run", "--data", folder, "--out", interrupted, "--minutes", "1", *TINY) == 130
    assert vqgen("run", "--data", folder, "--out", interrupted, "--minutes", "1", *TINY) == 0
    assert json.loads((interrupted / "budget.json").read_text())["prior_s"] == pytest.approx(plan["prior_s"])
    assert json.loads((interrupted / "report.json").read_text())["steps"] == report["steps"]
    for other in (again, interrupted):
        theirs, mine = weights(other), weights(out)
        assert theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)


def test_too_few_minutes_are_refused_before_the_prior(tmp_path: Path, folder: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    RunClock(monkeypatch)
    assert vqgen("run", "--data", folder, "--out", tmp_path / "run", "--minutes", "0.25", *TINY) == 1
    assert "--minutes 0.25 leaves the prior" in capsys.readouterr().err
    assert not (tmp_path / "run" / "prior").exists()


def test_steps_of_a_run_without_steps_is_one_line(tmp_path: Path, folder: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps({"vqvae": {}}))
    assert vqgen("run", "--data", folder, "--out", tmp_path / "run", "--steps-of", tmp_path / "old", *TINY) == 1
    assert "records no steps of a finished run" in capsys.readouterr().err


def test_a_tuned_decoder_takes_its_share_of_the_minutes(tmp_path: Path, folder: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With --tune-decoder the decoder trains for its 6% of the minute after the exports (3.6 s: 4 steps, the last
    the one that reaches it), and the prior's plan counts them as spent: 4 steps fewer than the run above's 34."""
    clock = RunClock(monkeypatch)
    out = tmp_path / "minutes"
    assert vqgen("run", "--data", folder, "--out", out, "--minutes", "1", *TINY, "--tune-decoder",
                 "--decoder-batch-size", "8") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == {"vqvae": 9, "prior": 30, "decoder": 4}
    assert report["timings_s"]["decoder"] == pytest.approx(4.0)
    after = 4 * GRID_S + 16 * IMAGE_S
    assert report["budget"]["spent_before_prior_s"] == pytest.approx(9 + 4 + 2 * EXPORT_S + after + EVAL_S + 2)
    assert abs(clock.now - 60 * (1 - budget.MARGIN)) <= 1.0


def test_a_compiled_prior_is_planned_at_its_compiled_step(tmp_path: Path, folder: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget times the prior's step as the trainer will run it: through torch.compile when the prior compiles
    (here a stand-in whose steps take half the eager second), so a faster step is planned to reach its evaluations."""
    clock = RunClock(monkeypatch)

    class Compiled(torch.nn.Module):  # what torch.compile returns: the module under `_orig_mod`
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = model

        def forward(self, *args: object, **kwargs: object) -> object:
            return self._orig_mod(*args, **kwargs)

    class HalfStepCompiled(prior_train.PriorTask):  # in place of the clock's PlannedTask
        def step(self, model: torch.nn.Module, *args: object, **kwargs: object) -> object:
            result = super().step(model, *args, **kwargs)
            clock.now += 0.5 if isinstance(model, Compiled) else 1.0
            return result

    monkeypatch.setattr(torch, "compile", Compiled)
    monkeypatch.setattr(budget, "PriorTask", HalfStepCompiled)
    plans = []
    for compile_flag in ("--no-compile", "--compile"):
        out = tmp_path / compile_flag
        assert vqgen("run", "--data", folder, "--out", out, "--minutes", "1", *TINY, compile_flag) == 0
        plans.append(json.loads((out / "report.json").read_text())["budget"]["prior_step_s"])
    assert plans == [1.0, 0.5]
