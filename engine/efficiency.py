"""How far training runs from what the hardware allows: model FLOPs per step against a reference rate.

The habit of large-model training (model FLOPs utilisation, as nanoGPT prints it at every log step),
for the machines vqgen runs on: the FLOPs of one training step (forward and backward) are counted
once, at setup, by torch's flop counter on a copy of the model (so the count has no side effects on
the run: no EMA update, no random draw), and the reference is a dense matrix product of the run's
dtype timed on the same device and threads (on CPU, the faster of it and a dense convolution). Their
ratio, the share, says how much of the machine's practical peak the step reaches; the rest goes to
memory-bound work (gates, normalisation, elementwise maps), small kernels and the framework.
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from vqgen.engine.runtime import native_bf16, pick_device

MATMUL_SIDE = {"cpu": 1024, "cuda": 8192}  # large enough to reach the dense peak, small enough to time fast
CONV_REFERENCE = (8, 256, 16)  # batch, channels, side: a 3x3 convolution of 2.4 GFLOP, channels-last
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_attention(query: torch.Size, key: torch.Size, value: torch.Size, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out: torch.Size, query: torch.Size, key: torch.Size, value: torch.Size,
                            *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's counter knows the GPU kernels of scaled_dot_product_attention, not the CPU's (the prior's attention);
# a custom mapping's formulas receive the shapes of the kernel's tensor arguments
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def step_flops(model: nn.Module, step: Callable[[nn.Module], torch.Tensor]) -> int:
    """FLOPs of one forward and backward pass, `step(model_copy)` returning the loss, counted on a copy
    of `model` with the random state restored afterwards."""
    twin = copy.deepcopy(model)
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    counting = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with torch.random.fork_rng(devices=devices), counting as counter:
        step(twin).backward()
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(product: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    product()  # warm-up: kernels chosen, caches and clocks up
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=None)
def _matmul_rate(precision: str, device: torch.device, threads: int, repeats: int) -> float:
    """On CPU the densest convolution is timed beside the matrix product and the faster counts: torch
    sends matrix products to MKL and convolutions to oneDNN, and MKL's fp32 GEMM takes a slower path on
    AMD CPUs (measured on a 2-core Zen 4: 180-195 GFLOP/s, where oneDNN's 3x3 convolutions reach
    about 470, the cores' FMA peak), which would put the training steps' convolutions above the
    "ceiling"."""
    side = MATMUL_SIDE.get(device.type, 1024)
    dtype = MATMUL_DTYPES.get(precision, torch.float32)
    a, b = (torch.randn(side, side, generator=torch.Generator().manual_seed(i)).to(device, dtype) for i in (0, 1))
    rate = 2 * side**3 / _best_seconds(lambda: a @ b, device, repeats)
    if device.type == "cpu":
        batch, channels, pixels = CONV_REFERENCE
        image = torch.randn(batch, channels, pixels, pixels, generator=torch.Generator().manual_seed(2)).to(
            dtype=dtype, memory_format=torch.channels_last)
        kernel = torch.randn(channels, channels, 3, 3, generator=torch.Generator().manual_seed(3)).to(
            dtype=dtype, memory_format=torch.channels_last)
        flops = 2 * batch * pixels**2 * channels**2 * 9
        rate = max(rate, flops / _best_seconds(lambda: F.conv2d(image, kernel, padding=1), device, repeats))
    return rate


def matmul_flops_per_s(precision: str, device: torch.device, repeats: int = 5) -> float:
    """The best of `repeats` timed square matrix products (and on CPU dense convolutions) in the run's
    dtype: FLOP/s this device and its threads reach on the densest work there is (about 0.2 s of the
    setup on a 2-core CPU, once per process for each precision, device and thread count)."""
    return _matmul_rate(precision, device, torch.get_num_threads(), repeats)


def describe_reference_rates() -> str:
    """The machine's reference rates, for `vqgen --version`: the timings of docs/performance.md quote the
    rate of the machine they were measured on, so a user can scale them to theirs (a run logs the same rate)."""
    device = pick_device("auto")
    native = native_bf16(device)
    rates = {precision: matmul_flops_per_s(precision, device, repeats=20) / 1e9 for precision in ("fp32", "bf16")}
    return (f"reference rate on {device.type} ({torch.get_num_threads()} threads): fp32 {rates['fp32']:.0f} GFLOP/s, "
            f"bf16 {rates['bf16']:.0f} GFLOP/s ({'native' if native else 'emulated'}; --precision auto is "
            f"{'bf16' if native else 'fp32'})")


def efficiency(flops_per_step: int, steps: int, seconds: float, reference: float) -> dict[str, Any]:
    """Achieved FLOP/s over `steps` steps in `seconds`, and its share of the reference rate."""
    achieved = flops_per_step * steps / max(seconds, 1e-9)
    return {"flops_per_s": achieved, "flops_share": achieved / reference}
