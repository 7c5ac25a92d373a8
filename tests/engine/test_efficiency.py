"""Training that knows its arithmetic efficiency: FLOPs per step counted without side effects, against a
reference matrix-product rate, logged in the setup and train records."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqgen.data.builtin import make_builtin
from vqgen.engine.efficiency import efficiency, matmul_flops_per_s, step_flops
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import train_vqvae


def test_step_flops_of_linear_maps_match_the_formula() -> None:
    """2 * batch * in * out for the forward product; backward the same again for the weight gradient and,
    where the input needs one, again for the input gradient."""
    layer = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    assert step_flops(layer, lambda m: m(x).sum()) == 2 * (2 * 8 * 64 * 32)
    deep = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    first, second = 2 * 8 * 64 * 32, 2 * 8 * 32 * 16
    assert step_flops(deep, lambda m: m(x).sum()) == 2 * first + 3 * second


def test_attention_on_cpu_is_counted_as_torch_counts_it_on_a_gpu() -> None:
    """Queries by keys, then weights by values, forward (4 * B * heads * N * N * d) and backward (2.5 times
    that, with the input gradients); torch's counter has formulas for the GPU kernels only."""
    q, k, v = (torch.randn(2, 3, 10, 8, requires_grad=True) for _ in range(3))
    attend = nn.Module()
    flops = step_flops(attend, lambda m: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum())
    forward = 4 * 2 * 3 * 10 * 10 * 8
    assert flops == forward + forward * 5 // 2


def test_counting_a_step_changes_nothing_in_the_model_or_the_random_streams() -> None:
    model = VQVAE(VQVAEConfig.tiny(kmeans_init=True)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(4, 1, 28, 28)
    torch.manual_seed(3)
    flops = step_flops(model, lambda m: m(images).reconstruction.square().mean())
    after_draw = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after_draw, torch.rand(3))  # the count drew nothing from the stream
    assert flops > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # no EMA update, no k-means init
    assert all(p.grad is None for p in model.parameters())


def test_matmul_rate_is_positive_and_cached() -> None:
    rate = matmul_flops_per_s("fp32", torch.device("cpu"))
    assert rate > 1e8 and matmul_flops_per_s("fp32", torch.device("cpu")) == rate
    assert efficiency(10**9, 4, 2.0, 4e9) == {"flops_per_s": 2e9, "flops_share": 0.5}


def test_training_logs_flops_per_step_and_the_share_it_reaches(tmp_path: Path) -> None:
    train, held_out = make_builtin("train", count=64), make_builtin("test", count=16)
    config = TrainConfig(steps=4, batch_size=8, log_every=2, eval_every=4, checkpoint_every=4, device="cpu")
    train_vqvae(VQVAEConfig.tiny(), config, train, held_out, tmp_path / "v", progress=False)
    records = read_metrics(tmp_path / "v" / "metrics.jsonl")
    (setup,) = [r for r in records if r["split"] == "setup"]
    model, images = VQVAE(VQVAEConfig.tiny()).train(), train.__getitems__(list(range(8)))[0]
    expected = step_flops(model, lambda m: (lambda out: out.quantizer.loss + (out.reconstruction - images)
                                            .square().mean())(m(images)))
    assert setup["flops_per_step"] == expected and setup["matmul_flops_per_s"] > 0
    for record in (r for r in records if r["split"] == "train"):
        rate = setup["flops_per_step"] * record["images_per_s"] / config.batch_size
        assert record["flops_per_s"] == pytest.approx(rate, rel=1e-6)
        assert record["flops_share"] == pytest.approx(rate / setup["matmul_flops_per_s"], rel=1e-6)
        assert 0 < record["flops_share"] and math.isfinite(record["flops_share"])


def test_the_first_records_throughput_leaves_out_the_setups_count_and_timing(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The FLOP count and the reference timing run after the first step, inside its logging window:
    their seconds are setup, and a first record that counted them would understate the rate."""
    import vqgen.engine.trainer as trainer

    def slow_reference(precision: str, device: torch.device) -> float:
        time.sleep(1.5)
        return 1e10

    monkeypatch.setattr(trainer, "matmul_flops_per_s", slow_reference)
    train, held_out = make_builtin("train", count=64), make_builtin("test", count=16)
    config = TrainConfig(steps=2, batch_size=8, log_every=2, eval_every=2, checkpoint_every=2, device="cpu")
    train_vqvae(VQVAEConfig.tiny(), config, train, held_out, tmp_path / "v", progress=False)
    (first,) = [r for r in read_metrics(tmp_path / "v" / "metrics.jsonl") if r["split"] == "train"]
    seconds = config.batch_size * 2 / first["images_per_s"]
    assert seconds < 1.0, f"the first window took {seconds:.2f} s: it counted the 1.5 s reference timing"
