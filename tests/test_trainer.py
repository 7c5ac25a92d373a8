"""The shared trainer's optimisation options: learning-rate schedule, weight average, exact resume."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vqgen.engine.errors import UsageError, VQGenError
from vqgen.engine.files import load_tensors
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.runtime import native_bf16, resolve_precision
from vqgen.engine.trainer import TrainConfig, saved_step
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.train import train_prior

from test_prior_training import structured_latents

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
    assert setup == {"step": 0, "split": "setup", "device": "cpu", "precision": expected, "processes": 1}


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
