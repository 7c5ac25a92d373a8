"""The shared trainer's optimisation options: learning-rate schedule, weight average, exact resume."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vqgen.data.builtin import make_builtin
from vqgen.engine.averaging import WeightAverage
from vqgen.engine.checkpoint import saved_step
from vqgen.engine.errors import UsageError, VQGenError
from vqgen.engine.files import load_tensors
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.runtime import native_bf16, resolve_precision
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import evaluate_vqvae, train_vqvae
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.train import train_prior

from helpers import structured_latents

SMOOTH = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup=2, schedule="cosine", ema=0.9, log_every=1,
                     checkpoint_every=2, eval_every=3, device="cpu")


@pytest.fixture
def latents(tmp_path: Path) -> tuple[Path, Path]:
    return structured_latents(tmp_path / "train", 64, 0), structured_latents(tmp_path / "test", 16, 1)


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    config = TrainConfig(steps=12, lr=1.0, warmup=4, schedule="cosine")
    rates = [config.lr_at(step) for step in range(1, 13)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[4] == 1.0 and all(a > b for a, b in zip(rates[4:], rates[5:])) and 0 < rates[-1] < 0.05
    assert rates[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert [TrainConfig(steps=5, lr=0.1).lr_at(s) for s in (1, 5)] == [0.1, 0.1]


def test_logged_learning_rate_is_the_one_used(latents: tuple[Path, Path], tmp_path: Path) -> None:
    train_prior(PriorConfig.tiny(), SMOOTH, *latents, tmp_path / "prior", progress=False)
    logged = [(r["step"], r["lr"]) for r in read_metrics(tmp_path / "prior" / "metrics.jsonl") if r["split"] == "train"]
    assert logged == [(step, SMOOTH.lr_at(step)) for step in range(1, 7)]


def test_model_file_holds_the_weight_average(latents: tuple[Path, Path], tmp_path: Path) -> None:
    train_prior(PriorConfig.tiny(), SMOOTH, *latents, tmp_path / "prior", progress=False)
    state = load_tensors(tmp_path / "prior" / "state.pt")
    published = GatedPixelCNN.from_pretrained(tmp_path / "prior").state_dict()
    averaged = state["average"]["module"]
    assert all(torch.equal(published[k], averaged[k]) for k in published)
    assert any(not torch.equal(published[k], state["model"][k]) for k in published)  # the live weights differ
    assert state["average"]["updates"] == 6


def test_interrupted_smooth_training_resumes_exactly(latents: tuple[Path, Path], tmp_path: Path, ctrl_c_at) -> None:
    """Warm-up, cosine decay, weight average and dropout all pick up where the last checkpoint left them."""
    config, prior = replace(SMOOTH, checkpoint_every=4), PriorConfig.tiny(dropout=0.2)
    train_prior(prior, config, *latents, tmp_path / "whole", progress=False)
    with ctrl_c_at(5), pytest.raises(KeyboardInterrupt):
        train_prior(prior, config, *latents, tmp_path / "parts", progress=False)
    assert saved_step(tmp_path / "parts") == 4
    train_prior(prior, config, *latents, tmp_path / "parts", progress=False)
    whole, parts = (load_tensors(tmp_path / d / "state.pt") for d in ("whole", "parts"))
    for key in whole["model"]:
        assert torch.equal(whole["model"][key], parts["model"][key]), key
        assert torch.equal(whole["average"]["module"][key], parts["average"]["module"][key]), key
    losses = [[r["loss"] for r in read_metrics(tmp_path / d / "metrics.jsonl") if r["split"] == "train"]
              for d in ("whole", "parts")]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_a_cosine_run_cannot_be_resumed_with_other_steps(latents: tuple[Path, Path], tmp_path: Path) -> None:
    train_prior(PriorConfig.tiny(), replace(SMOOTH, steps=4), *latents, tmp_path / "prior", progress=False)
    with pytest.raises(VQGenError, match="steps: 4 -> 6"):
        train_prior(PriorConfig.tiny(), SMOOTH, *latents, tmp_path / "prior", progress=False)


class StepClock:
    """The training clock (the metrics window's): each optimizer step advances it one second, and each
    evaluation, checkpoint and setup measurement (the reference matmul timing) `other_work` seconds, which
    the budget must not count."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, other_work: float = 0.0) -> None:
        import types

        import vqgen.engine.metrics_log as metrics_log
        import vqgen.engine.trainer as trainer
        from vqgen.engine.checkpoint import TrainingState
        from vqgen.stage2_prior.train import PriorTask

        self.now = 0.0
        monkeypatch.setattr(metrics_log, "time", types.SimpleNamespace(perf_counter=lambda: self.now))
        self._advance_after(monkeypatch, trainer.Trainer, "before_update", 1.0)
        self._advance_after(monkeypatch, PriorTask, "evaluate", other_work)
        self._advance_after(monkeypatch, TrainingState, "save", other_work)
        self._advance_after(monkeypatch, trainer, "matmul_flops_per_s", other_work)

    def _advance_after(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str, seconds: float) -> None:
        real = getattr(owner, name)

        def timed(*args: object, **kwargs: object) -> object:
            result = real(*args, **kwargs)
            self.now += seconds
            return result

        monkeypatch.setattr(owner, name, timed)


@pytest.mark.parametrize("other_work", [0.0, 100.0])
def test_a_time_budget_stops_evaluates_saves_and_resumes_exactly(latents: tuple[Path, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  other_work: float) -> None:
    """The budget counts training steps only: evaluations and checkpoints (at steps 2 and 3 here, each
    costing 100 s of the clock in the second case) neither stop the run sooner nor spend a resume's budget."""
    clock = StepClock(monkeypatch, other_work)
    config = replace(SMOOTH, steps=100, schedule="constant", checkpoint_every=3, eval_every=2)
    summary = train_prior(PriorConfig.tiny(), replace(config, max_seconds=3.5), *latents, tmp_path / "parts",
                          progress=False)
    assert summary["step"] == 4 and saved_step(tmp_path / "parts") == 4 and summary["evaluation"]
    assert summary["seconds"] == load_tensors(tmp_path / "parts" / "state.pt")["elapsed"] == 4.0
    assert [r["step"] for r in read_metrics(tmp_path / "parts" / "metrics.jsonl") if r["split"] == "eval"] == [2, 4]
    assert clock.now == 4.0 + 5 * other_work  # it did cost: setup, evals at 2 and 4, checkpoints at 3 and 4
    again = train_prior(PriorConfig.tiny(), replace(config, max_seconds=3.5), *latents, tmp_path / "parts",
                        progress=False)
    assert again["step"] == 4  # the budget is spent: nothing more to train
    resumed = train_prior(PriorConfig.tiny(), replace(config, max_seconds=7.5), *latents, tmp_path / "parts",
                          progress=False)
    assert resumed["step"] == 8 and resumed["seconds"] == 8.0  # what was left: 4 steps, past evals and saves
    train_prior(PriorConfig.tiny(), replace(config, max_seconds=7.5), *latents, tmp_path / "whole", progress=False)
    whole, parts = (load_tensors(tmp_path / d / "state.pt") for d in ("whole", "parts"))
    assert whole["step"] == parts["step"] == 8 and whole["elapsed"] == parts["elapsed"] == 8.0
    assert all(torch.equal(whole["model"][k], parts["model"][k]) for k in whole["model"])


@pytest.mark.parametrize("option, value, message", [
    ("warmup", -1, "warmup=-1 is not allowed"), ("ema", 1.0, "ema=1.0 is not allowed"),
    ("schedule", "linear", "schedule='linear' is not allowed")])
def test_bad_options_are_named(option: str, value: object, message: str) -> None:
    from vqgen.engine.configs import config_from_dict, config_to_dict

    with pytest.raises((UsageError, VQGenError), match=message):
        config_from_dict(TrainConfig, {**config_to_dict(TrainConfig()), option: value})


def test_auto_precision_is_resolved_by_the_hardware_and_logged(latents: tuple[Path, Path], tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    expected = "bf16" if native_bf16(cpu) else "fp32"
    assert resolve_precision("auto", cpu) == expected and resolve_precision("fp16", cpu) == "fp16"
    train_prior(PriorConfig.tiny(), replace(SMOOTH, precision="auto"), *latents, tmp_path / "prior", progress=False)
    (setup,) = [r for r in read_metrics(tmp_path / "prior" / "metrics.jsonl") if r["split"] == "setup"]
    assert {k: setup[k] for k in ("step", "split", "device", "precision", "processes")} == {
        "step": 0, "split": "setup", "device": "cpu", "precision": expected, "processes": 1}


def test_auto_precision_binds_what_it_resolved_to(latents: tuple[Path, Path], tmp_path: Path) -> None:
    resolved = resolve_precision("auto", torch.device("cpu"))
    other = "fp32" if resolved == "bf16" else "bf16"
    train_prior(PriorConfig.tiny(), replace(SMOOTH, steps=2, precision="auto"), *latents, tmp_path / "p",
                progress=False)
    train_prior(PriorConfig.tiny(), replace(SMOOTH, steps=2, precision=resolved), *latents, tmp_path / "p",
                progress=False)  # the same numbers: accepted
    with pytest.raises(VQGenError, match=f"precision: {resolved} -> {other}"):
        train_prior(PriorConfig.tiny(), replace(SMOOTH, steps=2, precision=other), *latents, tmp_path / "p",
                    progress=False)


def test_evaluation_during_bf16_training_runs_in_fp32(tmp_path: Path) -> None:
    """The eval record is what the saved model scores in fp32, as it is exported and sampled, not what it
    scores under the autocast its training ran in."""
    train, held_out = make_builtin("train", seed=0, count=32), make_builtin("test", seed=0, count=16)
    config = TrainConfig(steps=4, batch_size=8, precision="bf16", eval_every=4, device="cpu")
    train_vqvae(VQVAEConfig.tiny(), config, train, held_out, tmp_path / "vqvae", progress=False)
    (record,) = [r for r in read_metrics(tmp_path / "vqvae" / "metrics.jsonl") if r["split"] == "eval"]
    saved = VQVAE.from_pretrained(tmp_path / "vqvae")
    fp32 = evaluate_vqvae(saved, held_out, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = evaluate_vqvae(saved, held_out, torch.device("cpu"))
    assert {k: record[k] for k in fp32} == pytest.approx(fp32, rel=1e-5)
    assert abs(bf16["mse"] - fp32["mse"]) > 1e-4 * fp32["mse"]  # bf16 would show: ~1e-3 apart here


class Buffered(nn.Module):
    """Weights, a float buffer (averaged with them) and two buffers that are not (copied from the live model)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.register_buffer("running", torch.zeros(3))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("flag", torch.tensor(False))


def test_weight_average_follows_its_decay_rule_for_weights_and_float_buffers() -> None:
    live, decay = Buffered(), 0.8
    average = WeightAverage(live, decay)
    weight, running = np.zeros(3), np.zeros(3)  # the reference average, in float64
    for n in range(1, 41):  # the ramp (1 + n) / (10 + n) reaches the decay at n = 35
        new_weight, new_running = np.array([n, -2.0 * n, np.sqrt(n)]), np.array([1.0, n % 3, -n])
        with torch.no_grad():
            live.weight.copy_(torch.from_numpy(new_weight))
            live.running.copy_(torch.from_numpy(new_running))
            live.count.fill_(n)
            live.flag.fill_(n == 40)
        average.update(live)
        d = min(decay, (1 + n) / (10 + n))
        weight, running = d * weight + (1 - d) * new_weight, d * running + (1 - d) * new_running
    assert int(average.module.count) == 0 and not bool(average.module.flag)  # not averaged
    published = average.published(live)
    np.testing.assert_allclose(published.weight.detach().numpy(), weight, rtol=1e-5)
    np.testing.assert_allclose(published.running.numpy(), running, rtol=1e-5)
    assert int(published.count) == 40 and bool(published.flag)  # the live model's
    assert torch.equal(live.weight.detach(), torch.tensor([40.0, -80.0, math.sqrt(40)]))  # live one untouched


def test_published_vqvae_carries_the_averaged_ema_codebook(tmp_path: Path) -> None:
    """The EMA codebook is a buffer fitted to the encoder: the averaged encoder is published with the
    averaged codebook, not the live one."""
    train, held_out = make_builtin("train", seed=0, count=32), make_builtin("test", seed=0, count=8)
    config = TrainConfig(steps=5, batch_size=8, lr=1e-3, ema=0.9, eval_every=5, device="cpu")
    train_vqvae(VQVAEConfig.tiny(kmeans_init=True), config, train, held_out, tmp_path / "vqvae", progress=False)
    state = load_tensors(tmp_path / "vqvae" / "state.pt")
    live, averaged = state["model"], state["average"]["module"]
    published = VQVAE.from_pretrained(tmp_path / "vqvae")
    assert not torch.equal(published.quantizer.codebook, live["quantizer.codebook"])
    for key, value in published.state_dict().items():
        reference = averaged if value.is_floating_point() else live
        assert torch.equal(value, reference[key]), key
    assert bool(published.quantizer.initialized)  # the live flag: k-means ran, it must not run again


def test_the_cooldown_schedule_holds_the_rate_then_decays_over_its_share() -> None:
    config = TrainConfig(steps=100, lr=1.0, warmup=10, schedule="cooldown", cooldown=0.2)
    rates = [config.lr_at(step) for step in range(1, 101)]
    assert rates[9:80] == [1.0] * 71 and config.cooldown_start() == 80  # warm-up, then the full rate to step 80
    assert all(a > b for a, b in zip(rates[80:], rates[81:])) and 0 < rates[-1] < 0.05
    assert rates[80] == pytest.approx(1 - math.sqrt(1 / 21))
    longer = replace(config, steps=1000)  # before a cool-down starts, no step depends on the length
    assert [longer.lr_at(step) for step in range(1, 81)] == rates[:80]


@pytest.mark.parametrize("other_work", [0.0, 100.0])
def test_a_time_budget_ends_the_cooldown_where_it_ends_and_reruns_to_the_digit(
        latents: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c_at, other_work: float
) -> None:
    """At one second a step, a 20-second budget fixes 20 steps when step 16 (the start of their cool-down)
    is reached, and decays to step 20; an interrupted run resumes with the steps it fixed; the same 20
    steps asked for outright (what `vqgen run --steps-of` asks) give the same weights, bit for bit."""
    StepClock(monkeypatch, other_work)
    config = replace(SMOOTH, steps=1000, schedule="cooldown", cooldown=0.2, checkpoint_every=17, eval_every=50)
    budget = replace(config, max_seconds=20.0)
    summary = train_prior(PriorConfig.tiny(), budget, *latents, tmp_path / "budget", progress=False)
    state = load_tensors(tmp_path / "budget" / "state.pt")
    assert summary["step"] == 20 and state["fixed_steps"] == 20
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "budget" / "metrics.jsonl") if r["split"] == "train"}
    assert lrs[16] == config.lr and 0 < lrs[20] < lrs[17] < config.lr
    with ctrl_c_at(18), pytest.raises(KeyboardInterrupt):
        train_prior(PriorConfig.tiny(), budget, *latents, tmp_path / "parts", progress=False)
    saved = load_tensors(tmp_path / "parts" / "state.pt")  # the checkpoint of step 17, in the cool-down
    assert saved["step"] == 17 and saved["fixed_steps"] == 20
    assert train_prior(PriorConfig.tiny(), budget, *latents, tmp_path / "parts", progress=False)["step"] == 20
    train_prior(PriorConfig.tiny(), replace(config, steps=20), *latents, tmp_path / "steps", progress=False)
    runs = [load_tensors(tmp_path / d / "state.pt")["model"] for d in ("budget", "parts", "steps")]
    assert all(torch.equal(runs[0][k], other[k]) for other in runs[1:] for k in runs[0])
